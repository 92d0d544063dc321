//! Prometheus metrics. Names are part of the interface (see the design notes): controller-runtime's
//! where existing dashboards use them, `kruise_` for our own. Each process has one
//! [`MetricsRegistry`] served on `/metrics`; each subsystem registers its own metric set in it.

use prometheus::core::Collector;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// The registry a process serves on `/metrics`. It starts with the process's own CPU and memory
/// (`process_*`).
#[derive(Clone)]
pub struct MetricsRegistry {
    registry: Registry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        let registry = Registry::new();
        // Registering fresh, distinct names in a new registry cannot collide.
        if let Ok(process) = super::process_metrics::ProcessCollector::new() {
            let _ = registry.register(Box::new(process));
        }
        Self { registry }
    }
}

impl MetricsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<C: Collector + Clone + 'static>(&self, c: &C) -> prometheus::Result<()> {
        self.registry.register(Box::new(c.clone()))
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The manager's shard and lease metrics.
#[derive(Clone)]
pub struct ShardMetrics {
    /// `kruise_shards_held`: shards this replica holds (and may act on) right now.
    pub shards_held: IntGauge,
    /// `kruise_shard_handoffs_total{direction}`: shards acquired, released, or lost (renew
    /// deadline passed).
    pub shard_handoffs: IntCounterVec,
    /// `kruise_manager_live_replicas`: replicas this one currently sees alive, itself included.
    pub live_replicas: IntGauge,
    /// `leader_election_master_status{name}`: 1 while this replica holds the named lease.
    pub leader_status: IntGaugeVec,
    /// `kruise_lease_errors_total{operation}`: lease requests that failed for reasons other than
    /// losing a race.
    pub lease_errors: IntCounterVec,
    /// `kruise_manager_is_leader`: 1 on the replica that runs the global singletons (OpenKruise's
    /// name, so its dashboards work).
    pub is_leader: IntGauge,
}

/// The `operation` values of `kruise_lease_errors_total`.
pub const LEASE_OPERATIONS: [&str; 6] = ["renew", "acquire", "create", "release", "leader", "membership"];

impl ShardMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = Self {
            shards_held: IntGauge::new("kruise_shards_held", "Shards this replica holds")?,
            shard_handoffs: IntCounterVec::new(
                Opts::new("kruise_shard_handoffs_total", "Shard ownership changes on this replica"),
                &["direction"],
            )?,
            live_replicas: IntGauge::new("kruise_manager_live_replicas", "Manager replicas seen alive")?,
            leader_status: IntGaugeVec::new(
                Opts::new("leader_election_master_status", "1 while this replica holds the named lease"),
                &["name"],
            )?,
            lease_errors: IntCounterVec::new(
                Opts::new("kruise_lease_errors_total", "Lease requests that failed"),
                &["operation"],
            )?,
            is_leader: IntGauge::new("kruise_manager_is_leader", "Whether this replica is the leader")?,
        };
        registry.register(&m.shards_held)?;
        registry.register(&m.shard_handoffs)?;
        registry.register(&m.live_replicas)?;
        registry.register(&m.leader_status)?;
        registry.register(&m.lease_errors)?;
        registry.register(&m.is_leader)?;
        // Every series from the start, so rates and alerts see zeros rather than nothing.
        for op in LEASE_OPERATIONS {
            m.lease_errors.with_label_values(&[op]);
        }
        for d in ["acquired", "released", "lost"] {
            m.shard_handoffs.with_label_values(&[d]);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shard_metric_with_its_labels() {
        let r = MetricsRegistry::new();
        let m = ShardMetrics::register(&r).unwrap();
        m.shards_held.set(11);
        m.shard_handoffs.with_label_values(&["acquired"]).inc();
        m.leader_status.with_label_values(&["kruise-shard-3"]).set(1);
        m.lease_errors.with_label_values(&["renew"]).inc();
        m.live_replicas.set(3);
        let text = r.render();
        assert!(text.contains("kruise_shards_held 11"), "{text}");
        assert!(text.contains("kruise_shard_handoffs_total{direction=\"acquired\"} 1"), "{text}");
        assert!(text.contains("leader_election_master_status{name=\"kruise-shard-3\"} 1"), "{text}");
        assert!(text.contains("kruise_manager_live_replicas 3"), "{text}");
        assert!(text.contains("kruise_lease_errors_total{operation=\"renew\"} 1"), "{text}");
    }

    #[test]
    fn a_name_registers_once() {
        let r = MetricsRegistry::new();
        ShardMetrics::register(&r).unwrap();
        assert!(ShardMetrics::register(&r).is_err(), "two metric sets under the same names must be refused");
    }
}
