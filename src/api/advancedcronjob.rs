//! AdvancedCronJob (namespaced, short name `acj`): runs a Job or a BroadcastJob on a cron
//! schedule, optionally in an explicit time zone (v1.3). Upstream v1.3 layout.

use k8s_openapi::api::batch::v1::JobTemplateSpec;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::broadcastjob::BroadcastJobSpec;
use super::schema;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "AdvancedCronJob",
    plural = "advancedcronjobs",
    shortname = "acj",
    namespaced,
    status = "AdvancedCronJobStatus",
    doc = "AdvancedCronJob runs a Job or a BroadcastJob on a cron schedule.",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule","description":"The schedule of advanced cron job."}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".status.type","description":"Type of cron job."}"#,
    printcolumn = r#"{"name":"LastScheduleTime","type":"date","jsonPath":".status.lastScheduleTime","description":"The last time at which job was scheduled."}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created."}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AdvancedCronJobSpec {
    /// A cron schedule (5 fields, or a descriptor such as @hourly).
    #[schemars(length(min = 0))]
    pub schedule: String,
    /// An IANA time zone the schedule is read in (default: the manager's local zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// How late a missed run may still start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// Allow (default), Forbid or Replace concurrent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// Start no new runs while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Finished successful runs to keep (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub successful_jobs_history_limit: Option<i32>,
    /// Failed runs to keep (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_jobs_history_limit: Option<i32>,
    /// What each run creates.
    pub template: CronJobTemplate,
}

/// Exactly one of a Job template or a BroadcastJob template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronJobTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserved_object")]
    pub job_template: Option<JobTemplateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_job_template: Option<BroadcastJobTemplateSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastJobTemplateSpec {
    /// Labels and annotations for the BroadcastJobs created. Kept whole: upstream's schema has
    /// `type: object` alone here, which prunes the labels it then means to copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserved_object")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<BroadcastJobSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    Allow,
    Forbid,
    Replace,
}

/// The kind of template in use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TemplateKind {
    Job,
    BroadcastJob,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdvancedCronJobStatus {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<TemplateKind>,
    /// Runs not finished yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Vec<ObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
}
