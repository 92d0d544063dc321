//! ShardCoordinator: holds this replica's fair share of shard leases.
//!
//! Every retry period it lists all our leases (one request), renews its membership lease, works out
//! who is alive and who holds what, asks [`shard_plan::plan`] what to do, and does it with
//! compare-and-swap writes. What it holds is published through [`ShardOwnership`], which fences
//! on the renew deadline by itself. A lease watch adds a round as soon as another replica releases
//! its leases, so a graceful handoff does not wait for the next tick.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::http::ReadyCondition;
use super::lease::{self, Holder, LeaseError, LeaseStore, LeaseTimings, LeaseTracker, ROLE_LABEL};
use super::metrics::ShardMetrics;
use super::ownership::{Leadership, ShardOwnership};
use super::shard::{ShardId, ShardSpace};
use super::shard_plan::{self, ShardAction, ShardPlanInput};

const ROLE_SHARD: &str = "shard";
const ROLE_MEMBER: &str = "member";
const ROLE_LEADER: &str = "leader";
/// The leader lease for global singletons; upstream's lock has the same name.
pub const LEADER_LEASE_NAME: &str = "kruise-manager";

pub fn shard_lease_name(s: ShardId) -> String {
    format!("kruise-shard-{s}")
}

pub fn member_lease_name(identity: &str) -> String {
    format!("kruise-member-{identity}")
}

fn shard_of_lease(name: &str) -> Option<ShardId> {
    name.strip_prefix("kruise-shard-")?.parse().ok().map(ShardId)
}

#[derive(Clone)]
pub struct CoordinatorArgs {
    pub store: LeaseStore,
    pub identity: String,
    pub space: ShardSpace,
    pub timings: LeaseTimings,
    pub ownership: ShardOwnership,
    pub leadership: Leadership,
    pub metrics: ShardMetrics,
    /// Set once the first round has completed.
    /// Met after the first round that could acquire shards.
    pub ready: ReadyCondition,
}

pub enum CoordinatorMsg {
    Tick,
    /// A replica left gracefully (its leases were released): rebalance now rather than at the
    /// next tick, so its shards move within a fraction of the retry period.
    Departure,
    /// The round a burst of departures asked for.
    DepartureRound,
    /// Give up every lease at once (graceful shutdown), then stop.
    Release(RpcReplyPort<()>),
}

pub struct CoordinatorState {
    args: CoordinatorArgs,
    tracker: LeaseTracker,
    preferred_start: ShardId,
    /// Rounds completed. The first only announces membership: replicas that start together then
    /// see each other before taking shards, instead of one grabbing everything and giving most back.
    rounds: u64,
    /// A departure round is scheduled; later departures in the same burst join it.
    departure_round_pending: bool,
    /// The lease watch that reports departures.
    departures: tokio::task::JoinHandle<()>,
}

/// How long a departure round waits for the rest of the burst: a leaving replica releases all its
/// leases at once, and one round should see them all.
const DEPARTURE_GATHER: Duration = Duration::from_millis(50);

pub struct ShardCoordinator;

impl Actor for ShardCoordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoordinatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let preferred_start = shard_plan::preferred_start(args.space, &args.identity);
        myself.send_message(CoordinatorMsg::Tick)?;
        let me = myself.clone();
        let departures = args.store.watch_departures(move || {
            let _ = me.send_message(CoordinatorMsg::Departure);
        });
        Ok(CoordinatorState {
            args,
            tracker: LeaseTracker::default(),
            preferred_start,
            rounds: 0,
            departure_round_pending: false,
            departures,
        })
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.departures.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::Tick => {
                state.run_round().await;
                // Schedule the next round only now, so slow rounds never pile up ticks.
                myself.send_after(state.args.timings.retry_period, || CoordinatorMsg::Tick);
            }
            // Before the first round, membership is not announced yet: the ticks come first.
            CoordinatorMsg::Departure if state.departure_round_pending || state.rounds == 0 => {}
            CoordinatorMsg::Departure => {
                state.departure_round_pending = true;
                myself.send_after(DEPARTURE_GATHER, || CoordinatorMsg::DepartureRound);
            }
            CoordinatorMsg::DepartureRound => {
                state.departure_round_pending = false;
                state.run_round().await;
            }
            CoordinatorMsg::Release(reply) => {
                state.release_all().await;
                let _ = reply.send(());
                myself.stop(Some("released".into()));
            }
        }
        Ok(())
    }
}

impl CoordinatorState {
    async fn run_round(&mut self) {
        // Shards that lapsed while no round ran are reported lost before anything renews them.
        self.expire_lapsed();
        // A round must not outlive the renew deadline: past it our shards are fenced anyway.
        match tokio::time::timeout(self.args.timings.renew_deadline, self.round()).await {
            Ok(Ok(())) => {
                self.rounds += 1;
                if self.rounds > 1 {
                    self.args.ready.set();
                }
            }
            Ok(Err(e)) => warn!(error = %e, "shard lease round failed; retrying"),
            Err(_) => warn!("shard lease round timed out; retrying"),
        }
        self.expire_lapsed();
    }

    async fn round(&mut self) -> Result<(), LeaseError> {
        let started = Instant::now();
        let leases = self.args.store.list().await?;
        let names: Vec<&str> = leases.iter().filter_map(|l| l.metadata.name.as_deref()).collect();
        self.tracker.retain(&names);

        let me = self.args.identity.clone();
        let mut holders: BTreeMap<ShardId, (Holder, &Lease)> = BTreeMap::new();
        let mut live = 1; // ourselves
        let mut own_member: Option<&Lease> = None;
        let mut leader: Option<(Holder, &Lease)> = None;
        for l in &leases {
            let name = l.metadata.name.as_deref().unwrap_or_default();
            let age = self.tracker.observe(l, started);
            let holder = LeaseTracker::holder(l, &me, age);
            match l.metadata.labels.as_ref().and_then(|ls| ls.get(ROLE_LABEL)).map(String::as_str) {
                Some(ROLE_SHARD) => {
                    if let Some(s) = shard_of_lease(name).filter(|s| s.0 < self.args.space.count()) {
                        holders.insert(s, (holder, l));
                    }
                }
                Some(ROLE_MEMBER) if name == member_lease_name(&me) => own_member = Some(l),
                Some(ROLE_LEADER) if name == LEADER_LEASE_NAME => leader = Some((holder, l)),
                Some(ROLE_MEMBER) => match holder {
                    Holder::Other(_) => live += 1,
                    // A member gone for several lease periods: clean up after it.
                    Holder::Free if age > self.args.timings.lease_duration * 4 => {
                        if let Err(e) = self.args.store.delete(l).await {
                            debug!(lease = name, error = %e, "could not delete a stale member lease");
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        self.renew_membership(own_member).await;
        self.args.metrics.live_replicas.set(live);
        if self.rounds == 0 {
            return Ok(());
        }

        let view: BTreeMap<ShardId, Holder> = holders.iter().map(|(s, (h, _))| (*s, h.clone())).collect();
        let input = ShardPlanInput {
            space: self.args.space,
            live_replicas: usize::try_from(live).unwrap_or(1),
            holders: &view,
            preferred_start: self.preferred_start,
        };
        let duration = self.args.timings.lease_duration;
        let renew_deadline = self.args.timings.renew_deadline;
        // Stop acting on released shards before anyone else can take them.
        let actions = shard_plan::plan(&input);
        for action in &actions {
            if let ShardAction::Release(s) = action {
                self.give_up(*s, "released");
            }
        }
        // The writes go out together: on a loaded API server, one at a time could outlast the
        // renew deadline. Each shard is held until its own write's start plus the renew deadline:
        // the server saw the renewal no earlier, so nobody can take the lease before then.
        let this = &*self;
        let writes = actions.iter().map(|action| {
            let me = &me;
            let holders = &holders;
            async move {
                let sent = Instant::now();
                let result = match *action {
                    ShardAction::Renew(s) => {
                        this.write(s, holders.get(&s).map(|(_, l)| lease::renewed(l, duration))).await
                    }
                    ShardAction::Acquire(s) => {
                        this.write(s, holders.get(&s).map(|(_, l)| lease::acquired(l, me, duration))).await
                    }
                    ShardAction::Create(s) => {
                        let l = lease::new_lease(&shard_lease_name(s), ROLE_SHARD, me, duration);
                        this.args.store.create(&l).await.map(|_| ())
                    }
                    ShardAction::Release(s) => this.write(s, holders.get(&s).map(|(_, l)| lease::released(l))).await,
                };
                (*action, sent, result)
            }
        });
        for (action, sent, result) in futures::future::join_all(writes).await {
            match (action, result) {
                (ShardAction::Renew(s) | ShardAction::Acquire(s) | ShardAction::Create(s), Ok(())) => {
                    if !self.args.ownership.holds(s) {
                        info!(shard = s.0, "acquired shard");
                        self.args.metrics.shard_handoffs.with_label_values(&["acquired"]).inc();
                        self.args.metrics.leader_status.with_label_values(&[&shard_lease_name(s)]).set(1);
                    }
                    self.args.ownership.grant(s, sent + renew_deadline);
                }
                (ShardAction::Release(_), Ok(())) => {}
                (_, Err(LeaseError::Conflict(name))) => debug!(lease = name, "lost a lease race"),
                (a, Err(e)) => {
                    self.args.metrics.lease_errors.with_label_values(&[action_name(a)]).inc();
                    warn!(error = %e, "lease write failed");
                }
            }
        }
        self.args.metrics.shards_held.set(self.args.ownership.held().len() as i64);
        self.lead(leader).await;
        Ok(())
    }

    /// Takes or keeps the leader lease when it is free or ours.
    async fn lead(&self, leader: Option<(Holder, &Lease)>) {
        let me = &self.args.identity;
        let d = self.args.timings.lease_duration;
        let sent = Instant::now();
        let result = match leader {
            None => self.args.store.create(&lease::new_lease(LEADER_LEASE_NAME, ROLE_LEADER, me, d)).await,
            Some((Holder::Me, l)) => self.args.store.update(&lease::renewed(l, d)).await,
            Some((Holder::Free | Holder::Missing, l)) => self.args.store.update(&lease::acquired(l, me, d)).await,
            Some((Holder::Other(_), _)) => return,
        };
        match result {
            Ok(_) => {
                if !self.args.leadership.is_leader() {
                    info!("became leader");
                }
                self.args.leadership.grant(sent + self.args.timings.renew_deadline);
                self.set_leader_metrics(true);
            }
            Err(LeaseError::Conflict(_)) => {}
            Err(e) => {
                self.args.metrics.lease_errors.with_label_values(&["leader"]).inc();
                warn!(error = %e, "leader lease write failed");
            }
        }
    }

    fn set_leader_metrics(&self, leading: bool) {
        let v = i64::from(leading);
        self.args.metrics.is_leader.set(v);
        self.args.metrics.leader_status.with_label_values(&[LEADER_LEASE_NAME]).set(v);
    }

    async fn write(&self, s: ShardId, lease: Option<Lease>) -> Result<(), LeaseError> {
        match lease {
            Some(l) => self.args.store.update(&l).await.map(|_| ()),
            None => Err(LeaseError::Conflict(shard_lease_name(s))),
        }
    }

    async fn renew_membership(&self, current: Option<&Lease>) {
        let d = self.args.timings.lease_duration;
        let me = &self.args.identity;
        let result = match current {
            Some(l) if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me) => {
                self.args.store.update(&lease::renewed(l, d)).await
            }
            Some(l) => self.args.store.update(&lease::acquired(l, me, d)).await,
            None => self.args.store.create(&lease::new_lease(&member_lease_name(me), ROLE_MEMBER, me, d)).await,
        };
        if let Err(e) = result {
            self.args.metrics.lease_errors.with_label_values(&["membership"]).inc();
            warn!(error = %e, "could not renew membership lease");
        }
    }

    fn give_up(&self, s: ShardId, direction: &str) {
        if self.args.ownership.revoke(s) {
            info!(shard = s.0, direction, "gave up shard");
            self.args.metrics.shard_handoffs.with_label_values(&[direction]).inc();
            self.args.metrics.leader_status.with_label_values(&[&shard_lease_name(s)]).set(0);
        }
    }

    /// Shards (and leadership) whose renew deadline passed without a renewal are lost.
    fn expire_lapsed(&self) {
        if self.args.leadership.take_lapsed(Instant::now()) {
            warn!("renew deadline passed; leadership lost");
            self.set_leader_metrics(false);
        }
        for s in self.args.ownership.take_lapsed(Instant::now()) {
            warn!(shard = s.0, "renew deadline passed; shard lost");
            self.args.metrics.shard_handoffs.with_label_values(&["lost"]).inc();
            self.args.metrics.leader_status.with_label_values(&[&shard_lease_name(s)]).set(0);
        }
        self.args.metrics.shards_held.set(self.args.ownership.held().len() as i64);
    }

    /// Graceful shutdown: stop acting on every shard, then mark its lease free so another
    /// replica takes it within one retry period instead of a lease duration.
    async fn release_all(&mut self) {
        let held = self.args.ownership.held();
        for s in &held {
            self.give_up(*s, "released");
        }
        if self.args.leadership.revoke() {
            self.set_leader_metrics(false);
        }
        let leases = match self.args.store.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "could not list leases to release them; they will expire");
                return;
            }
        };
        let me = self.args.identity.as_str();
        let store = &self.args.store;
        // All at once: the others take over as soon as the leases are free, and one slow
        // request must not hold up the rest.
        let releases = leases
            .iter()
            .filter(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me))
            .map(|l| async move {
                let name = l.metadata.name.as_deref().unwrap_or_default();
                let result = if name == member_lease_name(me) {
                    store.delete(l).await
                } else {
                    store.update(&lease::released(l)).await.map(|_| ())
                };
                if let Err(e) = result {
                    warn!(lease = name, error = %e, "could not release lease; it will expire");
                }
            });
        futures::future::join_all(releases).await;
        self.args.metrics.shards_held.set(0);
        info!(shards = held.len(), "released all leases");
    }
}

fn action_name(a: ShardAction) -> &'static str {
    match a {
        ShardAction::Renew(_) => "renew",
        ShardAction::Acquire(_) => "acquire",
        ShardAction::Create(_) => "create",
        ShardAction::Release(_) => "release",
    }
}

/// How long a graceful release may take before the process exits anyway.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
