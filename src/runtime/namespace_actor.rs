//! NamespaceActor: runs the reconciles of every controller for one namespace.
//!
//! It owns a [`WorkQueue`] of (controller, object name) keys: a key is reconciled by one task at a
//! time, changes during a reconcile queue it once more, failures back off, `RequeueAfter` comes
//! back on time. A panicking reconcile is caught, counted and retried like an error; it never
//! takes down the actor, the other keys or the process. Reconciles run concurrently up to a
//! limit per namespace. The actor stops itself when idle; its ShardActor starts it again on the
//! next event.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::{Instrument, info_span, warn};

use super::metrics::MetricsRegistry;
use super::work_queue::{Backoff, WorkQueue, WorkQueueMetrics};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    Done,
    /// Reconcile again after this long (a timer, e.g. a cron schedule or a TTL).
    RequeueAfter(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(pub String);

impl ReconcileError {
    /// A reconcile error saying what `e` says.
    pub fn from_display(e: impl std::fmt::Display) -> Self {
        ReconcileError(e.to_string())
    }
}

/// A controller's reconcile for objects of one namespace.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name, as metrics label it (e.g. `cloneset-controller`).
    fn name(&self) -> &'static str;
    fn reconcile(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>>;
}

/// The `name` label of the namespace actors' work queues.
pub const NAMESPACE_QUEUE: &str = "kruise-namespace-queue";

/// A work item: which controller, which object.
pub type Key = (&'static str, String);

/// controller-runtime's reconcile metrics, plus panics.
#[derive(Clone)]
pub struct ReconcileMetrics {
    total: IntCounterVec,
    errors: IntCounterVec,
    time: HistogramVec,
    panics: IntCounterVec,
}

impl ReconcileMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = Self {
            total: IntCounterVec::new(
                Opts::new("controller_runtime_reconcile_total", "Total number of reconciliations per controller"),
                &["controller", "result"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "controller_runtime_reconcile_errors_total",
                    "Total number of reconciliation errors per controller",
                ),
                &["controller"],
            )?,
            time: HistogramVec::new(
                HistogramOpts::new(
                    "controller_runtime_reconcile_time_seconds",
                    "Length of time per reconciliation per controller",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
                    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0,
                    30.0, 40.0, 50.0, 60.0,
                ]),
                &["controller"],
            )?,
            panics: IntCounterVec::new(
                Opts::new("kruise_reconcile_panics_total", "Reconciles that panicked, per controller"),
                &["controller"],
            )?,
        };
        registry.register(&m.total)?;
        registry.register(&m.errors)?;
        registry.register(&m.time)?;
        registry.register(&m.panics)?;
        Ok(m)
    }

    /// Creates `controller`'s series at zero, as controller-runtime does, so dashboards and alerts
    /// see every controller before its first reconcile or error.
    pub fn init(&self, controller: &str) {
        for result in ["success", "error", "requeue", "requeue_after"] {
            self.total.with_label_values(&[controller, result]);
        }
        self.errors.with_label_values(&[controller]);
        self.time.with_label_values(&[controller]);
        self.panics.with_label_values(&[controller]);
    }
}

#[derive(Clone)]
pub struct NamespaceArgs {
    pub namespace: String,
    pub reconcilers: Arc<HashMap<&'static str, Arc<dyn Reconciler>>>,
    /// Reconciles running at once in this namespace.
    pub concurrency: usize,
    pub backoff: Backoff,
    /// Stop after this long with nothing queued, scheduled or running.
    pub idle_timeout: Duration,
    pub reconcile_metrics: ReconcileMetrics,
    pub queue_metrics: WorkQueueMetrics,
}

pub enum NamespaceMsg {
    /// An object changed (or a timer fired): reconcile it.
    Enqueue { controller: &'static str, name: String },
    /// A reconcile finished.
    Finished { key: Key, outcome: Outcome, took: Duration },
    /// A scheduled key may be due, or the actor may be idle.
    Wake,
}

pub enum Outcome {
    Ok(Action),
    Err(String),
    Panicked(String),
}

pub struct NamespaceState {
    args: NamespaceArgs,
    queue: WorkQueue<Key>,
    running: usize,
    /// When a Wake is already scheduled for.
    wake_at: Option<Instant>,
    idle_since: Option<Instant>,
}

pub struct NamespaceActor;

impl Actor for NamespaceActor {
    type Msg = NamespaceMsg;
    type State = NamespaceState;
    type Arguments = NamespaceArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, args: NamespaceArgs) -> Result<Self::State, ActorProcessingErr> {
        // One queue per namespace; metrics aggregate under the namespace-independent name.
        let queue = WorkQueue::new(args.backoff).with_metrics(&args.queue_metrics, NAMESPACE_QUEUE);
        Ok(NamespaceState { args, queue, running: 0, wake_at: None, idle_since: Some(Instant::now()) })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            NamespaceMsg::Enqueue { controller, name } => st.queue.add((controller, name), now),
            NamespaceMsg::Finished { key, outcome, took } => st.finish(key, outcome, took, now),
            NamespaceMsg::Wake => {
                st.wake_at = None;
                if st.queue.is_idle()
                    && st.running == 0
                    && st.idle_since.is_some_and(|t| now - t >= st.args.idle_timeout)
                {
                    myself.stop(Some("idle".into()));
                    return Ok(());
                }
            }
        }
        st.start_ready(&myself, now);
        st.schedule_wake(&myself, now);
        Ok(())
    }
}

impl NamespaceState {
    fn finish(&mut self, key: Key, outcome: Outcome, took: Duration, now: Instant) {
        self.running -= 1;
        self.queue.done(&key, now);
        let controller = key.0;
        let m = &self.args.reconcile_metrics;
        m.time.with_label_values(&[controller]).observe(took.as_secs_f64());
        match outcome {
            Outcome::Ok(Action::Done) => {
                m.total.with_label_values(&[controller, "success"]).inc();
                self.queue.forget(&key);
            }
            Outcome::Ok(Action::RequeueAfter(d)) => {
                m.total.with_label_values(&[controller, "requeue_after"]).inc();
                self.queue.forget(&key);
                self.queue.add_after(key, d, now);
            }
            Outcome::Err(e) => {
                m.total.with_label_values(&[controller, "error"]).inc();
                m.errors.with_label_values(&[controller]).inc();
                let delay = self.queue.add_rate_limited(key.clone(), now);
                warn!(controller, namespace = %self.args.namespace, name = %key.1, error = %e, ?delay, "reconcile failed");
            }
            Outcome::Panicked(p) => {
                m.total.with_label_values(&[controller, "error"]).inc();
                m.errors.with_label_values(&[controller]).inc();
                m.panics.with_label_values(&[controller]).inc();
                let delay = self.queue.add_rate_limited(key.clone(), now);
                warn!(controller, namespace = %self.args.namespace, name = %key.1, panic = %p, ?delay, "reconcile panicked");
            }
        }
    }

    fn start_ready(&mut self, myself: &ActorRef<NamespaceMsg>, now: Instant) {
        while self.running < self.args.concurrency {
            let Some(key) = self.queue.pop(now) else { break };
            let Some(reconciler) = self.args.reconcilers.get(key.0).cloned() else {
                // No controller by that name: drop the key rather than spin on it.
                self.queue.done(&key, now);
                continue;
            };
            self.running += 1;
            self.idle_since = None;
            let me = myself.clone();
            let ns = self.args.namespace.clone();
            // A root span: ractor carries the sender's span into message handling, so without
            // `parent: None` each reconcile's span would nest in the previous one's.
            let span = info_span!(parent: None, "reconcile", controller = key.0, namespace = %ns, name = %key.1);
            tokio::spawn(
                async move {
                    let started = Instant::now();
                    let outcome = match AssertUnwindSafe(reconciler.reconcile(&ns, &key.1)).catch_unwind().await {
                        Ok(Ok(action)) => Outcome::Ok(action),
                        Ok(Err(e)) => Outcome::Err(e.to_string()),
                        Err(panic) => Outcome::Panicked(panic_message(&panic)),
                    };
                    let _ = me.send_message(NamespaceMsg::Finished { key, outcome, took: started.elapsed() });
                }
                .instrument(span),
            );
        }
        if self.running == 0 && self.queue.is_idle() && self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    /// One timer at a time, for the earliest of: the next scheduled key, the idle deadline.
    fn schedule_wake(&mut self, myself: &ActorRef<NamespaceMsg>, now: Instant) {
        let idle_deadline = self.idle_since.map(|t| t + self.args.idle_timeout);
        let Some(at) = [self.queue.next_due(), idle_deadline].into_iter().flatten().min() else { return };
        if self.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        self.wake_at = Some(at);
        myself.send_after(at.saturating_duration_since(now), || NamespaceMsg::Wake);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Records every reconcile's (name, start, end); behaves per object name:
    /// `panic-once` panics the first time, `fail-twice` errors twice, `tick` requeues after 50 ms
    /// three times, `slow` takes 100 ms, anything else succeeds at once.
    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<(String, Instant, Instant)>>,
        calls: Mutex<HashMap<String, u32>>,
        running_now: AtomicU32,
        max_running: AtomicU32,
    }

    struct TestReconciler(Arc<Recorder>);

    impl Reconciler for TestReconciler {
        fn name(&self) -> &'static str {
            "test-controller"
        }

        fn reconcile(&self, _ns: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
            let rec = self.0.clone();
            let name = name.to_string();
            Box::pin(async move {
                let start = Instant::now();
                let n = {
                    let mut calls = rec.calls.lock().unwrap();
                    let c = calls.entry(name.clone()).or_insert(0);
                    *c += 1;
                    *c
                };
                let now_running = rec.running_now.fetch_add(1, Ordering::SeqCst) + 1;
                rec.max_running.fetch_max(now_running, Ordering::SeqCst);
                let sleep = if name == "slow" { 100 } else { 5 };
                tokio::time::sleep(Duration::from_millis(sleep)).await;
                rec.running_now.fetch_sub(1, Ordering::SeqCst);
                rec.log.lock().unwrap().push((name.clone(), start, Instant::now()));
                match (name.as_str(), n) {
                    ("panic-once", 1) => panic!("boom"),
                    ("fail-twice", 1 | 2) => Err(ReconcileError("not yet".into())),
                    ("tick", 1..=3) => Ok(Action::RequeueAfter(Duration::from_millis(50))),
                    _ => Ok(Action::Done),
                }
            })
        }
    }

    async fn start(rec: Arc<Recorder>, concurrency: usize) -> (ActorRef<NamespaceMsg>, MetricsRegistry) {
        let registry = MetricsRegistry::new();
        let reconciler: Arc<dyn Reconciler> = Arc::new(TestReconciler(rec));
        let args = NamespaceArgs {
            namespace: "team-a".into(),
            reconcilers: Arc::new(HashMap::from([("test-controller", reconciler)])),
            concurrency,
            backoff: Backoff { base: Duration::from_millis(10), max: Duration::from_millis(40) },
            idle_timeout: Duration::from_millis(300),
            reconcile_metrics: ReconcileMetrics::register(&registry).unwrap(),
            queue_metrics: WorkQueueMetrics::register(&registry).unwrap(),
        };
        let (actor, _) = Actor::spawn(None, NamespaceActor, args).await.unwrap();
        (actor, registry)
    }

    fn enqueue(a: &ActorRef<NamespaceMsg>, name: &str) {
        a.send_message(NamespaceMsg::Enqueue { controller: "test-controller", name: name.into() }).unwrap();
    }

    fn calls(rec: &Recorder, name: &str) -> u32 {
        rec.calls.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// The waits of these tests: up to 10 s.
    async fn wait_until(what: &str, f: impl FnMut() -> bool) {
        crate::runtime::test_util::wait_until(what, Duration::from_secs(10), f).await
    }

    #[tokio::test]
    async fn panics_are_caught_counted_and_retried_and_other_keys_go_on() {
        let rec = Arc::new(Recorder::default());
        let (a, registry) = start(rec.clone(), 4).await;
        enqueue(&a, "panic-once");
        enqueue(&a, "fine");
        // Wait for the outcome, not the call: a retry is counted when its reconcile finishes.
        let success = "controller_runtime_reconcile_total{controller=\"test-controller\",result=\"success\"} 2";
        wait_until("the panicking key to be retried to success", || registry.render().contains(success)).await;
        assert_eq!(calls(&rec, "panic-once"), 2);
        assert_eq!(calls(&rec, "fine"), 1);
        let text = registry.render();
        assert!(text.contains("kruise_reconcile_panics_total{controller=\"test-controller\"} 1"), "{text}");
        assert!(text.contains("controller_runtime_reconcile_errors_total{controller=\"test-controller\"} 1"), "{text}");
        assert!(
            text.contains("controller_runtime_reconcile_total{controller=\"test-controller\",result=\"success\"} 2"),
            "{text}"
        );
        enqueue(&a, "after-the-panic");
        wait_until("the actor to keep working", || calls(&rec, "after-the-panic") == 1).await;
    }

    #[tokio::test]
    async fn errors_back_off_until_success_and_requeue_after_comes_back() {
        let rec = Arc::new(Recorder::default());
        let (a, _registry) = start(rec.clone(), 4).await;
        enqueue(&a, "fail-twice");
        enqueue(&a, "tick");
        wait_until("fail-twice to succeed on the third try", || calls(&rec, "fail-twice") == 3).await;
        wait_until("tick to come back three times", || calls(&rec, "tick") == 4).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(calls(&rec, "fail-twice"), 3, "no retry after success");
        assert_eq!(calls(&rec, "tick"), 4, "no requeue after Done");
        let log = rec.log.lock().unwrap().clone();
        let ticks: Vec<Instant> = log.iter().filter(|(n, _, _)| n == "tick").map(|(_, s, _)| *s).collect();
        for w in ticks.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(50), "requeue-after honoured: {:?}", w[1] - w[0]);
        }
    }

    #[tokio::test]
    async fn a_key_is_never_reconciled_twice_at_once_and_changes_meanwhile_collapse() {
        let rec = Arc::new(Recorder::default());
        let (a, _registry) = start(rec.clone(), 4).await;
        enqueue(&a, "slow");
        wait_until("slow to start", || rec.running_now.load(Ordering::SeqCst) == 1).await;
        for _ in 0..10 {
            enqueue(&a, "slow");
        }
        wait_until("both rounds of slow", || calls(&rec, "slow") == 2).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(calls(&rec, "slow"), 2, "ten changes during a reconcile make one more reconcile");
        let log = rec.log.lock().unwrap().clone();
        let runs: Vec<(Instant, Instant)> =
            log.iter().filter(|(n, _, _)| n == "slow").map(|(_, s, e)| (*s, *e)).collect();
        assert!(runs[1].0 >= runs[0].1, "the second run started after the first ended");
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_an_idle_actor_stops() {
        let rec = Arc::new(Recorder::default());
        let (a, _registry) = start(rec.clone(), 2).await;
        for i in 0..6 {
            enqueue(&a, &format!("obj-{i}"));
        }
        wait_until("all six", || (0..6).all(|i| calls(&rec, &format!("obj-{i}")) == 1)).await;
        assert!(rec.max_running.load(Ordering::SeqCst) <= 2, "at most 2 reconciles at once");
        wait_until("the idle actor to stop", || a.get_status() == ractor::ActorStatus::Stopped).await;
    }
}
