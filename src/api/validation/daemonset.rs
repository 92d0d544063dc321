//! Advanced DaemonSet defaulting and validation (upstream v1.3 webhook rules; upstream answers
//! them with HTTP 500, kruise-rs with 422 and field paths).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ErrorList, FieldPath, forbidden, invalid, required, validate_dns_subdomain_name, validate_selector_and_template,
};
use crate::api::daemonset::{
    DaemonSet, DaemonSetUpdateStrategy, DaemonSetUpdateStrategyType, RollingUpdateDaemonSet, RollingUpdateType,
};

pub const DEFAULT_BURST_REPLICAS: i32 = 250;
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

pub fn default_daemonset(ds: &mut DaemonSet) {
    let s = &mut ds.spec;
    s.burst_replicas.get_or_insert(IntOrString::Int(DEFAULT_BURST_REPLICAS));
    s.revision_history_limit.get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);
    let u = s.update_strategy.get_or_insert_with(DaemonSetUpdateStrategy::default);
    let t = *u.type_.get_or_insert(DaemonSetUpdateStrategyType::RollingUpdate);
    if t != DaemonSetUpdateStrategyType::RollingUpdate {
        return;
    }
    let ru = u.rolling_update.get_or_insert_with(RollingUpdateDaemonSet::default);
    // Surging is Standard with a surge of one node and no unavailability, unless set otherwise.
    if ru.type_ == Some(RollingUpdateType::Surging) {
        ru.max_surge.get_or_insert(IntOrString::Int(1));
        ru.max_unavailable.get_or_insert(IntOrString::Int(0));
        ru.type_ = Some(RollingUpdateType::Standard);
    }
    ru.type_.get_or_insert(RollingUpdateType::Standard);
    if ru.max_unavailable.is_none() && ru.max_surge.is_none() {
        ru.max_unavailable = Some(IntOrString::Int(1));
        ru.max_surge = Some(IntOrString::Int(0));
    }
}

/// 0 for zero (or unset), 1 for a valid positive value, an error otherwise: a non-zero value
/// must be a positive integer or a percentage of at most 100%.
fn non_zero_budget(v: Option<&IntOrString>, path: &FieldPath, errs: &mut ErrorList) -> bool {
    match v {
        None | Some(IntOrString::Int(0)) => false,
        Some(IntOrString::Int(i)) if *i > 0 => true,
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
            Some(0) => false,
            Some(p) if p <= 100 => true,
            _ => {
                errs.push(invalid(path, s, "must be a positive integer or a percentage of at most 100%"));
                false
            }
        },
        Some(IntOrString::Int(i)) => {
            errs.push(invalid(path, i, "must be a positive integer or a percentage of at most 100%"));
            false
        }
    }
}

pub fn validate_daemonset(ds: &DaemonSet) -> ErrorList {
    let spec = FieldPath::new("spec");
    let s = &ds.spec;
    let mut errs = validate_dns_subdomain_name(ds.metadata.name.as_deref());
    errs.extend(validate_selector_and_template(&s.selector, &s.template, &spec, &[]));
    if let Some(m) = s.min_ready_seconds
        && m < 0
    {
        errs.push(invalid(&spec.child("minReadySeconds"), m, "must be greater than or equal to 0"));
    }
    if let Some(r) = s.revision_history_limit
        && r < 0
    {
        errs.push(invalid(&spec.child("revisionHistoryLimit"), r, "must be greater than or equal to 0"));
    }
    if s.lifecycle.as_ref().is_some_and(|l| l.in_place_update.is_some()) {
        errs.push(forbidden(
            &spec.child("lifecycle").child("inPlaceUpdate"),
            "inPlaceUpdate hook is not supported by DaemonSet",
        ));
    }

    let up = spec.child("updateStrategy");
    let strategy = s.update_strategy.as_ref();
    if strategy.and_then(|u| u.type_).unwrap_or(DaemonSetUpdateStrategyType::RollingUpdate)
        == DaemonSetUpdateStrategyType::RollingUpdate
    {
        match strategy.and_then(|u| u.rolling_update.as_ref()) {
            None => errs.push(required(&up.child("rollingUpdate"), "rollingUpdate is required for RollingUpdate")),
            Some(ru) => {
                let rp = up.child("rollingUpdate");
                let unavailable = non_zero_budget(ru.max_unavailable.as_ref(), &rp.child("maxUnavailable"), &mut errs);
                let surge = non_zero_budget(ru.max_surge.as_ref(), &rp.child("maxSurge"), &mut errs);
                if unavailable && surge {
                    errs.push(invalid(
                        &rp.child("maxSurge"),
                        format!("{:?}", ru.max_surge),
                        "cannot be combined with a non-zero maxUnavailable",
                    ));
                }
                let zero = |v: Option<&IntOrString>| {
                    matches!(v, None | Some(IntOrString::Int(0))) || v == Some(&IntOrString::String("0%".into()))
                };
                if zero(ru.max_unavailable.as_ref()) && zero(ru.max_surge.as_ref()) {
                    errs.push(invalid(
                        &rp.child("maxUnavailable"),
                        "0",
                        "maxUnavailable and maxSurge cannot both be zero",
                    ));
                }
                match ru.type_ {
                    Some(RollingUpdateType::InPlaceIfPossible) if surge => errs.push(forbidden(
                        &rp.child("maxSurge"),
                        "maxSurge must be 0 with rollingUpdateType InPlaceIfPossible",
                    )),
                    Some(RollingUpdateType::Surging) if unavailable => errs.push(forbidden(
                        &rp.child("maxUnavailable"),
                        "maxUnavailable must be 0 with rollingUpdateType Surging",
                    )),
                    _ => {}
                }
                if let Some(p) = ru.partition
                    && p < 0
                {
                    errs.push(invalid(&rp.child("partition"), p, "must be greater than or equal to 0"));
                }
                if let Some(sel) = &ru.selector {
                    errs.extend(super::validate_label_selector(sel, &rp.child("selector")));
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{Lifecycle, LifecycleHook};
    use crate::api::daemonset::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::collections::BTreeMap;

    fn daemonset() -> DaemonSet {
        let labels = BTreeMap::from([("app".to_string(), "agent".to_string())]);
        let mut ds = DaemonSet::new(
            "agent",
            DaemonSetSpec {
                selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "agent".into(),
                            image: Some("agent:1".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
        );
        default_daemonset(&mut ds);
        ds
    }

    fn rolling(ds: &mut DaemonSet) -> &mut RollingUpdateDaemonSet {
        ds.spec.update_strategy.as_mut().unwrap().rolling_update.as_mut().unwrap()
    }

    fn fields(ds: &DaemonSet) -> Vec<String> {
        validate_daemonset(ds).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut ds = daemonset();
        let ru = rolling(&mut ds).clone();
        assert_eq!(ru.type_, Some(RollingUpdateType::Standard));
        assert_eq!((ru.max_unavailable, ru.max_surge), (Some(IntOrString::Int(1)), Some(IntOrString::Int(0))));
        assert_eq!(ds.spec.burst_replicas, Some(IntOrString::Int(250)));
        assert_eq!(ds.spec.revision_history_limit, Some(10));
        assert!(fields(&ds).is_empty());

        let mut ds = daemonset();
        *rolling(&mut ds) = RollingUpdateDaemonSet { type_: Some(RollingUpdateType::Surging), ..Default::default() };
        default_daemonset(&mut ds);
        let ru = rolling(&mut ds).clone();
        assert_eq!(ru.type_, Some(RollingUpdateType::Standard), "Surging is stored as Standard");
        assert_eq!((ru.max_unavailable, ru.max_surge), (Some(IntOrString::Int(0)), Some(IntOrString::Int(1))));
    }

    #[test]
    fn the_rejections_the_spec_lists() {
        let mut ds = daemonset();
        rolling(&mut ds).max_surge = Some(IntOrString::Int(1));
        assert_eq!(fields(&ds), ["spec.updateStrategy.rollingUpdate.maxSurge"], "1 and 1");

        let mut ds = daemonset();
        rolling(&mut ds).max_unavailable = Some(IntOrString::Int(0));
        assert_eq!(fields(&ds), ["spec.updateStrategy.rollingUpdate.maxUnavailable"], "both zero");

        let mut ds = daemonset();
        let ru = rolling(&mut ds);
        ru.type_ = Some(RollingUpdateType::InPlaceIfPossible);
        ru.max_unavailable = Some(IntOrString::Int(0));
        ru.max_surge = Some(IntOrString::Int(1));
        assert_eq!(fields(&ds), ["spec.updateStrategy.rollingUpdate.maxSurge"], "in-place with surge");

        let mut ds = daemonset();
        rolling(&mut ds).max_unavailable = Some(IntOrString::String("120%".into()));
        assert_eq!(fields(&ds), ["spec.updateStrategy.rollingUpdate.maxUnavailable"]);

        let mut ds = daemonset();
        rolling(&mut ds).partition = Some(-1);
        ds.spec.lifecycle = Some(Lifecycle { in_place_update: Some(LifecycleHook::default()), ..Default::default() });
        ds.spec.template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        assert_eq!(
            fields(&ds),
            [
                "spec.template.spec.restartPolicy",
                "spec.lifecycle.inPlaceUpdate",
                "spec.updateStrategy.rollingUpdate.partition"
            ]
        );

        let mut ds = daemonset();
        ds.spec.selector = LabelSelector::default();
        ds.spec.update_strategy.as_mut().unwrap().rolling_update = None;
        assert_eq!(fields(&ds), ["spec.selector", "spec.updateStrategy.rollingUpdate"]);
    }
}
