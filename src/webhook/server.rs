//! The webhook HTTP handlers: decode the AdmissionReview, gather the [`Context`] a decision needs,
//! decide (pure, in `admission`), answer.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};
use axum::{Json, http::StatusCode};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use prometheus::{HistogramOpts, HistogramVec};
use tracing::{info_span, warn};

use super::admission::{self, Context};
use super::configuration::{KINDS, MUTATE_POD_PATH};
use crate::api::sidecarset::SidecarSet;
use crate::api::validation::sidecarset::PATCH_POD_METADATA_WHITELIST_KEY;
use crate::api::workloadspread::WorkloadSpread;
use crate::controllers::sidecarset::injection;
use crate::features::FeatureGates;
use crate::features::POD_WEBHOOK;
use crate::runtime::metrics::MetricsRegistry;
use kube::core::admission::Operation;
use kube::runtime::reflector::Store;

/// The ConfigMap with Kruise's runtime configuration, in the Kruise namespace.
pub const KRUISE_CONFIGURATION: &str = "kruise-configuration";
/// Label on a SidecarSet's ControllerRevisions.
pub const SIDECARSET_NAME_LABEL: &str = "kruise.io/sidecarset-name";

#[derive(Clone)]
pub struct WebhookMetrics {
    handling: HistogramVec,
}

impl WebhookMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "kruise_webhook_handling_seconds",
                "Time from receiving an admission request to answering it, by path and decision",
            )
            // Fine below 2.5 ms: the pod webhook's target is 1 ms at p99.
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                1.0,
            ]),
            &["path", "allowed"],
        )?;
        registry.register(&handling)?;
        Ok(Self { handling })
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct WebhookState {
    pub client: Client,
    /// The Kruise namespace (ConfigMap `kruise-configuration`, ControllerRevisions).
    pub namespace: String,
    pub gates: FeatureGates,
    pub metrics: WebhookMetrics,
    /// Every SidecarSet, watched: pod admission must not wait for the API server.
    pub sidecarsets: Store<SidecarSet>,
    /// The SidecarSets' ControllerRevisions in the Kruise namespace, watched.
    pub revisions: Store<ControllerRevision>,
}

impl WebhookState {
    /// Whether the pod webhook is served (gate `PodWebhook`).
    fn pod_webhook(&self) -> bool {
        self.gates.enabled(POD_WEBHOOK)
    }
}

/// Starts the watches behind the pod webhook's stores: every SidecarSet, and the SidecarSets'
/// ControllerRevisions in the Kruise namespace. `synced` is set once both have listed.
pub fn watch_stores(
    client: &Client,
    namespace: &str,
    synced: crate::runtime::http::ReadyCondition,
) -> (Store<SidecarSet>, Store<ControllerRevision>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (sets, sets_writer) = reflector::store();
    let (revisions, revisions_writer) = reflector::store();
    let set_watch = watcher(Api::<SidecarSet>::all(client.clone()), watcher::Config::default());
    tokio::spawn(
        reflector(sets_writer, set_watch)
            .default_backoff()
            .touched_objects()
            .for_each(|r| log_watch_error("SidecarSet", r)),
    );
    let revision_watch = watcher(
        Api::<ControllerRevision>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(SIDECARSET_NAME_LABEL),
    );
    tokio::spawn(
        reflector(revisions_writer, revision_watch)
            .default_backoff()
            .touched_objects()
            .for_each(|r| log_watch_error("ControllerRevision", r)),
    );
    let (s, r) = (sets.clone(), revisions.clone());
    tokio::spawn(async move {
        if s.wait_until_ready().await.is_ok() && r.wait_until_ready().await.is_ok() {
            synced.set();
        }
    });
    (sets, revisions)
}

async fn log_watch_error<K>(what: &'static str, r: Result<K, kube::runtime::watcher::Error>) {
    if let Err(e) = r {
        warn!(error = %e, "{what} watch failed; retrying");
    }
}

/// Every path this server answers (the caBundle sync drops configuration entries for others).
pub fn served_paths(gates: &FeatureGates) -> Vec<String> {
    let pods = gates.enabled(POD_WEBHOOK).then(|| MUTATE_POD_PATH.to_string());
    KINDS
        .iter()
        .flat_map(|k| k.mutating_path().into_iter().chain(std::iter::once(k.validating_path.to_string())))
        .chain(pods)
        .collect()
}

/// The webhook routes, plus `/healthz` (always ok once the TLS server answers).
pub fn router(state: WebhookState) -> Router {
    let state = Arc::new(state);
    let mut router = Router::new().route("/healthz", get(|| async { "ok" }));
    if state.pod_webhook() {
        let s = state.clone();
        router = router.route(MUTATE_POD_PATH, post(move |review| mutate_pod(s, review)));
    }
    for kind in KINDS {
        if let Some(path) = kind.mutating_path() {
            let (s, p) = (state.clone(), path.clone());
            router = router.route(&path, post(move |review| mutate(s, p, review)));
        }
        let (s, p) = (state.clone(), kind.validating_path.to_string());
        router = router.route(kind.validating_path, post(move |review| validate(s, p, review)));
    }
    router
}

type Review = Json<AdmissionReview<DynamicObject>>;

fn answer(state: &WebhookState, path: &str, started: Instant, response: AdmissionResponse) -> (StatusCode, Review) {
    let allowed = if response.allowed { "true" } else { "false" };
    state.metrics.handling.with_label_values(&[path, allowed]).observe(started.elapsed().as_secs_f64());
    (StatusCode::OK, Json(response.into_review()))
}

fn request_of<K: kube::Resource>(review: AdmissionReview<K>) -> Result<AdmissionRequest<K>, String> {
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| format!("not an admission request: {e}"))
}

fn deny(resp: AdmissionResponse, code: u16, reason: &str, message: String) -> AdmissionResponse {
    let mut resp = resp.deny(message);
    resp.result.code = code;
    resp.result.reason = reason.to_string();
    resp
}

fn object_json(o: &Option<DynamicObject>) -> Option<serde_json::Value> {
    o.as_ref().and_then(|o| serde_json::to_value(o).ok())
}

async fn mutate(state: Arc<WebhookState>, path: String, Json(review): Review) -> (StatusCode, Review) {
    let started = Instant::now();
    let req = match request_of(review) {
        Ok(r) => r,
        Err(e) => return answer(&state, &path, started, AdmissionResponse::invalid(e)),
    };
    let _span =
        info_span!("mutate", resource = %req.resource.resource, name = %req.name, namespace = ?req.namespace).entered();
    let resp = AdmissionResponse::from(&req);
    let Some(object) = object_json(&req.object) else { return answer(&state, &path, started, resp) };
    let now = Time(jiff::Timestamp::now());
    let resp = match admission::default_object(&req.resource.resource, &object, now) {
        Ok(patch) if patch.0.is_empty() => resp,
        Ok(patch) => match resp.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => deny(resp, 500, "InternalError", format!("encoding the defaults: {e}")),
        },
        Err(e) => deny(resp, 400, "BadRequest", e.to_string()),
    };
    answer(&state, &path, started, resp)
}

/// Sidecar injection into pods being created. The review is decoded straight into a Pod.
async fn mutate_pod(state: Arc<WebhookState>, Json(review): Json<AdmissionReview<Pod>>) -> (StatusCode, Review) {
    let started = Instant::now();
    let path = MUTATE_POD_PATH;
    let req = match request_of(review) {
        Ok(r) => r,
        Err(e) => return answer(&state, path, started, AdmissionResponse::invalid(e)),
    };
    let resp = AdmissionResponse::from(&req);
    let is_pod_create =
        req.operation == Operation::Create && req.resource.resource == "pods" && req.sub_resource.is_none();
    let Some(pod) = req.object.as_ref().filter(|_| is_pod_create) else {
        return answer(&state, path, started, resp);
    };
    let _span = info_span!("mutate_pod", name = %req.name, namespace = ?req.namespace).entered();
    let namespace = pod.metadata.namespace.clone().or(req.namespace.clone()).unwrap_or_default();
    let sets = state.sidecarsets.state();
    let revisions = state.revisions.state();
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let resp = match injection::inject(pod, &namespace, &sets, &revisions, &now) {
        Ok(None) => resp,
        Ok(Some(injected)) => {
            let patch = serde_json::to_value(pod)
                .and_then(|before| Ok((before, serde_json::to_value(&injected)?)))
                .map_err(|e| e.to_string())
                .and_then(|(before, after)| admission::patch_between(&before, &after).map_err(|e| e.to_string()));
            match patch.map(|p| resp.clone().with_patch(p)) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => deny(resp, 500, "InternalError", e.to_string()),
                Err(e) => deny(resp, 500, "InternalError", e),
            }
        }
        Err(e) => deny(resp, 400, "BadRequest", format!("sidecar injection failed: {e}")),
    };
    answer(&state, path, started, resp)
}

async fn validate(state: Arc<WebhookState>, path: String, Json(review): Review) -> (StatusCode, Review) {
    let started = Instant::now();
    let req = match request_of(review) {
        Ok(r) => r,
        Err(e) => return answer(&state, &path, started, AdmissionResponse::invalid(e)),
    };
    let resource = req.resource.resource.clone();
    let operation = format!("{:?}", req.operation).to_uppercase();
    let new = object_json(&req.object);
    let old = object_json(&req.old_object);
    let resp = AdmissionResponse::from(&req);
    let ctx = match gather(&state, &resource, new.as_ref(), req.namespace.as_deref()).await {
        Ok(ctx) => ctx,
        Err(e) => {
            warn!(%resource, name = %req.name, error = %e, "could not read what validation needs");
            return answer(&state, &path, started, deny(resp, 500, "InternalError", e.to_string()));
        }
    };
    let resp = match admission::validate_object(&resource, &operation, new.as_ref(), old.as_ref(), &ctx) {
        Ok(errs) if errs.is_empty() => resp,
        Ok(errs) => deny(resp, 422, "Invalid", admission::denial_message(&resource, &req.name, &errs)),
        Err(e @ admission::AdmissionError::FeatureGateOff(_)) => deny(resp, 403, "Forbidden", e.to_string()),
        Err(e) => deny(resp, 400, "BadRequest", e.to_string()),
    };
    answer(&state, &path, started, resp)
}

/// Reads what validating `resource` needs from the cluster.
async fn gather(
    state: &WebhookState,
    resource: &str,
    new: Option<&serde_json::Value>,
    namespace: Option<&str>,
) -> Result<Context, kube::Error> {
    let mut ctx = Context { gates: state.gates.clone(), ..Default::default() };
    let Some(new) = new else { return Ok(ctx) };
    match resource {
        "sidecarsets" => {
            ctx.sidecarsets = Api::<SidecarSet>::all(state.client.clone()).list(&ListParams::default()).await?.items;
            let cms: Api<ConfigMap> = Api::namespaced(state.client.clone(), &state.namespace);
            ctx.patch_whitelist = cms
                .get_opt(KRUISE_CONFIGURATION)
                .await?
                .and_then(|cm| cm.data)
                .and_then(|d| d.get(PATCH_POD_METADATA_WHITELIST_KEY).cloned());
            let name = new.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default();
            let revisions: Api<ControllerRevision> = Api::namespaced(state.client.clone(), &state.namespace);
            let lp = ListParams::default().labels(&format!("{SIDECARSET_NAME_LABEL}={name}"));
            ctx.revisions = revisions.list(&lp).await?.items;
        }
        "workloadspreads" => {
            let api: Api<WorkloadSpread> = Api::namespaced(state.client.clone(), namespace.unwrap_or_default());
            ctx.workloadspreads = api.list(&ListParams::default()).await?.items;
        }
        "clonesets" => {
            let names = new.pointer("/spec/scaleStrategy/podsToDelete").and_then(|v| v.as_array());
            let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace.unwrap_or_default());
            for name in names.into_iter().flatten().filter_map(|n| n.as_str()) {
                if let Some(p) = pods.get_opt(name).await? {
                    ctx.pods.push(p);
                }
            }
        }
        _ => {}
    }
    Ok(ctx)
}
