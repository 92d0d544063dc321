//! Coalescing JSON merge patches (RFC 7386): two patches for the same object, queued behind the
//! rate limiter, become one request with the same effect as sending both in order.

use serde_json::{Map, Value};

/// Applies merge patch `patch` to `target` (RFC 7386).
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                apply(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge-patch object turning map `old` into `new`: changed and added keys set, removed ones
/// null (empty when they are equal).
pub fn diff_maps<V: serde::Serialize + PartialEq>(
    old: &std::collections::BTreeMap<String, V>,
    new: &std::collections::BTreeMap<String, V>,
) -> Map<String, Value> {
    let mut diff = Map::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            diff.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        diff.insert(k.clone(), Value::Null);
    }
    diff
}

/// One merge patch with the effect of `first` then `second`, or `None` when no single merge patch
/// has it: `first` deletes a key (null) that `second` sets to an object, which as one patch would
/// merge into the old value instead of replacing it. Then the two must be sent separately.
///
/// Nor does one exist for a patch guarded by `metadata.resourceVersion`: each was computed from
/// the version it names, and folded together the later one's changes would land without the check
/// that guards them (overwriting what the earlier one added, where sent apart it would get 409).
pub fn compose(first: &Value, second: &Value) -> Option<Value> {
    if is_guarded(first) || is_guarded(second) {
        return None;
    }
    let (Value::Object(a), Value::Object(b)) = (first, second) else {
        // A non-object patch replaces the whole target, so the later one wins.
        return Some(second.clone());
    };
    let mut out = a.clone();
    for (k, v2) in b {
        let merged = match (a.get(k), v2) {
            (Some(Value::Null), Value::Object(_)) => return None,
            (Some(v1 @ Value::Object(_)), Value::Object(_)) => compose(v1, v2)?,
            _ => v2.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Some(Value::Object(out))
}

/// Whether `patch` only applies to the resourceVersion it names.
fn is_guarded(patch: &Value) -> bool {
    patch.pointer("/metadata/resourceVersion").is_some_and(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `compose` must equal applying both in order, on any document.
    fn check(doc: Value, p1: Value, p2: Value) {
        let mut sequential = doc.clone();
        apply(&mut sequential, &p1);
        apply(&mut sequential, &p2);
        let composed = compose(&p1, &p2).expect("composable");
        let mut once = doc;
        apply(&mut once, &composed);
        assert_eq!(once, sequential, "compose({p1}, {p2}) = {composed}");
    }

    #[test]
    fn rfc7386_examples() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        apply(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        apply(&mut doc, &json!({"a": [3]}));
        assert_eq!(doc, json!({"a": [3]}), "arrays are replaced");
    }

    #[test]
    fn composition_equals_sequential_application() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}}, "spec": {"n": 1}});
        check(doc.clone(), json!({"metadata": {"labels": {"a": "3"}}}), json!({"metadata": {"labels": {"b": null}}}));
        check(doc.clone(), json!({"spec": {"n": 2}}), json!({"spec": {"n": 3}}));
        check(doc.clone(), json!({"metadata": {"annotations": null}}), json!({"metadata": {"labels": {"c": "4"}}}));
        check(doc.clone(), json!({"spec": {"list": [1]}}), json!({"spec": {"list": [2, 3]}}));
        check(doc.clone(), json!({"spec": {"n": {"deep": 1}}}), json!({"spec": {"n": 5}}));
        check(doc, json!({"spec": null}), json!({"spec": "scalar"}));
    }

    #[test]
    fn a_delete_then_an_object_is_not_composable() {
        // As one patch, {"a": {"b": 1}} would keep a's other fields; in order they are gone.
        assert_eq!(compose(&json!({"a": null}), &json!({"a": {"b": 1}})), None);
        assert_eq!(compose(&json!({"x": {"a": null}}), &json!({"x": {"a": {"b": 1}}})), None);
    }

    #[test]
    fn a_map_diff_turns_the_old_map_into_the_new() {
        let old: std::collections::BTreeMap<String, i32> = [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)].into();
        let new: std::collections::BTreeMap<String, i32> = [("a".into(), 1), ("b".into(), 5), ("d".into(), 4)].into();
        let diff = Value::Object(diff_maps(&old, &new));
        assert_eq!(diff, json!({"b": 5, "c": null, "d": 4}));
        let mut doc = serde_json::to_value(&old).unwrap();
        apply(&mut doc, &diff);
        assert_eq!(doc, serde_json::to_value(&new).unwrap());
        assert!(diff_maps(&new, &new).is_empty());
    }

    #[test]
    fn patches_guarded_by_a_resource_version_never_fold() {
        let guarded =
            |tag: &str| json!({"metadata": {"resourceVersion": "7"}, "spec": {"images": {"x": {"tags": [tag]}}}});
        assert_eq!(compose(&guarded("a"), &guarded("b")), None, "b would silently replace a");
        assert_eq!(compose(&json!({"spec": {"n": 1}}), &guarded("b")), None);
        assert_eq!(compose(&guarded("a"), &json!({"spec": {"n": 1}})), None);
        let unguarded = json!({"metadata": {"resourceVersion": null}, "spec": {"n": 1}});
        assert!(compose(&unguarded, &json!({"spec": {"m": 2}})).is_some());
    }

    #[test]
    fn many_small_patches_fold_into_one() {
        let patches: Vec<Value> =
            (0..100).map(|i| json!({"status": {"observed": i, format!("k{}", i % 3): i}})).collect();
        let folded = patches.iter().skip(1).try_fold(patches[0].clone(), |acc, p| compose(&acc, p)).unwrap();
        assert_eq!(folded, json!({"status": {"observed": 99, "k0": 99, "k1": 97, "k2": 98}}));
    }
}
