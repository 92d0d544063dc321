//! Update ordering shared by the controllers that update pods in place: the scatter sorter
//! (`updateStrategy.scatterStrategy`), which spreads the pods of each `key=value` term evenly over
//! the update order instead of draining one group first. Same arithmetic as upstream's
//! `updatesort` scatter sorter, so a rollout visits pods in the order an OpenKruise user expects.

use std::collections::BTreeMap;

use crate::api::common::UpdateScatterTerm;

/// Reorders `waiting` (indexes into `all`, already in update order) by `terms`. `all` is every pod
/// the strategy covers (the density of a term is measured over them), `waiting` those still to update.
pub fn scatter(terms: &[UpdateScatterTerm], all: &[&BTreeMap<String, String>], waiting: Vec<usize>) -> Vec<usize> {
    if terms.is_empty() || waiting.len() <= 1 {
        return waiting;
    }
    let mut waiting = waiting;
    for term in ordered_terms(terms, all, &waiting) {
        waiting = scatter_by_term(&term, all, waiting);
    }
    waiting
}

fn has(labels: &BTreeMap<String, String>, term: &UpdateScatterTerm) -> bool {
    labels.get(&term.key) == Some(&term.value)
}

/// The terms to apply, the most common among waiting pods first. A single term is applied as is;
/// with several, terms no waiting pod carries are dropped (ties keep the user's order).
fn ordered_terms(
    terms: &[UpdateScatterTerm],
    all: &[&BTreeMap<String, String>],
    waiting: &[usize],
) -> Vec<UpdateScatterTerm> {
    if terms.len() == 1 {
        return terms.to_vec();
    }
    let mut counted: Vec<(UpdateScatterTerm, usize)> = Vec::new();
    for term in terms {
        let n = waiting.iter().filter(|&&i| all.get(i).is_some_and(|l| has(l, term))).count();
        if n == 0 {
            continue;
        }
        match counted.iter_mut().find(|(t, _)| t == term) {
            Some((_, c)) => *c += n,
            None => counted.push((term.clone(), n)),
        }
    }
    counted.sort_by_key(|c| std::cmp::Reverse(c.1));
    counted.into_iter().map(|(t, _)| t).collect()
}

/// How waiting pods are interleaved: `groups` rounds of `matched` term pods then `unmatched`
/// others, after `lead` others up front.
#[derive(Debug, PartialEq, Eq)]
struct Groups {
    groups: usize,
    matched: usize,
    unmatched: usize,
    lead: usize,
}

fn even_groups(matched: usize, unmatched: usize) -> Groups {
    let groups = matched.min(unmatched).max(1);
    let per = |n: usize| (n as f64 / groups as f64).round() as usize;
    Groups { groups, matched: per(matched), unmatched: per(unmatched), lead: 0 }
}

/// Groups that keep the density of the whole population when the waiting pods are denser in the
/// term than the population is.
fn groups_by_density(total_matched: usize, total_unmatched: usize, matched: usize, unmatched: usize) -> Groups {
    let waiting = even_groups(matched, unmatched);
    let total_ratio = total_unmatched as f32 / total_matched.max(1) as f32;
    if total_ratio >= unmatched as f32 / matched.max(1) as f32 {
        return waiting;
    }
    let total = even_groups(total_matched, total_unmatched);
    let (m, u) = (total.matched.max(1), total.unmatched.max(1));
    let groups = (matched / m).min(unmatched / u);
    Groups { groups, matched: m, unmatched: u, lead: unmatched.saturating_sub(groups * u) }
}

fn scatter_by_term(term: &UpdateScatterTerm, all: &[&BTreeMap<String, String>], waiting: Vec<usize>) -> Vec<usize> {
    let (mut matched, unmatched): (Vec<usize>, Vec<usize>) =
        waiting.iter().partition(|&&i| all.get(i).is_some_and(|l| has(l, term)));
    if matched.len() <= 1 || unmatched.len() <= 1 {
        return waiting;
    }
    let total_matched = all.iter().filter(|l| has(l, term)).count();
    let total_unmatched = all.len() - total_matched;
    // The last matching pod goes last, so a partial rollout starts and ends on the other pods.
    let last = matched.pop();
    let g = groups_by_density(total_matched.saturating_sub(1), total_unmatched, matched.len(), unmatched.len());
    let mut out = Vec::with_capacity(waiting.len());
    let mut unmatched = unmatched.into_iter().peekable();
    let mut matched = matched.into_iter().peekable();
    out.extend(unmatched.by_ref().take(g.lead));
    for _ in 0..g.groups {
        out.extend(matched.by_ref().take(g.matched));
        out.extend(unmatched.by_ref().take(g.unmatched));
    }
    out.extend(matched);
    out.extend(unmatched);
    out.extend(last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(k: &str, v: &str) -> UpdateScatterTerm {
        UpdateScatterTerm { key: k.into(), value: v.into() }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app_name".to_string(), app.to_string())])
    }

    /// Spec scenario 31 (unit): 20 waiting pods, 4 of them nginx, one term → nginx at 1, 7, 13, 20.
    #[test]
    fn one_term_spreads_its_pods_over_the_order() {
        let pods: Vec<BTreeMap<String, String>> =
            (0..20).map(|i| labels(if [2, 5, 11, 17].contains(&i) { "nginx" } else { "web" })).collect();
        let all: Vec<&BTreeMap<String, String>> = pods.iter().collect();
        let order = scatter(&[term("app_name", "nginx")], &all, (0..20).collect());
        let positions: Vec<usize> =
            order.iter().enumerate().filter(|(_, i)| [2, 5, 11, 17].contains(*i)).map(|(p, _)| p + 1).collect();
        assert_eq!(positions, [1, 7, 13, 20]);
        for run in order.chunks(5) {
            assert_eq!(run.iter().filter(|i| [2, 5, 11, 17].contains(*i)).count(), 1, "{order:?}");
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>(), "a permutation");
    }

    #[test]
    fn several_terms_mix_apps_instead_of_draining_one_first() {
        // 30 pods, 10 per app, grouped by app in the default order.
        let apps = ["nginx", "web-server", "api-gateway"];
        let pods: Vec<BTreeMap<String, String>> = (0..30).map(|i| labels(apps[i / 10])).collect();
        let all: Vec<&BTreeMap<String, String>> = pods.iter().collect();
        let terms: Vec<UpdateScatterTerm> = apps.iter().map(|a| term("app_name", a)).collect();
        let order = scatter(&terms, &all, (0..30).collect());
        // The first batch of 10% (3 pods) already holds two apps, and every app is in the first 10.
        let app_of = |i: usize| apps[i / 10];
        let first: std::collections::BTreeSet<&str> = order[..10].iter().map(|&i| app_of(i)).collect();
        assert_eq!(first.len(), 3, "{order:?}");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_to_spread_keeps_the_order() {
        let pods: Vec<BTreeMap<String, String>> = (0..5).map(|_| labels("web")).collect();
        let all: Vec<&BTreeMap<String, String>> = pods.iter().collect();
        assert_eq!(scatter(&[term("app_name", "nginx")], &all, vec![4, 3, 2]), vec![4, 3, 2]);
        assert_eq!(scatter(&[], &all, vec![1, 0]), vec![1, 0]);
    }

    #[test]
    fn groups_follow_the_population_when_waiting_pods_are_sparser_in_the_term() {
        assert_eq!(
            groups_by_density(1, 18, 1, 3),
            Groups { groups: 1, matched: 1, unmatched: 3, lead: 0 },
            "the term is denser among waiting pods than overall: even groups of the waiting pods"
        );
        // Population 1:1, waiting 2 term pods and 4 others: pairs as in the population, and the
        // others left over lead.
        assert_eq!(groups_by_density(4, 4, 2, 4), Groups { groups: 2, matched: 1, unmatched: 1, lead: 2 });
    }
}
