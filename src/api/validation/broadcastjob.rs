//! BroadcastJob defaulting and validation (upstream v1.3 webhook rules; 422 with field errors
//! instead of upstream's 500).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ErrorList, FieldPath, forbidden, invalid, not_supported, required};
use crate::api::broadcastjob::{BroadcastJob, FailurePolicy, FailurePolicyType};
use crate::api::common::{CompletionPolicy, CompletionPolicyType};

/// Labels the controller puts on its pods; a template may not preset them.
pub const BROADCASTJOB_NAME_LABEL: &str = "broadcastjob-name";
pub const BROADCASTJOB_CONTROLLER_UID_LABEL: &str = "broadcastjob-controller-uid";

/// The mutating webhook's defaults, the pod template's included (so an unset restartPolicy becomes
/// Always and is then refused, as in v1.3).
pub fn default_broadcastjob(job: &mut BroadcastJob) {
    let s = &mut job.spec;
    if let Some(ps) = s.template.spec.as_mut() {
        super::pod::default_pod_spec(ps);
    }
    s.completion_policy.get_or_insert_with(CompletionPolicy::default).type_.get_or_insert(CompletionPolicyType::Always);
    s.parallelism.get_or_insert(IntOrString::Int(i32::MAX));
    s.failure_policy.get_or_insert_with(FailurePolicy::default).type_.get_or_insert(FailurePolicyType::FailFast);
}

/// `^[a-zA-Z0-9\-]+$`, at most 63 characters: AdvancedCronJob and BroadcastJob names.
pub(crate) fn validate_job_name(name: Option<&str>) -> ErrorList {
    let name = name.unwrap_or_default();
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        vec![invalid(
            &FieldPath::new("metadata").child("name"),
            name,
            "must match ^[a-zA-Z0-9\\-]+$ and have at most 63 characters",
        )]
    } else {
        vec![]
    }
}

pub fn validate_broadcastjob(job: &BroadcastJob) -> ErrorList {
    let spec = FieldPath::new("spec");
    let s = &job.spec;
    let mut errs = validate_job_name(job.metadata.name.as_deref());

    if let Some(cp) = &s.completion_policy
        && cp.type_ == Some(CompletionPolicyType::Never)
    {
        let path = spec.child("completionPolicy");
        if cp.ttl_seconds_after_finished.is_some() {
            errs.push(forbidden(
                &path.child("ttlSecondsAfterFinished"),
                "ttlSecondsAfterFinished can just work with Always CompletionPolicyType",
            ));
        }
        if cp.active_deadline_seconds.is_some() {
            errs.push(forbidden(
                &path.child("activeDeadlineSeconds"),
                "activeDeadlineSeconds can just work with Always CompletionPolicyType",
            ));
        }
    }
    // Upstream lets a bad parallelism through and the job then creates no pods.
    if let Some(p) = &s.parallelism {
        errs.extend(super::validate_non_negative_int_or_percent(p, &spec.child("parallelism")));
    }

    let template = spec.child("template");
    let labels = s.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    for key in [BROADCASTJOB_NAME_LABEL, BROADCASTJOB_CONTROLLER_UID_LABEL] {
        if let Some(v) = labels.and_then(|l| l.get(key)).filter(|v| !v.is_empty()) {
            errs.push(invalid(
                &template.child("metadata").child("labels").key(key),
                v,
                "this label is set by the controller",
            ));
        }
    }
    let pod = template.child("spec");
    match &s.template.spec {
        None => errs.push(required(&pod, "")),
        Some(ps) => {
            match ps.restart_policy.as_deref() {
                Some("Never") | Some("OnFailure") => {}
                other => {
                    errs.push(not_supported(&pod.child("restartPolicy"), other.unwrap_or(""), &["Never", "OnFailure"]))
                }
            }
            errs.extend(super::pod::validate_pod_spec(ps, &pod, &[]));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::broadcastjob::BroadcastJobSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn job() -> BroadcastJob {
        BroadcastJob::new(
            "clean",
            BroadcastJobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some("busybox:1".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
        )
    }

    fn fields(j: &BroadcastJob) -> Vec<String> {
        validate_broadcastjob(j).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut j = job();
        default_broadcastjob(&mut j);
        assert_eq!(j.spec.completion_policy.unwrap().type_, Some(CompletionPolicyType::Always));
        assert_eq!(j.spec.parallelism, Some(IntOrString::Int(2147483647)));
        assert_eq!(j.spec.failure_policy.unwrap().type_, Some(FailurePolicyType::FailFast));
    }

    #[test]
    fn the_rejections_the_spec_lists() {
        assert!(fields(&job()).is_empty());
        let mut j = job();
        j.spec.template.spec.as_mut().unwrap().restart_policy = Some("Always".into());
        assert_eq!(fields(&j), ["spec.template.spec.restartPolicy"]);

        let mut j = job();
        j.spec.completion_policy = Some(CompletionPolicy {
            type_: Some(CompletionPolicyType::Never),
            ttl_seconds_after_finished: Some(1),
            active_deadline_seconds: Some(1),
        });
        assert_eq!(
            fields(&j),
            ["spec.completionPolicy.ttlSecondsAfterFinished", "spec.completionPolicy.activeDeadlineSeconds"]
        );

        let mut j = job();
        j.spec.template.metadata = Some(ObjectMeta {
            labels: Some(BTreeMap::from([("broadcastjob-name".into(), "x".into())])),
            ..Default::default()
        });
        assert_eq!(fields(&j), ["spec.template.metadata.labels[broadcastjob-name]"]);

        let mut j = job();
        j.metadata.name = Some("bad_name".into());
        j.spec.parallelism = Some(IntOrString::String("many".into()));
        assert_eq!(fields(&j), ["metadata.name", "spec.parallelism"]);
    }
}
