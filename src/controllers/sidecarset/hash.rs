//! The SidecarSet hashes upstream writes on sets and injected pods (`kruise.io/sidecarset-hash`,
//! `kruise.io/sidecarset-hash-without-image`). They must be byte-compatible: a pod injected by
//! OpenKruise must look up to date to kruise-rs after a migration. Upstream hashes Go's
//! `encoding/json` output, so this module re-creates it: struct fields in Go declaration order,
//! `omitempty` dropping empty values, non-pointer structs kept as `{}`, map keys sorted, HTML
//! characters escaped.
//!
//! Field orders are known for Container, the SidecarSet additions and the common nested types;
//! other nested objects fall back to sorted keys (Go's order for maps, not always for structs).

use serde_json::Value;

use crate::api::sidecarset::{SidecarContainer, SidecarSet};

/// A Go struct: its JSON fields in declaration order, and which of them Go always emits.
struct GoStruct {
    fields: &'static [(&'static str, Kind)],
}

#[derive(Clone, Copy)]
enum Kind {
    /// `omitempty` scalar, slice or map: left out when empty (false, 0, "", [], {}).
    Plain,
    /// Emitted even when empty (no `omitempty`, e.g. `containerPort`).
    Always,
    /// A non-pointer struct: emitted, as `{}` when it has nothing (e.g. `resources`).
    Struct(&'static GoStruct),
    /// A pointer to a struct, or a slice of structs: left out when absent.
    Nested(&'static GoStruct),
}

use Kind::{Always, Nested, Plain, Struct};

static ENV_VAR: GoStruct = GoStruct { fields: &[("name", Always), ("value", Plain), ("valueFrom", Plain)] };
static CONTAINER_PORT: GoStruct = GoStruct {
    fields: &[("name", Plain), ("hostPort", Plain), ("containerPort", Always), ("protocol", Plain), ("hostIP", Plain)],
};
static VOLUME_MOUNT: GoStruct = GoStruct {
    fields: &[
        ("name", Always),
        ("readOnly", Plain),
        ("recursiveReadOnly", Plain),
        ("mountPath", Always),
        ("subPath", Plain),
        ("mountPropagation", Plain),
        ("subPathExpr", Plain),
    ],
};
static RESOURCES: GoStruct = GoStruct { fields: &[("limits", Plain), ("requests", Plain), ("claims", Plain)] };
static UPGRADE_STRATEGY: GoStruct = GoStruct { fields: &[("upgradeType", Plain), ("hotUpgradeEmptyImage", Plain)] };
static SHARE_VOLUME_POLICY: GoStruct = GoStruct { fields: &[("type", Plain)] };
static TRANSFER_ENV: GoStruct = GoStruct {
    fields: &[
        ("sourceContainerName", Plain),
        ("sourceContainerNameFrom", Plain),
        ("envName", Plain),
        ("envNames", Plain),
    ],
};

/// A SidecarContainer: Go's Container fields, then the SidecarSet's.
static SIDECAR_CONTAINER: GoStruct = GoStruct {
    fields: &[
        ("name", Always),
        ("image", Plain),
        ("command", Plain),
        ("args", Plain),
        ("workingDir", Plain),
        ("ports", Nested(&CONTAINER_PORT)),
        ("envFrom", Plain),
        ("env", Nested(&ENV_VAR)),
        ("resources", Struct(&RESOURCES)),
        ("resizePolicy", Plain),
        ("restartPolicy", Plain),
        ("volumeMounts", Nested(&VOLUME_MOUNT)),
        ("volumeDevices", Plain),
        ("livenessProbe", Plain),
        ("readinessProbe", Plain),
        ("startupProbe", Plain),
        ("lifecycle", Plain),
        ("terminationMessagePath", Plain),
        ("terminationMessagePolicy", Plain),
        ("imagePullPolicy", Plain),
        ("securityContext", Plain),
        ("stdin", Plain),
        ("stdinOnce", Plain),
        ("tty", Plain),
        ("podInjectPolicy", Plain),
        ("upgradeStrategy", Struct(&UPGRADE_STRATEGY)),
        ("shareVolumePolicy", Struct(&SHARE_VOLUME_POLICY)),
        ("transferEnv", Nested(&TRANSFER_ENV)),
    ],
};

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// JSON text with the characters Go's encoder escapes escaped: `<`, `>`, `&`, U+2028, U+2029.
/// (They only ever appear inside strings, so this is safe on whole documents.)
pub fn go_escape_html(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Writes `s` as a Go JSON string.
fn go_string(out: &mut String, s: &str) {
    out.push_str(&go_escape_html(&serde_json::to_string(s).unwrap_or_default()));
}

/// A value of unknown Go type: maps (and structs without a known order) with sorted keys.
fn go_any(out: &mut String, v: &Value) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(out, k);
                out.push(':');
                go_any(out, &o[k.as_str()]);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_any(out, x);
            }
            out.push(']');
        }
        Value::String(s) => go_string(out, s),
        other => out.push_str(&other.to_string()),
    }
}

fn go_struct(out: &mut String, t: &GoStruct, v: &Value) {
    let empty = serde_json::Map::new();
    let o = v.as_object().unwrap_or(&empty);
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        go_string(out, name);
        out.push(':');
    };
    for (name, kind) in t.fields {
        let value = o.get(*name);
        match (kind, value) {
            (Struct(inner), v) => {
                field(out, name);
                go_struct(out, inner, v.unwrap_or(&Value::Null));
            }
            (Always, v) => {
                field(out, name);
                go_any(out, v.unwrap_or(&Value::String(String::new())));
            }
            (_, Some(v)) if is_empty(v) => {}
            (Plain, Some(v)) => {
                field(out, name);
                go_any(out, v);
            }
            (Nested(inner), Some(Value::Array(items))) => {
                field(out, name);
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go_struct(out, inner, item);
                }
                out.push(']');
            }
            (Nested(inner), Some(v)) => {
                field(out, name);
                go_struct(out, inner, v);
            }
            (_, None) => {}
        }
    }
    out.push('}');
}

/// Go's JSON for `{"containers":[...]}`.
fn containers_json(containers: &[Value]) -> String {
    let mut out = String::from("{\"containers\":[");
    for (i, c) in containers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_struct(&mut out, &SIDECAR_CONTAINER, c);
    }
    out.push_str("]}");
    out
}

/// Upstream's `SafeEncodeString`: each character of the hex digest mapped into a 27-letter
/// alphabet without vowels.
pub fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

fn hash_of(containers: &[Value]) -> String {
    safe_encode(&sha256_hex(containers_json(containers).as_bytes()))
}

/// The hashes stored in `annotations` (the webhook writes them on every set and the revisions
/// copy them), computed from `set` when either is missing (the webhook was bypassed).
pub fn stored_or_computed_hashes(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    set: &SidecarSet,
) -> (String, String) {
    use super::injection::{SIDECARSET_HASH, SIDECARSET_HASH_WITHOUT_IMAGE};
    let stored = |k: &str| annotations.and_then(|a| a.get(k)).cloned();
    match (stored(SIDECARSET_HASH), stored(SIDECARSET_HASH_WITHOUT_IMAGE)) {
        (Some(h), Some(w)) => (h, w),
        _ => sidecarset_hashes(set),
    }
}

/// The set's two hashes: of `spec.containers`, and of the same with every image blanked.
pub fn sidecarset_hashes(set: &SidecarSet) -> (String, String) {
    let containers: Vec<Value> =
        set.spec.containers.iter().flatten().filter_map(|c: &SidecarContainer| serde_json::to_value(c).ok()).collect();
    let without_image: Vec<Value> = containers
        .iter()
        .cloned()
        .map(|mut c| {
            if let Some(o) = c.as_object_mut() {
                o.insert("image".into(), Value::String(String::new()));
            }
            c
        })
        .collect();
    (hash_of(&containers), hash_of(&without_image))
}

/// SHA-256 in hex, from `ring` (already there for TLS).
fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_vectors_hash_as_upstream() {
        let c = json!({ "name": "container1", "image": "test-image" });
        assert_eq!(
            containers_json(std::slice::from_ref(&c)),
            r#"{"containers":[{"name":"container1","image":"test-image","resources":{},"upgradeStrategy":{},"shareVolumePolicy":{}}]}"#
        );
        assert_eq!(
            hash_of(std::slice::from_ref(&c)),
            "w26c4x8fz245642fdv499b464248f974xddx4x55z5dw55bc6x66464fxz77dc78"
        );
        let without = json!({ "name": "container1", "image": "" });
        assert_eq!(hash_of(&[without]), "8wzddb4dvv9c6x8zdc77z4z75987424f457dfv6724ddw6zbdx467wz5x24fc759");
    }

    #[test]
    fn go_order_omitempty_and_escaping() {
        let c = json!({
            "name": "c", "image": "i<1>&",
            "env": [{ "value": "v", "name": "A" }],
            "ports": [{ "protocol": "TCP", "containerPort": 80 }],
            "volumeMounts": [{ "mountPath": "/x", "name": "v", "readOnly": false }],
            "stdin": false,
            "podInjectPolicy": "BeforeAppContainer",
            "upgradeStrategy": { "upgradeType": "ColdUpgrade" },
            "shareVolumePolicy": { "type": "disabled" }
        });
        assert_eq!(
            containers_json(&[c]),
            concat!(
                r#"{"containers":[{"name":"c","image":"i\u003c1\u003e\u0026","ports":[{"containerPort":80,"protocol":"TCP"}],"#,
                r#""env":[{"name":"A","value":"v"}],"resources":{},"volumeMounts":[{"name":"v","mountPath":"/x"}],"#,
                r#""podInjectPolicy":"BeforeAppContainer","upgradeStrategy":{"upgradeType":"ColdUpgrade"},"#,
                r#""shareVolumePolicy":{"type":"disabled"}}]}"#
            )
        );
    }
}
