//! WatchHub: one sharded watch per watched resource type for this replica's held shards, with
//! each change routed to the ShardActor of the object's shard.
//!
//! It follows [`ShardOwnership`]: every `sync_period` it compares the shards held with those it
//! serves, starts ShardActors for new shards, stops those of lost shards (which stops their
//! NamespaceActors), and re-establishes the watches with the new shard selector. The list that
//! starts each watch re-enqueues every object of the shards, so a shard taken over from another
//! replica is reconciled in full.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Client;
use kube::api::DynamicObject;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use super::namespace_actor::NamespaceArgs;
use super::ownership::ShardOwnership;
use super::shard::{ShardId, ShardSpace};
use super::shard_actor::{ShardActor, ShardArgs, ShardMsg};
use super::sharded_watch::{ShardedWatch, WatchUpdate};

/// A resource type a controller watches; its objects' changes go to that controller.
#[derive(Clone)]
pub struct WatchSpec {
    pub controller: &'static str,
    /// The collection's path, e.g. `/api/v1/configmaps`.
    pub url_path: String,
    pub label_selector: Option<String>,
}

#[derive(Clone)]
pub struct HubArgs {
    pub client: Client,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
    pub watches: Vec<WatchSpec>,
    pub namespace_template: NamespaceArgs,
    pub sync_period: Duration,
}

pub enum HubMsg {
    Sync,
    Update { controller: &'static str, update: Box<WatchUpdate<DynamicObject>> },
}

pub struct HubState {
    args: HubArgs,
    served: Vec<ShardId>,
    shard_actors: BTreeMap<ShardId, ActorRef<ShardMsg>>,
    watch_tasks: Vec<JoinHandle<()>>,
}

pub struct WatchHub;

impl Actor for WatchHub {
    type Msg = HubMsg;
    type State = HubState;
    type Arguments = HubArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: HubArgs) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(HubMsg::Sync)?;
        Ok(HubState { args, served: Vec::new(), shard_actors: BTreeMap::new(), watch_tasks: Vec::new() })
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
            HubMsg::Update { controller, update } => match *update {
                WatchUpdate::Listed { objects, .. } => objects.iter().for_each(|o| st.route(controller, o)),
                WatchUpdate::Applied(o) | WatchUpdate::Deleted(o) => st.route(controller, &o),
            },
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
        self.watch_tasks.drain(..).for_each(|t| t.abort());
        if !held.is_empty() {
            for spec in &self.args.watches {
                let (tx, mut rx) = mpsc::channel(256);
                let watch = ShardedWatch {
                    client: self.args.client.clone(),
                    url_path: spec.url_path.clone(),
                    space: self.args.space,
                    shards: held.clone(),
                    label_selector: spec.label_selector.clone(),
                };
                self.watch_tasks.push(tokio::spawn(watch.run::<DynamicObject>(tx)));
                let me = myself.clone();
                let controller = spec.controller;
                self.watch_tasks.push(tokio::spawn(async move {
                    while let Some(update) = rx.recv().await {
                        if me.send_message(HubMsg::Update { controller, update: Box::new(update) }).is_err() {
                            break;
                        }
                    }
                }));
            }
        }
        self.served = held;
        Ok(())
    }

    fn route(&self, controller: &'static str, o: &DynamicObject) {
        let namespace = o.metadata.namespace.clone().unwrap_or_default();
        let shard = self.args.space.shard_of_key(&namespace);
        // Fenced: a shard whose renew deadline passed gets nothing, even before the next sync.
        if !self.args.ownership.holds(shard) {
            return;
        }
        if let (Some(a), Some(name)) = (self.shard_actors.get(&shard), o.metadata.name.clone()) {
            let _ = a.send_message(ShardMsg::Changed { controller, namespace, name });
        }
    }
}
