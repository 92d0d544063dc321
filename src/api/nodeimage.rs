//! NodeImage (cluster-scoped, named after its node, labels copied from the node): the images
//! kruise-daemon should pull on one node (spec, from ImagePullJobs) and how the pulls went
//! (status, from the daemon). Upstream v1.3 layout; each image's `tags` is a list-map keyed by
//! `tag`, so the shards of different ImagePullJobs can own their tags through server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "NodeImage",
    plural = "nodeimages",
    status = "NodeImageStatus",
    doc = "NodeImage lists the images to pull on one node and how their pulls went.",
    printcolumn = r#"{"name":"DESIRED","type":"integer","jsonPath":".status.desired","description":"Number of all images on this node"}"#,
    printcolumn = r#"{"name":"PULLING","type":"integer","jsonPath":".status.pulling","description":"Number of image pull task active"}"#,
    printcolumn = r#"{"name":"SUCCEED","type":"integer","jsonPath":".status.succeeded","description":"Number of image pull task succeeded"}"#,
    printcolumn = r#"{"name":"FAILED","type":"integer","jsonPath":".status.failed","description":"Number of image pull tasks failed"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created."}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeImageSpec {
    /// Image name (without tag) to what to pull of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<BTreeMap<String, ImageSpec>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Secrets to pull with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secrets: Option<Vec<ReferenceObject>>,
    /// The tags to pull.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["tag"]))]
    pub tags: Vec<ImageTagSpec>,
}

/// A namespaced object by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceObject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTagSpec {
    pub tag: String,
    /// When the tag was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<ImageTagPullPolicy>,
    /// The ImagePullJobs (or other objects) that asked for the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Vec<ObjectReference>>,
    /// Bumping it starts a new pull of the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTagPullPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    #[serde(default, rename = "ttlSecondsAfterFinished", skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeImageStatus {
    /// Tags in the spec.
    pub desired: i32,
    #[serde(default)]
    pub succeeded: i32,
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub pulling: i32,
    /// Image name to the state of its tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_statuses: Option<BTreeMap<String, ImageStatus>>,
    /// Reserved by upstream; never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sync_status: Option<SyncStatus>,
}

impl NodeImageSpec {
    /// The spec of `image`'s tag `tag`, if asked for.
    pub fn tag(&self, image: &str, tag: &str) -> Option<&ImageTagSpec> {
        self.images.as_ref()?.get(image)?.tags.iter().find(|t| t.tag == tag)
    }
}

impl NodeImageStatus {
    /// The merge patch of the status subresource turning `old` into `self`: counts set, images
    /// changed, added or removed (each image's `tags` is replaced whole).
    pub fn merge_patch_from(&self, old: Option<&NodeImageStatus>) -> serde_json::Value {
        let mut patch = serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}));
        if let serde_json::Value::Object(m) = &mut patch {
            let old_images = old.and_then(|o| o.image_statuses.clone()).unwrap_or_default();
            let images = match &self.image_statuses {
                // None, not an emptied map, so the stored status reads back as this one.
                None => serde_json::Value::Null,
                Some(new_images) => {
                    serde_json::Value::Object(crate::runtime::merge_patch::diff_maps(&old_images, new_images))
                }
            };
            m.insert("imageStatuses".into(), images);
        }
        patch
    }

    /// The status of `image`'s tag `tag`, whatever version it is for.
    pub fn tag(&self, image: &str, tag: &str) -> Option<&ImageTagStatus> {
        self.image_statuses.as_ref()?.get(image)?.tags.iter().find(|t| t.tag == tag)
    }

    /// The status of `image`'s tag `tag` if it is for `version` (unset counts as 0).
    pub fn tag_at(&self, image: &str, tag: &str, version: Option<i64>) -> Option<&ImageTagStatus> {
        self.tag(image, tag).filter(|t| t.version.unwrap_or_default() == version.unwrap_or_default())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["tag"]))]
    pub tags: Vec<ImageTagStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTagStatus {
    pub tag: String,
    pub phase: ImagePullPhase,
    /// 0-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The spec version this status is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPhase {
    Waiting,
    Pulling,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SyncStatusPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SyncStatusPhase {
    Succeeded,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_patch_applied_to_the_old_status_gives_the_new_one() {
        let status = |v: serde_json::Value| -> NodeImageStatus { serde_json::from_value(v).unwrap() };
        let tag = |t: &str, phase: &str| json!({ "tag": t, "phase": phase, "version": 0 });
        let old = status(json!({ "desired": 2, "succeeded": 1, "pulling": 1, "imageStatuses": {
            "nginx": { "tags": [tag("1", "Succeeded")] }, "redis": { "tags": [tag("7", "Pulling")] } } }));
        let new = status(json!({ "desired": 2, "succeeded": 2, "imageStatuses": {
            "nginx": { "tags": [tag("1", "Succeeded"), tag("2", "Succeeded")] } } }));
        for (from, to) in [(&old, &new), (&new, &old), (&old, &NodeImageStatus::default())] {
            let mut stored = serde_json::to_value(from).unwrap();
            crate::runtime::merge_patch::apply(&mut stored, &to.merge_patch_from(Some(from)));
            assert_eq!(&serde_json::from_value::<NodeImageStatus>(stored).unwrap(), to);
        }
        let patch = new.merge_patch_from(Some(&old));
        assert_eq!(patch["imageStatuses"]["redis"], serde_json::Value::Null, "a removed image is deleted");
        assert!(patch["imageStatuses"].get("nginx").is_some());
    }
}
