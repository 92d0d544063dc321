//! [`ImagePullActor`]: one pull of one tag on one node, from `Pulling` to `Succeeded` or `Failed`.
//!
//! Each attempt first asks the runtime whether the node already holds the image (then it is done
//! at once), else pulls it with each matching credential of the pull secrets in turn, then
//! anonymously. Attempts are bounded by the tag's policy ([`AttemptPolicy`]: count, per-attempt
//! timeout, deadline from the pull's start) and spaced by back-off. The actor reports each state
//! to its [`PullSupervisor`](super::supervisor::PullSupervisor), which stops it when it hears the
//! end; killing it cancels the pull (the runtime call is dropped).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::{Api, Client};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, debug, info, warn};

use super::auth::credentials_for;
use super::plan::{AttemptPolicy, PullTask};
use super::supervisor::PullSupervisorMsg;
use crate::api::nodeimage::ImageTagStatus;
use crate::daemon::runtime::{ImageRuntime, RegistryAuth, RuntimeError};
use crate::runtime::events::{self, Reporter};
use crate::runtime::metrics::MetricsRegistry;

/// The component named in the daemon's pull Events.
pub const EVENT_COMPONENT: &str = "kruise-daemon-imagepuller";

/// The message of a pull stopped by its deadline.
pub const DEADLINE_MESSAGE: &str = "pulling exceeds the activeDeadlineSeconds";

#[derive(Clone)]
pub struct PullMetrics {
    /// Runtime pull attempts, by result.
    pub attempts: IntCounterVec,
    /// Finished pulls, by result.
    pub pulls: IntCounterVec,
    pub duration: Histogram,
    pub active: IntGauge,
    pub waiting: IntGauge,
    pub status_writes: IntCounterVec,
}

impl PullMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = PullMetrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "kruise_daemon_image_pull_attempts_total",
                    "Image pull attempts, by result (present, succeeded, failed, timeout)",
                ),
                &["result"],
            )?,
            pulls: IntCounterVec::new(
                Opts::new("kruise_daemon_image_pulls_total", "Finished image pulls of NodeImage tags, by result"),
                &["result"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kruise_daemon_image_pull_duration_seconds",
                    "Time from a tag's pull start to its end, attempts and back-off included",
                )
                .buckets(prometheus::exponential_buckets(0.25, 2.0, 14).unwrap_or_default()),
            )?,
            active: IntGauge::new("kruise_daemon_image_pulls_active", "Tags being pulled in this process")?,
            waiting: IntGauge::new("kruise_daemon_image_pulls_waiting", "Tags waiting for a free pull worker")?,
            status_writes: IntCounterVec::new(
                Opts::new("kruise_daemon_image_status_writes_total", "NodeImage status writes, by result"),
                &["result"],
            )?,
        };
        registry.register(&m.attempts)?;
        registry.register(&m.pulls)?;
        registry.register(&m.duration)?;
        registry.register(&m.active)?;
        registry.register(&m.waiting)?;
        registry.register(&m.status_writes)?;
        for r in ["present", "succeeded", "failed", "timeout"] {
            m.attempts.with_label_values(&[r]);
        }
        for r in ["succeeded", "failed"] {
            m.pulls.with_label_values(&[r]);
        }
        for r in ["success", "conflict", "error"] {
            m.status_writes.with_label_values(&[r]);
        }
        Ok(m)
    }
}

pub struct PullArgs {
    pub task: PullTask,
    /// The NodeImage, for Events.
    pub node_image: ObjectReference,
    pub runtime: Arc<dyn ImageRuntime>,
    /// Reads the pull secrets; None: every pull is anonymous.
    pub secrets: Option<Client>,
    pub supervisor: ActorRef<PullSupervisorMsg>,
    pub metrics: PullMetrics,
}

pub enum PullMsg {
    Run,
}

#[derive(Clone)]
pub struct ImagePullActor;

impl Actor for ImagePullActor {
    type Msg = PullMsg;
    type State = PullArgs;
    type Arguments = PullArgs;

    async fn pre_start(&self, myself: ActorRef<PullMsg>, args: PullArgs) -> Result<PullArgs, ActorProcessingErr> {
        myself.send_message(PullMsg::Run)?;
        Ok(args)
    }

    async fn handle(&self, _: ActorRef<PullMsg>, _: PullMsg, st: &mut PullArgs) -> Result<(), ActorProcessingErr> {
        let node = st.node_image.name.clone().unwrap_or_default();
        let span = tracing::info_span!("pull", %node, image = %st.task.reference(), version = st.task.version);
        // The supervisor stops the actor when it hears the end.
        st.run().instrument(span).await;
        Ok(())
    }
}

impl PullArgs {
    /// The pull from start to end, reported to the supervisor.
    async fn run(&self) {
        let start = Timestamp::now();
        self.report(self.task.pulling(start));
        let credentials = self.credentials().await;
        let outcome = pull(&self.task, self.runtime.as_ref(), &credentials, &self.metrics).await;
        let result = if outcome.is_ok() { "succeeded" } else { "failed" };
        self.metrics.pulls.with_label_values(&[result]).inc();
        self.metrics.duration.observe(Timestamp::now().duration_since(start).as_secs_f64());
        self.report(self.task.finished(start, Timestamp::now(), outcome.clone()));
        tokio::spawn(emit_events(self.task.clone(), self.node_image.clone(), outcome, start));
    }
    fn report(&self, status: ImageTagStatus) {
        let key = (self.task.image.clone(), self.task.tag.clone());
        let _ = self.supervisor.send_message(PullSupervisorMsg::Status { key, status });
    }

    /// The credentials of the pull secrets for the image's registry, in the secrets' order. A
    /// secret that cannot be read is skipped (the pull may still work without it).
    async fn credentials(&self) -> Vec<RegistryAuth> {
        let Some(client) = &self.secrets else { return Vec::new() };
        let mut out = Vec::new();
        for s in &self.task.secrets {
            let (Some(ns), Some(name)) = (&s.namespace, &s.name) else { continue };
            match Api::<Secret>::namespaced(client.clone(), ns).get(name).await {
                Ok(secret) => out.extend(credentials_for(&self.task.image, &secret.data.unwrap_or_default())),
                Err(e) => warn!(secret = %format!("{ns}/{name}"), error = %e, "reading a pull secret failed; skipped"),
            }
        }
        out
    }
}

/// All attempts of `task`'s pull: the image's ID, or the last error.
async fn pull(
    task: &PullTask,
    runtime: &dyn ImageRuntime,
    credentials: &[RegistryAuth],
    metrics: &PullMetrics,
) -> Result<String, String> {
    let policy = task.policy;
    let reference = task.reference();
    let started = tokio::time::Instant::now();
    let mut last_error = String::new();
    for attempt in 1..=policy.attempts {
        let Some(timeout) = policy.attempt_timeout(started.elapsed()) else {
            return Err(DEADLINE_MESSAGE.into());
        };
        match tokio::time::timeout(timeout, pull_once(&reference, runtime, credentials, metrics)).await {
            Ok(Ok(id)) => return Ok(id),
            Ok(Err(e)) => {
                metrics.attempts.with_label_values(&["failed"]).inc();
                last_error = e.0;
            }
            Err(_) => {
                metrics.attempts.with_label_values(&["timeout"]).inc();
                last_error = format!("pulling {reference} timed out after {}s", timeout.as_secs());
            }
        }
        debug!(attempt, error = %last_error, "pull attempt failed");
        // At the deadline the pull ends, whatever attempts are left; a back-off ends there too.
        let Some(left) = policy.attempt_timeout(started.elapsed()) else {
            return Err(DEADLINE_MESSAGE.into());
        };
        if attempt < policy.attempts {
            let backoff = AttemptPolicy::backoff(attempt);
            tokio::time::sleep(if policy.active_deadline.is_some() { backoff.min(left) } else { backoff }).await;
        }
    }
    Err(last_error)
}

/// One attempt: done at once if the node holds the image, else a pull with each credential in
/// turn, then anonymously.
async fn pull_once(
    reference: &str,
    runtime: &dyn ImageRuntime,
    credentials: &[RegistryAuth],
    metrics: &PullMetrics,
) -> Result<String, RuntimeError> {
    if let Some(id) = runtime.image_id(reference).await? {
        metrics.attempts.with_label_values(&["present"]).inc();
        return Ok(id);
    }
    let mut last = None;
    for auth in credentials.iter().map(Some).chain([None]) {
        match runtime.pull_image(reference, auth).await {
            Ok(image_ref) => {
                metrics.attempts.with_label_values(&["succeeded"]).inc();
                // The ID the runtime lists the image under, as upstream reports it.
                return Ok(runtime.image_id(reference).await.ok().flatten().unwrap_or(image_ref));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| RuntimeError(format!("pulling {reference} failed"))))
}

/// The Events of a finished pull (best effort): PullImageSucceed on the NodeImage, or
/// PullImageFailed on every owner and the NodeImage.
async fn emit_events(task: PullTask, node_image: ObjectReference, outcome: Result<String, String>, start: Timestamp) {
    let reporter = Reporter { component: EVENT_COMPONENT, instance: node_image.name.clone().unwrap_or_default() };
    let reference = task.reference();
    match outcome {
        Ok(_) => {
            let took = Duration::try_from(Timestamp::now().duration_since(start)).unwrap_or_default();
            info!(image = %reference, ?took, "pulled");
            let message = format!("Image {reference} pulled in {:.1}s", took.as_secs_f64());
            events::emit(&reporter, &node_image, "Normal", "PullImageSucceed", &message).await;
        }
        Err(e) => {
            info!(image = %reference, error = %e, "pull failed");
            let message = format!("Image {reference} failed to pull: {e}");
            for o in task.owners.iter().chain([&node_image]) {
                events::emit(&reporter, o, "Warning", "PullImageFailed", &message).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use crate::api::nodeimage::ReferenceObject;

    /// An image service that fails every pull after `latency`, or succeeds with a user in
    /// `accepts`; it records each pull's time since the test began and the user it was given.
    #[derive(Default)]
    struct Registry {
        present: bool,
        latency: Duration,
        accepts: Option<&'static str>,
        calls: Mutex<Vec<(Duration, String)>>,
        epoch: Mutex<Option<tokio::time::Instant>>,
    }

    impl ImageRuntime for Registry {
        fn image_id(&self, _: &str) -> BoxFuture<'_, Result<Option<String>, RuntimeError>> {
            let present = self.present;
            Box::pin(async move { Ok(present.then(|| "sha256:abc".to_string())) })
        }

        fn pull_image(&self, _: &str, auth: Option<&RegistryAuth>) -> BoxFuture<'_, Result<String, RuntimeError>> {
            let user = auth.map(|a| a.username.clone()).unwrap_or_default();
            Box::pin(async move {
                let epoch = *self.epoch.lock().unwrap().get_or_insert_with(tokio::time::Instant::now);
                self.calls.lock().unwrap().push((epoch.elapsed(), user.clone()));
                tokio::time::sleep(self.latency).await;
                match self.accepts {
                    Some(u) if u == user => Ok("sha256:pulled".into()),
                    _ => Err(RuntimeError("unauthorized".into())),
                }
            })
        }
    }

    fn task(backoff_limit: u32, timeout: u64, deadline: Option<u64>) -> PullTask {
        PullTask {
            image: "nginx".into(),
            tag: "1.25".into(),
            version: 1,
            policy: AttemptPolicy {
                attempts: backoff_limit + 1,
                timeout: Duration::from_secs(timeout),
                active_deadline: deadline.map(Duration::from_secs),
            },
            secrets: vec![ReferenceObject { namespace: Some("ns".into()), name: Some("reg".into()) }],
            owners: Vec::new(),
        }
    }

    fn metrics() -> PullMetrics {
        PullMetrics::register(&MetricsRegistry::new()).unwrap()
    }

    fn auth(user: &str) -> RegistryAuth {
        RegistryAuth { username: user.into(), ..Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_pull_is_tried_backoff_limit_plus_one_times_1s_then_2s_apart() {
        let registry = Registry::default();
        let m = metrics();
        let out = pull(&task(2, 600, None), &registry, &[], &m).await;
        assert_eq!(out, Err("unauthorized".into()), "the last error is the message");
        let times: Vec<Duration> = registry.calls.lock().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(times, [0, 1, 3].map(Duration::from_secs), "exactly 3 PullImage calls, 1 s then 2 s apart");
        assert_eq!(m.attempts.with_label_values(&["failed"]).get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_present_image_is_not_pulled() {
        let registry = Registry { present: true, ..Default::default() };
        let out = pull(&task(2, 600, None), &registry, &[], &metrics()).await;
        assert_eq!(out, Ok("sha256:abc".into()));
        assert!(registry.calls.lock().unwrap().is_empty(), "no PullImage");
        let status = task(2, 600, None).finished(Timestamp::UNIX_EPOCH, Timestamp::UNIX_EPOCH, out);
        assert_eq!((status.progress, status.image_id.as_deref()), (Some(100), Some("nginx@sha256:abc")));
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_are_tried_in_order_then_anonymous() {
        let registry = Registry { accepts: Some("second"), ..Default::default() };
        let out = pull(&task(0, 600, None), &registry, &[auth("first"), auth("second")], &metrics()).await;
        assert_eq!(out, Ok("sha256:pulled".into()), "the runtime's reference when it does not list the image");
        let users: Vec<String> = registry.calls.lock().unwrap().iter().map(|c| c.1.clone()).collect();
        assert_eq!(users, ["first", "second"]);

        let anonymous = Registry { accepts: Some(""), ..Default::default() };
        assert!(pull(&task(0, 600, None), &anonymous, &[auth("first")], &metrics()).await.is_ok());
        assert_eq!(anonymous.calls.lock().unwrap().len(), 2, "the secret's, then anonymous");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_time_out_and_the_deadline_ends_the_pull() {
        let slow = Registry { latency: Duration::from_secs(100), accepts: Some(""), ..Default::default() };
        let out = pull(&task(1, 10, None), &slow, &[], &metrics()).await;
        assert_eq!(out, Err("pulling nginx:1.25 timed out after 10s".into()));
        assert_eq!(slow.calls.lock().unwrap().len(), 2);

        let slow = Registry { latency: Duration::from_secs(100), accepts: Some(""), ..Default::default() };
        let start = tokio::time::Instant::now();
        let out = pull(&task(5, 20, Some(30)), &slow, &[], &metrics()).await;
        assert_eq!(out, Err(DEADLINE_MESSAGE.into()));
        assert_eq!(start.elapsed(), Duration::from_secs(30), "the last attempt is cut to the deadline");
    }
}
