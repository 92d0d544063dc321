//! Which probes each node runs for one namespace's pods, and which nodes must be told. Pure.
//!
//! A namespace's entries on a node are written with server-side apply under a field manager of
//! that namespace ([`field_manager`]): each apply states all of the namespace's entries on the
//! node, so entries of pods that went away, probes removed from a marker and markers deleted drop
//! out by themselves, and other namespaces' entries (other shards) are never touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::api::nodepodprobe::{ContainerProbe, PodProbe};
use crate::api::podprobemarker::PodProbeMarker;
use crate::api::selector;
use crate::controllers::pods::{condition_is_true, is_active};

/// Held by every PodProbeMarker until its probes are gone from the NodePodProbes and its marks
/// from the pods.
pub const FINALIZER: &str = "kruise.io/node-pod-probe-cleanup";

/// The separator of a probe's key, `<marker>#<probe>`.
pub const KEY_SEPARATOR: char = '#';

pub fn probe_key(marker: &str, probe: &str) -> String {
    format!("{marker}{KEY_SEPARATOR}{probe}")
}

/// The marker and probe names of a probe key (None if it has no separator).
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(KEY_SEPARATOR)
}

/// The server-side apply field manager of one namespace's NodePodProbe entries.
pub fn field_manager(namespace: &str) -> String {
    format!("kruise-podprobemarker/{namespace}")
}

/// Whether the markers probe `pod` at all: active, scheduled and Initialized (upstream's rule:
/// the containers exist only from then on).
pub fn is_probeable(pod: &Pod) -> bool {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    is_active(pod) && scheduled && condition_is_true(pod, "Initialized")
}

/// Whether `marker` selects `pod`: same namespace, selector matches (an empty selector matches
/// nothing), and the marker is not being deleted.
pub fn selects(marker: &PodProbeMarker, pod: &Pod) -> bool {
    let selector = &marker.spec.selector;
    let empty = selector.match_labels.as_ref().is_none_or(|l| l.is_empty())
        && selector.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    marker.metadata.deletion_timestamp.is_none()
        && marker.metadata.namespace == pod.metadata.namespace
        && !empty
        && selector::matches(selector, &labels)
}

/// One namespace's wanted NodePodProbe entries and each marker's matched pods.
#[derive(Debug, Default, PartialEq)]
pub struct NamespaceFanout {
    /// Node name → the namespace's entries on it, in pod name order.
    pub by_node: BTreeMap<String, Vec<PodProbe>>,
    /// Marker name → probeable pods it selects.
    pub matched: BTreeMap<String, i64>,
}

/// The entries `markers` want for `pods` (one namespace's). A pod's entry lists the probes of
/// every marker selecting it, in marker name order.
pub fn fan_out(markers: &[PodProbeMarker], pods: &[&Pod]) -> NamespaceFanout {
    let mut markers: Vec<&PodProbeMarker> = markers.iter().collect();
    markers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = NamespaceFanout::default();
    for m in &markers {
        out.matched.insert(m.metadata.name.clone().unwrap_or_default(), 0);
    }
    let mut pods: Vec<&&Pod> = pods.iter().filter(|p| is_probeable(p)).collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in pods {
        let mut probes = Vec::new();
        for m in markers.iter().filter(|m| selects(m, pod)) {
            let marker = m.metadata.name.as_deref().unwrap_or_default();
            *out.matched.entry(marker.to_string()).or_default() += 1;
            probes.extend(m.spec.probes.iter().map(|p| ContainerProbe {
                name: probe_key(marker, &p.name),
                container_name: p.container_name.clone(),
                probe: p.probe.clone(),
            }));
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if !probes.is_empty() {
            out.by_node.entry(node).or_default().push(PodProbe {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                probes: Some(probes),
            });
        }
    }
    out
}

/// Entries in a canonical order (pods by name and uid, probes by key), for comparison.
fn canonical(entries: &[PodProbe]) -> Vec<PodProbe> {
    let mut entries = entries.to_vec();
    entries.sort_by(|a, b| (&a.name, &a.uid).cmp(&(&b.name, &b.uid)));
    for e in &mut entries {
        if let Some(p) = e.probes.as_mut() {
            p.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    entries
}

/// The nodes whose entries of the namespace differ from the wanted ones, among the nodes that
/// have a NodePodProbe (`observed` holds the namespace's current entries of each; a node without
/// a NodePodProbe waits for the NodePodProbe controller to create one). Each gets an apply of its
/// wanted entries (possibly none).
pub fn nodes_to_apply(
    wanted: &BTreeMap<String, Vec<PodProbe>>,
    observed: &BTreeMap<String, Vec<PodProbe>>,
) -> Vec<String> {
    observed
        .iter()
        .filter(|(node, current)| {
            let want = wanted.get(*node).map(Vec::as_slice).unwrap_or_default();
            canonical(want) != canonical(current)
        })
        .map(|(node, _)| node.clone())
        .collect()
}

/// The server-side apply body stating the namespace's `entries` on `node`.
pub fn apply_body(node: &str, entries: &[PodProbe]) -> Value {
    json!({
        "apiVersion": "apps.kruise.io/v1alpha1",
        "kind": "NodePodProbe",
        "metadata": { "name": node },
        "spec": { "podProbes": entries },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn marker(ns: &str, name: &str, probes: serde_json::Value) -> PodProbeMarker {
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "PodProbeMarker",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "game"}}, "probes": probes}
        }))
        .unwrap()
    }

    pub fn idle_probe(name: &str, container: &str) -> serde_json::Value {
        json!({
            "name": name, "containerName": container,
            "probe": {"exec": {"command": ["/idle.sh"]}, "periodSeconds": 10},
            "podConditionType": "game.io/idle",
            "markerPolicy": [
                {"state": "Succeeded", "labels": {"gameserver-idle": "true"},
                 "annotations": {"controller.kubernetes.io/pod-deletion-cost": "-10"}},
                {"state": "Failed", "labels": {"gameserver-idle": "false"},
                 "annotations": {"controller.kubernetes.io/pod-deletion-cost": "10"}}
            ]
        })
    }

    pub fn pod(ns: &str, name: &str, node: &str, initialized: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": "game"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Initialized", "status": if initialized { "True" } else { "False" }}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn entries_group_by_node_and_merge_markers() {
        let a = marker("ns", "a", json!([idle_probe("Idle", "main")]));
        let b = marker("ns", "b", json!([idle_probe("Busy", "log"), idle_probe("Role", "main")]));
        let (p1, p2, p3) = (pod("ns", "p1", "n1", true), pod("ns", "p2", "n2", true), pod("ns", "p3", "n1", true));
        let out = fan_out(&[b, a], &[&p3, &p1, &p2]);
        assert_eq!(out.by_node.keys().collect::<Vec<_>>(), ["n1", "n2"]);
        let n1 = &out.by_node["n1"];
        assert_eq!(n1.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["p1", "p3"]);
        let keys: Vec<&str> = n1[0].probes.iter().flatten().map(|p| p.name.as_str()).collect();
        assert_eq!(keys, ["a#Idle", "b#Busy", "b#Role"]);
        assert_eq!(n1[0].uid, "uid-p1");
        assert_eq!(n1[0].probes.as_ref().unwrap()[1].container_name, "log");
        assert_eq!(out.matched, BTreeMap::from([("a".into(), 3), ("b".into(), 3)]));
    }

    #[test]
    fn only_active_scheduled_initialized_pods_selected_by_live_markers() {
        let m = marker("ns", "m", json!([idle_probe("Idle", "main")]));
        let not_init = pod("ns", "a", "n1", false);
        let unscheduled = pod("ns", "b", "", true);
        let mut terminating = pod("ns", "c", "n1", true);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut succeeded = pod("ns", "d", "n1", true);
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut other_labels = pod("ns", "e", "n1", true);
        other_labels.metadata.labels = None;
        let other_ns = pod("other", "f", "n1", true);
        let out = fan_out(
            std::slice::from_ref(&m),
            &[&not_init, &unscheduled, &terminating, &succeeded, &other_labels, &other_ns],
        );
        assert!(out.by_node.is_empty(), "{out:?}");
        assert_eq!(out.matched["m"], 0);

        let mut deleting = m.clone();
        deleting.metadata.deletion_timestamp = terminating.metadata.deletion_timestamp.clone();
        let ok = pod("ns", "g", "n1", true);
        assert!(fan_out(&[deleting], &[&ok]).by_node.is_empty(), "a deleting marker probes nothing");
        let mut empty = m;
        empty.spec.selector = Default::default();
        assert!(fan_out(&[empty], &[&ok]).by_node.is_empty(), "an empty selector matches nothing");
    }

    #[test]
    fn applies_go_to_existing_nodes_whose_entries_differ() {
        let m = marker("ns", "m", json!([idle_probe("Idle", "main"), idle_probe("Role", "main")]));
        let (p1, p2) = (pod("ns", "p1", "n1", true), pod("ns", "p2", "n2", true));
        let wanted = fan_out(&[m], &[&p1, &p2]).by_node;
        // n1 holds the same entries in another order; n2 holds nothing yet; n3 holds a stale
        // entry; n4 has no NodePodProbe (not observed) and gets nothing.
        let mut n1 = wanted["n1"].clone();
        n1[0].probes.as_mut().unwrap().reverse();
        let stale = PodProbe { name: "gone".into(), namespace: "ns".into(), uid: "u".into(), probes: None };
        let observed = BTreeMap::from([("n1".into(), n1), ("n2".into(), vec![]), ("n3".into(), vec![stale])]);
        assert_eq!(nodes_to_apply(&wanted, &observed), ["n2", "n3"]);
        let body = apply_body("n3", &[]);
        assert_eq!(body["spec"]["podProbes"], json!([]));
        assert_eq!(body["metadata"]["name"], "n3");
    }

    #[test]
    fn keys_split_on_the_first_separator() {
        assert_eq!(split_key(&probe_key("m", "Idle")), Some(("m", "Idle")));
        assert_eq!(split_key("plain"), None);
        assert_eq!(field_manager("team-a"), "kruise-podprobemarker/team-a");
    }
}
