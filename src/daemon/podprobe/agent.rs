//! The actors: a [`ProbeSupervisor`] per daemon process (a [`NodeAgents`]), a [`NodeAgent`] per
//! node it serves, and a [`ProbeActor`] per (pod, container, probe) under each agent.
//!
//! - An agent keeps one ProbeActor per listed probe (started, stopped, given changed specs as the
//!   spec changes), restarts crashed ones with back-off, and writes the node's status from their
//!   results at most once per flush interval, only when it changed. It is the status's only
//!   writer, so it keeps the status it wrote and starts from the object's on (re)start.
//! - A ProbeActor runs its [`ProbeWorker`] on a timer, asking the container runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Probe};
use kube::api::ApiResource;
use prometheus::{IntCounterVec, IntGauge, Opts};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use rand::Rng;
use serde_json::json;
use tracing::{debug, warn};

use super::status::{CachedResult, ResultKey, Transition, next_status, worth_storing};
use super::worker::{ProbeWorker, Recorded, Seed, Step, period};
use crate::api::nodepodprobe::{NodePodProbe, NodePodProbeSpec, NodePodProbeStatus};
use crate::api::podprobemarker::ProbeState;
use crate::daemon::node_agents::{NodeAgents, NodeObject};
use crate::daemon::runtime::{ContainerRuntime, ExecOutcome};
use crate::runtime::api_writer::{WriteOp, WriteTarget, write};
use crate::runtime::events::{self, Reporter};
use crate::runtime::metrics::MetricsRegistry;
use crate::runtime::work_queue::Backoff;

/// The component named in the pod Events.
pub const EVENT_COMPONENT: &str = "kruise-daemon-podprobe";

/// One probe's worker identity: the pod, the container, the probe key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerKey {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub probe: String,
}

impl WorkerKey {
    fn result_key(&self) -> ResultKey {
        (self.uid.clone(), self.probe.clone())
    }
}

/// The probe workers a spec lists, with their probe specs.
pub fn listed_workers(spec: &NodePodProbeSpec) -> HashMap<WorkerKey, Probe> {
    let mut out = HashMap::new();
    for pod in spec.pod_probes.iter().flatten() {
        for p in pod.probes.iter().flatten() {
            let key = WorkerKey {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                uid: pod.uid.clone(),
                container: p.container_name.clone(),
                probe: p.name.clone(),
            };
            out.insert(key, p.probe.clone());
        }
    }
    out
}

#[derive(Clone)]
pub struct ProbeMetrics {
    runs: IntCounterVec,
    status_writes: IntCounterVec,
    workers: IntGauge,
}

impl ProbeMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = ProbeMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "kruise_daemon_probe_runs_total",
                    "Probe executions, by result (succeeded, failed, timeout, error)",
                ),
                &["result"],
            )?,
            status_writes: IntCounterVec::new(
                Opts::new("kruise_daemon_probe_status_writes_total", "NodePodProbe status writes, by result"),
                &["result"],
            )?,
            workers: IntGauge::new("kruise_daemon_probe_workers", "Probe workers running in this process")?,
        };
        registry.register(&m.runs)?;
        registry.register(&m.status_writes)?;
        registry.register(&m.workers)?;
        for r in ["succeeded", "failed", "timeout", "error"] {
            m.runs.with_label_values(&[r]);
        }
        for r in ["success", "error"] {
            m.status_writes.with_label_values(&[r]);
        }
        Ok(m)
    }
}

/// What every agent of the process shares.
#[derive(Clone)]
pub struct AgentContext {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub metrics: ProbeMetrics,
    /// How often at most a node's status is written.
    pub flush_interval: Duration,
    /// When the daemon started: probes of a daemon younger than their period start at a random
    /// point of it, so a (re)start does not run every probe at once.
    pub started: Instant,
}

// ---------------------------------------------------------------------------------------------
// ProbeActor

pub enum ProbeMsg {
    Tick,
    UpdateSpec(Box<Probe>),
}

pub struct ProbeArgs {
    pub key: WorkerKey,
    pub spec: Probe,
    pub seed: Option<Seed>,
    pub agent: ActorRef<AgentMsg>,
    pub ctx: AgentContext,
}

pub struct ProbeActor;

pub struct ProbeActorState {
    key: WorkerKey,
    worker: ProbeWorker,
    agent: ActorRef<AgentMsg>,
    ctx: AgentContext,
}

impl Actor for ProbeActor {
    type Msg = ProbeMsg;
    type State = ProbeActorState;
    type Arguments = ProbeArgs;

    async fn pre_start(&self, myself: ActorRef<ProbeMsg>, args: ProbeArgs) -> Result<Self::State, ActorProcessingErr> {
        let p = period(&args.spec);
        let first = if args.ctx.started.elapsed() < p {
            Duration::from_millis(rand::rng().random_range(0..p.as_millis().max(1) as u64))
        } else {
            Duration::ZERO
        };
        myself.send_after(first, || ProbeMsg::Tick);
        Ok(ProbeActorState {
            key: args.key,
            worker: ProbeWorker::new(args.spec, args.seed),
            agent: args.agent,
            ctx: args.ctx,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ProbeMsg>,
        msg: ProbeMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProbeMsg::UpdateSpec(spec) => {
                if let Some(r) = st.worker.update_spec(*spec) {
                    st.report(r);
                }
            }
            ProbeMsg::Tick => {
                let next = st.probe_once().await.unwrap_or_else(|| period(st.worker.spec()));
                myself.send_after(next, || ProbeMsg::Tick);
            }
        }
        Ok(())
    }
}

impl ProbeActorState {
    fn report(&self, record: Recorded) {
        let _ = self.agent.send_message(AgentMsg::Result { key: self.key.clone(), record, at: Timestamp::now() });
    }

    /// Runs the probe if it is due; returns when to tick next if sooner than a period.
    async fn probe_once(&mut self) -> Option<Duration> {
        let runtime = self.ctx.runtime.clone();
        let container = match runtime.container(&self.key.uid, &self.key.container).await {
            Ok(c) => c,
            Err(e) => {
                debug!(pod = %self.key.pod, error = %e, "container lookup failed");
                self.ctx.metrics.runs.with_label_values(&["error"]).inc();
                return None;
            }
        };
        match self.worker.tick(container.as_ref(), Timestamp::now()) {
            Step::Wait(records) => records.into_iter().for_each(|r| self.report(r)),
            Step::Delayed { records, ready_in } => {
                records.into_iter().for_each(|r| self.report(r));
                return Some(ready_in.min(period(self.worker.spec())));
            }
            Step::Exec { records, container_id, command, timeout } => {
                records.into_iter().for_each(|r| self.report(r));
                // The runtime enforces the timeout; this is the backstop for one that does not.
                let outcome = match tokio::time::timeout(
                    timeout + Duration::from_secs(1),
                    runtime.exec_sync(&container_id, &command, timeout),
                )
                .await
                {
                    Ok(Ok(o)) => o,
                    Ok(Err(e)) => {
                        debug!(pod = %self.key.pod, error = %e, "exec failed; nothing recorded");
                        self.ctx.metrics.runs.with_label_values(&["error"]).inc();
                        return None;
                    }
                    Err(_) => ExecOutcome::TimedOut,
                };
                let label = match &outcome {
                    ExecOutcome::Exited { exit_code: 0, .. } => "succeeded",
                    ExecOutcome::Exited { .. } => "failed",
                    ExecOutcome::TimedOut => "timeout",
                };
                self.ctx.metrics.runs.with_label_values(&[label]).inc();
                if let Some(r) = self.worker.outcome(&container_id, outcome) {
                    self.report(r);
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// NodeAgent

pub enum AgentMsg {
    /// The node's NodePodProbe as it is now (None: deleted).
    Probes(Option<Box<NodePodProbe>>),
    Result {
        key: WorkerKey,
        record: Recorded,
        at: Timestamp,
    },
    Flush,
    Restart(WorkerKey),
}

pub struct AgentArgs {
    pub node: String,
    pub ctx: AgentContext,
}

#[derive(Clone)]
pub struct NodeAgent;

impl From<NodeObject<NodePodProbe>> for AgentMsg {
    fn from(o: NodeObject<NodePodProbe>) -> Self {
        AgentMsg::Probes(o.0)
    }
}

/// The process's probe agents, one per node with a NodePodProbe.
pub type ProbeSupervisor = NodeAgents<NodeAgent, NodePodProbe>;

pub struct AgentState {
    node: String,
    ctx: AgentContext,
    spec: NodePodProbeSpec,
    /// The status as this agent last wrote it (from the object until the first write).
    status: Option<NodePodProbeStatus>,
    workers: HashMap<WorkerKey, (ActorRef<ProbeMsg>, Probe)>,
    by_actor: HashMap<ActorId, WorkerKey>,
    restarts: HashMap<WorkerKey, u32>,
    results: HashMap<ResultKey, CachedResult>,
    dirty: bool,
    flush_scheduled: bool,
    failed_writes: u32,
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(&self, _: ActorRef<AgentMsg>, args: AgentArgs) -> Result<Self::State, ActorProcessingErr> {
        Ok(AgentState {
            node: args.node,
            ctx: args.ctx,
            spec: NodePodProbeSpec::default(),
            status: None,
            workers: HashMap::new(),
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
            results: HashMap::new(),
            dirty: false,
            flush_scheduled: false,
            failed_writes: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::Probes(Some(npp)) => {
                if st.status.is_none() {
                    st.status = Some(npp.status.clone().unwrap_or_default());
                }
                st.spec = npp.spec.clone();
                st.sync_workers(&myself).await;
                st.dirty = true;
            }
            AgentMsg::Probes(None) => {
                // No NodePodProbe: nothing to run and nowhere to write.
                st.spec = NodePodProbeSpec::default();
                st.sync_workers(&myself).await;
                st.status = None;
                st.results.clear();
                st.dirty = false;
            }
            AgentMsg::Result { key, record, at } => {
                if st.workers.contains_key(&key) {
                    let new = CachedResult {
                        container_id: record.container_id,
                        state: record.state,
                        message: record.message,
                        at,
                    };
                    let rk = key.result_key();
                    if worth_storing(st.results.get(&rk), &new) {
                        st.results.insert(rk, new);
                        st.dirty = true;
                    }
                }
            }
            AgentMsg::Flush => {
                st.flush_scheduled = false;
                st.flush().await;
            }
            AgentMsg::Restart(key) => {
                if !st.workers.contains_key(&key)
                    && let Some(spec) = listed_workers(&st.spec).remove(&key)
                {
                    st.start_worker(&myself, key, spec).await;
                }
            }
        }
        if st.dirty && !st.flush_scheduled && st.status.is_some() {
            st.flush_scheduled = true;
            let delay = if st.failed_writes == 0 {
                st.ctx.flush_interval
            } else {
                Backoff { base: Duration::from_millis(500), max: Duration::from_secs(50) }.delay(st.failed_writes)
            };
            myself.send_after(delay, || AgentMsg::Flush);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AgentMsg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A crashed probe is restarted with back-off; one that stopped on our request is gone.
        // (ractor's default would stop the agent with it.)
        if let SupervisionEvent::ActorFailed(who, error) = evt
            && let Some(key) = st.by_actor.remove(&who.get_id())
        {
            st.workers.remove(&key);
            st.ctx.metrics.workers.dec();
            let n = st.restarts.entry(key.clone()).or_default();
            *n += 1;
            let delay = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(30) }.delay(*n);
            warn!(node = %st.node, pod = %key.pod, probe = %key.probe, %error, ?delay, "probe worker crashed; restarting");
            myself.send_after(delay, move || AgentMsg::Restart(key));
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<AgentMsg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for (a, _) in st.workers.values() {
            a.stop(None);
        }
        st.ctx.metrics.workers.sub(st.workers.len() as i64);
        Ok(())
    }
}

impl AgentState {
    async fn sync_workers(&mut self, myself: &ActorRef<AgentMsg>) {
        let listed = listed_workers(&self.spec);
        let gone: Vec<WorkerKey> = self.workers.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
        for key in gone {
            if let Some((a, _)) = self.workers.remove(&key) {
                self.by_actor.remove(&a.get_id());
                a.stop(None);
                self.ctx.metrics.workers.dec();
            }
            self.results.remove(&key.result_key());
            self.restarts.remove(&key);
        }
        for (key, spec) in listed {
            match self.workers.get_mut(&key) {
                Some((a, current)) if *current != spec => {
                    *current = spec.clone();
                    let _ = a.send_message(ProbeMsg::UpdateSpec(Box::new(spec)));
                }
                Some(_) => {}
                None => self.start_worker(myself, key, spec).await,
            }
        }
    }

    async fn start_worker(&mut self, myself: &ActorRef<AgentMsg>, key: WorkerKey, spec: Probe) {
        let seed = self.seed(&key);
        let args =
            ProbeArgs { key: key.clone(), spec: spec.clone(), seed, agent: myself.clone(), ctx: self.ctx.clone() };
        match Actor::spawn_linked(None, ProbeActor, args, myself.get_cell()).await {
            Ok((a, _)) => {
                self.by_actor.insert(a.get_id(), key.clone());
                self.workers.insert(key, (a, spec));
                self.ctx.metrics.workers.inc();
            }
            Err(e) => warn!(node = %self.node, pod = %key.pod, error = %e, "starting a probe worker failed"),
        }
    }

    /// What the status already records for a probe (a restarted daemon carries on from it).
    fn seed(&self, key: &WorkerKey) -> Option<Seed> {
        let status = self.status.as_ref()?;
        let entry = status.pod_probe_statuses.iter().flatten().find(|e| e.uid == key.uid)?;
        let s = entry.probe_states.iter().flatten().find(|s| s.name == key.probe)?;
        Some(Seed { state: s.state, last_probe_time: s.last_probe_time.as_ref()?.0 })
    }

    async fn flush(&mut self) {
        let Some(current) = self.status.clone() else { return };
        let (next, transitions) = next_status(&current, &self.spec, &self.results, Timestamp::now());
        self.dirty = false;
        if next == current {
            return;
        }
        let target = WriteTarget {
            resource: ApiResource::erase::<NodePodProbe>(&()),
            namespace: None,
            name: self.node.clone(),
            status: true,
        };
        let patch = json!({ "status": { "podProbeStatuses": next.pod_probe_statuses } });
        match write(target, WriteOp::MergePatch(patch)).await {
            Ok(()) => {
                self.ctx.metrics.status_writes.with_label_values(&["success"]).inc();
                self.failed_writes = 0;
                self.status = Some(next);
                for t in transitions.into_iter().filter(Transition::deserves_event) {
                    tokio::spawn(emit_event(self.node.clone(), t));
                }
            }
            Err(e) => {
                self.ctx.metrics.status_writes.with_label_values(&["error"]).inc();
                self.failed_writes += 1;
                self.dirty = true;
                warn!(node = %self.node, error = %e, "writing the NodePodProbe status failed; retrying");
            }
        }
    }
}

/// The pod Event of a state change (best effort).
async fn emit_event(node: String, t: Transition) {
    let reason = if t.state == ProbeState::Succeeded { "KruiseProbeSucceeded" } else { "KruiseProbeFailed" };
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(t.namespace.clone()),
        name: Some(t.pod.clone()),
        ..Default::default()
    };
    let message = format!("{} ({:?}) {}", t.probe, t.state, t.message);
    let reporter = Reporter { component: EVENT_COMPONENT, instance: node };
    events::emit(&reporter, &pod, "Normal", reason, message.trim_end()).await;
}
