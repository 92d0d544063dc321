//! WorkloadSpread validation (upstream v1.3 webhook rules), and the conflict with another
//! WorkloadSpread on the same workload, given the others in the namespace.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ErrorList, FieldPath, duplicate, forbidden, invalid, not_supported, required};
use crate::api::workloadspread::{WorkloadSpread, WorkloadSpreadScheduleStrategyType};

/// The workloads a WorkloadSpread may target, as (API group, kind).
pub const ALLOWED_TARGETS: [(&str, &str); 6] = [
    ("apps.kruise.io", "CloneSet"),
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("batch", "Job"),
    ("apps", "StatefulSet"),
    ("apps.kruise.io", "StatefulSet"),
];

/// The API request timeout the adaptive reschedule window must fit into, as upstream.
const RESCHEDULE_BUDGET_SECONDS: i32 = 295;

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

pub fn validate_workloadspread(ws: &WorkloadSpread, old: Option<&WorkloadSpread>) -> ErrorList {
    let spec = FieldPath::new("spec");
    let s = &ws.spec;
    let mut errs = ErrorList::new();

    let t = &s.target_reference;
    let tp = spec.child("targetRef");
    for (name, value) in [("apiVersion", &t.api_version), ("kind", &t.kind), ("name", &t.name)] {
        if value.is_empty() {
            errs.push(required(&tp.child(name), ""));
        }
    }
    let is_stateful = t.kind == "StatefulSet";
    if !t.api_version.is_empty()
        && !t.kind.is_empty()
        && !ALLOWED_TARGETS.contains(&(group_of(&t.api_version), t.kind.as_str()))
    {
        errs.push(invalid(
            &tp,
            format!("{}/{}", t.api_version, t.kind),
            "TargetReference's GroupKind is not permitted",
        ));
    }

    let sp = spec.child("subsets");
    if s.subsets.is_empty() {
        errs.push(required(&sp, "subsets number must >= 1 in WorkloadSpread"));
    }
    let mut names = HashSet::new();
    let (mut ints, mut percents, mut percent_sum) = (0, 0, 0u32);
    for (i, sub) in s.subsets.iter().enumerate() {
        let p = sp.index(i);
        if sub.name.is_empty() {
            errs.push(required(&p.child("name"), ""));
        } else if !names.insert(sub.name.as_str()) {
            errs.push(duplicate(&p.child("name"), &sub.name));
        }
        for (j, term) in sub.preferred_node_selector_terms.iter().flatten().enumerate() {
            if !(1..=100).contains(&term.weight) {
                errs.push(invalid(
                    &p.child("preferredNodeSelectorTerms").index(j).child("weight"),
                    term.weight,
                    "must be in the range 1-100",
                ));
            }
        }
        for (j, tol) in sub.tolerations.iter().flatten().enumerate() {
            let op = tol.operator.as_deref().unwrap_or("Equal");
            if !matches!(op, "Equal" | "Exists") {
                errs.push(not_supported(&p.child("tolerations").index(j).child("operator"), op, &["Equal", "Exists"]));
            } else if op == "Exists" && tol.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.push(invalid(
                    &p.child("tolerations").index(j).child("operator"),
                    op,
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        match &sub.max_replicas {
            None => {}
            Some(IntOrString::Int(n)) => {
                ints += 1;
                if *n < 0 {
                    errs.push(invalid(&p.child("maxReplicas"), n, "must be greater than or equal to 0"));
                }
            }
            Some(IntOrString::String(v)) => {
                percents += 1;
                match v.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    Some(pct) => percent_sum += pct,
                    None => errs.push(invalid(
                        &p.child("maxReplicas"),
                        v,
                        "must be an integer or an integer percentage (e.g '5%')",
                    )),
                }
                if is_stateful {
                    errs.push(invalid(&p.child("maxReplicas"), v, "StatefulSet targets need integer maxReplicas"));
                }
            }
        }
    }
    if ints > 0 && percents > 0 {
        errs.push(invalid(
            &sp,
            "maxReplicas",
            "all subsets' maxReplicas must be of the same type: integers or percentages",
        ));
    }
    if percent_sum > 100 {
        errs.push(invalid(&sp, format!("{percent_sum}%"), "the percentages of maxReplicas add up to more than 100%"));
    }
    let last_bounded = s.subsets.last().is_some_and(|l| l.max_replicas.is_some());
    if percents > 0 && ints == 0 && percents == s.subsets.len() && last_bounded && percent_sum != 100 {
        errs.push(invalid(
            &sp,
            format!("{percent_sum}%"),
            "when every subset is bounded by a percentage they must add up to 100%",
        ));
    }

    if let Some(strategy) = &s.schedule_strategy {
        let ssp = spec.child("scheduleStrategy");
        let adaptive = strategy.type_ == Some(WorkloadSpreadScheduleStrategyType::Adaptive);
        if let Some(a) = &strategy.adaptive {
            if !adaptive {
                errs.push(forbidden(&ssp.child("adaptive"), "adaptive is only for scheduleStrategy.type Adaptive"));
            }
            if s.subsets.len() > 1 && last_bounded {
                errs.push(forbidden(&ssp.child("adaptive"), "with Adaptive the last subset must have no maxReplicas"));
            }
            if let Some(secs) = a.reschedule_critical_seconds {
                let n = i32::try_from(s.subsets.len()).unwrap_or(i32::MAX);
                let max = if n > 1 { RESCHEDULE_BUDGET_SECONDS / (n - 1) } else { i32::MAX };
                if secs < 0 || secs > max {
                    errs.push(invalid(
                        &ssp.child("adaptive").child("rescheduleCriticalSeconds"),
                        secs,
                        &format!("must be between 0 and {max} with {n} subsets"),
                    ));
                }
            }
        }
    }

    if let Some(old) = old {
        let o = &old.spec.target_reference;
        if group_of(&o.api_version) != group_of(&t.api_version) || o.kind != t.kind || o.name != t.name {
            errs.push(forbidden(&tp, "the target's group, kind and name cannot change"));
        }
    }
    errs
}

/// Another WorkloadSpread in the namespace already spreads the same workload (group, kind and
/// name; the version does not matter). `others` may include `new` (skipped by name).
pub fn validate_workloadspread_conflicts(new: &WorkloadSpread, others: &[WorkloadSpread]) -> ErrorList {
    let t = &new.spec.target_reference;
    let name = new.metadata.name.as_deref();
    others
        .iter()
        .filter(|o| o.metadata.name.as_deref() != name)
        .filter(|o| {
            let ot = &o.spec.target_reference;
            group_of(&ot.api_version) == group_of(&t.api_version) && ot.kind == t.kind && ot.name == t.name
        })
        .map(|o| {
            invalid(
                &FieldPath::new("spec").child("targetRef"),
                &t.name,
                &format!(
                    "this workload is already spread by WorkloadSpread {}",
                    o.metadata.name.as_deref().unwrap_or_default()
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::workloadspread::{
        AdaptiveWorkloadSpreadStrategy, TargetReference, WorkloadSpreadScheduleStrategy, WorkloadSpreadSpec,
        WorkloadSpreadSubset,
    };

    fn subset(name: &str, max: Option<IntOrString>) -> WorkloadSpreadSubset {
        WorkloadSpreadSubset { name: name.into(), max_replicas: max, ..Default::default() }
    }

    fn ws(subsets: Vec<WorkloadSpreadSubset>) -> WorkloadSpread {
        WorkloadSpread::new(
            "spread",
            WorkloadSpreadSpec {
                target_reference: TargetReference {
                    api_version: "apps.kruise.io/v1alpha1".into(),
                    kind: "CloneSet".into(),
                    name: "web".into(),
                },
                subsets,
                schedule_strategy: None,
            },
        )
    }

    fn fields(w: &WorkloadSpread, old: Option<&WorkloadSpread>) -> Vec<String> {
        validate_workloadspread(w, old).into_iter().map(|e| e.field).collect()
    }

    fn pct(s: &str) -> Option<IntOrString> {
        Some(IntOrString::String(s.into()))
    }

    #[test]
    fn targets_and_subsets() {
        assert!(fields(&ws(vec![subset("a", Some(IntOrString::Int(3))), subset("b", None)]), None).is_empty());
        let mut w = ws(vec![]);
        w.spec.target_reference.kind = "DaemonSet".into();
        w.spec.target_reference.name = String::new();
        assert_eq!(fields(&w, None), ["spec.targetRef.name", "spec.targetRef", "spec.subsets"]);
        assert_eq!(fields(&ws(vec![subset("a", None), subset("a", None)]), None), ["spec.subsets[1].name"]);
    }

    #[test]
    fn max_replicas_rules() {
        assert_eq!(
            fields(&ws(vec![subset("a", Some(IntOrString::Int(1))), subset("b", pct("50%"))]), None),
            ["spec.subsets"]
        );
        assert_eq!(
            fields(&ws(vec![subset("a", pct("70%")), subset("b", pct("40%"))]), None),
            ["spec.subsets", "spec.subsets"]
        );
        assert_eq!(
            fields(&ws(vec![subset("a", pct("30%")), subset("b", pct("30%"))]), None),
            ["spec.subsets"],
            "must sum to 100%"
        );
        assert!(fields(&ws(vec![subset("a", pct("30%")), subset("b", pct("70%"))]), None).is_empty());
        assert!(
            fields(&ws(vec![subset("a", pct("30%")), subset("b", None)]), None).is_empty(),
            "an unbounded last subset"
        );
        assert_eq!(fields(&ws(vec![subset("a", Some(IntOrString::Int(-1)))]), None), ["spec.subsets[0].maxReplicas"]);
        let mut w = ws(vec![subset("a", pct("100%"))]);
        w.spec.target_reference =
            TargetReference { api_version: "apps/v1".into(), kind: "StatefulSet".into(), name: "db".into() };
        assert_eq!(fields(&w, None), ["spec.subsets[0].maxReplicas"]);
    }

    #[test]
    fn one_spread_per_workload() {
        let new = ws(vec![subset("a", None)]);
        let mut other = ws(vec![subset("a", None)]);
        other.metadata.name = Some("other".into());
        other.spec.target_reference.api_version = "apps.kruise.io/v1beta1".into();
        assert_eq!(validate_workloadspread_conflicts(&new, &[other.clone()]).len(), 1);
        other.spec.target_reference.name = "api".into();
        assert!(validate_workloadspread_conflicts(&new, &[other]).is_empty());
        assert!(validate_workloadspread_conflicts(&new, std::slice::from_ref(&new)).is_empty(), "itself is skipped");
    }

    #[test]
    fn adaptive_rules_and_updates() {
        let mut w = ws(vec![subset("a", Some(IntOrString::Int(2))), subset("b", None), subset("c", None)]);
        w.spec.schedule_strategy = Some(WorkloadSpreadScheduleStrategy {
            type_: Some(WorkloadSpreadScheduleStrategyType::Adaptive),
            adaptive: Some(AdaptiveWorkloadSpreadStrategy {
                reschedule_critical_seconds: Some(148),
                ..Default::default()
            }),
        });
        assert_eq!(fields(&w, None), ["spec.scheduleStrategy.adaptive.rescheduleCriticalSeconds"], "295 / 2 = 147");
        w.spec.schedule_strategy.as_mut().unwrap().adaptive.as_mut().unwrap().reschedule_critical_seconds = Some(147);
        assert!(fields(&w, None).is_empty());
        w.spec.schedule_strategy.as_mut().unwrap().type_ = Some(WorkloadSpreadScheduleStrategyType::Fixed);
        assert_eq!(fields(&w, None), ["spec.scheduleStrategy.adaptive"]);

        let old = ws(vec![subset("a", None)]);
        let mut new = ws(vec![subset("a", None)]);
        new.spec.target_reference.api_version = "apps.kruise.io/v1beta1".into();
        assert!(fields(&new, Some(&old)).is_empty(), "only the version changed");
        new.spec.target_reference.name = "other".into();
        assert_eq!(fields(&new, Some(&old)), ["spec.targetRef"]);
    }
}
