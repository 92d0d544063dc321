//! One probe of one container: when to run it and what its results mean. Pure; the ProbeActor
//! asks the runtime and feeds the answers in.
//!
//! As upstream: values ≤ 0 count as 1; a new container (first sight, restart) resets the result
//! to Unknown; a container that is not running is Failed at once; nothing runs before
//! initialDelaySeconds have passed since the container started; a result counts only after
//! successThreshold / failureThreshold identical results in a row. One difference: a daemon that
//! restarts adopts the state the NodePodProbe already records for the container (recorded after
//! it started), instead of resetting it to Unknown and flipping every pod's marks.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Probe;

use crate::api::podprobemarker::ProbeState;
use crate::daemon::runtime::{ContainerInfo, ExecOutcome};

/// Messages longer than this are cut (upstream's limit).
pub const MAX_MESSAGE: usize = 1024;

/// A state to record, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub container_id: String,
    pub state: ProbeState,
    pub message: String,
}

/// What the NodePodProbe recorded for this probe before the daemon (re)started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub state: ProbeState,
    pub last_probe_time: Timestamp,
}

/// What to do on a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Record these (possibly nothing) and wait for the next tick.
    Wait(Vec<Recorded>),
    /// Record these; the container's initial delay ends in `ready_in`, so tick again then rather
    /// than a whole period later (a new pod's first result should not wait a period).
    Delayed { records: Vec<Recorded>, ready_in: Duration },
    /// Record these, then run the command with the timeout and report the outcome.
    Exec { records: Vec<Recorded>, container_id: String, command: Vec<String>, timeout: Duration },
}

fn at_least_one(v: Option<i32>) -> i32 {
    v.unwrap_or(0).max(1)
}

/// The probe's period (at least a second).
pub fn period(spec: &Probe) -> Duration {
    Duration::from_secs(at_least_one(spec.period_seconds) as u64)
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[derive(Debug)]
pub struct ProbeWorker {
    spec: Probe,
    container_id: Option<String>,
    seed: Option<Seed>,
    /// The last raw result and how many times in a row it came.
    last: Option<ProbeState>,
    run: i32,
}

impl ProbeWorker {
    pub fn new(spec: Probe, seed: Option<Seed>) -> Self {
        ProbeWorker { spec, container_id: None, seed, last: None, run: 0 }
    }

    pub fn spec(&self) -> &Probe {
        &self.spec
    }

    /// Takes a changed spec. A changed handler makes the current result Unknown (a new probe's
    /// result is not the old one's); the threshold counters carry on.
    pub fn update_spec(&mut self, spec: Probe) -> Option<Recorded> {
        let handler_changed = spec.exec != self.spec.exec
            || spec.http_get != self.spec.http_get
            || spec.tcp_socket != self.spec.tcp_socket;
        self.spec = spec;
        match (&self.container_id, handler_changed) {
            (Some(id), true) => {
                Some(Recorded { container_id: id.clone(), state: ProbeState::Unknown, message: String::new() })
            }
            _ => None,
        }
    }

    /// A tick: the container as the runtime reports it now (None: not there).
    pub fn tick(&mut self, container: Option<&ContainerInfo>, now: Timestamp) -> Step {
        let Some(c) = container else { return Step::Wait(Vec::new()) };
        let mut records = Vec::new();
        if self.container_id.as_deref() != Some(c.id.as_str()) {
            self.container_id = Some(c.id.clone());
            // The seed speaks for this container only if it was recorded after the start.
            let adopted = self.seed.take().filter(|s| c.started_at.is_some_and(|t| s.last_probe_time >= t));
            match adopted {
                Some(seed) => {
                    self.last = Some(seed.state);
                    self.run = self.threshold(seed.state);
                }
                None => {
                    self.last = None;
                    self.run = 0;
                    records.push(Recorded {
                        container_id: c.id.clone(),
                        state: ProbeState::Unknown,
                        message: String::new(),
                    });
                }
            }
        }
        if !c.running {
            let message = cut(format!("Container({}) is Non-running", c.name));
            records.push(Recorded { container_id: c.id.clone(), state: ProbeState::Failed, message });
            return Step::Wait(records);
        }
        let delay = i64::from(at_least_one(self.spec.initial_delay_seconds));
        let started = c.started_at.unwrap_or(now);
        // Whole seconds since the start, as upstream counts them.
        if now.as_second() - started.as_second() < delay {
            let ready = Timestamp::from_second(started.as_second() + delay).unwrap_or(now);
            let ready_in = Duration::try_from(ready.duration_since(now)).unwrap_or_default();
            return Step::Delayed { records, ready_in };
        }
        let Some(command) = self.spec.exec.as_ref().and_then(|e| e.command.clone()) else {
            // Only exec probes exist at this API level (the webhook refuses the others).
            return Step::Wait(records);
        };
        let timeout = Duration::from_secs(at_least_one(self.spec.timeout_seconds) as u64);
        Step::Exec { records, container_id: c.id.clone(), command, timeout }
    }

    fn threshold(&self, state: ProbeState) -> i32 {
        match state {
            ProbeState::Failed => at_least_one(self.spec.failure_threshold),
            _ => at_least_one(self.spec.success_threshold),
        }
    }

    /// The outcome of the exec a [`Step::Exec`] asked for; a state to record once the threshold
    /// is reached.
    pub fn outcome(&mut self, container_id: &str, outcome: ExecOutcome) -> Option<Recorded> {
        if self.container_id.as_deref() != Some(container_id) {
            return None;
        }
        let (state, message) = match outcome {
            ExecOutcome::Exited { exit_code: 0, stdout, .. } => (ProbeState::Succeeded, stdout),
            ExecOutcome::Exited { stderr, .. } => (ProbeState::Failed, stderr),
            ExecOutcome::TimedOut => {
                (ProbeState::Failed, format!("command timed out after {}s", at_least_one(self.spec.timeout_seconds)))
            }
        };
        if self.last == Some(state) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(state);
            self.run = 1;
        }
        (self.run >= self.threshold(state)).then(|| Recorded {
            container_id: container_id.to_string(),
            state,
            message: cut(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    fn idle() -> Probe {
        spec(json!({"exec": {"command": ["/idle.sh"]}, "initialDelaySeconds": 10, "timeoutSeconds": 3,
                     "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}))
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn running(id: &str, started: i64) -> ContainerInfo {
        ContainerInfo { id: id.into(), name: "game-server".into(), running: true, started_at: Some(t(started)) }
    }

    fn exit(code: i32, out: &str, err: &str) -> ExecOutcome {
        ExecOutcome::Exited { exit_code: code, stdout: out.into(), stderr: err.into() }
    }

    fn states(step: &Step) -> Vec<ProbeState> {
        match step {
            Step::Wait(r) | Step::Delayed { records: r, .. } | Step::Exec { records: r, .. } => {
                r.iter().map(|r| r.state).collect()
            }
        }
    }

    #[test]
    fn waits_for_the_initial_delay_then_counts_failures_to_the_threshold() {
        let mut w = ProbeWorker::new(idle(), None);
        let c = running("c1", 0);
        assert_eq!(w.tick(None, t(1)), Step::Wait(vec![]), "no container: nothing recorded");
        let first = w.tick(Some(&c), t(5));
        assert_eq!(states(&first), [ProbeState::Unknown], "a new container starts Unknown");
        let Step::Delayed { ready_in, .. } = first else { panic!("before initialDelaySeconds nothing runs") };
        assert_eq!(ready_in, Duration::from_secs(5), "the next tick comes when the 10 s initial delay ends");
        let Step::Exec { records, command, timeout, container_id } = w.tick(Some(&c), t(10)) else { panic!() };
        assert!(records.is_empty());
        assert_eq!(
            (command, timeout, container_id.as_str()),
            (vec!["/idle.sh".to_string()], Duration::from_secs(3), "c1")
        );
        let ok = w.outcome("c1", exit(0, "idle", "")).unwrap();
        assert_eq!((ok.state, ok.message.as_str()), (ProbeState::Succeeded, "idle"));
        assert_eq!(w.outcome("c1", exit(1, "", "busy")), None, "1st failure");
        assert_eq!(w.outcome("c1", exit(1, "", "busy")), None, "2nd failure");
        let failed = w.outcome("c1", exit(1, "", "busy")).unwrap();
        assert_eq!((failed.state, failed.message.as_str()), (ProbeState::Failed, "busy"));
        assert_eq!(w.outcome("c1", ExecOutcome::TimedOut).unwrap().state, ProbeState::Failed);
        assert_eq!(w.outcome("c1", exit(0, "", "")).unwrap().state, ProbeState::Succeeded);
        assert_eq!(w.outcome("old", exit(1, "", "")), None, "results of a replaced container are dropped");
    }

    #[test]
    fn non_running_fails_at_once_and_a_restart_resets_to_unknown() {
        let mut w = ProbeWorker::new(idle(), None);
        let _ = w.tick(Some(&running("c1", 0)), t(20));
        let mut exited = running("c1", 0);
        exited.running = false;
        let step = w.tick(Some(&exited), t(30));
        let Step::Wait(r) = step else { panic!() };
        assert_eq!((r[0].state, r[0].message.as_str()), (ProbeState::Failed, "Container(game-server) is Non-running"));
        let restarted = w.tick(Some(&running("c2", 35)), t(40));
        assert_eq!(states(&restarted), [ProbeState::Unknown]);
        assert!(
            matches!(restarted, Step::Delayed { ready_in, .. } if ready_in == Duration::from_secs(5)),
            "re-probed once initialDelaySeconds passed since the new start"
        );
        assert!(matches!(w.tick(Some(&running("c2", 35)), t(45)), Step::Exec { .. }));
    }

    #[test]
    fn zero_values_count_as_one() {
        let mut w = ProbeWorker::new(spec(json!({"exec": {"command": ["x"]}})), None);
        assert_eq!(period(w.spec()), Duration::from_secs(1));
        let _ = w.tick(Some(&running("c", 0)), t(0));
        let Step::Exec { timeout, .. } = w.tick(Some(&running("c", 0)), t(1)) else { panic!() };
        assert_eq!(timeout, Duration::from_secs(1));
        assert!(w.outcome("c", exit(1, "", "")).is_some(), "failureThreshold 0 acts as 1");
    }

    #[test]
    fn a_restarted_daemon_adopts_the_recorded_state_of_the_same_container() {
        let mut w = ProbeWorker::new(idle(), Some(Seed { state: ProbeState::Failed, last_probe_time: t(50) }));
        let step = w.tick(Some(&running("c1", 0)), t(60));
        assert_eq!(states(&step), Vec::<ProbeState>::new(), "no Unknown flip");
        assert_eq!(w.outcome("c1", exit(1, "", "busy")).unwrap().state, ProbeState::Failed, "still at threshold");
        assert_eq!(w.outcome("c1", exit(0, "", "")).unwrap().state, ProbeState::Succeeded);

        // Recorded before this container started: it belonged to an earlier one.
        let mut w = ProbeWorker::new(idle(), Some(Seed { state: ProbeState::Failed, last_probe_time: t(50) }));
        assert_eq!(states(&w.tick(Some(&running("c9", 55)), t(60))), [ProbeState::Unknown]);
    }

    #[test]
    fn a_changed_handler_resets_to_unknown_but_not_the_counters() {
        let mut w = ProbeWorker::new(idle(), None);
        assert_eq!(w.update_spec(idle()), None);
        let _ = w.tick(Some(&running("c1", 0)), t(20));
        assert_eq!(w.outcome("c1", exit(1, "", "")), None);
        let mut other = idle();
        other.period_seconds = Some(5);
        assert_eq!(w.update_spec(other.clone()), None, "only the handler counts");
        other.exec = Some(serde_json::from_value(json!({"command": ["/other.sh"]})).unwrap());
        assert_eq!(w.update_spec(other).unwrap().state, ProbeState::Unknown);
        assert_eq!(w.outcome("c1", exit(1, "", "")), None, "2nd failure in a row");
        assert!(w.outcome("c1", exit(1, "", "")).is_some());
    }

    #[test]
    fn long_messages_are_cut() {
        let mut w = ProbeWorker::new(spec(json!({"exec": {"command": ["x"]}})), None);
        let _ = w.tick(Some(&running("c", 0)), t(5));
        let r = w.outcome("c", exit(0, &"é".repeat(1000), "")).unwrap();
        assert!(r.message.len() <= MAX_MESSAGE && r.message.len() >= MAX_MESSAGE - 1);
    }
}
