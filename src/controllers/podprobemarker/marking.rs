//! What a pod's probe results mark it with: labels, annotations and a condition per probe, as one
//! strategic merge patch to `pods/status` (the API server keeps label and annotation changes made
//! there). Pure.
//!
//! Upstream never takes marks away. kruise-rs does, for probes that no longer apply to the pod
//! (marker deleted, probe removed from it, pod no longer selected): a stale
//! `pod-deletion-cost` or idle label would mislead scale-in. It removes only what it wrote, and
//! only while it still holds the value written, so it records its marks in the pod annotation
//! [`MARKS_ANNOTATION`]; a patch that removes marks carries the pod's resourceVersion, so a value
//! someone changed meanwhile is never lost.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::nodepodprobe::ContainerProbeState;
use crate::api::podprobemarker::{PodContainerProbe, ProbeState};

/// Pod annotation: the marks kruise-rs set per probe key (JSON object of [`Marks`]).
pub const MARKS_ANNOTATION: &str = "kruise.io/podprobemarker-marks";

/// The labels, annotations and condition one probe set on a pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Marks {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The condition type and the status written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<(String, String)>,
}

/// The pod's recorded marks, by probe key (unreadable: none, and the record is rewritten).
pub fn recorded_marks(pod: &Pod) -> BTreeMap<String, Marks> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MARKS_ANNOTATION))
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or_default()
}

/// The condition status a probe state maps to (Unknown counts as False, as upstream).
fn condition_status(state: ProbeState) -> &'static str {
    if state == ProbeState::Succeeded { "True" } else { "False" }
}

/// One patch for a pod, or None when the marks are as they should be. `states` are the pod's
/// NodePodProbe states in status order; `live` gives the probe spec of a key whose marker exists,
/// is not being deleted, selects the pod and still has the probe (otherwise its marks go).
pub fn mark_patch<'a>(
    pod: &Pod,
    states: &[ContainerProbeState],
    live: impl Fn(&str) -> Option<&'a PodContainerProbe>,
) -> Option<Value> {
    let old_labels = pod.metadata.labels.clone().unwrap_or_default();
    let old_annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let (mut labels, mut annotations) = (old_labels.clone(), old_annotations.clone());
    let old_record = recorded_marks(pod);
    let mut record = BTreeMap::new();
    let mut withdrawn: Vec<(String, String)> = Vec::new();
    let mut removed_by_value = false;

    // Marks of probes that no longer apply: what still holds the value written goes. Live
    // probes keep theirs until a state says otherwise (a node gone keeps the last marks).
    for (key, marks) in &old_record {
        if live(key).is_some() {
            record.insert(key.clone(), marks.clone());
            continue;
        }
        for (map, written) in [(&mut labels, &marks.labels), (&mut annotations, &marks.annotations)] {
            for (k, v) in written {
                if map.get(k) == Some(v) {
                    map.remove(k);
                    removed_by_value = true;
                }
            }
        }
        withdrawn.extend(marks.condition.clone());
    }

    // Live results in status order: the first probe of a condition type drives it; policy edits
    // apply in order, a later one winning.
    let mut used_types = HashSet::new();
    let mut conditions: Vec<PodCondition> = Vec::new();
    for st in states {
        let Some(probe) = live(&st.name) else { continue };
        let mut marks = Marks::default();
        if let Some(t) = probe.pod_condition_type.as_deref().filter(|t| !t.is_empty())
            && used_types.insert(t.to_string())
        {
            let status = condition_status(st.state);
            conditions.push(PodCondition {
                type_: t.to_string(),
                status: status.to_string(),
                last_probe_time: st.last_probe_time.clone(),
                last_transition_time: st.last_transition_time.clone(),
                message: st.message.clone(),
                ..Default::default()
            });
            marks.condition = Some((t.to_string(), status.to_string()));
        }
        let policies = probe.marker_policy.as_deref().unwrap_or_default();
        if let Some(opposite) = policies.iter().rev().find(|p| p.state != st.state) {
            for k in opposite.labels.iter().flatten().map(|(k, _)| k) {
                labels.remove(k);
            }
            for k in opposite.annotations.iter().flatten().map(|(k, _)| k) {
                annotations.remove(k);
            }
        }
        if let Some(matched) = policies.iter().find(|p| p.state == st.state) {
            marks.labels = matched.labels.clone().unwrap_or_default();
            marks.annotations = matched.annotations.clone().unwrap_or_default();
            labels.extend(marks.labels.clone());
            annotations.extend(marks.annotations.clone());
        }
        record.insert(st.name.clone(), marks);
    }

    // The record rides along; it is not a mark.
    let raw = (!record.is_empty()).then(|| serde_json::to_string(&record).unwrap_or_default());
    match &raw {
        Some(r) => annotations.insert(MARKS_ANNOTATION.into(), r.clone()),
        None => annotations.remove(MARKS_ANNOTATION),
    };

    let current: Vec<PodCondition> = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let find = |t: &str| current.iter().find(|c| c.type_ == t);
    let mut condition_patch: Vec<Value> = Vec::new();
    for c in &conditions {
        let stale = match find(&c.type_) {
            None => true,
            Some(have) => have.status != c.status || have.message != c.message,
        };
        if stale {
            // A strategic merge patch merges the condition's fields: a message that is gone must
            // be deleted explicitly, or the old one stays.
            let mut v = serde_json::to_value(c).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.entry("message").or_insert(Value::Null);
            }
            condition_patch.push(v);
        }
    }
    for (t, status) in &withdrawn {
        if !used_types.contains(t) && find(t).is_some_and(|c| &c.status == status) {
            condition_patch.push(json!({ "type": t, "$patch": "delete" }));
            removed_by_value = true;
        }
    }

    let mut metadata = Map::new();
    if let Some(diff) = map_diff(&old_labels, &labels) {
        metadata.insert("labels".into(), diff);
    }
    if let Some(diff) = map_diff(&old_annotations, &annotations) {
        metadata.insert("annotations".into(), diff);
    }
    if metadata.is_empty() && condition_patch.is_empty() {
        return None;
    }
    if removed_by_value {
        // Values were compared with this copy of the pod: remove them only from this copy.
        metadata.insert("resourceVersion".into(), json!(pod.metadata.resource_version));
    }
    let mut patch = Map::new();
    if !metadata.is_empty() {
        patch.insert("metadata".into(), Value::Object(metadata));
    }
    if !condition_patch.is_empty() {
        patch.insert("status".into(), json!({ "conditions": condition_patch }));
    }
    Some(Value::Object(patch))
}

/// The merge-patch object turning `old` into `new`, or None if they are equal.
fn map_diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Option<Value> {
    let diff = crate::runtime::merge_patch::diff_maps(old, new);
    (!diff.is_empty()).then_some(Value::Object(diff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::podprobemarker::PodProbeMarker;
    use crate::controllers::podprobemarker::fanout::tests::{idle_probe, marker, pod};
    use crate::runtime::merge_patch;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn state(key: &str, s: ProbeState, message: &str) -> ContainerProbeState {
        let t = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        ContainerProbeState {
            name: key.into(),
            state: s,
            last_probe_time: Some(t.clone()),
            last_transition_time: Some(t),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        }
    }

    fn live_in<'a>(markers: &'a [PodProbeMarker]) -> impl Fn(&str) -> Option<&'a PodContainerProbe> {
        move |key: &str| {
            let (m, p) = key.split_once('#')?;
            let marker = markers.iter().find(|x| x.metadata.name.as_deref() == Some(m))?;
            marker.spec.probes.iter().find(|x| x.name == p)
        }
    }

    /// The pod as the API server would hold it after the patch (strategic merge of conditions by
    /// type, JSON merge of the maps).
    fn patched(pod: &Pod, patch: &Value) -> Pod {
        let mut v = serde_json::to_value(pod).unwrap();
        let mut p = patch.clone();
        let conditions = p.get_mut("status").and_then(|s| s.as_object_mut()).and_then(|s| s.remove("conditions"));
        if let Some(md) = p.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            md.remove("resourceVersion");
        }
        merge_patch::apply(&mut v, &p);
        let list = v["status"]["conditions"].as_array_mut().unwrap();
        for c in conditions.into_iter().flat_map(|c| c.as_array().cloned().unwrap()) {
            let existing = list.iter_mut().find(|x| x["type"] == c["type"]);
            match (existing, c.get("$patch").is_some()) {
                (_, true) => list.retain(|x| x["type"] != c["type"]),
                // Strategic merge: the entry's fields merge, null deletes one.
                (Some(x), false) => merge_patch::apply(x, &c),
                (None, false) => list.push(c),
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn condition<'p>(pod: &'p Pod, t: &str) -> Option<&'p PodCondition> {
        pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t)
    }

    fn label<'p>(pod: &'p Pod, k: &str) -> Option<&'p str> {
        pod.metadata.labels.as_ref()?.get(k).map(String::as_str)
    }

    fn annotation<'p>(pod: &'p Pod, k: &str) -> Option<&'p str> {
        pod.metadata.annotations.as_ref()?.get(k).map(String::as_str)
    }

    const COST: &str = "controller.kubernetes.io/pod-deletion-cost";

    #[test]
    fn game_server_idle_then_busy_then_idle() {
        let markers = [marker("ns", "game-server-probe", json!([idle_probe("Idle", "main")]))];
        let p = pod("ns", "gs-0", "n1", true);
        let idle = mark_patch(&p, &[state("game-server-probe#Idle", ProbeState::Succeeded, "")], live_in(&markers))
            .expect("first result marks the pod");
        let p = patched(&p, &idle);
        assert_eq!(label(&p, "gameserver-idle"), Some("true"));
        assert_eq!(annotation(&p, COST), Some("-10"));
        let c = condition(&p, "game.io/idle").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", None));
        assert!(c.last_probe_time.is_some() && c.last_transition_time.is_some());
        assert!(idle["metadata"].get("resourceVersion").is_none(), "setting marks needs no precondition");
        assert_eq!(
            mark_patch(&p, &[state("game-server-probe#Idle", ProbeState::Succeeded, "")], live_in(&markers)),
            None,
            "nothing to do twice"
        );

        let busy = mark_patch(&p, &[state("game-server-probe#Idle", ProbeState::Failed, "busy")], live_in(&markers));
        let p = patched(&p, &busy.unwrap());
        assert_eq!(label(&p, "gameserver-idle"), Some("false"));
        assert_eq!(annotation(&p, COST), Some("10"));
        let c = condition(&p, "game.io/idle").unwrap();
        assert_eq!((c.status.as_str(), c.message.as_deref()), ("False", Some("busy")));
        assert_eq!(p.status.as_ref().unwrap().conditions.as_ref().unwrap().len(), 2, "Initialized kept");

        let back = mark_patch(&p, &[state("game-server-probe#Idle", ProbeState::Succeeded, "")], live_in(&markers));
        let p = patched(&p, &back.unwrap());
        assert_eq!(label(&p, "gameserver-idle"), Some("true"));
        let c = condition(&p, "game.io/idle").unwrap();
        assert_eq!((c.status.as_str(), c.message.as_deref()), ("True", None), "the old message is gone");
    }

    #[test]
    fn a_message_change_alone_rewrites_the_condition() {
        let markers = [marker("ns", "m", json!([idle_probe("Idle", "main")]))];
        let p = pod("ns", "p", "n1", true);
        let p =
            patched(&p, &mark_patch(&p, &[state("m#Idle", ProbeState::Succeeded, "data")], live_in(&markers)).unwrap());
        let again = mark_patch(&p, &[state("m#Idle", ProbeState::Succeeded, "gate")], live_in(&markers)).unwrap();
        assert_eq!(again["status"]["conditions"][0]["message"], "gate");
        assert!(again.get("metadata").is_none(), "labels unchanged: {again}");
    }

    #[test]
    fn succeeded_only_policy_loses_its_keys_and_overlapping_keys_end_with_the_matched_value() {
        let probe = json!({
            "name": "healthy", "containerName": "main", "probe": {"exec": {"command": ["true"]}},
            "markerPolicy": [
                {"state": "Succeeded", "labels": {"server-healthy": "true", "success": "true"},
                 "annotations": {COST: "10", "success": "true"}},
                {"state": "Failed", "labels": {"failed": "true"}, "annotations": {COST: "-10", "failed": "true"}}
            ]
        });
        let markers = [marker("ns", "m", json!([probe]))];
        let p = pod("ns", "p", "n1", true);
        let p =
            patched(&p, &mark_patch(&p, &[state("m#healthy", ProbeState::Succeeded, "")], live_in(&markers)).unwrap());
        let p = patched(&p, &mark_patch(&p, &[state("m#healthy", ProbeState::Failed, "")], live_in(&markers)).unwrap());
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["app", "failed"]);
        let annotations = p.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.get(COST).map(String::as_str), Some("-10"));
        assert_eq!(annotations.get("failed").map(String::as_str), Some("true"));
        assert!(!annotations.contains_key("success"));

        let only_success = json!({
            "name": "healthy", "containerName": "main", "probe": {"exec": {"command": ["true"]}},
            "podConditionType": "game.kruise.io/healthy",
            "markerPolicy": [{"state": "Succeeded", "labels": {"nginx": "healthy"}}]
        });
        let markers = [marker("ns", "m", json!([only_success]))];
        let p = pod("ns", "q", "n1", true);
        let p =
            patched(&p, &mark_patch(&p, &[state("m#healthy", ProbeState::Succeeded, "")], live_in(&markers)).unwrap());
        assert_eq!(label(&p, "nginx"), Some("healthy"));
        let p = patched(&p, &mark_patch(&p, &[state("m#healthy", ProbeState::Failed, "")], live_in(&markers)).unwrap());
        assert_eq!(label(&p, "nginx"), None);
        assert_eq!(condition(&p, "game.kruise.io/healthy").unwrap().status, "False");
    }

    #[test]
    fn the_first_probe_of_a_condition_type_drives_it() {
        let mut a = idle_probe("Idle", "main");
        a["markerPolicy"] = Value::Null;
        let markers = [marker("ns", "a", json!([a.clone()])), marker("ns", "b", json!([a]))];
        let p = pod("ns", "p", "n1", true);
        let states = [state("b#Idle", ProbeState::Failed, "no"), state("a#Idle", ProbeState::Succeeded, "")];
        let p = patched(&p, &mark_patch(&p, &states, live_in(&markers)).unwrap());
        assert_eq!(condition(&p, "game.io/idle").unwrap().status, "False");
        assert_eq!(mark_patch(&p, &states, live_in(&markers)), None, "no flapping");
        // A condition-only probe leaves other conditions alone.
        assert!(condition(&p, "Initialized").is_some());
    }

    #[test]
    fn unknown_counts_as_false_and_keeps_the_last_policy_of_another_state() {
        let markers = [marker("ns", "m", json!([idle_probe("Idle", "main")]))];
        let p = pod("ns", "p", "n1", true);
        let p = patched(&p, &mark_patch(&p, &[state("m#Idle", ProbeState::Failed, "")], live_in(&markers)).unwrap());
        let p = patched(&p, &mark_patch(&p, &[state("m#Idle", ProbeState::Unknown, "")], live_in(&markers)).unwrap());
        assert_eq!(condition(&p, "game.io/idle").unwrap().status, "False");
        // Unknown matches no policy; the last policy of another state (Failed) is removed.
        assert_eq!(label(&p, "gameserver-idle"), None);
    }

    #[test]
    fn marks_go_when_the_probe_no_longer_applies_but_only_values_still_written() {
        let markers = [marker("ns", "m", json!([idle_probe("Idle", "main")]))];
        let p = pod("ns", "p", "n1", true);
        let mut p =
            patched(&p, &mark_patch(&p, &[state("m#Idle", ProbeState::Succeeded, "")], live_in(&markers)).unwrap());
        assert!(recorded_marks(&p).contains_key("m#Idle"));
        p.metadata.resource_version = Some("42".into());
        // Someone else changed the deletion cost meanwhile: that value stays.
        p.metadata.annotations.as_mut().unwrap().insert(COST.into(), "99".into());
        let gone: [PodProbeMarker; 0] = [];
        let cleanup = mark_patch(&p, &[state("m#Idle", ProbeState::Succeeded, "")], live_in(&gone)).unwrap();
        assert_eq!(cleanup["metadata"]["resourceVersion"], "42", "removal is conditional on the copy read");
        let p = patched(&p, &cleanup);
        assert_eq!(label(&p, "gameserver-idle"), None);
        assert_eq!(annotation(&p, COST), Some("99"));
        assert_eq!(annotation(&p, MARKS_ANNOTATION), None);
        assert!(condition(&p, "game.io/idle").is_none());
        assert_eq!(label(&p, "app"), Some("game"), "labels nobody marked stay");
        assert_eq!(mark_patch(&p, &[], live_in(&gone)), None);
    }

    #[test]
    fn a_live_probe_without_a_state_keeps_its_marks() {
        let markers = [marker("ns", "m", json!([idle_probe("Idle", "main")]))];
        let p = pod("ns", "p", "n1", true);
        let p = patched(&p, &mark_patch(&p, &[state("m#Idle", ProbeState::Succeeded, "")], live_in(&markers)).unwrap());
        assert_eq!(mark_patch(&p, &[], live_in(&markers)), None, "e.g. the node's NodePodProbe is gone");
    }

    #[test]
    fn a_pod_without_labels_gets_a_label_map() {
        let markers = [marker("ns", "m", json!([idle_probe("Idle", "main")]))];
        let mut p = pod("ns", "p", "n1", true);
        p.metadata.labels = None;
        let patch = mark_patch(&p, &[state("m#Idle", ProbeState::Succeeded, "")], live_in(&markers)).unwrap();
        assert_eq!(patch["metadata"]["labels"]["gameserver-idle"], "true");
    }
}
