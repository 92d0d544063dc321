//! Writes sent recently, so a reconcile that runs before the watch brings their result back does
//! not send them again. A write is skipped only while it is identical to one that succeeded less
//! than a TTL ago; after that (or after a failure) it goes out again, so a lost watch event never
//! leaves the cluster wrong for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a write that succeeded vouches for an identical one.
pub const TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
pub struct RecentWrites(Arc<Mutex<HashMap<String, (String, Instant)>>>);

impl RecentWrites {
    /// Whether `value` was written to `key` less than [`TTL`] before `now`.
    pub fn holds(&self, key: &str, value: &str, now: Instant) -> bool {
        let Ok(m) = self.0.lock() else { return false };
        m.get(key).is_some_and(|(v, at)| v == value && now.duration_since(*at) < TTL)
    }

    /// Records a successful write of `value` to `key` at `now`, dropping expired records.
    pub fn remember(&self, key: String, value: String, now: Instant) {
        let Ok(mut m) = self.0.lock() else { return };
        if m.len() > 4096 {
            m.retain(|_, (_, at)| now.duration_since(*at) < TTL);
        }
        m.insert(key, (value, now));
    }

    /// How long until `spacing` has passed since the last successful write to `key`, whatever it
    /// wrote; None when a write may go out now. Spacing the writes to one object lets a burst of
    /// changes (pods starting one after another on a node) go out as one write.
    pub fn wait(&self, key: &str, spacing: Duration, now: Instant) -> Option<Duration> {
        let m = self.0.lock().ok()?;
        let (_, at) = m.get(key)?;
        spacing.checked_sub(now.duration_since(*at)).filter(|d| !d.is_zero())
    }

    /// Records how a write of `value` to `key` went: a success vouches for an identical write,
    /// a failure lets the next one go out.
    pub fn settle<E>(&self, key: String, value: String, outcome: &Result<(), E>) {
        match outcome {
            Ok(()) => self.remember(key, value, Instant::now()),
            Err(_) => self.forget(&key),
        }
    }

    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identical_write_is_skipped_only_for_a_while_and_writes_are_spaced() {
        let r = RecentWrites::default();
        let t0 = Instant::now();
        assert!(!r.holds("pod/ns/a", "rv1:patch", t0));
        r.remember("pod/ns/a".into(), "rv1:patch".into(), t0);
        assert!(r.holds("pod/ns/a", "rv1:patch", t0 + Duration::from_secs(1)));
        assert!(!r.holds("pod/ns/a", "rv2:patch", t0 + Duration::from_secs(1)), "another write goes out");
        assert!(!r.holds("pod/ns/a", "rv1:patch", t0 + TTL), "and the same one again after the TTL");
        assert_eq!(
            r.wait("pod/ns/a", Duration::from_secs(3), t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(r.wait("pod/ns/a", Duration::from_secs(3), t0 + Duration::from_secs(3)), None);
        assert_eq!(r.wait("pod/ns/b", Duration::from_secs(3), t0), None, "never written: no wait");
        r.settle::<()>("pod/ns/c".into(), "v".into(), &Ok(()));
        assert!(r.holds("pod/ns/c", "v", Instant::now()), "a success vouches");
        r.settle("pod/ns/c".into(), "v".into(), &Err(()));
        assert!(!r.holds("pod/ns/c", "v", Instant::now()), "a failure lets the next one go out");
        r.forget("pod/ns/a");
        assert!(!r.holds("pod/ns/a", "rv1:patch", t0 + Duration::from_secs(1)));
    }
}
