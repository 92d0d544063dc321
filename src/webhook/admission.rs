//! Admission for the apps.kruise.io kinds: defaulting (mutating) and validation, as pure
//! decisions over the object and a [`Context`] the glue gathers from the cluster.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::advancedcronjob::AdvancedCronJob;
use crate::api::broadcastjob::BroadcastJob;
use crate::api::cloneset::CloneSet;
use crate::api::daemonset::DaemonSet;
use crate::api::imagepulljob::ImagePullJob;
use crate::api::nodeimage::NodeImage;
use crate::api::podprobemarker::PodProbeMarker;
use crate::api::sidecarset::SidecarSet;
use crate::api::validation::{self, ErrorList};
use crate::api::workloadspread::WorkloadSpread;
use crate::controllers::sidecarset::hash::sidecarset_hashes;
use crate::controllers::sidecarset::injection::{SIDECARSET_HASH, SIDECARSET_HASH_WITHOUT_IMAGE};
use crate::features::{FeatureGates, KRUISE_DAEMON, SIDECARSET_PATCH_POD_METADATA_DEFAULTS_ALLOWED};

/// What validation may need besides the object: gathered by the glue, so decisions stay pure.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// Every SidecarSet (for conflicts).
    pub sidecarsets: Vec<SidecarSet>,
    /// `SidecarSet_PatchPodMetadata_WhiteList` from the `kruise-configuration` ConfigMap.
    pub patch_whitelist: Option<String>,
    /// The SidecarSet's ControllerRevisions (for a pinned injection revision).
    pub revisions: Vec<ControllerRevision>,
    /// The namespace's WorkloadSpreads (for conflicts).
    pub workloadspreads: Vec<WorkloadSpread>,
    /// Pods a CloneSet's `podsToDelete` names.
    pub pods: Vec<Pod>,
    pub gates: FeatureGates,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("{0} has no admission webhook")]
    UnknownResource(String),
    #[error("decoding the object: {0}")]
    Decode(String),
    /// The kind's feature is off, so its objects are refused (403, as upstream).
    #[error("feature-gate {0} is not enabled")]
    FeatureGateOff(&'static str),
}

fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, AdmissionError> {
    let mut v = v.clone();
    // Upstream decodes a kruise object without `spec` as the zero spec; so do we (the types
    // require the field).
    let kruise = v.get("apiVersion").and_then(Value::as_str).is_some_and(|a| a.starts_with("apps.kruise.io/"));
    if let (true, Value::Object(m)) = (kruise, &mut v) {
        m.entry("spec").or_insert_with(|| Value::Object(Default::default()));
    }
    serde_json::from_value(v).map_err(|e| AdmissionError::Decode(e.to_string()))
}

/// The JSON patch that turns `object` into its defaulted form, limited to `spec` and the
/// annotations (defaulting touches nothing else, and a round trip through the types must not
/// rewrite the rest).
fn defaulted<T: Serialize + DeserializeOwned>(
    object: &Value,
    default: impl FnOnce(&mut T),
) -> Result<Patch, AdmissionError> {
    let mut t: T = typed(object)?;
    default(&mut t);
    let after = serde_json::to_value(&t).map_err(|e| AdmissionError::Decode(e.to_string()))?;
    patch_between(object, &after)
}

/// The JSON patch from `object` to `after` over `spec` and `metadata.annotations` only.
pub fn patch_between(object: &Value, after: &Value) -> Result<Patch, AdmissionError> {
    // Diffing just these parts, at their places, gives the patch's paths directly. Annotations
    // the object lacks are first added empty: a patch cannot replace what is not there.
    let mut ops = Vec::new();
    let had_annotations = object.pointer("/metadata/annotations").is_some_and(|a| !a.is_null());
    let view = |v: &Value, fill_annotations: bool| {
        let annotations = v
            .pointer("/metadata/annotations")
            .cloned()
            .filter(|a| !a.is_null())
            .unwrap_or(if fill_annotations { Value::Object(Default::default()) } else { Value::Null });
        serde_json::json!({ "metadata": { "annotations": annotations }, "spec": v.get("spec").cloned().unwrap_or(Value::Null) })
    };
    let adds_annotations = !had_annotations && after.pointer("/metadata/annotations").is_some_and(|a| !a.is_null());
    if adds_annotations {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::parse("/metadata/annotations").map_err(|e| AdmissionError::Decode(e.to_string()))?,
            value: Value::Object(Default::default()),
        }));
    }
    ops.extend(json_patch::diff(&view(object, adds_annotations), &view(after, adds_annotations)).0);
    Ok(Patch(ops))
}

/// Defaulting for `plural`'s object on CREATE/UPDATE: the patch to apply (possibly empty).
pub fn default_object(plural: &str, object: &Value, now: Time) -> Result<Patch, AdmissionError> {
    use crate::api::validation as v;
    match plural {
        "advancedcronjobs" => defaulted::<AdvancedCronJob>(object, v::advancedcronjob::default_advancedcronjob),
        "broadcastjobs" => defaulted::<BroadcastJob>(object, v::broadcastjob::default_broadcastjob),
        "clonesets" => defaulted::<CloneSet>(object, v::cloneset::default_cloneset),
        "daemonsets" => defaulted::<DaemonSet>(object, v::daemonset::default_daemonset),
        "imagepulljobs" => defaulted::<ImagePullJob>(object, v::imagepulljob::default_imagepulljob),
        "nodeimages" => defaulted::<NodeImage>(object, |ni| v::nodeimage::default_nodeimage(ni, now)),
        "sidecarsets" => defaulted::<SidecarSet>(object, |set| {
            v::sidecarset::default_sidecarset(set);
            // Upstream writes both hashes on the set whenever it is defaulted.
            let (hash, without_image) = sidecarset_hashes(set);
            let annotations = set.metadata.annotations.get_or_insert_with(Default::default);
            annotations.insert(SIDECARSET_HASH.into(), hash);
            annotations.insert(SIDECARSET_HASH_WITHOUT_IMAGE.into(), without_image);
        }),
        other => Err(AdmissionError::UnknownResource(other.to_string())),
    }
}

/// Validation of `plural`'s object for `operation`: the field errors (empty: allowed).
pub fn validate_object(
    plural: &str,
    operation: &str,
    new: Option<&Value>,
    old: Option<&Value>,
    ctx: &Context,
) -> Result<ErrorList, AdmissionError> {
    use crate::api::validation as v;
    // DELETE: deletion protection (gate ResourcesDeletionProtection) is not built yet: allowed.
    let Some(new) = new.filter(|_| operation != "DELETE") else { return Ok(vec![]) };
    if matches!(plural, "imagepulljobs" | "nodeimages") && !ctx.gates.enabled(KRUISE_DAEMON) {
        return Err(AdmissionError::FeatureGateOff(KRUISE_DAEMON));
    }
    fn old_typed<T: DeserializeOwned>(old: Option<&Value>) -> Result<Option<T>, AdmissionError> {
        old.map(typed).transpose()
    }
    Ok(match plural {
        "advancedcronjobs" => {
            let old = old_typed::<AdvancedCronJob>(old)?;
            v::advancedcronjob::validate_advancedcronjob(&typed(new)?, old.as_ref())
        }
        "broadcastjobs" => v::broadcastjob::validate_broadcastjob(&typed(new)?),
        "clonesets" => {
            let cs: CloneSet = typed(new)?;
            let old = old_typed::<CloneSet>(old)?;
            let mut errs = v::cloneset::validate_cloneset(&cs, old.as_ref());
            errs.extend(v::cloneset::validate_pods_to_delete(&cs, old.as_ref(), &ctx.pods));
            errs
        }
        "daemonsets" => v::daemonset::validate_daemonset(&typed(new)?),
        "imagepulljobs" => v::imagepulljob::validate_imagepulljob(&typed(new)?),
        "nodeimages" => v::nodeimage::validate_nodeimage(&typed(new)?),
        "sidecarsets" => {
            let set: SidecarSet = typed(new)?;
            let old = old_typed::<SidecarSet>(old)?;
            let mut errs = v::sidecarset::validate_sidecarset(&set, old.as_ref());
            errs.extend(v::sidecarset::validate_sidecarset_conflicts(&set, &ctx.sidecarsets));
            errs.extend(v::sidecarset::validate_patch_pod_metadata_whitelist(
                &set,
                ctx.patch_whitelist.as_deref(),
                ctx.gates.enabled(SIDECARSET_PATCH_POD_METADATA_DEFAULTS_ALLOWED),
            ));
            errs.extend(v::sidecarset::validate_injection_revision(&set, &ctx.revisions));
            errs
        }
        "workloadspreads" => {
            let ws: WorkloadSpread = typed(new)?;
            let old = old_typed::<WorkloadSpread>(old)?;
            let mut errs = v::workloadspread::validate_workloadspread(&ws, old.as_ref());
            errs.extend(v::workloadspread::validate_workloadspread_conflicts(&ws, &ctx.workloadspreads));
            errs
        }
        "podprobemarkers" => {
            let old = old_typed::<PodProbeMarker>(old)?;
            v::podprobemarker::validate_podprobemarker(&typed(new)?, old.as_ref())
        }
        other => return Err(AdmissionError::UnknownResource(other.to_string())),
    })
}

/// The denial message for field errors, as the API server shows it to the user.
pub fn denial_message(kind: &str, name: &str, errors: &ErrorList) -> String {
    format!("{kind}.apps.kruise.io \"{name}\" is invalid: {}", validation::join(errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Time {
        Time(jiff::Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn defaulting_patches_only_the_spec() {
        let cs = json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "CloneSet",
            "metadata": { "name": "web", "namespace": "a", "managedFields": [{ "manager": "kubectl" }] },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": { "containers": [{ "name": "web", "image": "nginx" }] }
                }
            }
        });
        let patch = default_object("clonesets", &cs, now()).unwrap();
        assert!(!patch.0.is_empty(), "a bare CloneSet gets defaults");
        let mut patched = cs.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(patched["spec"]["updateStrategy"]["type"], "ReCreate");
        assert_eq!(patched["metadata"], cs["metadata"], "metadata untouched");
        // Defaulting a defaulted object changes nothing.
        assert!(default_object("clonesets", &patched, now()).unwrap().0.is_empty());
    }

    #[test]
    fn sidecarsets_get_both_hash_annotations() {
        let set = json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
            "metadata": { "name": "s" },
            "spec": { "selector": { "matchLabels": { "a": "b" } }, "containers": [{ "name": "c", "image": "nginx:1.0" }] }
        });
        let mut patched = set.clone();
        json_patch::patch(&mut patched, &default_object("sidecarsets", &set, now()).unwrap()).unwrap();
        let hash = patched["metadata"]["annotations"][SIDECARSET_HASH].as_str().unwrap();
        let without = patched["metadata"]["annotations"][SIDECARSET_HASH_WITHOUT_IMAGE].as_str().unwrap();
        assert_eq!((hash.len(), without.len()), (64, 64));
        assert_ne!(hash, without);
        assert_eq!(patched["spec"]["containers"][0]["podInjectPolicy"], "BeforeAppContainer");
        assert!(default_object("sidecarsets", &patched, now()).unwrap().0.is_empty(), "stable once defaulted");
    }

    #[test]
    fn validation_reports_field_errors_and_unknown_kinds() {
        let bad = json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
            "metadata": { "name": "bad" },
            "spec": { "containers": [{ "name": "", "image": "x" }] }
        });
        let errs = validate_object("sidecarsets", "CREATE", Some(&bad), None, &Context::default()).unwrap();
        assert!(!errs.is_empty());
        let msg = denial_message("sidecarsets", "bad", &errs);
        assert!(msg.starts_with("sidecarsets.apps.kruise.io \"bad\" is invalid: "), "{msg}");
        assert!(msg.contains("spec.containers[0].name: Required value"), "{msg}");
        assert!(validate_object("clonesets", "DELETE", None, Some(&bad), &Context::default()).unwrap().is_empty());
        assert_eq!(
            validate_object("nodepodprobes", "CREATE", Some(&bad), None, &Context::default()),
            Err(AdmissionError::UnknownResource("nodepodprobes".into()))
        );
        assert!(matches!(
            validate_object("clonesets", "CREATE", Some(&json!({"spec": 5})), None, &Context::default()),
            Err(AdmissionError::Decode(_))
        ));
    }

    #[test]
    fn image_objects_are_refused_while_kruise_daemon_is_off() {
        let job = json!({ "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": "j", "namespace": "a" },
            "spec": { "image": "nginx:1", "completionPolicy": { "type": "Always" } } });
        let off: FeatureGates = "KruiseDaemon=false".parse().unwrap();
        let ctx = Context { gates: off, ..Default::default() };
        let denied = validate_object("imagepulljobs", "CREATE", Some(&job), None, &ctx).unwrap_err();
        assert_eq!(denied.to_string(), "feature-gate KruiseDaemon is not enabled");
        let ni = json!({ "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage", "metadata": { "name": "n" } });
        assert_eq!(validate_object("nodeimages", "UPDATE", Some(&ni), None, &ctx), Err(denied));
        assert_eq!(validate_object("imagepulljobs", "DELETE", None, Some(&job), &ctx), Ok(vec![]));
        assert_eq!(validate_object("imagepulljobs", "CREATE", Some(&job), None, &Context::default()), Ok(vec![]));
        // No spec decodes as the empty spec, as upstream: defaulted, then judged on its fields.
        assert!(default_object("nodeimages", &ni, now()).is_ok());
        let errs = validate_object("nodeimages", "CREATE", Some(&ni), None, &Context::default()).unwrap();
        assert!(errs.is_empty(), "{errs:?}");
    }
}
