//! The manager's and daemon's plain-HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::metrics::MetricsRegistry;

/// Readiness: named conditions that each flip to met once and stay so; ready when there is at
/// least one and all are met. `/readyz` names the ones still pending.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<&'static str, bool>>>);

impl Readiness {
    fn conditions(&self) -> MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A condition that must be met before the process is ready; it starts unmet.
    pub fn condition(&self, name: &'static str) -> ReadyCondition {
        self.conditions().entry(name).or_insert(false);
        ReadyCondition { readiness: self.clone(), name }
    }

    /// The conditions not met yet.
    pub fn pending(&self) -> Vec<&'static str> {
        self.conditions().iter().filter(|(_, met)| !**met).map(|(n, _)| *n).collect()
    }

    pub fn is_ready(&self) -> bool {
        let c = self.conditions();
        !c.is_empty() && c.values().all(|met| *met)
    }
}

/// One of the conditions of a [`Readiness`].
#[derive(Clone)]
pub struct ReadyCondition {
    readiness: Readiness,
    name: &'static str,
}

impl ReadyCondition {
    pub fn set(&self) {
        self.readiness.conditions().insert(self.name, true);
    }

    pub fn is_set(&self) -> bool {
        self.readiness.conditions().get(self.name).copied().unwrap_or(false)
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: MetricsRegistry,
    ready: Readiness,
}

/// Routes for `/metrics`, `/healthz` (the process is serving) and `/readyz` (every readiness
/// condition is met).
pub fn router(metrics: MetricsRegistry, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Endpoints { metrics, ready })
}

async fn render_metrics(State(e): State<Endpoints>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], e.metrics.render())
}

async fn readyz(State(e): State<Endpoints>) -> (StatusCode, String) {
    if e.ready.is_ready() {
        (StatusCode::OK, "ok".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for {}", e.ready.pending().join(", ")))
    }
}

/// Binds `addr` (clear error if taken) and serves `router` until the process ends.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    tracing::info!(%addr, "serving HTTP");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(%addr, error = %e, "HTTP server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_is_met() {
        let r = Readiness::default();
        assert!(!r.is_ready(), "no conditions yet: nothing has been checked");
        let leases = r.condition("leases");
        let caches = r.condition("caches");
        leases.set();
        assert!(!r.is_ready());
        assert_eq!(r.pending(), vec!["caches"]);
        assert!(leases.is_set() && !caches.is_set());
        caches.set();
        assert!(r.is_ready());
        assert!(r.pending().is_empty());
    }
}
