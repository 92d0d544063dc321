//! Connecting to the API server, with every request counted.
//!
//! The client carries a tower layer that counts each request by status code and method
//! (`rest_client_requests_total`, as client-go) and the response body bytes by kind of request
//! (`kruise_rest_client_response_bytes_total{verb}`, `watch` for watch streams), so the load a
//! replica puts on the API server and the watch traffic it receives are both visible.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use kube::Client;
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use prometheus::{IntCounter, IntCounterVec, Opts};

use super::metrics::MetricsRegistry;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("building the client: {0}")]
    Build(#[from] kube::Error),
    #[error("no usable configuration (in-cluster, KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[from] kube::config::InferConfigError),
}

/// The client's request metrics.
#[derive(Clone)]
pub struct ClientMetrics {
    requests: IntCounterVec,
    response_bytes: IntCounterVec,
    host: String,
}

impl ClientMetrics {
    pub fn register(registry: &MetricsRegistry, host: &str) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "rest_client_requests_total",
                    "Number of HTTP requests, partitioned by status code, method, and host.",
                ),
                &["code", "method", "host"],
            )?,
            response_bytes: IntCounterVec::new(
                Opts::new(
                    "kruise_rest_client_response_bytes_total",
                    "Response body bytes received from the API server, by verb (watch: watch streams)",
                ),
                &["verb"],
            )?,
            host: host.to_string(),
        };
        registry.register(&m.requests)?;
        registry.register(&m.response_bytes)?;
        Ok(m)
    }
}

/// The verb a request stands for: `watch` for watch requests, else the HTTP method in lower case.
pub fn verb_of<B>(req: &Request<B>) -> String {
    let watching = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    if watching { "watch".to_string() } else { req.method().as_str().to_ascii_lowercase() }
}

/// Wraps a client service so every request and response byte is counted.
#[derive(Clone)]
pub struct CountingLayer(pub ClientMetrics);

impl<S> tower_layer::Layer<S> for CountingLayer {
    type Service = CountingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountingService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct CountingService<S> {
    inner: S,
    metrics: ClientMetrics,
}

impl<S, ReqBody, B> tower_service::Service<Request<ReqBody>> for CountingService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin,
{
    type Response = Response<CountingBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method().as_str().to_string();
        let bytes = self.metrics.response_bytes.with_label_values(&[verb_of(&req).as_str()]);
        let metrics = self.metrics.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let outcome = response.await;
            let code = match &outcome {
                Ok(r) => r.status().as_str().to_string(),
                Err(_) => "<error>".to_string(),
            };
            metrics.requests.with_label_values(&[code.as_str(), method.as_str(), metrics.host.as_str()]).inc();
            outcome.map(|r| r.map(|inner| CountingBody { inner, bytes }))
        })
    }
}

/// A response body that counts its data bytes as they arrive (a watch stream counts as it goes).
pub struct CountingBody<B> {
    inner: B,
    bytes: IntCounter,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The configuration from `--kubeconfig` when given, else the usual inference (in-cluster
/// service account, `KUBECONFIG`, `~/.kube/config`).
pub async fn load_config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    match kubeconfig {
        Some(path) => {
            let err = |message: String| ClientError::Kubeconfig { path: path.display().to_string(), message };
            let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))
        }
        None => Ok(kube::Config::infer().await?),
    }
}

/// A client for `config` whose requests are counted in `metrics`. Each client has its own
/// connection pool.
pub fn counted_client(config: kube::Config, metrics: &ClientMetrics) -> Result<Client, ClientError> {
    Ok(ClientBuilder::try_from(config)?.with_layer(&CountingLayer(metrics.clone())).build())
}

/// The API server's host, for `rest_client_requests_total{host}`.
pub fn host_of(config: &kube::Config) -> String {
    config.cluster_url.host().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_requests_are_told_apart_from_lists() {
        let req = |uri: &str| Request::get(uri).body(()).unwrap();
        assert_eq!(verb_of(&req("/api/v1/pods?watch=true&resourceVersion=5")), "watch");
        assert_eq!(verb_of(&req("/api/v1/pods?labelSelector=watch%3Dtrue")), "get");
        assert_eq!(verb_of(&req("/api/v1/pods")), "get");
        assert_eq!(verb_of(&Request::patch("/api/v1/namespaces/a/pods/b").body(()).unwrap()), "patch");
    }
}
