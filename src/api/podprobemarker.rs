//! PodProbeMarker (namespaced): custom probes run in pod containers by kruise-daemon, whose
//! results become pod conditions, labels and annotations. Upstream v1.3 layout.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PodProbeMarkerSpec: which pods to probe, and what each probe result marks them with.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "PodProbeMarker",
    plural = "podprobemarkers",
    namespaced,
    status = "PodProbeMarkerStatus",
    doc = "PodProbeMarker runs custom probes in the containers of the pods it selects and marks the pods with the results."
)]
#[serde(rename_all = "camelCase")]
pub struct PodProbeMarkerSpec {
    /// Selects pods in the marker's namespace. Immutable.
    pub selector: LabelSelector,
    /// The probes to run in each selected pod.
    pub probes: Vec<PodContainerProbe>,
}

/// One probe and what its results mark the pod with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodContainerProbe {
    /// Unique within the marker.
    pub name: String,
    /// The container the probe runs in.
    pub container_name: String,
    /// The probe (exec at v1.3), with core/v1 Probe fields.
    pub probe: Probe,
    /// Labels and annotations to set per probe state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker_policy: Option<Vec<ProbeMarkerPolicy>>,
    /// A pod condition type (a qualified name) that mirrors the probe's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_condition_type: Option<String>,
}

/// What to mark a pod with while its probe is in `state`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeMarkerPolicy {
    /// Succeeded or Failed.
    pub state: ProbeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A probe's outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProbeState {
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodProbeMarkerStatus {
    /// The generation the status describes (always written).
    pub observed_generation: i64,
    /// Pods the selector matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<i64>,
}
