//! Custom probes on a node: a ProbeActor per (pod, container, probe) runs the NodePodProbe's
//! probes; the node's agent batches their results into the NodePodProbe status.

pub mod agent;
pub mod status;
pub mod worker;
