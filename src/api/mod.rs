//! The `apps.kruise.io/v1alpha1` API: one file per kind, shared schema helpers, and the CRD
//! manifests generated from the types.

pub mod advancedcronjob;
pub mod broadcastjob;
pub mod cloneset;
pub mod common;
pub mod cron;
pub mod daemonset;
pub mod image;
pub mod imagepulljob;
pub mod nodeimage;
pub mod nodepodprobe;
pub mod podprobemarker;
pub mod schema;
pub mod selector;
pub mod sidecarset;
pub mod validation;
pub mod workloadspread;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

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
    .map(nodepodprobe::spec_may_be_null)
    .map(imagepulljob::completion_policy_required)
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
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::path::Path;

    /// Every YAML document in examples/, with its source.
    pub(crate) fn example_documents() -> Vec<(String, serde_json::Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
                let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
                if !v.is_null() {
                    docs.push((format!("{}#{i}", f.display()), v));
                }
            }
        }
        docs
    }

    /// Reads `v` into `K` and writes it back: nothing may be lost or added.
    fn round_trip<K: DeserializeOwned + Serialize>(source: &str, v: &serde_json::Value) -> K {
        let typed: K = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{source}: {e}"));
        let back = serde_json::to_value(&typed).unwrap();
        assert_eq!(&back, v, "{source}: the Rust types do not round-trip the manifest");
        typed
    }

    #[test]
    fn every_example_reads_into_its_type_and_back_and_passes_validation() {
        use validation::{
            advancedcronjob as acj, broadcastjob as bcj, cloneset as cs, daemonset as ds, imagepulljob as ipj,
            nodeimage as ni, podprobemarker as ppm, sidecarset as ss, workloadspread as ws,
        };
        for (source, v) in example_documents() {
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let errors = match kind.as_str() {
                "SidecarSet" => {
                    let mut s: sidecarset::SidecarSet = round_trip(&source, &v);
                    ss::default_sidecarset(&mut s);
                    ss::validate_sidecarset(&s, None)
                }
                "PodProbeMarker" => ppm::validate_podprobemarker(&round_trip(&source, &v), None),
                "ImagePullJob" => {
                    let mut j: imagepulljob::ImagePullJob = round_trip(&source, &v);
                    ipj::default_imagepulljob(&mut j);
                    ipj::validate_imagepulljob(&j)
                }
                // Written only by kruise itself; upstream has no webhook for it.
                "NodePodProbe" => no_validation(round_trip::<nodepodprobe::NodePodProbe>(&source, &v)),
                "NodeImage" => {
                    let mut n: nodeimage::NodeImage = round_trip(&source, &v);
                    ni::default_nodeimage(
                        &mut n,
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
                    );
                    ni::validate_nodeimage(&n)
                }
                "BroadcastJob" => {
                    let mut j: broadcastjob::BroadcastJob = round_trip(&source, &v);
                    bcj::default_broadcastjob(&mut j);
                    bcj::validate_broadcastjob(&j)
                }
                "AdvancedCronJob" => {
                    let mut a: advancedcronjob::AdvancedCronJob = round_trip(&source, &v);
                    acj::default_advancedcronjob(&mut a);
                    acj::validate_advancedcronjob(&a, None)
                }
                "CloneSet" => {
                    let mut c: cloneset::CloneSet = round_trip(&source, &v);
                    cs::default_cloneset(&mut c);
                    cs::validate_cloneset(&c, None)
                }
                "DaemonSet" => {
                    let mut d: daemonset::DaemonSet = round_trip(&source, &v);
                    ds::default_daemonset(&mut d);
                    ds::validate_daemonset(&d)
                }
                "WorkloadSpread" => ws::validate_workloadspread(&round_trip(&source, &v), None),
                other => panic!("{source}: no type for kind {other}"),
            };
            assert!(errors.is_empty(), "{source}: {}", validation::join(&errors));
        }
    }

    fn no_validation<K>(_: K) -> validation::ErrorList {
        Vec::new()
    }

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
                assert!(p.nullable.is_none() || kind == "NodePodProbe", "{kind}: nullable left in the schema");
                assert!(p.default.is_none(), "{kind}: a default left in the schema");
                let null_enum = p.enum_.iter().flatten().any(|v| v.0.is_null());
                assert!(!null_enum, "{kind}: null left among enum values");
            });
        }
    }
}
