//! AdvancedCronJob defaulting and validation (upstream v1.3 webhook rules).

use super::broadcastjob::validate_job_name;
use super::{ErrorList, FieldPath, forbidden, invalid, not_supported, required};
use crate::api::advancedcronjob::{AdvancedCronJob, ConcurrencyPolicy};
use crate::api::cron::{load_zone, parse_schedule};

pub const DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT: i32 = 3;
pub const DEFAULT_FAILED_JOBS_HISTORY_LIMIT: i32 = 1;

/// The mutating webhook's defaults, the embedded pod template's included.
pub fn default_advancedcronjob(acj: &mut AdvancedCronJob) {
    let s = &mut acj.spec;
    let job_pod = s.template.job_template.as_mut().and_then(|j| j.spec.as_mut()).and_then(|j| j.template.spec.as_mut());
    let bcj_pod =
        s.template.broadcast_job_template.as_mut().and_then(|b| b.spec.as_mut()).and_then(|b| b.template.spec.as_mut());
    for ps in job_pod.into_iter().chain(bcj_pod) {
        super::pod::default_pod_spec(ps);
    }
    s.concurrency_policy.get_or_insert(ConcurrencyPolicy::Allow);
    s.paused.get_or_insert(false);
    s.successful_jobs_history_limit.get_or_insert(DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT);
    s.failed_jobs_history_limit.get_or_insert(DEFAULT_FAILED_JOBS_HISTORY_LIMIT);
}

pub fn validate_advancedcronjob(acj: &AdvancedCronJob, old: Option<&AdvancedCronJob>) -> ErrorList {
    let spec = FieldPath::new("spec");
    let s = &acj.spec;
    let mut errs = validate_job_name(acj.metadata.name.as_deref());

    if s.schedule.is_empty() {
        errs.push(required(&spec.child("schedule"), "schedule cannot be empty, please provide valid cron schedule"));
    } else if let Err(reason) = parse_schedule(&s.schedule) {
        errs.push(invalid(&spec.child("schedule"), &s.schedule, &reason));
    } else if s.time_zone.is_some() && s.schedule.contains("TZ") {
        errs.push(invalid(
            &spec.child("schedule"),
            &s.schedule,
            "cannot use both timeZone field and TZ or CRON_TZ in schedule",
        ));
    }
    if let Some(tz) = &s.time_zone {
        let path = spec.child("timeZone");
        if tz.is_empty() {
            errs.push(invalid(&path, tz, "timeZone must be nil or non-empty string"));
        } else if tz.eq_ignore_ascii_case("local") {
            errs.push(invalid(
                &path,
                tz,
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ));
        } else if let Err(reason) = load_zone(tz) {
            errs.push(invalid(&path, tz, &reason));
        }
    }
    for (name, value) in [
        ("successfulJobsHistoryLimit", s.successful_jobs_history_limit.map(i64::from)),
        ("failedJobsHistoryLimit", s.failed_jobs_history_limit.map(i64::from)),
        ("startingDeadlineSeconds", s.starting_deadline_seconds),
    ] {
        if let Some(v) = value
            && v < 0
        {
            errs.push(invalid(&spec.child(name), v, "must be greater than or equal to 0"));
        }
    }

    let template = spec.child("template");
    match (&s.template.job_template, &s.template.broadcast_job_template) {
        (None, None) => {
            errs.push(forbidden(&template, "spec must have one template, either JobTemplate or BroadcastJobTemplate"))
        }
        (Some(_), Some(_)) => errs
            .push(forbidden(&template, "spec can have only one template, either JobTemplate or BroadcastJobTemplate")),
        (Some(jt), None) => {
            let pod = template.child("jobTemplate").child("spec").child("template").child("spec");
            match jt.spec.as_ref().and_then(|s| s.template.spec.as_ref()) {
                None => errs.push(required(&pod, "")),
                Some(ps) => {
                    // Upstream accepts an unset restartPolicy, which the pod defaults to Always,
                    // and every Job creation then fails: refuse it here instead.
                    match ps.restart_policy.as_deref() {
                        Some("Never") | Some("OnFailure") => {}
                        other => errs.push(not_supported(
                            &pod.child("restartPolicy"),
                            other.unwrap_or(""),
                            &["Never", "OnFailure"],
                        )),
                    }
                    errs.extend(super::pod::validate_pod_spec(ps, &pod, &[]));
                }
            }
        }
        (None, Some(bt)) => {
            let pod = template.child("broadcastJobTemplate").child("spec").child("template").child("spec");
            match bt.spec.as_ref().and_then(|s| s.template.spec.as_ref()) {
                None => errs.push(required(&pod, "")),
                Some(ps) => errs.extend(super::pod::validate_pod_spec(ps, &pod, &[])),
            }
        }
    }

    if let Some(old) = old {
        // Only the scheduling fields may change.
        let mut frozen_new = acj.spec.clone();
        let o = &old.spec;
        frozen_new.schedule.clone_from(&o.schedule);
        frozen_new.time_zone.clone_from(&o.time_zone);
        frozen_new.concurrency_policy = o.concurrency_policy;
        frozen_new.successful_jobs_history_limit = o.successful_jobs_history_limit;
        frozen_new.failed_jobs_history_limit = o.failed_jobs_history_limit;
        frozen_new.starting_deadline_seconds = o.starting_deadline_seconds;
        frozen_new.paused = o.paused;
        if &frozen_new != o {
            errs.push(forbidden(
                &spec,
                "updates to advancedcronjob spec for fields other than 'schedule', 'timeZone', 'concurrencyPolicy', \
                 'successfulJobsHistoryLimit', 'failedJobsHistoryLimit', 'startingDeadlineSeconds' and 'paused' are forbidden",
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::advancedcronjob::{AdvancedCronJobSpec, BroadcastJobTemplateSpec, CronJobTemplate};
    use k8s_openapi::api::batch::v1::{JobSpec, JobTemplateSpec};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    fn pod(restart: Option<&str>) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                restart_policy: restart.map(String::from),
                containers: vec![Container { name: "c".into(), image: Some("busybox:1".into()), ..Default::default() }],
                ..Default::default()
            }),
        }
    }

    fn acj() -> AdvancedCronJob {
        AdvancedCronJob::new(
            "nightly",
            AdvancedCronJobSpec {
                schedule: "30 2 * * *".into(),
                time_zone: Some("Asia/Shanghai".into()),
                template: CronJobTemplate {
                    job_template: Some(JobTemplateSpec {
                        metadata: None,
                        spec: Some(JobSpec { template: pod(Some("OnFailure")), ..Default::default() }),
                    }),
                    broadcast_job_template: None,
                },
                ..Default::default()
            },
        )
    }

    fn fields(a: &AdvancedCronJob, old: Option<&AdvancedCronJob>) -> Vec<String> {
        validate_advancedcronjob(a, old).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut a = acj();
        default_advancedcronjob(&mut a);
        assert_eq!(a.spec.concurrency_policy, Some(ConcurrencyPolicy::Allow));
        assert_eq!(a.spec.paused, Some(false));
        assert_eq!((a.spec.successful_jobs_history_limit, a.spec.failed_jobs_history_limit), (Some(3), Some(1)));
        assert!(fields(&a, None).is_empty());
    }

    #[test]
    fn schedules_and_zones() {
        let mut a = acj();
        a.spec.schedule = "TZ=UTC 0 0 * * *".into();
        assert_eq!(fields(&a, None), ["spec.schedule"], "TZ in the schedule and timeZone set");
        a.spec.time_zone = None;
        assert!(fields(&a, None).is_empty());
        a.spec.schedule = "61 * * * *".into();
        assert_eq!(fields(&a, None), ["spec.schedule"]);
        a.spec.schedule = String::new();
        assert_eq!(fields(&a, None), ["spec.schedule"]);
        for bad in ["", "Local", "local", "Mars/Olympus"] {
            let mut a = acj();
            a.spec.time_zone = Some(bad.into());
            assert_eq!(fields(&a, None), ["spec.timeZone"], "{bad:?}");
        }
    }

    #[test]
    fn templates_limits_and_updates() {
        let mut a = acj();
        a.spec.template.broadcast_job_template = Some(BroadcastJobTemplateSpec::default());
        a.spec.starting_deadline_seconds = Some(-1);
        assert_eq!(fields(&a, None), ["spec.startingDeadlineSeconds", "spec.template"]);
        a.spec.template = CronJobTemplate::default();
        a.spec.starting_deadline_seconds = None;
        assert_eq!(fields(&a, None), ["spec.template"]);

        let mut a = acj();
        a.spec.template.job_template.as_mut().unwrap().spec.as_mut().unwrap().template = pod(None);
        assert_eq!(fields(&a, None), ["spec.template.jobTemplate.spec.template.spec.restartPolicy"]);

        let old = acj();
        let mut new = acj();
        new.spec.schedule = "0 * * * *".into();
        new.spec.paused = Some(true);
        assert!(fields(&new, Some(&old)).is_empty(), "schedule and paused may change");
        new.spec.template.job_template.as_mut().unwrap().spec.as_mut().unwrap().backoff_limit = Some(9);
        assert_eq!(fields(&new, Some(&old)), ["spec"]);
    }
}
