//! Handing the image to one NodeImage (B.4.1 step 6): the job's tag goes into its spec, with the
//! job as an owner, so the node's daemon pulls it.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{owned_by, owner_ref};
use crate::api::common::CompletionPolicyType;
use crate::api::image::ImageRef;
use crate::api::imagepulljob::ImagePullJob;
use crate::api::nodeimage::{ImageTagPullPolicy, ImageTagSpec, NodeImage, NodeImageSpec, ReferenceObject};
use crate::api::validation::imagepulljob::{DEFAULT_PULL_BACKOFF_LIMIT, DEFAULT_PULL_TIMEOUT_SECONDS};

/// A Never job's tags live a day (± 10 min, so they do not all expire at once) and may pull for
/// 30 min.
const NEVER_TTL_SECONDS: i32 = 86_400;
const NEVER_ACTIVE_DEADLINE_SECONDS: i64 = 1800;

/// The pull policy a new tag of `job` carries. `random(n)` is uniform in `0..n`: it spreads the
/// tags' expiry.
pub fn tag_pull_policy(job: &ImagePullJob, random: &mut dyn FnMut(i32) -> i32) -> ImageTagPullPolicy {
    let pull = job.spec.pull_policy.clone().unwrap_or_default();
    let cp = &job.spec.completion_policy;
    let (ttl, deadline) = if cp.type_ == Some(CompletionPolicyType::Never) {
        (NEVER_TTL_SECONDS - 600 + random(1200), Some(NEVER_ACTIVE_DEADLINE_SECONDS))
    } else {
        // Long enough for the whole job: its TTL, else its deadline, else every attempt timing out.
        let base =
            cp.ttl_seconds_after_finished.or_else(|| cp.active_deadline_seconds.map(clamp)).unwrap_or_else(|| {
                pull.timeout_seconds
                    .unwrap_or(DEFAULT_PULL_TIMEOUT_SECONDS)
                    .saturating_mul(pull.backoff_limit.unwrap_or(DEFAULT_PULL_BACKOFF_LIMIT))
            });
        (base.saturating_add(300 + random(300)), cp.active_deadline_seconds)
    };
    ImageTagPullPolicy {
        timeout_seconds: pull.timeout_seconds,
        backoff_limit: pull.backoff_limit,
        ttl_seconds_after_finished: Some(ttl),
        active_deadline_seconds: deadline,
    }
}

fn clamp(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The spec `ni` gets when `job` hands it `image`; None when the job already owns the tag there.
/// - the job's pull secrets join the image's (each once);
/// - a tag another owner asked for gets the job as an owner too and a new `version`, which starts
///   a new pull round (quick when the image is there); its pull policy stays;
/// - a new tag starts one version above what the status last reported for it, with
///   [`tag_pull_policy`].
pub fn requested_spec(
    ni: &NodeImage,
    job: &ImagePullJob,
    image: &ImageRef,
    now: Timestamp,
    random: &mut dyn FnMut(i32) -> i32,
) -> Option<NodeImageSpec> {
    let mut spec = ni.spec.clone();
    let images = spec.images.get_or_insert_with(Default::default);
    let entry = images.entry(image.name.clone()).or_default();
    if entry.tags.iter().any(|t| t.tag == image.tag && owned_by(t.owner_references.as_ref(), job)) {
        return None;
    }
    let namespace = job.metadata.namespace.clone();
    for secret in job.spec.pull_secrets.iter().flatten() {
        let wanted = ReferenceObject { namespace: namespace.clone(), name: Some(secret.clone()) };
        let secrets = entry.pull_secrets.get_or_insert_with(Vec::new);
        if !secrets.contains(&wanted) {
            secrets.push(wanted);
        }
    }
    match entry.tags.iter_mut().find(|t| t.tag == image.tag) {
        Some(tag) => {
            tag.version = Some(tag.version.unwrap_or_default() + 1);
            tag.owner_references.get_or_insert_with(Vec::new).push(owner_ref(job));
            tag.created_at = Some(Time(now));
        }
        None => {
            let reported =
                ni.status.as_ref().and_then(|s| s.tag(&image.name, &image.tag)).map(|t| t.version.unwrap_or_default());
            entry.tags.push(ImageTagSpec {
                tag: image.tag.clone(),
                created_at: Some(Time(now)),
                pull_policy: Some(tag_pull_policy(job, random)),
                owner_references: Some(vec![owner_ref(job)]),
                version: Some(reported.map_or(0, |v| v + 1)),
            });
        }
    }
    entry.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::image::parse_image;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn job(uid: &str, extra: serde_json::Value) -> ImagePullJob {
        let mut spec = json!({ "image": "nginx:1.25", "completionPolicy": {},
                               "pullPolicy": { "timeoutSeconds": 100, "backoffLimit": 2 } });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": format!("job-{uid}"), "namespace": "ns", "uid": uid }, "spec": spec
        }))
        .unwrap()
    }

    fn ni(spec: serde_json::Value, status: serde_json::Value) -> NodeImage {
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage",
            "metadata": { "name": "n1" }, "spec": spec, "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_new_tag_then_a_second_owner_then_nothing() {
        let image = parse_image("nginx:1.25").unwrap();
        let mut zero = |_: i32| 0;
        // The status still reports version 4 of this tag from an earlier round.
        let status = json!({ "desired": 0, "imageStatuses": { "nginx": { "tags": [{ "tag": "1.25", "phase": "Succeeded", "version": 4 }] } } });
        let existing = json!({ "images": { "nginx": { "tags": [{ "tag": "1.24", "version": 0 }] } } });
        let a = job("a", json!({ "pullSecrets": ["reg", "reg"] }));
        let spec = requested_spec(&ni(existing, status.clone()), &a, &image, t(0), &mut zero).expect("a change");
        let nginx = &spec.images.as_ref().unwrap()["nginx"];
        assert_eq!(nginx.tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(), ["1.24", "1.25"], "sorted by tag");
        let tag = &nginx.tags[1];
        assert_eq!(tag.version, Some(5), "one above what the status reported");
        assert_eq!(tag.created_at, Some(Time(t(0))));
        assert_eq!(tag.owner_references.as_ref().unwrap()[0].uid.as_deref(), Some("a"));
        assert_eq!(
            tag.pull_policy,
            Some(ImageTagPullPolicy {
                timeout_seconds: Some(100),
                backoff_limit: Some(2),
                ttl_seconds_after_finished: Some(100 * 2 + 300),
                active_deadline_seconds: None
            })
        );
        let secrets = nginx.pull_secrets.as_ref().unwrap();
        assert_eq!(secrets, &[ReferenceObject { namespace: Some("ns".into()), name: Some("reg".into()) }]);

        let after_a = ni(serde_json::to_value(&spec).unwrap(), status);
        assert_eq!(requested_spec(&after_a, &a, &image, t(5), &mut zero), None, "already a's");
        let b = job("b", json!({ "completionPolicy": { "type": "Never" } }));
        let spec = requested_spec(&after_a, &b, &image, t(9), &mut zero).expect("b joins");
        let tag = &spec.images.as_ref().unwrap()["nginx"].tags[1];
        assert_eq!(tag.version, Some(6), "a new round");
        assert_eq!(tag.created_at, Some(Time(t(9))));
        let owners: Vec<&str> = tag.owner_references.iter().flatten().filter_map(|o| o.uid.as_deref()).collect();
        assert_eq!(owners, ["a", "b"]);
        assert_eq!(tag.pull_policy.as_ref().unwrap().ttl_seconds_after_finished, Some(500), "the pull policy stays");
    }

    #[test]
    fn pull_policies_by_completion_policy() {
        let mut max = |n: i32| n - 1;
        let never = tag_pull_policy(&job("n", json!({ "completionPolicy": { "type": "Never" } })), &mut max);
        assert_eq!((never.ttl_seconds_after_finished, never.active_deadline_seconds), (Some(86_400 + 599), Some(1800)));
        let ttl =
            job("t", json!({ "completionPolicy": { "ttlSecondsAfterFinished": 50, "activeDeadlineSeconds": 70 } }));
        let p = tag_pull_policy(&ttl, &mut max);
        assert_eq!((p.ttl_seconds_after_finished, p.active_deadline_seconds), (Some(50 + 300 + 299), Some(70)));
        let deadline = job("d", json!({ "completionPolicy": { "activeDeadlineSeconds": 70 } }));
        assert_eq!(tag_pull_policy(&deadline, &mut max).ttl_seconds_after_finished, Some(70 + 599));
        let mut bare = job("x", json!({}));
        bare.spec.pull_policy = None;
        let p = tag_pull_policy(&bare, &mut max);
        assert_eq!((p.ttl_seconds_after_finished, p.timeout_seconds), (Some(600 * 3 + 599), None));
    }
}
