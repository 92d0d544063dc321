//! Leases as compare-and-swap locks.
//!
//! Every change is an update carrying the resourceVersion that was read, so of two replicas racing
//! for the same free lease exactly one wins (the other gets 409 Conflict), and a replica that lost a
//! lease can never renew it by accident. Expiry is judged by the local clock from the moment a
//! lease's record was last seen to change, as client-go does, so clock skew between replicas
//! cannot make a live holder look expired.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::{Api, Client};
use tokio::time::Instant;

use super::watch_changes::{Change, follow};

/// Label every lease of ours carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kruise-rs";
/// `shard` or `member`.
pub const ROLE_LABEL: &str = "kruise.io/lease-role";

/// Lease timings, as client-go's leader election: a holder renews every `retry_period`; it stops
/// acting on a lease once `renew_deadline` has passed since its last successful renewal, which is
/// before anyone else may take the lease (`lease_duration` without a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "lease timings must satisfy retry period ({retry:?}) < renew deadline ({renew:?}) < lease duration ({lease:?})"
)]
pub struct BadTimings {
    retry: Duration,
    renew: Duration,
    lease: Duration,
}

impl LeaseTimings {
    pub fn validate(self) -> Result<Self, BadTimings> {
        let ok = !self.retry_period.is_zero()
            && self.retry_period < self.renew_deadline
            && self.renew_deadline < self.lease_duration
            && self.lease_duration.as_secs() >= 1;
        if ok {
            Ok(self)
        } else {
            Err(BadTimings { retry: self.retry_period, renew: self.renew_deadline, lease: self.lease_duration })
        }
    }
}

/// Who holds a lease, as far as this replica can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No lease object yet.
    Missing,
    /// Released, or its holder stopped renewing for longer than its duration.
    Free,
    Me,
    Other(String),
}

/// Remembers when each lease's record (its resourceVersion) last changed, by the local clock.
#[derive(Debug, Default)]
pub struct LeaseTracker {
    seen: HashMap<String, (String, Instant)>,
}

impl LeaseTracker {
    /// Records `lease` as observed at `now`; returns how long its record has gone unchanged.
    pub fn observe(&mut self, lease: &Lease, now: Instant) -> Duration {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let entry = self.seen.entry(name).or_insert_with(|| (rv.clone(), now));
        if entry.0 != rv {
            *entry = (rv, now);
        }
        now.saturating_duration_since(entry.1)
    }

    /// Forgets leases that no longer exist.
    pub fn retain(&mut self, names: &[&str]) {
        self.seen.retain(|n, _| names.contains(&n.as_str()));
    }

    /// Who holds `lease`, from `me`'s point of view, given how long its record has been unchanged.
    pub fn holder(lease: &Lease, me: &str, unchanged_for: Duration) -> Holder {
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or("");
        // A malformed duration counts as the shortest possible, so the lease can be reclaimed.
        let duration = spec.and_then(|s| s.lease_duration_seconds).and_then(|d| u64::try_from(d).ok()).unwrap_or(1);
        if is_free(lease) {
            Holder::Free
        } else if holder == me {
            Holder::Me
        } else if unchanged_for > Duration::from_secs(duration) {
            Holder::Free
        } else {
            Holder::Other(holder.to_string())
        }
    }
}

/// No one holds `lease`: it was released (or never taken).
fn is_free(lease: &Lease) -> bool {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_none_or(str::is_empty)
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// A new lease held by `me`.
pub fn new_lease(name: &str, role: &str, me: &str, duration: Duration) -> Lease {
    let now = now_micro();
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (ROLE_LABEL.to_string(), role.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(lease_seconds(duration)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

/// `lease` taken over by `me` (keeps the resourceVersion read, for the compare-and-swap).
pub fn acquired(lease: &Lease, me: &str, duration: Duration) -> Lease {
    let mut l = lease.clone();
    let spec = l.spec.get_or_insert_with(Default::default);
    let now = now_micro();
    if spec.holder_identity.as_deref() != Some(me) {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(lease_seconds(duration));
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    l
}

/// `lease` renewed by its holder.
pub fn renewed(lease: &Lease, duration: Duration) -> Lease {
    let mut l = lease.clone();
    let spec = l.spec.get_or_insert_with(Default::default);
    spec.lease_duration_seconds = Some(lease_seconds(duration));
    spec.renew_time = Some(now_micro());
    l
}

/// `lease` given up, so another replica can take it at once instead of waiting for expiry.
pub fn released(lease: &Lease) -> Lease {
    let mut l = lease.clone();
    let spec = l.spec.get_or_insert_with(Default::default);
    spec.holder_identity = None;
    spec.renew_time = Some(now_micro());
    l
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else changed the lease since we read it: not ours to take or renew.
    #[error("lease {0} changed concurrently")]
    Conflict(String),
    #[error("lease {name}: {source}")]
    Api { name: String, source: kube::Error },
}

/// Lease reads and compare-and-swap writes in one namespace.
#[derive(Clone)]
pub struct LeaseStore {
    api: Api<Lease>,
}

impl LeaseStore {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self { api: Api::namespaced(client, namespace) }
    }

    /// Watches our leases and calls `departed` whenever one is deleted or seen released (its
    /// holder cleared): a replica leaving gracefully, whose shards are free to take right now.
    /// Renewals are ignored. The caller aborts the task to stop it.
    pub fn watch_departures(&self, departed: impl Fn() + Send + 'static) -> tokio::task::JoinHandle<()> {
        use kube::runtime::watcher;
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let name = |l: &Lease| l.metadata.name.clone().unwrap_or_default();
        tokio::spawn(follow(watcher(self.api.clone(), config), "lease", name, move |changes, _| {
            if changes.iter().any(|c| matches!(c, Change::Gone(_)) || matches!(c, Change::Put(l) if is_free(l))) {
                departed();
            }
            true
        }))
    }

    /// All of our leases (one request).
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        self.api.list(&lp).await.map(|l| l.items).map_err(|source| LeaseError::Api { name: "*".into(), source })
    }

    pub async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.api.create(&PostParams::default(), lease).await.map_err(|e| classify(name, e))
    }

    /// Replaces the lease if its resourceVersion is still the one in `lease`.
    pub async fn update(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.api.replace(&name, &PostParams::default(), lease).await.map_err(|e| classify(name, e))
    }

    /// Deletes the lease if its resourceVersion is still the one in `lease`.
    pub async fn delete(&self, lease: &Lease) -> Result<(), LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: lease.metadata.resource_version.clone(),
                uid: lease.metadata.uid.clone(),
            }),
            ..Default::default()
        };
        match self.api.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(name, e)),
        }
    }
}

fn classify(name: String, e: kube::Error) -> LeaseError {
    match e {
        // 409: changed since read, or created meanwhile by someone else.
        kube::Error::Api(s) if s.code == 409 => LeaseError::Conflict(name),
        source => LeaseError::Api { name, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, rv: &str, holder: Option<&str>, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta { name: Some(name.into()), resource_version: Some(rv.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_expires_only_after_its_record_stays_unchanged_for_its_duration() {
        let mut t = LeaseTracker::default();
        let t0 = Instant::now();
        let l = lease("kruise-shard-0", "1", Some("b"), 15);
        assert_eq!(t.observe(&l, t0), Duration::ZERO);
        let age = t.observe(&l, t0 + Duration::from_secs(10));
        assert_eq!(LeaseTracker::holder(&l, "a", age), Holder::Other("b".into()));
        // Renewed by b: a new resourceVersion restarts the clock, whatever b's renewTime says.
        let l2 = lease("kruise-shard-0", "2", Some("b"), 15);
        let age = t.observe(&l2, t0 + Duration::from_secs(16));
        assert_eq!(LeaseTracker::holder(&l2, "a", age), Holder::Other("b".into()));
        let age = t.observe(&l2, t0 + Duration::from_secs(32));
        assert_eq!(LeaseTracker::holder(&l2, "a", age), Holder::Free);
    }

    #[test]
    fn released_and_own_leases_are_recognised() {
        let released_lease = released(&lease("x", "1", Some("a"), 15));
        assert_eq!(LeaseTracker::holder(&released_lease, "b", Duration::ZERO), Holder::Free);
        assert_eq!(LeaseTracker::holder(&lease("x", "1", Some("a"), 15), "a", Duration::from_secs(99)), Holder::Me);
    }

    #[test]
    fn taking_over_counts_a_transition_and_keeps_the_resource_version() {
        let mut l = lease("x", "7", Some("a"), 15);
        l.spec.as_mut().unwrap().lease_transitions = Some(3);
        let taken = acquired(&l, "b", Duration::from_secs(20));
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.lease_duration_seconds, Some(20));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        let again = acquired(&taken, "b", Duration::from_secs(20));
        assert_eq!(again.spec.unwrap().lease_transitions, Some(4), "re-acquiring one's own lease is no transition");
    }

    #[test]
    fn timings_must_nest() {
        assert!(LeaseTimings::default().validate().is_ok());
        let bad = LeaseTimings { renew_deadline: Duration::from_secs(15), ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = LeaseTimings { retry_period: Duration::ZERO, ..Default::default() };
        assert!(bad.validate().is_err());
    }
}
