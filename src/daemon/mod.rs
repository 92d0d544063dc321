//! kruise-daemon's parts: the container runtimes it talks to and the per-node agents.

pub mod cri;
pub mod imagepull;
pub mod node_agents;
pub mod podprobe;
pub mod runtime;
pub mod simulated;
