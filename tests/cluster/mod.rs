//! A real, local Kubernetes control plane for tests, the demo and load tests: etcd, kube-apiserver
//! (TLS, RBAC, service-account tokens), kube-controller-manager, kube-scheduler and kwok, run as
//! plain processes on 127.0.0.1 from the binaries that `tests/cluster/build.sh` builds.
//!
//! Shared by the integration tests (`tests/support`) and the `kruise-dev` binary through `#[path]`,
//! so the person running the demo and the tests get exactly the same cluster.

pub mod control_plane;
pub mod metrics;
pub mod pki;
pub mod process;

pub use control_plane::{ControlPlane, ControlPlaneConfig};
pub use process::Lifetime;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("building the control-plane binaries failed: {0}")]
    Build(String),
    #[error("certificates: {0}")]
    Pki(String),
    #[error("starting {component}: {source}")]
    Spawn { component: String, source: std::io::Error },
    #[error("{component} exited early ({status}); see {log}")]
    Exited { component: String, status: String, log: PathBuf },
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl ClusterError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

/// The repository root: tests/cluster/../..
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/cluster/build.sh` (a no-op when the pinned binaries are already built) and returns
/// the directory that holds them. `KRUISE_K8S_BIN_DIR` overrides where they live.
pub fn ensure_binaries() -> Result<PathBuf, ClusterError> {
    let script = repo_root().join("tests/cluster/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| ClusterError::io(&script, e))?;
    if !out.status.success() {
        return Err(ClusterError::Build(format!("{} exited with {}", script.display(), out.status)));
    }
    let dir = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    if dir.is_empty() {
        return Err(ClusterError::Build(format!("{} printed no output directory", script.display())));
    }
    Ok(PathBuf::from(dir))
}
