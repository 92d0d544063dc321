//! What the daemon needs of a container runtime, as traits (containers and execs for probes,
//! images for pre-download): the CRI client on a real node ([`super::cri`]), the simulated
//! runtime for kwok nodes ([`super::simulated`]).

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

/// Registry credentials from an image pull secret (the `auths` entry for the image's registry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`, when the secret gives it so.
    pub auth: String,
    pub server_address: String,
}

pub trait ImageRuntime: Send + Sync + 'static {
    /// The ID of the image the node holds under `reference` (`name:tag`, a repo tag), if any.
    fn image_id(&self, reference: &str) -> BoxFuture<'_, Result<Option<String>, RuntimeError>>;

    /// Pulls `reference` with `auth` (None: anonymous); returns the runtime's image reference.
    /// The caller bounds it in time: dropping the future cancels the pull.
    fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> BoxFuture<'_, Result<String, RuntimeError>>;
}
