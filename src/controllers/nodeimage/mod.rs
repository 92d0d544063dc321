//! NodeImage: one per node, named after it, carrying the node's labels (spec part B.4.2). The
//! manager keeps it: created once the node has been Ready a while, deleted with the node, its
//! spec cleaned of tags no job wants any more, and tags the node never answered failed after a
//! response timeout so jobs never hang. The decisions here are pure; the node's daemon does the
//! pulling and writes the rest of the status.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::nodeimage::{ImagePullPhase, ImageStatus, ImageTagStatus, NodeImage, NodeImageSpec, NodeImageStatus};
use crate::controllers::nodes::{is_virtual, ready_since};

/// A NodeImage with this label stays without a node (tests use such "fake" NodeImages).
pub const FAKE_NODE_IMAGE_LABEL: &str = "apps.kruise.io/fake-nodeimage";
/// How long a node must have been Ready before it gets a NodeImage (upstream's
/// `--nodeimage-creation-delay`).
pub const CREATION_DELAY: Duration = Duration::from_secs(30);
/// How long a tag may go unanswered by its node before the manager fails it.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

pub mod controller;

/// What to do about the NodeImage of one node name.
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Create it with these labels (the node's).
    Create(BTreeMap<String, String>),
    Delete,
    /// Look again in this long (the node has not been Ready long enough).
    WaitFor(Duration),
    /// It exists (or must not yet): go on with its spec and status.
    Keep,
}

/// The lifecycle decision for `node` (None: gone) and its NodeImage `ni` (None: none yet); a node
/// gets one once it has been Ready for `creation_delay`.
pub fn lifecycle(node: Option<&Node>, ni: Option<&NodeImage>, now: Timestamp, creation_delay: Duration) -> Lifecycle {
    let node = node.filter(|n| n.metadata.deletion_timestamp.is_none());
    match (node, ni) {
        (None, Some(ni)) => {
            let fake = ni.metadata.labels.as_ref().is_some_and(|l| l.contains_key(FAKE_NODE_IMAGE_LABEL));
            if fake { Lifecycle::Keep } else { Lifecycle::Delete }
        }
        (None, None) => Lifecycle::Keep,
        (Some(_), Some(_)) => Lifecycle::Keep,
        (Some(n), None) if is_virtual(n) => Lifecycle::Keep,
        (Some(n), None) => match ready_since(n) {
            None => Lifecycle::Keep,
            Some(since) => {
                let ready_for = Duration::try_from(now.duration_since(since)).unwrap_or_default();
                match creation_delay.checked_sub(ready_for).filter(|d| !d.is_zero()) {
                    Some(left) => Lifecycle::WaitFor(left),
                    None => Lifecycle::Create(n.metadata.labels.clone().unwrap_or_default()),
                }
            }
        },
    }
}

/// Whether the ImagePullJob an owner reference names still exists as that object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobLookup {
    /// There, with the reference's UID.
    Same,
    /// Gone, or replaced by another job of the same name.
    Gone,
    /// Could not tell (keep the reference).
    Unknown,
}

/// The spec pass (B.4.2 step 3): the labels and spec the NodeImage should have, and the least
/// time until a finished tag's TTL ends. `job` looks up an owner's job by (namespace, name, uid).
pub struct SpecPass {
    pub labels: BTreeMap<String, String>,
    pub spec: NodeImageSpec,
    pub next_expiry: Option<Duration>,
}

fn is_job_ref(r: &ObjectReference) -> bool {
    r.kind.as_deref() == Some("ImagePullJob")
        && r.api_version.as_deref().is_some_and(|v| v.starts_with("apps.kruise.io/"))
}

pub fn spec_pass(
    ni: &NodeImage,
    node_labels: Option<&BTreeMap<String, String>>,
    job: impl Fn(&ObjectReference) -> JobLookup,
    now: Timestamp,
) -> SpecPass {
    let labels = node_labels.cloned().unwrap_or_else(|| ni.metadata.labels.clone().unwrap_or_default());
    let mut spec = ni.spec.clone();
    let mut next_expiry: Option<Duration> = None;
    let status = ni.status.as_ref();
    if let Some(images) = spec.images.as_mut() {
        for (name, image) in images.iter_mut() {
            image.tags.retain_mut(|tag| {
                if tag.created_at.is_none() {
                    return false;
                }
                if let Some(owners) = tag.owner_references.as_mut().filter(|o| !o.is_empty()) {
                    owners.retain(|r| !is_job_ref(r) || job(r) != JobLookup::Gone);
                    if owners.is_empty() {
                        return false;
                    }
                }
                let ttl = tag.pull_policy.as_ref().and_then(|p| p.ttl_seconds_after_finished);
                let done_at =
                    status.and_then(|s| s.tag_at(name, &tag.tag, tag.version)).and_then(|t| t.completion_time.as_ref());
                if let (Some(ttl), Some(done)) = (ttl, done_at) {
                    let expires = done.0.as_second().saturating_add(i64::from(ttl));
                    let left = expires - now.as_second();
                    if left <= 0 {
                        return false;
                    }
                    let left = crate::controllers::wait_seconds(left);
                    next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
                }
                true
            });
        }
        images.retain(|_, i| !i.tags.is_empty());
    }
    SpecPass { labels, spec, next_expiry }
}

/// A tag the manager failed on the daemon's behalf, for the `PullImageFailed` Events.
#[derive(Debug, Clone, PartialEq)]
pub struct Unanswered {
    pub image: String,
    pub tag: String,
    pub owners: Vec<ObjectReference>,
    pub message: String,
}

/// The status pass (B.4.2 step 4): tags the daemon has not answered within `response_timeout`
/// of being asked, or not finished within their activeDeadlineSeconds plus that timeout, become
/// Failed. Returns the new status when it failed a tag (entries not in the spec pruned, counts
/// recomputed), the failures, and the least time until another tag could time out.
pub fn status_pass(
    ni: &NodeImage,
    response_timeout: Duration,
    now: Timestamp,
) -> (Option<NodeImageStatus>, Vec<Unanswered>, Option<Duration>) {
    let old = ni.status.clone().unwrap_or_default();
    let mut statuses = old.image_statuses.clone().unwrap_or_default();
    let mut failures = Vec::new();
    let mut next: Option<Duration> = None;
    let mut wait = |secs: i64| {
        let d = crate::controllers::wait_seconds(secs);
        next = Some(next.map_or(d, |n: Duration| n.min(d)));
    };
    let timeout = i64::try_from(response_timeout.as_secs()).unwrap_or(i64::MAX);
    let images = ni.spec.images.clone().unwrap_or_default();
    for (name, image) in &images {
        for tag in &image.tags {
            let Some(asked) = tag.created_at.as_ref().map(|t| t.0.as_second()) else { continue };
            let entry = statuses.entry(name.clone()).or_insert_with(|| ImageStatus { tags: Vec::new() });
            let current = entry.tags.iter().position(|s| s.tag == tag.tag && s.version == tag.version);
            let fail = |message: &str| ImageTagStatus {
                tag: tag.tag.clone(),
                phase: ImagePullPhase::Failed,
                progress: None,
                start_time: None,
                completion_time: Some(Time(now)),
                version: tag.version,
                image_id: None,
                message: Some(message.to_string()),
            };
            let failed = match current.map(|i| &entry.tags[i]) {
                None if now.as_second() - asked >= timeout => Some(fail("node has not responded for a long time")),
                None => {
                    wait(asked + timeout - now.as_second());
                    None
                }
                Some(s) if s.completion_time.is_some() => None,
                Some(_) => match tag.pull_policy.as_ref().and_then(|p| p.active_deadline_seconds) {
                    Some(d) if now.as_second() - asked >= d.saturating_add(timeout) => {
                        Some(fail("pulling exceeds the activeDeadlineSeconds"))
                    }
                    Some(d) => {
                        wait(asked.saturating_add(d).saturating_add(timeout) - now.as_second());
                        None
                    }
                    None => None,
                },
            };
            if let Some(status) = failed {
                failures.push(Unanswered {
                    image: name.clone(),
                    tag: tag.tag.clone(),
                    owners: tag.owner_references.clone().unwrap_or_default(),
                    message: status.message.clone().unwrap_or_default(),
                });
                entry.tags.retain(|s| s.tag != tag.tag);
                entry.tags.push(status);
                entry.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
            }
        }
    }
    // Only what the spec still asks for, counted.
    statuses.retain(|name, s| {
        let wanted = images.get(name).map(|i| i.tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>());
        let wanted = wanted.unwrap_or_default();
        s.tags.retain(|t| wanted.contains(&t.tag.as_str()));
        !s.tags.is_empty()
    });
    let phases: Vec<ImagePullPhase> = statuses.values().flat_map(|s| s.tags.iter().map(|t| t.phase)).collect();
    let n = |p: ImagePullPhase| i32::try_from(phases.iter().filter(|x| **x == p).count()).unwrap_or(i32::MAX);
    let status = NodeImageStatus {
        desired: i32::try_from(images.values().map(|i| i.tags.len()).sum::<usize>()).unwrap_or(i32::MAX),
        succeeded: n(ImagePullPhase::Succeeded),
        failed: n(ImagePullPhase::Failed),
        pulling: n(ImagePullPhase::Pulling),
        image_statuses: (!statuses.is_empty()).then_some(statuses),
        first_sync_status: old.first_sync_status.clone(),
    };
    // Only failures are the manager's to write (as upstream); the daemon keeps counts and
    // prunes. Writing a recount on every spec change would race the daemon's own write of it.
    let write = !failures.is_empty() && ni.status.as_ref() != Some(&status);
    (write.then_some(status), failures, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn node(labels: serde_json::Value, ready_at: Option<i64>) -> Node {
        let conditions = match ready_at {
            Some(s) => json!([{ "type": "Ready", "status": "True", "lastTransitionTime": Time(t(s)) }]),
            None => json!([{ "type": "Ready", "status": "False" }]),
        };
        serde_json::from_value(
            json!({ "metadata": { "name": "n1", "labels": labels }, "status": { "conditions": conditions } }),
        )
        .unwrap()
    }

    fn ni(labels: serde_json::Value, spec: serde_json::Value, status: serde_json::Value) -> NodeImage {
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage",
            "metadata": { "name": "n1", "labels": labels }, "spec": spec, "status": status
        }))
        .unwrap()
    }

    fn owner(uid: &str) -> serde_json::Value {
        json!({ "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob", "namespace": "ns", "name": uid, "uid": uid })
    }

    #[test]
    fn created_after_ready_for_a_while_deleted_with_the_node_unless_fake() {
        let n = node(json!({ "zone": "a" }), Some(0));
        assert_eq!(lifecycle(Some(&n), None, t(10), CREATION_DELAY), Lifecycle::WaitFor(Duration::from_secs(20)));
        assert_eq!(
            lifecycle(Some(&n), None, t(30), CREATION_DELAY),
            Lifecycle::Create(BTreeMap::from([("zone".into(), "a".into())]))
        );
        assert_eq!(
            lifecycle(Some(&node(json!({}), None)), None, t(99), CREATION_DELAY),
            Lifecycle::Keep,
            "not Ready: nothing yet"
        );
        let virtual_node = node(json!({ "type": "virtual-kubelet" }), Some(0));
        assert_eq!(lifecycle(Some(&virtual_node), None, t(99), CREATION_DELAY), Lifecycle::Keep);
        let existing = ni(json!({}), json!({}), json!(null));
        assert_eq!(lifecycle(None, Some(&existing), t(0), CREATION_DELAY), Lifecycle::Delete);
        let mut terminating = n.clone();
        terminating.metadata.deletion_timestamp = Some(Time(t(1)));
        assert_eq!(lifecycle(Some(&terminating), Some(&existing), t(2), CREATION_DELAY), Lifecycle::Delete);
        let fake = ni(json!({ FAKE_NODE_IMAGE_LABEL: "true" }), json!({}), json!(null));
        assert_eq!(lifecycle(None, Some(&fake), t(0), CREATION_DELAY), Lifecycle::Keep);
    }

    #[test]
    fn the_spec_pass_drops_what_no_job_wants_and_what_expired() {
        let spec = json!({ "images": {
            "nginx": { "tags": [
                { "tag": "1", "createdAt": Time(t(0)), "version": 0, "ownerReferences": [owner("live"), owner("gone")] },
                { "tag": "2", "createdAt": Time(t(0)), "version": 0, "ownerReferences": [owner("gone")] },
                { "tag": "3", "createdAt": Time(t(0)), "version": 0 },
                { "tag": "4", "version": 0 },
                { "tag": "5", "createdAt": Time(t(0)), "version": 1, "pullPolicy": { "ttlSecondsAfterFinished": 100 } },
                { "tag": "6", "createdAt": Time(t(0)), "version": 0, "pullPolicy": { "ttlSecondsAfterFinished": 100 } },
                { "tag": "7", "createdAt": Time(t(0)), "version": 0, "ownerReferences": [owner("unsure")] }
            ] },
            "redis": { "tags": [{ "tag": "7", "createdAt": Time(t(0)), "ownerReferences": [owner("gone")] }] }
        } });
        let status = json!({ "desired": 0, "imageStatuses": { "nginx": { "tags": [
            { "tag": "5", "phase": "Succeeded", "version": 1, "completionTime": Time(t(10)) },
            { "tag": "6", "phase": "Succeeded", "version": 0, "completionTime": Time(t(50)) }
        ] } } });
        let lookup = |r: &ObjectReference| match r.uid.as_deref() {
            Some("live") => JobLookup::Same,
            Some("unsure") => JobLookup::Unknown,
            _ => JobLookup::Gone,
        };
        let labels = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        let pass = spec_pass(&ni(json!({ "zone": "a" }), spec, status), Some(&labels), lookup, t(120));
        assert_eq!(pass.labels, labels, "the node's labels");
        let images = pass.spec.images.unwrap();
        assert_eq!(images.keys().collect::<Vec<_>>(), ["nginx"], "an image left without tags goes");
        let nginx = &images["nginx"].tags;
        assert_eq!(nginx.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(), ["1", "3", "6", "7"]);
        let owners: Vec<&str> = nginx[0].owner_references.iter().flatten().filter_map(|o| o.uid.as_deref()).collect();
        assert_eq!(owners, ["live"]);
        assert_eq!(pass.next_expiry, Some(Duration::from_secs(30)), "tag 6 expires at 150");
    }

    #[test]
    fn the_status_pass_fails_what_the_node_never_answered() {
        let pp = json!({ "activeDeadlineSeconds": 100 });
        let spec = json!({ "images": { "nginx": { "tags": [
            { "tag": "a", "createdAt": Time(t(0)), "version": 1 },
            { "tag": "b", "createdAt": Time(t(50)), "version": 0 },
            { "tag": "c", "createdAt": Time(t(0)), "version": 0, "pullPolicy": pp, "ownerReferences": [owner("j")] },
            { "tag": "d", "createdAt": Time(t(0)), "version": 0 }
        ] } } });
        let status = json!({ "desired": 4, "imageStatuses": {
            "nginx": { "tags": [
                { "tag": "a", "phase": "Succeeded", "version": 0, "completionTime": Time(t(1)) },
                { "tag": "c", "phase": "Pulling", "version": 0 },
                { "tag": "d", "phase": "Succeeded", "version": 0, "completionTime": Time(t(5)) },
                { "tag": "old", "phase": "Succeeded", "version": 0 }
            ] },
            "gone": { "tags": [{ "tag": "x", "phase": "Failed", "version": 0 }] }
        } });
        let n = ni(json!({}), spec, status);
        let timeout = Duration::from_secs(60);
        let (s, failures, next) = status_pass(&n, timeout, t(30));
        assert!(failures.is_empty());
        assert_eq!(next, Some(Duration::from_secs(30)), "tag a (another version) times out at 60");
        assert_eq!(s, None, "no failure: the counts and stale entries are the daemon's to write");

        let (s, failures, next) = status_pass(&n, timeout, t(170));
        let s = s.unwrap();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert_eq!(failures[0].message, "node has not responded for a long time");
        assert_eq!(failures[0].tag, "a");
        assert_eq!(failures[2].tag, "c");
        assert_eq!(failures[2].message, "pulling exceeds the activeDeadlineSeconds");
        assert_eq!(failures[2].owners.len(), 1);
        let tags = &s.image_statuses.as_ref().unwrap()["nginx"].tags;
        let a = tags.iter().find(|x| x.tag == "a").unwrap();
        assert_eq!(
            (a.phase, a.version, a.completion_time.clone()),
            (ImagePullPhase::Failed, Some(1), Some(Time(t(170))))
        );
        assert_eq!((s.desired, s.succeeded, s.pulling, s.failed), (4, 1, 0, 3));
        assert_eq!(next, None);
        let settled = ni(json!({}), serde_json::to_value(&n.spec).unwrap(), serde_json::to_value(&s).unwrap());
        assert_eq!(status_pass(&settled, timeout, t(171)).0, None, "nothing new: nothing to write");
    }
}
