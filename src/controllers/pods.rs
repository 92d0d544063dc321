//! Facts about pods that several controllers read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;

use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::watch_hub::WatchSpec;

/// The one pods watch of a replica, shared by every controller reading pods: every pod of the held
/// shards, routed per namespace. Volumes are dropped (no controller reads them); containers stay
/// whole, since a SidecarSet upgrade patch carries the list.
pub fn watch_spec(store: ObjectStore, controllers: Vec<&'static str>) -> WatchSpec {
    WatchSpec {
        controllers,
        url_path: "/api/v1/pods".into(),
        label_selector: None,
        store,
        trim: Trim { drop: &[&["spec", "volumes"]] },
        namespaced: true,
        per_namespace: true,
    }
}

/// Not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether the pod's condition `type_` is `True`.
pub fn condition_is_true(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Typed copies of cached pods, per namespace, decoded once per resourceVersion: a controller
/// that reconciles a whole namespace after any change to one of its pods would otherwise decode
/// every pod of it every time (most of the PodProbeMarker reconcile's work at 1000 pods a
/// namespace).
#[derive(Clone, Default)]
pub struct TypedPods(Arc<Mutex<HashMap<String, NamespacePods>>>);

/// A namespace's typed pods by name, with the resourceVersion each was decoded from.
type NamespacePods = HashMap<String, (String, Arc<Pod>)>;

impl TypedPods {
    /// The typed pods of `objects`, all of namespace `namespace`; the namespace's copies of pods
    /// not among them are dropped.
    pub fn of(&self, namespace: &str, objects: &[Arc<DynamicObject>]) -> Vec<Arc<Pod>> {
        let Ok(mut all) = self.0.lock() else {
            return objects.iter().filter_map(|o| typed(o).map(Arc::new)).collect();
        };
        let old = all.remove(namespace).unwrap_or_default();
        let mut kept = HashMap::with_capacity(objects.len());
        let mut pods = Vec::with_capacity(objects.len());
        for o in objects {
            let name = o.metadata.name.clone().unwrap_or_default();
            let version = o.metadata.resource_version.clone().unwrap_or_default();
            let pod = match old.get(&name) {
                Some((v, pod)) if *v == version && !version.is_empty() => pod.clone(),
                _ => match typed::<Pod>(o) {
                    Some(p) => Arc::new(p),
                    None => continue,
                },
            };
            pods.push(pod.clone());
            kept.insert(name, (version, pod));
        }
        if !kept.is_empty() {
            all.insert(namespace.to_string(), kept);
        }
        pods
    }
}

/// The typed object of a cached one (None if it does not decode as `K`).
pub fn typed<K: DeserializeOwned>(o: &DynamicObject) -> Option<K> {
    serde_json::to_value(o).ok().and_then(|v| serde_json::from_value(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, version: &str) -> Arc<DynamicObject> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": "ns", "resourceVersion": version },
                "spec": { "containers": [{ "name": "main", "image": "app:1" }] }
            }))
            .unwrap(),
        )
    }

    #[test]
    fn typed_pods_are_decoded_once_per_version_and_forgotten_when_gone() {
        let cache = TypedPods::default();
        let first = cache.of("ns", &[object("a", "1"), object("b", "1")]);
        assert_eq!(first.len(), 2);
        let again = cache.of("ns", &[object("a", "1"), object("b", "2")]);
        assert!(Arc::ptr_eq(&first[0], &again[0]), "same version: the same copy");
        assert!(!Arc::ptr_eq(&first[1], &again[1]), "a new version is decoded");
        let later = cache.of("ns", &[object("b", "2")]);
        assert!(Arc::ptr_eq(&again[1], &later[0]));
        let back = cache.of("ns", &[object("a", "1")]);
        assert!(!Arc::ptr_eq(&first[0], &back[0]), "a pod gone from the list was forgotten");
        assert!(cache.of("ns", &[]).is_empty());
        assert!(cache.0.lock().unwrap().is_empty(), "an empty namespace holds nothing");
    }
}
