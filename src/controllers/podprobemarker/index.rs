//! Every NodePodProbe of the cluster, cut by namespace: which entries each namespace has on each
//! node (what its applies are compared with) and the probe states of its pods (what marks them).
//! Pure: the glue feeds it watch events and reconciles the namespaces each event changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::api::nodepodprobe::{ContainerProbeState, NodePodProbe, PodProbe, PodProbeStatus};

/// One namespace's part of one NodePodProbe.
#[derive(Debug, Default, Clone, PartialEq)]
struct Slice {
    entries: Vec<PodProbe>,
    statuses: Vec<PodProbeStatus>,
}

#[derive(Debug, Default)]
pub struct ProbeIndex {
    /// Node → namespace → its slice. Every NodePodProbe has a node entry, empty or not.
    nodes: HashMap<String, HashMap<String, Slice>>,
    /// Namespace → nodes holding a slice of it.
    by_namespace: HashMap<String, BTreeSet<String>>,
}

impl ProbeIndex {
    /// Takes in a NodePodProbe as it is now; returns the namespaces whose part changed.
    pub fn apply(&mut self, npp: &NodePodProbe) -> BTreeSet<String> {
        let node = npp.metadata.name.clone().unwrap_or_default();
        let mut slices: HashMap<String, Slice> = HashMap::new();
        for e in npp.spec.pod_probes.iter().flatten() {
            slices.entry(e.namespace.clone()).or_default().entries.push(e.clone());
        }
        for s in npp.status.as_ref().and_then(|s| s.pod_probe_statuses.as_ref()).into_iter().flatten() {
            slices.entry(s.namespace.clone()).or_default().statuses.push(s.clone());
        }
        self.replace(node, slices)
    }

    /// Forgets a deleted NodePodProbe; returns the namespaces it held.
    pub fn delete(&mut self, node: &str) -> BTreeSet<String> {
        let changed = self.replace(node.to_string(), HashMap::new());
        self.nodes.remove(node);
        changed
    }

    fn replace(&mut self, node: String, slices: HashMap<String, Slice>) -> BTreeSet<String> {
        let old = self.nodes.remove(&node).unwrap_or_default();
        let mut changed = BTreeSet::new();
        for (ns, slice) in &old {
            if slices.get(ns) != Some(slice) {
                changed.insert(ns.clone());
            }
            if !slices.contains_key(ns)
                && let Some(nodes) = self.by_namespace.get_mut(ns)
            {
                nodes.remove(&node);
                if nodes.is_empty() {
                    self.by_namespace.remove(ns);
                }
            }
        }
        for ns in slices.keys() {
            if !old.contains_key(ns) {
                changed.insert(ns.clone());
            }
            self.by_namespace.entry(ns.clone()).or_default().insert(node.clone());
        }
        self.nodes.insert(node, slices);
        changed
    }

    /// Whether `node` has a NodePodProbe.
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The namespace's current entries on `nodes` that have a NodePodProbe (empty where it has
    /// none there) and on every other node where it has some.
    pub fn observed<'a>(
        &self,
        namespace: &str,
        nodes: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, Vec<PodProbe>> {
        let mut out = BTreeMap::new();
        for node in nodes.into_iter().filter(|n| self.has_node(n)) {
            out.insert(node.clone(), Vec::new());
        }
        for node in self.by_namespace.get(namespace).into_iter().flatten() {
            let entries = self.slice(node, namespace).map(|s| s.entries.clone()).unwrap_or_default();
            out.insert(node.clone(), entries);
        }
        out
    }

    /// The probe states of the namespace's pods, by (pod name, uid), in status order.
    pub fn states(&self, namespace: &str) -> HashMap<(String, String), Vec<ContainerProbeState>> {
        let mut out = HashMap::new();
        for node in self.by_namespace.get(namespace).into_iter().flatten() {
            for s in self.slice(node, namespace).map(|s| &s.statuses[..]).unwrap_or_default() {
                out.insert((s.name.clone(), s.uid.clone()), s.probe_states.clone().unwrap_or_default());
            }
        }
        out
    }

    /// Whether any entry of the namespace still lists a probe of `marker`.
    pub fn lists_marker(&self, namespace: &str, marker: &str) -> bool {
        let prefix = super::fanout::probe_key(marker, "");
        self.by_namespace.get(namespace).into_iter().flatten().any(|node| {
            self.slice(node, namespace).is_some_and(|s| {
                s.entries.iter().flat_map(|e| e.probes.iter().flatten()).any(|p| p.name.starts_with(&prefix))
            })
        })
    }

    fn slice(&self, node: &str, namespace: &str) -> Option<&Slice> {
        self.nodes.get(node)?.get(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn npp(node: &str, entries: serde_json::Value, statuses: serde_json::Value) -> NodePodProbe {
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodePodProbe",
            "metadata": {"name": node},
            "spec": {"podProbes": entries},
            "status": {"podProbeStatuses": statuses}
        }))
        .unwrap()
    }

    fn entry(ns: &str, pod: &str, key: &str) -> serde_json::Value {
        json!({"name": pod, "namespace": ns, "uid": format!("u-{pod}"), "probes": [
            {"name": key, "containerName": "main", "probe": {"exec": {"command": ["true"]}}}
        ]})
    }

    fn status(ns: &str, pod: &str, key: &str, state: &str) -> serde_json::Value {
        json!({"name": pod, "namespace": ns, "uid": format!("u-{pod}"), "probeStates": [{"name": key, "state": state}]})
    }

    #[test]
    fn changes_are_reported_per_namespace() {
        let mut ix = ProbeIndex::default();
        let n1 = npp("n1", json!([entry("a", "p1", "m#x"), entry("b", "p2", "m#x")]), json!([]));
        assert_eq!(ix.apply(&n1), BTreeSet::from(["a".into(), "b".into()]));
        assert!(ix.apply(&n1).is_empty(), "the same object again changes nothing");
        let n1b = npp(
            "n1",
            json!([entry("a", "p1", "m#x"), entry("b", "p2", "m#x")]),
            json!([status("b", "p2", "m#x", "Succeeded")]),
        );
        assert_eq!(ix.apply(&n1b), BTreeSet::from(["b".into()]));
        assert_eq!(
            ix.states("b")[&("p2".into(), "u-p2".into())][0].state,
            crate::api::podprobemarker::ProbeState::Succeeded
        );
        assert!(ix.lists_marker("a", "m") && !ix.lists_marker("a", "mm"));

        let empty = npp("n2", json!([]), json!([]));
        assert!(ix.apply(&empty).is_empty());
        assert!(ix.has_node("n2"));
        let wanted = ["n2".to_string(), "n3".to_string()];
        let observed = ix.observed("a", wanted.iter());
        assert_eq!(observed.keys().collect::<Vec<_>>(), ["n1", "n2"], "n3 has no NodePodProbe");
        assert_eq!(observed["n1"].len(), 1);

        let n1c = npp("n1", json!([entry("b", "p2", "m#x")]), json!([status("b", "p2", "m#x", "Succeeded")]));
        assert_eq!(ix.apply(&n1c), BTreeSet::from(["a".into()]));
        assert!(ix.observed("a", [].iter()).is_empty());
        assert_eq!(ix.delete("n1"), BTreeSet::from(["b".into()]));
        assert!(!ix.has_node("n1"));
        assert!(ix.states("b").is_empty());
        ix.delete("n2");
        assert_eq!(ix.node_count(), 0);
    }
}
