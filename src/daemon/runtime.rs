//! What the daemon needs of a container runtime for probes, as a trait: the CRI client on a real
//! node ([`super::cri`]), the simulated runtime for kwok nodes ([`super::simulated`]).

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;

/// The newest container of a name in a pod, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// The container's name in the pod.
    pub name: String,
    pub running: bool,
    /// When it started (None if it never did).
    pub started_at: Option<Timestamp>,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited { exit_code: i32, stdout: String, stderr: String },
    TimedOut,
}

/// A runtime failure that says nothing about the probe (the result is not recorded).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("container runtime: {0}")]
pub struct RuntimeError(pub String);

pub trait ContainerRuntime: Send + Sync + 'static {
    /// The newest container named `container` of the pod with `pod_uid`, if any.
    fn container(&self, pod_uid: &str, container: &str) -> BoxFuture<'_, Result<Option<ContainerInfo>, RuntimeError>>;

    /// Runs `command` in the container, waiting at most `timeout`.
    fn exec_sync(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ExecOutcome, RuntimeError>>;
}
