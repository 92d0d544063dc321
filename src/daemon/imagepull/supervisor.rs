//! [`PullSupervisor`]: a node's image puller. One per node with a NodeImage, under the process's
//! [`ImagePullers`] (a [`NodeAgents`]).
//!
//! From each version of the NodeImage it works out the pulls the node owes ([`owed_pulls`]), runs
//! at most `max_workers` [`ImagePullActor`]s at once (the rest report `Waiting`), kills pulls whose
//! tag left the spec or moved to another version, and restarts a crashed pull with back-off.
//! The node's status is computed from the pulls' states ([`node_status`]) and written in batches:
//! after a change it waits `flush_interval` for more, writes at most 0.5 per second with a burst
//! of 5 (as upstream), and keeps one write in flight until the watch brings it back, so it never
//! writes against a version it knows is stale. Writes are merge patches guarded by the object's
//! resourceVersion: the manager writes failures of unanswered tags into the same status.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::ApiResource;
use kube::{Client, Resource};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use rand::Rng;
use serde_json::json;
use tokio::time::Instant;
use tracing::warn;

use super::plan::{PullTask, node_status, owed_pulls, owes_write};
use super::puller::{ImagePullActor, PullArgs, PullMetrics};
use crate::api::nodeimage::{ImageTagStatus, NodeImage, NodeImageStatus};
use crate::daemon::node_agents::{NodeAgents, NodeObject};
use crate::daemon::runtime::ImageRuntime;
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::work_queue::Backoff;

/// A tag of an image: (image, tag).
pub type TagKey = (String, String);

/// How long a written status may stay unseen before the node stops waiting for it to come back.
const ECHO_WAIT: Duration = Duration::from_secs(5);
/// With nothing to do, the status is looked at again this often (for the 12 h refresh).
const IDLE_RECHECK: Duration = Duration::from_secs(20 * 60);

/// A node's image service, by node name.
pub type ImageRuntimeFor = Arc<dyn Fn(&str) -> Arc<dyn ImageRuntime> + Send + Sync>;

/// What every node's puller shares.
#[derive(Clone)]
pub struct PullContext {
    pub runtime_for: ImageRuntimeFor,
    /// Reads pull secrets; None: pulls are anonymous.
    pub secrets: Option<Client>,
    pub metrics: PullMetrics,
    /// How long a change waits for more before the status is written.
    pub flush_interval: Duration,
    /// Pulls at once per node; 0: no limit.
    pub max_workers: usize,
}

/// The process's pullers, one per node with a NodeImage.
pub type ImagePullers = NodeAgents<PullSupervisor, NodeImage>;

pub enum PullSupervisorMsg {
    /// The node's NodeImage as it is now (None: deleted).
    NodeImage(Option<Box<NodeImage>>),
    /// A pull's state.
    Status {
        key: TagKey,
        status: ImageTagStatus,
    },
    Flush,
    /// A crashed pull's back-off is over.
    Retry(TagKey),
}

impl From<NodeObject<NodeImage>> for PullSupervisorMsg {
    fn from(o: NodeObject<NodeImage>) -> Self {
        PullSupervisorMsg::NodeImage(o.0)
    }
}

pub struct PullSupervisorArgs {
    pub node: String,
    pub ctx: PullContext,
}

#[derive(Clone)]
pub struct PullSupervisor;

struct RunningPull {
    actor: ActorRef<super::puller::PullMsg>,
    version: i64,
}

pub struct PullSupervisorState {
    node: String,
    ctx: PullContext,
    runtime: Arc<dyn ImageRuntime>,
    /// The NodeImage as last seen.
    object: Option<NodeImage>,
    pulls: HashMap<TagKey, RunningPull>,
    by_actor: HashMap<ActorId, TagKey>,
    /// Owed pulls waiting for a worker, in spec order.
    waiting: VecDeque<PullTask>,
    /// This node's share of the process-wide waiting gauge.
    waiting_counted: i64,
    /// This process's state of each tag it works on (Waiting, Pulling, or how it ended).
    live: BTreeMap<TagKey, ImageTagStatus>,
    /// Crashed pulls: how often, and not before when they run again.
    crashes: HashMap<TagKey, (u32, Instant)>,
    /// The status last written and not yet seen in the object, with when.
    unechoed: Option<(NodeImageStatus, Instant)>,
    last_write: Option<Timestamp>,
    limiter: DefaultDirectRateLimiter,
    jitter: Duration,
    flush_at: Option<Instant>,
    failed_writes: u32,
}

impl Actor for PullSupervisor {
    type Msg = PullSupervisorMsg;
    type State = PullSupervisorState;
    type Arguments = PullSupervisorArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PullSupervisorMsg>,
        args: PullSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let quota = Quota::with_period(Duration::from_secs(2))
            .ok_or("zero status write period")?
            .allow_burst(NonZeroU32::new(5).ok_or("zero burst")?);
        Ok(PullSupervisorState {
            runtime: (args.ctx.runtime_for)(&args.node),
            node: args.node,
            ctx: args.ctx,
            object: None,
            pulls: HashMap::new(),
            by_actor: HashMap::new(),
            waiting: VecDeque::new(),
            waiting_counted: 0,
            live: BTreeMap::new(),
            crashes: HashMap::new(),
            unechoed: None,
            last_write: None,
            limiter: RateLimiter::direct(quota),
            jitter: Duration::from_secs(rand::rng().random_range(0..3600)),
            flush_at: None,
            failed_writes: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PullSupervisorMsg>,
        msg: PullSupervisorMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PullSupervisorMsg::NodeImage(object) => {
                let object = object.map(|o| *o);
                if let (Some((written, at)), Some(o)) = (&st.unechoed, &object)
                    && (o.status.as_ref() == Some(written) || at.elapsed() >= ECHO_WAIT)
                {
                    st.unechoed = None;
                }
                st.object = object;
                st.sync(&myself).await;
                st.schedule_flush(&myself, st.ctx.flush_interval);
            }
            PullSupervisorMsg::Status { key, status } => {
                // A pull killed a moment ago may still report; only running pulls count.
                if st.pulls.get(&key).is_some_and(|p| Some(p.version) == status.version) {
                    let finished = status.completion_time.is_some();
                    st.live.insert(key.clone(), status);
                    if finished {
                        // Ended here, not by the actor stopping itself: its exit could overtake
                        // this message (supervision events come first) and restart the pull.
                        st.forget_pull(&key, false);
                        st.sync(&myself).await;
                    }
                    st.schedule_flush(&myself, st.ctx.flush_interval);
                }
            }
            PullSupervisorMsg::Retry(_) => {
                st.sync(&myself).await;
                st.schedule_flush(&myself, st.ctx.flush_interval);
            }
            PullSupervisorMsg::Flush => {
                if st.flush_at.is_some_and(|at| at <= Instant::now()) {
                    st.flush_at = None;
                    st.flush(&myself).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PullSupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (who, crashed) = match evt {
            SupervisionEvent::ActorTerminated(who, _, _) => (who, None),
            SupervisionEvent::ActorFailed(who, error) => (who, Some(error)),
            _ => return Ok(()),
        };
        let Some(key) = st.by_actor.remove(&who.get_id()) else { return Ok(()) };
        // A pull this supervisor ended or replaced is already forgotten.
        if st.pulls.get(&key).is_none_or(|p| p.actor.get_id() != who.get_id()) {
            return Ok(());
        }
        st.pulls.remove(&key);
        st.ctx.metrics.active.dec();
        if let Some(error) = crashed {
            let n = st.crashes.get(&key).map_or(1, |(n, _)| n + 1);
            let delay = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) }.delay(n);
            warn!(node = %st.node, image = %key.0, tag = %key.1, %error, ?delay, "pull crashed; restarting");
            st.crashes.insert(key.clone(), (n, Instant::now() + delay));
            // Its Pulling state stays until the restarted pull reports.
            myself.send_after(delay, move || PullSupervisorMsg::Retry(key));
        }
        st.sync(&myself).await;
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<PullSupervisorMsg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        st.stop_all();
        Ok(())
    }
}

impl PullSupervisorState {
    /// Brings the pulls in line with the NodeImage: stops what is no longer owed, starts what is,
    /// up to the worker limit.
    async fn sync(&mut self, myself: &ActorRef<PullSupervisorMsg>) {
        let Some(ni) = self.object.as_ref() else {
            self.stop_all();
            self.live.clear();
            return;
        };
        let node_image = ni.object_ref(&());
        let asked: HashMap<TagKey, i64> = ni
            .spec
            .images
            .iter()
            .flatten()
            .flat_map(|(image, s)| s.tags.iter().map(move |t| ((image.clone(), t.tag.clone()), t.version.unwrap_or(0))))
            .collect();
        self.live.retain(|k, s| asked.get(k) == Some(&s.version.unwrap_or(0)));
        self.crashes.retain(|k, _| asked.contains_key(k));
        let current = node_status(&ni.spec, ni.status.as_ref(), &self.live);
        let owed = owed_pulls(&ni.spec, Some(&current));
        let owed_versions: HashMap<TagKey, i64> =
            owed.iter().map(|t| ((t.image.clone(), t.tag.clone()), t.version)).collect();
        let stale: Vec<TagKey> = self
            .pulls
            .iter()
            .filter(|(k, p)| owed_versions.get(*k) != Some(&p.version))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.forget_pull(&key, true);
        }
        let now = Instant::now();
        self.waiting = owed
            .into_iter()
            .filter(|t| {
                let key = (t.image.clone(), t.tag.clone());
                !self.pulls.contains_key(&key) && self.crashes.get(&key).is_none_or(|(_, until)| *until <= now)
            })
            .collect();
        while self.ctx.max_workers == 0 || self.pulls.len() < self.ctx.max_workers {
            let Some(task) = self.waiting.pop_front() else { break };
            self.start(myself, task, node_image.clone()).await;
        }
        for t in &self.waiting {
            let key = (t.image.clone(), t.tag.clone());
            if self.live.get(&key).is_none_or(|s| s.version != Some(t.version)) {
                self.live.insert(key, t.waiting());
            }
        }
        let waiting = i64::try_from(self.waiting.len()).unwrap_or(i64::MAX);
        self.ctx.metrics.waiting.add(waiting - self.waiting_counted);
        self.waiting_counted = waiting;
    }

    async fn start(&mut self, myself: &ActorRef<PullSupervisorMsg>, task: PullTask, node_image: ObjectReference) {
        let key = (task.image.clone(), task.tag.clone());
        let version = task.version;
        let args = PullArgs {
            task,
            node_image,
            runtime: self.runtime.clone(),
            secrets: self.ctx.secrets.clone(),
            supervisor: myself.clone(),
            metrics: self.ctx.metrics.clone(),
        };
        match Actor::spawn_linked(None, ImagePullActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), key.clone());
                self.pulls.insert(key, RunningPull { actor, version });
                self.ctx.metrics.active.inc();
            }
            Err(e) => warn!(node = %self.node, image = %key.0, tag = %key.1, error = %e, "starting a pull failed"),
        }
    }

    /// Ends a pull: `cancel` kills it mid-call; otherwise it has finished and just stops.
    fn forget_pull(&mut self, key: &TagKey, cancel: bool) {
        if let Some(p) = self.pulls.remove(key) {
            if cancel {
                p.actor.kill();
            } else {
                p.actor.stop(None);
            }
            self.ctx.metrics.active.dec();
        }
    }

    fn stop_all(&mut self) {
        for (_, p) in self.pulls.drain() {
            p.actor.kill();
            self.ctx.metrics.active.dec();
        }
        self.by_actor.clear();
        self.waiting.clear();
        self.ctx.metrics.waiting.sub(self.waiting_counted);
        self.waiting_counted = 0;
    }

    /// Flushes after `delay` unless a flush is due sooner.
    fn schedule_flush(&mut self, myself: &ActorRef<PullSupervisorMsg>, delay: Duration) {
        let at = Instant::now() + delay;
        if self.flush_at.is_some_and(|due| due <= at) {
            return;
        }
        self.flush_at = Some(at);
        myself.send_after(delay, || PullSupervisorMsg::Flush);
    }

    async fn flush(&mut self, myself: &ActorRef<PullSupervisorMsg>) {
        let Some(ni) = &self.object else { return };
        if let Some((_, at)) = &self.unechoed {
            if at.elapsed() < ECHO_WAIT {
                // The object in hand predates the last write; the watch brings the next one.
                self.schedule_flush(myself, ECHO_WAIT - at.elapsed());
                return;
            }
            self.unechoed = None;
        }
        let next = node_status(&ni.spec, ni.status.as_ref(), &self.live);
        if !owes_write(ni.status.as_ref(), &next, self.last_write, Timestamp::now(), self.jitter) {
            self.schedule_flush(myself, IDLE_RECHECK);
            return;
        }
        if let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            self.schedule_flush(myself, wait);
            return;
        }
        let target = WriteTarget {
            resource: ApiResource::erase::<NodeImage>(&()),
            namespace: None,
            name: self.node.clone(),
            status: true,
        };
        let patch = json!({
            "metadata": { "resourceVersion": ni.metadata.resource_version },
            "status": next.merge_patch_from(ni.status.as_ref()),
        });
        match write(target, WriteOp::MergePatch(patch)).await {
            Ok(()) => {
                self.ctx.metrics.status_writes.with_label_values(&["success"]).inc();
                self.failed_writes = 0;
                self.unechoed = Some((next, Instant::now()));
                self.last_write = Some(Timestamp::now());
                self.schedule_flush(myself, ECHO_WAIT);
            }
            // Someone wrote since (the manager, or the echo of this node's last write is on its
            // way): the watch brings the new version, and with it another flush.
            Err(WriteError::Api { code: 409, .. }) => {
                self.ctx.metrics.status_writes.with_label_values(&["conflict"]).inc();
                self.schedule_flush(myself, ECHO_WAIT);
            }
            Err(e) => {
                self.ctx.metrics.status_writes.with_label_values(&["error"]).inc();
                self.failed_writes += 1;
                let delay = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(60) }
                    .delay(self.failed_writes);
                warn!(node = %self.node, error = %e, ?delay, "writing the NodeImage status failed; retrying");
                self.schedule_flush(myself, delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;
    use serde_json::json;

    use crate::daemon::runtime::{RegistryAuth, RuntimeError};
    use crate::runtime::metrics::MetricsRegistry;

    /// Pulls take 1 s; the first pull of `crash:1` panics; it counts pulls running at once, the
    /// most at once, calls per reference, and pulls dropped before they ended.
    #[derive(Default)]
    struct Node {
        running: AtomicUsize,
        most: AtomicUsize,
        dropped: AtomicUsize,
        calls: Mutex<BTreeMap<String, usize>>,
    }

    /// Counts a pull as running while it lives; one dropped before it ended was cancelled.
    struct Running<'a>(&'a Node, bool);

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.running.fetch_sub(1, Ordering::SeqCst);
            if !self.1 {
                self.0.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl ImageRuntime for Node {
        fn image_id(&self, _: &str) -> BoxFuture<'_, Result<Option<String>, RuntimeError>> {
            Box::pin(async { Ok(None) })
        }

        fn pull_image(&self, reference: &str, _: Option<&RegistryAuth>) -> BoxFuture<'_, Result<String, RuntimeError>> {
            let reference = reference.to_string();
            Box::pin(async move {
                let n = {
                    let mut calls = self.calls.lock().unwrap();
                    let n = calls.entry(reference.clone()).or_default();
                    *n += 1;
                    *n
                };
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                let mut guard = Running(self, false);
                assert!(!(reference == "crash:1" && n == 1), "the runtime client crashed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                guard.1 = true;
                Ok(format!("sha256:{reference}"))
            })
        }
    }

    fn node_image(tags: &[(&str, &str)]) -> NodeImage {
        let mut images = serde_json::Map::new();
        for (image, tag) in tags {
            let entry = images.entry(image.to_string()).or_insert_with(|| json!({ "tags": [] }));
            entry["tags"].as_array_mut().unwrap().push(json!({ "tag": tag, "version": 0 }));
        }
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage",
            "metadata": { "name": "n1", "resourceVersion": "1" },
            "spec": { "images": images }
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn pulls_run_two_at_a_time_crashed_ones_restart_and_removed_ones_are_cancelled() {
        let node = Arc::new(Node::default());
        let metrics = PullMetrics::register(&MetricsRegistry::new()).unwrap();
        let runtime = node.clone();
        let ctx = PullContext {
            runtime_for: Arc::new(move |_: &str| -> Arc<dyn ImageRuntime> { runtime.clone() }),
            secrets: None,
            metrics: metrics.clone(),
            flush_interval: Duration::from_millis(100),
            max_workers: 2,
        };
        let args = PullSupervisorArgs { node: "n1".into(), ctx };
        let (sup, _) = Actor::spawn(None, PullSupervisor, args).await.unwrap();
        let tags = [("a", "1"), ("b", "1"), ("c", "1"), ("crash", "1"), ("d", "1"), ("e", "1")];
        sup.send_message(PullSupervisorMsg::NodeImage(Some(Box::new(node_image(&tags))))).unwrap();
        // Spec order: a and b pull first; at 1 s c and crash start, crash's panics, so d takes
        // its slot while crash backs off.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!((metrics.active.get(), metrics.waiting.get()), (2, 4), "two pulling, four waiting");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let calls: Vec<String> = node.calls.lock().unwrap().keys().cloned().collect();
        assert_eq!(calls, ["a:1", "b:1", "c:1", "crash:1", "d:1"]);

        // d leaves the spec while it pulls, e while it waits.
        let fewer = [("a", "1"), ("b", "1"), ("c", "1"), ("crash", "1")];
        sup.send_message(PullSupervisorMsg::NodeImage(Some(Box::new(node_image(&fewer))))).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;

        assert_eq!(node.most.load(Ordering::SeqCst), 2, "never more than 2 pulls at once");
        let calls = node.calls.lock().unwrap().clone();
        assert_eq!(calls.get("crash:1"), Some(&2), "the crashed pull ran again: {calls:?}");
        assert_eq!(calls.get("e:1"), None, "a tag removed while waiting never pulls");
        for t in ["a:1", "b:1", "c:1", "d:1"] {
            assert_eq!(calls.get(t), Some(&1), "{t} pulled once: {calls:?}");
        }
        assert_eq!(node.dropped.load(Ordering::SeqCst), 2, "d's pull was cancelled, crash's first unwound");
        assert_eq!(metrics.pulls.with_label_values(&["succeeded"]).get(), 4, "a, b, c and crash");
        assert_eq!((metrics.active.get(), metrics.waiting.get()), (0, 0));
        sup.stop(None);
    }
}
