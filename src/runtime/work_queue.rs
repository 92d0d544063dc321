//! A keyed work queue with client-go's workqueue semantics, for the NamespaceActors:
//!
//! - a key is queued at most once (adding a queued key is a no-op);
//! - a key is processed by one worker at a time: adding a key that is being processed marks it
//!   dirty, and it is queued again when that processing is done;
//! - failed keys come back after an exponential back-off with a cap; success forgets the count;
//! - a key can be scheduled for later (requeue-after), the earliest schedule winning.
//!
//! The queue is plain data driven by the caller's clock, so it is tested without timers; the
//! actor around it sleeps until [`WorkQueue::next_due`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio::time::Instant;

use super::metrics::MetricsRegistry;

/// Exponential back-off for failed keys: `base · 2^(failures-1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// controller-runtime's defaults: 5 ms doubling to 1000 s.
    fn default() -> Self {
        Self { base: Duration::from_millis(5), max: Duration::from_secs(1000) }
    }
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(63);
        self.base.checked_mul(1u32.checked_shl(exp).unwrap_or(u32::MAX)).unwrap_or(self.max).min(self.max)
    }
}

/// The controller-runtime workqueue metrics, labelled by queue name.
#[derive(Clone)]
pub struct WorkQueueMetrics {
    depth: IntGaugeVec,
    adds: IntCounterVec,
    retries: IntCounterVec,
    queue_duration: HistogramVec,
    work_duration: HistogramVec,
}

/// Buckets of controller-runtime's workqueue histograms: 1 µs to 1000 s, ×10.
fn duration_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1e-6, 10.0, 10).unwrap_or_default()
}

impl WorkQueueMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = Self {
            depth: IntGaugeVec::new(Opts::new("workqueue_depth", "Current depth of workqueue"), &["name"])?,
            adds: IntCounterVec::new(
                Opts::new("workqueue_adds_total", "Total number of adds handled by workqueue"),
                &["name"],
            )?,
            retries: IntCounterVec::new(
                Opts::new("workqueue_retries_total", "Total number of retries handled by workqueue"),
                &["name"],
            )?,
            queue_duration: HistogramVec::new(
                HistogramOpts::new(
                    "workqueue_queue_duration_seconds",
                    "How long in seconds an item stays in workqueue before being requested",
                )
                .buckets(duration_buckets()),
                &["name"],
            )?,
            work_duration: HistogramVec::new(
                HistogramOpts::new(
                    "workqueue_work_duration_seconds",
                    "How long in seconds processing an item from workqueue takes",
                )
                .buckets(duration_buckets()),
                &["name"],
            )?,
        };
        registry.register(&m.depth)?;
        registry.register(&m.adds)?;
        registry.register(&m.retries)?;
        registry.register(&m.queue_duration)?;
        registry.register(&m.work_duration)?;
        Ok(m)
    }

    /// Creates queue `name`'s series at zero.
    pub fn init(&self, name: &str) {
        let _ = self.for_queue(name);
    }

    fn for_queue(&self, name: &str) -> QueueHandles {
        QueueHandles {
            depth: self.depth.with_label_values(&[name]),
            adds: self.adds.with_label_values(&[name]),
            retries: self.retries.with_label_values(&[name]),
            queue_duration: self.queue_duration.with_label_values(&[name]),
            work_duration: self.work_duration.with_label_values(&[name]),
        }
    }
}

struct QueueHandles {
    depth: IntGauge,
    adds: IntCounter,
    retries: IntCounter,
    queue_duration: Histogram,
    work_duration: Histogram,
}

pub struct WorkQueue<K> {
    ready: VecDeque<K>,
    /// Keys in `ready`, with when they were added (for the queue-duration metric).
    queued: HashMap<K, Instant>,
    /// Keys being processed, with when processing began.
    in_flight: HashMap<K, Instant>,
    /// Keys added while in flight: queued again when done.
    dirty: HashSet<K>,
    /// Keys scheduled for later, ordered by due time (a counter breaks ties).
    delayed: BTreeSet<(Instant, u64, K)>,
    due_at: HashMap<K, (Instant, u64)>,
    seq: u64,
    failures: HashMap<K, u32>,
    backoff: Backoff,
    metrics: Option<QueueHandles>,
}

impl<K: Clone + Eq + Hash + Ord> WorkQueue<K> {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashMap::new(),
            in_flight: HashMap::new(),
            dirty: HashSet::new(),
            delayed: BTreeSet::new(),
            due_at: HashMap::new(),
            seq: 0,
            failures: HashMap::new(),
            backoff,
            metrics: None,
        }
    }

    /// Reports this queue's metrics under `name` (e.g. the controller's name).
    pub fn with_metrics(mut self, metrics: &WorkQueueMetrics, name: &str) -> Self {
        self.metrics = Some(metrics.for_queue(name));
        self
    }

    /// Queues `key` now (no-op if queued; marks it dirty if in flight).
    pub fn add(&mut self, key: K, now: Instant) {
        if let Some(m) = &self.metrics {
            m.adds.inc();
        }
        if self.in_flight.contains_key(&key) {
            self.dirty.insert(key);
            return;
        }
        if self.queued.contains_key(&key) {
            return;
        }
        self.unschedule(&key);
        self.queued.insert(key.clone(), now);
        self.ready.push_back(key);
        self.update_depth();
    }

    /// Queues `key` once `delay` has passed (keeps an earlier schedule, and a key already queued).
    pub fn add_after(&mut self, key: K, delay: Duration, now: Instant) {
        if delay.is_zero() {
            return self.add(key, now);
        }
        if self.queued.contains_key(&key) {
            return;
        }
        let due = now + delay;
        if let Some((at, _)) = self.due_at.get(&key)
            && *at <= due
        {
            return;
        }
        self.unschedule(&key);
        self.seq += 1;
        self.delayed.insert((due, self.seq, key.clone()));
        self.due_at.insert(key, (due, self.seq));
    }

    /// Queues a failed `key` after its back-off, and returns the delay.
    pub fn add_rate_limited(&mut self, key: K, now: Instant) -> Duration {
        let failures = self.failures.entry(key.clone()).or_insert(0);
        *failures += 1;
        let delay = self.backoff.delay(*failures);
        if let Some(m) = &self.metrics {
            m.retries.inc();
        }
        self.add_after(key, delay, now);
        delay
    }

    /// Forgets `key`'s failures (after a successful reconcile).
    pub fn forget(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// Failures recorded for `key` since it last succeeded.
    pub fn failures(&self, key: &K) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process, if one is ready at `now`; it is in flight until [`Self::done`].
    pub fn pop(&mut self, now: Instant) -> Option<K> {
        self.promote_due(now);
        let key = self.ready.pop_front()?;
        let added = self.queued.remove(&key).unwrap_or(now);
        if let Some(m) = &self.metrics {
            m.queue_duration.observe(now.saturating_duration_since(added).as_secs_f64());
        }
        self.in_flight.insert(key.clone(), now);
        self.update_depth();
        Some(key)
    }

    /// Marks `key`'s processing finished; a key added meanwhile is queued again.
    pub fn done(&mut self, key: &K, now: Instant) {
        if let Some(started) = self.in_flight.remove(key)
            && let Some(m) = &self.metrics
        {
            m.work_duration.observe(now.saturating_duration_since(started).as_secs_f64());
        }
        if self.dirty.remove(key) {
            self.queued.insert(key.clone(), now);
            self.ready.push_back(key.clone());
            self.update_depth();
        }
    }

    /// When the earliest scheduled key falls due, if any is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _, _)| *at)
    }

    /// Keys ready now (the `workqueue_depth` gauge).
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Nothing queued, scheduled or in flight: the owner may stop.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.delayed.is_empty() && self.in_flight.is_empty()
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.delayed.first() {
            if *at > now {
                break;
            }
            if let Some((_, _, key)) = self.delayed.pop_first() {
                self.due_at.remove(&key);
                self.add(key, now);
            }
        }
    }

    fn unschedule(&mut self, key: &K) {
        if let Some((at, seq)) = self.due_at.remove(key) {
            self.delayed.remove(&(at, seq, key.clone()));
        }
    }

    fn update_depth(&self) {
        if let Some(m) = &self.metrics {
            m.depth.set(self.ready.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (WorkQueue<String>, Instant) {
        (WorkQueue::new(Backoff { base: Duration::from_millis(10), max: Duration::from_millis(100) }), Instant::now())
    }

    fn k(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn keys_are_deduplicated_and_served_in_order() {
        let (mut q, t) = queue();
        q.add(k("a"), t);
        q.add(k("b"), t);
        q.add(k("a"), t);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(t), Some(k("a")));
        assert_eq!(q.pop(t), Some(k("b")));
        assert_eq!(q.pop(t), None);
    }

    #[test]
    fn a_key_in_flight_is_never_handed_out_twice_and_comes_back_if_changed() {
        let (mut q, t) = queue();
        q.add(k("a"), t);
        assert_eq!(q.pop(t), Some(k("a")));
        q.add(k("a"), t);
        q.add(k("a"), t);
        assert_eq!(q.pop(t), None, "in flight: not handed out again");
        q.done(&k("a"), t);
        assert_eq!(q.pop(t), Some(k("a")), "changed while in flight: processed once more");
        q.done(&k("a"), t);
        assert_eq!(q.pop(t), None);
        assert!(q.is_idle());
    }

    #[test]
    fn failures_back_off_exponentially_to_a_cap_and_success_resets() {
        let (mut q, t) = queue();
        let delays: Vec<u128> = (0..6).map(|_| q.add_rate_limited(k("a"), t).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
        assert_eq!(q.failures(&k("a")), 6);
        q.forget(&k("a"));
        assert_eq!(q.add_rate_limited(k("a"), t), Duration::from_millis(10));
    }

    #[test]
    fn scheduled_keys_come_due_and_the_earliest_schedule_wins() {
        let (mut q, t) = queue();
        q.add_after(k("a"), Duration::from_secs(10), t);
        q.add_after(k("a"), Duration::from_secs(5), t);
        q.add_after(k("a"), Duration::from_secs(20), t);
        q.add_after(k("b"), Duration::from_secs(7), t);
        assert_eq!(q.next_due(), Some(t + Duration::from_secs(5)));
        assert_eq!(q.pop(t + Duration::from_secs(4)), None);
        assert_eq!(q.pop(t + Duration::from_secs(5)), Some(k("a")));
        assert_eq!(q.pop(t + Duration::from_secs(6)), None);
        assert_eq!(q.pop(t + Duration::from_secs(7)), Some(k("b")));
        assert_eq!(q.next_due(), None, "a's later schedules were dropped");
    }

    #[test]
    fn an_immediate_add_cancels_a_pending_schedule() {
        let (mut q, t) = queue();
        q.add_after(k("a"), Duration::from_secs(10), t);
        q.add(k("a"), t);
        assert_eq!(q.pop(t), Some(k("a")));
        q.done(&k("a"), t);
        assert_eq!(q.pop(t + Duration::from_secs(11)), None, "not processed a second time");
    }

    #[test]
    fn metrics_follow_the_queue() {
        let registry = MetricsRegistry::new();
        let metrics = WorkQueueMetrics::register(&registry).unwrap();
        let mut q = WorkQueue::new(Backoff::default()).with_metrics(&metrics, "sidecarset");
        let t = Instant::now();
        q.add(k("a"), t);
        q.add(k("b"), t);
        q.add(k("a"), t);
        let text = registry.render();
        assert!(text.contains("workqueue_depth{name=\"sidecarset\"} 2"), "{text}");
        assert!(text.contains("workqueue_adds_total{name=\"sidecarset\"} 3"), "{text}");
        let a = q.pop(t + Duration::from_millis(30)).unwrap();
        q.done(&a, t + Duration::from_millis(50));
        q.add_rate_limited(k("b"), t);
        let text = registry.render();
        assert!(text.contains("workqueue_queue_duration_seconds_count{name=\"sidecarset\"} 1"), "{text}");
        assert!(text.contains("workqueue_work_duration_seconds_sum{name=\"sidecarset\"} 0.02"), "{text}");
        assert!(text.contains("workqueue_retries_total{name=\"sidecarset\"} 1"), "{text}");
        assert!(text.contains("workqueue_depth{name=\"sidecarset\"} 1"), "{text}");
    }
}
