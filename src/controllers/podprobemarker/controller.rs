//! The PodProbeMarker controller in the sharded runtime: one reconcile per namespace (key
//! `namespace/""`) does the namespace's whole job, from the caches: apply its NodePodProbe entries
//! where they differ ([`fan_out`]), mark its pods with their results ([`mark_patch`]), keep each
//! marker's finalizer and status. A marker being deleted loses its probes and marks first; its
//! finalizer goes when no NodePodProbe lists it any more.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use tracing::debug;

use super::fanout::{FINALIZER, apply_body, fan_out, field_manager, nodes_to_apply, selects, split_key};
use super::index::ProbeIndex;
use super::marking::{MARKS_ANNOTATION, mark_patch};
use super::recent::RecentWrites;
use crate::api::nodepodprobe::NodePodProbe;
use crate::api::podprobemarker::{PodContainerProbe, PodProbeMarker};
use crate::controllers::pods::{TypedPods, is_active, typed};
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::metrics::MetricsRegistry;
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::ShardSpace;
use crate::runtime::watch_changes::{Change, follow};
use crate::runtime::watch_hub::{WatchSpec, enqueue};

pub const CONTROLLER: &str = "podprobemarker-controller";

/// How soon a namespace is looked at again while some selected pod's node has no NodePodProbe
/// yet (upstream never retries).
const NODE_WAIT: Duration = Duration::from_secs(5);

/// The least time between two applies of a namespace's entries to one NodePodProbe, and between
/// two status writes of one marker: a burst of pod changes then costs one write, not one each.
/// A change after a quiet spell still goes out at once.
const APPLY_SPACING: Duration = Duration::from_secs(1);
const STATUS_SPACING: Duration = Duration::from_secs(2);

/// What the controller watches besides pods: every PodProbeMarker, routed per namespace.
pub fn watch_spec(store: ObjectStore) -> WatchSpec {
    WatchSpec {
        controllers: vec![CONTROLLER],
        url_path: "/apis/apps.kruise.io/v1alpha1/podprobemarkers".into(),
        label_selector: None,
        store,
        trim: Trim::default(),
        namespaced: true,
        per_namespace: true,
    }
}

/// Every NodePodProbe, watched by every replica into `index` (not sharded: one lists pods of
/// many namespaces); a change reconciles the namespaces whose part changed, where held.
pub fn watch_node_pod_probes(client: &Client, index: Arc<RwLock<ProbeIndex>>) {
    use kube::runtime::watcher;
    let api = kube::Api::<NodePodProbe>::all(client.clone());
    let stream = watcher::watcher(api, watcher::Config::default());
    let name = |o: &NodePodProbe| o.metadata.name.clone().unwrap_or_default();
    tokio::spawn(follow(stream, "NodePodProbe", name, move |changes, _| {
        let changed: BTreeSet<String> = {
            let Ok(mut ix) = index.write() else { return false };
            changes
                .into_iter()
                .flat_map(|c| match c {
                    Change::Put(o) => ix.apply(&o),
                    Change::Gone(node) => ix.delete(&node),
                })
                .collect()
        };
        for ns in changed {
            enqueue(CONTROLLER, &ns, "");
        }
        true
    }));
}

/// Probe marking counters.
#[derive(Clone)]
pub struct MarkerMetrics {
    writes: IntCounterVec,
}

impl MarkerMetrics {
    pub fn register(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let writes = IntCounterVec::new(
            Opts::new(
                "kruise_podprobemarker_writes_total",
                "Writes of the PodProbeMarker controller, by kind (nodepodprobe_apply, pod_mark) and result",
            ),
            &["kind", "result"],
        )?;
        registry.register(&writes)?;
        for kind in ["nodepodprobe_apply", "pod_mark"] {
            for result in ["success", "error"] {
                writes.with_label_values(&[kind, result]);
            }
        }
        Ok(MarkerMetrics { writes })
    }

    fn count(&self, kind: &str, r: &Result<(), WriteError>) {
        self.writes.with_label_values(&[kind, if r.is_ok() { "success" } else { "error" }]).inc();
    }
}

/// The per-namespace reconciler.
pub struct PodProbeMarkerController {
    pub markers: ObjectStore,
    pub pods: ObjectStore,
    pub index: Arc<RwLock<ProbeIndex>>,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
    pub metrics: MarkerMetrics,
    pub recent: RecentWrites,
    pub typed_pods: TypedPods,
}

fn resource<K: kube::Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

impl Reconciler for PodProbeMarkerController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn reconcile(&self, namespace: &str, _name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let shard = self.space.shard_of_key(namespace);
        let ownership = self.ownership.clone();
        let markers: Vec<PodProbeMarker> =
            self.markers.in_namespace(namespace).iter().filter_map(|o| typed(o)).collect();
        // Without a marker here, only pods still carrying marks (to take off) matter.
        let objects: Vec<Arc<DynamicObject>> =
            self.pods.in_namespace(namespace).into_iter().filter(|o| !markers.is_empty() || carries_marks(o)).collect();
        let pods = self.typed_pods.of(namespace, &objects);
        let index = self.index.clone();
        let metrics = self.metrics.clone();
        let recent = self.recent.clone();
        let ns = namespace.to_string();
        Box::pin(async move {
            if ownership.epoch(shard).is_none() {
                return Ok(Action::Done);
            }
            reconcile_namespace(&ns, &markers, &pods, &index, &metrics, &recent).await
        })
    }
}

/// Whether the pod records marks a probe set.
fn carries_marks(o: &DynamicObject) -> bool {
    o.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MARKS_ANNOTATION))
}

async fn reconcile_namespace(
    ns: &str,
    markers: &[PodProbeMarker],
    pods: &[Arc<Pod>],
    index: &RwLock<ProbeIndex>,
    metrics: &MarkerMetrics,
    recent: &RecentWrites,
) -> Result<Action, ReconcileError> {
    let pod_refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let fanout = fan_out(markers, &pod_refs);
    let (observed, states, waiting_for_node) = {
        let ix = index.read().map_err(ReconcileError::from_display)?;
        let observed = ix.observed(ns, fanout.by_node.keys());
        let waiting = fanout.by_node.keys().any(|n| !ix.has_node(n));
        (observed, ix.states(ns), waiting)
    };
    let mut failures: Vec<String> = Vec::new();

    // 1. The namespace's entries on each node whose entries differ.
    // (Skipping what this replica applied moments ago: the index lags its own writes.)
    let now = Instant::now();
    // Writes held back to keep their spacing; the reconcile comes back for them.
    let mut deferred: Vec<Duration> = Vec::new();
    let mut due = Vec::new();
    for node in nodes_to_apply(&fanout.by_node, &observed) {
        let entries = fanout.by_node.get(&node).cloned().unwrap_or_default();
        let key = format!("apply/{ns}/{node}");
        let fingerprint = serde_json::to_string(&entries).unwrap_or_default();
        if recent.holds(&key, &fingerprint, now) {
            continue;
        }
        match recent.wait(&key, APPLY_SPACING, now) {
            Some(d) => deferred.push(d),
            None => due.push((node, entries, key, fingerprint)),
        }
    }
    let applies = due.into_iter().map(|(node, entries, key, fingerprint)| async move {
        let target =
            WriteTarget { resource: resource::<NodePodProbe>(), namespace: None, name: node.clone(), status: false };
        let op = WriteOp::Apply { field_manager: field_manager(ns), object: apply_body(&node, &entries) };
        let r = write(target, op).await;
        metrics.count("nodepodprobe_apply", &r);
        recent.settle(key, fingerprint, &r);
        r.map_err(|e| format!("applying {ns}'s probes to NodePodProbe {node}: {e}"))
    });
    failures.extend(join_all(applies).await.into_iter().filter_map(Result::err));

    // 2. Each active pod's marks, from its probe states.
    let live = |pod: &Pod, key: &str| -> Option<PodContainerProbe> {
        let (m, p) = split_key(key)?;
        let marker = markers.iter().find(|x| x.metadata.name.as_deref() == Some(m))?;
        if !selects(marker, pod) {
            return None;
        }
        marker.spec.probes.iter().find(|x| x.name == p).cloned()
    };
    let mut patches = Vec::new();
    for pod in pods.iter().filter(|p| is_active(p)) {
        let key = (pod.metadata.name.clone().unwrap_or_default(), pod.metadata.uid.clone().unwrap_or_default());
        let pod_states = states.get(&key).map(Vec::as_slice).unwrap_or_default();
        // The live probes of this pod, resolved once (the patch borrows them).
        let keys: BTreeSet<String> =
            pod_states.iter().map(|s| s.name.clone()).chain(super::marking::recorded_marks(pod).into_keys()).collect();
        let resolved: HashMap<String, PodContainerProbe> =
            keys.into_iter().filter_map(|k| live(pod, &k).map(|p| (k, p))).collect();
        if let Some(patch) = mark_patch(pod, pod_states, |k| resolved.get(k)) {
            // The same patch to the same version of the pod was sent moments ago.
            let fingerprint = format!("{}:{patch}", pod.metadata.resource_version.as_deref().unwrap_or_default());
            let recent_key = format!("pod/{ns}/{}", key.0);
            if !recent.holds(&recent_key, &fingerprint, now) {
                patches.push((key.0, patch, recent_key, fingerprint));
            }
        }
    }
    let writes = patches.into_iter().map(|(name, patch, recent_key, fingerprint)| async move {
        let target = WriteTarget { resource: resource::<Pod>(), namespace: Some(ns.to_string()), name, status: true };
        debug!(pod = %target.name, %patch, "marking pod");
        let r = write(target.clone(), WriteOp::StrategicPatch(patch)).await;
        metrics.count("pod_mark", &r);
        recent.settle(recent_key, fingerprint, &r);
        r.map_err(|e| format!("marking pod {ns}/{}: {e}", target.name))
    });
    failures.extend(join_all(writes).await.into_iter().filter_map(Result::err));

    // 3. Finalizers and status.
    let clean_pass = failures.is_empty() && deferred.is_empty();
    for marker in markers {
        match keep_marker(ns, marker, &fanout.matched, index, recent, clean_pass).await {
            Ok(Some(d)) => deferred.push(d),
            Ok(None) => {}
            Err(e) => failures.push(e),
        }
    }

    if !failures.is_empty() {
        return Err(ReconcileError(failures.join("; ")));
    }
    let node_wait = waiting_for_node.then_some(NODE_WAIT);
    Ok(match deferred.into_iter().chain(node_wait).min() {
        Some(d) => Action::RequeueAfter(d),
        None => Action::Done,
    })
}

/// A marker's finalizer (added while it lives, removed once its probes are gone everywhere) and
/// its status. Returns how long a status write is held back to keep its spacing.
async fn keep_marker(
    ns: &str,
    marker: &PodProbeMarker,
    matched: &std::collections::BTreeMap<String, i64>,
    index: &RwLock<ProbeIndex>,
    recent: &RecentWrites,
    clean_pass: bool,
) -> Result<Option<Duration>, String> {
    let name = marker.metadata.name.clone().unwrap_or_default();
    let target = WriteTarget {
        resource: resource::<PodProbeMarker>(),
        namespace: Some(ns.to_string()),
        name: name.clone(),
        status: false,
    };
    let finalizers = marker.metadata.finalizers.clone().unwrap_or_default();
    let has = finalizers.iter().any(|f| f == FINALIZER);
    let rv = marker.metadata.resource_version.clone();
    if marker.metadata.deletion_timestamp.is_some() {
        let still_listed = index.read().map_err(|e| e.to_string())?.lists_marker(ns, &name);
        if has && clean_pass && !still_listed {
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let patch = json!({ "metadata": { "finalizers": rest, "resourceVersion": rv } });
            write(target, WriteOp::MergePatch(patch)).await.map_err(|e| format!("releasing {ns}/{name}: {e}"))?;
        }
        return Ok(None);
    }
    if !has {
        let mut all = finalizers.clone();
        all.push(FINALIZER.to_string());
        let patch = json!({ "metadata": { "finalizers": all, "resourceVersion": rv } });
        write(target.clone(), WriteOp::MergePatch(patch))
            .await
            .map_err(|e| format!("adding the finalizer to {ns}/{name}: {e}"))?;
    }
    let generation = marker.metadata.generation.unwrap_or_default();
    let pods = matched.get(&name).copied().unwrap_or_default();
    let status = marker.status.clone().unwrap_or_default();
    let key = format!("status/{ns}/{name}");
    let fingerprint = format!("{generation}/{pods}");
    let stale = status.observed_generation != generation || status.matched_pods.unwrap_or_default() != pods;
    let now = Instant::now();
    if !stale || recent.holds(&key, &fingerprint, now) {
        return Ok(None);
    }
    // matchedPods moves with every pod that starts: one write per spacing carries the latest.
    if let Some(d) = recent.wait(&key, STATUS_SPACING, now) {
        return Ok(Some(d));
    }
    let patch = json!({ "status": { "observedGeneration": generation, "matchedPods": pods } });
    let r = write(WriteTarget { status: true, ..target }, WriteOp::MergePatch(patch)).await;
    recent.settle(key, fingerprint, &r);
    r.map(|()| None).map_err(|e| format!("writing the status of {ns}/{name}: {e}"))
}
