//! List-and-watch of one resource type restricted to some shards: the building block of the
//! WatchHub.
//!
//! Where the API server supports sharded list/watch (KEP-5866; it then echoes the selector in the
//! list's `metadata.shardInfo`), the replica receives only its shards' objects. Elsewhere the same
//! request returns everything and the objects are filtered here, so callers see the same stream
//! either way. kube-rs' list/watch parameters cannot carry `shardSelector`, so the requests are
//! built here from kube's own request builder plus that parameter.
//!
//! Updates go into a bounded channel: a slow consumer slows the watch instead of growing a queue.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::core::{ObjectList, Request};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::metrics::MetricsRegistry;
use super::shard::{ShardId, ShardSpace};
use super::work_queue::Backoff;

/// What the sharded watches of a replica receive, by resource (the collection's last path
/// segment, e.g. `pods`): the figures that show whether the API server does the sharding.
#[derive(Clone)]
pub struct WatchMetrics {
    /// Objects received, before the client-side shard filter; `via` is `list` or `watch`.
    received: IntCounterVec,
    /// Objects received that belong to shards this replica does not hold (dropped here).
    filtered: IntCounterVec,
    /// 1 when the API server applied the shard selector to the last list, else 0.
    server_sharded: IntGaugeVec,
    relists: IntCounterVec,
    /// Objects kept in the replica's store.
    cached: IntGaugeVec,
}

impl WatchMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = Self {
            received: IntCounterVec::new(
                Opts::new(
                    "kruise_watch_events_received_total",
                    "Objects received by list (via=list) and watch (via=watch), before client-side shard filtering",
                ),
                &["resource", "via"],
            )?,
            filtered: IntCounterVec::new(
                Opts::new(
                    "kruise_watch_events_filtered_total",
                    "Objects received for shards this replica does not hold, dropped client-side",
                ),
                &["resource"],
            )?,
            server_sharded: IntGaugeVec::new(
                Opts::new("kruise_watch_server_sharded", "1 when the API server applies the shard selector itself"),
                &["resource"],
            )?,
            relists: IntCounterVec::new(
                Opts::new("kruise_watch_relists_total", "Lists that (re)started a sharded watch"),
                &["resource"],
            )?,
            cached: IntGaugeVec::new(
                Opts::new("kruise_watch_cache_objects", "Objects of the held shards kept in the replica's store"),
                &["resource"],
            )?,
        };
        registry.register(&m.received)?;
        registry.register(&m.filtered)?;
        registry.register(&m.server_sharded)?;
        registry.register(&m.relists)?;
        registry.register(&m.cached)?;
        Ok(m)
    }

    pub fn set_cached(&self, url_path: &str, objects: usize) {
        self.cached.with_label_values(&[resource_of(url_path)]).set(objects as i64);
    }
}

/// A collection's resource name: its path's last segment (`/api/v1/pods` → `pods`).
pub fn resource_of(url_path: &str) -> &str {
    url_path.rsplit('/').next().unwrap_or_default()
}

/// What a sharded watch reports. A (re)list arrives as `Relisting`, its pages, then `Listed`:
/// consumers never hold more than a page of untrimmed objects at once.
#[derive(Debug)]
pub enum WatchUpdate<K> {
    /// A (re)list begins: whatever pages came before belong to an abandoned list.
    Relisting,
    /// Objects of the shards, one page of the list.
    Page(Vec<K>),
    /// The list is complete: an object of the shards in none of its pages no longer exists.
    /// `server_filtered` tells whether the API server applied the shard selector itself.
    Listed {
        server_filtered: bool,
    },
    Applied(K),
    Deleted(K),
}

/// Objects per list page, as client-go's reflector.
const LIST_PAGE_SIZE: u32 = 500;

/// Access to the namespace of an object, for client-side filtering.
pub trait HasMeta {
    fn meta(&self) -> &ObjectMeta;
}

impl<K: kube::Resource> HasMeta for K {
    fn meta(&self) -> &ObjectMeta {
        kube::Resource::meta(self)
    }
}

/// The set of shards a running watch delivers, shared with its owner. Narrowing it (giving shards
/// up) takes effect at once without a new list; widening it needs a new watch, whose list brings
/// the added shards' objects.
#[derive(Clone, Debug, Default)]
pub struct ShardFilter(Arc<RwLock<Vec<ShardId>>>);

impl ShardFilter {
    pub fn new(shards: Vec<ShardId>) -> Self {
        Self(Arc::new(RwLock::new(shards)))
    }

    pub fn set(&self, shards: Vec<ShardId>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = shards;
    }

    pub fn get(&self) -> Vec<ShardId> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn contains(&self, shard: ShardId) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(&shard)
    }
}

pub struct ShardedWatch {
    pub client: Client,
    /// The collection's path, e.g. `/api/v1/pods`.
    pub url_path: String,
    pub space: ShardSpace,
    /// The shards whose objects to deliver; the owner may narrow it while the watch runs.
    pub shards: ShardFilter,
    pub label_selector: Option<String>,
    pub metrics: WatchMetrics,
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters kept).
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn with_shard_selector(mut req: http::Request<Vec<u8>>, selector: &str) -> http::Request<Vec<u8>> {
    let encoded = query_escape(selector);
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    if let Ok(u) = format!("{uri}{sep}shardSelector={encoded}").parse() {
        *req.uri_mut() = u;
    }
    req
}

impl ShardedWatch {
    fn ours<K: HasMeta>(&self, o: &K) -> bool {
        let ns = o.meta().namespace.as_deref().unwrap_or_default();
        let ours = self.shards.contains(self.space.shard_of_key(ns));
        if !ours {
            self.metrics.filtered.with_label_values(&[self.resource()]).inc();
        }
        ours
    }

    fn resource(&self) -> &str {
        resource_of(&self.url_path)
    }

    fn received(&self, via: &str, n: usize) {
        self.metrics.received.with_label_values(&[self.resource(), via]).inc_by(n as u64);
    }

    /// Runs until `tx` is closed. Errors are logged and retried with back-off, re-listing after a
    /// watch expires (410 Gone) so no change is lost.
    pub async fn run<K>(self, tx: mpsc::Sender<WatchUpdate<K>>)
    where
        K: Clone + DeserializeOwned + HasMeta + Send + 'static,
    {
        // The filtered series exists from the start, at zero where the server does the filtering.
        self.metrics.filtered.with_label_values(&[self.resource()]);
        let request = Request::new(self.url_path.clone());
        let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(30) };
        let mut failures = 0u32;
        'relist: loop {
            if failures > 0 {
                tokio::time::sleep(backoff.delay(failures)).await;
            }
            // Each (re)list asks the server for the shards held now.
            let Some(selector) = self.space.selector(&self.shards.get()) else { return };
            if tx.send(WatchUpdate::Relisting).await.is_err() {
                return;
            }
            let mut server_filtered = true;
            let mut continue_token: Option<String> = None;
            let mut version = loop {
                let mut lp = ListParams::default().limit(LIST_PAGE_SIZE);
                if let Some(l) = &self.label_selector {
                    lp = lp.labels(l);
                }
                if let Some(t) = &continue_token {
                    lp = lp.continue_token(t);
                }
                let Ok(req) = request.list(&lp) else { return };
                let page: ObjectList<K> = match self.client.request(with_shard_selector(req, &selector)).await {
                    Ok(l) => l,
                    Err(e) => {
                        // Also an expired continue token (410): the list starts over.
                        warn!(path = %self.url_path, error = %e, "sharded list failed");
                        failures += 1;
                        continue 'relist;
                    }
                };
                server_filtered &= page.metadata.shard_info.as_ref().is_some_and(|i| i.selector == selector);
                self.received("list", page.items.len());
                let objects: Vec<K> = page.items.into_iter().filter(|o| self.ours(o)).collect();
                if !objects.is_empty() && tx.send(WatchUpdate::Page(objects)).await.is_err() {
                    return;
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => continue_token = Some(c),
                    // Every page is of one snapshot; the watch starts from it.
                    None => break page.metadata.resource_version.unwrap_or_default(),
                }
            };
            failures = 0;
            self.metrics.relists.with_label_values(&[self.resource()]).inc();
            self.metrics.server_sharded.with_label_values(&[self.resource()]).set(i64::from(server_filtered));
            if tx.send(WatchUpdate::Listed { server_filtered }).await.is_err() {
                return;
            }
            loop {
                let mut wp = WatchParams::default(); // bookmarks are on by default
                if let Some(l) = &self.label_selector {
                    wp = wp.labels(l);
                }
                let Ok(req) = request.watch(&wp, &version) else { return };
                let stream = match self.client.request_events::<K>(with_shard_selector(req, &selector)).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(path = %self.url_path, error = %e, "sharded watch failed");
                        failures += 1;
                        continue 'relist;
                    }
                };
                use futures::TryStreamExt;
                let mut stream = std::pin::pin!(stream);
                loop {
                    match stream.try_next().await {
                        Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                            self.received("watch", 1);
                            version = o.meta().resource_version.clone().unwrap_or(version);
                            if self.ours(&o) && tx.send(WatchUpdate::Applied(o)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(WatchEvent::Deleted(o))) => {
                            self.received("watch", 1);
                            version = o.meta().resource_version.clone().unwrap_or(version);
                            if self.ours(&o) && tx.send(WatchUpdate::Deleted(o)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(WatchEvent::Bookmark(b))) => version = b.metadata.resource_version,
                        Ok(Some(WatchEvent::Error(e))) if e.code == 410 => {
                            debug!(path = %self.url_path, "watch expired; re-listing");
                            continue 'relist;
                        }
                        Ok(Some(WatchEvent::Error(e))) => {
                            warn!(path = %self.url_path, error = %e.message, "watch error; re-listing");
                            failures += 1;
                            continue 'relist;
                        }
                        // The server closed the watch (timeout): resume from where we are.
                        Ok(None) => break,
                        Err(e) => {
                            warn!(path = %self.url_path, error = %e, "watch stream broke; re-listing");
                            failures += 1;
                            continue 'relist;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_is_appended_encoded() {
        let req = http::Request::get("/api/v1/pods?labelSelector=a%3Db").body(Vec::new()).unwrap();
        let req = with_shard_selector(req, "shardRange(object.metadata.namespace, '0x0', '0x1')");
        assert_eq!(
            req.uri().to_string(),
            "/api/v1/pods?labelSelector=a%3Db&shardSelector=shardRange%28object.metadata.namespace%2C%20%270x0%27%2C%20%270x1%27%29"
        );
        let req = with_shard_selector(http::Request::get("/api/v1/pods").body(Vec::new()).unwrap(), "x");
        assert_eq!(req.uri().to_string(), "/api/v1/pods?shardSelector=x");
    }
}
