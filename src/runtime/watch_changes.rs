//! A watch turned into changes to a local copy. kube's watcher re-lists after a broken watch
//! (`Init`, `InitApply`…, `InitDone`) without saying which objects went away in the gap; an object
//! the re-list no longer shows must be dropped as if deleted. [`WatchChanges`] does that
//! bookkeeping once for every hand-kept copy (the probe index, the daemon's agents, the simulated
//! runtime's containers).

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use std::time::Duration;
use tracing::warn;

/// One change to the local copy.
#[derive(Debug, PartialEq)]
pub enum Change<K> {
    /// The object is there, new or changed.
    Put(K),
    /// The object with this key is gone.
    Gone(String),
}

/// The keys seen so far and, during a re-list, the keys it has shown.
#[derive(Debug, Default)]
pub struct WatchChanges {
    known: BTreeSet<String>,
    relisted: BTreeSet<String>,
}

impl WatchChanges {
    /// The changes `event` makes, naming objects by `key`. A finished re-list yields a `Gone` for
    /// every known key it did not show.
    pub fn on<K>(&mut self, event: Event<K>, key: impl Fn(&K) -> String) -> Vec<Change<K>> {
        match event {
            Event::Apply(o) => {
                self.known.insert(key(&o));
                vec![Change::Put(o)]
            }
            Event::Delete(o) => {
                let k = key(&o);
                self.known.remove(&k);
                vec![Change::Gone(k)]
            }
            Event::Init => {
                self.relisted.clear();
                Vec::new()
            }
            Event::InitApply(o) => {
                let k = key(&o);
                self.relisted.insert(k.clone());
                self.known.insert(k);
                vec![Change::Put(o)]
            }
            Event::InitDone => {
                let gone: Vec<String> = self.known.difference(&self.relisted).cloned().collect();
                self.known = std::mem::take(&mut self.relisted);
                gone.into_iter().map(Change::Gone).collect()
            }
        }
    }
}

/// Follows a watch until it ends or `apply` returns false: each event's changes (objects named
/// by `key`) go to `apply`, with whether that event completed a list. A failed watch is logged
/// (`what` names it) and retried a second later.
pub async fn follow<K>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    what: &str,
    key: impl Fn(&K) -> String,
    mut apply: impl FnMut(Vec<Change<K>>, bool) -> bool,
) {
    let mut stream = std::pin::pin!(stream);
    let mut changes = WatchChanges::default();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "{what} watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let listed = matches!(event, Event::InitDone);
        if !apply(changes.on(event, &key), listed) {
            return;
        }
    }
}

/// A hand-kept copy of watched objects, and whether its first list has completed. Until it has,
/// an object missing from the copy may well exist: decisions that read absence as "gone" (a job
/// with no targets completes, an owner not found is dropped) must wait for it.
#[derive(Debug, Default)]
pub struct Mirror<T> {
    pub objects: RwLock<T>,
    listed: AtomicBool,
}

impl<T> Mirror<T> {
    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// Call once an `InitDone` has been applied to `objects`.
    pub fn mark_listed(&self) {
        self.listed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &&str) -> String {
        s.to_string()
    }

    #[test]
    fn a_relist_reports_what_went_away_in_the_gap() {
        let mut w = WatchChanges::default();
        assert_eq!(w.on(Event::Init, key), vec![]);
        assert_eq!(w.on(Event::InitApply("a"), key), vec![Change::Put("a")]);
        assert_eq!(w.on(Event::InitApply("b"), key), vec![Change::Put("b")]);
        assert_eq!(w.on(Event::InitDone, key), vec![], "the first list removes nothing");
        assert_eq!(w.on(Event::Apply("c"), key), vec![Change::Put("c")]);
        assert_eq!(w.on(Event::Delete("a"), key), vec![Change::Gone("a".into())]);
        // The watch breaks; only b is still there.
        assert_eq!(w.on(Event::Init, key), vec![]);
        assert_eq!(w.on(Event::InitApply("b"), key), vec![Change::Put("b")]);
        assert_eq!(w.on(Event::InitDone, key), vec![Change::Gone("c".into())]);
        assert_eq!(w.on(Event::Init, key), vec![]);
        assert_eq!(w.on(Event::InitDone, key), vec![Change::Gone("b".into())]);
    }
}
