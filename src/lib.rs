//! kruise-rs: OpenKruise's `apps.kruise.io/v1alpha1` workload automation as a sharded,
//! actor-based Kubernetes controller. See `docs/design.md`.

pub mod api;
pub mod controllers;
pub mod daemon;
pub mod features;
pub mod runtime;
pub mod webhook;
