//! ApiWriter: every write of the manager goes through here: merge patches, creates and deletes,
//! in order per object.
//!
//! Writes wait for a token of one shared bucket (`--kube-api-qps`, `--kube-api-burst`), so a
//! replica never exceeds its budget however many actors write. While a write waits, later merge
//! patches to the same object fold into it ([`merge_patch::compose`]), so a burst of updates to
//! one object costs one request. Failed writes that may succeed later (429, 5xx, transport) are
//! retried with back-off; each caller gets the outcome of the request that carried its patch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::merge_patch;
use super::metrics::MetricsRegistry;
use super::work_queue::Backoff;

/// Attempts per write before its callers get the error.
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("{code}: {message}")]
    Api { code: u16, message: String },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("the writer stopped before the write was sent")]
    Stopped,
}

impl WriteError {
    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            WriteError::Api { code, .. } => *code == 429 || *code >= 500,
            WriteError::Transport(_) => true,
            WriteError::Stopped => false,
        }
    }
}

/// The object a write goes to.
#[derive(Debug, Clone)]
pub struct WriteTarget {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    /// Write the status subresource instead of the object.
    pub status: bool,
}

impl WriteTarget {
    fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}{}",
            self.resource.group,
            self.resource.plural,
            self.namespace.as_deref().unwrap_or(""),
            self.name,
            if self.status { "/status" } else { "" }
        )
    }
}

type Reply = RpcReplyPort<Result<(), WriteError>>;

/// What a write does to its target.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// A JSON merge patch; several waiting ones fold into one.
    MergePatch(Value),
    /// A strategic merge patch (built-in kinds only: lists merge by their keys, `$patch: delete`
    /// removes one entry).
    StrategicPatch(Value),
    /// Server-side apply of `object` as `field_manager` (forced: the manager's fields are its
    /// own). A waiting apply by the same manager is replaced by a later one, which says it all.
    Apply { field_manager: String, object: Value },
    /// Create the object (the target names it); 409 if it exists.
    Create(Value),
    /// Delete the object; 404 if it is gone.
    Delete,
}

impl WriteOp {
    fn verb(&self, status: bool) -> &'static str {
        match (self, status) {
            (WriteOp::MergePatch(_), false) => "patch",
            (WriteOp::MergePatch(_), true) => "patch_status",
            (WriteOp::StrategicPatch(_), false) => "patch",
            (WriteOp::StrategicPatch(_), true) => "patch_status",
            (WriteOp::Apply { .. }, false) => "apply",
            (WriteOp::Apply { .. }, true) => "apply_status",
            (WriteOp::Create(_), _) => "create",
            (WriteOp::Delete, _) => "delete",
        }
    }
}

impl WriteOp {
    /// The patch request this op is, or the op back if it is no patch.
    fn into_patch(self) -> Result<(PatchParams, Patch<Value>), WriteOp> {
        match self {
            WriteOp::MergePatch(p) => Ok((PatchParams::default(), Patch::Merge(p))),
            WriteOp::StrategicPatch(p) => Ok((PatchParams::default(), Patch::Strategic(p))),
            WriteOp::Apply { field_manager, object } => {
                Ok((PatchParams::apply(&field_manager).force(), Patch::Apply(object)))
            }
            other => Err(other),
        }
    }
}

/// One request waiting for a token, and everyone whose write it carries.
struct PendingWrite {
    op: WriteOp,
    replies: Vec<Reply>,
    attempts: u32,
}

pub enum WriterMsg {
    /// Merge-patch `target` with `patch`; the reply (if any) gets the request's outcome.
    Patch { target: WriteTarget, patch: Value, reply: Option<Reply> },
    /// Any write to `target`, in order with the others to the same object.
    Write { target: WriteTarget, op: WriteOp, reply: Option<Reply> },
    /// A token is available: send the oldest waiting write.
    Flush,
    /// A request came back.
    Sent { key: String, result: Result<(), WriteError> },
    /// A failed write's back-off is over.
    Retry { key: String },
}

#[derive(Clone)]
pub struct WriterMetrics {
    requests: IntCounterVec,
    coalesced: IntCounter,
    queue_depth: IntGauge,
    in_flight: IntGauge,
    throttle_wait: Histogram,
}

impl WriterMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "kruise_writer_requests_total",
                    "Writes sent by the ApiWriter, by verb, resource and status code",
                ),
                &["verb", "resource", "code"],
            )?,
            coalesced: IntCounter::new("kruise_writer_coalesced_total", "Patches folded into a write already waiting")?,
            queue_depth: IntGauge::new("kruise_writer_queue_depth", "Writes waiting for a rate-limit token")?,
            in_flight: IntGauge::new("kruise_writer_in_flight", "Writes sent and not yet answered")?,
            throttle_wait: Histogram::with_opts(
                HistogramOpts::new("kruise_writer_throttle_wait_seconds", "Time a write waited for a rate-limit token")
                    .buckets(prometheus::exponential_buckets(0.001, 4.0, 9).unwrap_or_default()),
            )?,
        };
        registry.register(&m.requests)?;
        registry.register(&m.coalesced)?;
        registry.register(&m.queue_depth)?;
        registry.register(&m.in_flight)?;
        registry.register(&m.throttle_wait)?;
        Ok(m)
    }
}

#[derive(Clone)]
pub struct WriterArgs {
    pub client: Client,
    /// Requests per second and burst for this replica.
    pub qps: f64,
    pub burst: u32,
    /// Writes on the wire at once. When the API server answers slower than the rate allows, the
    /// rest wait here (and keep coalescing) instead of piling onto a struggling server.
    pub max_in_flight: usize,
    pub metrics: WriterMetrics,
}

pub struct WriterState {
    client: Client,
    limiter: Arc<DefaultDirectRateLimiter>,
    metrics: WriterMetrics,
    targets: HashMap<String, WriteTarget>,
    /// Per object, the requests still to send, in order.
    pending: HashMap<String, VecDeque<PendingWrite>>,
    /// Objects in first-come order, so no object starves.
    order: VecDeque<String>,
    in_flight: HashSet<String>,
    max_in_flight: usize,
    /// Objects waiting out a retry back-off.
    backing_off: HashSet<String>,
    flush_scheduled: bool,
    backoff: Backoff,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid rate limit: qps {qps} and burst {burst} must both be positive")]
pub struct BadRateLimit {
    qps: f64,
    burst: u32,
}

/// Checks `--kube-api-qps` / `--kube-api-burst` before anything starts.
pub fn check_rate_limit(qps: f64, burst: u32) -> Result<(), BadRateLimit> {
    quota(qps, burst).map(|_| ())
}

fn quota(qps: f64, burst: u32) -> Result<Quota, BadRateLimit> {
    let err = || BadRateLimit { qps, burst };
    if !(qps.is_finite() && qps > 0.0) {
        return Err(err());
    }
    let period = Duration::try_from_secs_f64(1.0 / qps).map_err(|_| err())?;
    let burst = NonZeroU32::new(burst).ok_or_else(err)?;
    Quota::with_period(period).map(|q| q.allow_burst(burst)).ok_or_else(err)
}

/// Sends one write through the replica's ApiWriter and waits for its outcome.
pub async fn write(target: WriteTarget, op: WriteOp) -> Result<(), WriteError> {
    let writer: ActorRef<WriterMsg> =
        ractor::registry::where_is(super::supervisor::API_WRITER).ok_or(WriteError::Stopped)?.into();
    let (tx, rx) = ractor::concurrency::oneshot();
    writer.send_message(WriterMsg::Write { target, op, reply: Some(tx.into()) }).map_err(|_| WriteError::Stopped)?;
    rx.await.map_err(|_| WriteError::Stopped)?
}

pub struct ApiWriter;

impl Actor for ApiWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, args: WriterArgs) -> Result<Self::State, ActorProcessingErr> {
        let limiter = Arc::new(RateLimiter::direct(quota(args.qps, args.burst)?));
        Ok(WriterState {
            client: args.client,
            limiter,
            metrics: args.metrics,
            targets: HashMap::new(),
            pending: HashMap::new(),
            order: VecDeque::new(),
            in_flight: HashSet::new(),
            max_in_flight: args.max_in_flight.max(1),
            backing_off: HashSet::new(),
            flush_scheduled: false,
            backoff: Backoff { base: Duration::from_millis(100), max: Duration::from_secs(10) },
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Patch { target, patch, reply } => st.enqueue(target, WriteOp::MergePatch(patch), reply),
            WriterMsg::Write { target, op, reply } => st.enqueue(target, op, reply),
            WriterMsg::Flush => {
                st.flush_scheduled = false;
                st.send_next(&myself);
            }
            WriterMsg::Sent { key, result } => st.finish(&myself, key, result),
            WriterMsg::Retry { key } => {
                st.backing_off.remove(&key);
            }
        }
        st.metrics.queue_depth.set(st.pending.values().map(|q| q.len() as i64).sum());
        st.metrics.in_flight.set(st.in_flight.len() as i64);
        st.schedule_flush(&myself);
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for write in st.pending.drain().flat_map(|(_, q)| q) {
            for reply in write.replies {
                let _ = reply.send(Err(WriteError::Stopped));
            }
        }
        Ok(())
    }
}

impl WriterState {
    fn enqueue(&mut self, target: WriteTarget, op: WriteOp, reply: Option<Reply>) {
        let key = target.key();
        self.targets.entry(key.clone()).or_insert(target);
        let in_flight = self.in_flight.contains(&key);
        let queue = self.pending.entry(key.clone()).or_default();
        if queue.is_empty() && !in_flight {
            self.order.push_back(key);
        }
        // Fold into the last waiting request when one patch can say both; never into the request
        // on the wire (the front, while in flight).
        // Only merge patches fold; creates and deletes keep their place in the order.
        let last_is_on_the_wire = in_flight && queue.len() == 1;
        if !last_is_on_the_wire
            && let Some(last) = queue.back_mut()
            && let (WriteOp::MergePatch(earlier), WriteOp::MergePatch(later)) = (&last.op, &op)
            && let Some(composed) = merge_patch::compose(earlier, later)
        {
            last.op = WriteOp::MergePatch(composed);
            last.replies.extend(reply);
            self.metrics.coalesced.inc();
            return;
        }
        if !last_is_on_the_wire
            && let Some(last) = queue.back_mut()
            && let (WriteOp::Apply { field_manager: earlier, .. }, WriteOp::Apply { field_manager: later, .. }) =
                (&last.op, &op)
            && earlier == later
        {
            last.op = op;
            last.replies.extend(reply);
            self.metrics.coalesced.inc();
            return;
        }
        queue.push_back(PendingWrite { op, replies: reply.into_iter().collect(), attempts: 0 });
    }

    fn sendable(&self) -> Option<usize> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        self.order.iter().position(|k| !self.in_flight.contains(k) && !self.backing_off.contains(k))
    }

    /// Waits for a token in a task of its own, so patches keep arriving (and coalescing) meanwhile.
    fn schedule_flush(&mut self, myself: &ActorRef<WriterMsg>) {
        if self.flush_scheduled || self.sendable().is_none() {
            return;
        }
        self.flush_scheduled = true;
        let limiter = self.limiter.clone();
        let wait = self.metrics.throttle_wait.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            limiter.until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5))).await;
            wait.observe(started.elapsed().as_secs_f64());
            let _ = me.send_message(WriterMsg::Flush);
        });
    }

    fn send_next(&mut self, myself: &ActorRef<WriterMsg>) {
        let Some(pos) = self.sendable() else { return };
        let Some(key) = self.order.remove(pos) else { return };
        let (Some(target), Some(write)) =
            (self.targets.get(&key).cloned(), self.pending.get(&key).and_then(|q| q.front()))
        else {
            return;
        };
        let op = write.op.clone();
        self.in_flight.insert(key.clone());
        let client = self.client.clone();
        let me = myself.clone();
        let requests = self.metrics.requests.clone();
        tokio::spawn(async move {
            let api: Api<DynamicObject> = match &target.namespace {
                Some(ns) => Api::namespaced_with(client, ns, &target.resource),
                None => Api::all_with(client, &target.resource),
            };
            let verb = op.verb(target.status);
            let outcome = match op.into_patch() {
                Ok((params, patch)) if target.status => {
                    api.patch_status(&target.name, &params, &patch).await.map(|_| ())
                }
                Ok((params, patch)) => api.patch(&target.name, &params, &patch).await.map(|_| ()),
                Err(WriteOp::Create(object)) => match serde_json::from_value::<DynamicObject>(object) {
                    Ok(o) => api.create(&PostParams::default(), &o).await.map(|_| ()),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                },
                // Only a delete is left.
                Err(_) => api.delete(&target.name, &DeleteParams::default()).await.map(|_| ()),
            };
            let (code, result) = match outcome {
                Ok(()) => ((if verb == "create" { "201" } else { "200" }).to_string(), Ok(())),
                Err(kube::Error::Api(s)) => {
                    (s.code.to_string(), Err(WriteError::Api { code: s.code, message: s.message }))
                }
                Err(e) => ("<error>".to_string(), Err(WriteError::Transport(e.to_string()))),
            };
            requests.with_label_values(&[verb, target.resource.plural.as_str(), code.as_str()]).inc();
            let _ = me.send_message(WriterMsg::Sent { key, result });
        });
    }

    fn finish(&mut self, myself: &ActorRef<WriterMsg>, key: String, result: Result<(), WriteError>) {
        self.in_flight.remove(&key);
        let Some(queue) = self.pending.get_mut(&key) else { return };
        match result {
            Err(e) if e.retryable() && queue.front().is_some_and(|w| w.attempts + 1 < MAX_ATTEMPTS) => {
                let attempts = queue.front_mut().map(|w| {
                    w.attempts += 1;
                    w.attempts
                });
                let delay = self.backoff.delay(attempts.unwrap_or(1));
                debug!(%key, error = %e, ?delay, "write failed; retrying");
                self.backing_off.insert(key.clone());
                let me = myself.clone();
                let k = key.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.send_message(WriterMsg::Retry { key: k });
                });
            }
            result => {
                if let Err(e) = &result {
                    warn!(%key, error = %e, "write failed");
                }
                if let Some(done) = queue.pop_front() {
                    for reply in done.replies {
                        let _ = reply.send(result.clone());
                    }
                }
            }
        }
        if queue.is_empty() {
            self.pending.remove(&key);
            self.targets.remove(&key);
        } else {
            self.order.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_worth_retrying() {
        let api = |code| WriteError::Api { code, message: String::new() };
        assert!(api(429).retryable());
        assert!(api(500).retryable());
        assert!(api(503).retryable());
        assert!(!api(404).retryable());
        assert!(!api(422).retryable());
        assert!(!api(409).retryable(), "a merge patch conflicts only on a precondition, which a retry cannot fix");
        assert!(WriteError::Transport("reset".into()).retryable());
        assert!(!WriteError::Stopped.retryable());
    }

    #[test]
    fn rate_limits_must_be_positive() {
        assert!(quota(20.0, 5).is_ok());
        assert!(quota(0.5, 1).is_ok());
        assert!(quota(0.0, 5).is_err());
        assert!(quota(f64::NAN, 5).is_err());
        assert!(quota(10.0, 0).is_err());
    }
}
