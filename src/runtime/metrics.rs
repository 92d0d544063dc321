//! The Prometheus registry and the metrics of the runtime. Names are part of the interface (see the
//! design notes): controller-runtime's where existing dashboards use them, `kruise_` for our own.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let shards_held = IntGauge::new("kruise_shards_held", "Shards this replica holds").expect("valid metric");
        let shard_handoffs = IntCounterVec::new(
            Opts::new("kruise_shard_handoffs_total", "Shard ownership changes on this replica"),
            &["direction"],
        )
        .expect("valid metric");
        let live_replicas =
            IntGauge::new("kruise_manager_live_replicas", "Manager replicas seen alive").expect("valid metric");
        let leader_status = IntGaugeVec::new(
            Opts::new("leader_election_master_status", "1 while this replica holds the named lease"),
            &["name"],
        )
        .expect("valid metric");
        let lease_errors =
            IntCounterVec::new(Opts::new("kruise_lease_errors_total", "Lease requests that failed"), &["operation"])
                .expect("valid metric");
        for c in [
            Box::new(shards_held.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(shard_handoffs.clone()),
            Box::new(live_replicas.clone()),
            Box::new(leader_status.clone()),
            Box::new(lease_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self { registry, shards_held, shard_handoffs, live_replicas, leader_status, lease_errors }
    }

    /// Adds a binary's own metric to the registry served on `/metrics`.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.shards_held.set(11);
        m.shard_handoffs.with_label_values(&["acquired"]).inc();
        m.leader_status.with_label_values(&["kruise-shard-3"]).set(1);
        m.lease_errors.with_label_values(&["renew"]).inc();
        m.live_replicas.set(3);
        let text = m.render();
        assert!(text.contains("kruise_shards_held 11"), "{text}");
        assert!(text.contains("kruise_shard_handoffs_total{direction=\"acquired\"} 1"), "{text}");
        assert!(text.contains("leader_election_master_status{name=\"kruise-shard-3\"} 1"), "{text}");
        assert!(text.contains("kruise_manager_live_replicas 3"), "{text}");
        assert!(text.contains("kruise_lease_errors_total{operation=\"renew\"} 1"), "{text}");
    }
}
