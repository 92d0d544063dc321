//! BroadcastJob (namespaced, short name `bcj`): runs a pod to completion on every selected node,
//! like a DaemonSet of Jobs. Upstream v1.3 layout.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::common::{CompletionPolicy, CompletionPolicyType};
use super::schema;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "BroadcastJob",
    plural = "broadcastjobs",
    shortname = "bcj",
    namespaced,
    status = "BroadcastJobStatus",
    doc = "BroadcastJob runs a pod to completion on every node that can run it.",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desired","description":"The desired number of pods. This is typically equal to the number of nodes satisfied to run pods."}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.active","description":"The number of actively running pods."}"#,
    printcolumn = r#"{"name":"Succeeded","type":"integer","jsonPath":".status.succeeded","description":"The number of pods which reached phase Succeeded."}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed","description":"The number of pods which reached phase Failed."}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created."}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastJobSpec {
    /// Pods running at once: a number or a percentage of desired (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<IntOrString>,
    /// The pod to run on each node; its restartPolicy must be Never or OnFailure.
    #[schemars(schema_with = "schema::preserved_object")]
    pub template: PodTemplateSpec,
    /// When the job is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_policy: Option<CompletionPolicy>,
    /// Create no more pods while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// What a failed pod does to the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Continue (default), FailFast or Pause.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<FailurePolicyType>,
    /// Container restarts (summed over pods) after which the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_limit: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicyType {
    /// Keep going when a pod fails.
    Continue,
    /// Fail the job at the first failed pod.
    FailFast,
    /// Pause the job at the first failed pod.
    Pause,
}

/// BroadcastJob phases as upstream writes them (lower case). Kept as strings in the status so a
/// status written by upstream before its phase was set (`""`) still reads.
pub mod phase {
    pub const COMPLETED: &str = "completed";
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    pub const FAILED: &str = "failed";
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastJobStatus {
    /// Complete or Failed, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<JobCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default)]
    pub active: i32,
    #[serde(default)]
    pub succeeded: i32,
    #[serde(default)]
    pub failed: i32,
    /// Nodes the job should run on.
    #[serde(default)]
    pub desired: i32,
    /// One of [`phase`].
    #[serde(default)]
    pub phase: String,
}

/// A condition of a job (BroadcastJob): type Complete or Failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
