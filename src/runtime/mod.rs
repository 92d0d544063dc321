//! The runtime every controller runs on: shards and their leases, the actor tree, metrics and
//! HTTP endpoints.

pub mod api_writer;
pub mod client;
pub mod events;
pub mod flag_values;
pub mod http;
pub mod lease;
pub mod logging;
pub mod merge_patch;
pub mod metrics;
pub mod namespace_actor;
pub mod object_store;
pub mod ownership;
pub mod process_metrics;
pub mod shard;
pub mod shard_actor;
pub mod shard_coordinator;
pub mod shard_plan;
pub mod sharded_watch;
pub mod supervisor;
pub mod watch_changes;
pub mod watch_hub;
pub mod work_queue;

/// Helpers for the runtime's in-process tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::time::Duration;

    /// Polls `f` every 10 ms until it holds; panics naming `what` after `timeout`.
    pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !f() {
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
