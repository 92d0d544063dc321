//! The SidecarSet rollout in the sharded runtime: the thin glue around the planner and the budget.
//!
//! - Each shard's NamespaceActors reconcile a namespace's pods for every set at once (key
//!   `namespace/""` of [`ROLLOUT_CONTROLLER`]): count them, and pick and patch pods within the
//!   shard's [`ShardLedger`]. Order is exact within a namespace; across namespaces and shards it
//!   follows as closely as the budget allows.
//! - Each shard writes its ledger's report into the set's rollout ConfigMap
//!   (`sidecarset-rollout-<set>` in the Kruise namespace, key `shard-<i>`).
//! - The shard owning the set (all SidecarSets live in the shard of namespace "") reads the
//!   reports, writes `grants` and the status counts ([`coordinate`]).
//!
//! Ledgers and the owner's grants belong to one acquisition of their shard (its epoch): a shard
//! regained later starts again from what the API server holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use super::budget::{RolloutGrants, ShardLedger, ShardReport, allocate, revisions_in_use, total_counts};
use super::injection::INJECTED_LIST;
use super::planner::{RolloutCounts, pick, rolling, upgrade_order};
use super::pod_state::{PodFacts, SetVersion, is_matched};
use super::upgrade::upgrade_patch;
use crate::api::sidecarset::{SIDECARSET_NAME_LABEL, SidecarSet};
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::metrics::MetricsRegistry;
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::ObjectStore;
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::{ShardId, ShardSpace};
use crate::runtime::watch_hub::enqueue;

pub const ROLLOUT_CONTROLLER: &str = "sidecarset-rollout";
/// Label on the rollout ConfigMaps (value: "true").
pub const ROLLOUT_LABEL: &str = "kruise.io/sidecarset-rollout";
const GRANTS_KEY: &str = "grants";
/// Patches one namespace reconcile keeps in flight (the ApiWriter bounds the replica's total).
const UPGRADE_CONCURRENCY: usize = 16;
/// How long a pod this replica patched may stay unseen in the cache before it is counted from the
/// cache again (the patch's answer was lost, or the watch is far behind).
const PENDING_TIMEOUT: Duration = Duration::from_secs(60);

pub fn rollout_configmap_name(set: &str) -> String {
    format!("sidecarset-rollout-{set}")
}

fn report_key(shard: ShardId) -> String {
    format!("shard-{}", shard.0)
}

/// The rollout ConfigMaps of every set, watched by every replica (not sharded: shards read their
/// grants, the owner reads the reports).
pub fn watch_rollout_configmaps(client: &Client, namespace: &str) -> Store<ConfigMap> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let watch = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(&format!("{ROLLOUT_LABEL}=true")),
    );
    tokio::spawn(reflector(writer, watch).default_backoff().touched_objects().for_each(|r| async move {
        if let Err(e) = r {
            warn!(error = %e, "rollout ConfigMap watch failed; retrying");
        }
    }));
    store
}

/// The rollout's metrics: the status of each set this replica coordinates, and the in-place
/// updates this replica made.
#[derive(Clone)]
pub struct RolloutMetrics {
    pods: IntGaugeVec,
    updates: IntCounterVec,
}

impl RolloutMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let m = RolloutMetrics {
            pods: IntGaugeVec::new(
                Opts::new(
                    "kruise_sidecarset_pods",
                    "Pods of a SidecarSet by state (matched, updated, ready, updated_ready), as its coordinating replica last computed them",
                ),
                &["sidecarset", "state"],
            )?,
            updates: IntCounterVec::new(
                Opts::new("kruise_sidecarset_inplace_updates_total", "In-place sidecar updates sent, by result"),
                &["result"],
            )?,
        };
        registry.register(&m.pods)?;
        registry.register(&m.updates)?;
        for result in ["success", "error"] {
            m.updates.with_label_values(&[result]);
        }
        Ok(m)
    }

    fn set_status(&self, set: &str, c: &RolloutCounts) {
        for (state, n) in
            [("matched", c.matched), ("updated", c.updated), ("ready", c.ready), ("updated_ready", c.updated_ready)]
        {
            self.pods.with_label_values(&[set, state]).set(i64::from(n));
        }
    }

    fn forget(&self, set: &str) {
        for state in ["matched", "updated", "ready", "updated_ready"] {
            let _ = self.pods.remove_label_values(&[set, state]);
        }
    }
}

/// A shard's ledger for one set, with what the glue keeps around it.
struct Tracked {
    epoch: u64,
    ledger: ShardLedger,
    /// The report changed since it was last written.
    dirty: bool,
    /// Namespaces that had waiting pods the budget did not allow.
    blocked: BTreeSet<String>,
}

/// A pod this replica patched that the cache does not show updated yet.
struct Pending {
    set: String,
    hash: String,
    since: Instant,
}

/// The owner's grants for one set, authoritative for one acquisition of the set's shard.
struct OwnedGrants {
    epoch: u64,
    grants: RolloutGrants,
}

/// What was read off one pod for one set, kept while neither changes: most events change one pod
/// of a namespace, and a reconcile reads them all.
struct CachedFacts {
    pod_version: String,
    set_version: String,
    /// `None`: not matched.
    facts: Option<PodFacts>,
}

#[derive(Default)]
struct Shared {
    /// Per namespace, by (pod, set).
    facts: HashMap<String, HashMap<(String, String), CachedFacts>>,
    ledgers: HashMap<(ShardId, String), Tracked>,
    pending: HashMap<(String, String), Pending>,
    owned: HashMap<String, OwnedGrants>,
}

/// What the rollout reads and writes through.
#[derive(Clone)]
pub struct RolloutSources {
    pub client: Client,
    /// The Kruise namespace (rollout ConfigMaps).
    pub namespace: String,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
    /// Pods of the held shards (the WatchHub's store for [`crate::controllers::pods::watch_spec`]).
    pub pods: ObjectStore,
    /// Every SidecarSet.
    pub sets: Store<SidecarSet>,
    /// Every rollout ConfigMap ([`watch_rollout_configmaps`]).
    pub rollouts: Store<ConfigMap>,
    pub metrics: RolloutMetrics,
}

/// What the rollout's reconciles and its sync loop share.
#[derive(Clone)]
pub struct RolloutContext {
    src: RolloutSources,
    shared: Arc<Mutex<Shared>>,
}

impl std::ops::Deref for RolloutContext {
    type Target = RolloutSources;
    fn deref(&self) -> &RolloutSources {
        &self.src
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl RolloutContext {
    pub fn new(src: RolloutSources) -> Self {
        RolloutContext { src, shared: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every critical section leaves the maps consistent: usable after a panic elsewhere.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn configmap_target(&self, set: &str) -> WriteTarget {
        WriteTarget {
            resource: ApiResource::erase::<ConfigMap>(&()),
            namespace: Some(self.namespace.clone()),
            name: rollout_configmap_name(set),
            status: false,
        }
    }

    /// The cached rollout ConfigMap of `set`.
    fn cached_configmap(&self, set: &str) -> Option<Arc<ConfigMap>> {
        self.rollouts.get(&ObjectRef::new(&rollout_configmap_name(set)).within(&self.namespace))
    }

    /// The grants of `set` as last seen.
    fn cached_grants(&self, set: &str) -> RolloutGrants {
        grants_in(self.cached_configmap(set).as_deref().and_then(|c| c.data.as_ref()))
    }

    /// The rollout ConfigMap's data of `set`, read from the API server (a quorum read): what a
    /// new holder of a shard must continue from.
    async fn fresh_data(&self, set: &str) -> Result<BTreeMap<String, String>, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.get_opt(&rollout_configmap_name(set)).await?.and_then(|c| c.data).unwrap_or_default())
    }

    /// The namespaces of `shard` with pods in the cache.
    fn namespaces_of(&self, shard: ShardId) -> BTreeSet<String> {
        self.pods.namespaces().into_iter().filter(|ns| self.space.shard_of_key(ns) == shard).collect()
    }

    /// Makes sure `shard` has a ledger for `set` at `hash` under `epoch`, resuming from the API
    /// server's copy when it has none (first use, takeover, new hash).
    async fn ensure_ledger(&self, shard: ShardId, epoch: u64, set: &str, hash: &str) -> Result<(), kube::Error> {
        let current = |s: &Shared| {
            s.ledgers.get(&(shard, set.to_string())).is_some_and(|t| t.epoch == epoch && t.ledger.hash == hash)
        };
        if current(&self.lock()) {
            return Ok(());
        }
        let data = self.fresh_data(set).await?;
        let grants = grants_in(Some(&data));
        let persisted: Option<ShardReport> = data.get(&report_key(shard)).and_then(|r| serde_json::from_str(r).ok());
        let namespaces = self.namespaces_of(shard);
        let ledger = ShardLedger::resume(hash, grants.for_shard(hash, shard.0), persisted.as_ref(), namespaces.clone());
        {
            let mut s = self.lock();
            if current(&s) {
                return Ok(());
            }
            info!(set, shard = shard.0, hash, "rollout ledger resumed");
            s.ledgers
                .insert((shard, set.to_string()), Tracked { epoch, ledger, dirty: true, blocked: BTreeSet::new() });
        }
        // Every namespace of the shard counts its pods, so the ledger knows what is in flight.
        for ns in namespaces {
            enqueue(ROLLOUT_CONTROLLER, &ns, "");
        }
        Ok(())
    }

    /// One namespace: counts every set's matched pods and upgrades those the budget allows.
    async fn reconcile_namespace(&self, namespace: &str) -> Result<Action, ReconcileError> {
        let shard = self.space.shard_of_key(namespace);
        let Some(epoch) = self.ownership.epoch(shard) else { return Ok(Action::Done) };
        // Only pods some set injected into.
        let objects: Vec<Arc<DynamicObject>> = self
            .pods
            .in_namespace(namespace)
            .into_iter()
            .filter(|o| o.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(INJECTED_LIST)))
            .collect();
        // One reconcile per namespace at a time: its cache is ours until we put it back.
        let mut cached = self.lock().facts.remove(namespace).unwrap_or_default();
        let mut fresh = HashMap::with_capacity(cached.len());
        let mut converted: HashMap<String, Arc<Pod>> = HashMap::new();
        let mut requeue = None;
        let mut outcome = Ok(());
        for set in self.sets.state() {
            let v = SetVersion::new(&set);
            let set_version = spec_version(&set);
            let mut matched: Vec<(&Arc<DynamicObject>, PodFacts)> = Vec::new();
            for o in &objects {
                let name = o.metadata.name.clone().unwrap_or_default();
                let pod_version = o.metadata.resource_version.clone().unwrap_or_default();
                let key = (name.clone(), v.name.to_string());
                let facts = match cached.remove(&key) {
                    Some(c) if c.pod_version == pod_version && c.set_version == set_version => c.facts,
                    _ => {
                        let Some(pod) = pod_of(&mut converted, o) else { continue };
                        is_matched(&v, &pod).then(|| PodFacts::of(&v, &pod))
                    }
                };
                if let Some(f) = &facts {
                    matched.push((o, self.with_pending(&v, (namespace, &name), f.clone())));
                }
                fresh.insert(key, CachedFacts { pod_version, set_version: set_version.clone(), facts });
            }
            let known = self.lock().ledgers.contains_key(&(shard, v.name.to_string()));
            if matched.is_empty() && !known {
                continue;
            }
            if let Err(e) = self.ensure_ledger(shard, epoch, v.name, &v.hash).await {
                outcome = Err(ReconcileError::from_display(e));
                break;
            }
            let facts: Vec<PodFacts> = matched.iter().map(|(_, f)| f.clone()).collect();
            let picked = self.take_budget(shard, epoch, namespace, &v, &facts);
            if !picked.is_empty() {
                let pods: Vec<Arc<Pod>> = picked.iter().filter_map(|&i| pod_of(&mut converted, matched[i].0)).collect();
                if let Err(e) = self.upgrade(shard, epoch, &v, pods.iter().map(|p| &**p)).await {
                    warn!(set = v.name, namespace, error = %e, "in-place upgrade failed; retrying");
                    requeue = Some(Duration::from_secs(1));
                }
            }
            // Pods patched but not yet seen: the watch brings them; this is the safety net.
            if self.has_pending(namespace, v.name) {
                requeue = requeue.or(Some(Duration::from_secs(5)));
            }
        }
        self.lock().facts.insert(namespace.to_string(), fresh);
        outcome?;
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// `f` of pod `key`, counted as updated and in flight if this replica already patched it and
    /// the cache does not show it yet.
    fn with_pending(&self, v: &SetVersion, key: (&str, &str), mut f: PodFacts) -> PodFacts {
        let key = (key.0.to_string(), key.1.to_string());
        let mut s = self.lock();
        if let Some(p) = s.pending.get(&key).filter(|p| p.set == v.name) {
            if f.updated || p.hash != v.hash || p.since.elapsed() > PENDING_TIMEOUT {
                s.pending.remove(&key);
            } else {
                f.updated = true;
                f.consistent_ready = false;
            }
        }
        f
    }

    fn has_pending(&self, namespace: &str, set: &str) -> bool {
        self.lock().pending.iter().any(|((ns, _), p)| ns == namespace && p.set == set)
    }

    /// Records the namespace's counts in the ledger and takes what the budget allows for it.
    fn take_budget(
        &self,
        shard: ShardId,
        epoch: u64,
        namespace: &str,
        v: &SetVersion,
        facts: &[PodFacts],
    ) -> Vec<usize> {
        let grants = self.cached_grants(v.name);
        let mut s = self.lock();
        let Some(t) = s.ledgers.get_mut(&(shard, v.name.to_string())).filter(|t| t.epoch == epoch) else {
            return Vec::new();
        };
        t.ledger.observe(grants.for_shard(&v.hash, shard.0));
        let before = t.ledger.report();
        let counts = RolloutCounts::of(facts);
        t.ledger.record(namespace, counts, facts.iter().filter_map(|f| f.revision.clone()).collect());
        let mut picked = Vec::new();
        if rolling(v.set) && counts.waiting > 0 {
            let order = upgrade_order(v.set.spec.update_strategy.as_ref(), facts);
            picked = pick(&order, facts, &mut t.ledger.budget(namespace));
            if picked.len() < order.len() {
                t.blocked.insert(namespace.to_string());
            } else {
                t.blocked.remove(namespace);
            }
        } else {
            t.blocked.remove(namespace);
        }
        t.ledger.return_surplus();
        if t.ledger.report() != before {
            t.dirty = true;
        }
        picked
    }

    /// Patches the picked pods, fenced by the shard's epoch.
    async fn upgrade<'p>(
        &self,
        shard: ShardId,
        epoch: u64,
        v: &SetVersion<'_>,
        pods: impl Iterator<Item = &'p Pod>,
    ) -> Result<(), ReconcileError> {
        use futures::StreamExt;
        let latest = v.set.status.as_ref().and_then(|s| s.latest_revision.clone()).unwrap_or_default();
        let now = now_rfc3339();
        // Every patch is built before any is sent: a pod the set cannot upgrade stops the round
        // before it started.
        let mut writes = Vec::new();
        for pod in pods {
            let key =
                (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
            writes.push((key, upgrade_patch(v, pod, &latest, &now).map_err(ReconcileError::from_display)?));
        }
        let results: Vec<Result<(), WriteError>> = futures::stream::iter(writes)
            .map(|((ns, name), patch)| async move {
                if self.ownership.epoch(shard) != Some(epoch) {
                    return Ok(());
                }
                let target = WriteTarget {
                    resource: ApiResource::erase::<Pod>(&()),
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                    status: false,
                };
                let pending = Pending { set: v.name.into(), hash: v.hash.clone(), since: Instant::now() };
                self.lock().pending.insert((ns.clone(), name.clone()), pending);
                let result = write(target, WriteOp::MergePatch(patch)).await;
                match &result {
                    Ok(()) => {
                        self.metrics.updates.with_label_values(&["success"]).inc();
                        info!(set = v.name, pod = %format!("{ns}/{name}"), "upgraded sidecars in place");
                    }
                    // E.g. changed since it was read (409): the watch brings the news and a new round.
                    Err(_) => {
                        self.metrics.updates.with_label_values(&["error"]).inc();
                        self.lock().pending.remove(&(ns, name));
                    }
                }
                result
            })
            .buffer_unordered(UPGRADE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>().map_err(ReconcileError::from_display)
    }

    /// The owner's part for `set` (whose shard this replica holds under `epoch`): grants from the
    /// shards' reports, and the status counts. Returns the counts.
    pub async fn coordinate(&self, set: &SidecarSet, epoch: u64) -> Result<RolloutCounts, ReconcileError> {
        let v = SetVersion::new(set);
        let configmap = self.cached_configmap(v.name);
        if configmap.is_none() {
            self.create_configmap(set).await?;
        }
        let reports = reports_in(configmap.as_deref().and_then(|c| c.data.as_ref()));
        let counts = total_counts(&v.hash, &reports);
        self.metrics.set_status(v.name, &counts);
        if !rolling(set) {
            return Ok(counts);
        }
        let owned = {
            let s = self.lock();
            s.owned.get(v.name).filter(|o| o.epoch == epoch).map(|o| o.grants.clone())
        };
        let current = match owned {
            Some(g) => g,
            // A new acquisition continues from the API server's grants, never a stale cache.
            None => grants_in(Some(&self.fresh_data(v.name).await.map_err(ReconcileError::from_display)?)),
        };
        let next = allocate(set.spec.update_strategy.as_ref(), &v.hash, &reports, &current);
        if next != current {
            let body = serde_json::to_string(&next).map_err(ReconcileError::from_display)?;
            let patch = json!({ "data": { GRANTS_KEY: body } });
            if let Err(e) = write(self.configmap_target(v.name), WriteOp::MergePatch(patch)).await {
                // The outcome is unknown: the next round reads the grants afresh.
                self.lock().owned.remove(v.name);
                return Err(ReconcileError::from_display(e));
            }
            debug!(set = v.name, grants = ?next.shards, "granted");
        }
        self.lock().owned.insert(v.name.to_string(), OwnedGrants { epoch, grants: next });
        Ok(counts)
    }

    /// The set revisions some shard reports its pods record (as last seen).
    pub fn revisions_in_use(&self, set: &str) -> BTreeSet<String> {
        revisions_in_use(&reports_in(self.cached_configmap(set).as_deref().and_then(|c| c.data.as_ref())))
    }

    async fn create_configmap(&self, set: &SidecarSet) -> Result<(), ReconcileError> {
        let name = set.metadata.name.clone().unwrap_or_default();
        let body = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": rollout_configmap_name(&name),
                "namespace": self.namespace,
                "labels": { ROLLOUT_LABEL: "true", SIDECARSET_NAME_LABEL: name, "app.kubernetes.io/managed-by": "kruise-rs" },
                "ownerReferences": [{
                    "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet", "name": name,
                    "uid": set.metadata.uid, "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "data": {},
        });
        match write(self.configmap_target(&name), WriteOp::Create(body)).await {
            Ok(()) | Err(WriteError::Api { code: 409, .. }) => Ok(()),
            Err(e) => Err(ReconcileError::from_display(e)),
        }
    }

    /// Writes the reports that changed, returns slots nobody here needs, forgets ledgers of shards
    /// no longer held, and wakes namespaces whose budget grew.
    async fn flush(&self) {
        let mut writes = Vec::new();
        let mut wake = BTreeSet::new();
        {
            let sets: BTreeSet<String> = self.sets.state().iter().filter_map(|s| s.metadata.name.clone()).collect();
            let mut s = self.lock();
            let ownership = &self.ownership;
            // Shards lost (or regained since: a new acquisition starts afresh) and sets deleted.
            s.ledgers.retain(|(shard, set), t| ownership.epoch(*shard) == Some(t.epoch) && sets.contains(set));
            s.pending.retain(|_, p| p.since.elapsed() <= PENDING_TIMEOUT);
            let space = self.space;
            s.facts.retain(|ns, _| ownership.holds(space.shard_of_key(ns)));
            let metrics = &self.metrics;
            s.owned.retain(|set, o| {
                let keep = ownership.epoch(self.space.shard_of_key("")) == Some(o.epoch) && sets.contains(set);
                if !keep {
                    metrics.forget(set);
                }
                keep
            });
            for ((shard, set), t) in s.ledgers.iter_mut() {
                let cap_before = t.ledger.grant;
                t.ledger.observe(self.cached_grants(set).for_shard(&t.ledger.hash, shard.0));
                let room = t.ledger.grant != cap_before || t.ledger.has_room();
                if room {
                    wake.extend(t.blocked.iter().cloned());
                }
                if t.ledger.return_surplus() > 0 {
                    t.dirty = true;
                }
                if t.dirty {
                    t.dirty = false;
                    writes.push((*shard, set.clone(), t.epoch, t.ledger.report()));
                }
            }
        }
        for ns in wake {
            enqueue(ROLLOUT_CONTROLLER, &ns, "");
        }
        for (shard, set, epoch, report) in writes {
            if self.ownership.epoch(shard) != Some(epoch) {
                continue;
            }
            let body = serde_json::to_string(&report).unwrap_or_default();
            let patch = json!({ "data": { report_key(shard): body } });
            if let Err(e) = write(self.configmap_target(&set), WriteOp::MergePatch(patch)).await {
                debug!(set, shard = shard.0, error = %e, "report not written; retrying");
                if let Some(t) = self.lock().ledgers.get_mut(&(shard, set)) {
                    t.dirty = true;
                }
            }
        }
    }
}

/// What identifies a set's spec as the rollout reads it: its generation and its hash (the
/// webhook writes the hash annotations, which do not bump the generation).
fn spec_version(set: &SidecarSet) -> String {
    let hash = set.metadata.annotations.as_ref().and_then(|a| a.get(super::injection::SIDECARSET_HASH));
    format!("{}/{}", set.metadata.generation.unwrap_or_default(), hash.map_or("", String::as_str))
}

/// The typed pod of a cached object, converted once per reconcile.
fn pod_of(converted: &mut HashMap<String, Arc<Pod>>, o: &DynamicObject) -> Option<Arc<Pod>> {
    let name = o.metadata.name.clone().unwrap_or_default();
    if let Some(p) = converted.get(&name) {
        return Some(p.clone());
    }
    let pod: Arc<Pod> = Arc::new(crate::controllers::pods::typed(o)?);
    converted.insert(name, pod.clone());
    Some(pod)
}

/// The owner's grants in a rollout ConfigMap's data (none if absent or unreadable).
fn grants_in(data: Option<&BTreeMap<String, String>>) -> RolloutGrants {
    data.and_then(|d| d.get(GRANTS_KEY)).and_then(|g| serde_json::from_str(g).ok()).unwrap_or_default()
}

/// The shards' reports in a rollout ConfigMap's data (unreadable ones are skipped).
fn reports_in(data: Option<&BTreeMap<String, String>>) -> BTreeMap<u32, ShardReport> {
    data.into_iter()
        .flatten()
        .filter_map(|(k, val)| {
            let shard: u32 = k.strip_prefix("shard-")?.parse().ok()?;
            Some((shard, serde_json::from_str(val).ok()?))
        })
        .collect()
}

/// The replica's rollout loop: reacts to set changes (every namespace recounts), to rollout
/// ConfigMap changes (the owner recomputes; grants wake blocked namespaces), takes over ledgers
/// of shards acquired with budget but no pods, and writes reports.
pub async fn run_sync(ctx: RolloutContext, owner_controller: &'static str, period: Duration) {
    let mut sets_seen: HashMap<String, String> = HashMap::new();
    let mut rollouts_seen: HashMap<String, String> = HashMap::new();
    loop {
        tokio::time::sleep(period).await;
        let sets = ctx.sets.state();
        let mut changed_sets = false;
        let mut now_seen = HashMap::new();
        for set in &sets {
            let name = set.metadata.name.clone().unwrap_or_default();
            // Spec changes only: status writes (frequent during a rollout) change no decision.
            let version = spec_version(set);
            if sets_seen.get(&name) != Some(&version) {
                changed_sets = true;
            }
            now_seen.insert(name, version);
        }
        if changed_sets || now_seen.len() != sets_seen.len() {
            for ns in ctx.pods.namespaces() {
                enqueue(ROLLOUT_CONTROLLER, &ns, "");
            }
        }
        sets_seen = now_seen;

        let mut now_seen = HashMap::new();
        for cm in ctx.rollouts.state() {
            let Some(set) = cm.metadata.labels.as_ref().and_then(|l| l.get(SIDECARSET_NAME_LABEL)).cloned() else {
                continue;
            };
            let version = cm.metadata.resource_version.clone().unwrap_or_default();
            if rollouts_seen.get(&set) != Some(&version) {
                enqueue(owner_controller, "", &set);
            }
            // A shard acquired with budget of this set but no pods to count: take it over so
            // the budget comes back.
            let grants = grants_in(cm.data.as_ref());
            for (&n, _) in grants.shards.iter() {
                let shard = ShardId(n);
                let Some(epoch) = ctx.ownership.epoch(shard) else { continue };
                let tracked = ctx.lock().ledgers.contains_key(&(shard, set.clone()));
                if !tracked
                    && ctx.namespaces_of(shard).is_empty()
                    && let Err(e) = ctx.ensure_ledger(shard, epoch, &set, &grants.hash).await
                {
                    debug!(set, shard = n, error = %e, "ledger not resumed; retrying");
                }
            }
            now_seen.insert(set, version);
        }
        rollouts_seen = now_seen;
        ctx.flush().await;
    }
}

/// The NamespaceActors' reconciler of pods (key `namespace/""`).
pub struct SidecarSetRollout(pub RolloutContext);

impl Reconciler for SidecarSetRollout {
    fn name(&self) -> &'static str {
        ROLLOUT_CONTROLLER
    }

    fn reconcile(&self, namespace: &str, _: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let ctx = self.0.clone();
        let namespace = namespace.to_string();
        Box::pin(async move {
            let span = info_span!("sidecarset_rollout", namespace = %namespace);
            ctx.reconcile_namespace(&namespace).instrument(span).await
        })
    }
}
