//! Facts about pods that several controllers read.

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

/// The typed object of a cached one (None if it does not decode as `K`).
pub fn typed<K: DeserializeOwned>(o: &DynamicObject) -> Option<K> {
    serde_json::to_value(o).ok().and_then(|v| serde_json::from_value(v).ok())
}
