//! CloneSet defaulting and validation (upstream v1.3 webhook rules), with the `podsToDelete`
//! checks that need the namespace's pods taking them as input.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ErrorList, FieldPath, duplicate, forbidden, invalid, scaled_value, validate_dns_subdomain_name,
    validate_scatter_strategy, validate_selector_and_template, validate_update_priority,
};
use crate::api::cloneset::{
    CloneSet, CloneSetUpdateStrategy, CloneSetUpdateStrategyType, DEFAULT_CLONESET_MAX_UNAVAILABLE,
    InPlaceUpdateStrategy,
};

pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// The mutating webhook's defaults, the pod template's included (apply them on create, and on
/// update only when the template changed, unless gate `TemplateNoDefaults` is on).
pub fn default_cloneset(cs: &mut CloneSet) {
    let s = &mut cs.spec;
    if let Some(ps) = s.template.spec.as_mut() {
        super::pod::default_pod_spec(ps);
    }
    s.replicas.get_or_insert(1);
    s.revision_history_limit.get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);
    let u = s.update_strategy.get_or_insert_with(CloneSetUpdateStrategy::default);
    let t = *u.type_.get_or_insert(CloneSetUpdateStrategyType::ReCreate);
    if t != CloneSetUpdateStrategyType::ReCreate {
        u.in_place_update_strategy.get_or_insert_with(InPlaceUpdateStrategy::default);
    }
    u.partition.get_or_insert(IntOrString::Int(0));
    u.max_unavailable.get_or_insert_with(|| IntOrString::String(DEFAULT_CLONESET_MAX_UNAVAILABLE.into()));
    u.max_surge.get_or_insert(IntOrString::Int(0));
}

fn scaled(v: Option<&IntOrString>, total: i32, path: &FieldPath, errs: &mut ErrorList) -> Option<i32> {
    let v = v?;
    match scaled_value(v, total, true) {
        Ok(n) => Some(n),
        Err(reason) => {
            errs.push(invalid(path, format!("{v:?}"), &reason));
            None
        }
    }
}

pub fn validate_cloneset(cs: &CloneSet, old: Option<&CloneSet>) -> ErrorList {
    let spec = FieldPath::new("spec");
    let s = &cs.spec;
    let mut errs = validate_dns_subdomain_name(cs.metadata.name.as_deref());
    let replicas = s.replicas.unwrap_or(1);
    if replicas < 0 {
        errs.push(invalid(&spec.child("replicas"), replicas, "replicas cannot be negative"));
    }
    let claims: Vec<&str> =
        s.volume_claim_templates.iter().flatten().filter_map(|c| c.metadata.name.as_deref()).collect();
    errs.extend(validate_selector_and_template(&s.selector, &s.template, &spec, &claims));

    let mut seen = std::collections::HashSet::new();
    let ss = spec.child("scaleStrategy");
    if let Some(scale) = &s.scale_strategy {
        for (i, name) in scale.pods_to_delete.iter().flatten().enumerate() {
            if !seen.insert(name.as_str()) {
                errs.push(duplicate(&ss.child("podsToDelete").index(i), name));
            }
        }
        scaled(scale.max_unavailable.as_ref(), replicas, &ss.child("maxUnavailable"), &mut errs);
    }

    if let Some(u) = &s.update_strategy {
        let up = spec.child("updateStrategy");
        let partition = scaled(u.partition.as_ref(), replicas, &up.child("partition"), &mut errs);
        if partition.is_some_and(|p| p < 0) {
            errs.push(invalid(&up.child("partition"), format!("{:?}", u.partition), "partition cannot be negative"));
        }
        let max_unavailable = scaled(u.max_unavailable.as_ref(), replicas, &up.child("maxUnavailable"), &mut errs);
        let max_surge = scaled(u.max_surge.as_ref(), replicas, &up.child("maxSurge"), &mut errs);
        if u.type_ == Some(CloneSetUpdateStrategyType::InPlaceOnly) && max_surge.is_some_and(|m| m > 0) {
            errs.push(forbidden(&up.child("maxSurge"), "can not use maxSurge with strategy type InPlaceOnly"));
        }
        if replicas > 0 && max_unavailable.unwrap_or(0) < 1 && max_surge.unwrap_or(0) < 1 {
            errs.push(invalid(
                &up.child("maxUnavailable"),
                format!("{:?}", u.max_unavailable),
                "maxUnavailable and maxSurge can not both be less than 1",
            ));
        }
        if let Some(p) = &u.priority_strategy {
            errs.extend(validate_update_priority(p, &up.child("priorityStrategy")));
        }
        errs.extend(validate_scatter_strategy(
            u.scatter_strategy.as_deref().unwrap_or_default(),
            &up.child("scatterStrategy"),
        ));
    }

    if let Some(old) = old {
        errs.extend(validate_update(cs, old));
    }
    errs
}

/// Only replicas, template, scaleStrategy, updateStrategy, minReadySeconds, lifecycle and
/// revisionHistoryLimit may change; under InPlaceOnly the template may change only in images.
fn validate_update(new: &CloneSet, old: &CloneSet) -> ErrorList {
    let spec = FieldPath::new("spec");
    let mut errs = ErrorList::new();
    if new.spec.selector != old.spec.selector {
        errs.push(forbidden(&spec.child("selector"), "selector is immutable"));
    }
    if new.spec.volume_claim_templates != old.spec.volume_claim_templates {
        errs.push(forbidden(&spec.child("volumeClaimTemplates"), "volumeClaimTemplates is immutable"));
    }
    let in_place_only =
        new.spec.update_strategy.as_ref().and_then(|u| u.type_) == Some(CloneSetUpdateStrategyType::InPlaceOnly);
    if in_place_only && without_images(&new.spec.template) != without_images(&old.spec.template) {
        errs.push(forbidden(
            &spec.child("template"),
            "only container image updates are allowed with updateStrategy.type InPlaceOnly",
        ));
    }
    errs
}

fn without_images(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let mut t = t.clone();
    if let Some(s) = t.spec.as_mut() {
        for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
            c.image = None;
        }
    }
    t
}

/// Names newly added to `scaleStrategy.podsToDelete` must be pods of this CloneSet that exist and
/// are not already terminating. `pods` are the pods of the CloneSet's namespace (or at least
/// those named).
pub fn validate_pods_to_delete(
    new: &CloneSet,
    old: Option<&CloneSet>,
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> ErrorList {
    let path = FieldPath::new("spec").child("scaleStrategy").child("podsToDelete");
    let before: Vec<&String> = old
        .and_then(|o| o.spec.scale_strategy.as_ref())
        .and_then(|s| s.pods_to_delete.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let uid = new.metadata.uid.as_deref();
    let mut errs = ErrorList::new();
    for (i, name) in new.spec.scale_strategy.iter().flat_map(|s| s.pods_to_delete.iter().flatten()).enumerate() {
        if before.contains(&name) {
            continue;
        }
        let pod = pods.iter().find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        let reason = match pod {
            None => Some("pod not found"),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Some("pod is already terminating"),
            Some(p) => {
                let owner = p.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true));
                if owner.is_some_and(|r| Some(r.uid.as_str()) == uid) {
                    None
                } else {
                    Some("pod is not owned by this CloneSet")
                }
            }
        };
        if let Some(reason) = reason {
            errs.push(invalid(&path.index(i), name, reason));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cloneset::{CloneSetScaleStrategy, CloneSetSpec};
    use crate::api::common::{
        UpdatePriorityOrderTerm, UpdatePriorityStrategy, UpdatePriorityWeightTerm, UpdateScatterTerm,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::collections::BTreeMap;

    fn cloneset() -> CloneSet {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        CloneSet::new(
            "web",
            CloneSetSpec {
                replicas: Some(3),
                selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "web".into(),
                            image: Some("nginx:1".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
        )
    }

    fn fields(cs: &CloneSet, old: Option<&CloneSet>) -> Vec<String> {
        validate_cloneset(cs, old).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut cs = cloneset();
        cs.spec.replicas = None;
        default_cloneset(&mut cs);
        let u = cs.spec.update_strategy.as_ref().unwrap();
        assert_eq!(cs.spec.replicas, Some(1));
        assert_eq!(cs.spec.revision_history_limit, Some(10));
        assert_eq!(u.type_, Some(CloneSetUpdateStrategyType::ReCreate));
        assert_eq!(u.partition, Some(IntOrString::Int(0)));
        assert_eq!(u.max_unavailable, Some(IntOrString::String("20%".into())));
        assert_eq!(u.max_surge, Some(IntOrString::Int(0)));
        assert!(u.in_place_update_strategy.is_none());
        assert!(validate_cloneset(&cs, None).is_empty());

        let mut cs = cloneset();
        cs.spec.update_strategy = Some(CloneSetUpdateStrategy {
            type_: Some(CloneSetUpdateStrategyType::InPlaceIfPossible),
            ..Default::default()
        });
        default_cloneset(&mut cs);
        assert_eq!(cs.spec.update_strategy.unwrap().in_place_update_strategy, Some(InPlaceUpdateStrategy::default()));
    }

    #[test]
    fn the_rejections_the_spec_lists() {
        let mut cs = cloneset();
        cs.spec.replicas = Some(-1);
        assert_eq!(fields(&cs, None), ["spec.replicas"]);

        let mut cs = cloneset();
        cs.spec.template.metadata = None;
        assert_eq!(fields(&cs, None), ["spec.template.metadata.labels"], "selector must match template labels");

        let mut cs = cloneset();
        cs.spec.selector = LabelSelector::default();
        assert_eq!(fields(&cs, None), ["spec.selector"]);

        let mut cs = cloneset();
        let pod = cs.spec.template.spec.as_mut().unwrap();
        pod.restart_policy = Some("Never".into());
        pod.active_deadline_seconds = Some(10);
        assert_eq!(fields(&cs, None), ["spec.template.spec.restartPolicy", "spec.template.spec.activeDeadlineSeconds"]);

        let mut cs = cloneset();
        cs.spec.update_strategy = Some(CloneSetUpdateStrategy {
            partition: Some(IntOrString::Int(-1)),
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(0)),
            priority_strategy: Some(UpdatePriorityStrategy {
                order_priority: Some(vec![UpdatePriorityOrderTerm { ordered_key: "k".into() }]),
                weight_priority: Some(vec![UpdatePriorityWeightTerm {
                    weight: 101,
                    match_selector: LabelSelector::default(),
                }]),
            }),
            scatter_strategy: Some(vec![
                UpdateScatterTerm { key: "a".into(), value: "1".into() },
                UpdateScatterTerm { key: "a".into(), value: "1".into() },
            ]),
            ..Default::default()
        });
        cs.spec.scale_strategy =
            Some(CloneSetScaleStrategy { pods_to_delete: Some(vec!["p".into(), "p".into()]), ..Default::default() });
        assert_eq!(
            fields(&cs, None),
            [
                "spec.scaleStrategy.podsToDelete[1]",
                "spec.updateStrategy.partition",
                "spec.updateStrategy.maxUnavailable",
                "spec.updateStrategy.priorityStrategy",
                "spec.updateStrategy.priorityStrategy.weightPriority[0].weight",
                "spec.updateStrategy.priorityStrategy.weightPriority[0].matchSelector",
                "spec.updateStrategy.scatterStrategy[1]",
            ]
        );
    }

    #[test]
    fn surge_and_unavailable() {
        let strategy = |t, mu: IntOrString, ms: IntOrString| CloneSetUpdateStrategy {
            type_: Some(t),
            max_unavailable: Some(mu),
            max_surge: Some(ms),
            ..Default::default()
        };
        let mut cs = cloneset();
        cs.spec.update_strategy = Some(strategy(
            CloneSetUpdateStrategyType::ReCreate,
            IntOrString::String("120%".into()),
            IntOrString::Int(0),
        ));
        assert!(fields(&cs, None).is_empty(), "maxUnavailable 120% is accepted");
        cs.spec.update_strategy =
            Some(strategy(CloneSetUpdateStrategyType::ReCreate, IntOrString::Int(0), IntOrString::Int(1)));
        assert!(fields(&cs, None).is_empty(), "maxUnavailable 0 with maxSurge 1 is accepted");
        cs.spec.update_strategy =
            Some(strategy(CloneSetUpdateStrategyType::InPlaceOnly, IntOrString::Int(0), IntOrString::Int(1)));
        assert_eq!(fields(&cs, None), ["spec.updateStrategy.maxSurge"]);
        cs.spec.update_strategy =
            Some(strategy(CloneSetUpdateStrategyType::ReCreate, IntOrString::String("x%".into()), IntOrString::Int(1)));
        assert_eq!(fields(&cs, None), ["spec.updateStrategy.maxUnavailable"]);
    }

    #[test]
    fn pods_to_delete_must_be_live_pods_of_this_cloneset() {
        use k8s_openapi::api::core::v1::Pod;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
        let pod = |name: &str, owner_uid: Option<&str>, terminating: bool| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: owner_uid.map(|u| {
                    vec![OwnerReference {
                        uid: u.into(),
                        controller: Some(true),
                        kind: "CloneSet".into(),
                        name: "web".into(),
                        api_version: "apps.kruise.io/v1alpha1".into(),
                        ..Default::default()
                    }]
                }),
                deletion_timestamp: terminating.then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut cs = cloneset();
        cs.metadata.uid = Some("uid-1".into());
        let names = ["mine", "foreign", "orphan", "dying", "missing", "kept"];
        cs.spec.scale_strategy = Some(CloneSetScaleStrategy {
            pods_to_delete: Some(names.iter().map(|n| n.to_string()).collect()),
            ..Default::default()
        });
        let mut old = cloneset();
        old.spec.scale_strategy =
            Some(CloneSetScaleStrategy { pods_to_delete: Some(vec!["kept".into()]), ..Default::default() });
        let pods = [
            pod("mine", Some("uid-1"), false),
            pod("foreign", Some("uid-2"), false),
            pod("orphan", None, false),
            pod("dying", Some("uid-1"), true),
        ];
        let errs = validate_pods_to_delete(&cs, Some(&old), &pods);
        let got: Vec<(String, String)> = errs.into_iter().map(|e| (e.field, e.detail)).collect();
        let at = |i: usize, d: &str| (format!("spec.scaleStrategy.podsToDelete[{i}]"), d.to_string());
        assert_eq!(
            got,
            [
                at(1, "pod is not owned by this CloneSet"),
                at(2, "pod is not owned by this CloneSet"),
                at(3, "pod is already terminating"),
                at(4, "pod not found"),
            ],
            "names already listed before (kept) are not re-checked"
        );
    }

    #[test]
    fn updates() {
        let mut old = cloneset();
        default_cloneset(&mut old);
        let mut new = old.clone();
        new.spec.selector.match_labels.as_mut().unwrap().insert("tier".into(), "x".into());
        new.spec.template.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert("tier".into(), "x".into());
        assert_eq!(fields(&new, Some(&old)), ["spec.selector"]);

        let mut new = cloneset();
        new.spec.update_strategy =
            Some(CloneSetUpdateStrategy { type_: Some(CloneSetUpdateStrategyType::InPlaceOnly), ..Default::default() });
        default_cloneset(&mut new);
        new.spec.template.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into());
        assert!(fields(&new, Some(&old)).is_empty(), "an image change is in-place");
        new.spec.template.spec.as_mut().unwrap().containers[0].args = Some(vec!["-v".into()]);
        assert_eq!(fields(&new, Some(&old)), ["spec.template"]);
    }
}
