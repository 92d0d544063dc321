//! The replica's cache of one watched resource type: trimmed objects of the shards it holds.
//!
//! Reconcilers read from it instead of the API server. Memory stays bounded by what the replica
//! owns: objects are trimmed before they are kept (no `managedFields`, no last-applied
//! annotation, nothing a [`Trim`] says no controller reads), objects of shards given up are
//! forgotten, and the store tells replayed events (same resourceVersion) from real changes so a
//! re-list after a broken watch reconciles only what changed, including what was deleted while
//! the watch was down. A re-list arrives page by page: each object is applied as it comes and the
//! keys seen are kept, so nothing holds a whole untrimmed list.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::api::DynamicObject;

/// `kubectl apply`'s copy of the whole object: large, and never read by a controller.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What of an object no controller of this replica reads, so the store need not keep it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trim {
    /// Paths into the object's JSON besides `metadata` (e.g. `["data"]`, `["spec", "volumes"]`).
    pub drop: &'static [&'static [&'static str]],
}

impl Trim {
    pub fn apply(&self, o: &mut DynamicObject) {
        o.metadata.managed_fields = None;
        if let Some(a) = o.metadata.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
        for path in self.drop {
            if let Some((last, parents)) = path.split_last() {
                let mut node = Some(&mut o.data);
                for p in parents {
                    node = node.and_then(|n| n.get_mut(*p));
                }
                if let Some(serde_json::Value::Object(m)) = node {
                    m.remove(*last);
                }
            }
        }
    }
}

/// An object's place in the store.
pub type ObjectKey = (String, String);

/// The store key of `o`: its namespace (empty for cluster-scoped objects) and name.
pub fn key_of(o: &DynamicObject) -> ObjectKey {
    (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default())
}

fn same_version(old: &DynamicObject, new: &DynamicObject) -> bool {
    old.metadata.resource_version.is_some() && old.metadata.resource_version == new.metadata.resource_version
}

/// Shared by the WatchHub (the only writer) and the reconcilers (readers).
#[derive(Clone, Default)]
pub struct ObjectStore {
    objects: Arc<RwLock<HashMap<ObjectKey, Arc<DynamicObject>>>>,
}

impl ObjectStore {
    // A panic while holding the lock cannot leave the map half-written (every write is one
    // insert or remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<ObjectKey, Arc<DynamicObject>>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ObjectKey, Arc<DynamicObject>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.read().get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every object of `namespace`, e.g. the pods a workload selects.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<DynamicObject>> {
        self.read().iter().filter(|((ns, _), _)| ns == namespace).map(|(_, o)| o.clone()).collect()
    }

    /// Every object here.
    pub fn all(&self) -> Vec<Arc<DynamicObject>> {
        self.read().values().cloned().collect()
    }

    /// The namespaces with objects here, each once.
    pub fn namespaces(&self) -> std::collections::BTreeSet<String> {
        self.read().keys().map(|(ns, _)| ns.clone()).collect()
    }

    /// Keeps `o`. False when the store already had this version: a replayed event, nothing to do.
    pub fn apply(&self, o: DynamicObject) -> bool {
        let key = key_of(&o);
        let mut objects = self.write();
        let unchanged = objects.get(&key).is_some_and(|old| same_version(old, &o));
        if !unchanged {
            objects.insert(key, Arc::new(o));
        }
        !unchanged
    }

    /// Forgets an object; true if it was there.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        self.write().remove(&(namespace.to_string(), name.to_string())).is_some()
    }

    /// Ends a re-list: forgets the objects of the namespaces `in_scope` accepts that the list
    /// did not have (`seen`), deleted while the watch was down, and returns their keys.
    pub fn remove_unseen(&self, seen: &HashSet<ObjectKey>, in_scope: impl Fn(&str) -> bool) -> Vec<ObjectKey> {
        let mut vanished = Vec::new();
        self.write().retain(|key, _| {
            let gone = in_scope(&key.0) && !seen.contains(key);
            if gone {
                vanished.push(key.clone());
            }
            !gone
        });
        vanished.sort();
        vanished
    }

    /// Forgets every object of the namespaces `keep` rejects (shards this replica gave up).
    pub fn retain_namespaces(&self, keep: impl Fn(&str) -> bool) {
        self.write().retain(|(ns, _), _| keep(ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(ns: &str, name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "namespace": ns, "name": name, "resourceVersion": rv },
        }))
        .unwrap()
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        (ns.to_string(), name.to_string())
    }

    #[test]
    fn trimming_drops_what_no_controller_reads_and_keeps_the_rest() {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "namespace": "a", "name": "p", "labels": { "app": "x" },
                "annotations": { LAST_APPLIED: "{...}", "keep": "me" },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
            },
            "spec": { "containers": [{ "name": "c" }], "volumes": [{ "name": "v" }] },
            "status": { "phase": "Running" },
        }))
        .unwrap();
        Trim { drop: &[&["spec", "volumes"], &["status", "missing", "deeper"], &["nothing"]] }.apply(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(o.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert_eq!(o.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("x"));
        assert_eq!(o.data, json!({ "spec": { "containers": [{ "name": "c" }] }, "status": { "phase": "Running" } }));
    }

    #[test]
    fn a_replayed_version_is_not_a_change() {
        let s = ObjectStore::default();
        assert!(s.apply(obj("a", "x", "1")));
        assert!(!s.apply(obj("a", "x", "1")), "the same resourceVersion again is a replay");
        assert!(s.apply(obj("a", "x", "2")));
        assert_eq!(s.get("a", "x").and_then(|o| o.metadata.resource_version.clone()).as_deref(), Some("2"));
        assert!(s.delete("a", "x"));
        assert!(!s.delete("a", "x"));
        assert!(s.is_empty());
    }

    #[test]
    fn a_relist_reports_changes_and_objects_deleted_while_the_watch_was_down() {
        let s = ObjectStore::default();
        for o in [obj("a", "same", "1"), obj("a", "edited", "1"), obj("a", "deleted", "1"), obj("z", "other", "1")] {
            s.apply(o);
        }
        let mut seen = HashSet::new();
        let mut changed = Vec::new();
        for o in [obj("a", "same", "1"), obj("a", "edited", "5"), obj("a", "new", "6")] {
            seen.insert(key_of(&o));
            let k = key_of(&o);
            if s.apply(o) {
                changed.push(k);
            }
        }
        assert_eq!(changed, vec![key("a", "edited"), key("a", "new")]);
        // Namespace z is in a shard this list did not cover: its objects must stay.
        assert_eq!(s.remove_unseen(&seen, |ns| ns == "a"), vec![key("a", "deleted")]);
        assert_eq!(s.len(), 4);
        assert!(s.get("z", "other").is_some());
        assert_eq!(s.in_namespace("a").len(), 3);
    }

    #[test]
    fn objects_of_shards_given_up_are_forgotten() {
        let s = ObjectStore::default();
        s.apply(obj("a", "x", "1"));
        s.apply(obj("b", "y", "1"));
        s.retain_namespaces(|ns| ns == "b");
        assert!(s.get("a", "x").is_none());
        assert!(s.get("b", "y").is_some());
    }
}
