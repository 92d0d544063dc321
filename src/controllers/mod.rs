//! Controllers: one folder each, pure planning plus the thin glue that plugs into the runtime.

pub mod demo;
pub mod imagepulljob;
pub mod nodeimage;
pub mod nodepodprobe;
pub mod nodes;
pub mod podprobemarker;
pub mod pods;
pub mod sidecarset;
pub mod update_sort;

use std::time::Duration;

/// A timer of `secs` whole seconds, at least one: the waits computed from the API's second-grained
/// times (TTLs, deadlines, response timeouts).
pub fn wait_seconds(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1))
}
