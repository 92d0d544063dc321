//! What a node's image puller does, decided over a snapshot: which tags to pull, how each pull's
//! attempts are limited and spaced, and the status the node reports (B.4.3).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::nodeimage::{
    ImagePullPhase, ImageStatus, ImageTagPullPolicy, ImageTagStatus, NodeImageSpec, NodeImageStatus, ReferenceObject,
};
use crate::runtime::work_queue::Backoff;

/// Per-attempt pull timeout when the tag names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Retries when the tag names none (or a negative number).
pub const DEFAULT_BACKOFF_LIMIT: u32 = 3;
/// The wait after a failed attempt: 1 s, doubling, at most 30 s.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One pull the node owes: a tag of an image, at the version the manager asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct PullTask {
    pub image: String,
    pub tag: String,
    pub version: i64,
    pub policy: AttemptPolicy,
    /// The image's pull secrets, tried in order before anonymous.
    pub secrets: Vec<ReferenceObject>,
    /// Who asked for the tag (they get the failure Event).
    pub owners: Vec<ObjectReference>,
}

impl PullTask {
    /// What the runtime is asked to pull: `name:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.image, self.tag)
    }

    /// The status of this pull, started at `start`, before it ends.
    pub fn pulling(&self, start: Timestamp) -> ImageTagStatus {
        ImageTagStatus {
            tag: self.tag.clone(),
            phase: ImagePullPhase::Pulling,
            progress: Some(0),
            start_time: Some(whole_seconds(start)),
            completion_time: None,
            version: Some(self.version),
            image_id: None,
            message: None,
        }
    }

    /// The status of this pull waiting for a free worker.
    pub fn waiting(&self) -> ImageTagStatus {
        ImageTagStatus {
            phase: ImagePullPhase::Waiting,
            progress: None,
            start_time: None,
            ..self.pulling(Timestamp::UNIX_EPOCH)
        }
    }

    /// The final status of this pull, started at `start`: the image's ID on success, the error on
    /// failure.
    pub fn finished(&self, start: Timestamp, end: Timestamp, outcome: Result<String, String>) -> ImageTagStatus {
        let base = ImageTagStatus { completion_time: Some(whole_seconds(end)), ..self.pulling(start) };
        match outcome {
            Ok(id) => ImageTagStatus {
                phase: ImagePullPhase::Succeeded,
                progress: Some(100),
                image_id: Some(format!("{}@{id}", self.image)),
                ..base
            },
            Err(message) => ImageTagStatus { phase: ImagePullPhase::Failed, message: Some(message), ..base },
        }
    }
}

/// A time as the API server stores it (whole seconds), so a written status reads back equal.
fn whole_seconds(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// How the attempts of one pull are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPolicy {
    pub attempts: u32,
    pub timeout: Duration,
    /// Counted from the pull's start (its `startTime`).
    pub active_deadline: Option<Duration>,
}

impl AttemptPolicy {
    pub fn of(policy: Option<&ImageTagPullPolicy>) -> Self {
        let timeout = policy
            .and_then(|p| p.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let backoff_limit =
            policy.and_then(|p| p.backoff_limit).and_then(|b| u32::try_from(b).ok()).unwrap_or(DEFAULT_BACKOFF_LIMIT);
        let active_deadline =
            policy.and_then(|p| p.active_deadline_seconds).map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        AttemptPolicy { attempts: backoff_limit.saturating_add(1), timeout, active_deadline }
    }

    /// The timeout of an attempt starting `elapsed` after the pull started: the per-attempt
    /// timeout, cut to what is left of the deadline; None when the deadline has passed.
    pub fn attempt_timeout(&self, elapsed: Duration) -> Option<Duration> {
        match self.active_deadline {
            Some(d) if elapsed >= d => None,
            Some(d) => Some(self.timeout.min(d - elapsed)),
            None => Some(self.timeout),
        }
    }

    /// The wait after failed attempt `n` (1-based).
    pub fn backoff(n: u32) -> Duration {
        Backoff { base: FIRST_BACKOFF, max: MAX_BACKOFF }.delay(n)
    }
}

/// The pulls the node owes: every spec tag without a finished status of its version (one the
/// manager failed on the node's behalf counts as finished too).
pub fn owed_pulls(spec: &NodeImageSpec, status: Option<&NodeImageStatus>) -> Vec<PullTask> {
    let mut owed = Vec::new();
    for (image, s) in spec.images.iter().flatten() {
        for tag in &s.tags {
            let version = tag.version.unwrap_or_default();
            if status
                .and_then(|s| s.tag_at(image, &tag.tag, Some(version)))
                .is_some_and(|t| t.completion_time.is_some())
            {
                continue;
            }
            owed.push(PullTask {
                image: image.clone(),
                tag: tag.tag.clone(),
                version,
                policy: AttemptPolicy::of(tag.pull_policy.as_ref()),
                secrets: s.pull_secrets.clone().unwrap_or_default(),
                owners: tag.owner_references.clone().unwrap_or_default(),
            });
        }
    }
    owed
}

/// The status the node reports: for each spec tag, the worker's current status of it (`live`,
/// by image and tag) or, for a finished one, what was reported; counts from the phases.
pub fn node_status(
    spec: &NodeImageSpec,
    reported_status: Option<&NodeImageStatus>,
    live: &BTreeMap<(String, String), ImageTagStatus>,
) -> NodeImageStatus {
    let mut images: BTreeMap<String, ImageStatus> = BTreeMap::new();
    let mut desired = 0usize;
    for (image, s) in spec.images.iter().flatten() {
        for tag in &s.tags {
            desired += 1;
            let version = tag.version.unwrap_or_default();
            let current = live
                .get(&(image.clone(), tag.tag.clone()))
                .filter(|t| t.version.unwrap_or_default() == version)
                .or_else(|| reported_status.and_then(|s| s.tag_at(image, &tag.tag, Some(version))));
            if let Some(t) = current {
                images.entry(image.clone()).or_insert_with(|| ImageStatus { tags: Vec::new() }).tags.push(t.clone());
            }
        }
    }
    for s in images.values_mut() {
        s.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    }
    let count = |p: ImagePullPhase| {
        let n = images.values().flat_map(|s| &s.tags).filter(|t| t.phase == p).count();
        i32::try_from(n).unwrap_or(i32::MAX)
    };
    NodeImageStatus {
        desired: i32::try_from(desired).unwrap_or(i32::MAX),
        succeeded: count(ImagePullPhase::Succeeded),
        failed: count(ImagePullPhase::Failed),
        pulling: count(ImagePullPhase::Pulling),
        image_statuses: (!images.is_empty()).then_some(images),
        first_sync_status: reported_status.and_then(|s| s.first_sync_status.clone()),
    }
}

/// Whether a node owes a status write: `next` differs from the `stored` status (the object's, as
/// last seen), or, as a refresh, its last write is older than 12 h plus `jitter` (spread so nodes
/// do not all refresh at once).
pub fn owes_write(
    stored: Option<&NodeImageStatus>,
    next: &NodeImageStatus,
    last_write: Option<Timestamp>,
    now: Timestamp,
    jitter: Duration,
) -> bool {
    const REFRESH: Duration = Duration::from_secs(12 * 3600);
    stored != Some(next)
        || last_write
            .is_some_and(|at| Duration::try_from(now.duration_since(at)).unwrap_or_default() >= REFRESH + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn spec() -> NodeImageSpec {
        serde_json::from_value(json!({ "images": {
            "nginx": { "pullSecrets": [{ "namespace": "ns", "name": "reg" }], "tags": [
                { "tag": "1.24", "version": 2, "pullPolicy": { "timeoutSeconds": 60, "backoffLimit": 1, "activeDeadlineSeconds": 90 } },
                { "tag": "1.25", "version": 0 },
                { "tag": "1.26", "version": 1, "pullPolicy": { "backoffLimit": -4 } }
            ] },
            "redis": { "tags": [{ "tag": "7", "version": 0 }] }
        } }))
        .unwrap()
    }

    fn tag_status(tag: &str, phase: &str, version: i64, done: Option<i64>) -> serde_json::Value {
        json!({ "tag": tag, "phase": phase, "version": version, "completionTime": done.map(|s| Time(t(s))) })
    }

    #[test]
    fn the_node_owes_every_tag_not_finished_at_its_version() {
        let status: NodeImageStatus = serde_json::from_value(json!({ "desired": 4, "imageStatuses": {
            "nginx": { "tags": [
                tag_status("1.24", "Succeeded", 1, Some(5)),
                tag_status("1.25", "Failed", 0, Some(9)),
                tag_status("1.26", "Pulling", 1, None)
            ] },
            "redis": { "tags": [tag_status("7", "Succeeded", 0, Some(3))] }
        } }))
        .unwrap();
        let owed = owed_pulls(&spec(), Some(&status));
        let names: Vec<(&str, i64)> = owed.iter().map(|p| (p.tag.as_str(), p.version)).collect();
        assert_eq!(names, [("1.24", 2), ("1.26", 1)], "an older round's result and a running pull do not settle it");
        assert_eq!(owed[0].secrets, [ReferenceObject { namespace: Some("ns".into()), name: Some("reg".into()) }]);
        assert_eq!(
            owed[0].policy,
            AttemptPolicy {
                attempts: 2,
                timeout: Duration::from_secs(60),
                active_deadline: Some(Duration::from_secs(90))
            }
        );
        assert_eq!(owed[1].policy.attempts, 4, "a negative backoffLimit counts as 3");
        assert_eq!(owed[1].policy.timeout, DEFAULT_TIMEOUT);
        assert_eq!(owed_pulls(&spec(), None).len(), 4);
    }

    #[test]
    fn attempts_are_cut_by_the_deadline_and_spaced_by_backoff() {
        let p = AttemptPolicy {
            attempts: 3,
            timeout: Duration::from_secs(60),
            active_deadline: Some(Duration::from_secs(90)),
        };
        assert_eq!(p.attempt_timeout(Duration::ZERO), Some(Duration::from_secs(60)));
        assert_eq!(p.attempt_timeout(Duration::from_secs(61)), Some(Duration::from_secs(29)));
        assert_eq!(p.attempt_timeout(Duration::from_secs(90)), None, "past the deadline: no attempt");
        let backoffs: Vec<u64> = (1..=7).map(|n| AttemptPolicy::backoff(n).as_secs()).collect();
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn the_status_lists_spec_tags_only_with_live_or_finished_states() {
        let reported_status: NodeImageStatus = serde_json::from_value(json!({ "desired": 9, "imageStatuses": {
            "nginx": { "tags": [tag_status("1.25", "Succeeded", 0, Some(1)), tag_status("1.26", "Failed", 0, Some(1))] },
            "gone": { "tags": [tag_status("x", "Succeeded", 0, Some(1))] }
        } }))
        .unwrap();
        let mut live = BTreeMap::new();
        let pulling: ImageTagStatus = serde_json::from_value(tag_status("1.24", "Pulling", 2, None)).unwrap();
        live.insert(("nginx".to_string(), "1.24".to_string()), pulling);
        let s = node_status(&spec(), Some(&reported_status), &live);
        assert_eq!((s.desired, s.pulling, s.succeeded, s.failed), (4, 1, 1, 0));
        let images = s.image_statuses.clone().unwrap();
        assert_eq!(images.keys().collect::<Vec<_>>(), ["nginx"], "entries not in the spec are gone");
        let tags: Vec<&str> = images["nginx"].tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(tags, ["1.24", "1.25"], "1.26's result is for another version");

        // What the daemon writes reads back equal (the API server keeps whole seconds).
        let task = &owed_pulls(&spec(), None)[0];
        let start = Timestamp::from_millisecond(1_800_000_000_123).unwrap();
        for st in [task.pulling(start), task.finished(start, t(5), Ok("sha256:1".into())), task.waiting()] {
            let back: ImageTagStatus = serde_json::from_value(serde_json::to_value(&st).unwrap()).unwrap();
            assert_eq!(back, st);
        }
        let empty = node_status(&NodeImageSpec::default(), None, &BTreeMap::new());
        assert_eq!(empty.image_statuses, None);
        let z = Duration::ZERO;
        assert!(owes_write(None, &s, None, t(0), z), "nothing stored yet");
        assert!(owes_write(Some(&empty), &s, Some(t(0)), t(1), z), "a change");
        assert!(!owes_write(Some(&s), &s, Some(t(0)), t(3600), z));
        assert!(!owes_write(Some(&s), &s, None, t(3600), z), "stored by another writer, nothing to add");
        assert!(owes_write(Some(&s), &s, Some(t(0)), t(12 * 3600), z), "refreshed after 12 h");
        assert!(!owes_write(Some(&s), &s, Some(t(0)), t(12 * 3600), Duration::from_secs(60)));
    }
}
