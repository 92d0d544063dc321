//! WorkloadSpread (namespaced, short name `ws`): spreads a workload's pods over subsets of nodes
//! (zones, node pools, elastic capacity) with a cap per subset and per-subset pod patches.
//! Upstream v1.3 layout.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, PreferredSchedulingTerm, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "WorkloadSpread",
    plural = "workloadspreads",
    shortname = "ws",
    namespaced,
    status = "WorkloadSpreadStatus",
    doc = "WorkloadSpread spreads the pods of a workload over subsets of nodes, each with its own cap and pod patch.",
    printcolumn = r#"{"name":"WorkloadName","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"WorkloadKind","type":"string","jsonPath":".spec.targetRef.kind"}"#,
    printcolumn = r#"{"name":"Adaptive","type":"boolean","jsonPath":".spec.scheduleStrategy.type[?(@ == \"Adaptive\")]","description":"Whether use the adaptive reschedule strategy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpreadSpec {
    /// The workload whose pods are spread (CloneSet, Deployment, ReplicaSet, Job, ...).
    #[serde(rename = "targetRef")]
    pub target_reference: TargetReference,
    /// Subsets in priority order: pods fill earlier subsets first and leave later ones first.
    pub subsets: Vec<WorkloadSpreadSubset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_strategy: Option<WorkloadSpreadScheduleStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetReference {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpreadScheduleStrategy {
    /// Fixed (default) or Adaptive (reschedule pods a subset cannot place).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<WorkloadSpreadScheduleStrategyType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveWorkloadSpreadStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadSpreadScheduleStrategyType {
    Adaptive,
    Fixed,
    /// Upstream's schema accepts an empty type, meaning Fixed.
    #[serde(rename = "")]
    Unset,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdaptiveWorkloadSpreadStrategy {
    /// Skip simulating the scheduler before placing a pod in a subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_simulation_schedule: Option<bool>,
    /// Seconds a pod may stay unschedulable before its subset is marked unschedulable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule_critical_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpreadSubset {
    pub name: String,
    /// Nodes the subset's pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_node_selector_term: Option<NodeSelectorTerm>,
    /// Nodes the subset's pods prefer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_node_selector_terms: Option<Vec<PreferredSchedulingTerm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Most pods in the subset (number or percentage of the workload); unset means no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<IntOrString>,
    /// A strategic-merge patch applied to the subset's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserved_object")]
    pub patch: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpreadStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset_statuses: Option<Vec<WorkloadSpreadSubsetStatus>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpreadSubsetStatus {
    pub name: String,
    /// Pods in the subset.
    pub replicas: i32,
    /// Schedulable=False when the subset cannot place pods (Adaptive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<WorkloadSpreadSubsetCondition>>,
    /// Pods the subset can still take (-1: no cap).
    pub missing_replicas: i32,
    /// Pods admitted to the subset and not yet seen created, by name, with the admission time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating_pods: Option<BTreeMap<String, Time>>,
    /// Pods admitted for deletion and not yet seen gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_pods: Option<BTreeMap<String, Time>>,
}

pub type WorkloadSpreadSubsetCondition = super::common::Condition;
