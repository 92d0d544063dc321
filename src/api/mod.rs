//! The `apps.kruise.io/v1alpha1` API: one file per kind, shared schema helpers, and the CRD
//! manifests generated from the types.

pub mod advancedcronjob;
pub mod broadcastjob;
pub mod cloneset;
pub mod common;
pub mod daemonset;
pub mod imagepulljob;
pub mod nodeimage;
pub mod nodepodprobe;
pub mod podprobemarker;
pub mod schema;
pub mod sidecarset;
pub mod workloadspread;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const GROUP: &str = "apps.kruise.io";
pub const VERSION: &str = "v1alpha1";

/// Every CRD kruise-rs serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        sidecarset::SidecarSet::crd(),
        podprobemarker::PodProbeMarker::crd(),
        nodepodprobe::NodePodProbe::crd(),
        imagepulljob::ImagePullJob::crd(),
        nodeimage::NodeImage::crd(),
        broadcastjob::BroadcastJob::crd(),
        advancedcronjob::AdvancedCronJob::crd(),
        cloneset::CloneSet::crd(),
        daemonset::DaemonSet::crd(),
        workloadspread::WorkloadSpread::crd(),
    ]
    .into_iter()
    .map(schema::upstream_conventions)
    .map(with_list_kind)
    .collect()
}

/// `<Kind>List`, which upstream's CRDs declare and kubectl shows for lists.
fn with_list_kind(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    crd
}

/// The file name a CRD is written to: `<group>_<plural>.yaml`, as upstream names them.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as YAML, the form the chart ships.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(crd)
}

/// Where the chart keeps the generated CRDs, relative to the repository root.
pub const CHART_CRD_DIR: &str = "deploy/helm/kruise/crds";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_CRD_DIR);
        let regenerate = format!("regenerate with `cargo run --bin kruise-manager -- crds --out {CHART_CRD_DIR}`");
        let mut expected: Vec<String> = Vec::new();
        for crd in crds() {
            let name = crd_file_name(&crd);
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(on_disk == crd_yaml(&crd).unwrap(), "{name} is out of date: {regenerate}");
            expected.push(name);
        }
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        present.sort();
        expected.sort();
        assert_eq!(present, expected, "{CHART_CRD_DIR} holds CRDs no type generates: {regenerate}");
    }

    #[test]
    fn schemas_have_no_nullable_fields_and_no_defaults() {
        for mut crd in crds() {
            let kind = crd.spec.names.kind.clone();
            schema::for_each_schema_node(&mut crd, &mut |p| {
                assert!(p.nullable.is_none(), "{kind}: nullable left in the schema");
                assert!(p.default.is_none(), "{kind}: a default left in the schema");
                let null_enum = p.enum_.iter().flatten().any(|v| v.0.is_null());
                assert!(!null_enum, "{kind}: null left among enum values");
            });
        }
    }
}
