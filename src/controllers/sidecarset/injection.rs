//! Sidecar injection into a pod being created: which SidecarSets apply, which version of each,
//! and the pod they produce. Pure: the pod webhook gathers the sets and revisions and applies the
//! result as a patch.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Container, EnvVar, LocalObjectReference, Pod, Volume, VolumeMount};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hash::stored_or_computed_hashes;
use crate::api::selector;
use crate::api::sidecarset::{
    PodInjectPolicy, ShareVolumePolicyType, SidecarContainer, SidecarSet, SidecarSetPatchPodMetadata,
    SidecarSetPatchPolicy, TransferEnvVar,
};

pub const SIDECARSET_HASH: &str = "kruise.io/sidecarset-hash";
pub const SIDECARSET_HASH_WITHOUT_IMAGE: &str = "kruise.io/sidecarset-hash-without-image";
pub const INJECTED_LIST: &str = "kruise.io/sidecarset-injected-list";
/// Marks injected containers; they never share their mounts with other sidecars.
pub const IS_INJECTED: &str = "IS_INJECTED";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectionError {
    #[error("SidecarSet {set}: {reason}")]
    Revision { set: String, reason: String },
    #[error("pod annotation {annotation} is not valid JSON: {reason}")]
    BadHashAnnotation { annotation: &'static str, reason: String },
    #[error("patchPodMetadata of SidecarSet {set}: annotation {key}: {reason}")]
    Patch { set: String, key: String, reason: String },
}

/// One set's entry in the pod's hash annotations (Go field order, as upstream writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetUpgradeSpec {
    pub update_timestamp: String,
    pub hash: String,
    pub sidecar_set_name: String,
    pub sidecar_list: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub controller_revision: String,
}

impl SidecarSetUpgradeSpec {
    /// `set`'s entry recording `hash` (and `revision`, if any) at `now`.
    pub fn new(set: &SidecarSet, hash: &str, revision: &str, now: &str) -> Self {
        let mut sidecar_list: Vec<String> =
            set.spec.containers.iter().flatten().map(|sc| sc.container.name.clone()).collect();
        sidecar_list.sort();
        SidecarSetUpgradeSpec {
            update_timestamp: now.to_string(),
            hash: hash.to_string(),
            sidecar_set_name: set.metadata.name.clone().unwrap_or_default(),
            sidecar_list,
            controller_revision: revision.to_string(),
        }
    }
}

/// A hash annotation: entries by set name; legacy plain-hash values are read as entries.
pub(crate) fn read_hash_annotation(
    pod: &Pod,
    annotation: &'static str,
) -> Result<BTreeMap<String, SidecarSetUpgradeSpec>, InjectionError> {
    let Some(raw) = pod.metadata.annotations.as_ref().and_then(|a| a.get(annotation)) else {
        return Ok(BTreeMap::new());
    };
    let bad = |e: serde_json::Error| InjectionError::BadHashAnnotation { annotation, reason: e.to_string() };
    let parsed: BTreeMap<String, Value> = serde_json::from_str(raw).map_err(bad)?;
    parsed
        .into_iter()
        .map(|(set, v)| {
            let entry = match v {
                Value::String(hash) => SidecarSetUpgradeSpec {
                    update_timestamp: String::new(),
                    hash,
                    sidecar_set_name: set.clone(),
                    sidecar_list: vec![],
                    controller_revision: String::new(),
                },
                other => serde_json::from_value(other).map_err(bad)?,
            };
            Ok((set, entry))
        })
        .collect()
}

/// The version of a set a new pod gets: the set itself (borrowed), or a copy as of a revision.
struct Chosen<'a> {
    set: Cow<'a, SidecarSet>,
    hash: String,
    hash_without_image: String,
    revision: String,
}

/// The set as of its pinned revision (if any), with that revision's hashes.
fn choose_version<'a, R: Borrow<ControllerRevision>>(
    set: &'a SidecarSet,
    revisions: &[R],
) -> Result<Chosen<'a>, InjectionError> {
    let name = set.metadata.name.clone().unwrap_or_default();
    let err = |reason: String| InjectionError::Revision { set: name.clone(), reason };
    let hashes = |annotations: &Option<BTreeMap<String, String>>, set: &SidecarSet| {
        stored_or_computed_hashes(annotations.as_ref(), set)
    };
    match set.pinned_revision(revisions).map_err(err)? {
        None => {
            let (hash, hash_without_image) = hashes(&set.metadata.annotations, set);
            Ok(Chosen {
                hash,
                hash_without_image,
                revision: set.status.as_ref().and_then(|s| s.latest_revision.clone()).unwrap_or_default(),
                set: Cow::Borrowed(set),
            })
        }
        Some(rev) => {
            let data = rev.data.as_ref().map(|d| d.0.clone()).unwrap_or(Value::Null);
            let spec = data.get("spec").cloned().unwrap_or(Value::Null);
            let field = |k: &str| spec.get(k).cloned().unwrap_or(Value::Null);
            let mut pinned = set.clone();
            let decode = |e: serde_json::Error| {
                err(format!("revision {} is unreadable: {e}", rev.metadata.name.clone().unwrap_or_default()))
            };
            pinned.spec.containers = serde_json::from_value(field("containers")).map_err(decode)?;
            pinned.spec.init_containers = serde_json::from_value(field("initContainers")).map_err(decode)?;
            pinned.spec.volumes = serde_json::from_value(field("volumes")).map_err(decode)?;
            pinned.spec.image_pull_secrets = serde_json::from_value(field("imagePullSecrets")).map_err(decode)?;
            pinned.spec.patch_pod_metadata = serde_json::from_value(field("patchPodMetadata")).map_err(decode)?;
            let (hash, hash_without_image) = hashes(&rev.metadata.annotations, &pinned);
            Ok(Chosen {
                hash,
                hash_without_image,
                revision: rev.metadata.name.clone().unwrap_or_default(),
                set: Cow::Owned(pinned),
            })
        }
    }
}

/// Whether `set` selects `pod` (in `namespace`) for injection.
pub fn selects(set: &SidecarSet, pod: &Pod, namespace: &str) -> bool {
    !set.spec.injection_strategy.as_ref().and_then(|i| i.paused).unwrap_or(false) && in_scope(set, pod, namespace)
}

/// Whether `pod` (in `namespace`) is within `set`'s namespace and (non-empty) selector.
pub fn in_scope(set: &SidecarSet, pod: &Pod, namespace: &str) -> bool {
    if set.spec.namespace.as_deref().is_some_and(|ns| !ns.is_empty() && ns != namespace) {
        return false;
    }
    let no_labels = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
    set.spec.selector.as_ref().is_some_and(|s| {
        let empty = s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty());
        !empty && selector::matches(s, labels)
    })
}

/// Applies one patchPodMetadata entry to the pod's annotations.
pub(crate) fn patch_annotations(
    annotations: &mut BTreeMap<String, String>,
    set: &str,
    patch: &SidecarSetPatchPodMetadata,
) -> Result<(), InjectionError> {
    for (key, value) in patch.annotations.iter().flatten() {
        match patch.patch_policy.unwrap_or(SidecarSetPatchPolicy::Retain) {
            SidecarSetPatchPolicy::Retain => {
                annotations.entry(key.clone()).or_insert_with(|| value.clone());
            }
            SidecarSetPatchPolicy::Overwrite => {
                annotations.insert(key.clone(), value.clone());
            }
            SidecarSetPatchPolicy::MergePatchJson => {
                let merged = match annotations.get(key).filter(|v| !v.is_empty()) {
                    None => value.clone(),
                    Some(existing) => {
                        let err = |reason: String| InjectionError::Patch { set: set.into(), key: key.clone(), reason };
                        let mut base: Value = serde_json::from_str(existing).map_err(|e| err(e.to_string()))?;
                        let ours: Value = serde_json::from_str(value).map_err(|e| err(e.to_string()))?;
                        json_patch::merge(&mut base, &ours);
                        // serde_json's maps are sorted: compact with sorted keys, as upstream.
                        base.to_string()
                    }
                };
                annotations.insert(key.clone(), merged);
            }
        }
    }
    Ok(())
}

fn injected_marker() -> EnvVar {
    EnvVar { name: IS_INJECTED.into(), value: Some("true".into()), value_from: None }
}

fn is_injected(c: &Container) -> bool {
    c.env.iter().flatten().any(|e| e.name == IS_INJECTED && e.value.as_deref() == Some("true"))
}

/// The pod label or annotation a `fieldRef` like `metadata.labels['biz']` names.
fn field_ref_value(pod: &Pod, field_path: &str) -> Option<String> {
    let (map, rest) = if let Some(r) = field_path.strip_prefix("metadata.labels[") {
        (pod.metadata.labels.as_ref(), r)
    } else if let Some(r) = field_path.strip_prefix("metadata.annotations[") {
        (pod.metadata.annotations.as_ref(), r)
    } else {
        return None;
    };
    let key = rest.strip_suffix(']')?.trim_matches(|c| c == '\'' || c == '"');
    map?.get(key).cloned()
}

/// The env vars `transfer` copies from the pod's containers (missing ones are skipped).
fn transferred_env(pod: &Pod, transfers: &[TransferEnvVar]) -> Vec<EnvVar> {
    let mut out = Vec::new();
    for t in transfers {
        let from_ref = t.source_container_name_from.as_ref().and_then(|f| f.field_ref.as_ref());
        let source =
            from_ref.and_then(|r| field_ref_value(pod, &r.field_path)).or_else(|| t.source_container_name.clone());
        let Some(source) = source else { continue };
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == source)) else {
            continue;
        };
        let names: BTreeSet<&String> = t.env_name.iter().chain(t.env_names.iter().flatten()).collect();
        for name in names {
            if let Some(e) = container.env.iter().flatten().find(|e| &e.name == name) {
                out.push(e.clone());
            }
        }
    }
    out
}

/// `$(VAR)` references in a subPathExpr.
fn subpath_vars(expr: &str) -> Vec<&str> {
    expr.split("$(").skip(1).filter_map(|s| s.split(')').next()).filter(|v| !v.is_empty()).collect()
}

/// The mounts (and env they need) of the pod's app containers, for a sidecar that shares them.
fn shared_mounts(pod: &Pod) -> (Vec<VolumeMount>, Vec<EnvVar>) {
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()).filter(|c| !is_injected(c)) {
        for m in c.volume_mounts.iter().flatten() {
            mounts.push(m.clone());
            for var in m.sub_path_expr.as_deref().map(subpath_vars).unwrap_or_default() {
                if let Some(e) = c.env.iter().flatten().find(|e| e.name == var) {
                    env.push(e.clone());
                }
            }
        }
    }
    (mounts, env)
}

/// Appends `extra` env vars whose names `env` lacks.
fn add_env(env: &mut Vec<EnvVar>, extra: impl IntoIterator<Item = EnvVar>) {
    for e in extra {
        if !env.iter().any(|x| x.name == e.name) {
            env.push(e);
        }
    }
}

/// The container a sidecar becomes in this pod.
fn build_sidecar(pod: &Pod, sc: &SidecarContainer, share: bool) -> Container {
    let mut c = sc.container.clone();
    let mut env = c.env.take().unwrap_or_default();
    add_env(&mut env, [injected_marker()]);
    add_env(&mut env, transferred_env(pod, sc.sidecar.transfer_env.as_deref().unwrap_or_default()));
    if share {
        let (mounts, mount_env) = shared_mounts(pod);
        let own = c.volume_mounts.get_or_insert_with(Vec::new);
        for m in mounts {
            if !own.iter().any(|o| o.mount_path == m.mount_path) {
                own.push(m);
            }
        }
        add_env(&mut env, mount_env);
    }
    c.env = Some(env);
    c
}

/// The set's volumes that `containers` mount.
fn volumes_for(set: &SidecarSet, containers: &[Container]) -> Vec<Volume> {
    let mounted: BTreeSet<&str> =
        containers.iter().flat_map(|c| c.volume_mounts.iter().flatten()).map(|m| m.name.as_str()).collect();
    set.spec.volumes.iter().flatten().filter(|v| mounted.contains(v.name.as_str())).cloned().collect()
}

/// The pod with every selecting SidecarSet injected, or `None` when no set selects it.
/// `sets` may be in any order (they are applied by name); `revisions` are the Kruise namespace's.
pub fn inject<S: Borrow<SidecarSet>, R: Borrow<ControllerRevision>>(
    pod: &Pod,
    namespace: &str,
    sets: &[S],
    revisions: &[R],
    now: &str,
) -> Result<Option<Pod>, InjectionError> {
    let mut matching: Vec<&SidecarSet> =
        sets.iter().map(Borrow::borrow).filter(|s| selects(s, pod, namespace)).collect();
    if matching.is_empty() {
        return Ok(None);
    }
    matching.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let chosen: Vec<Chosen> = matching.into_iter().map(|s| choose_version(s, revisions)).collect::<Result<_, _>>()?;

    let mut out = pod.clone();
    let mut annotations = out.metadata.annotations.take().unwrap_or_default();
    for c in &chosen {
        let name = c.set.metadata.name.as_deref().unwrap_or_default();
        for patch in c.set.spec.patch_pod_metadata.iter().flatten() {
            patch_annotations(&mut annotations, name, patch)?;
        }
    }

    let mut hashes = read_hash_annotation(pod, SIDECARSET_HASH)?;
    let mut hashes_without_image = read_hash_annotation(pod, SIDECARSET_HASH_WITHOUT_IMAGE)?;
    let mut init_containers = Vec::new();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut volumes = Vec::new();
    let mut secrets: Vec<LocalObjectReference> = Vec::new();
    for c in &chosen {
        let set_name = c.set.metadata.name.clone().unwrap_or_default();
        let inits: Vec<Container> =
            c.set.spec.init_containers.iter().flatten().map(|sc| build_sidecar(pod, sc, false)).collect();
        volumes.extend(volumes_for(&c.set, &inits));
        init_containers.extend(inits);
        secrets.extend(c.set.spec.image_pull_secrets.iter().flatten().cloned());
        for sc in c.set.spec.containers.iter().flatten() {
            let share =
                sc.sidecar.share_volume_policy.as_ref().and_then(|p| p.type_) == Some(ShareVolumePolicyType::Enabled);
            let own_volumes = volumes_for(&c.set, std::slice::from_ref(&sc.container));
            volumes.extend(own_volumes);
            let built = build_sidecar(pod, sc, share);
            match sc.sidecar.pod_inject_policy.unwrap_or(PodInjectPolicy::BeforeAppContainer) {
                PodInjectPolicy::BeforeAppContainer => before.push(built),
                PodInjectPolicy::AfterAppContainer => after.push(built),
            }
        }
        hashes.insert(set_name.clone(), SidecarSetUpgradeSpec::new(&c.set, &c.hash, &c.revision, now));
        hashes_without_image
            .insert(set_name.clone(), SidecarSetUpgradeSpec::new(&c.set, &c.hash_without_image, "", now));
    }

    let spec = out.spec.get_or_insert_with(Default::default);
    init_containers.sort_by(|a, b| a.name.cmp(&b.name));
    // Appended after the pod's, or replacing a same-named one (as later upstream versions do),
    // so injecting twice changes nothing.
    let pod_inits = spec.init_containers.get_or_insert_with(Vec::new);
    for c in init_containers {
        match pod_inits.iter_mut().find(|p| p.name == c.name) {
            Some(existing) => *existing = c,
            None => pod_inits.push(c),
        }
    }
    // A sidecar named like an app container replaces it in place; the rest go before or after.
    let mut app = std::mem::take(&mut spec.containers);
    let mut placed = |list: Vec<Container>| -> Vec<Container> {
        list.into_iter()
            .filter_map(|s| match app.iter_mut().find(|a| a.name == s.name) {
                Some(existing) => {
                    *existing = s;
                    None
                }
                None => Some(s),
            })
            .collect()
    };
    let before = placed(before);
    let after = placed(after);
    spec.containers = before.into_iter().chain(app).chain(after).collect();
    let pod_volumes = spec.volumes.get_or_insert_with(Vec::new);
    for v in volumes {
        if !pod_volumes.iter().any(|p| p.name == v.name) {
            pod_volumes.push(v);
        }
    }
    if pod_volumes.is_empty() {
        spec.volumes = None;
    }
    let mut all_secrets: Vec<LocalObjectReference> = Vec::new();
    for s in spec.image_pull_secrets.take().into_iter().flatten().chain(secrets) {
        if !all_secrets.iter().any(|x| x.name == s.name) {
            all_secrets.push(s);
        }
    }
    spec.image_pull_secrets = (!all_secrets.is_empty()).then_some(all_secrets);

    let json = |m: &BTreeMap<String, SidecarSetUpgradeSpec>| serde_json::to_string(m).unwrap_or_default();
    annotations.insert(SIDECARSET_HASH.into(), json(&hashes));
    annotations.insert(SIDECARSET_HASH_WITHOUT_IMAGE.into(), json(&hashes_without_image));
    let injected: Vec<&str> = chosen.iter().filter_map(|c| c.set.metadata.name.as_deref()).collect();
    annotations.insert(INJECTED_LIST.into(), injected.join(","));
    out.metadata.annotations = Some(annotations);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::sidecarset::hash::sidecarset_hashes;
    use serde_json::json;

    fn set(v: Value) -> SidecarSet {
        let mut s: SidecarSet = serde_json::from_value(v).unwrap();
        crate::api::validation::sidecarset::default_sidecarset(&mut s);
        s
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn names(cs: &[Container]) -> Vec<&str> {
        cs.iter().map(|c| c.name.as_str()).collect()
    }

    fn env_of(c: &Container) -> Vec<(&str, &str)> {
        c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or(""))).collect()
    }

    const NOW: &str = "2026-11-30T00:00:00Z";
    const NO_REVISIONS: &[ControllerRevision] = &[];

    fn logtail() -> SidecarSet {
        set(json!({
            "metadata": { "name": "logtail-sidecarset" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "containers": [{
                    "name": "logtail", "image": "log-service/logtail:0.16.16",
                    "volumeMounts": [{ "name": "nginx-log", "mountPath": "/var/log/nginx" }],
                    "transferEnv": [{ "sourceContainerName": "nginx", "envName": "TZ" }]
                }],
                "volumes": [{ "name": "nginx-log", "emptyDir": {} }]
            }
        }))
    }

    fn nginx_pod() -> Pod {
        pod(json!({
            "metadata": { "name": "test-pod", "namespace": "default", "labels": { "app": "nginx" } },
            "spec": {
                "containers": [{
                    "name": "nginx", "image": "nginx:1.27",
                    "env": [{ "name": "TZ", "value": "Asia/Shanghai" }],
                    "volumeMounts": [{ "name": "nginx-log", "mountPath": "/var/log/nginx" }]
                }],
                "volumes": [{ "name": "nginx-log", "hostPath": { "path": "/var/log" } }]
            }
        }))
    }

    #[test]
    fn logtail_is_injected_as_upstream_does() {
        let out = inject(&nginx_pod(), "default", &[logtail()], NO_REVISIONS, NOW).unwrap().expect("injected");
        let spec = out.spec.as_ref().unwrap();
        assert_eq!(names(&spec.containers), ["logtail", "nginx"]);
        assert_eq!(env_of(&spec.containers[0]), [("IS_INJECTED", "true"), ("TZ", "Asia/Shanghai")]);
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1, "the pod's own nginx-log wins");
        assert!(volumes[0].host_path.is_some());
        let a = out.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[INJECTED_LIST], "logtail-sidecarset");
        let (hash, without) = sidecarset_hashes(&logtail());
        assert_eq!(
            a[SIDECARSET_HASH],
            format!(
                r#"{{"logtail-sidecarset":{{"updateTimestamp":"{NOW}","hash":"{hash}","sidecarSetName":"logtail-sidecarset","sidecarList":["logtail"]}}}}"#
            )
        );
        assert!(a[SIDECARSET_HASH_WITHOUT_IMAGE].contains(&format!(r#""hash":"{without}""#)));
    }

    #[test]
    fn unmatched_paused_and_other_namespace_sets_inject_nothing() {
        let mut other = logtail();
        other.spec.selector = serde_json::from_value(json!({ "matchLabels": { "app": "nomatched" } })).unwrap();
        assert_eq!(inject(&nginx_pod(), "default", &[other], NO_REVISIONS, NOW).unwrap(), None);
        let mut paused = logtail();
        paused.spec.injection_strategy = serde_json::from_value(json!({ "paused": true })).unwrap();
        assert_eq!(inject(&nginx_pod(), "default", &[paused], NO_REVISIONS, NOW).unwrap(), None);
        let mut scoped = logtail();
        scoped.spec.namespace = Some("test-ns".into());
        assert_eq!(inject(&nginx_pod(), "default", &[scoped.clone()], NO_REVISIONS, NOW).unwrap(), None);
        assert!(inject(&nginx_pod(), "test-ns", &[scoped], NO_REVISIONS, NOW).unwrap().is_some());
    }

    #[test]
    fn containers_and_init_containers_go_where_their_policy_says() {
        let s = set(json!({
            "metadata": { "name": "order" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "initContainers": [{ "name": "init-2", "image": "b" }, { "name": "init-1", "image": "b" }],
                "containers": [
                    { "name": "dns-f", "image": "b", "podInjectPolicy": "BeforeAppContainer" },
                    { "name": "log-agent", "image": "b", "podInjectPolicy": "AfterAppContainer" }
                ]
            }
        }));
        let mut p = nginx_pod();
        p.spec.as_mut().unwrap().init_containers =
            Some(vec![Container { name: "init-0".into(), ..Default::default() }]);
        let out = inject(&p, "default", &[s], NO_REVISIONS, NOW).unwrap().unwrap();
        let spec = out.spec.unwrap();
        let inits = spec.init_containers.unwrap();
        assert_eq!(names(&inits), ["init-0", "init-1", "init-2"]);
        assert!(is_injected(&inits[1]) && !is_injected(&inits[0]));
        assert_eq!(names(&spec.containers), ["dns-f", "nginx", "log-agent"]);
    }

    #[test]
    fn only_mounted_volumes_are_added_after_the_pods() {
        let s = set(json!({
            "metadata": { "name": "vols" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "containers": [{ "name": "c", "image": "b", "volumeMounts": [{ "name": "volume-1", "mountPath": "/v1" }] }],
                "volumes": [{ "name": "volume-1", "emptyDir": {} }, { "name": "volume-2", "emptyDir": {} }]
            }
        }));
        let p = pod(json!({
            "metadata": { "name": "p", "labels": { "app": "nginx" } },
            "spec": { "containers": [{ "name": "nginx" }], "volumes": [{ "name": "volume-a", "emptyDir": {} }, { "name": "volume-b", "emptyDir": {} }] }
        }));
        let out = inject(&p, "default", &[s], NO_REVISIONS, NOW).unwrap().unwrap();
        let vols: Vec<String> = out.spec.unwrap().volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(vols, ["volume-a", "volume-b", "volume-1"]);
    }

    #[test]
    fn shared_mounts_bring_the_env_their_subpath_needs() {
        let s = set(json!({
            "metadata": { "name": "share" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "containers": [{
                    "name": "sidecar", "image": "b", "shareVolumePolicy": { "type": "enabled" },
                    "volumeMounts": [
                        { "name": "a", "mountPath": "/a/b/c" }, { "name": "d", "mountPath": "/d/e/f" }, { "name": "s", "mountPath": "/staragent" }
                    ]
                }]
            }
        }));
        let p = pod(json!({
            "metadata": { "name": "p", "labels": { "app": "nginx" } },
            "spec": { "containers": [{
                "name": "nginx",
                "env": [{ "name": "POD_NAME", "value": "bar" }, { "name": "OD_NAME", "value": "od" }],
                "volumeMounts": [
                    { "name": "x", "mountPath": "/a/b" }, { "name": "y", "mountPath": "/e/f" },
                    { "name": "z", "mountPath": "/e/expansion", "subPathExpr": "foo/$(POD_NAME)/$(OD_NAME)/conf" }
                ]
            }] }
        }));
        let out = inject(&p, "default", &[s], NO_REVISIONS, NOW).unwrap().unwrap();
        let c = &out.spec.unwrap().containers[0];
        assert_eq!(c.volume_mounts.as_ref().unwrap().len(), 6);
        assert_eq!(env_of(c), [("IS_INJECTED", "true"), ("POD_NAME", "bar"), ("OD_NAME", "od")]);
    }

    #[test]
    fn transferred_env_never_overrides_the_sidecars_own() {
        let s = set(json!({
            "metadata": { "name": "env" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "containers": [{
                    "name": "nginx-sidecar", "image": "b",
                    "env": [{ "name": "OD_NAME", "value": "sidecar_name" }, { "name": "SidecarName", "value": "nginx-sidecar" }],
                    "transferEnv": [
                        { "sourceContainerNameFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.labels['biz']" } },
                          "envNames": ["POD_NAME", "OD_NAME", "PROXY_IP", "MISSING"] }
                    ]
                }]
            }
        }));
        let p = pod(json!({
            "metadata": { "name": "p", "labels": { "app": "nginx", "biz": "main" } },
            "spec": { "containers": [{ "name": "main", "env": [
                { "name": "POD_NAME", "value": "bar" }, { "name": "OD_NAME", "value": "od_name" }, { "name": "PROXY_IP", "value": "127.0.0.1" }
            ] }] }
        }));
        let out = inject(&p, "default", &[s], NO_REVISIONS, NOW).unwrap().unwrap();
        let c = &out.spec.unwrap().containers[0];
        let env: BTreeMap<&str, &str> = env_of(c).into_iter().collect();
        assert_eq!(env["POD_NAME"], "bar");
        assert_eq!(env["OD_NAME"], "sidecar_name");
        assert_eq!(env["PROXY_IP"], "127.0.0.1");
        assert_eq!(env["SidecarName"], "nginx-sidecar");
        assert!(!env.contains_key("MISSING"));
    }

    #[test]
    fn image_pull_secrets_are_a_union_in_order() {
        let s = set(json!({
            "metadata": { "name": "secrets" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "containers": [{ "name": "c", "image": "b" }],
                "imagePullSecrets": [{ "name": "s0" }, { "name": "s1" }, { "name": "s2" }]
            }
        }));
        let with = |secrets: &[&str]| {
            let mut p = nginx_pod();
            if !secrets.is_empty() {
                p.spec.as_mut().unwrap().image_pull_secrets =
                    Some(secrets.iter().map(|n| LocalObjectReference { name: n.to_string() }).collect());
            }
            let out = inject(&p, "default", std::slice::from_ref(&s), NO_REVISIONS, NOW).unwrap().unwrap();
            out.spec.unwrap().image_pull_secrets.unwrap().into_iter().map(|r| r.name).collect::<Vec<_>>()
        };
        assert_eq!(with(&["s2", "s3", "s3"]), ["s2", "s3", "s0", "s1"]);
        assert_eq!(with(&["s3", "s4", "s5"]).len(), 6);
        assert_eq!(with(&[]), ["s0", "s1", "s2"]);
    }

    #[test]
    fn two_sets_keep_a_legacy_entry_and_list_both() {
        let mk = |name: &str, container: &str| {
            set(json!({ "metadata": { "name": name }, "spec": {
                "selector": { "matchLabels": { "app": "nginx" } }, "containers": [{ "name": container, "image": "b" }] } }))
        };
        let mut p = nginx_pod();
        p.metadata.annotations =
            Some(BTreeMap::from([(SIDECARSET_HASH.into(), r#"{"sidecarset-test":"abc"}"#.into())]));
        let out = inject(&p, "default", &[mk("sidecarset3", "c3"), mk("sidecarset1", "c1")], NO_REVISIONS, NOW)
            .unwrap()
            .unwrap();
        let a = out.metadata.annotations.unwrap();
        assert_eq!(a[INJECTED_LIST], "sidecarset1,sidecarset3");
        let hashes: BTreeMap<String, SidecarSetUpgradeSpec> = serde_json::from_str(&a[SIDECARSET_HASH]).unwrap();
        assert_eq!(hashes.keys().collect::<Vec<_>>(), ["sidecarset-test", "sidecarset1", "sidecarset3"]);
        assert_eq!(hashes["sidecarset-test"].hash, "abc", "the legacy entry is kept, in object form");
        let mut bad = nginx_pod();
        bad.metadata.annotations = Some(BTreeMap::from([(SIDECARSET_HASH.into(), "{not json".into())]));
        assert!(matches!(
            inject(&bad, "default", &[mk("s", "c")], NO_REVISIONS, NOW),
            Err(InjectionError::BadHashAnnotation { .. })
        ));
    }

    #[test]
    fn patch_pod_metadata_policies() {
        let mk = |name: &str, patches: Value| {
            set(json!({ "metadata": { "name": name }, "spec": {
                "selector": { "matchLabels": { "app": "nginx" } }, "containers": [{ "name": name, "image": "b" }],
                "patchPodMetadata": patches } }))
        };
        let a = mk(
            "a",
            json!([
                { "annotations": { "key1": "{\"log-agent\":1}" }, "patchPolicy": "MergePatchJson" },
                { "annotations": { "key": "envoy=1,log=2" }, "patchPolicy": "Retain" }
            ]),
        );
        let b = mk("b", json!([{ "annotations": { "key1": "{\"envoy\":2}" }, "patchPolicy": "MergePatchJson" }]));
        let out = inject(&nginx_pod(), "default", &[b, a], NO_REVISIONS, NOW).unwrap().unwrap();
        let ann = out.metadata.annotations.unwrap();
        assert_eq!(ann["key1"], r#"{"envoy":2,"log-agent":1}"#);
        assert_eq!(ann["key"], "envoy=1,log=2");

        let mut p = nginx_pod();
        p.metadata.annotations = Some(BTreeMap::from([("k".into(), "user".into())]));
        let retain = mk("r", json!([{ "annotations": { "k": "side" }, "patchPolicy": "Retain" }]));
        let overwrite = mk("o", json!([{ "annotations": { "k": "side" }, "patchPolicy": "Overwrite" }]));
        let got = |s: SidecarSet| {
            inject(&p, "default", &[s], NO_REVISIONS, NOW).unwrap().unwrap().metadata.annotations.unwrap()["k"].clone()
        };
        assert_eq!(got(retain), "user");
        assert_eq!(got(overwrite), "side");
    }

    #[test]
    fn a_pinned_revision_is_injected_instead_of_the_current_spec() {
        let mut s = logtail();
        s.spec.injection_strategy =
            serde_json::from_value(json!({ "revision": { "revisionName": "logtail-sidecarset-old" } })).unwrap();
        let revision: ControllerRevision = serde_json::from_value(json!({
            "metadata": {
                "name": "logtail-sidecarset-old", "namespace": "kruise-system",
                "labels": { "kruise.io/sidecarset-name": "logtail-sidecarset" },
                "annotations": { SIDECARSET_HASH: "old-hash", SIDECARSET_HASH_WITHOUT_IMAGE: "old-without" }
            },
            "revision": 1,
            "data": { "spec": {
                "containers": [{ "name": "logtail", "image": "log-service/logtail:0.16.0" }],
                "initContainers": null, "volumes": null, "imagePullSecrets": [{ "name": "old-secret" }], "patchPodMetadata": null
            } }
        }))
        .unwrap();
        let out = inject(&nginx_pod(), "default", &[s.clone()], std::slice::from_ref(&revision), NOW).unwrap().unwrap();
        let spec = out.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("log-service/logtail:0.16.0"));
        assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "old-secret");
        let hashes: BTreeMap<String, SidecarSetUpgradeSpec> =
            serde_json::from_str(&out.metadata.annotations.as_ref().unwrap()[SIDECARSET_HASH]).unwrap();
        assert_eq!(hashes["logtail-sidecarset"].hash, "old-hash");
        assert_eq!(hashes["logtail-sidecarset"].controller_revision, "logtail-sidecarset-old");
        // A pinned revision that does not exist fails the pod, rather than injecting something else.
        assert!(matches!(
            inject(&nginx_pod(), "default", &[s], NO_REVISIONS, NOW),
            Err(InjectionError::Revision { .. })
        ));
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let s = set(json!({
            "metadata": { "name": "twice" },
            "spec": {
                "selector": { "matchLabels": { "app": "nginx" } },
                "initContainers": [{ "name": "init", "image": "b" }],
                "containers": [{ "name": "sidecar", "image": "b", "shareVolumePolicy": { "type": "enabled" },
                                 "transferEnv": [{ "sourceContainerName": "nginx", "envName": "TZ" }] }],
                "imagePullSecrets": [{ "name": "s" }]
            }
        }));
        let sets = [s, logtail()];
        let once = inject(&nginx_pod(), "default", &sets, NO_REVISIONS, NOW).unwrap().unwrap();
        let twice = inject(&once, "default", &sets, NO_REVISIONS, NOW).unwrap().unwrap();
        assert_eq!(twice, once);
    }
}
