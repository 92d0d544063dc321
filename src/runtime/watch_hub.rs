//! WatchHub: one sharded watch per watched resource type for this replica's held shards, with
//! each change routed to the ShardActor of the object's shard.
//!
//! It follows [`ShardOwnership`]: every `sync_period` it compares the shards held with those it
//! serves, starts ShardActors for new shards, stops those of lost shards (which stops their
//! NamespaceActors) and forgets their cached objects, and re-establishes the watches with the new
//! shard selector. Each watch feeds an [`ObjectStore`]; only real changes are routed: a shard
//! taken over is new to the store, so all its objects are reconciled, while a re-list after a
//! broken watch routes just what changed or vanished meanwhile.
//!
//! Updates carry the generation of the watches that produced them, so those still queued from
//! watches already replaced cannot bring back objects of a shard given up.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kube::Client;
use kube::api::DynamicObject;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::http::ReadyCondition;
use super::namespace_actor::NamespaceArgs;
use super::object_store::{ObjectKey, ObjectStore, Trim, key_of};
use super::ownership::ShardOwnership;
use super::shard::{ShardId, ShardSpace};
use super::shard_actor::{ShardActor, ShardArgs, ShardMsg};
use super::sharded_watch::{ShardFilter, ShardedWatch, WatchMetrics, WatchUpdate};

/// A resource type some controllers watch: one watch per replica whatever their number. Its
/// objects' changes go to each of them, and the objects themselves into `store`, where they read
/// them.
#[derive(Clone)]
pub struct WatchSpec {
    pub controllers: Vec<&'static str>,
    /// The collection's path, e.g. `/api/v1/configmaps`.
    pub url_path: String,
    pub label_selector: Option<String>,
    pub store: ObjectStore,
    pub trim: Trim,
    /// Namespaced resource: `--namespace` narrows its watch to that namespace.
    pub namespaced: bool,
    /// Route a change as its namespace's key (empty name) rather than the object's: for
    /// controllers that reconcile a namespace's objects together (e.g. a rollout over its pods).
    pub per_namespace: bool,
}

/// The name the WatchHub is registered under, for [`enqueue`].
pub const WATCH_HUB: &str = "watch-hub";

/// Asks the WatchHub to reconcile `controller`'s key `namespace/name` (if this replica holds its
/// shard): for changes the watches do not see, e.g. another replica's report.
pub fn enqueue(controller: &'static str, namespace: &str, name: &str) {
    if let Some(hub) = ractor::registry::where_is(WATCH_HUB) {
        let msg = HubMsg::Enqueue { controller, namespace: namespace.into(), name: name.into() };
        let _ = ActorRef::<HubMsg>::from(hub).send_message(msg);
    }
}

/// The collection path of `url_path`'s resource within one namespace:
/// `/api/v1/pods` → `/api/v1/namespaces/<ns>/pods`.
pub fn namespaced_path(url_path: &str, namespace: &str) -> String {
    match url_path.rsplit_once('/') {
        Some((prefix, resource)) => format!("{prefix}/namespaces/{namespace}/{resource}"),
        None => url_path.to_string(),
    }
}

#[derive(Clone)]
pub struct HubArgs {
    pub client: Client,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
    pub watches: Vec<WatchSpec>,
    pub namespace_template: NamespaceArgs,
    /// Watch only this namespace (upstream's `--namespace`); `None` watches all.
    pub namespace: Option<String>,
    pub sync_period: Duration,
    pub metrics: WatchMetrics,
    /// Read: the coordinator has had its chance to acquire shards.
    pub leases_ready: ReadyCondition,
    /// Set here: every watch has listed its shards once.
    pub caches_ready: ReadyCondition,
}

pub enum HubMsg {
    Sync,
    /// Reconcile this key (see [`enqueue`]).
    Enqueue {
        controller: &'static str,
        namespace: String,
        name: String,
    },
    /// A watch's update, already trimmed; `taken` is answered once it is absorbed.
    Update {
        watch: usize,
        generation: u64,
        update: Box<WatchUpdate<DynamicObject>>,
        taken: RpcReplyPort<()>,
    },
}

pub struct HubState {
    args: HubArgs,
    served: Vec<ShardId>,
    shard_actors: BTreeMap<ShardId, ActorRef<ShardMsg>>,
    watch_tasks: Vec<JoinHandle<()>>,
    /// Bumped whenever the watches are replaced.
    generation: u64,
    /// Per watch, whether the current generation has listed.
    listed: Vec<bool>,
    /// Per watch, the keys the list in progress has delivered so far.
    seen: Vec<HashSet<ObjectKey>>,
    /// The shards the running watches deliver.
    filter: ShardFilter,
    /// Whether the API server applied the shard selector to the last list.
    server_filtered: bool,
}

pub struct WatchHub;

impl Actor for WatchHub {
    type Msg = HubMsg;
    type State = HubState;
    type Arguments = HubArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: HubArgs) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(HubMsg::Sync)?;
        Ok(HubState {
            args,
            served: Vec::new(),
            shard_actors: BTreeMap::new(),
            watch_tasks: Vec::new(),
            generation: 0,
            listed: Vec::new(),
            seen: Vec::new(),
            filter: ShardFilter::default(),
            server_filtered: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HubMsg::Sync => {
                st.sync(&myself).await?;
                myself.send_after(st.args.sync_period, || HubMsg::Sync);
            }
            HubMsg::Enqueue { controller, namespace, name } => st.route(&[controller], namespace, name),
            HubMsg::Update { watch, generation, update, taken } => {
                // Updates from watches already replaced are dropped: their shards may be gone.
                if generation == st.generation {
                    st.absorb(watch, *update);
                }
                let _ = taken.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // ShardActors of lost shards stop on our request: nothing to do. One that fails is
        // replaced at the next sync, which also re-lists, so none of its shard's work is lost.
        // (ractor's default would stop the hub on any child's exit.)
        if let SupervisionEvent::ActorFailed(who, err) = evt {
            warn!(error = %err, "shard actor failed; restarting it");
            st.shard_actors.retain(|_, a| a.get_id() != who.get_id());
            st.served.clear();
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        st.watch_tasks.drain(..).for_each(|t| t.abort());
        Ok(())
    }
}

impl HubState {
    async fn sync(&mut self, myself: &ActorRef<HubMsg>) -> Result<(), ActorProcessingErr> {
        let held = self.args.ownership.held();
        // Holding nothing once the leases had their chance: there is nothing to cache.
        if held.is_empty() && self.args.leases_ready.is_set() {
            self.args.caches_ready.set();
        }
        if held == self.served {
            return Ok(());
        }
        info!(shards = ?held.iter().map(|s| s.0).collect::<Vec<_>>(), "serving shards");
        let lost: Vec<ShardId> = self.shard_actors.keys().filter(|s| !held.contains(s)).copied().collect();
        for s in lost {
            if let Some(a) = self.shard_actors.remove(&s) {
                a.stop(Some("shard lost".into()));
            }
        }
        for s in &held {
            if !self.shard_actors.contains_key(s) {
                let args = ShardArgs { shard: *s, template: self.args.namespace_template.clone() };
                let (a, _) = Actor::spawn_linked(None, ShardActor, args, myself.get_cell()).await?;
                self.shard_actors.insert(*s, a);
            }
        }
        let space = self.args.space;
        for spec in &self.args.watches {
            spec.store.retain_namespaces(|ns| held.contains(&space.shard_of_key(ns)));
        }
        // Only giving shards up while the server does not shard: the running watches narrow
        // their filter and need no new list (which would be every object of the cluster). Where
        // the server shards, the watches are re-established with the narrower selector, so the
        // given-up shards' events stop coming at all.
        let narrowing = !self.server_filtered
            && !self.watch_tasks.is_empty()
            && !held.is_empty()
            && held.iter().all(|s| self.served.contains(s));
        if narrowing {
            self.filter.set(held.clone());
            self.served = held;
            return Ok(());
        }
        self.watch_tasks.drain(..).for_each(|t| t.abort());
        self.generation += 1;
        self.listed = vec![false; self.args.watches.len()];
        self.seen = vec![HashSet::new(); self.args.watches.len()];
        self.filter = ShardFilter::new(held.clone());
        if !held.is_empty() {
            for (watch, spec) in self.args.watches.iter().enumerate() {
                // Small: each slot may hold a page of untrimmed objects.
                let (tx, mut rx) = mpsc::channel(4);
                let sharded = ShardedWatch {
                    client: self.args.client.clone(),
                    url_path: match (&self.args.namespace, spec.namespaced) {
                        (Some(ns), true) => namespaced_path(&spec.url_path, ns),
                        _ => spec.url_path.clone(),
                    },
                    space,
                    shards: self.filter.clone(),
                    label_selector: spec.label_selector.clone(),
                    metrics: self.args.metrics.clone(),
                };
                self.watch_tasks.push(tokio::spawn(sharded.run::<DynamicObject>(tx)));
                let me = myself.clone();
                let generation = self.generation;
                let trim = spec.trim;
                self.watch_tasks.push(tokio::spawn(async move {
                    while let Some(mut update) = rx.recv().await {
                        trim_update(&trim, &mut update);
                        // One update at a time: the watch reads no faster than the hub absorbs,
                        // so a burst waits in the API server's buffers rather than our memory.
                        let sent = ractor::call!(me, |taken| HubMsg::Update {
                            watch,
                            generation,
                            update: Box::new(update),
                            taken
                        });
                        if sent.is_err() {
                            break;
                        }
                    }
                }));
            }
        }
        self.served = held;
        Ok(())
    }

    /// Takes a watch's update into its store and routes what changed.
    fn absorb(&mut self, watch: usize, update: WatchUpdate<DynamicObject>) {
        let Some(spec) = self.args.watches.get(watch) else { return };
        let store = &spec.store;
        match update {
            WatchUpdate::Relisting => {
                if let Some(seen) = self.seen.get_mut(watch) {
                    seen.clear();
                }
            }
            WatchUpdate::Page(objects) => {
                for o in objects {
                    let key = key_of(&o);
                    if !self.serves(&key.0) {
                        continue;
                    }
                    if let Some(seen) = self.seen.get_mut(watch) {
                        seen.insert(key.clone());
                    }
                    if store.apply(o) {
                        self.route_change(spec, key.0, key.1);
                    }
                }
            }
            WatchUpdate::Listed { server_filtered } => {
                self.server_filtered = server_filtered;
                let space = self.args.space;
                let served = &self.served;
                let seen = self.seen.get_mut(watch).map(std::mem::take).unwrap_or_default();
                let vanished = store.remove_unseen(&seen, |ns| served.contains(&space.shard_of_key(ns)));
                for (namespace, name) in vanished {
                    self.route_change(spec, namespace, name);
                }
                if let Some(l) = self.listed.get_mut(watch) {
                    *l = true;
                }
                if self.listed.iter().all(|l| *l) {
                    self.args.caches_ready.set();
                }
            }
            WatchUpdate::Applied(o) => {
                let (namespace, name) = key_of(&o);
                if self.serves(&namespace) && store.apply(o) {
                    self.route_change(spec, namespace, name);
                }
            }
            WatchUpdate::Deleted(o) => {
                let (namespace, name) = key_of(&o);
                store.delete(&namespace, &name);
                self.route_change(spec, namespace, name);
            }
        }
        self.args.metrics.set_cached(&spec.url_path, store.len());
    }

    /// Whether objects of `namespace` belong here: updates already queued when a shard was given
    /// up must not bring its objects back.
    fn serves(&self, namespace: &str) -> bool {
        self.served.contains(&self.args.space.shard_of_key(namespace))
    }

    /// Routes a change of `spec`'s object `namespace/name`.
    fn route_change(&self, spec: &WatchSpec, namespace: String, name: String) {
        let name = if spec.per_namespace { String::new() } else { name };
        self.route(&spec.controllers, namespace, name);
    }

    fn route(&self, controllers: &[&'static str], namespace: String, name: String) {
        let shard = self.args.space.shard_of_key(&namespace);
        // Fenced: a shard whose renew deadline passed gets nothing, even before the next sync.
        if !self.args.ownership.holds(shard) {
            return;
        }
        if let Some(a) = self.shard_actors.get(&shard) {
            for controller in controllers {
                let _ =
                    a.send_message(ShardMsg::Changed { controller, namespace: namespace.clone(), name: name.clone() });
            }
        }
    }
}

/// Trims the objects of an update before it reaches the hub's mailbox.
fn trim_update(trim: &Trim, update: &mut WatchUpdate<DynamicObject>) {
    match update {
        WatchUpdate::Page(objects) => objects.iter_mut().for_each(|o| trim.apply(o)),
        WatchUpdate::Applied(o) | WatchUpdate::Deleted(o) => trim.apply(o),
        WatchUpdate::Relisting | WatchUpdate::Listed { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_narrow_to_one_namespace() {
        assert_eq!(namespaced_path("/api/v1/pods", "team-a"), "/api/v1/namespaces/team-a/pods");
        assert_eq!(
            namespaced_path("/apis/apps.kruise.io/v1alpha1/clonesets", "x"),
            "/apis/apps.kruise.io/v1alpha1/namespaces/x/clonesets"
        );
    }
}
