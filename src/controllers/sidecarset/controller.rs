//! The SidecarSet controller, per set: the revision planner's decisions written through the
//! ApiWriter (new ControllerRevision, renumbering, pruning), the rollout's grants to the shards
//! that hold its pods, and the status (revision fields and the pod counts the shards report).
//!
//! SidecarSets are cluster-scoped, so they all fall in the shard of namespace "": one replica at a
//! time runs this for a set, fenced like any other shard. The pods themselves are upgraded by
//! each shard's NamespaceActors (see `rollout`).

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{ApiResource, ListParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::{info, warn};

use super::revision::plan_revisions;
use super::rollout::RolloutContext;
use crate::api::sidecarset::{SIDECARSET_NAME_LABEL, SidecarSet, SidecarSetStatus};
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::ShardSpace;
use crate::runtime::watch_hub::WatchSpec;

pub const CONTROLLER: &str = "sidecarset-controller";

/// What the controller watches: every SidecarSet, kept whole (its spec is the revision).
pub fn watch_spec(store: ObjectStore) -> WatchSpec {
    WatchSpec {
        controllers: vec![CONTROLLER],
        url_path: "/apis/apps.kruise.io/v1alpha1/sidecarsets".into(),
        label_selector: None,
        store,
        trim: Trim::default(),
        namespaced: false,
        per_namespace: false,
    }
}

/// The per-set part of the controller, on the replica holding the SidecarSets' shard: revision
/// history, rollout grants, status.
pub struct SidecarSetCoordinator {
    pub client: Client,
    pub rollout: RolloutContext,
    /// The Kruise namespace, where revisions live.
    pub namespace: String,
    pub store: ObjectStore,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
}

impl Reconciler for SidecarSetCoordinator {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn reconcile(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let shard = self.space.shard_of_key(namespace);
        let ownership = self.ownership.clone();
        let cached = self.store.get(namespace, name);
        let client = self.client.clone();
        let kruise_ns = self.namespace.clone();
        let rollout = self.rollout.clone();
        let name = name.to_string();
        Box::pin(async move {
            // Fencing, and nothing to keep for a deleted set (its revisions go with it: owner refs).
            let Some(epoch) = ownership.epoch(shard) else { return Ok(Action::Done) };
            let Some(object) = cached else { return Ok(Action::Done) };
            let set: SidecarSet =
                serde_json::from_value(serde_json::to_value(&*object).map_err(ReconcileError::from_display)?)
                    .map_err(ReconcileError::from_display)?;
            let revisions: Api<ControllerRevision> = Api::namespaced(client, &kruise_ns);
            let existing = revisions
                .list(&ListParams::default().labels(&format!("{SIDECARSET_NAME_LABEL}={name}")))
                .await
                .map_err(ReconcileError::from_display)?;
            let plan = plan_revisions(&set, &existing.items, &kruise_ns, &rollout.revisions_in_use(&name));
            if plan.kept_in_use > 0 {
                warn!(set = %name, over = plan.kept_in_use, "revision history over its limit: the rest are in use");
            }
            let revision_target = |rev: &str| WriteTarget {
                resource: ApiResource::erase::<ControllerRevision>(&()),
                namespace: Some(kruise_ns.clone()),
                name: rev.to_string(),
                status: false,
            };
            if let Some(new) = &plan.create {
                let target = revision_target(new.metadata.name.as_deref().unwrap_or_default());
                let mut body = serde_json::to_value(new).map_err(ReconcileError::from_display)?;
                body["apiVersion"] = json!("apps/v1");
                body["kind"] = json!("ControllerRevision");
                match write(target, WriteOp::Create(body)).await {
                    Ok(()) => info!(set = %name, revision = %plan.latest_revision, "created revision"),
                    // Written by an earlier attempt whose answer was lost: the next pass sees it.
                    Err(WriteError::Api { code: 409, .. }) => {
                        return Ok(Action::RequeueAfter(std::time::Duration::from_secs(1)));
                    }
                    Err(e) => return Err(ReconcileError::from_display(e)),
                }
            }
            if let Some((rev, number)) = &plan.renumber {
                write(revision_target(rev), WriteOp::MergePatch(json!({ "revision": number })))
                    .await
                    .map_err(ReconcileError::from_display)?;
            }
            for old in &plan.delete {
                match write(revision_target(old), WriteOp::Delete).await {
                    Ok(()) | Err(WriteError::Api { code: 404, .. }) => {}
                    Err(e) => return Err(ReconcileError::from_display(e)),
                }
            }
            let counts = rollout.coordinate(&set, epoch).await?;
            let status = set.status.clone().unwrap_or_default();
            let generation = set.metadata.generation;
            let wanted = SidecarSetStatus {
                observed_generation: generation,
                matched_pods: counts.matched as i32,
                updated_pods: counts.updated as i32,
                ready_pods: counts.ready as i32,
                updated_ready_pods: Some(counts.updated_ready as i32),
                latest_revision: Some(plan.latest_revision.clone()),
                collision_count: Some(plan.collision_count),
            };
            if status != wanted {
                let target = WriteTarget {
                    resource: ApiResource::erase::<SidecarSet>(&()),
                    namespace: None,
                    name: name.clone(),
                    status: true,
                };
                let patch = json!({ "status": wanted });
                match write(target, WriteOp::MergePatch(patch)).await {
                    Ok(()) | Err(WriteError::Api { code: 404, .. }) => {}
                    Err(e) => return Err(ReconcileError::from_display(e)),
                }
            }
            Ok(Action::Done)
        })
    }
}
