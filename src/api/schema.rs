//! Schema pieces shared by the CRDs.
//!
//! Upstream leaves embedded core/v1 types (containers, volumes, pod templates) schemaless with
//! `x-kubernetes-preserve-unknown-fields`, so the API server neither prunes nor validates them and
//! the CRDs stay small; the webhooks validate them instead. These helpers do the same while keeping
//! the schema structural (every node typed).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// An object whose fields the API server keeps as sent.
pub fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// A list of such objects.
pub fn preserved_object_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// An object with the schema of `T`'s own fields that also keeps fields it does not list: for
/// kruise types that inline a core/v1 type (a sidecar container is a core/v1 Container plus
/// kruise fields).
pub fn extended_object<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = T::json_schema(generator);
    schema.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
    schema
}

/// Brings the generated schema to upstream's conventions, so the same YAML means the same thing:
/// - optional fields are not `nullable` (the generator marks every `Option` nullable and lists
///   `null` among enum values); the API server then drops a `null` sent for one, as upstream's does;
/// - no `default`s (the generator emits one for `#[serde(default)]` fields): upstream defaults in
///   its webhook, never in the schema.
pub fn upstream_conventions(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for_each_schema_node(&mut crd, &mut |p| {
        p.nullable = None;
        p.default = None;
        if let Some(values) = p.enum_.as_mut() {
            values.retain(|v| !v.0.is_null());
        }
    });
    crd
}

/// Calls `f` on the `spec` schema of every version of `kind`'s CRD; other CRDs are left alone.
pub fn for_each_spec_schema(crd: &mut CustomResourceDefinition, kind: &str, mut f: impl FnMut(&mut JSONSchemaProps)) {
    if crd.spec.names.kind != kind {
        return;
    }
    for version in &mut crd.spec.versions {
        let root = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(spec) = root.and_then(|r| r.properties.as_mut()).and_then(|p| p.get_mut("spec")) {
            f(spec);
        }
    }
}

/// Calls `f` on every node of every version's schema, parents before children.
pub fn for_each_schema_node(crd: &mut CustomResourceDefinition, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            walk(schema, f);
        }
    }
}

fn walk(p: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(p);
    for child in p.properties.iter_mut().flat_map(|m| m.values_mut()) {
        walk(child, f);
    }
    match p.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => walk(s, f),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(|s| walk(s, f)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = p.additional_properties.as_mut() {
        walk(s, f);
    }
    for group in [&mut p.all_of, &mut p.any_of, &mut p.one_of] {
        group.iter_mut().flatten().for_each(|s| walk(s, f));
    }
}
