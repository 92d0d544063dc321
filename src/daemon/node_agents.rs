//! One agent actor per served node, fed that node's object (its NodePodProbe, its NodeImage) as it
//! changes. The probe side and the image-pull side each run a [`NodeAgents`]: it starts an agent
//! when a node's object appears, tells it and stops it when the object goes, and restarts a
//! crashed agent with back-off, handing it the last object again.

use std::collections::HashMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::runtime::watch_changes::{Change, follow};
use crate::runtime::work_queue::Backoff;

/// A node's object as it is now; None: deleted. Each agent's message type is built from it.
pub struct NodeObject<O>(pub Option<Box<O>>);

pub enum NodeAgentsMsg<O> {
    Changed { node: String, object: Option<Box<O>> },
    Restart(String),
}

/// Builds an agent's arguments for a node.
pub type AgentArgsFor<A> = Arc<dyn Fn(&str) -> <A as Actor>::Arguments + Send + Sync>;

/// The supervisor of agents `A`, one per node with an object `O`.
pub struct NodeAgents<A, O> {
    agent: A,
    /// What the agents do, for the logs ("probes", "image pulls").
    what: &'static str,
    _object: PhantomData<fn() -> O>,
}

impl<A, O> NodeAgents<A, O> {
    pub fn new(agent: A, what: &'static str) -> Self {
        NodeAgents { agent, what, _object: PhantomData }
    }
}

pub struct NodeAgentsState<A: Actor, O> {
    args: AgentArgsFor<A>,
    agents: HashMap<String, ActorRef<A::Msg>>,
    by_actor: HashMap<ActorId, String>,
    /// The last object per node, handed again to a restarted agent.
    last: HashMap<String, Box<O>>,
    restarts: HashMap<String, u32>,
}

impl<A, O> Actor for NodeAgents<A, O>
where
    A: Actor + Clone,
    A::Msg: From<NodeObject<O>>,
    O: Clone + Send + Sync + 'static,
{
    type Msg = NodeAgentsMsg<O>;
    type State = NodeAgentsState<A, O>;
    type Arguments = AgentArgsFor<A>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: AgentArgsFor<A>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(NodeAgentsState {
            args,
            agents: HashMap::new(),
            by_actor: HashMap::new(),
            last: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeAgentsMsg::Changed { node, object: Some(o) } => {
                st.last.insert(node.clone(), o.clone());
                let agent = self.agent_of(st, &myself, &node).await?;
                let _ = agent.send_message(NodeObject(Some(o)).into());
            }
            NodeAgentsMsg::Changed { node, object: None } => {
                st.last.remove(&node);
                if let Some(a) = st.agents.remove(&node) {
                    st.by_actor.remove(&a.get_id());
                    let _ = a.send_message(NodeObject(None).into());
                    a.stop(Some("the node's object was deleted".into()));
                }
            }
            NodeAgentsMsg::Restart(node) => {
                if let Some(o) = st.last.get(&node).cloned() {
                    let agent = self.agent_of(st, &myself, &node).await?;
                    let _ = agent.send_message(NodeObject(Some(o)).into());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // ractor's default would stop this actor with its child.
        if let SupervisionEvent::ActorFailed(who, error) = evt
            && let Some(node) = st.by_actor.remove(&who.get_id())
        {
            st.agents.remove(&node);
            let n = st.restarts.entry(node.clone()).or_default();
            *n += 1;
            let delay = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(60) }.delay(*n);
            warn!(%node, what = self.what, %error, ?delay, "node agent crashed; restarting");
            myself.send_after(delay, move || NodeAgentsMsg::Restart(node));
        }
        Ok(())
    }
}

impl<A, O> NodeAgents<A, O>
where
    A: Actor + Clone,
    A::Msg: From<NodeObject<O>>,
    O: Clone + Send + Sync + 'static,
{
    async fn agent_of(
        &self,
        st: &mut NodeAgentsState<A, O>,
        myself: &ActorRef<NodeAgentsMsg<O>>,
        node: &str,
    ) -> Result<ActorRef<A::Msg>, ActorProcessingErr> {
        if let Some(a) = st.agents.get(node) {
            return Ok(a.clone());
        }
        let (a, _) = Actor::spawn_linked(None, self.agent.clone(), (st.args)(node), myself.get_cell()).await?;
        info!(%node, what = self.what, "serving the node");
        st.by_actor.insert(a.get_id(), node.to_string());
        st.agents.insert(node.to_string(), a.clone());
        Ok(a)
    }
}

/// Hands every change of a served node's object (cluster-scoped, named after its node) to
/// `agents`. After a re-list, objects that were not listed count as deleted.
pub async fn follow_node_objects<O>(
    client: Client,
    field_selector: Option<String>,
    agents: ActorRef<NodeAgentsMsg<O>>,
    served: impl Fn(&str) -> bool,
) where
    O: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let mut config = watcher::Config::default();
    if let Some(f) = &field_selector {
        config = config.fields(f);
    }
    let stream = watcher::watcher(Api::<O>::all(client), config);
    let name = |o: &O| o.meta().name.clone().unwrap_or_default();
    follow(stream, O::kind(&()).as_ref(), name, |changes, _| {
        for change in changes {
            let (node, object) = match change {
                Change::Put(o) => (o.meta().name.clone().unwrap_or_default(), Some(Box::new(o))),
                Change::Gone(node) => (node, None),
            };
            if served(&node) {
                let _ = agents.send_message(NodeAgentsMsg::Changed { node, object });
            }
        }
        true
    })
    .await;
}
