//! The NodeImage controller's Kubernetes glue: one reconcile per node name, on the replica holding
//! the shard of namespace "" (cluster-scoped, as the NodePodProbe lifecycle). It reads nodes from
//! the shared nodes watch, NodeImages from the unsharded [`NodeImageIndex`] and job UIDs from
//! [`JobUids`], and writes through the ApiWriter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::ApiResource;
use kube::{Client, Resource};
use rand::Rng;
use serde_json::json;
use tracing::info;

use super::{JobLookup, Lifecycle, lifecycle, spec_pass, status_pass};
use crate::api::nodeimage::NodeImage;
use crate::controllers::imagepulljob::controller::{NodeImageIndex, UNTIL_LISTED};
use crate::controllers::pods::typed;
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::events::{self, Reporter};
use crate::runtime::merge_patch::diff_maps;
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::ObjectStore;
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::ShardSpace;
use crate::runtime::watch_changes::{Change, Mirror, follow};
use crate::runtime::watch_hub::enqueue;

pub const CONTROLLER: &str = "nodeimage-controller";
const EVENT_COMPONENT: &str = "nodeimage-controller";

/// Every ImagePullJob's UID by (namespace, name), from one metadata watch per replica: owners on
/// NodeImage tags name jobs of any namespace.
pub type JobUids = Arc<Mirror<HashMap<(String, String), String>>>;

/// Follows every ImagePullJob's metadata into `uids`; a deleted job reconciles the NodeImages
/// that list it, so its tags go.
pub fn watch_job_uids(client: &Client, uids: JobUids, node_images: NodeImageIndex) {
    use kube::core::PartialObjectMeta;
    use kube::runtime::watcher;
    type JobMeta = PartialObjectMeta<crate::api::imagepulljob::ImagePullJob>;
    let stream = watcher(kube::Api::<JobMeta>::all(client.clone()), watcher::Config::default());
    let key = |m: &JobMeta| {
        let ns = m.metadata.namespace.as_deref().unwrap_or_default();
        format!("{ns}/{}", m.metadata.name.as_deref().unwrap_or_default())
    };
    tokio::spawn(follow(stream, "ImagePullJob metadata", key, move |changes, listed| {
        let mut gone_uids = Vec::new();
        {
            let Ok(mut m) = uids.objects.write() else { return false };
            for change in changes {
                match change {
                    Change::Put(meta) => {
                        let ns = meta.metadata.namespace.clone().unwrap_or_default();
                        let name = meta.metadata.name.clone().unwrap_or_default();
                        m.insert((ns, name), meta.metadata.uid.clone().unwrap_or_default());
                    }
                    Change::Gone(k) => {
                        let (ns, name) = k.split_once('/').unwrap_or(("", &k));
                        gone_uids.extend(m.remove(&(ns.to_string(), name.to_string())));
                    }
                }
            }
        }
        if listed {
            uids.mark_listed();
        }
        if gone_uids.is_empty() {
            return true;
        }
        let Ok(ix) = node_images.objects.read() else { return false };
        for (name, ni) in ix.iter() {
            let lists = ni.spec.images.iter().flatten().flat_map(|(_, i)| &i.tags).any(|t| {
                t.owner_references.iter().flatten().any(|o| o.uid.as_ref().is_some_and(|u| gone_uids.contains(u)))
            });
            if lists {
                enqueue(CONTROLLER, "", name);
            }
        }
        true
    }));
}

pub struct NodeImageController {
    pub nodes: ObjectStore,
    pub node_images: NodeImageIndex,
    pub job_uids: JobUids,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
    /// How long a node must have been Ready before it gets a NodeImage.
    pub creation_delay: Duration,
    /// How long a tag may go unanswered by the node before it is failed.
    pub response_timeout: Duration,
}

impl Reconciler for NodeImageController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn reconcile(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let held = self.ownership.holds(self.space.shard_of_key(namespace));
        let node: Option<Node> = self.nodes.get("", name).and_then(|o| typed(&o));
        let listed = self.node_images.is_listed();
        let ni = self.node_images.objects.read().ok().and_then(|ix| ix.get(name).cloned());
        let uids = self.job_uids.clone();
        let (delay, timeout) = (self.creation_delay, self.response_timeout);
        let name = name.to_string();
        Box::pin(async move {
            if !held {
                return Ok(Action::Done);
            }
            if !listed {
                return Ok(Action::RequeueAfter(UNTIL_LISTED));
            }
            reconcile_node(&name, node.as_ref(), ni.as_ref(), &uids, delay, timeout, Timestamp::now()).await
        })
    }
}

fn target(name: &str, status: bool) -> WriteTarget {
    WriteTarget { resource: ApiResource::erase::<NodeImage>(&()), namespace: None, name: name.to_string(), status }
}

#[allow(clippy::too_many_arguments)]
async fn reconcile_node(
    name: &str,
    node: Option<&Node>,
    ni: Option<&NodeImage>,
    uids: &Mirror<HashMap<(String, String), String>>,
    creation_delay: Duration,
    response_timeout: Duration,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let err = |e: WriteError| ReconcileError(format!("NodeImage {name}: {e}"));
    let ni = match (lifecycle(node, ni, now, creation_delay), ni) {
        (Lifecycle::Create(labels), _) => {
            info!(node = name, "creating its NodeImage");
            let body = json!({
                "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage",
                "metadata": { "name": name, "labels": labels }, "spec": {}
            });
            return match write(target(name, false), WriteOp::Create(body)).await {
                Ok(()) | Err(WriteError::Api { code: 409, .. }) => Ok(Action::Done),
                Err(e) => Err(err(e)),
            };
        }
        (Lifecycle::Delete, _) => {
            info!(node = name, "deleting the NodeImage of a node that is gone");
            return match write(target(name, false), WriteOp::Delete).await {
                Ok(()) | Err(WriteError::Api { code: 404, .. }) => Ok(Action::Done),
                Err(e) => Err(err(e)),
            };
        }
        (Lifecycle::WaitFor(d), _) => return Ok(Action::RequeueAfter(d)),
        (Lifecycle::Keep, None) => return Ok(Action::Done),
        (Lifecycle::Keep, Some(ni)) => ni,
    };
    let version = ni.metadata.resource_version.clone();

    // Spec: the node's labels, and only tags some job still wants.
    // Before the jobs are listed, a job not found may exist: keep its references.
    let lookup = |r: &ObjectReference| {
        if !uids.is_listed() {
            return JobLookup::Unknown;
        }
        let Ok(m) = uids.objects.read() else { return JobLookup::Unknown };
        let key = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
        match m.get(&key) {
            Some(uid) if Some(uid) == r.uid.as_ref() => JobLookup::Same,
            _ => JobLookup::Gone,
        }
    };
    let pass = spec_pass(ni, node.and_then(|n| n.metadata.labels.as_ref()), lookup, now);
    let old_labels = ni.metadata.labels.clone().unwrap_or_default();
    let old_images = ni.spec.images.clone().unwrap_or_default();
    let new_images = pass.spec.images.clone().unwrap_or_default();
    if pass.labels != old_labels || new_images != old_images {
        let patch = json!({
            "metadata": { "resourceVersion": version, "labels": diff_maps(&old_labels, &pass.labels) },
            "spec": { "images": diff_maps(&old_images, &new_images) }
        });
        return match write(target(name, false), WriteOp::MergePatch(patch)).await {
            // The watch brings the new version, and with it the status pass.
            Ok(()) | Err(WriteError::Api { code: 409, .. }) => Ok(Action::Done),
            Err(e) => Err(err(e)),
        };
    }

    // Status: tags the node never answered fail, so their jobs finish.
    let (status, failures, next) = status_pass(ni, response_timeout, now);
    if let Some(status) = status {
        let patch = json!({ "metadata": { "resourceVersion": version }, "status": status.merge_patch_from(ni.status.as_ref()) });
        match write(target(name, true), WriteOp::MergePatch(patch)).await {
            Ok(()) => {
                let reporter = Reporter { component: EVENT_COMPONENT, instance: String::new() };
                let node_ref = ni.object_ref(&());
                for f in &failures {
                    let message = format!("Image {}:{} {}", f.image, f.tag, f.message);
                    for owner in f.owners.iter().chain(std::iter::once(&node_ref)) {
                        events::emit(&reporter, owner, "Warning", "PullImageFailed", &message).await;
                    }
                }
            }
            Err(WriteError::Api { code: 409, .. }) => return Ok(Action::Done),
            Err(e) => return Err(err(e)),
        }
    }
    let next = [pass.next_expiry, next].into_iter().flatten().min();
    Ok(next.map_or(Action::Done, |d| {
        // Short waits are spread over 3–5 s, as upstream, so many tags do not wake at once.
        if d < Duration::from_secs(3) {
            Action::RequeueAfter(Duration::from_millis(rand::rng().random_range(3000..5000)))
        } else {
            Action::RequeueAfter(d)
        }
    }))
}
