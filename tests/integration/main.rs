//! The one integration-test binary: every module runs against a real kube-apiserver + etcd (+
//! controller-manager, scheduler, kwok) started by `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod chart;
mod crds;
mod dashboards;
mod events;
mod harness;
mod images;
mod probes;
mod rollout;
mod sharding;
mod shards;
mod webhooks;
mod writer;
