//! The in-place upgrade of one pod to a SidecarSet's current sidecars, as a patch. Pure.
//!
//! Only images change in place (the kubelet restarts just those containers); every other field of
//! a running container is immutable, and such changes reach new pods only. With the images go the
//! set's hash entry (now naming `status.latestRevision`), the image IDs the containers ran before
//! (how completion is recognised: the kubelet reports a new image ID), and the set's
//! `patchPodMetadata` (Overwrite and MergePatchJson values ride on image roll-outs; Retain only
//! adds missing keys).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};

use super::injection::{
    InjectionError, SIDECARSET_HASH, SidecarSetUpgradeSpec, patch_annotations, read_hash_annotation,
};
use super::pod_state::{INPLACE_UPDATE_STATE, SetVersion};

/// A JSON merge patch that upgrades `pod`'s sidecars of `v` in place. It carries the pod's
/// `resourceVersion`, so it applies only to the pod as read (409 otherwise), as upstream's UPDATE.
pub fn upgrade_patch(v: &SetVersion, pod: &Pod, latest_revision: &str, now: &str) -> Result<Value, InjectionError> {
    let spec_containers = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let mut containers = spec_containers;
    let mut changed: Vec<&str> = Vec::new();
    for sidecar in v.set.spec.containers.iter().flatten() {
        let wanted = sidecar.container.image.as_deref();
        if let Some(c) = containers.iter_mut().find(|c| c.name == sidecar.container.name)
            && c.image.as_deref() != wanted
        {
            c.image = wanted.map(str::to_string);
            changed.push(&sidecar.container.name);
        }
    }

    let old = pod.metadata.annotations.clone().unwrap_or_default();
    let mut annotations = old.clone();

    let mut hashes = read_hash_annotation(pod, SIDECARSET_HASH)?;
    hashes.insert(v.name.to_string(), SidecarSetUpgradeSpec::new(v.set, &v.hash, latest_revision, now));
    annotations.insert(SIDECARSET_HASH.into(), serde_json::to_string(&hashes).unwrap_or_default());

    // Other sets' entries are kept; an unreadable annotation (never written so by a controller)
    // starts over rather than blocking the upgrade forever.
    let mut states: BTreeMap<String, Value> =
        old.get(INPLACE_UPDATE_STATE).and_then(|raw| serde_json::from_str(raw).ok()).unwrap_or_default();
    let state =
        states.entry(v.name.to_string()).or_insert_with(|| json!({ "revision": v.hash, "updateTimestamp": now }));
    if !state.is_object() {
        *state = json!({ "revision": v.hash, "updateTimestamp": now });
    }
    if let Some(obj) = state.as_object_mut() {
        let last = obj.entry("lastContainerStatuses").or_insert_with(|| Value::Object(Map::new()));
        if !last.is_object() {
            *last = Value::Object(Map::new());
        }
        if let Some(last) = last.as_object_mut() {
            for name in &changed {
                let image_id =
                    statuses.iter().find(|s| s.name == *name).map(|s| s.image_id.clone()).unwrap_or_default();
                last.insert(name.to_string(), json!({ "imageID": image_id }));
            }
        }
    }
    annotations.insert(INPLACE_UPDATE_STATE.into(), serde_json::to_string(&states).unwrap_or_default());

    for patch in v.set.spec.patch_pod_metadata.iter().flatten() {
        patch_annotations(&mut annotations, v.name, patch)?;
    }

    let changed_annotations: Map<String, Value> = annotations
        .into_iter()
        .filter(|(k, val)| old.get(k) != Some(val))
        .map(|(k, val)| (k, Value::String(val)))
        .collect();
    let mut patch = json!({ "metadata": {
        "resourceVersion": pod.metadata.resource_version,
        "annotations": changed_annotations,
    } });
    if !changed.is_empty() {
        patch["spec"] = json!({ "containers": containers });
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sidecarset::SidecarSet;

    fn set(patch_policy: &str) -> SidecarSet {
        let mut s: SidecarSet = serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
            "metadata": {"name": "logtail-sidecarset"},
            "spec": {
                "selector": {"matchLabels": {"app": "nginx"}},
                "containers": [{"name": "logtail", "image": "log-service/logtail:0.16.18", "env": [{"name": "X", "value": "new"}]}],
                "patchPodMetadata": [{"annotations": {"key": "{\"nginx-sidecar\":2}"}, "patchPolicy": patch_policy}]
            }
        }))
        .unwrap();
        crate::api::validation::sidecarset::default_sidecarset(&mut s);
        s
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "test-pod", "namespace": "default", "resourceVersion": "42",
                "annotations": {
                    "kruise.io/sidecarset-hash": "{\"logtail-sidecarset\":{\"updateTimestamp\":\"t0\",\"hash\":\"old\",\"sidecarSetName\":\"logtail-sidecarset\",\"sidecarList\":[\"logtail\"],\"controllerRevision\":\"r1\"},\"other\":{\"updateTimestamp\":\"t0\",\"hash\":\"o\",\"sidecarSetName\":\"other\",\"sidecarList\":[\"o\"]}}",
                    "key": "{\"nginx-sidecar\":1}",
                    "user": "kept"
                }},
            "spec": {"containers": [
                {"name": "logtail", "image": "log-service/logtail:0.16.16", "env": [{"name": "X", "value": "old"}]},
                {"name": "nginx", "image": "nginx:1.25"}
            ]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "logtail", "image": "log-service/logtail:0.16.16", "imageID": "docker-pullable://logtail@sha256:aaa", "ready": true, "restartCount": 0},
                {"name": "nginx", "image": "nginx:1.25", "imageID": "nginx@sha256:bbb", "ready": true, "restartCount": 0}
            ]}
        }))
        .unwrap()
    }

    /// Spec scenario 17 (the logtail upgrade) and 16 (patchPodMetadata rides on it).
    #[test]
    fn only_the_image_changes_and_the_old_image_id_is_recorded() {
        let s = set("Overwrite");
        let v = SetVersion::new(&s);
        let patch = upgrade_patch(&v, &pod(), "logtail-sidecarset-abc", "2026-11-30T10:00:00Z").unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let containers = patch["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers[0]["image"], "log-service/logtail:0.16.18");
        assert_eq!(containers[0]["env"][0]["value"], "old", "no other field changes in place");
        assert_eq!(containers[1]["image"], "nginx:1.25");
        let annotations = &patch["metadata"]["annotations"];
        let hashes: Value = serde_json::from_str(annotations[SIDECARSET_HASH].as_str().unwrap()).unwrap();
        assert_eq!(hashes["logtail-sidecarset"]["hash"], v.hash);
        assert_eq!(hashes["logtail-sidecarset"]["controllerRevision"], "logtail-sidecarset-abc");
        assert_eq!(hashes["logtail-sidecarset"]["updateTimestamp"], "2026-11-30T10:00:00Z");
        assert_eq!(hashes["other"]["hash"], "o", "other sets' entries are kept");
        let state: Value = serde_json::from_str(annotations[INPLACE_UPDATE_STATE].as_str().unwrap()).unwrap();
        assert_eq!(
            state["logtail-sidecarset"]["lastContainerStatuses"]["logtail"]["imageID"],
            "docker-pullable://logtail@sha256:aaa"
        );
        assert_eq!(state["logtail-sidecarset"]["revision"], v.hash);
        assert_eq!(annotations["key"], "{\"nginx-sidecar\":2}");
        assert!(annotations.get("user").is_none(), "unchanged annotations are not in the patch");
    }

    #[test]
    fn retain_keeps_an_existing_value_and_merge_patch_merges() {
        let s = set("Retain");
        let patch = upgrade_patch(&SetVersion::new(&s), &pod(), "r", "now").unwrap();
        assert!(patch["metadata"]["annotations"].get("key").is_none());
        let s = set("MergePatchJson");
        let mut p = pod();
        p.metadata.annotations.as_mut().unwrap().insert("key".into(), "{\"envoy\":1}".into());
        let patch = upgrade_patch(&SetVersion::new(&s), &p, "r", "now").unwrap();
        assert_eq!(patch["metadata"]["annotations"]["key"], "{\"envoy\":1,\"nginx-sidecar\":2}");
    }

    #[test]
    fn an_existing_state_keeps_its_revision_and_other_sets() {
        let s = set("Retain");
        let v = SetVersion::new(&s);
        let mut p = pod();
        p.metadata.annotations.as_mut().unwrap().insert(
            INPLACE_UPDATE_STATE.into(),
            r#"{"logtail-sidecarset":{"revision":"first","updateTimestamp":"t0","lastContainerStatuses":{"logtail":{"imageID":"x"}}},"other":{"revision":"o"}}"#.into(),
        );
        let patch = upgrade_patch(&v, &p, "r", "now").unwrap();
        let state: Value =
            serde_json::from_str(patch["metadata"]["annotations"][INPLACE_UPDATE_STATE].as_str().unwrap()).unwrap();
        assert_eq!(state["logtail-sidecarset"]["revision"], "first");
        assert_eq!(
            state["logtail-sidecarset"]["lastContainerStatuses"]["logtail"]["imageID"],
            "docker-pullable://logtail@sha256:aaa"
        );
        assert_eq!(state["other"]["revision"], "o");
    }

    #[test]
    fn an_unreadable_hash_annotation_is_an_error_not_a_silent_overwrite() {
        let s = set("Retain");
        let mut p = pod();
        p.metadata.annotations.as_mut().unwrap().insert(SIDECARSET_HASH.into(), "{broken".into());
        assert!(upgrade_patch(&SetVersion::new(&s), &p, "r", "now").is_err());
    }
}
