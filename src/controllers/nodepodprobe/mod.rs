//! NodePodProbe lifecycle: every Ready node that is not a virtual kubelet has one NodePodProbe
//! named after it; one whose node is gone, terminating or virtual is deleted. Cluster-scoped, so
//! it runs on the replica holding the shard of namespace "". The entries inside belong to the
//! PodProbeMarker controller (one field manager per namespace) and the status to kruise-daemon.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use kube::api::ApiResource;
use serde_json::json;
use tracing::info;

use crate::api::nodepodprobe::NodePodProbe;
use crate::controllers::nodes::{is_virtual, ready_since};
use crate::controllers::pods::typed;
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::ShardSpace;
use crate::runtime::watch_hub::WatchSpec;

pub const CONTROLLER: &str = "nodepodprobe-controller";

/// NodePodProbes by name only (their content is the PodProbeMarker controller's business).
pub fn watch_spec(store: ObjectStore) -> WatchSpec {
    WatchSpec {
        controllers: vec![CONTROLLER],
        url_path: "/apis/apps.kruise.io/v1alpha1/nodepodprobes".into(),
        label_selector: None,
        store,
        trim: Trim { drop: &[&["spec"], &["status"]] },
        namespaced: false,
        per_namespace: false,
    }
}

/// What to do with a node's NodePodProbe.
#[derive(Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Create,
    Delete,
    Keep,
}

/// The decision for one node name, given the node (if it exists) and whether its NodePodProbe
/// exists. A node that is not Ready yet gets its NodePodProbe once it is; one that stops being
/// Ready keeps it.
pub fn decide(node: Option<&Node>, has_probe: bool) -> Lifecycle {
    let serves = |n: &Node| n.metadata.deletion_timestamp.is_none() && !is_virtual(n);
    match node {
        Some(n) if serves(n) && ready_since(n).is_some() && !has_probe => Lifecycle::Create,
        Some(n) if serves(n) => Lifecycle::Keep,
        _ if has_probe => Lifecycle::Delete,
        _ => Lifecycle::Keep,
    }
}

pub struct NodePodProbeLifecycle {
    pub nodes: ObjectStore,
    pub probes: ObjectStore,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
}

impl Reconciler for NodePodProbeLifecycle {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn reconcile(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let shard = self.space.shard_of_key(namespace);
        let held = self.ownership.holds(shard);
        let node: Option<Node> = self.nodes.get("", name).and_then(|o| typed(&o));
        let decision = decide(node.as_ref(), self.probes.get("", name).is_some());
        let name = name.to_string();
        Box::pin(async move {
            if !held {
                return Ok(Action::Done);
            }
            let target = WriteTarget {
                resource: ApiResource::erase::<NodePodProbe>(&()),
                namespace: None,
                name: name.clone(),
                status: false,
            };
            let result = match decision {
                Lifecycle::Keep => return Ok(Action::Done),
                Lifecycle::Create => {
                    info!(node = %name, "creating its NodePodProbe");
                    let body = json!({
                        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodePodProbe",
                        "metadata": { "name": name }, "spec": {}
                    });
                    write(target, WriteOp::Create(body)).await
                }
                Lifecycle::Delete => {
                    info!(node = %name, "deleting the NodePodProbe of a node that is gone");
                    write(target, WriteOp::Delete).await
                }
            };
            match result {
                // Someone got there first: the watch brings the result.
                Ok(()) | Err(WriteError::Api { code: 404 | 409, .. }) => Ok(Action::Done),
                Err(e) => Err(ReconcileError(format!("NodePodProbe {name}: {e}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: serde_json::Value, ready: &str, deleting: bool) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap();
        if deleting {
            n.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        n
    }

    #[test]
    fn one_per_ready_real_node() {
        let ready = node(json!({"type": "kwok"}), "True", false);
        assert_eq!(decide(Some(&ready), false), Lifecycle::Create);
        assert_eq!(decide(Some(&ready), true), Lifecycle::Keep);
        let not_ready = node(json!({}), "False", false);
        assert_eq!(decide(Some(&not_ready), false), Lifecycle::Keep, "created once Ready");
        assert_eq!(decide(Some(&not_ready), true), Lifecycle::Keep, "kept while not Ready");
        let virtual_kubelet = node(json!({"type": "virtual-kubelet"}), "True", false);
        assert_eq!(decide(Some(&virtual_kubelet), false), Lifecycle::Keep);
        assert_eq!(decide(Some(&virtual_kubelet), true), Lifecycle::Delete);
        let terminating = node(json!({}), "True", true);
        assert_eq!(decide(Some(&terminating), true), Lifecycle::Delete);
        assert_eq!(decide(None, true), Lifecycle::Delete, "a ghost NodePodProbe goes");
        assert_eq!(decide(None, false), Lifecycle::Keep);
    }
}
