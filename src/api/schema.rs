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

/// Optional fields as upstream declares them: not `nullable`. The generator marks every `Option`
/// nullable (and lists `null` among enum values); upstream's API server instead drops a `null`
/// sent for an optional field, and so must ours for the same YAML to mean the same thing.
pub fn without_nullable(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            strip_nullable(schema);
        }
    }
    crd
}

fn strip_nullable(p: &mut JSONSchemaProps) {
    p.nullable = None;
    if let Some(values) = p.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
    }
    for child in p.properties.iter_mut().flat_map(|m| m.values_mut()) {
        strip_nullable(child);
    }
    if let Some(items) = p.items.as_mut() {
        match items {
            JSONSchemaPropsOrArray::Schema(s) => strip_nullable(s),
            JSONSchemaPropsOrArray::Schemas(v) => v.iter_mut().for_each(strip_nullable),
        }
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = p.additional_properties.as_mut() {
        strip_nullable(s);
    }
    for group in [&mut p.all_of, &mut p.any_of, &mut p.one_of] {
        group.iter_mut().flatten().for_each(strip_nullable);
    }
}
