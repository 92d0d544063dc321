//! A job's status from its targets' NodeImages, and the targets to hand the image next (B.4.1
//! steps 5 and 6).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::owned_by;
use crate::api::common::CompletionPolicyType;
use crate::api::image::ImageRef;
use crate::api::imagepulljob::{ImagePullJob, ImagePullJobStatus};
use crate::api::nodeimage::{ImagePullPhase, NodeImage};

/// What the job should look like now, and what to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub status: ImagePullJobStatus,
    /// Targets to hand the image to now, in target order: at most `parallelism − active`.
    pub to_request: Vec<String>,
    /// An unfinished `Always` job with a deadline: how long until it passes.
    pub deadline_in: Option<Duration>,
}

/// How many nodes may pull at once: 1 when unset; a string is read as an integer and anything
/// else (a percentage too) counts as 0, which pauses the job (upstream v1.3).
pub fn parallelism(job: &ImagePullJob) -> usize {
    let n = match &job.spec.parallelism {
        None => 1,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => s.trim().parse().unwrap_or(0),
    };
    usize::try_from(n).unwrap_or(0)
}

/// Where one target stands for this job.
enum TargetState {
    /// The job's tag is not in the NodeImage's spec yet (or not owned by the job).
    Unrequested,
    Active,
    Succeeded,
    Failed,
}

fn target_state(job: &ImagePullJob, image: &ImageRef, ni: &NodeImage) -> TargetState {
    let spec_tag = ni.spec.tag(&image.name, &image.tag).filter(|t| owned_by(t.owner_references.as_ref(), job));
    let Some(spec_tag) = spec_tag else { return TargetState::Unrequested };
    let status_tag = ni.status.as_ref().and_then(|s| s.tag_at(&image.name, &image.tag, spec_tag.version));
    match status_tag.map(|t| t.phase) {
        Some(ImagePullPhase::Succeeded) => TargetState::Succeeded,
        Some(ImagePullPhase::Failed) => TargetState::Failed,
        _ => TargetState::Active,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The job's progress over `targets` (in target order) at `now`. The caller has handled a job
/// that already completed.
pub fn progress(job: &ImagePullJob, image: &ImageRef, targets: &[&NodeImage], now: Timestamp) -> Progress {
    let mut status = job.status.clone().unwrap_or_default();
    let start = status.start_time.get_or_insert(Time(now)).0;
    let (mut unrequested, mut active, mut succeeded, mut failed) = (Vec::new(), Vec::new(), 0usize, Vec::new());
    for ni in targets {
        let name = ni.metadata.name.clone().unwrap_or_default();
        match target_state(job, image, ni) {
            TargetState::Unrequested => unrequested.push(name),
            TargetState::Active => active.push(name),
            TargetState::Succeeded => succeeded += 1,
            TargetState::Failed => failed.push(name),
        }
    }
    status.desired = count(targets.len());
    status.succeeded = count(succeeded);
    let always = job.spec.completion_policy.type_ != Some(CompletionPolicyType::Never);
    let finished = targets.len() == succeeded + failed.len();
    let deadline = job.spec.completion_policy.active_deadline_seconds.filter(|_| always && !finished);
    let left = deadline.map(|d| {
        let ends = start.as_second().saturating_add(d);
        ends - now.as_second()
    });

    if left.is_some_and(|l| l <= 0) {
        // Past the deadline: whatever has not succeeded has failed, and nothing more is asked.
        failed.extend(active);
        failed.extend(unrequested);
        failed.sort();
        status.active = 0;
        status.failed = count(failed.len());
        status.failed_nodes = Some(failed);
        status.completion_time = Some(Time(now));
        status.message = Some("job exceeds activeDeadlineSeconds".into());
        return Progress { status, to_request: Vec::new(), deadline_in: None };
    }

    failed.sort();
    status.active = count(active.len());
    status.failed = count(failed.len());
    status.failed_nodes = (!failed.is_empty()).then_some(failed);
    if always && finished {
        status.completion_time = Some(Time(now));
    }
    status.message = Some(if status.completion_time.is_some() {
        "job has completed".to_string()
    } else if status.desired == 0 {
        "job is running, no progress".to_string()
    } else {
        let done = f64::from(status.succeeded + status.failed);
        format!("job is running, progress {:.1}%", 100.0 * done / f64::from(status.desired))
    });
    let room = parallelism(job).saturating_sub(active.len());
    let to_request =
        if status.completion_time.is_some() { Vec::new() } else { unrequested.into_iter().take(room).collect() };
    let deadline_in = left.map(crate::controllers::wait_seconds);
    Progress { status, to_request, deadline_in }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::image::parse_image;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn job(extra: serde_json::Value, status: Option<serde_json::Value>) -> ImagePullJob {
        let mut spec = json!({ "image": "nginx:1.25", "completionPolicy": {} });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": "j", "namespace": "ns", "uid": "u1" },
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    /// A NodeImage whose `nginx:1.25` tag is owned by `owner` (None: not requested) at `version`,
    /// with status `phase` at `status_version`.
    fn ni(name: &str, owner: Option<&str>, version: i64, phase: Option<(&str, i64)>) -> NodeImage {
        let spec = match owner {
            Some(uid) => json!({ "images": { "nginx": { "tags": [{
                "tag": "1.25", "version": version,
                "ownerReferences": [{ "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob", "name": "j", "namespace": "ns", "uid": uid }]
            }] } } }),
            None => json!({}),
        };
        let status = phase.map(|(p, v)| {
            json!({ "desired": 1, "imageStatuses": { "nginx": { "tags": [{ "tag": "1.25", "phase": p, "version": v }] } } })
        });
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage",
            "metadata": { "name": name }, "spec": spec, "status": status
        }))
        .unwrap()
    }

    #[test]
    fn counts_each_target_by_the_status_of_the_jobs_own_tag() {
        let image = parse_image("nginx:1.25").unwrap();
        let nodes = [
            ni("a", Some("u1"), 1, Some(("Succeeded", 1))),
            ni("b", Some("u1"), 2, Some(("Succeeded", 1))), // an older round: still active
            ni("c", Some("u1"), 0, Some(("Failed", 0))),
            ni("d", Some("u1"), 0, Some(("Pulling", 0))),
            ni("e", Some("someone-else"), 0, Some(("Succeeded", 0))), // not this job's
            ni("f", None, 0, None),
            ni("g", Some("u1"), 0, None),
        ];
        let refs: Vec<&NodeImage> = nodes.iter().collect();
        let p = progress(&job(json!({ "parallelism": 4 }), None), &image, &refs, t(10));
        let s = &p.status;
        assert_eq!((s.desired, s.active, s.succeeded, s.failed), (7, 3, 1, 1));
        assert_eq!(s.failed_nodes, Some(vec!["c".to_string()]));
        assert_eq!(s.start_time, Some(Time(t(10))));
        assert_eq!(s.completion_time, None);
        assert_eq!(s.message.as_deref(), Some("job is running, progress 28.6%"));
        assert_eq!(p.to_request, ["e"], "room for 4 − 3 active, in target order");
        assert_eq!(p.deadline_in, None);

        let p = progress(&job(json!({ "parallelism": 10 }), None), &image, &refs, t(10));
        assert_eq!(p.to_request, ["e", "f"]);
        for paused in [json!(0), json!("10%"), json!("x")] {
            let p = progress(&job(json!({ "parallelism": paused }), None), &image, &refs, t(10));
            assert!(p.to_request.is_empty(), "parallelism {paused} pauses");
            assert_eq!(p.status.desired, 7, "desired is still reported");
        }
        assert_eq!(parallelism(&job(json!({ "parallelism": "3" }), None)), 3);
        assert_eq!(parallelism(&job(json!({}), None)), 1);
    }

    #[test]
    fn always_completes_when_every_target_is_done_never_does_not() {
        let image = parse_image("nginx:1.25").unwrap();
        let nodes = [ni("a", Some("u1"), 0, Some(("Succeeded", 0))), ni("b", Some("u1"), 0, Some(("Failed", 0)))];
        let refs: Vec<&NodeImage> = nodes.iter().collect();
        let started = Some(json!({ "startTime": "2027-01-15T08:00:00Z", "desired": 2 }));
        let p = progress(&job(json!({}), started.clone()), &image, &refs, t(10));
        assert_eq!(p.status.completion_time, Some(Time(t(10))));
        assert_eq!(p.status.message.as_deref(), Some("job has completed"));
        let kept: Timestamp = "2027-01-15T08:00:00Z".parse().unwrap();
        assert_eq!(p.status.start_time, Some(Time(kept)), "startTime kept");
        let never = job(json!({ "completionPolicy": { "type": "Never" } }), started);
        let p = progress(&never, &image, &refs, t(10));
        assert_eq!(p.status.completion_time, None);
        assert_eq!(p.status.message.as_deref(), Some("job is running, progress 100.0%"));

        let p = progress(&job(json!({}), None), &image, &[], t(10));
        assert_eq!(p.status.completion_time, Some(Time(t(10))), "no targets: done at once");
        let p = progress(&never, &image, &[], t(10));
        assert_eq!(p.status.message.as_deref(), Some("job is running, no progress"));
    }

    #[test]
    fn past_the_deadline_everything_unfinished_fails() {
        let image = parse_image("nginx:1.25").unwrap();
        let nodes = [
            ni("c", Some("u1"), 0, Some(("Succeeded", 0))),
            ni("b", Some("u1"), 0, Some(("Pulling", 0))),
            ni("a", None, 0, None),
        ];
        let refs: Vec<&NodeImage> = nodes.iter().collect();
        let with_deadline = |start: i64| {
            let start = Time(t(start));
            job(
                json!({ "completionPolicy": { "activeDeadlineSeconds": 60 }, "parallelism": 5 }),
                Some(json!({ "startTime": start, "desired": 3 })),
            )
        };
        let p = progress(&with_deadline(0), &image, &refs, t(50));
        assert_eq!(p.deadline_in, Some(Duration::from_secs(10)));
        assert_eq!(p.to_request, ["a"]);
        assert_eq!(p.status.completion_time, None);

        let p = progress(&with_deadline(0), &image, &refs, t(60));
        let s = &p.status;
        assert_eq!((s.active, s.succeeded, s.failed), (0, 1, 2));
        assert_eq!(s.failed_nodes, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(s.completion_time, Some(Time(t(60))));
        assert_eq!(s.message.as_deref(), Some("job exceeds activeDeadlineSeconds"));
        assert!(p.to_request.is_empty());
    }
}
