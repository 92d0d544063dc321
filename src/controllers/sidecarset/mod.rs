//! SidecarSet: sidecar injection into new pods (through the pod mutating webhook) and, in later
//! work, the controller that upgrades injected pods in place. The decisions are pure functions.

pub mod budget;
pub mod controller;
pub mod hash;
pub mod injection;
pub mod planner;
pub mod pod_state;
pub mod revision;
pub mod rollout;
pub mod upgrade;
