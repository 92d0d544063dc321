//! Connecting to the API server.

use std::path::Path;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("building the client: {0}")]
    Build(#[from] kube::Error),
    #[error("no usable configuration (in-cluster, KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[from] kube::config::InferConfigError),
}

/// A client from `--kubeconfig` when given, else the usual inference (in-cluster service account,
/// `KUBECONFIG`, `~/.kube/config`), with the API server's host (for metrics labels).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<(Client, String), ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |message: String| ClientError::Kubeconfig { path: path.display().to_string(), message };
            let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer().await?,
    };
    let host = config.cluster_url.host().unwrap_or_default().to_string();
    Ok((Client::try_from(config)?, host))
}
