//! SidecarSet revision history (pure): the ControllerRevision a set's injection-relevant fields
//! make, how it is named and hashed (as upstream, so revisions written by OpenKruise are
//! recognised), and what to create, renumber and prune given the revisions that exist.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use super::hash::{go_escape_html, safe_encode};
use crate::api::sidecarset::{SIDECARSET_CUSTOM_VERSION_LABEL, SIDECARSET_NAME_LABEL, SidecarSet};

/// Label upstream (and Kubernetes) put on revisions: the revision's hash.
pub const CONTROLLER_REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// Kubernetes' limit on the name part before `-<hash>`.
const NAME_PREFIX_MAX: usize = 223;

/// The revision data: the injection-relevant fields, absent ones as `null`.
pub fn revision_data(set: &SidecarSet) -> Value {
    let spec = serde_json::to_value(&set.spec).unwrap_or(Value::Null);
    let field = |k: &str| spec.get(k).cloned().unwrap_or(Value::Null);
    json!({ "spec": {
        "containers": field("containers"),
        "imagePullSecrets": field("imagePullSecrets"),
        "initContainers": field("initContainers"),
        "patchPodMetadata": field("patchPodMetadata"),
        "volumes": field("volumes"),
    } })
}

/// The bytes upstream stores and compares: Go's JSON of a generic map (keys sorted, HTML
/// characters escaped).
pub fn revision_bytes(data: &Value) -> String {
    go_escape_html(&data.to_string())
}

/// FNV-1 (not 1a), 32 bits.
fn fnv1_32(chunks: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for chunk in chunks {
        for b in *chunk {
            h = h.wrapping_mul(0x0100_0193);
            h ^= u32::from(*b);
        }
    }
    h
}

/// Kubernetes' `HashControllerRevision`: FNV-1 over the data, then over the collision count's
/// decimal digits when there is one, as a decimal number passed through `safe_encode`.
pub fn revision_hash(bytes: &str, collision_count: Option<i32>) -> String {
    let count = collision_count.map(|c| c.to_string()).unwrap_or_default();
    safe_encode(&fnv1_32(&[bytes.as_bytes(), count.as_bytes()]).to_string())
}

/// `<set name, at most 223 characters>-<hash>`.
pub fn revision_name(set_name: &str, hash: &str) -> String {
    let prefix: String = set_name.chars().take(NAME_PREFIX_MAX).collect();
    format!("{prefix}-{hash}")
}

/// What keeping the history needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RevisionPlan {
    /// A new revision to create.
    pub create: Option<ControllerRevision>,
    /// An older revision equal to the current spec becomes the newest: (name, new `.revision`).
    pub renumber: Option<(String, i64)>,
    /// Revisions beyond the history limit, oldest first.
    pub delete: Vec<String>,
    /// Revisions still over the limit because they are in use (logged, never deleted).
    pub kept_in_use: usize,
    /// The revision pods get now (`status.latestRevision`).
    pub latest_revision: String,
    pub collision_count: i32,
}

fn data_of(r: &ControllerRevision) -> Option<String> {
    r.data.as_ref().map(|d| revision_bytes(&d.0))
}

/// The history step for `set` given its existing revisions (in the Kruise namespace, labelled
/// with the set's name) and the revisions its matched pods record (`in_use`).
pub fn plan_revisions(
    set: &SidecarSet,
    existing: &[ControllerRevision],
    namespace: &str,
    in_use: &BTreeSet<String>,
) -> RevisionPlan {
    let name = set.metadata.name.clone().unwrap_or_default();
    let data = revision_data(set);
    let bytes = revision_bytes(&data);
    let mut collision_count = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let newest = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut plan = RevisionPlan::default();

    let equal = existing.iter().filter(|r| data_of(r).as_deref() == Some(bytes.as_str())).max_by_key(|r| r.revision);
    let mut kept: Vec<(String, i64)> =
        existing.iter().map(|r| (r.metadata.name.clone().unwrap_or_default(), r.revision)).collect();
    match equal {
        Some(r) => {
            let rname = r.metadata.name.clone().unwrap_or_default();
            if r.revision < newest {
                plan.renumber = Some((rname.clone(), newest + 1));
                if let Some(k) = kept.iter_mut().find(|(n, _)| *n == rname) {
                    k.1 = newest + 1;
                }
            }
            plan.latest_revision = rname;
        }
        None => {
            // A name taken by different data is a hash collision: count it and hash again.
            let mut hash = revision_hash(&bytes, Some(collision_count).filter(|c| *c > 0));
            while existing.iter().any(|r| r.metadata.name.as_deref() == Some(revision_name(&name, &hash).as_str())) {
                collision_count += 1;
                hash = revision_hash(&bytes, Some(collision_count));
            }
            let rname = revision_name(&name, &hash);
            let mut labels = set.metadata.labels.clone().unwrap_or_default();
            labels.insert(SIDECARSET_NAME_LABEL.into(), name.clone());
            labels.insert(CONTROLLER_REVISION_HASH_LABEL.into(), hash.clone());
            let owner = OwnerReference {
                api_version: "apps.kruise.io/v1alpha1".into(),
                kind: "SidecarSet".into(),
                name: name.clone(),
                uid: set.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            };
            plan.create = Some(ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(rname.clone()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(labels),
                    annotations: set.metadata.annotations.clone(),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                data: Some(RawExtension(data)),
                revision: newest + 1,
            });
            kept.push((rname.clone(), newest + 1));
            plan.latest_revision = rname;
        }
    }
    plan.collision_count = collision_count;

    // Keep the newest `revisionHistoryLimit`, oldest deleted first. Never deleted: the current
    // one, those pods record, the one pinned by name, and the newest with the pinned custom
    // version (new pods would fail without it).
    let limit = usize::try_from(set.spec.revision_history_limit.unwrap_or(10).max(1)).unwrap_or(10);
    kept.sort_by_key(|(_, r)| *r);
    let pinned = set.spec.injection_strategy.as_ref().and_then(|i| i.revision.as_ref());
    let pinned_name = pinned.and_then(|p| p.revision_name.clone());
    let pinned_version = pinned.and_then(|p| p.custom_version.clone()).and_then(|v| {
        existing
            .iter()
            .filter(|r| r.metadata.labels.as_ref().and_then(|l| l.get(SIDECARSET_CUSTOM_VERSION_LABEL)) == Some(&v))
            .max_by_key(|r| r.revision)
            .and_then(|r| r.metadata.name.clone())
    });
    let protected = |n: &String| {
        *n == plan.latest_revision
            || in_use.contains(n)
            || pinned_name.as_ref() == Some(n)
            || pinned_version.as_ref() == Some(n)
    };
    let mut excess = kept.len().saturating_sub(limit);
    for (n, _) in &kept {
        if excess == 0 {
            break;
        }
        if !protected(n) {
            plan.delete.push(n.clone());
            excess -= 1;
        }
    }
    plan.kept_in_use = excess;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with_secret(secret: &str) -> SidecarSet {
        let mut s: SidecarSet = serde_json::from_value(json!({
            "metadata": { "name": "test-sidecarset", "uid": "u-1", "labels": { "app": "x" } },
            "spec": {
                "selector": { "matchLabels": { "app": "x" } },
                "containers": [{ "name": "c", "image": "nginx:1.0" }],
                "imagePullSecrets": [{ "name": secret }]
            }
        }))
        .unwrap();
        crate::api::validation::sidecarset::default_sidecarset(&mut s);
        s
    }

    /// Applies a plan to a list of revisions, as the controller's writes would.
    fn apply(mut revisions: Vec<ControllerRevision>, plan: &RevisionPlan) -> Vec<ControllerRevision> {
        if let Some(c) = &plan.create {
            revisions.push(c.clone());
        }
        if let Some((name, n)) = &plan.renumber {
            for r in revisions.iter_mut().filter(|r| r.metadata.name.as_ref() == Some(name)) {
                r.revision = *n;
            }
        }
        revisions.retain(|r| !plan.delete.contains(r.metadata.name.as_ref().unwrap()));
        revisions
    }

    #[test]
    fn fnv1_is_not_fnv1a() {
        assert_eq!(fnv1_32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1_32(&[b"a"]), 0x050c_5d7e, "FNV-1 of 'a' (FNV-1a would be 0xe40c292c)");
        assert_eq!(fnv1_32(&[b"ab", b"c"]), fnv1_32(&[b"abc"]));
    }

    #[test]
    fn a_new_set_gets_one_labelled_owned_revision() {
        let set = set_with_secret("secret-1");
        let plan = plan_revisions(&set, &[], "kruise-system", &BTreeSet::new());
        let r = plan.create.as_ref().expect("a revision");
        let hash = revision_hash(&revision_bytes(&revision_data(&set)), None);
        assert_eq!(r.metadata.name.as_deref(), Some(format!("test-sidecarset-{hash}").as_str()));
        let labels = r.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SIDECARSET_NAME_LABEL], "test-sidecarset");
        assert_eq!(labels[CONTROLLER_REVISION_HASH_LABEL], hash);
        assert_eq!(labels["app"], "x", "the set's labels are copied");
        let owner = &r.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("SidecarSet", "u-1", Some(true)));
        let keys: Vec<&String> = r.data.as_ref().unwrap().0["spec"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["containers", "imagePullSecrets", "initContainers", "patchPodMetadata", "volumes"]);
        assert_eq!(r.data.as_ref().unwrap().0["spec"]["volumes"], Value::Null);
        assert_eq!(
            (r.revision, plan.latest_revision.as_str(), plan.collision_count),
            (1, r.metadata.name.as_deref().unwrap(), 0)
        );
        // Nothing more to do once it exists.
        let again = plan_revisions(&set, &apply(vec![], &plan), "kruise-system", &BTreeSet::new());
        assert_eq!((again.create, again.renumber, again.delete.len()), (None, None, 0));
    }

    #[test]
    fn history_is_capped_and_returning_to_an_old_spec_renumbers_it() {
        let mut revisions = Vec::new();
        for i in 1..=15 {
            let plan =
                plan_revisions(&set_with_secret(&format!("secret-{i}")), &revisions, "kruise-system", &BTreeSet::new());
            revisions = apply(revisions, &plan);
        }
        let mut numbers: Vec<i64> = revisions.iter().map(|r| r.revision).collect();
        numbers.sort();
        assert_eq!(numbers, (6..=15).collect::<Vec<_>>(), "10 kept, the newest ones");

        let plan = plan_revisions(&set_with_secret("secret-12"), &revisions, "kruise-system", &BTreeSet::new());
        assert!(plan.create.is_none(), "no new object for a spec seen before");
        let (name, n) = plan.renumber.clone().expect("renumbered");
        assert_eq!(n, 16);
        assert_eq!(plan.latest_revision, name);
        revisions = apply(revisions, &plan);
        let mut numbers: Vec<i64> = revisions.iter().map(|r| r.revision).collect();
        numbers.sort();
        assert_eq!(numbers, [6, 7, 8, 9, 10, 11, 13, 14, 15, 16]);
    }

    #[test]
    fn a_taken_name_with_other_data_is_a_collision() {
        let set = set_with_secret("secret-1");
        let mut squatter = plan_revisions(&set, &[], "kruise-system", &BTreeSet::new()).create.unwrap();
        squatter.data = Some(RawExtension(json!({ "spec": { "containers": [] } })));
        let plan = plan_revisions(&set, std::slice::from_ref(&squatter), "kruise-system", &BTreeSet::new());
        assert_eq!(plan.collision_count, 1);
        let created = plan.create.expect("created under another name");
        assert_ne!(created.metadata.name, squatter.metadata.name);
        assert_eq!(created.revision, 2);
    }

    /// Spec scenario 36: 15 revisions, limit 10, pods referencing k old ones.
    #[test]
    fn revisions_in_use_survive_truncation() {
        let mut revisions = Vec::new();
        for i in 1..=15 {
            // No truncation while building: everything is in use.
            let all: BTreeSet<String> =
                revisions.iter().filter_map(|r: &ControllerRevision| r.metadata.name.clone()).collect();
            let plan = plan_revisions(&set_with_secret(&format!("secret-{i}")), &revisions, "kruise-system", &all);
            revisions = apply(revisions, &plan);
        }
        assert_eq!(revisions.len(), 15);
        let mut by_number = revisions.clone();
        by_number.sort_by_key(|r| r.revision);
        let name = |r: &ControllerRevision| r.metadata.name.clone().unwrap();
        let current = set_with_secret("secret-15");
        for k in [0usize, 3, 9, 10] {
            let in_use: BTreeSet<String> = by_number.iter().take(k).map(name).collect();
            let plan = plan_revisions(&current, &revisions, "kruise-system", &in_use);
            let left = apply(revisions.clone(), &plan);
            let want = if k <= 9 { 10 } else { 11 };
            assert_eq!(left.len(), want, "k = {k}");
            assert!(in_use.iter().all(|n| left.iter().any(|r| r.metadata.name.as_ref() == Some(n))), "k = {k}");
            assert!(left.iter().any(|r| r.revision == 15), "the newest is never deleted");
            assert_eq!(plan.kept_in_use, want - 10);
        }
        // A revision pinned by name is kept as well.
        let mut pinned = current.clone();
        pinned.spec.injection_strategy =
            Some(serde_json::from_value(json!({"revision": {"revisionName": name(&by_number[0])}})).unwrap());
        let plan = plan_revisions(&pinned, &revisions, "kruise-system", &BTreeSet::new());
        assert!(!plan.delete.contains(&name(&by_number[0])));
        assert_eq!(plan.delete.len(), 5);
    }

    #[test]
    fn long_names_are_cut_before_the_hash() {
        let long = "x".repeat(300);
        assert_eq!(revision_name(&long, "abc").len(), 223 + 4);
    }
}
