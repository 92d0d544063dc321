//! Label selector matching, as `metav1.LabelSelectorAsSelector(...).Matches(labels)`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches everything; an invalid
/// operator matches nothing (validation rejects it first).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match (e.operator.as_str(), labels.get(&e.key)) {
            ("In", Some(v)) => values.contains(v),
            ("In", None) => false,
            ("NotIn", Some(v)) => !values.contains(v),
            ("NotIn", None) => true,
            ("Exists", found) => found.is_some(),
            ("DoesNotExist", found) => found.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Whether two selectors may select the same object, exactly as upstream's
/// `IsSelectorOverlapping` (pkg/util/selector.go) decides it: they overlap unless a disjointness
/// rule fires in either direction. The rules are upstream's, quirks included (an `Exists` on a
/// key the other selector does not mention counts as disjoint, and a label value `ALL` acts as
/// `Exists`), so that kruise-rs admits and refuses the same SidecarSets as upstream.
pub fn overlapping(a: &LabelSelector, b: &LabelSelector) -> bool {
    !(disjoint(a, b) || disjoint(b, a))
}

const ALL: &str = "ALL";

fn disjoint(s1: &LabelSelector, s2: &LabelSelector) -> bool {
    let mut values1: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in s1.match_labels.iter().flatten() {
        values1.insert(k, vec![v]);
    }
    for req in s1.match_expressions.iter().flatten() {
        match req.operator.as_str() {
            "In" => values1.entry(&req.key).or_default().extend(req.values.iter().flatten().map(String::as_str)),
            "Exists" => {
                values1.insert(&req.key, vec![ALL]);
            }
            _ => {}
        }
    }
    for (k, v) in s2.match_labels.iter().flatten() {
        if let Some(vals) = values1.get(k.as_str())
            && !vals.contains(&ALL)
            && !vals.contains(&v.as_str())
        {
            return true;
        }
    }
    for req in s2.match_expressions.iter().flatten() {
        let vals = values1.get(req.key.as_str());
        let req_values: Vec<&str> = req.values.iter().flatten().map(String::as_str).collect();
        let hit = match req.operator.as_str() {
            "In" => vals.is_some_and(|v| !v.contains(&ALL) && !v.iter().any(|x| req_values.contains(x))),
            // Every value s1 allows is excluded.
            "NotIn" => vals.is_some_and(|v| v.iter().all(|x| req_values.contains(x))),
            "Exists" => vals.is_none(),
            "DoesNotExist" => vals.is_some(),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(labels_: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!labels_.is_empty()).then(|| labels(labels_)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn overlap_as_upstream_decides_it() {
        let a_h = sel(&[("a", "h")], vec![]);
        // The disjointness examples the spec names.
        assert!(!overlapping(&a_h, &sel(&[("a", "i")], vec![])));
        assert!(!overlapping(&a_h, &sel(&[], vec![expr("a", "In", &["i", "j"])])));
        assert!(!overlapping(&sel(&[], vec![expr("a", "NotIn", &["h", "i"])]), &a_h));
        assert!(!overlapping(&sel(&[], vec![expr("a", "DoesNotExist", &[])]), &a_h));
        // Overlaps.
        assert!(overlapping(&a_h, &a_h));
        assert!(overlapping(&a_h, &sel(&[], vec![expr("a", "In", &["h", "x"])])));
        assert!(overlapping(&a_h, &sel(&[("b", "c")], vec![])), "different keys overlap");
        assert!(overlapping(&sel(&[], vec![expr("a", "Exists", &[])]), &sel(&[("a", "z")], vec![])));
        // Upstream's quirk: Exists on a key the other side does not mention counts as disjoint.
        assert!(!overlapping(&sel(&[], vec![expr("x", "Exists", &[])]), &a_h));
    }

    #[test]
    fn labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["a", "b"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(&sel, &labels(&[("app", "web"), ("tier", "a"), ("team", "x")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "c"), ("team", "x")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("env", "prod")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("legacy", "")])));
        assert!(matches(&LabelSelector::default(), &labels(&[])));
        let bad = LabelSelector { match_expressions: Some(vec![expr("a", "Like", &["x"])]), ..Default::default() };
        assert!(!matches(&bad, &labels(&[("a", "x")])));
    }
}
