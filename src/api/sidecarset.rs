//! SidecarSet (cluster-scoped): sidecar containers injected into matching pods and upgraded in
//! place. Field names and JSON layout follow upstream v1.3 exactly; see `docs/design.md` and the
//! SidecarSet spec for behaviour.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, LocalObjectReference, ObjectFieldSelector, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::common::UpdateScatterTerm;
use super::schema;

/// Label on a ControllerRevision recording the custom version of a SidecarSet revision.
pub const SIDECARSET_CUSTOM_VERSION_LABEL: &str = "apps.kruise.io/sidecarset-custom-version";
/// Label on a ControllerRevision naming the SidecarSet it records.
pub const SIDECARSET_NAME_LABEL: &str = "kruise.io/sidecarset-name";

impl SidecarSet {
    /// The recorded revision new pods get instead of the current spec, if
    /// `injectionStrategy.revision` pins one: by `revisionName` (which must belong to this set),
    /// else the highest-numbered revision labelled with `customVersion`. `Ok(None)`: nothing is
    /// pinned. `Err`: a revision is pinned but not among `revisions` (the Kruise namespace's).
    /// `revisions` may be owned or shared (`Arc`, as a watch's store hands them out).
    pub fn pinned_revision<'a, R: std::borrow::Borrow<k8s_openapi::api::apps::v1::ControllerRevision>>(
        &self,
        revisions: &'a [R],
    ) -> Result<Option<&'a k8s_openapi::api::apps::v1::ControllerRevision>, String> {
        let Some(rev) = self.spec.injection_strategy.as_ref().and_then(|i| i.revision.as_ref()) else {
            return Ok(None);
        };
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let label = |r: &k8s_openapi::api::apps::v1::ControllerRevision, k: &str| {
            r.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned()
        };
        let ours = |r: &&k8s_openapi::api::apps::v1::ControllerRevision| {
            label(r, SIDECARSET_NAME_LABEL).as_deref() == Some(name)
        };
        if let Some(wanted) = rev.revision_name.as_deref().filter(|n| !n.is_empty()) {
            return revisions
                .iter()
                .map(std::borrow::Borrow::borrow)
                .filter(ours)
                .find(|r| r.metadata.name.as_deref() == Some(wanted))
                .map(Some)
                .ok_or_else(|| format!("revision {wanted} of SidecarSet {name} not found"));
        }
        if let Some(version) = rev.custom_version.as_deref().filter(|v| !v.is_empty()) {
            return revisions
                .iter()
                .map(std::borrow::Borrow::borrow)
                .filter(ours)
                .filter(|r| label(r, SIDECARSET_CUSTOM_VERSION_LABEL).as_deref() == Some(version))
                .max_by_key(|r| r.revision)
                .map(Some)
                .ok_or_else(|| format!("no revision of SidecarSet {name} with custom version {version}"));
        }
        Ok(None)
    }
}

/// SidecarSetSpec defines the desired state of SidecarSet.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.kruise.io",
    version = "v1alpha1",
    kind = "SidecarSet",
    plural = "sidecarsets",
    status = "SidecarSetStatus",
    doc = "SidecarSet injects sidecar containers into the pods it selects and upgrades them in place.",
    printcolumn = r#"{"name":"MATCHED","type":"integer","jsonPath":".status.matchedPods","description":"The number of pods matched."}"#,
    printcolumn = r#"{"name":"UPDATED","type":"integer","jsonPath":".status.updatedPods","description":"The number of pods matched and updated."}"#,
    printcolumn = r#"{"name":"READY","type":"integer","jsonPath":".status.readyPods","description":"The number of pods matched and ready."}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created."}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetSpec {
    /// Selects the pods to inject into and upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Only pods in this namespace are selected; empty means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Init containers injected into the selected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<SidecarContainer>>,
    /// Sidecar containers injected into the selected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<SidecarContainer>>,
    /// Volumes the sidecar containers may mount; only those they mount reach the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserved_object_list")]
    pub volumes: Option<Vec<Volume>>,
    /// How pods already injected are upgraded when the sidecars change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<SidecarSetUpdateStrategy>,
    /// What new pods receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_strategy: Option<SidecarSetInjectionStrategy>,
    /// Secrets for pulling the sidecar images, added to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// How many revisions to keep (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Annotations to set on injected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_pod_metadata: Option<Vec<SidecarSetPatchPodMetadata>>,
}

/// Annotations to patch into injected pods, and how to treat values already there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetPatchPodMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_policy: Option<SidecarSetPatchPolicy>,
}

/// How patched annotations treat values already on the pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SidecarSetPatchPolicy {
    /// Keep the pod's value (the default).
    Retain,
    /// Replace the pod's value.
    Overwrite,
    /// Both are JSON objects: merge-patch the pod's value with ours.
    MergePatchJson,
}

/// A core/v1 Container plus the SidecarSet's own fields. The Container part is schemaless in
/// the CRD, as upstream; the webhook validates it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SidecarContainer {
    #[serde(flatten)]
    pub container: Container,
    #[serde(flatten)]
    pub sidecar: SidecarContainerFields,
}

impl JsonSchema for SidecarContainer {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SidecarContainer".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schema::extended_object::<SidecarContainerFields>(generator)
    }
}

/// The fields a SidecarContainer adds to a core/v1 Container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarContainerFields {
    /// Where in `spec.containers` the sidecar goes (default before the app containers). Init
    /// containers are always appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_inject_policy: Option<PodInjectPolicy>,
    /// How the sidecar's image changes in place: ColdUpgrade (default) or HotUpgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_strategy: Option<SidecarContainerUpgradeStrategy>,
    /// Whether the sidecar mounts the other containers' volume mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_volume_policy: Option<ShareVolumePolicy>,
    /// Environment variables copied from the pod's other containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_env: Option<Vec<TransferEnvVar>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShareVolumePolicy {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ShareVolumePolicyType>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PodInjectPolicy {
    BeforeAppContainer,
    AfterAppContainer,
}

/// Whether a sidecar shares the other containers' volume mounts (default disabled).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShareVolumePolicyType {
    Enabled,
    Disabled,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferEnvVar {
    /// The container to copy from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_container_name: Option<String>,
    /// The container to copy from, named by a pod label or annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_container_name_from: Option<SourceContainerNameSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_names: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceContainerNameSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
}

/// How a sidecar's image changes in place (default ColdUpgrade: restart the container).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SidecarContainerUpgradeType {
    /// Restart the container with the new image.
    ColdUpgrade,
    /// Start the new version in an idle twin container, then switch over.
    HotUpgrade,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarContainerUpgradeStrategy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_type: Option<SidecarContainerUpgradeType>,
    /// For HotUpgrade: an image identical to the sidecar in command, args and probes that does no
    /// work, run in the idle twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_upgrade_empty_image: Option<String>,
}

/// What new pods receive.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetInjectionStrategy {
    /// Inject nothing into new pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Inject a recorded revision instead of the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<SidecarSetInjectRevision>,
    /// Not in upstream's API, but shown this way in the v1.3 release notes: kept by the schema
    /// (so such YAML is not silently pruned) and moved under `revision` by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// As `revision_name`: the release-notes layout of `revision.customVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_version: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetInjectRevision {
    /// The revision labelled `apps.kruise.io/sidecarset-custom-version=<customVersion>` (the
    /// newest such).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_version: Option<String>,
    /// The ControllerRevision with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SidecarSetInjectRevisionPolicy>,
}

/// Which pods get the pinned revision (v1.3: all of them).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SidecarSetInjectRevisionPolicy {
    Always,
}

/// How injected pods are upgraded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetUpdateStrategy {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<SidecarSetUpdateStrategyType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Only pods matching this are upgraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Pods (number or percentage of matched) kept at the old version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<IntOrString>,
    /// Pods (number or percentage of matched) that may be unavailable at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Spreads upgrades over pods with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scatter_strategy: Option<Vec<UpdateScatterTerm>>,
}

/// Whether injected pods are upgraded (default RollingUpdate).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SidecarSetUpdateStrategyType {
    NotUpdate,
    RollingUpdate,
}

/// SidecarSetStatus defines the observed state of SidecarSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods matched by the selector.
    pub matched_pods: i32,
    /// Matched pods whose sidecars are at the latest version.
    pub updated_pods: i32,
    /// Matched pods that are ready.
    pub ready_pods: i32,
    /// Updated pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ready_pods: Option<i32>,
    /// The name of the latest ControllerRevision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<String>,
    /// Bumped when a revision name collides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
}
