//! What the SidecarSet controller reads off a pod, for one set: is it matched, updated to the
//! set's current sidecars, consistent (the kubelet has run what the spec says), ready, upgradable
//! in place. Pure functions of the pod as the watch delivered it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::hash::stored_or_computed_hashes;
use super::injection::{INJECTED_LIST, SIDECARSET_HASH, SIDECARSET_HASH_WITHOUT_IMAGE, in_scope, read_hash_annotation};
use crate::api::selector;
use crate::api::sidecarset::{SidecarContainerUpgradeType, SidecarSet};

/// Pod annotation: per set, the container image IDs recorded before its last in-place update.
pub const INPLACE_UPDATE_STATE: &str = "kruise.io/sidecarset-inplace-update-state";

/// A SidecarSet as the rollout sees it: its name, hashes and sidecar container names.
#[derive(Debug, Clone)]
pub struct SetVersion<'a> {
    pub set: &'a SidecarSet,
    pub name: &'a str,
    pub hash: String,
    pub hash_without_image: String,
    /// `spec.containers` names, in spec order.
    pub containers: Vec<&'a str>,
}

impl<'a> SetVersion<'a> {
    pub fn new(set: &'a SidecarSet) -> Self {
        let (hash, hash_without_image) = stored_or_computed_hashes(set.metadata.annotations.as_ref(), set);
        SetVersion {
            set,
            name: set.metadata.name.as_deref().unwrap_or_default(),
            hash,
            hash_without_image,
            containers: set.spec.containers.iter().flatten().map(|c| c.container.name.as_str()).collect(),
        }
    }

    /// Whether some sidecar is hot-upgraded (twin containers): kruise-rs does not upgrade those in
    /// place yet; their pods are counted but never picked.
    pub fn has_hot_upgrade(&self) -> bool {
        self.set.spec.containers.iter().flatten().any(|c| {
            c.sidecar.upgrade_strategy.as_ref().and_then(|u| u.upgrade_type)
                == Some(SidecarContainerUpgradeType::HotUpgrade)
        })
    }
}

fn annotation<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

pub use crate::controllers::pods::is_active;

/// Whether `set` counts `pod` among its matched pods: active, in its namespace and selector, and
/// injected by it with all of its containers (pods created before the set are not its own).
pub fn is_matched(v: &SetVersion, pod: &Pod) -> bool {
    let selected = in_scope(v.set, pod, pod.metadata.namespace.as_deref().unwrap_or_default());
    let injected = annotation(pod, INJECTED_LIST).is_some_and(|l| l.split(',').any(|n| n == v.name));
    let containers = pod.spec.as_ref().map(|s| &s.containers[..]).unwrap_or_default();
    is_active(pod) && selected && injected && v.containers.iter().all(|name| containers.iter().any(|c| c.name == *name))
}

/// The hash `pod` records for set `name` in `annotation`, if readable.
fn recorded_hash(pod: &Pod, annotation: &'static str, name: &str) -> Option<String> {
    read_hash_annotation(pod, annotation).ok()?.remove(name).map(|e| e.hash)
}

/// The revision of `v`'s set the pod records (its hash entry's `controllerRevision`), if any.
pub fn recorded_revision(v: &SetVersion, pod: &Pod) -> Option<String> {
    let entry = read_hash_annotation(pod, SIDECARSET_HASH).ok()?.remove(v.name)?;
    Some(entry.controller_revision).filter(|r| !r.is_empty())
}

/// The pod runs the set's current sidecars (as far as the spec goes).
pub fn is_updated(v: &SetVersion, pod: &Pod) -> bool {
    recorded_hash(pod, SIDECARSET_HASH, v.name).as_deref() == Some(v.hash.as_str())
}

/// Running and Ready, not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// When the pod last became Ready, if it is.
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let c = status.conditions.iter().flatten().find(|c| c.type_ == "Ready" && c.status == "True")?;
    c.last_transition_time.as_ref().map(|t| t.0)
}

/// A runtime image ID without its `scheme://` prefix (`docker-pullable://…`).
fn strip_scheme(image_id: &str) -> &str {
    image_id.split_once("://").map_or(image_id, |(_, rest)| rest)
}

/// `repo@sha256:…`
fn is_digest(image: &str) -> bool {
    image.contains("@sha256:")
}

/// A repository name without the default registry and library prefixes, so `busybox` and
/// `docker.io/library/busybox` compare equal.
fn normalized_repo(repo: &str) -> &str {
    let repo = repo.strip_prefix("docker.io/").or_else(|| repo.strip_prefix("index.docker.io/")).unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo)
}

/// Whether a digest image and a running container's image ID name the same repo and digest.
fn same_digest(image: &str, image_id: &str) -> bool {
    match (image.split_once('@'), strip_scheme(image_id).split_once('@')) {
        (Some((repo_a, digest_a)), Some((repo_b, digest_b))) => {
            digest_a == digest_b && normalized_repo(repo_a) == normalized_repo(repo_b)
        }
        _ => false,
    }
}

/// The image IDs recorded before the last in-place update of `set`'s containers, by container.
/// `Err` when the annotation is unreadable.
fn recorded_image_ids(pod: &Pod) -> Result<Option<BTreeMap<String, String>>, ()> {
    let Some(raw) = annotation(pod, INPLACE_UPDATE_STATE) else { return Ok(None) };
    let states: BTreeMap<String, Value> = serde_json::from_str(raw).map_err(|_| ())?;
    let mut ids = BTreeMap::new();
    for state in states.values() {
        if let Some(Value::Object(last)) = state.get("lastContainerStatuses") {
            for (container, s) in last {
                ids.insert(container.clone(), s.get("imageID").and_then(Value::as_str).unwrap_or("").to_string());
            }
        }
    }
    Ok(Some(ids))
}

/// Whether the kubelet runs what the spec says for `containers`: for digest images the running
/// digest must match; otherwise a container updated in place must have left the image ID it had
/// before the update.
pub fn is_consistent(pod: &Pod, containers: &[&str]) -> bool {
    let (Some(spec), Some(status)) = (pod.spec.as_ref(), pod.status.as_ref()) else { return false };
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    if spec.containers.len() != statuses.len() {
        return false;
    }
    let ours: Vec<_> = spec.containers.iter().filter(|c| containers.contains(&c.name.as_str())).collect();
    if ours.iter().all(|c| c.image.as_deref().is_some_and(is_digest)) {
        return ours.iter().all(|c| {
            statuses.iter().any(|s| s.name == c.name && same_digest(c.image.as_deref().unwrap_or(""), &s.image_id))
        });
    }
    let recorded = match recorded_image_ids(pod) {
        Ok(None) => return true,
        Ok(Some(r)) => r,
        Err(()) => return false,
    };
    statuses.iter().filter(|s| containers.contains(&s.name.as_str())).all(|s| {
        let spec_image = spec.containers.iter().find(|c| c.name == s.name).and_then(|c| c.image.as_deref());
        let still_old = recorded.get(&s.name).is_some_and(|id| *id == s.image_id);
        !(still_old && spec_image != Some(s.image.as_str()))
    })
}

/// Whether the pod may be upgraded in place to the set's current version: only image changes
/// separate it from the set (same without-image hash), and no ready sidecar of the set is still
/// being updated. A sidecar that is not ready does not block, so a broken image can be replaced.
pub fn is_upgradable(v: &SetVersion, pod: &Pod) -> bool {
    if recorded_hash(pod, SIDECARSET_HASH_WITHOUT_IMAGE, v.name).as_deref() != Some(v.hash_without_image.as_str()) {
        return false;
    }
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    v.containers.iter().all(|name| {
        let ready = statuses.iter().any(|s| s.name == *name && s.ready);
        !ready || is_consistent(pod, &[name])
    })
}

/// Where a pod stands in the upgrade order (smaller first): unscheduled, early phase, not ready,
/// ready for a short time, restarting a lot, young pods go first; the name settles ties so every
/// round orders the same pods the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRank {
    pub scheduled: bool,
    /// Pending 0, Unknown 1, Running 2.
    pub phase: u8,
    pub ready: bool,
    pub ready_since: Option<Timestamp>,
    pub max_restarts: i32,
    pub created: Option<Timestamp>,
    pub namespace: String,
    pub name: String,
}

impl Ord for UpgradeRank {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        // Empty first, then the later time first.
        let later_first = |a: &Option<Timestamp>, b: &Option<Timestamp>| match (a, b) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => b.cmp(a),
        };
        self.scheduled
            .cmp(&o.scheduled)
            .then(self.phase.cmp(&o.phase))
            .then(self.ready.cmp(&o.ready))
            .then_with(|| {
                if self.ready && o.ready { later_first(&self.ready_since, &o.ready_since) } else { Ordering::Equal }
            })
            .then(o.max_restarts.cmp(&self.max_restarts))
            .then_with(|| later_first(&self.created, &o.created))
            .then_with(|| self.namespace.cmp(&o.namespace))
            .then_with(|| self.name.cmp(&o.name))
    }
}

impl PartialOrd for UpgradeRank {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

pub fn rank(pod: &Pod) -> UpgradeRank {
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let ready = is_ready(pod);
    UpgradeRank {
        scheduled: pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty()),
        phase,
        ready,
        ready_since: if ready { ready_since(pod) } else { None },
        max_restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().map(|c| c.restart_count).max())
            .unwrap_or(0),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

/// Everything the planner needs of one matched pod.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub rank: UpgradeRank,
    pub labels: BTreeMap<String, String>,
    pub updated: bool,
    /// Consistent for all of the set's containers and ready.
    pub consistent_ready: bool,
    pub ready: bool,
    pub upgradable: bool,
    /// Matches `updateStrategy.selector` (true when there is none).
    pub selected: bool,
    /// The set revision the pod records, if any (kept from history truncation).
    pub revision: Option<String>,
}

impl PodFacts {
    pub fn of(v: &SetVersion, pod: &Pod) -> Self {
        let ready = is_ready(pod);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let selected = match v.set.spec.update_strategy.as_ref().and_then(|s| s.selector.as_ref()) {
            None => true,
            // An invalid selector matches nothing.
            Some(s) => selector::matches(s, &labels),
        };
        PodFacts {
            rank: rank(pod),
            updated: is_updated(v, pod),
            consistent_ready: ready && is_consistent(pod, &v.containers),
            ready,
            upgradable: !v.has_hot_upgrade() && is_upgradable(v, pod),
            selected,
            labels,
            revision: recorded_revision(v, pod),
        }
    }

    /// Updated but not yet running and ready on the new version: it holds a maxUnavailable slot.
    pub fn in_flight(&self) -> bool {
        self.updated && !self.consistent_ready
    }

    /// Still to be upgraded now.
    pub fn waiting(&self) -> bool {
        !self.updated && self.selected && self.upgradable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::sidecarset::hash::sidecarset_hashes;
    use crate::controllers::sidecarset::upgrade::upgrade_patch;
    use serde_json::json;

    fn set(image: &str) -> SidecarSet {
        let mut s: SidecarSet = serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet", "metadata": {"name": "s"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "containers": [{"name": "side", "image": image}]}
        }))
        .unwrap();
        crate::api::validation::sidecarset::default_sidecarset(&mut s);
        let (h, w) = sidecarset_hashes(&s);
        s.metadata.annotations =
            Some(BTreeMap::from([(SIDECARSET_HASH.to_string(), h), (SIDECARSET_HASH_WITHOUT_IMAGE.to_string(), w)]));
        s
    }

    /// A pod injected by `set` (hash entries as the webhook writes them), running `image` with `image_id`.
    fn pod(v: &SetVersion, image: &str, image_id: &str, ready: bool) -> Pod {
        let entry = |h: &str| {
            json!({ "s": {"updateTimestamp": "t", "hash": h, "sidecarSetName": "s", "sidecarList": ["side"]} })
                .to_string()
        };
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}, "resourceVersion": "1",
                "annotations": {INJECTED_LIST: "s", SIDECARSET_HASH: entry(&v.hash), SIDECARSET_HASH_WITHOUT_IMAGE: entry(&v.hash_without_image)}},
            "spec": {"nodeName": "n", "containers": [{"name": "side", "image": image}, {"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [
                    {"name": "side", "image": image, "imageID": image_id, "ready": ready, "restartCount": 0},
                    {"name": "app", "image": "app:1", "imageID": "app-id", "ready": true, "restartCount": 0}]}
        }))
        .unwrap()
    }

    /// Applies a merge patch the way the API server would.
    fn apply(pod: &Pod, patch: &Value) -> Pod {
        let mut v = serde_json::to_value(pod).unwrap();
        json_patch::merge(&mut v, patch);
        serde_json::from_value(v).unwrap()
    }

    /// The kubelet's part: run the spec's image, with a new image ID.
    fn restarted(pod: &Pod, new_id: &str) -> Pod {
        let mut p = pod.clone();
        let image = p.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
        let s = &mut p.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0];
        s.image = image;
        s.image_id = new_id.into();
        p
    }

    #[test]
    fn matched_needs_selector_injection_and_all_containers() {
        let s = set("side:1");
        let v = SetVersion::new(&s);
        let p = pod(&v, "side:1", "id1", true);
        assert!(is_matched(&v, &p));
        let mut other_ns = s.clone();
        other_ns.spec.namespace = Some("elsewhere".into());
        assert!(!is_matched(&SetVersion::new(&other_ns), &p));
        let mut not_injected = p.clone();
        not_injected.metadata.annotations.as_mut().unwrap().insert(INJECTED_LIST.into(), "t".into());
        assert!(!is_matched(&v, &not_injected), "pods created before the set are not its own");
        let mut missing = p.clone();
        missing.spec.as_mut().unwrap().containers.remove(0);
        assert!(!is_matched(&v, &missing));
        let mut deleting = p.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH));
        assert!(!is_matched(&v, &deleting));
    }

    /// Spec scenarios 17 and 33: an upgrade is in flight until the kubelet reports a new image ID;
    /// meanwhile a newer version does not pick the pod.
    #[test]
    fn an_upgrade_completes_when_the_image_id_changes() {
        let v1 = set("side:1");
        let v2 = set("side:2");
        let (v1, v2) = (SetVersion::new(&v1), SetVersion::new(&v2));
        assert_eq!(v1.hash_without_image, v2.hash_without_image);
        let p = pod(&v1, "side:1", "docker://side@sha256:1", true);
        assert!(is_consistent(&p, &["side"]), "never updated in place: consistent");
        assert!(!is_updated(&v2, &p) && is_upgradable(&v2, &p));

        let patched = apply(&p, &upgrade_patch(&v2, &p, "rev-2", "now").unwrap());
        assert!(is_updated(&v2, &patched));
        assert!(!is_consistent(&patched, &["side"]), "the kubelet still runs the old image ID");
        let v3s = set("side:3");
        let v3 = SetVersion::new(&v3s);
        assert!(!is_upgradable(&v3, &patched), "in flight: not picked for a newer image");

        let done = restarted(&patched, "docker://side@sha256:2");
        assert!(is_consistent(&done, &["side"]));
        assert!(is_upgradable(&v3, &done));
    }

    /// Spec scenario 22: a sidecar that is not ready does not block replacing its broken image.
    #[test]
    fn a_not_ready_sidecar_does_not_block_the_next_version() {
        let v1s = set("side:1");
        let v1 = SetVersion::new(&v1s);
        let bad_s = set("side:broken");
        let bad = SetVersion::new(&bad_s);
        let p = pod(&v1, "side:1", "id1", false);
        let patched = apply(&p, &upgrade_patch(&bad, &p, "r", "now").unwrap());
        assert!(!is_consistent(&patched, &["side"]));
        let v3s = set("side:3");
        assert!(is_upgradable(&SetVersion::new(&v3s), &patched));
    }

    #[test]
    fn digest_images_compare_the_running_digest() {
        let s = set("repo/side@sha256:abc");
        let v = SetVersion::new(&s);
        let p = pod(&v, "repo/side@sha256:abc", "docker-pullable://docker.io/repo/side@sha256:abc", true);
        assert!(is_consistent(&p, &["side"]));
        let stale = pod(&v, "repo/side@sha256:abc", "docker-pullable://docker.io/repo/side@sha256:old", true);
        assert!(!is_consistent(&stale, &["side"]));
        let mut short = p.clone();
        short.status.as_mut().unwrap().container_statuses.as_mut().unwrap().pop();
        assert!(!is_consistent(&short, &["side"]), "a container without status is not consistent");
    }

    #[test]
    fn a_non_image_change_is_not_upgradable_in_place() {
        let s = set("side:1");
        let v = SetVersion::new(&s);
        let p = pod(&v, "side:1", "id", true);
        let mut changed = s.clone();
        changed.spec.containers.as_mut().unwrap()[0].container.command = Some(vec!["sh".into()]);
        changed.metadata.annotations = None;
        let cv = SetVersion::new(&changed);
        assert!(!is_updated(&cv, &p));
        assert!(!is_upgradable(&cv, &p), "only image changes are upgraded in place");
    }

    #[test]
    fn rank_orders_as_upstream() {
        let s = set("side:1");
        let v = SetVersion::new(&s);
        let ready = pod(&v, "side:1", "id", true);
        let unready = pod(&v, "side:1", "id", false);
        let mut pending = unready.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut unscheduled = pending.clone();
        unscheduled.spec.as_mut().unwrap().node_name = None;
        let mut restarting = ready.clone();
        restarting.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[1].restart_count = 3;
        let mut ranks = [rank(&ready), rank(&restarting), rank(&unready), rank(&pending), rank(&unscheduled)];
        ranks.sort();
        let expected = [rank(&unscheduled), rank(&pending), rank(&unready), rank(&restarting), rank(&ready)];
        assert_eq!(ranks, expected);
    }
}
