//! Runs on every replica: keeps the certificate Secret valid (creating or renewing it; whoever
//! writes first wins and the others adopt its content), serves its key pair, and keeps the
//! webhook configurations' `caBundle` and endpoints current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::certs::{self, CertBundle, RENEW_BEFORE};
use super::configuration::{
    Endpoint, MUTATING_CONFIGURATION, TEMPLATE_ANNOTATION, VALIDATING_CONFIGURATION, current_client_config,
};
use super::tls::CertSlot;
use crate::runtime::http::ReadyCondition;
use crate::runtime::ownership::Leadership;
use crate::runtime::work_queue::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("another replica wrote the Secret first; adopting it")]
    Raced,
    #[error("the {0} template annotation is not a JSON list of webhooks: {1}")]
    Template(&'static str, String),
}

#[derive(Clone)]
pub struct CertSyncArgs {
    pub client: Client,
    /// The Kruise namespace, where the Secret lives.
    pub namespace: String,
    pub secret_name: String,
    /// The name the certificate is for: `WEBHOOK_HOST`, else `<service>.<namespace>.svc`.
    pub host: String,
    pub endpoint: Endpoint,
    /// Paths with a handler; configuration entries for others are dropped.
    pub served_paths: Vec<String>,
    pub slot: CertSlot,
    /// Set once a certificate is being served.
    pub ready: ReadyCondition,
    /// Out of cluster every replica has its own URL, so only the leader points the configurations
    /// at itself (otherwise replicas would rewrite them back and forth). In cluster all write the
    /// same Service reference.
    pub leadership: Leadership,
    pub period: Duration,
}

/// Wakes `changed` on every change to the object `name` of `api`.
fn notify_on_change<K>(api: Api<K>, name: &str, changed: Arc<Notify>)
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(watcher(api, config).default_backoff().for_each(move |_| {
        changed.notify_one();
        std::future::ready(())
    }));
}

/// Watches the Secret and the two configurations, so the sync repairs them at once (someone
/// emptied the Secret, Helm reset a caBundle) rather than at the next period.
fn watch_for_changes(args: &CertSyncArgs, changed: &Arc<Notify>) {
    let secrets: Api<Secret> = Api::namespaced(args.client.clone(), &args.namespace);
    notify_on_change(secrets, &args.secret_name, changed.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(args.client.clone());
    notify_on_change(mutating, MUTATING_CONFIGURATION, changed.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(args.client.clone());
    notify_on_change(validating, VALIDATING_CONFIGURATION, changed.clone());
}

/// Syncs forever: on every change of what it keeps, at least every `period`, and with back-off
/// after a failure.
pub async fn run(args: CertSyncArgs) {
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(60) };
    let changed = Arc::new(Notify::new());
    watch_for_changes(&args, &changed);
    let mut failures = 0;
    loop {
        match sync_once(&args).await {
            Ok(synced) => {
                failures = 0;
                // Not (yet) the leader: look again soon, leadership may come or go.
                let wait = if synced == Synced::NotLeader { Duration::from_secs(1) } else { args.period };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed.notified() => {}
                }
            }
            Err(SyncError::Raced) => {} // read again at once
            Err(e) => {
                failures += 1;
                warn!(error = %e, "webhook certificate sync failed; retrying");
                tokio::time::sleep(backoff.delay(failures)).await;
            }
        }
    }
}

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    let bytes = s.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok().filter(|v| !v.is_empty())
}

/// How a pass ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Synced {
    /// Certificate served, configurations current.
    Done,
    /// Certificate served; the configurations are the leader's to point (out of cluster).
    NotLeader,
}

/// One pass: a valid bundle in the Secret, served here, and the configurations patched.
pub async fn sync_once(args: &CertSyncArgs) -> Result<Synced, SyncError> {
    let secrets: Api<Secret> = Api::namespaced(args.client.clone(), &args.namespace);
    let existing = secrets.get_opt(&args.secret_name).await?;
    let stored = existing.as_ref().and_then(|s| CertBundle::from_secret_data(|k| secret_string(s, k)));
    let now = SystemTime::now();
    let bundle = match stored {
        Some(b) if b.serves(&args.host, now + RENEW_BEFORE) => b,
        previous => {
            let fresh = certs::generate(&args.host, previous.as_ref(), now)?;
            let data: BTreeMap<String, ByteString> = fresh
                .secret_data()
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect();
            let result = match existing {
                None => {
                    let s = Secret {
                        metadata: ObjectMeta { name: Some(args.secret_name.clone()), ..Default::default() },
                        data: Some(data),
                        ..Default::default()
                    };
                    secrets.create(&PostParams::default(), &s).await
                }
                Some(mut s) => {
                    // Replace with the resourceVersion read: a concurrent writer makes this fail.
                    s.data = Some(data);
                    s.string_data = None;
                    secrets.replace(&args.secret_name, &PostParams::default(), &s).await
                }
            };
            match result {
                Ok(_) => info!(secret = %args.secret_name, host = %args.host, "wrote new webhook certificates"),
                Err(kube::Error::Api(e)) if e.code == 409 => return Err(SyncError::Raced),
                Err(e) => return Err(e.into()),
            }
            fresh
        }
    };
    args.slot.set(bundle.certified_key()?);
    args.ready.set();
    if matches!(args.endpoint, Endpoint::Url { .. }) && !args.leadership.is_leader() {
        return Ok(Synced::NotLeader);
    }
    let served = |p: &str| args.served_paths.iter().any(|s| s == p);
    let ca = bundle.ca_cert.as_bytes();
    patch_configuration::<MutatingWebhookConfiguration, MutatingWebhook>(
        args,
        MUTATING_CONFIGURATION,
        |c| &mut c.webhooks,
        |w| &mut w.client_config,
        ca,
        &served,
    )
    .await?;
    patch_configuration::<ValidatingWebhookConfiguration, ValidatingWebhook>(
        args,
        VALIDATING_CONFIGURATION,
        |c| &mut c.webhooks,
        |w| &mut w.client_config,
        ca,
        &served,
    )
    .await?;
    Ok(Synced::Done)
}

/// Rewrites one configuration from its template (upstream's rule: an empty `template` annotation
/// first records the installed entries) and updates it when something changed. A missing
/// configuration is logged, not an error: it only means nothing routes to the webhooks yet.
async fn patch_configuration<C, W>(
    args: &CertSyncArgs,
    name: &'static str,
    webhooks: impl Fn(&mut C) -> &mut Option<Vec<W>>,
    client_config: impl Fn(&mut W) -> &mut WebhookClientConfig,
    ca: &[u8],
    served: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(), SyncError>
where
    C: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    W: Clone + DeserializeOwned + Serialize + PartialEq,
{
    let api: Api<C> = Api::all(args.client.clone());
    let Some(mut current) = api.get_opt(name).await? else {
        warn!(configuration = name, "webhook configuration not installed; nothing routes to the webhooks");
        return Ok(());
    };
    let mut next = current.clone();
    let recorded = next.meta().annotations.as_ref().and_then(|a| a.get(TEMPLATE_ANNOTATION)).filter(|t| !t.is_empty());
    let template: Vec<W> = match recorded {
        Some(t) => serde_json::from_str(t).map_err(|e| SyncError::Template(name, e.to_string()))?,
        None => {
            let installed = webhooks(&mut next).clone().unwrap_or_default();
            let text = serde_json::to_string(&installed).map_err(|e| SyncError::Template(name, e.to_string()))?;
            next.meta_mut().annotations.get_or_insert_with(BTreeMap::new).insert(TEMPLATE_ANNOTATION.into(), text);
            installed
        }
    };
    let rewritten: Vec<W> = template
        .into_iter()
        .filter_map(|mut w| {
            let cc = current_client_config(client_config(&mut w), ca, &args.endpoint, served)?;
            *client_config(&mut w) = cc;
            Some(w)
        })
        .collect();
    *webhooks(&mut next) = Some(rewritten);
    let changed =
        webhooks(&mut next) != webhooks(&mut current) || next.meta().annotations != current.meta().annotations;
    if changed {
        api.replace(name, &PostParams::default(), &next).await?;
        info!(configuration = name, "webhook configuration updated");
    }
    Ok(())
}
