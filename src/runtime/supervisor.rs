//! ManagerSupervisor: the root of the manager's actor tree. It restarts a failed child (the
//! ShardCoordinator, the ApiWriter) with exponential back-off, each child its own (ractor's
//! default would be to stop itself), and on shutdown lets the ShardCoordinator release its leases
//! before the process exits.

use std::collections::HashMap;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::api_writer::{ApiWriter, WriterArgs, WriterMsg};
use super::shard_coordinator::{CoordinatorArgs, CoordinatorMsg, RELEASE_TIMEOUT, ShardCoordinator};
use super::watch_hub::{HubArgs, WATCH_HUB, WatchHub};
use super::work_queue::Backoff;

/// The name the ApiWriter is registered under: `ractor::registry::where_is(API_WRITER)`.
pub const API_WRITER: &str = "api-writer";

const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential restart back-off that forgives a child which ran for a while before it failed.
#[derive(Debug, Default)]
struct RestartBackoff {
    /// Failed starts since the child last ran for a while.
    failures: u32,
}

impl RestartBackoff {
    const POLICY: Backoff = Backoff { base: RESTART_BACKOFF_MIN, max: RESTART_BACKOFF_MAX };

    /// The delay before the next restart, given how long the failed child had run.
    fn delay(&mut self, ran_for: Option<Duration>) -> Duration {
        if ran_for.is_some_and(|d| d > RESTART_BACKOFF_MAX) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        Self::POLICY.delay(self.failures)
    }
}

/// The children the supervisor keeps alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Coordinator,
    Writer,
    /// Only when there are controllers to feed.
    Hub,
}

pub enum SupervisorMsg {
    /// (Re)start a child (sent to ourselves after a back-off).
    Start(Child),
    /// Release every lease, stop the children, then stop.
    Shutdown(RpcReplyPort<()>),
}

pub struct ManagerArgs {
    pub coordinator: CoordinatorArgs,
    pub writer: WriterArgs,
    pub hub: Option<HubArgs>,
}

struct Running {
    cell: ActorCell,
    started_at: Instant,
}

pub struct SupervisorState {
    args: ManagerArgs,
    running: HashMap<Child, Running>,
    by_id: HashMap<ActorId, Child>,
    backoff: HashMap<Child, RestartBackoff>,
    shutting_down: bool,
}

pub struct ManagerSupervisor;

impl SupervisorState {
    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child) {
        let spawned = match child {
            Child::Coordinator => {
                Actor::spawn_linked(None, ShardCoordinator, self.args.coordinator.clone(), myself.get_cell())
                    .await
                    .map(|(a, _)| a.get_cell())
            }
            Child::Writer => {
                Actor::spawn_linked(Some(API_WRITER.into()), ApiWriter, self.args.writer.clone(), myself.get_cell())
                    .await
                    .map(|(a, _)| a.get_cell())
            }
            Child::Hub => match self.args.hub.clone() {
                Some(args) => Actor::spawn_linked(Some(WATCH_HUB.into()), WatchHub, args, myself.get_cell())
                    .await
                    .map(|(a, _)| a.get_cell()),
                None => return,
            },
        };
        match spawned {
            Ok(cell) => {
                self.by_id.insert(cell.get_id(), child);
                self.running.insert(child, Running { cell, started_at: Instant::now() });
            }
            Err(e) => {
                error!(?child, error = %e, "could not start child");
                self.restart_later(myself, child, None);
            }
        }
    }

    fn restart_later(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child, ran_for: Option<Duration>) {
        let delay = self.backoff.entry(child).or_default().delay(ran_for);
        myself.send_after(delay, move || SupervisorMsg::Start(child));
    }

    /// The child `who` was, forgotten as running.
    fn forget(&mut self, who: &ActorCell) -> Option<(Child, Duration)> {
        let child = self.by_id.remove(&who.get_id())?;
        let ran_for = self.running.remove(&child).map(|r| r.started_at.elapsed()).unwrap_or_default();
        Some((child, ran_for))
    }
}

impl Actor for ManagerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ManagerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            running: HashMap::new(),
            by_id: HashMap::new(),
            backoff: HashMap::new(),
            shutting_down: false,
        };
        state.start(&myself, Child::Writer).await;
        state.start(&myself, Child::Coordinator).await;
        state.start(&myself, Child::Hub).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(child) if !state.shutting_down && !state.running.contains_key(&child) => {
                state.start(&myself, child).await
            }
            SupervisorMsg::Start(_) => {}
            SupervisorMsg::Shutdown(reply) => {
                state.shutting_down = true;
                if let Some(h) = state.running.remove(&Child::Hub) {
                    // Stop reconciling first, then give the shards away.
                    h.cell.stop(Some("shutdown".into()));
                }
                if let Some(c) = state.running.remove(&Child::Coordinator) {
                    let coordinator: ActorRef<CoordinatorMsg> = c.cell.into();
                    let released =
                        ractor::call_t!(coordinator, CoordinatorMsg::Release, RELEASE_TIMEOUT.as_millis() as u64);
                    if let Err(e) = released {
                        warn!(error = %e, "the shard coordinator did not release its leases in time");
                        coordinator.stop(None);
                    }
                }
                if let Some(w) = state.running.remove(&Child::Writer) {
                    let writer: ActorRef<WriterMsg> = w.cell.into();
                    writer.stop(Some("shutdown".into()));
                }
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(who, err) => {
                if let Some((child, ran_for)) = state.forget(&who) {
                    error!(?child, error = %err, "child failed; restarting after back-off");
                    if !state.shutting_down {
                        state.restart_later(&myself, child, Some(ran_for));
                    }
                }
            }
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                if let Some((child, ran_for)) = state.forget(&who)
                    && !state.shutting_down
                {
                    warn!(?child, ?reason, "child stopped unexpectedly; restarting after back-off");
                    state.restart_later(&myself, child, Some(ran_for));
                }
            }
            SupervisionEvent::ActorStarted(who) => {
                info!(actor = %who.get_id(), "child started");
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_back_off_doubles_to_a_cap_and_forgives_a_long_run() {
        let mut b = RestartBackoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.delay(Some(Duration::from_millis(10))).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(b.delay(Some(Duration::from_secs(600))), RESTART_BACKOFF_MIN, "a child that ran 10 min starts over");
        assert_eq!(b.delay(None), Duration::from_secs(1), "a failed start keeps backing off");
    }
}
