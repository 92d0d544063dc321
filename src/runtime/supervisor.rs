//! ManagerSupervisor: the root of the manager's actor tree. It restarts a failed child with
//! exponential back-off (ractor's default would be to stop itself) and, on shutdown, lets the
//! ShardCoordinator release its leases before the process exits.

use std::time::Duration;

use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use super::shard_coordinator::{CoordinatorArgs, CoordinatorMsg, RELEASE_TIMEOUT, ShardCoordinator};

const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential restart back-off that forgives a child which ran for a while before it failed.
#[derive(Debug)]
struct RestartBackoff {
    next: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        Self { next: RESTART_BACKOFF_MIN }
    }
}

impl RestartBackoff {
    /// The delay before the next restart, given how long the failed child had run.
    fn delay(&mut self, ran_for: Option<Duration>) -> Duration {
        if ran_for.is_some_and(|d| d > RESTART_BACKOFF_MAX) {
            self.next = RESTART_BACKOFF_MIN;
        }
        let d = self.next;
        self.next = (self.next * 2).min(RESTART_BACKOFF_MAX);
        d
    }
}

pub enum SupervisorMsg {
    /// Restart the coordinator (sent to ourselves after a back-off).
    StartCoordinator,
    /// Release every lease, stop the children, then stop.
    Shutdown(RpcReplyPort<()>),
}

pub struct SupervisorState {
    coordinator_args: CoordinatorArgs,
    coordinator: Option<ActorRef<CoordinatorMsg>>,
    started_at: Option<Instant>,
    backoff: RestartBackoff,
    shutting_down: bool,
}

pub struct ManagerSupervisor;

impl ManagerSupervisor {
    async fn start_coordinator(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        match Actor::spawn_linked(None, ShardCoordinator, state.coordinator_args.clone(), myself.get_cell()).await {
            Ok((actor, _)) => {
                state.coordinator = Some(actor);
                state.started_at = Some(Instant::now());
            }
            Err(e) => {
                error!(error = %e, "could not start the shard coordinator");
                Self::restart_later(myself, state);
            }
        }
    }

    fn restart_later(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        let delay = state.backoff.delay(state.started_at.take().map(|t| t.elapsed()));
        myself.send_after(delay, || SupervisorMsg::StartCoordinator);
    }
}

impl Actor for ManagerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoordinatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            coordinator_args: args,
            coordinator: None,
            started_at: None,
            backoff: RestartBackoff::default(),
            shutting_down: false,
        };
        Self::start_coordinator(&myself, &mut state).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartCoordinator if !state.shutting_down => Self::start_coordinator(&myself, state).await,
            SupervisorMsg::StartCoordinator => {}
            SupervisorMsg::Shutdown(reply) => {
                state.shutting_down = true;
                if let Some(c) = state.coordinator.take() {
                    let released = ractor::call_t!(c, CoordinatorMsg::Release, RELEASE_TIMEOUT.as_millis() as u64);
                    if let Err(e) = released {
                        warn!(error = %e, "the shard coordinator did not release its leases in time");
                        c.stop(None);
                    }
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
                error!(actor = %who.get_id(), error = %err, "child failed; restarting after back-off");
                state.coordinator = None;
                Self::restart_later(&myself, state);
            }
            SupervisionEvent::ActorTerminated(who, _, reason) if !state.shutting_down => {
                warn!(actor = %who.get_id(), ?reason, "child stopped unexpectedly; restarting after back-off");
                state.coordinator = None;
                Self::restart_later(&myself, state);
            }
            SupervisionEvent::ActorStarted(_) => {
                info!("shard coordinator started");
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
