//! The daemon's image puller (spec part B.4.3): per node, a pull per NodeImage tag the manager
//! asked for, reported into the NodeImage's status. [`plan`] holds the decisions, pure.

pub mod auth;
pub mod plan;
pub mod puller;
pub mod supervisor;
