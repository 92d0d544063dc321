//! SidecarUpgradePlanner: which matched pods get the set's new sidecars now. Pure: a snapshot of
//! pod facts and a budget in, pod indexes out.
//!
//! The order is upstream's (unscheduled, pending, not-ready, recently-ready, restarting, young pods
//! first; then scattered by `scatterStrategy`). `partition` keeps that many waiting pods old and
//! `maxUnavailable` bounds updated pods that are not yet consistent and ready; a pod that is not
//! ready anyway is updated without taking a slot, so a broken version can always be replaced.
//! With one replica the budget is the whole snapshot's ([`SnapshotBudget`]); with shards, each
//! shard's share of the global budget (see `budget`).

use std::collections::BTreeMap;

use super::pod_state::PodFacts;
use crate::api::common::UpdateScatterTerm;
use crate::api::sidecarset::{SidecarSet, SidecarSetUpdateStrategy, SidecarSetUpdateStrategyType};
use crate::api::validation::scaled_value;
use crate::controllers::update_sort::scatter;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The status counts of a set of matched pods, plus what the rollout needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCounts {
    pub matched: u32,
    pub updated: u32,
    /// Consistent and ready.
    pub ready: u32,
    pub updated_ready: u32,
    /// Updated but not yet consistent and ready: holding maxUnavailable slots.
    pub in_flight: u32,
    /// Not updated, selected by `updateStrategy.selector`, upgradable.
    pub waiting: u32,
    /// Of those, not ready (they take no maxUnavailable slot).
    pub waiting_not_ready: u32,
}

impl RolloutCounts {
    pub fn of(facts: &[PodFacts]) -> Self {
        let mut c = RolloutCounts::default();
        for f in facts {
            c.matched += 1;
            c.updated += u32::from(f.updated);
            c.ready += u32::from(f.consistent_ready);
            c.updated_ready += u32::from(f.updated && f.consistent_ready);
            c.in_flight += u32::from(f.in_flight());
            c.waiting += u32::from(f.waiting());
            c.waiting_not_ready += u32::from(f.waiting() && !f.ready);
        }
        c
    }

    pub fn add(&mut self, o: &RolloutCounts) {
        self.matched += o.matched;
        self.updated += o.updated;
        self.ready += o.ready;
        self.updated_ready += o.updated_ready;
        self.in_flight += o.in_flight;
        self.waiting += o.waiting;
        self.waiting_not_ready += o.waiting_not_ready;
    }
}

/// Whether the set upgrades existing pods at all now (not `NotUpdate`, not paused).
pub fn rolling(set: &SidecarSet) -> bool {
    let s = set.spec.update_strategy.as_ref();
    s.and_then(|s| s.type_) != Some(SidecarSetUpdateStrategyType::NotUpdate)
        && !s.and_then(|s| s.paused).unwrap_or(false)
}

fn resolve(v: Option<&IntOrString>, matched: u32, round_up: bool, default: u32) -> u32 {
    let total = i32::try_from(matched).unwrap_or(i32::MAX);
    v.map(|v| scaled_value(v, total, round_up).map_or(default, |n| n.max(0) as u32)).unwrap_or(default)
}

/// Pods that may be updated-but-unavailable at once: an integer, or a percentage of matched pods
/// rounded up (the API's contract; upstream v1.3 rounded down and could stall at 0). Default 1.
pub fn max_unavailable(strategy: Option<&SidecarSetUpdateStrategy>, matched: u32) -> u32 {
    resolve(strategy.and_then(|s| s.max_unavailable.as_ref()), matched, true, 1)
}

/// Waiting pods to keep old: an integer, or a percentage of matched pods rounded down. Default 0.
pub fn partition(strategy: Option<&SidecarSetUpdateStrategy>, matched: u32) -> u32 {
    resolve(strategy.and_then(|s| s.partition.as_ref()), matched, false, 0)
}

/// Permission to update pods, taken one pod at a time.
pub trait UpgradeBudget {
    /// Takes what updating one more pod needs (a partition permit, and a maxUnavailable slot if
    /// the pod is `ready`); false, taking nothing, when the budget does not allow it.
    fn take(&mut self, ready: bool) -> bool;
}

/// The budget of a whole snapshot: upstream's arithmetic when one process sees every matched pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBudget {
    pub updates: u32,
    pub slots: u32,
}

impl SnapshotBudget {
    pub fn of(strategy: Option<&SidecarSetUpdateStrategy>, counts: &RolloutCounts) -> Self {
        let m = max_unavailable(strategy, counts.matched);
        let p = partition(strategy, counts.matched);
        SnapshotBudget { updates: counts.waiting.saturating_sub(p), slots: m.saturating_sub(counts.in_flight) }
    }
}

impl UpgradeBudget for SnapshotBudget {
    fn take(&mut self, ready: bool) -> bool {
        if self.updates == 0 || (ready && self.slots == 0) {
            return false;
        }
        self.updates -= 1;
        if ready {
            self.slots -= 1;
        }
        true
    }
}

/// `scatterStrategy` with `value: "*"` expanded to every value of that key among `facts`.
fn scatter_terms(strategy: Option<&SidecarSetUpdateStrategy>, facts: &[PodFacts]) -> Vec<UpdateScatterTerm> {
    let mut out: Vec<UpdateScatterTerm> = Vec::new();
    let mut push = |t: UpdateScatterTerm| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for term in strategy.and_then(|s| s.scatter_strategy.as_deref()).unwrap_or_default() {
        if term.value != "*" {
            push(term.clone());
            continue;
        }
        for f in facts {
            if let Some(v) = f.labels.get(&term.key) {
                push(UpdateScatterTerm { key: term.key.clone(), value: v.clone() });
            }
        }
    }
    out
}

/// The waiting pods (indexes into `facts`) in upgrade order.
pub fn upgrade_order(strategy: Option<&SidecarSetUpdateStrategy>, facts: &[PodFacts]) -> Vec<usize> {
    let mut waiting: Vec<usize> = (0..facts.len()).filter(|&i| facts[i].waiting()).collect();
    waiting.sort_by(|&a, &b| facts[a].rank.cmp(&facts[b].rank));
    let terms = scatter_terms(strategy, facts);
    if terms.is_empty() {
        return waiting;
    }
    let labels: Vec<&BTreeMap<String, String>> = facts.iter().map(|f| &f.labels).collect();
    scatter(&terms, &labels, waiting)
}

/// The pods to update now: `order` walked while the budget lasts.
pub fn pick(order: &[usize], facts: &[PodFacts], budget: &mut impl UpgradeBudget) -> Vec<usize> {
    let mut out = Vec::new();
    for &i in order {
        if !budget.take(facts[i].ready) {
            break;
        }
        out.push(i);
    }
    out
}

/// The whole decision for one snapshot that holds every matched pod.
pub fn plan(set: &SidecarSet, facts: &[PodFacts]) -> Vec<usize> {
    if !rolling(set) {
        return Vec::new();
    }
    let strategy = set.spec.update_strategy.as_ref();
    let mut budget = SnapshotBudget::of(strategy, &RolloutCounts::of(facts));
    pick(&upgrade_order(strategy, facts), facts, &mut budget)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::controllers::sidecarset::pod_state::UpgradeRank;
    use jiff::Timestamp;
    use serde_json::json;

    /// A matched pod: `i` also makes it younger the higher it is.
    pub(crate) fn facts(i: usize, updated: bool, consistent_ready: bool) -> PodFacts {
        PodFacts {
            rank: UpgradeRank {
                scheduled: true,
                phase: 2,
                ready: true,
                ready_since: Some(Timestamp::from_second(1_000_000).unwrap()),
                max_restarts: 0,
                created: Some(Timestamp::from_second(i as i64).unwrap()),
                namespace: "ns".into(),
                name: format!("pod-{i:04}"),
            },
            labels: BTreeMap::new(),
            updated,
            consistent_ready,
            ready: consistent_ready || !updated,
            upgradable: true,
            selected: true,
            revision: None,
        }
    }

    fn not_ready(mut f: PodFacts) -> PodFacts {
        f.ready = false;
        f.consistent_ready = false;
        f.rank.ready = false;
        f.rank.ready_since = None;
        f
    }

    /// `n` pods, the first `updated` of them updated, the first `ready` of those consistent and ready.
    fn pods(n: usize, updated: usize, ready: usize) -> Vec<PodFacts> {
        (0..n).map(|i| facts(i, i < updated, i >= updated || i < ready)).collect()
    }

    fn set(strategy: serde_json::Value) -> SidecarSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet", "metadata": {"name": "s"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "containers": [{"name": "c", "image": "i:2"}],
                     "updateStrategy": strategy}
        }))
        .unwrap()
    }

    /// Spec scenario 24: the in-flight window.
    #[test]
    fn the_window_counts_updated_pods_not_yet_consistent_and_ready() {
        let p = pods(100, 30, 26);
        assert_eq!(plan(&set(json!({"maxUnavailable": 10})), &p).len(), 6);
        assert_eq!(plan(&set(json!({"maxUnavailable": 100})), &pods(100, 30, 27)).len(), 70);
    }

    /// Spec scenario 25 (unit part): percentages of matched pods.
    #[test]
    fn percent_max_unavailable_is_of_matched_pods() {
        assert_eq!(plan(&set(json!({"maxUnavailable": "10%"})), &pods(1000, 300, 260)).len(), 60);
        assert_eq!(plan(&set(json!({"maxUnavailable": "5%"})), &pods(1000, 300, 250)).len(), 0);
        // Rounded up: 10% of 5 pods is one pod, not a stalled rollout.
        assert_eq!(plan(&set(json!({"maxUnavailable": "10%"})), &pods(5, 0, 0)).len(), 1);
    }

    /// Spec scenario 28: partition keeps waiting pods old, maxUnavailable bounds the rest.
    #[test]
    fn partition_arithmetic() {
        let p = pods(1000, 800, 760);
        let picked =
            |partition: serde_json::Value| plan(&set(json!({"maxUnavailable": 100, "partition": partition})), &p).len();
        assert_eq!(picked(json!(180)), 20);
        assert_eq!(picked(json!(100)), 60);
        assert_eq!(picked(json!("18%")), 20);
        assert_eq!(picked(json!("10%")), 60);
        assert_eq!(picked(json!(200)), 0);
        assert_eq!(picked(json!(1000)), 0);
    }

    /// Runs rounds to the end: each round's picks are updated (and in flight), then all in-flight
    /// pods finish. Returns the batch sizes and the final number of updated pods.
    fn roll_out(set: &SidecarSet, mut p: Vec<PodFacts>) -> (Vec<usize>, usize) {
        let mut batches = Vec::new();
        loop {
            let picked = plan(set, &p);
            if picked.is_empty() {
                break;
            }
            let m = max_unavailable(set.spec.update_strategy.as_ref(), p.len() as u32) as usize;
            for i in &picked {
                p[*i].updated = true;
                p[*i].consistent_ready = false;
            }
            let in_flight = p.iter().filter(|f| f.in_flight()).count();
            assert!(in_flight <= m, "{in_flight} in flight > maxUnavailable {m}");
            batches.push(picked.len());
            for f in p.iter_mut() {
                f.consistent_ready = true;
            }
        }
        (batches, p.iter().filter(|f| f.updated).count())
    }

    /// Spec scenario 26.
    #[test]
    fn partition_50_max_unavailable_10_on_100_pods() {
        let (batches, updated) = roll_out(&set(json!({"maxUnavailable": 10, "partition": 50})), pods(100, 0, 0));
        assert_eq!(batches, [10, 10, 10, 10, 10]);
        assert_eq!(updated, 50);
    }

    /// Spec scenario 27.
    #[test]
    fn partition_80_max_unavailable_30_updates_20_in_one_round() {
        let (batches, updated) = roll_out(&set(json!({"maxUnavailable": 30, "partition": 80})), pods(100, 0, 0));
        assert_eq!(batches, [20]);
        assert_eq!(updated, 20);
    }

    /// Spec scenario 25 (the article's rollout): 1000 pods at 10%, 20 already updated by a canary.
    #[test]
    fn a_thousand_pods_at_ten_percent() {
        let (batches, updated) = roll_out(&set(json!({"maxUnavailable": "10%"})), pods(1000, 20, 20));
        assert_eq!(batches.len(), 10, "{batches:?}");
        assert!(batches.iter().all(|b| *b <= 100));
        assert_eq!(updated, 1000);
    }

    /// Spec scenario 29 (unit): only the canary-labelled pods.
    #[test]
    fn canary_selector_limits_the_rollout() {
        let mut p = pods(1000, 0, 0);
        for f in p.iter_mut().take(30) {
            f.selected = true;
        }
        for f in p.iter_mut().skip(30) {
            f.selected = false;
        }
        let picked = plan(&set(json!({"maxUnavailable": 100, "selector": {"matchLabels": {"canary": "true"}}})), &p);
        assert_eq!(picked.len(), 30);
        assert!(picked.iter().all(|&i| i < 30));
    }

    /// Spec scenario 30: not-ready pods first (even with the window full), then the newest.
    #[test]
    fn order_is_not_ready_first_then_newest_and_stable() {
        let mut p = pods(20, 0, 0);
        for i in [3, 8, 9, 14, 19] {
            p[i] = not_ready(p[i].clone());
        }
        let s = set(json!({"maxUnavailable": 3}));
        let picked = plan(&s, &p);
        assert_eq!(picked[..5].to_vec(), [19, 14, 9, 8, 3]);
        assert_eq!(picked[5..], [18, 17, 16], "then the three newest ready pods");
        assert_eq!(plan(&s, &p), picked, "the same order every round");
        // Window full (3 in flight): only the not-ready pods still go.
        let mut full = p.clone();
        for i in [0, 1, 2] {
            full[i].updated = true;
            full[i].consistent_ready = false;
        }
        assert_eq!(plan(&s, &full), [19, 14, 9, 8, 3]);
        // A pending, unscheduled pod goes before everything.
        full[5].rank.scheduled = false;
        full[5].rank.phase = 0;
        full[5] = not_ready(full[5].clone());
        assert_eq!(plan(&s, &full)[0], 5);
    }

    /// Spec scenario 31 (unit): one scatter term puts nginx pods at 1, 7, 13, 20.
    #[test]
    fn scatter_by_app_name() {
        let mut p = pods(20, 0, 0);
        for (i, f) in p.iter_mut().enumerate() {
            let app = if [0, 1, 2, 3].contains(&i) { "nginx" } else { "web" };
            f.labels.insert("app_name".into(), app.into());
        }
        let s = set(json!({"maxUnavailable": 20, "scatterStrategy": [{"key": "app_name", "value": "nginx"}]}));
        let order = plan(&s, &p);
        let at: Vec<usize> = order.iter().enumerate().filter(|(_, i)| **i < 4).map(|(pos, _)| pos + 1).collect();
        assert_eq!(at, [1, 7, 13, 20]);
        let star = set(json!({"maxUnavailable": 20, "scatterStrategy": [{"key": "app_name", "value": "*"}]}));
        let order = plan(&star, &p);
        let nginx_in_first_5 = order[..5].iter().filter(|i| **i < 4).count();
        assert_eq!(nginx_in_first_5, 1, "`*` expands to the values present: {order:?}");
    }

    #[test]
    fn not_update_and_paused_pick_nothing() {
        let p = pods(10, 0, 0);
        assert!(plan(&set(json!({"type": "NotUpdate"})), &p).is_empty());
        assert!(plan(&set(json!({"paused": true})), &p).is_empty());
        assert_eq!(plan(&set(json!({"paused": false})), &p).len(), 1, "default maxUnavailable 1");
    }

    /// Spec scenario 22/23: a broken (not ready) updated pod does not block replacing it, and
    /// holds its slot otherwise.
    #[test]
    fn unready_updated_pods_hold_slots_and_unready_waiting_pods_take_none() {
        let s = set(json!({"maxUnavailable": "50%"}));
        // 4 pods, 2 updated to a bad image (not ready): the window (2) is full.
        let mut p = pods(4, 2, 0);
        assert!(plan(&s, &p).is_empty());
        // A new version: the broken pods are waiting again and, not ready, go without slots.
        for f in p.iter_mut().take(2) {
            f.updated = false;
            *f = not_ready(f.clone());
        }
        let picked = plan(&s, &p);
        assert_eq!(picked.len(), 4, "2 not-ready + 2 ready within the window: {picked:?}");
    }

    #[test]
    fn counts_follow_the_status_definitions() {
        let c = RolloutCounts::of(&pods(10, 4, 1));
        assert_eq!(
            c,
            RolloutCounts {
                matched: 10,
                updated: 4,
                ready: 7,
                updated_ready: 1,
                in_flight: 3,
                waiting: 6,
                waiting_not_ready: 0
            }
        );
    }
}
