//! Which shards this replica may act on right now: the fencing every writer checks.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::time::Instant;

use super::shard::ShardId;

/// Shards held, each valid until its renew deadline. A shard whose deadline has passed is not
/// held, whether or not the coordinator has noticed yet, so a stalled renewal can never leave an
/// actor writing past the point where another replica may take the lease.
#[derive(Clone, Default)]
pub struct ShardOwnership {
    inner: Arc<RwLock<BTreeMap<ShardId, Held>>>,
}

#[derive(Clone, Copy)]
struct Held {
    until: Instant,
    /// Which acquisition this is: state kept for a shard (e.g. a rollout's accounting) belongs to
    /// one acquisition and is rebuilt from the API server after the shard was lost and regained.
    epoch: u64,
}

/// Acquisitions, numbered across all shards.
static NEXT_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ShardOwnership {
    pub fn holds(&self, shard: ShardId) -> bool {
        self.epoch(shard).is_some()
    }

    /// The acquisition `shard` is held under, if it is held now.
    pub fn epoch(&self, shard: ShardId) -> Option<u64> {
        self.read().get(&shard).filter(|h| h.until > Instant::now()).map(|h| h.epoch)
    }

    /// Shards held now, in order.
    pub fn held(&self) -> Vec<ShardId> {
        let now = Instant::now();
        self.read().iter().filter(|(_, h)| h.until > now).map(|(s, _)| *s).collect()
    }

    /// Records `shard` as held until `until` (the coordinator does this on each renewal). A
    /// renewal keeps the acquisition's epoch; a shard not held (or lapsed) gets a new one.
    pub fn grant(&self, shard: ShardId, until: Instant) {
        let now = Instant::now();
        let mut map = self.write();
        let epoch = match map.get(&shard) {
            Some(h) if h.until > now => h.epoch,
            _ => NEXT_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        map.insert(shard, Held { until, epoch });
    }

    /// Removes `shard`; true if it was recorded (held or lapsed).
    pub fn revoke(&self, shard: ShardId) -> bool {
        self.write().remove(&shard).is_some()
    }

    /// Removes and returns shards whose deadline has passed.
    pub(crate) fn take_lapsed(&self, now: Instant) -> Vec<ShardId> {
        let mut map = self.write();
        let lapsed: Vec<ShardId> = map.iter().filter(|(_, h)| h.until <= now).map(|(s, _)| *s).collect();
        for s in &lapsed {
            map.remove(s);
        }
        lapsed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ShardId, Held>> {
        // The map stays consistent even if a holder of the lock panicked.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ShardId, Held>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether this replica is the manager's leader (for global singletons), fenced like a shard: it
/// stops being leader at its renew deadline whether or not anyone has noticed yet.
#[derive(Clone, Default)]
pub struct Leadership {
    until: Arc<RwLock<Option<Instant>>>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.until.read().unwrap_or_else(|e| e.into_inner()).is_some_and(|u| u > Instant::now())
    }

    pub(crate) fn grant(&self, until: Instant) {
        *self.until.write().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    /// Ends leadership; true if it was recorded (held or lapsed).
    pub(crate) fn revoke(&self) -> bool {
        self.until.write().unwrap_or_else(|e| e.into_inner()).take().is_some()
    }

    /// Ends a leadership whose deadline has passed; true if it did.
    pub(crate) fn take_lapsed(&self, now: Instant) -> bool {
        let mut until = self.until.write().unwrap_or_else(|e| e.into_inner());
        if until.is_some_and(|u| u <= now) {
            *until = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_shard_stops_being_held_at_its_deadline() {
        let o = ShardOwnership::default();
        o.grant(ShardId(1), Instant::now() + Duration::from_secs(10));
        o.grant(ShardId(2), Instant::now() + Duration::from_secs(20));
        assert!(o.holds(ShardId(1)));
        let first = o.epoch(ShardId(1));
        o.grant(ShardId(1), Instant::now() + Duration::from_secs(10));
        assert_eq!(o.epoch(ShardId(1)), first, "a renewal is the same acquisition");
        assert_ne!(o.epoch(ShardId(2)), first);
        assert_eq!(o.held(), vec![ShardId(1), ShardId(2)]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!o.holds(ShardId(1)), "fenced at the deadline even before anyone cleans up");
        assert_eq!(o.held(), vec![ShardId(2)]);
        assert_eq!(o.take_lapsed(Instant::now()), vec![ShardId(1)]);
        o.grant(ShardId(1), Instant::now() + Duration::from_secs(10));
        assert!(o.epoch(ShardId(1)).is_some_and(|e| Some(e) != first), "regained after a lapse: a new acquisition");
        assert!(o.revoke(ShardId(1)));
        assert!(o.revoke(ShardId(2)));
        assert!(o.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_its_deadline() {
        let l = Leadership::default();
        assert!(!l.is_leader());
        l.grant(Instant::now() + Duration::from_secs(10));
        assert!(l.is_leader());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!l.is_leader());
        assert!(l.take_lapsed(Instant::now()));
        assert!(!l.take_lapsed(Instant::now()), "only once");
    }
}
