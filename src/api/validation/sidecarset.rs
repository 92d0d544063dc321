//! SidecarSet defaulting and validation: the rules on the object (and the old one on update), and
//! those that need other objects, given them: conflicts with the other SidecarSets, the
//! patchPodMetadata whitelist, and the pinned revision's existence.

use std::collections::HashSet;

use super::{
    ErrorList, FieldPath, duplicate, forbidden, invalid, required, selector_is_empty, validate_annotation_keys,
    validate_label_selector, validate_non_negative_int_or_percent, validate_scatter_strategy,
};
use crate::api::sidecarset::{
    PodInjectPolicy, ShareVolumePolicy, ShareVolumePolicyType, SidecarContainer, SidecarContainerUpgradeStrategy,
    SidecarContainerUpgradeType, SidecarSet, SidecarSetInjectRevision, SidecarSetInjectRevisionPolicy,
    SidecarSetPatchPolicy, SidecarSetUpdateStrategy, SidecarSetUpdateStrategyType,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// The mutating webhook's defaults (without the hash annotations, which the webhook adds).
pub fn default_sidecarset(set: &mut SidecarSet) {
    let spec = &mut set.spec;
    let strategy = spec.update_strategy.get_or_insert_with(SidecarSetUpdateStrategy::default);
    strategy.type_.get_or_insert(SidecarSetUpdateStrategyType::RollingUpdate);
    strategy.max_unavailable.get_or_insert(IntOrString::Int(1));
    strategy.partition.get_or_insert(IntOrString::Int(0));
    spec.revision_history_limit.get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);

    for c in spec.containers.iter_mut().flatten() {
        c.sidecar.pod_inject_policy.get_or_insert(PodInjectPolicy::BeforeAppContainer);
        let upgrade = c.sidecar.upgrade_strategy.get_or_insert_with(SidecarContainerUpgradeStrategy::default);
        upgrade.upgrade_type.get_or_insert(SidecarContainerUpgradeType::ColdUpgrade);
        let share = c.sidecar.share_volume_policy.get_or_insert_with(ShareVolumePolicy::default);
        share.type_.get_or_insert(ShareVolumePolicyType::Disabled);
    }
    for c in spec.init_containers.iter_mut().chain(spec.containers.iter_mut()).flatten() {
        super::pod::default_container(&mut c.container);
    }
    for p in spec.patch_pod_metadata.iter_mut().flatten() {
        p.patch_policy.get_or_insert(SidecarSetPatchPolicy::Retain);
    }

    if let Some(injection) = spec.injection_strategy.as_mut() {
        // The v1.3 release notes' flat layout moves under `revision`, unless it conflicts (then
        // validation denies it and nothing is moved).
        let flat_name = injection.revision_name.take();
        let flat_version = injection.custom_version.take();
        if flat_name.is_some() || flat_version.is_some() {
            let rev = injection.revision.get_or_insert_with(SidecarSetInjectRevision::default);
            let conflict = (flat_name.is_some() && rev.revision_name.is_some() && rev.revision_name != flat_name)
                || (flat_version.is_some() && rev.custom_version.is_some() && rev.custom_version != flat_version);
            if conflict {
                injection.revision_name = flat_name;
                injection.custom_version = flat_version;
            } else {
                rev.revision_name = rev.revision_name.take().or(flat_name);
                rev.custom_version = rev.custom_version.take().or(flat_version);
            }
        }
        if let Some(rev) = injection.revision.as_mut() {
            rev.policy.get_or_insert(SidecarSetInjectRevisionPolicy::Always);
        }
    }
}

pub fn validate_sidecarset(set: &SidecarSet, old: Option<&SidecarSet>) -> ErrorList {
    let mut errs = ErrorList::new();
    let meta = FieldPath::new("metadata");
    let spec = FieldPath::new("spec");
    let s = &set.spec;

    let name = set.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        errs.push(invalid(&meta.child("name"), name, "must match ^[a-zA-Z0-9\\-]+$ and have at most 63 characters"));
    }

    match &s.selector {
        None => errs.push(required(&spec.child("selector"), "no selector defined for SidecarSet")),
        Some(sel) if selector_is_empty(sel) => {
            errs.push(invalid(&spec.child("selector"), "{}", "empty selector is not valid for sidecarset"))
        }
        Some(sel) => errs.extend(validate_label_selector(sel, &spec.child("selector"))),
    }

    if let Some(injection) = &s.injection_strategy {
        let path = spec.child("injectionStrategy");
        if injection.revision_name.is_some() || injection.custom_version.is_some() {
            errs.push(invalid(
                &path,
                "revisionName/customVersion",
                "conflicts with injectionStrategy.revision; set the revision in one place",
            ));
        }
        if let Some(rev) = &injection.revision
            && rev.revision_name.as_deref().unwrap_or_default().is_empty()
            && rev.custom_version.as_deref().unwrap_or_default().is_empty()
        {
            errs.push(required(&path.child("revision"), "revisionName or customVersion must be set"));
        }
    }

    if let Some(strategy) = &s.update_strategy
        && strategy.type_ != Some(SidecarSetUpdateStrategyType::NotUpdate)
    {
        let path = spec.child("updateStrategy");
        if let Some(sel) = &strategy.selector {
            if selector_is_empty(sel) {
                errs.push(invalid(&path.child("selector"), "{}", "empty selector is not valid"));
            } else {
                errs.extend(validate_label_selector(sel, &path.child("selector")));
            }
        }
        if let Some(p) = &strategy.partition {
            errs.extend(validate_non_negative_int_or_percent(p, &path.child("partition")));
        }
        if let Some(m) = &strategy.max_unavailable {
            errs.extend(validate_non_negative_int_or_percent(m, &path.child("maxUnavailable")));
        }
        errs.extend(validate_scatter_strategy(
            strategy.scatter_strategy.as_deref().unwrap_or_default(),
            &path.child("scatterStrategy"),
        ));
    }

    let init = s.init_containers.as_deref().unwrap_or_default();
    let containers = s.containers.as_deref().unwrap_or_default();
    if init.is_empty() && containers.is_empty() {
        errs.push(required(&spec.child("containers"), "no initContainers or containers defined for SidecarSet"));
    }
    errs.extend(super::pod::validate_volumes(s.volumes.as_deref().unwrap_or_default(), &spec.child("volumes")));
    let volumes: HashSet<&str> = s.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    let mut names = HashSet::new();
    for (field, list) in [("initContainers", init), ("containers", containers)] {
        for (i, c) in list.iter().enumerate() {
            let path = spec.child(field).index(i);
            errs.extend(validate_container(c, &path, &volumes, &mut names));
        }
    }

    let mut keys = HashSet::new();
    for (i, p) in s.patch_pod_metadata.iter().flatten().enumerate() {
        let path = spec.child("patchPodMetadata").index(i);
        let annotations = p.annotations.as_ref().filter(|a| !a.is_empty());
        match annotations {
            None => errs.push(required(&path.child("annotations"), "")),
            Some(a) => {
                errs.extend(validate_annotation_keys(a.keys(), &path.child("annotations")));
                for k in a.keys() {
                    if !keys.insert(k.as_str()) {
                        errs.push(duplicate(&path.child("annotations").key(k), k));
                    }
                }
            }
        }
        if p.patch_policy.is_none() {
            errs.push(required(&path.child("patchPolicy"), ""));
        }
    }

    if let Some(old) = old {
        errs.extend(validate_update(set, old));
    }
    errs
}

/// The synthetic pod's share of a sidecar container: core/v1 container rules (with the set's
/// volumes mountable), then the SidecarSet's own transferEnv rules.
fn validate_container(
    c: &SidecarContainer,
    path: &FieldPath,
    volumes: &HashSet<&str>,
    names: &mut HashSet<String>,
) -> ErrorList {
    let mut errs = super::pod::validate_container(&c.container, path, volumes, names);
    for (j, t) in c.sidecar.transfer_env.iter().flatten().enumerate() {
        let tp = path.child("transferEnv").index(j);
        if let Some(from) = &t.source_container_name_from {
            match &from.field_ref {
                None => errs.push(required(&tp.child("sourceContainerNameFrom").child("fieldRef"), "")),
                Some(f) => {
                    let fp = tp.child("sourceContainerNameFrom").child("fieldRef");
                    if f.api_version.as_deref().unwrap_or_default().is_empty() {
                        errs.push(required(&fp.child("apiVersion"), ""));
                    }
                    if f.field_path.is_empty() {
                        errs.push(required(&fp.child("fieldPath"), ""));
                    } else if !is_label_or_annotation_ref(&f.field_path) {
                        errs.push(invalid(
                            &fp.child("fieldPath"),
                            &f.field_path,
                            "only metadata.labels['<key>'] or metadata.annotations['<key>'] is supported",
                        ));
                    }
                }
            }
        }
    }
    errs
}

/// `metadata.labels['<key>']` or `metadata.annotations['<key>']`.
fn is_label_or_annotation_ref(path: &str) -> bool {
    ["metadata.labels['", "metadata.annotations['"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .is_some_and(|k| !k.is_empty() && !k.contains('\''))
    })
}

/// On update, sidecar containers may be removed but not added or renamed, and a container's
/// upgrade type is fixed.
fn validate_update(new: &SidecarSet, old: &SidecarSet) -> ErrorList {
    let mut errs = ErrorList::new();
    let path = FieldPath::new("spec").child("containers");
    let old_containers = old.spec.containers.as_deref().unwrap_or_default();
    for (i, c) in new.spec.containers.iter().flatten().enumerate() {
        let upgrade = |c: &SidecarContainer| c.sidecar.upgrade_strategy.as_ref().and_then(|u| u.upgrade_type);
        match old_containers.iter().find(|o| o.container.name == c.container.name) {
            None => errs.push(forbidden(
                &path.index(i).child("name"),
                &format!(
                    "container {} is not found in the old SidecarSet: containers cannot be added",
                    c.container.name
                ),
            )),
            Some(o)
                if upgrade(o).unwrap_or(SidecarContainerUpgradeType::ColdUpgrade)
                    != upgrade(c).unwrap_or(SidecarContainerUpgradeType::ColdUpgrade) =>
            {
                errs.push(forbidden(
                    &path.index(i).child("upgradeStrategy").child("upgradeType"),
                    "upgradeType is immutable",
                ))
            }
            Some(_) => {}
        }
    }
    errs
}

/// Whether two SidecarSets can select the same pod: their namespaces overlap (unless both name
/// a different one) and their selectors overlap as upstream judges it.
fn scopes_overlap(a: &SidecarSet, b: &SidecarSet) -> bool {
    let ns = |s: &SidecarSet| s.spec.namespace.clone().filter(|n| !n.is_empty());
    let namespaces = match (ns(a), ns(b)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    let selectors = match (&a.spec.selector, &b.spec.selector) {
        (Some(x), Some(y)) => crate::api::selector::overlapping(x, y),
        _ => false,
    };
    namespaces && selectors
}

/// Conflicts with the other SidecarSets that can select the same pods: the same container or
/// init container name, the same volume name with another definition, or the same annotation
/// patched by both where either overwrites. `others` may include `new` itself (skipped by name).
pub fn validate_sidecarset_conflicts(new: &SidecarSet, others: &[SidecarSet]) -> ErrorList {
    let spec = FieldPath::new("spec");
    let mut errs = ErrorList::new();
    let name = new.metadata.name.as_deref().unwrap_or_default();
    for other in others.iter().filter(|o| o.metadata.name.as_deref() != Some(name)) {
        if !scopes_overlap(new, other) {
            continue;
        }
        let other_name = other.metadata.name.as_deref().unwrap_or_default();
        for field in ["containers", "initContainers"] {
            let pick = |s: &SidecarSet| {
                if field == "containers" { s.spec.containers.clone() } else { s.spec.init_containers.clone() }
            };
            let theirs = pick(other).unwrap_or_default();
            for (i, c) in pick(new).unwrap_or_default().iter().enumerate() {
                if theirs.iter().any(|t| t.container.name == c.container.name) {
                    errs.push(invalid(
                        &spec.child(field).index(i).child("name"),
                        &c.container.name,
                        &format!("container {} already exist in {other_name}", c.container.name),
                    ));
                }
            }
        }
        for (i, v) in new.spec.volumes.iter().flatten().enumerate() {
            if other.spec.volumes.iter().flatten().any(|o| o.name == v.name && o != v) {
                errs.push(invalid(
                    &spec.child("volumes").index(i).child("name"),
                    &v.name,
                    &format!("volume {} is in conflict with sidecarset {other_name}", v.name),
                ));
            }
        }
        let patched = |s: &SidecarSet| -> Vec<(String, SidecarSetPatchPolicy)> {
            s.spec
                .patch_pod_metadata
                .iter()
                .flatten()
                .filter_map(|p| p.patch_policy.filter(|pol| *pol != SidecarSetPatchPolicy::Retain).map(|pol| (p, pol)))
                .flat_map(|(p, pol)| p.annotations.iter().flatten().map(move |(k, _)| (k.clone(), pol)))
                .collect()
        };
        let theirs = patched(other);
        for (key, pol) in patched(new) {
            let clash = theirs.iter().any(|(k, their_pol)| {
                *k == key && (pol == SidecarSetPatchPolicy::Overwrite || *their_pol == SidecarSetPatchPolicy::Overwrite)
            });
            if clash {
                errs.push(invalid(
                    &spec.child("patchPodMetadata"),
                    &key,
                    &format!("annotation {key} is in conflict with sidecarset {other_name}"),
                ));
            }
        }
    }
    errs
}

/// A pinned injection revision must exist among `revisions` (the Kruise namespace's).
pub fn validate_injection_revision(
    set: &SidecarSet,
    revisions: &[k8s_openapi::api::apps::v1::ControllerRevision],
) -> ErrorList {
    match set.pinned_revision(revisions) {
        Ok(_) => vec![],
        Err(reason) => {
            vec![invalid(&FieldPath::new("spec").child("injectionStrategy").child("revision"), "revision", &reason)]
        }
    }
}

/// Where the whitelist lives: ConfigMap `kruise-configuration` in the Kruise namespace, this key.
pub const PATCH_POD_METADATA_WHITELIST_KEY: &str = "SidecarSet_PatchPodMetadata_WhiteList";

#[derive(serde::Deserialize)]
struct Whitelist {
    #[serde(default)]
    rules: Vec<WhitelistRule>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WhitelistRule {
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    #[serde(default)]
    allowed_annotation_key_exprs: Vec<String>,
}

/// The annotation keys a SidecarSet patches must each match a regex of a whitelist rule that
/// applies to it (no selector, or a selector matching the set's labels). `whitelist` is the
/// ConfigMap value, if present; with `defaults_allowed` (gate
/// `SidecarSetPatchPodMetadataDefaultsAllowed`) a missing whitelist or rule allows any key.
pub fn validate_patch_pod_metadata_whitelist(
    set: &SidecarSet,
    whitelist: Option<&str>,
    defaults_allowed: bool,
) -> ErrorList {
    let path = FieldPath::new("spec").child("patchPodMetadata");
    let keys: Vec<&String> = set
        .spec
        .patch_pod_metadata
        .iter()
        .flatten()
        .flat_map(|p| p.annotations.iter().flatten().map(|(k, _)| k))
        .collect();
    if keys.is_empty() {
        return vec![];
    }
    let Some(text) = whitelist else {
        return if defaults_allowed {
            vec![]
        } else {
            vec![forbidden(&path, "SidecarSet patch pod metadata whitelist not found")]
        };
    };
    let parsed: Whitelist = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(e) => {
            return vec![invalid(
                &path,
                PATCH_POD_METADATA_WHITELIST_KEY,
                &format!("whitelist is not valid JSON: {e}"),
            )];
        }
    };
    let labels = set.metadata.labels.clone().unwrap_or_default();
    let mut exprs = Vec::new();
    for rule in &parsed.rules {
        if rule.selector.as_ref().is_some_and(|s| !crate::api::selector::matches(s, &labels)) {
            continue;
        }
        for e in &rule.allowed_annotation_key_exprs {
            match regex::Regex::new(e) {
                Ok(r) => exprs.push(r),
                Err(err) => return vec![invalid(&path, e, &format!("whitelist regex does not compile: {err}"))],
            }
        }
    }
    if exprs.is_empty() {
        return if defaults_allowed {
            vec![]
        } else {
            vec![forbidden(&path, "no whitelist rule applies to this SidecarSet's labels")]
        };
    }
    keys.into_iter()
        .filter(|k| !exprs.iter().any(|r| r.is_match(k)))
        .map(|k| forbidden(&path.key(k), &format!("annotation {k} is not allowed by the patch pod metadata whitelist")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sidecarset::{
        SidecarContainerFields, SidecarSetInjectionStrategy, SidecarSetPatchPodMetadata, SidecarSetSpec,
        SourceContainerNameSource, TransferEnvVar, UpdateScatterTerm,
    };
    use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Volume, VolumeMount};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn container(name: &str, image: &str) -> SidecarContainer {
        SidecarContainer {
            container: Container { name: name.into(), image: Some(image.into()), ..Default::default() },
            sidecar: SidecarContainerFields::default(),
        }
    }

    fn set() -> SidecarSet {
        SidecarSet::new(
            "logtail",
            SidecarSetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    ..Default::default()
                }),
                containers: Some(vec![container("logtail", "logtail:1.0")]),
                ..Default::default()
            },
        )
    }

    fn errors(s: &SidecarSet, old: Option<&SidecarSet>) -> Vec<String> {
        validate_sidecarset(s, old).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut s = set();
        s.spec.init_containers = Some(vec![container("init", "busybox")]);
        s.spec.patch_pod_metadata = Some(vec![SidecarSetPatchPodMetadata {
            annotations: Some(BTreeMap::from([("a".into(), "b".into())])),
            patch_policy: None,
        }]);
        default_sidecarset(&mut s);
        let st = s.spec.update_strategy.as_ref().unwrap();
        assert_eq!(st.type_, Some(SidecarSetUpdateStrategyType::RollingUpdate));
        assert_eq!(st.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(st.partition, Some(IntOrString::Int(0)));
        assert_eq!(s.spec.revision_history_limit, Some(10));
        let c = &s.spec.containers.as_ref().unwrap()[0];
        assert_eq!(c.sidecar.pod_inject_policy, Some(PodInjectPolicy::BeforeAppContainer));
        assert_eq!(
            c.sidecar.upgrade_strategy.as_ref().unwrap().upgrade_type,
            Some(SidecarContainerUpgradeType::ColdUpgrade)
        );
        assert_eq!(c.sidecar.share_volume_policy.as_ref().unwrap().type_, Some(ShareVolumePolicyType::Disabled));
        assert_eq!(c.container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.container.termination_message_path.as_deref(), Some("/dev/termination-log"));
        let init = &s.spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.sidecar.pod_inject_policy, None, "init containers get no sidecar defaults");
        assert_eq!(init.container.image_pull_policy.as_deref(), Some("Always"), "untagged means latest");
        assert_eq!(s.spec.patch_pod_metadata.as_ref().unwrap()[0].patch_policy, Some(SidecarSetPatchPolicy::Retain));
        assert!(errors(&s, None).is_empty(), "{:?}", errors(&s, None));
    }

    #[test]
    fn the_release_notes_layout_moves_under_revision() {
        let mut s = set();
        s.spec.injection_strategy =
            Some(SidecarSetInjectionStrategy { revision_name: Some("logtail-abc".into()), ..Default::default() });
        default_sidecarset(&mut s);
        let inj = s.spec.injection_strategy.as_ref().unwrap();
        assert_eq!(inj.revision_name, None);
        let rev = inj.revision.as_ref().unwrap();
        assert_eq!(rev.revision_name.as_deref(), Some("logtail-abc"));
        assert_eq!(rev.policy, Some(SidecarSetInjectRevisionPolicy::Always));
        assert!(errors(&s, None).is_empty());

        // Conflicting values stay where they are and are denied.
        let mut s = set();
        s.spec.injection_strategy = Some(SidecarSetInjectionStrategy {
            custom_version: Some("v1".into()),
            revision: Some(SidecarSetInjectRevision { custom_version: Some("v2".into()), ..Default::default() }),
            ..Default::default()
        });
        default_sidecarset(&mut s);
        assert_eq!(validate_sidecarset(&s, None)[0].field, "spec.injectionStrategy");
    }

    #[test]
    fn names_selectors_and_containers() {
        let mut s = set();
        s.metadata.name = Some("bad.name".into());
        s.spec.selector = Some(LabelSelector::default());
        s.spec.containers = None;
        assert_eq!(
            errors(&s, None),
            [
                "metadata.name: Invalid value: \"bad.name\": must match ^[a-zA-Z0-9\\-]+$ and have at most 63 characters",
                "spec.selector: Invalid value: \"{}\": empty selector is not valid for sidecarset",
                "spec.containers: Required value: no initContainers or containers defined for SidecarSet",
            ]
        );
        let mut s = set();
        s.spec.selector = None;
        assert_eq!(errors(&s, None), ["spec.selector: Required value: no selector defined for SidecarSet"]);
    }

    #[test]
    fn strategy_rules() {
        let mut s = set();
        s.spec.update_strategy = Some(SidecarSetUpdateStrategy {
            partition: Some(IntOrString::String("10".into())),
            max_unavailable: Some(IntOrString::Int(-1)),
            selector: Some(LabelSelector::default()),
            scatter_strategy: Some(vec![
                UpdateScatterTerm { key: "".into(), value: "a".into() },
                UpdateScatterTerm { key: "app".into(), value: "a".into() },
                UpdateScatterTerm { key: "app".into(), value: "a".into() },
            ]),
            ..Default::default()
        });
        let fields: Vec<String> = validate_sidecarset(&s, None).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.updateStrategy.selector",
                "spec.updateStrategy.partition",
                "spec.updateStrategy.maxUnavailable",
                "spec.updateStrategy.scatterStrategy[0].key",
                "spec.updateStrategy.scatterStrategy[2]",
            ]
        );
        // NotUpdate never touches pods, so its rollout fields are not checked.
        s.spec.update_strategy.as_mut().unwrap().type_ = Some(SidecarSetUpdateStrategyType::NotUpdate);
        assert!(errors(&s, None).is_empty());
    }

    #[test]
    fn container_rules() {
        let mut s = set();
        let mut c = container("logtail", "");
        c.container.volume_mounts =
            Some(vec![VolumeMount { name: "missing".into(), mount_path: "/x".into(), ..Default::default() }]);
        c.sidecar.transfer_env = Some(vec![TransferEnvVar {
            source_container_name_from: Some(SourceContainerNameSource {
                field_ref: Some(ObjectFieldSelector { api_version: None, field_path: "metadata.name".into() }),
            }),
            ..Default::default()
        }]);
        s.spec.containers = Some(vec![c, container("logtail", "x:1"), container("Bad_Name", "x:1")]);
        s.spec.volumes = Some(vec![Volume {
            name: "data".into(),
            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
            ..Default::default()
        }]);
        let fields: Vec<String> = validate_sidecarset(&s, None).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].image",
                "spec.containers[0].volumeMounts[0].name",
                "spec.containers[0].transferEnv[0].sourceContainerNameFrom.fieldRef.apiVersion",
                "spec.containers[0].transferEnv[0].sourceContainerNameFrom.fieldRef.fieldPath",
                "spec.containers[1].name",
                "spec.containers[2].name",
            ]
        );
        assert!(is_label_or_annotation_ref("metadata.labels['biz']"));
        assert!(is_label_or_annotation_ref("metadata.annotations['a.b/c']"));
        assert!(!is_label_or_annotation_ref("metadata.labels['']"));
        assert!(!is_label_or_annotation_ref("metadata.name"));
    }

    #[test]
    fn patch_pod_metadata_rules() {
        let mut s = set();
        let entry = |k: &str, p| SidecarSetPatchPodMetadata {
            annotations: Some(BTreeMap::from([(k.into(), "1".into())])),
            patch_policy: p,
        };
        s.spec.patch_pod_metadata = Some(vec![
            entry("a.io/x", Some(SidecarSetPatchPolicy::Overwrite)),
            entry("a.io/x", Some(SidecarSetPatchPolicy::Retain)),
            entry("b.io/y", None),
            SidecarSetPatchPodMetadata { annotations: None, patch_policy: Some(SidecarSetPatchPolicy::Retain) },
        ]);
        assert_eq!(
            errors(&s, None),
            [
                "spec.patchPodMetadata[1].annotations[a.io/x]: Duplicate value: \"a.io/x\"",
                "spec.patchPodMetadata[2].patchPolicy: Required value",
                "spec.patchPodMetadata[3].annotations: Required value",
            ]
        );
    }

    #[test]
    fn update_rules() {
        let old = set();
        let mut new = set();
        new.spec.containers.as_mut().unwrap().push(container("added", "x:1"));
        new.spec.containers.as_mut().unwrap()[0].sidecar.upgrade_strategy = Some(SidecarContainerUpgradeStrategy {
            upgrade_type: Some(SidecarContainerUpgradeType::HotUpgrade),
            hot_upgrade_empty_image: Some("empty:1".into()),
        });
        let fields: Vec<String> = validate_sidecarset(&new, Some(&old)).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.containers[0].upgradeStrategy.upgradeType", "spec.containers[1].name"]);
        // Removing a container is fine.
        let mut removed = set();
        removed.spec.containers = Some(vec![]);
        removed.spec.init_containers = Some(vec![container("init", "busybox:1")]);
        assert!(errors(&removed, Some(&old)).is_empty());
    }
}

#[cfg(test)]
mod conflict_tests {
    use super::*;
    use crate::api::sidecarset::{SidecarContainerFields, SidecarSetPatchPodMetadata, SidecarSetSpec};
    use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn set(name: &str, app: &str, container: &str) -> SidecarSet {
        SidecarSet::new(
            name,
            SidecarSetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), app.into())])),
                    ..Default::default()
                }),
                containers: Some(vec![SidecarContainer {
                    container: Container { name: container.into(), image: Some("x:1".into()), ..Default::default() },
                    sidecar: SidecarContainerFields::default(),
                }]),
                ..Default::default()
            },
        )
    }

    fn messages(new: &SidecarSet, others: &[SidecarSet]) -> Vec<String> {
        validate_sidecarset_conflicts(new, others).into_iter().map(|e| e.detail).collect()
    }

    #[test]
    fn containers_clash_only_where_scopes_overlap() {
        let new = set("a", "web", "proxy");
        assert_eq!(messages(&new, &[set("b", "web", "proxy")]), ["container proxy already exist in b"]);
        assert!(messages(&new, &[set("b", "db", "proxy")]).is_empty(), "disjoint selectors");
        assert!(messages(&new, std::slice::from_ref(&new)).is_empty(), "itself is skipped");
        let mut in_ns = new.clone();
        in_ns.spec.namespace = Some("ns1".into());
        let mut other = set("b", "web", "proxy");
        other.spec.namespace = Some("ns2".into());
        assert!(messages(&in_ns, &[other.clone()]).is_empty(), "different namespaces");
        other.spec.namespace = None;
        assert_eq!(messages(&in_ns, &[other]).len(), 1, "one set in every namespace overlaps");
    }

    #[test]
    fn volumes_and_annotations() {
        let vol = |medium: &str| Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource { medium: Some(medium.into()), ..Default::default() }),
            ..Default::default()
        };
        let patch = |pol| {
            Some(vec![SidecarSetPatchPodMetadata {
                annotations: Some(BTreeMap::from([("k".into(), "v".into())])),
                patch_policy: Some(pol),
            }])
        };
        let mut new = set("a", "web", "one");
        let mut other = set("b", "web", "two");
        new.spec.volumes = Some(vec![vol("")]);
        other.spec.volumes = Some(vec![vol("")]);
        assert!(messages(&new, &[other.clone()]).is_empty(), "the same volume may be shared");
        other.spec.volumes = Some(vec![vol("Memory")]);
        assert_eq!(messages(&new, &[other.clone()]), ["volume data is in conflict with sidecarset b"]);
        other.spec.volumes = None;

        new.spec.patch_pod_metadata = patch(SidecarSetPatchPolicy::MergePatchJson);
        other.spec.patch_pod_metadata = patch(SidecarSetPatchPolicy::MergePatchJson);
        assert!(messages(&new, &[other.clone()]).is_empty(), "two merges compose");
        other.spec.patch_pod_metadata = patch(SidecarSetPatchPolicy::Overwrite);
        assert_eq!(messages(&new, &[other.clone()]), ["annotation k is in conflict with sidecarset b"]);
        other.spec.patch_pod_metadata = patch(SidecarSetPatchPolicy::Retain);
        assert!(messages(&new, &[other]).is_empty(), "Retain never conflicts");
    }
}

#[cfg(test)]
mod whitelist_tests {
    use super::*;
    use crate::api::sidecarset::{SidecarSetPatchPodMetadata, SidecarSetSpec};
    use std::collections::BTreeMap;

    fn patching(key: &str, labelled: bool) -> SidecarSet {
        let mut s = SidecarSet::new(
            "s",
            SidecarSetSpec {
                patch_pod_metadata: Some(vec![SidecarSetPatchPodMetadata {
                    annotations: Some(BTreeMap::from([(key.into(), "1".into())])),
                    patch_policy: Some(SidecarSetPatchPolicy::Overwrite),
                }]),
                ..Default::default()
            },
        );
        if labelled {
            s.metadata.labels = Some(BTreeMap::from([("app".into(), "sidecar".into())]));
        }
        s
    }

    const WHITELIST: &str =
        r#"{"rules":[{"selector":{"matchLabels":{"app":"sidecar"}},"allowedAnnotationKeyExprs":["^oom-score$"]}]}"#;

    #[test]
    fn the_spec_scenario() {
        assert_eq!(
            validate_patch_pod_metadata_whitelist(&patching("oom-score", true), None, false).len(),
            1,
            "no whitelist, gate off"
        );
        assert!(validate_patch_pod_metadata_whitelist(&patching("oom-score", true), None, true).is_empty(), "gate on");
        assert!(validate_patch_pod_metadata_whitelist(&patching("oom-score", true), Some(WHITELIST), false).is_empty());
        let other = validate_patch_pod_metadata_whitelist(&patching("other", true), Some(WHITELIST), false);
        assert_eq!(other[0].field, "spec.patchPodMetadata[other]");
        assert_eq!(
            validate_patch_pod_metadata_whitelist(&patching("oom-score", false), Some(WHITELIST), false).len(),
            1,
            "unlabelled"
        );
    }

    #[test]
    fn bad_whitelists_are_errors_not_panics() {
        assert_eq!(validate_patch_pod_metadata_whitelist(&patching("k", true), Some("{"), false).len(), 1);
        let bad_regex = r#"{"rules":[{"allowedAnnotationKeyExprs":["(unclosed"]}]}"#;
        assert_eq!(validate_patch_pod_metadata_whitelist(&patching("k", true), Some(bad_regex), false).len(), 1);
        let unanchored = r#"{"rules":[{"allowedAnnotationKeyExprs":["score"]}]}"#;
        assert!(
            validate_patch_pod_metadata_whitelist(&patching("oom-score-adj", true), Some(unanchored), false).is_empty()
        );
    }
}

#[cfg(test)]
mod revision_tests {
    use super::*;
    use crate::api::sidecarset::{
        SIDECARSET_CUSTOM_VERSION_LABEL, SIDECARSET_NAME_LABEL, SidecarSetInjectionStrategy, SidecarSetSpec,
    };
    use k8s_openapi::api::apps::v1::ControllerRevision;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn revision(name: &str, set: &str, version: &str, number: i64) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    (SIDECARSET_NAME_LABEL.to_string(), set.to_string()),
                    (SIDECARSET_CUSTOM_VERSION_LABEL.to_string(), version.to_string()),
                ])),
                ..Default::default()
            },
            revision: number,
            data: None,
        }
    }

    fn pinned(name: Option<&str>, version: Option<&str>) -> SidecarSet {
        SidecarSet::new(
            "agent",
            SidecarSetSpec {
                injection_strategy: Some(SidecarSetInjectionStrategy {
                    revision: Some(SidecarSetInjectRevision {
                        revision_name: name.map(String::from),
                        custom_version: version.map(String::from),
                        policy: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn finds_the_pinned_revision() {
        let revs = [
            revision("agent-a", "agent", "v1", 1),
            revision("agent-b", "agent", "v2", 2),
            revision("agent-c", "agent", "v2", 3),
            revision("other-x", "other", "v2", 9),
        ];
        let found = |s: &SidecarSet| s.pinned_revision(&revs).map(|r| r.and_then(|r| r.metadata.name.clone()));
        assert_eq!(found(&pinned(Some("agent-a"), None)), Ok(Some("agent-a".into())));
        assert_eq!(found(&pinned(None, Some("v2"))), Ok(Some("agent-c".into())), "the newest with that version");
        assert!(found(&pinned(Some("other-x"), None)).is_err(), "another set's revision does not count");
        assert!(found(&pinned(None, Some("v9"))).is_err());
        assert_eq!(found(&SidecarSet::new("agent", SidecarSetSpec::default())), Ok(None));
        assert_eq!(
            validate_injection_revision(&pinned(None, Some("v9")), &revs)[0].field,
            "spec.injectionStrategy.revision"
        );
        assert!(validate_injection_revision(&pinned(None, Some("v1")), &revs).is_empty());
    }
}
