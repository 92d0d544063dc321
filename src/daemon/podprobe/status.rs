//! A node's probe results and the NodePodProbe status they make. Pure.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::nodepodprobe::{ContainerProbeState, NodePodProbeSpec, NodePodProbeStatus, PodProbeStatus};
use crate::api::podprobemarker::ProbeState;

/// A result is written again after this long even when nothing changed, so `lastProbeTime` says
/// the probe still runs (upstream meant 600 s; v1.3 compared nanoseconds).
pub const REFRESH: i64 = 600;

/// A probe's identity on a node: the pod's uid and the probe key.
pub type ResultKey = (String, String);

/// The latest result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResult {
    pub container_id: String,
    pub state: ProbeState,
    pub message: String,
    pub at: Timestamp,
}

/// Whether `new` is worth a status write over `old`: new, another state or message, or the old
/// one is due for a refresh.
pub fn worth_storing(old: Option<&CachedResult>, new: &CachedResult) -> bool {
    match old {
        None => true,
        Some(o) => {
            o.state != new.state
                || o.message != new.message
                || o.container_id != new.container_id
                || new.at.as_second() - o.at.as_second() >= REFRESH
        }
    }
}

/// A state that changed in a status, for the pod Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub namespace: String,
    pub pod: String,
    pub probe: String,
    /// The state it had in the status before (None: the first state recorded).
    pub from: Option<ProbeState>,
    pub state: ProbeState,
    pub message: String,
}

impl Transition {
    /// Whether the pod gets an Event for it. Unknown is no result (a new container or probe). A
    /// first result that is Succeeded is the expected news and gets none: a marker over 20k pods
    /// would otherwise write 20k Events per probe at once (upstream writes one per sync). A change
    /// of a known result, and any Failed, do get one.
    pub fn deserves_event(&self) -> bool {
        match self.state {
            ProbeState::Unknown => false,
            ProbeState::Failed => true,
            ProbeState::Succeeded => self.from.is_some_and(|f| f != ProbeState::Unknown),
        }
    }
}

/// The status `current` becomes with `results`: states of probes no longer in `spec` and entries
/// left empty are dropped; each result of a listed probe sets its state, message and
/// `lastProbeTime`, and `lastTransitionTime` when the state is new or changed.
pub fn next_status(
    current: &NodePodProbeStatus,
    spec: &NodePodProbeSpec,
    results: &HashMap<ResultKey, CachedResult>,
    now: Timestamp,
) -> (NodePodProbeStatus, Vec<Transition>) {
    let mut transitions = Vec::new();
    let listed = |uid: &str, key: &str| {
        spec.pod_probes.iter().flatten().any(|p| p.uid == uid && p.probes.iter().flatten().any(|c| c.name == key))
    };
    let mut entries: Vec<PodProbeStatus> = current.pod_probe_statuses.clone().unwrap_or_default();
    for e in &mut entries {
        let uid = e.uid.clone();
        if let Some(states) = e.probe_states.as_mut() {
            states.retain(|s| listed(&uid, &s.name));
        }
    }
    for pod in spec.pod_probes.iter().flatten() {
        for probe in pod.probes.iter().flatten() {
            let Some(r) = results.get(&(pod.uid.clone(), probe.name.clone())) else { continue };
            let i = match entries.iter().position(|e| e.uid == pod.uid) {
                Some(i) => i,
                None => {
                    entries.push(PodProbeStatus {
                        name: pod.name.clone(),
                        namespace: pod.namespace.clone(),
                        uid: pod.uid.clone(),
                        probe_states: Some(Vec::new()),
                    });
                    entries.len() - 1
                }
            };
            let states = entries[i].probe_states.get_or_insert_with(Vec::new);
            let message = Some(r.message.clone()).filter(|m| !m.is_empty());
            let probe_time = Some(Time(r.at));
            match states.iter_mut().find(|s| s.name == probe.name) {
                Some(s) if s.state == r.state => {
                    s.message = message;
                    s.last_probe_time = probe_time;
                }
                found => {
                    let from = found.as_ref().map(|s| s.state);
                    let state = ContainerProbeState {
                        name: probe.name.clone(),
                        state: r.state,
                        last_probe_time: probe_time,
                        last_transition_time: Some(Time(now)),
                        message,
                    };
                    match found {
                        Some(s) => *s = state,
                        None => states.push(state),
                    }
                    transitions.push(Transition {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        probe: probe.name.clone(),
                        from,
                        state: r.state,
                        message: r.message.clone(),
                    });
                }
            }
        }
    }
    entries.retain(|e| e.probe_states.as_ref().is_some_and(|s| !s.is_empty()));
    (NodePodProbeStatus { pod_probe_statuses: Some(entries) }, transitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> NodePodProbeSpec {
        serde_json::from_value(json!({ "podProbes": v })).unwrap()
    }

    fn entry(pod: &str, keys: &[&str]) -> serde_json::Value {
        let probes: Vec<_> = keys
            .iter()
            .map(|k| json!({"name": k, "containerName": "main", "probe": {"exec": {"command": ["x"]}}}))
            .collect();
        json!({"name": pod, "namespace": "ns", "uid": format!("u-{pod}"), "probes": probes})
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn result(state: ProbeState, message: &str, at: i64) -> CachedResult {
        CachedResult { container_id: "c".into(), state, message: message.into(), at: t(at) }
    }

    #[test]
    fn results_land_per_pod_and_transitions_are_reported_once() {
        let spec = spec(json!([entry("p1", &["m#a", "m#b"]), entry("p2", &["m#a"])]));
        let mut results = HashMap::new();
        results.insert(("u-p1".into(), "m#a".into()), result(ProbeState::Succeeded, "", 1));
        results.insert(("u-p1".into(), "m#b".into()), result(ProbeState::Failed, "busy", 1));
        let (s1, tr) = next_status(&NodePodProbeStatus::default(), &spec, &results, t(2));
        let entries = s1.pod_probe_statuses.clone().unwrap();
        assert_eq!(entries.len(), 1, "p2 has no result yet");
        let states = entries[0].probe_states.clone().unwrap();
        assert_eq!(
            states.iter().map(|s| (s.name.as_str(), s.state)).collect::<Vec<_>>(),
            [("m#a", ProbeState::Succeeded), ("m#b", ProbeState::Failed)]
        );
        assert_eq!(states[1].message.as_deref(), Some("busy"));
        assert_eq!(states[0].last_transition_time, Some(Time(t(2))));
        assert_eq!(tr.len(), 2);
        let eventful: Vec<&str> = tr.iter().filter(|t| t.deserves_event()).map(|t| t.probe.as_str()).collect();
        assert_eq!(eventful, ["m#b"], "a first Failed gets an Event, a first Succeeded none");

        // A known result that changes gets one, whichever way; Unknown never does.
        results.insert(("u-p1".into(), "m#b".into()), result(ProbeState::Succeeded, "", 3));
        let (flipped, tr) = next_status(&s1, &spec, &results, t(3));
        assert_eq!(tr.len(), 1);
        assert_eq!((tr[0].from, tr[0].deserves_event()), (Some(ProbeState::Failed), true));
        results.insert(("u-p1".into(), "m#b".into()), result(ProbeState::Unknown, "", 4));
        let (restarted, tr) = next_status(&flipped, &spec, &results, t(4));
        assert!(!tr[0].deserves_event(), "a restart's Unknown");
        results.insert(("u-p1".into(), "m#b".into()), result(ProbeState::Succeeded, "", 5));
        let (_, tr) = next_status(&restarted, &spec, &results, t(5));
        assert!(!tr[0].deserves_event(), "Succeeded again after a restart is the expected news");
        results.insert(("u-p1".into(), "m#b".into()), result(ProbeState::Failed, "busy", 1));

        // The same state again: probe time moves, transition time stays, no transition.
        results.insert(("u-p1".into(), "m#a".into()), result(ProbeState::Succeeded, "", 700));
        let (s2, tr) = next_status(&s1, &spec, &results, t(701));
        let a = &s2.pod_probe_statuses.as_ref().unwrap()[0].probe_states.as_ref().unwrap()[0];
        assert_eq!((a.last_probe_time.clone(), a.last_transition_time.clone()), (Some(Time(t(700))), Some(Time(t(2)))));
        assert!(tr.is_empty());
        let (s3, _) = next_status(&s2, &spec, &results, t(702));
        assert_eq!(s3, s2, "nothing new: nothing to write");
    }

    #[test]
    fn probes_and_pods_leaving_the_spec_leave_the_status() {
        let full = spec(json!([entry("p1", &["m#a", "m#b"]), entry("p2", &["m#a"])]));
        let mut results = HashMap::new();
        for (uid, key) in [("u-p1", "m#a"), ("u-p1", "m#b"), ("u-p2", "m#a")] {
            results.insert((uid.to_string(), key.to_string()), result(ProbeState::Succeeded, "", 1));
        }
        let (s, _) = next_status(&NodePodProbeStatus::default(), &full, &results, t(2));
        let smaller = spec(json!([entry("p1", &["m#a"])]));
        let (s, _) = next_status(&s, &smaller, &HashMap::new(), t(3));
        let entries = s.pod_probe_statuses.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].probe_states.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn what_is_worth_a_write() {
        let old = result(ProbeState::Succeeded, "", 0);
        assert!(worth_storing(None, &old));
        assert!(!worth_storing(Some(&old), &result(ProbeState::Succeeded, "", 599)));
        assert!(worth_storing(Some(&old), &result(ProbeState::Succeeded, "", 600)), "refresh");
        assert!(worth_storing(Some(&old), &result(ProbeState::Failed, "", 1)));
        assert!(worth_storing(Some(&old), &result(ProbeState::Succeeded, "gate", 1)));
    }
}
