//! ImagePullJob defaulting and validation (upstream v1.3 webhook rules).

use std::collections::HashSet;

use super::{ErrorList, FieldPath, duplicate, forbidden, invalid, required, validate_label_selector};
use crate::api::common::{CompletionPolicy, CompletionPolicyType};
use crate::api::image::parse_image;
use crate::api::imagepulljob::{ImagePullJob, PullPolicy};

/// Per-attempt pull timeout when unset.
pub const DEFAULT_PULL_TIMEOUT_SECONDS: i32 = 600;
/// Retries when unset.
pub const DEFAULT_PULL_BACKOFF_LIMIT: i32 = 3;

/// The mutating webhook's defaults: completion type Always, pull policy {600 s, 3 retries}.
pub fn default_imagepulljob(job: &mut ImagePullJob) {
    let policy: &mut CompletionPolicy = &mut job.spec.completion_policy;
    policy.type_.get_or_insert(CompletionPolicyType::Always);
    let pull = job.spec.pull_policy.get_or_insert_with(PullPolicy::default);
    pull.timeout_seconds.get_or_insert(DEFAULT_PULL_TIMEOUT_SECONDS);
    pull.backoff_limit.get_or_insert(DEFAULT_PULL_BACKOFF_LIMIT);
}

pub fn validate_imagepulljob(job: &ImagePullJob) -> ErrorList {
    let spec = FieldPath::new("spec");
    let mut errs = ErrorList::new();
    let s = &job.spec;

    if s.image.is_empty() {
        errs.push(required(&spec.child("image"), ""));
    } else if let Err(e) = parse_image(&s.image) {
        errs.push(invalid(&spec.child("image"), &s.image, e.reason));
    }

    if let Some(sel) = &s.selector {
        let path = spec.child("selector");
        let names = sel.names.as_deref().unwrap_or_default();
        let has_labels = sel.selector.match_labels.as_ref().is_some_and(|m| !m.is_empty())
            || sel.selector.match_expressions.as_ref().is_some_and(|e| !e.is_empty());
        if !names.is_empty() && has_labels {
            errs.push(forbidden(&path, "can not set both names and labelSelector in this spec.selector"));
        }
        let mut seen = HashSet::new();
        for (i, n) in names.iter().enumerate() {
            if !seen.insert(n.as_str()) {
                errs.push(duplicate(&path.child("names").index(i), n));
            }
        }
        errs.extend(validate_label_selector(&sel.selector, &path));
        if s.pod_selector.is_some() {
            errs.push(forbidden(&spec.child("podSelector"), "can not set both selector and podSelector"));
        }
    }
    if let Some(ps) = &s.pod_selector {
        errs.extend(validate_label_selector(&ps.selector, &spec.child("podSelector")));
    }

    let cp = &s.completion_policy;
    if cp.type_ == Some(CompletionPolicyType::Never) {
        let path = spec.child("completionPolicy");
        if cp.active_deadline_seconds.is_some() {
            errs.push(forbidden(&path.child("activeDeadlineSeconds"), "activeDeadlineSeconds needs type Always"));
        }
        if cp.ttl_seconds_after_finished.is_some() {
            errs.push(forbidden(&path.child("ttlSecondsAfterFinished"), "ttlSecondsAfterFinished needs type Always"));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::imagepulljob::{ImagePullJobNodeSelector, ImagePullJobPodSelector, ImagePullJobSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn job() -> ImagePullJob {
        ImagePullJob::new(
            "pull",
            ImagePullJobSpec {
                image: "nginx:1.27".into(),
                completion_policy: CompletionPolicy::default(),
                ..Default::default()
            },
        )
    }

    fn errors(j: &ImagePullJob) -> Vec<String> {
        validate_imagepulljob(j).iter().map(|e| e.to_string()).collect()
    }

    fn labels() -> LabelSelector {
        LabelSelector { match_labels: Some(BTreeMap::from([("a".into(), "b".into())])), ..Default::default() }
    }

    #[test]
    fn defaults_as_upstream() {
        let mut j = job();
        default_imagepulljob(&mut j);
        assert_eq!(j.spec.completion_policy.type_, Some(CompletionPolicyType::Always));
        let pull = j.spec.pull_policy.unwrap();
        assert_eq!((pull.timeout_seconds, pull.backoff_limit), (Some(600), Some(3)));

        let mut j = job();
        j.spec.completion_policy.type_ = Some(CompletionPolicyType::Never);
        j.spec.pull_policy = Some(PullPolicy { timeout_seconds: Some(30), backoff_limit: None });
        default_imagepulljob(&mut j);
        assert_eq!(j.spec.completion_policy.type_, Some(CompletionPolicyType::Never), "set values stay");
        assert_eq!(j.spec.pull_policy.unwrap().timeout_seconds, Some(30));
    }

    #[test]
    fn images() {
        assert!(errors(&job()).is_empty());
        let mut j = job();
        j.spec.image = String::new();
        assert_eq!(errors(&j), ["spec.image: Required value"]);
        j.spec.image = "Nginx:1".into();
        assert_eq!(validate_imagepulljob(&j)[0].field, "spec.image");
    }

    #[test]
    fn selectors() {
        let mut j = job();
        j.spec.selector =
            Some(ImagePullJobNodeSelector { names: Some(vec!["n1".into(), "n1".into()]), selector: labels() });
        j.spec.pod_selector = Some(ImagePullJobPodSelector { selector: labels() });
        assert_eq!(
            errors(&j),
            [
                "spec.selector: Forbidden: can not set both names and labelSelector in this spec.selector",
                "spec.selector.names[1]: Duplicate value: \"n1\"",
                "spec.podSelector: Forbidden: can not set both selector and podSelector",
            ]
        );
    }

    #[test]
    fn never_completes_without_deadline_or_ttl() {
        let mut j = job();
        j.spec.completion_policy = CompletionPolicy {
            type_: Some(CompletionPolicyType::Never),
            active_deadline_seconds: Some(60),
            ttl_seconds_after_finished: Some(60),
        };
        assert_eq!(validate_imagepulljob(&j).len(), 2);
        j.spec.completion_policy.type_ = Some(CompletionPolicyType::Always);
        assert!(validate_imagepulljob(&j).is_empty());
    }
}
