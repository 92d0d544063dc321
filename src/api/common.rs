//! Types several kinds share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When a job (BroadcastJob, ImagePullJob) counts as finished, and what happens after.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompletionPolicy {
    /// Always (default): the job finishes once every target is done, or at the deadline.
    /// Never: the job keeps running, e.g. to serve nodes that join later.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<CompletionPolicyType>,
    /// With Always: seconds after the start after which the job fails. Needs type Always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// With Always: seconds after finishing after which the job is deleted. Needs type Always.
    #[serde(default, rename = "ttlSecondsAfterFinished", skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CompletionPolicyType {
    Always,
    Never,
}
