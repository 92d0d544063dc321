//! Facts about nodes that the per-node controllers (NodePodProbe, NodeImage) read, and their one
//! shared nodes watch.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;

use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::watch_hub::WatchSpec;

/// Nodes labelled so are served by a provider, not kruise-daemon.
pub const VIRTUAL_KUBELET: (&str, &str) = ("type", "virtual-kubelet");

/// The one nodes watch of a replica, for every controller keeping per-node objects, keeping only
/// what they read (labels, deletion, conditions).
pub fn watch_spec(store: ObjectStore, controllers: Vec<&'static str>) -> WatchSpec {
    WatchSpec {
        controllers,
        url_path: "/api/v1/nodes".into(),
        label_selector: None,
        store,
        trim: Trim {
            drop: &[&["spec"], &["status", "images"], &["status", "volumesAttached"], &["status", "volumesInUse"]],
        },
        namespaced: false,
        per_namespace: false,
    }
}

/// Whether a provider, not kruise-daemon, serves the node.
pub fn is_virtual(node: &Node) -> bool {
    node.metadata.labels.as_ref().and_then(|l| l.get(VIRTUAL_KUBELET.0)).is_some_and(|v| v == VIRTUAL_KUBELET.1)
}

/// Since when the node has been Ready (None: it is not); a Ready condition without a transition
/// time counts as Ready for ever.
pub fn ready_since(node: &Node) -> Option<Timestamp> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(ready.last_transition_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0))
}
