//! A trivial controller that proves the sharded runtime end to end (`--demo-controller`): it
//! stamps every ConfigMap (or pod, `--demo-resource pods`) matching `--demo-selector` with the
//! identity of the replica that reconciled it, through the ApiWriter, after checking the replica
//! still holds the object's shard. It reads the object from the WatchHub's store and skips those
//! already stamped by this replica, so a quiet cluster costs no writes. Each reconcile logs its
//! key and start/end time, so tests can check that no key is reconciled by two replicas at once.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ApiResource;
use serde_json::{Value, json};
use tracing::info;

use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::ShardSpace;
use crate::runtime::watch_hub::WatchSpec;

pub const CONTROLLER: &str = "demo-controller";
pub const DEMO_LABEL: &str = "kruise.io/demo";
pub const RECONCILED_BY: &str = "kruise.io/demo-reconciled-by";

/// The objects the demo controller stamps unless told otherwise.
pub fn default_selector() -> String {
    format!("{DEMO_LABEL}=true")
}

/// The kinds the demo controller can stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoResource {
    Configmaps,
    Pods,
}

impl DemoResource {
    pub fn api_resource(self) -> ApiResource {
        match self {
            DemoResource::Configmaps => ApiResource::erase::<ConfigMap>(&()),
            DemoResource::Pods => ApiResource::erase::<Pod>(&()),
        }
    }

    /// The demo reads only metadata: the rest is not kept.
    fn trim(self) -> Trim {
        match self {
            DemoResource::Configmaps => Trim { drop: &[&["data"], &["binaryData"]] },
            DemoResource::Pods => Trim { drop: &[&["spec"], &["status"]] },
        }
    }
}

/// What the demo controller watches: objects of `resource` matching `label_selector`.
pub fn watch_spec(resource: DemoResource, label_selector: &str, store: ObjectStore) -> WatchSpec {
    WatchSpec {
        controllers: vec![CONTROLLER],
        url_path: format!("/api/v1/{}", resource.api_resource().plural),
        label_selector: Some(label_selector.to_string()),
        store,
        trim: resource.trim(),
        namespaced: true,
        per_namespace: false,
    }
}

/// The merge patch that stamps an object with `identity`.
pub fn stamp(identity: &str) -> Value {
    json!({ "metadata": { "annotations": { RECONCILED_BY: identity } } })
}

pub struct DemoStamper {
    pub identity: String,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
    pub resource: DemoResource,
    /// The WatchHub's store of the watched objects.
    pub store: ObjectStore,
}

fn now_micros() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

impl Reconciler for DemoStamper {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn reconcile(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let shard = self.space.shard_of_key(namespace);
        let ownership = self.ownership.clone();
        let identity = self.identity.clone();
        let cached = self.store.get(namespace, name);
        let resource = self.resource.api_resource();
        let (namespace, name) = (namespace.to_string(), name.to_string());
        Box::pin(async move {
            let start_us = now_micros();
            // Fencing: never write for a shard this replica no longer holds.
            if !ownership.holds(shard) {
                return Ok(Action::Done);
            }
            let Some(object) = cached else { return Ok(Action::Done) }; // deleted
            let stamped_by = object.metadata.annotations.as_ref().and_then(|a| a.get(RECONCILED_BY));
            if stamped_by == Some(&identity) {
                return Ok(Action::Done);
            }
            let target =
                WriteTarget { resource, namespace: Some(namespace.clone()), name: name.clone(), status: false };
            let written = write(target, WriteOp::MergePatch(stamp(&identity))).await;
            let end_us = now_micros();
            info!(target: "kruise::demo", key = %format!("{namespace}/{name}"), %identity, start_us, end_us, "demo reconciled");
            match written {
                Ok(()) | Err(WriteError::Api { code: 404, .. }) => Ok(Action::Done),
                Err(e) => Err(ReconcileError(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_a_merge_patch_of_one_annotation() {
        assert_eq!(stamp("m-1"), json!({"metadata": {"annotations": {"kruise.io/demo-reconciled-by": "m-1"}}}));
        let spec = watch_spec(DemoResource::Pods, &default_selector(), ObjectStore::default());
        assert_eq!(spec.label_selector.as_deref(), Some("kruise.io/demo=true"));
        assert_eq!(spec.url_path, "/api/v1/pods");
    }
}
