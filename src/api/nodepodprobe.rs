//! NodePodProbe (cluster-scoped, named after its node): the probes kruise-daemon runs on one node
//! (spec, written by the manager) and their results (status, written by the daemon). Upstream v1.3
//! layout, with one addition: the lists are `x-kubernetes-list-type: map`, so manager shards can
//! each own their pods' entries through server-side apply without overwriting each other.

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::podprobemarker::ProbeState;

#[derive(CustomResource, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "NodePodProbe",
    plural = "nodepodprobes",
    status = "NodePodProbeStatus",
    doc = "NodePodProbe lists the probes kruise-daemon runs on one node and records their results."
)]
#[serde(rename_all = "camelCase")]
pub struct NodePodProbeSpec {
    /// One entry per pod on the node with probes to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace", "name", "uid"]))]
    pub pod_probes: Option<Vec<PodProbe>>,
}

/// `spec: null` (what server-side apply leaves when the last entries are withdrawn) reads as an
/// empty spec.
impl<'de> Deserialize<'de> for NodePodProbeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Fields {
            #[serde(default)]
            pod_probes: Option<Vec<PodProbe>>,
        }
        let fields: Option<Fields> = Option::deserialize(d)?;
        Ok(NodePodProbeSpec { pod_probes: fields.and_then(|f| f.pod_probes) })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodProbe {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub probes: Option<Vec<ContainerProbe>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProbe {
    /// `<marker name>#<probe name>`.
    pub name: String,
    pub container_name: String,
    pub probe: Probe,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePodProbeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace", "name", "uid"]))]
    pub pod_probe_statuses: Option<Vec<PodProbeStatus>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodProbeStatus {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub probe_states: Option<Vec<ContainerProbeState>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProbeState {
    /// `<marker name>#<probe name>`, as in the spec.
    pub name: String,
    pub state: ProbeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Marks `spec` and `spec.podProbes` nullable in the NodePodProbe CRD (and leaves other CRDs
/// alone): when the field manager of a NodePodProbe's last entries withdraws them by server-side
/// apply, the API server leaves `null` where the list (or the emptied `spec`) was, and a
/// non-nullable schema would refuse that write.
pub fn spec_may_be_null(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    super::schema::for_each_spec_schema(&mut crd, "NodePodProbe", |spec| {
        spec.nullable = Some(true);
        if let Some(list) = spec.properties.as_mut().and_then(|p| p.get_mut("podProbes")) {
            list.nullable = Some(true);
        }
    });
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_spec_reads_as_empty() {
        let npp: NodePodProbe = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodePodProbe",
            "metadata": {"name": "n"}, "spec": null
        }))
        .unwrap();
        assert_eq!(npp.spec, NodePodProbeSpec::default());
        let spec: NodePodProbeSpec = serde_json::from_value(serde_json::json!({"podProbes": null})).unwrap();
        assert_eq!(spec.pod_probes, None);
        let spec: NodePodProbeSpec =
            serde_json::from_value(serde_json::json!({"podProbes": [{"name": "p", "namespace": "ns", "uid": "u"}]}))
                .unwrap();
        assert_eq!(spec.pod_probes.unwrap()[0].uid, "u");
    }
}
