//! ShardActor(i): the work of one held shard. It routes each changed object to the
//! NamespaceActor of its namespace, starting one on first use and again after it stopped for
//! being idle. Stopping the ShardActor (the shard was lost or released) stops its NamespaceActors
//! with it, so no reconcile of the shard outlives its ownership.

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::warn;

use super::namespace_actor::{NamespaceActor, NamespaceArgs, NamespaceMsg};
use super::shard::ShardId;

pub struct ShardArgs {
    pub shard: ShardId,
    /// Everything a NamespaceActor needs except its namespace.
    pub template: NamespaceArgs,
}

pub enum ShardMsg {
    /// `controller`'s object `namespace/name` changed.
    Changed { controller: &'static str, namespace: String, name: String },
}

pub struct ShardState {
    args: ShardArgs,
    namespaces: HashMap<String, ActorRef<NamespaceMsg>>,
}

pub struct ShardActor;

impl ShardState {
    async fn namespace_actor(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        namespace: &str,
    ) -> Result<ActorRef<NamespaceMsg>, ActorProcessingErr> {
        // A just-spawned actor may still be Starting: it is live, and a second one for the same
        // namespace would run a second work queue (two reconciles of one key at once).
        if let Some(a) = self.namespaces.get(namespace)
            && ractor::ACTIVE_STATES.contains(&a.get_status())
        {
            return Ok(a.clone());
        }
        let mut args = self.args.template.clone();
        args.namespace = namespace.to_string();
        let (actor, _) = Actor::spawn_linked(None, NamespaceActor, args, myself.get_cell()).await?;
        self.namespaces.insert(namespace.to_string(), actor.clone());
        Ok(actor)
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, args: ShardArgs) -> Result<Self::State, ActorProcessingErr> {
        Ok(ShardState { args, namespaces: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ShardMsg::Changed { controller, namespace, name } = msg;
        let actor = st.namespace_actor(&myself, &namespace).await?;
        if actor.send_message(NamespaceMsg::Enqueue { controller, name: name.clone() }).is_err() {
            // It stopped between the status check and the send: start a fresh one.
            st.namespaces.remove(&namespace);
            let actor = st.namespace_actor(&myself, &namespace).await?;
            actor.send_message(NamespaceMsg::Enqueue { controller, name })?;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A NamespaceActor that stopped (idle) or failed is forgotten; the next change starts a new
        // one. Its queued keys are reconciled again then, since every change re-enqueues.
        match evt {
            SupervisionEvent::ActorTerminated(who, _, _) => st.namespaces.retain(|_, a| a.get_id() != who.get_id()),
            SupervisionEvent::ActorFailed(who, err) => {
                warn!(shard = st.args.shard.0, error = %err, "namespace actor failed");
                st.namespaces.retain(|_, a| a.get_id() != who.get_id());
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for a in st.namespaces.values() {
            a.stop(Some("shard released".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics::MetricsRegistry;
    use crate::runtime::namespace_actor::{Action, ReconcileError, ReconcileMetrics, Reconciler};
    use crate::runtime::work_queue::{Backoff, WorkQueueMetrics};
    use futures::future::BoxFuture;
    use ractor::ActorStatus;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, String)>>);

    struct Recording(Arc<Seen>);

    impl Reconciler for Recording {
        fn name(&self) -> &'static str {
            "demo"
        }
        fn reconcile(&self, ns: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
            self.0.0.lock().unwrap().push((ns.to_string(), name.to_string()));
            Box::pin(async { Ok(Action::Done) })
        }
    }

    /// The waits of this test: up to 5 s.
    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        crate::runtime::test_util::wait_until(what, Duration::from_secs(5), f).await
    }

    #[tokio::test]
    async fn routes_by_namespace_restarts_idle_actors_and_stops_them_with_the_shard() {
        let seen = Arc::new(Seen::default());
        let registry = MetricsRegistry::new();
        let reconciler: Arc<dyn Reconciler> = Arc::new(Recording(seen.clone()));
        let template = NamespaceArgs {
            namespace: String::new(),
            reconcilers: Arc::new(HashMap::from([("demo", reconciler)])),
            concurrency: 2,
            backoff: Backoff::default(),
            // Long enough that the actors are still there when the test counts them, even on a
            // loaded machine.
            idle_timeout: Duration::from_millis(600),
            reconcile_metrics: ReconcileMetrics::register(&registry).unwrap(),
            queue_metrics: WorkQueueMetrics::register(&registry).unwrap(),
        };
        let (shard, _) = Actor::spawn(None, ShardActor, ShardArgs { shard: ShardId(3), template }).await.unwrap();
        let change =
            |ns: &str, name: &str| ShardMsg::Changed { controller: "demo", namespace: ns.into(), name: name.into() };

        // A burst for one namespace, arriving while its actor is still starting, and one more.
        for i in 0..50 {
            shard.send_message(change("a", &format!("x{i}"))).unwrap();
        }
        shard.send_message(change("b", "y")).unwrap();
        wait_for("both namespaces reconciled", || seen.0.lock().unwrap().len() == 51).await;
        let children = || shard.get_children().len();
        assert_eq!(children(), 2, "one NamespaceActor per namespace");

        wait_for("idle namespace actors to stop", || children() == 0).await;
        shard.send_message(change("a", "z")).unwrap();
        wait_for("a fresh actor for namespace a", || seen.0.lock().unwrap().contains(&("a".into(), "z".into()))).await;

        shard.send_message(change("c", "slow")).unwrap();
        wait_for("namespace c running", || children() >= 1).await;
        let ns_actors = shard.get_children();
        shard.stop(Some("lost".into()));
        wait_for("the shard's namespace actors to stop with it", || {
            ns_actors.iter().all(|a| a.get_status() == ActorStatus::Stopped)
        })
        .await;
    }
}
