//! PodProbeMarker validation (upstream v1.3 rules; upstream stops at the first structural error,
//! here every error is reported). PodProbeMarker has no defaulting.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Probe;

use super::{
    ErrorList, FieldPath, duplicate, forbidden, invalid, not_supported, qualified_name_error, required,
    selector_is_empty, validate_annotation_keys, validate_label_selector, validate_labels,
};
use crate::api::podprobemarker::{PodProbeMarker, ProbeState};

/// Probe names that would collide with the pod conditions Kubernetes and Kruise set.
pub const RESERVED_PROBE_NAMES: [&str; 6] =
    ["PodScheduled", "Initialized", "Ready", "ContainersReady", "KruisePodReady", "InPlaceUpdateReady"];

pub fn validate_podprobemarker(new: &PodProbeMarker, old: Option<&PodProbeMarker>) -> ErrorList {
    let spec = FieldPath::new("spec");
    let mut errs = ErrorList::new();

    let sel_path = spec.child("selector");
    if selector_is_empty(&new.spec.selector) {
        errs.push(required(&sel_path, "empty selector is not valid for PodProbeMarker"));
    } else {
        errs.extend(validate_label_selector(&new.spec.selector, &sel_path));
    }
    if let Some(old) = old
        && old.spec.selector != new.spec.selector
    {
        errs.push(forbidden(&sel_path, "selector must be immutable"));
    }

    let probes_path = spec.child("probes");
    if new.spec.probes.is_empty() {
        errs.push(required(&probes_path, "at least one probe is required"));
    }
    let mut names = HashSet::new();
    let mut condition_types = HashSet::new();
    for (i, p) in new.spec.probes.iter().enumerate() {
        let path = probes_path.index(i);
        if p.name.is_empty() {
            errs.push(required(&path.child("name"), ""));
        } else if RESERVED_PROBE_NAMES.contains(&p.name.as_str()) {
            errs.push(invalid(&path.child("name"), &p.name, "this name is reserved for a pod condition"));
        } else if p.name.contains('#') {
            // NodePodProbe keys probes as `<marker>#<probe>`.
            errs.push(invalid(&path.child("name"), &p.name, "must not contain '#'"));
        } else if !names.insert(p.name.as_str()) {
            errs.push(duplicate(&path.child("name"), &p.name));
        }
        if p.container_name.is_empty() {
            errs.push(required(&path.child("containerName"), ""));
        }
        errs.extend(validate_probe(&p.probe, &path.child("probe")));

        let policies = p.marker_policy.as_deref().unwrap_or_default();
        match p.pod_condition_type.as_deref() {
            None | Some("") if policies.is_empty() => {
                errs.push(required(&path.child("podConditionType"), "podConditionType or markerPolicy must be set"))
            }
            None | Some("") => {}
            Some(t) => {
                if let Some(reason) = qualified_name_error(t) {
                    errs.push(invalid(&path.child("podConditionType"), t, &reason));
                } else if !condition_types.insert(t) {
                    errs.push(duplicate(&path.child("podConditionType"), t));
                }
            }
        }
        let mut states = HashSet::new();
        for (j, policy) in policies.iter().enumerate() {
            let pp = path.child("markerPolicy").index(j);
            match policy.state {
                ProbeState::Succeeded | ProbeState::Failed => {
                    if !states.insert(policy.state) {
                        errs.push(duplicate(&pp.child("state"), &format!("{:?}", policy.state)));
                    }
                }
                ProbeState::Unknown => {
                    errs.push(not_supported(&pp.child("state"), "Unknown", &["Succeeded", "Failed"]))
                }
            }
            let labels = policy.labels.as_ref().filter(|l| !l.is_empty());
            let annotations = policy.annotations.as_ref().filter(|a| !a.is_empty());
            if labels.is_none() && annotations.is_none() {
                errs.push(required(&pp, "labels or annotations must be set"));
            }
            if let Some(l) = labels {
                errs.extend(validate_labels(l, &pp.child("labels")));
            }
            if let Some(a) = annotations {
                errs.extend(validate_annotation_keys(a.keys(), &pp.child("annotations")));
            }
        }
    }
    errs
}

/// v1.3 probes: exactly one handler, and it must be exec with a command.
fn validate_probe(probe: &Probe, path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    let handlers = [probe.exec.is_some(), probe.http_get.is_some(), probe.tcp_socket.is_some(), probe.grpc.is_some()];
    match handlers.iter().filter(|h| **h).count() {
        0 => errs.push(required(path, "must specify a handler type")),
        1 => {}
        _ => errs.push(forbidden(path, "may not specify more than 1 handler type")),
    }
    if probe.http_get.is_some() {
        errs.push(forbidden(&path.child("httpGet"), "only exec probes are supported"));
    }
    if probe.tcp_socket.is_some() {
        errs.push(forbidden(&path.child("tcpSocket"), "only exec probes are supported"));
    }
    if probe.grpc.is_some() {
        errs.push(forbidden(&path.child("grpc"), "only exec probes are supported"));
    }
    if let Some(exec) = &probe.exec
        && exec.command.as_ref().is_none_or(|c| c.is_empty())
    {
        errs.push(required(&path.child("exec").child("command"), ""));
    }
    for (name, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value
            && v < 0
        {
            errs.push(invalid(&path.child(name), v, "must be greater than or equal to 0"));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::podprobemarker::{PodContainerProbe, PodProbeMarkerSpec, ProbeMarkerPolicy};
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::collections::BTreeMap;

    fn marker() -> PodProbeMarker {
        PodProbeMarker::new(
            "idle",
            PodProbeMarkerSpec {
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "game".into())])),
                    ..Default::default()
                },
                probes: vec![PodContainerProbe {
                    name: "Idle".into(),
                    container_name: "main".into(),
                    probe: Probe {
                        exec: Some(ExecAction { command: Some(vec!["/idle.sh".into()]) }),
                        ..Default::default()
                    },
                    marker_policy: Some(vec![ProbeMarkerPolicy {
                        state: ProbeState::Succeeded,
                        labels: Some(BTreeMap::from([("idle".into(), "true".into())])),
                        annotations: None,
                    }]),
                    pod_condition_type: Some("game.io/idle".into()),
                }],
            },
        )
    }

    fn fields(m: &PodProbeMarker, old: Option<&PodProbeMarker>) -> Vec<String> {
        validate_podprobemarker(m, old).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_valid_marker_passes() {
        assert_eq!(fields(&marker(), None), Vec::<String>::new());
    }

    #[test]
    fn selector_rules() {
        let mut m = marker();
        m.spec.selector = LabelSelector::default();
        assert_eq!(fields(&m, None), ["spec.selector: Required value: empty selector is not valid for PodProbeMarker"]);
        let old = marker();
        let mut m = marker();
        m.spec.selector.match_labels = Some(BTreeMap::from([("app".into(), "other".into())]));
        assert_eq!(fields(&m, Some(&old)), ["spec.selector: Forbidden: selector must be immutable"]);
    }

    #[test]
    fn probe_names() {
        let mut m = marker();
        m.spec.probes = vec![];
        assert_eq!(fields(&m, None), ["spec.probes: Required value: at least one probe is required"]);

        let mut m = marker();
        let p = m.spec.probes[0].clone();
        m.spec.probes.push(PodContainerProbe { pod_condition_type: Some("game.io/other".into()), ..p.clone() });
        m.spec.probes.push(PodContainerProbe { name: "Ready".into(), pod_condition_type: None, ..p.clone() });
        m.spec.probes.push(PodContainerProbe {
            name: "".into(),
            container_name: "".into(),
            pod_condition_type: None,
            ..p
        });
        assert_eq!(
            fields(&m, None),
            [
                "spec.probes[1].name: Duplicate value: \"Idle\"",
                "spec.probes[2].name: Invalid value: \"Ready\": this name is reserved for a pod condition",
                "spec.probes[3].name: Required value",
                "spec.probes[3].containerName: Required value",
            ]
        );
    }

    #[test]
    fn handlers() {
        let mut m = marker();
        m.spec.probes[0].probe = Probe::default();
        assert_eq!(fields(&m, None), ["spec.probes[0].probe: Required value: must specify a handler type"]);

        let mut m = marker();
        m.spec.probes[0].probe.http_get = Some(HTTPGetAction { port: IntOrString::Int(80), ..Default::default() });
        assert_eq!(
            fields(&m, None),
            [
                "spec.probes[0].probe: Forbidden: may not specify more than 1 handler type",
                "spec.probes[0].probe.httpGet: Forbidden: only exec probes are supported"
            ]
        );

        let mut m = marker();
        m.spec.probes[0].probe.exec = Some(ExecAction { command: Some(vec![]) });
        m.spec.probes[0].probe.period_seconds = Some(-1);
        assert_eq!(
            fields(&m, None),
            [
                "spec.probes[0].probe.exec.command: Required value",
                "spec.probes[0].probe.periodSeconds: Invalid value: \"-1\": must be greater than or equal to 0"
            ]
        );
    }

    #[test]
    fn conditions_and_policies() {
        let mut m = marker();
        m.spec.probes[0].pod_condition_type = None;
        m.spec.probes[0].marker_policy = None;
        assert_eq!(
            fields(&m, None),
            ["spec.probes[0].podConditionType: Required value: podConditionType or markerPolicy must be set"]
        );

        let mut m = marker();
        m.spec.probes[0].pod_condition_type = Some("#5invalid".into());
        assert_eq!(validate_podprobemarker(&m, None)[0].field, "spec.probes[0].podConditionType");

        let mut m = marker();
        let policy = m.spec.probes[0].marker_policy.as_ref().unwrap()[0].clone();
        m.spec.probes[0].marker_policy = Some(vec![
            policy.clone(),
            policy.clone(),
            ProbeMarkerPolicy { state: ProbeState::Unknown, ..policy.clone() },
            ProbeMarkerPolicy { state: ProbeState::Failed, labels: None, annotations: None },
        ]);
        assert_eq!(
            fields(&m, None),
            [
                "spec.probes[0].markerPolicy[1].state: Duplicate value: \"Succeeded\"",
                "spec.probes[0].markerPolicy[2].state: Unsupported value: \"Unknown\": supported values: \"Succeeded\", \"Failed\"",
                "spec.probes[0].markerPolicy[3]: Required value: labels or annotations must be set",
            ]
        );

        // Each broken part of a key is its own error: `server-/$healthy` gives two (prefix, name),
        // and a bad value one more.
        let mut m = marker();
        m.spec.probes[0].marker_policy.as_mut().unwrap()[0].labels =
            Some(BTreeMap::from([("server-/$healthy".into(), "true".into())]));
        assert_eq!(validate_podprobemarker(&m, None).len(), 2);
        m.spec.probes[0].marker_policy.as_mut().unwrap()[0].labels =
            Some(BTreeMap::from([("server-/$healthy".into(), "not ok!".into())]));
        assert_eq!(validate_podprobemarker(&m, None).len(), 3);
    }
}
