//! Feature gates, with upstream OpenKruise's names, stages and defaults (those of its current
//! release line; pre-1.3 flag strings keep working) and its rules for gates that depend on others.
//!
//! `--feature-gates` takes `Name=bool,...` like every Kubernetes component; `AllAlpha=bool` and
//! `AllBeta=bool` set every gate of that stage not named explicitly. An unknown name or a value
//! that is not a boolean stops startup with a message naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Alpha,
    Beta,
}

/// A gate: its flag string, default and stage.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub name: &'static str,
    pub default: bool,
    pub stage: Stage,
}

const fn gate(name: &'static str, default: bool, stage: Stage) -> Gate {
    Gate { name, default, stage }
}

pub const KRUISE_DAEMON: &str = "KruiseDaemon";
pub const POD_WEBHOOK: &str = "PodWebhook";
pub const DAEMON_WATCHING_POD: &str = "DaemonWatchingPod";
pub const KRUISE_POD_READINESS_GATE: &str = "KruisePodReadinessGate";
pub const PRE_DOWNLOAD_IMAGE_FOR_IN_PLACE_UPDATE: &str = "PreDownloadImageForInPlaceUpdate";
pub const PRE_DOWNLOAD_IMAGE_FOR_DAEMONSET_UPDATE: &str = "PreDownloadImageForDaemonSetUpdate";
pub const RESOURCES_DELETION_PROTECTION: &str = "ResourcesDeletionProtection";
pub const POD_UNAVAILABLE_BUDGET_DELETE_GATE: &str = "PodUnavailableBudgetDeleteGate";
pub const POD_UNAVAILABLE_BUDGET_UPDATE_GATE: &str = "PodUnavailableBudgetUpdateGate";
pub const WORKLOAD_SPREAD: &str = "WorkloadSpread";
pub const IN_PLACE_UPDATE_ENV_FROM_METADATA: &str = "InPlaceUpdateEnvFromMetadata";
pub const SIDECARSET_PATCH_POD_METADATA_DEFAULTS_ALLOWED: &str = "SidecarSetPatchPodMetadataDefaultsAllowed";
pub const SIDECAR_TERMINATOR: &str = "SidecarTerminator";
pub const POD_PROBE_MARKER_GATE: &str = "PodProbeMarkerGate";
pub const IMAGE_PULL_JOB_GATE: &str = "ImagePullJobGate";
pub const DELETION_PROTECTION_FOR_CRD_CASCADING_GATE: &str = "DeletionProtectionForCRDCascadingGate";
pub const ENHANCED_LIVENESS_PROBE: &str = "EnhancedLivenessProbe";
pub const ENABLE_POD_PROBE_MARKER_ON_SERVERLESS: &str = "EnablePodProbeMarkerOnServerless";
pub const TEMPLATE_NO_DEFAULTS: &str = "TemplateNoDefaults";

use Stage::{Alpha, Beta};

/// Every gate kruise-manager and kruise-daemon accept.
pub const GATES: &[Gate] = &[
    gate(KRUISE_DAEMON, true, Beta),
    gate(POD_WEBHOOK, true, Beta),
    gate(DAEMON_WATCHING_POD, true, Beta),
    gate("CloneSetShortHash", false, Alpha),
    gate(KRUISE_POD_READINESS_GATE, false, Alpha),
    gate(PRE_DOWNLOAD_IMAGE_FOR_IN_PLACE_UPDATE, false, Alpha),
    gate("CloneSetPartitionRollback", false, Alpha),
    gate(RESOURCES_DELETION_PROTECTION, false, Beta),
    gate(WORKLOAD_SPREAD, true, Beta),
    gate(POD_UNAVAILABLE_BUDGET_DELETE_GATE, true, Beta),
    gate(POD_UNAVAILABLE_BUDGET_UPDATE_GATE, false, Alpha),
    gate(TEMPLATE_NO_DEFAULTS, false, Alpha),
    gate(IN_PLACE_UPDATE_ENV_FROM_METADATA, true, Beta),
    gate("StatefulSetAutoDeletePVC", true, Beta),
    gate(SIDECARSET_PATCH_POD_METADATA_DEFAULTS_ALLOWED, false, Alpha),
    gate(SIDECAR_TERMINATOR, false, Alpha),
    gate(POD_PROBE_MARKER_GATE, true, Beta),
    gate(PRE_DOWNLOAD_IMAGE_FOR_DAEMONSET_UPDATE, false, Alpha),
    gate("CloneSetEventHandlerOptimization", false, Alpha),
    gate("PreparingUpdateAsUpdate", false, Alpha),
    gate(IMAGE_PULL_JOB_GATE, false, Alpha),
    gate("ResourceDistributionGate", false, Beta),
    gate(DELETION_PROTECTION_FOR_CRD_CASCADING_GATE, false, Alpha),
    gate(ENHANCED_LIVENESS_PROBE, false, Alpha),
    gate("RecreatePodWhenChangeVCTInCloneSetGate", false, Alpha),
    gate("StatefulSetStartOrdinal", false, Alpha),
    gate("PodIndexLabel", true, Beta),
    gate("EnableExternalCerts", false, Alpha),
    gate("StatefulSetAutoResizePVCGate", false, Alpha),
    gate("ForceDeleteTimeoutExpectationGate", false, Alpha),
    gate("InPlaceWorkloadVerticalScaling", false, Alpha),
    gate(ENABLE_POD_PROBE_MARKER_ON_SERVERLESS, false, Alpha),
    gate("EnableSortSidecarContainerByName", false, Alpha),
    gate("InPlacePodVerticalScaling", false, Alpha),
    gate("DefaultHostNetworkHostPortsInPodTemplates", false, Alpha),
    gate("DaemonSetPruneIneligibleNodes", false, Alpha),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureGateError {
    #[error("--feature-gates: unrecognized feature gate {0:?}")]
    Unknown(String),
    #[error("--feature-gates: {entry:?} is not of the form Name=true|false")]
    Malformed { entry: String },
}

/// The gates in force after `--feature-gates` and the dependency rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates {
    enabled: BTreeMap<&'static str, bool>,
}

impl Default for FeatureGates {
    fn default() -> Self {
        Self::with_defaults().constrained()
    }
}

impl FeatureGates {
    fn with_defaults() -> Self {
        Self { enabled: GATES.iter().map(|g| (g.name, g.default)).collect() }
    }

    /// Whether `name` is on. Unknown names are off (callers use the constants above).
    pub fn enabled(&self, name: &str) -> bool {
        self.enabled.get(name).copied().unwrap_or(false)
    }

    /// The gates that differ from their defaults, as `Name=bool` for the startup log.
    pub fn changed(&self) -> Vec<String> {
        GATES
            .iter()
            .filter(|g| self.enabled(g.name) != g.default)
            .map(|g| format!("{}={}", g.name, self.enabled(g.name)))
            .collect()
    }

    fn set(&mut self, name: &str, on: bool) {
        if let Some(v) = self.enabled.get_mut(name) {
            *v = on;
        }
    }

    /// Upstream's rules: gates whose feature cannot work without another are switched off (or
    /// on) to match, whatever the flag said.
    fn constrained(mut self) -> Self {
        if !self.enabled(POD_WEBHOOK) {
            for g in [
                KRUISE_POD_READINESS_GATE,
                POD_UNAVAILABLE_BUDGET_DELETE_GATE,
                POD_UNAVAILABLE_BUDGET_UPDATE_GATE,
                WORKLOAD_SPREAD,
                SIDECARSET_PATCH_POD_METADATA_DEFAULTS_ALLOWED,
                ENHANCED_LIVENESS_PROBE,
                ENABLE_POD_PROBE_MARKER_ON_SERVERLESS,
            ] {
                self.set(g, false);
            }
        }
        if !self.enabled(KRUISE_DAEMON) {
            for g in [
                PRE_DOWNLOAD_IMAGE_FOR_IN_PLACE_UPDATE,
                DAEMON_WATCHING_POD,
                IN_PLACE_UPDATE_ENV_FROM_METADATA,
                PRE_DOWNLOAD_IMAGE_FOR_DAEMONSET_UPDATE,
                POD_PROBE_MARKER_GATE,
                SIDECAR_TERMINATOR,
                IMAGE_PULL_JOB_GATE,
                ENHANCED_LIVENESS_PROBE,
            ] {
                self.set(g, false);
            }
        }
        if self.enabled(PRE_DOWNLOAD_IMAGE_FOR_IN_PLACE_UPDATE) || self.enabled(PRE_DOWNLOAD_IMAGE_FOR_DAEMONSET_UPDATE)
        {
            self.set(IMAGE_PULL_JOB_GATE, true);
        }
        if !self.enabled(RESOURCES_DELETION_PROTECTION) {
            self.set(DELETION_PROTECTION_FOR_CRD_CASCADING_GATE, false);
        }
        self
    }
}

impl FromStr for FeatureGates {
    type Err = FeatureGateError;

    /// Parses `--feature-gates`; an empty string keeps the defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut explicit: BTreeMap<&'static str, bool> = BTreeMap::new();
        let mut all = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let malformed = || FeatureGateError::Malformed { entry: entry.to_string() };
            let (name, value) = entry.split_once('=').ok_or_else(malformed)?;
            let (name, value) = (name.trim(), value.trim());
            let on = parse_bool(value).ok_or_else(malformed)?;
            match name {
                "AllAlpha" => {
                    all.insert(Alpha, on);
                }
                "AllBeta" => {
                    all.insert(Beta, on);
                }
                _ => {
                    let g =
                        GATES.iter().find(|g| g.name == name).ok_or_else(|| FeatureGateError::Unknown(name.into()))?;
                    explicit.insert(g.name, on);
                }
            }
        }
        let mut gates = Self::with_defaults();
        for g in GATES {
            if let Some(on) = explicit.get(g.name).or_else(|| all.get(&g.stage)) {
                gates.set(g.name, *on);
            }
        }
        Ok(gates.constrained())
    }
}

/// Go's strconv.ParseBool, which Kubernetes' gate parser uses.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl fmt::Display for FeatureGates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = self.enabled.iter().filter(|(_, on)| **on).map(|(n, _)| *n).collect();
        write!(f, "{}", on.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> FeatureGates {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_follow_upstream() {
        let g = FeatureGates::default();
        for on in [KRUISE_DAEMON, POD_WEBHOOK, POD_PROBE_MARKER_GATE, WORKLOAD_SPREAD, "PodIndexLabel"] {
            assert!(g.enabled(on), "{on} is on by default");
        }
        for off in [IMAGE_PULL_JOB_GATE, SIDECARSET_PATCH_POD_METADATA_DEFAULTS_ALLOWED, "CloneSetShortHash"] {
            assert!(!g.enabled(off), "{off} is off by default");
        }
        assert_eq!(parse(""), g);
        assert!(g.changed().is_empty());
        let names: std::collections::BTreeSet<_> = GATES.iter().map(|g| g.name).collect();
        assert_eq!(names.len(), GATES.len(), "each gate listed once");
    }

    #[test]
    fn explicit_settings_win_over_all_alpha_and_all_beta() {
        let g = parse("AllAlpha=true, CloneSetShortHash=false,AllBeta=false");
        assert!(g.enabled("CloneSetPartitionRollback"), "alpha gates on");
        assert!(!g.enabled("CloneSetShortHash"), "named explicitly");
        assert!(!g.enabled(WORKLOAD_SPREAD), "beta gates off");
        // AllBeta=false turned the daemon off, so the rules turned its dependants off too.
        assert!(!g.enabled(KRUISE_DAEMON));
        assert!(!g.enabled(PRE_DOWNLOAD_IMAGE_FOR_IN_PLACE_UPDATE) && !g.enabled(SIDECAR_TERMINATOR));
        assert_eq!(
            parse("PodWebhook=f,CloneSetShortHash=1").changed(),
            parse("CloneSetShortHash=t,PodWebhook=0").changed()
        );
    }

    #[test]
    fn dependent_gates_follow_the_gates_they_need() {
        let g = parse("PodWebhook=false,KruisePodReadinessGate=true,WorkloadSpread=true");
        assert!(!g.enabled(KRUISE_POD_READINESS_GATE) && !g.enabled(WORKLOAD_SPREAD));
        assert!(!g.enabled(POD_UNAVAILABLE_BUDGET_DELETE_GATE));
        let g = parse("KruiseDaemon=false,PodProbeMarkerGate=true");
        assert!(!g.enabled(POD_PROBE_MARKER_GATE) && !g.enabled(DAEMON_WATCHING_POD));
        let g = parse("PreDownloadImageForDaemonSetUpdate=true");
        assert!(g.enabled(IMAGE_PULL_JOB_GATE), "pre-download needs image pull jobs");
        let g = parse("DeletionProtectionForCRDCascadingGate=true");
        assert!(!g.enabled(DELETION_PROTECTION_FOR_CRD_CASCADING_GATE), "needs ResourcesDeletionProtection");
        let g = parse("ResourcesDeletionProtection=true,DeletionProtectionForCRDCascadingGate=true");
        assert!(g.enabled(DELETION_PROTECTION_FOR_CRD_CASCADING_GATE));
    }

    #[test]
    fn bad_input_is_refused_with_its_name() {
        assert_eq!("NoSuchGate=true".parse::<FeatureGates>(), Err(FeatureGateError::Unknown("NoSuchGate".into())));
        let err = "PodWebhook".parse::<FeatureGates>().unwrap_err();
        assert_eq!(err.to_string(), "--feature-gates: \"PodWebhook\" is not of the form Name=true|false");
        assert!("PodWebhook=yes".parse::<FeatureGates>().is_err());
        // The Go constant name is not the flag string.
        assert!("EnhancedLivenessProbeGate=true".parse::<FeatureGates>().is_err());
    }
}
