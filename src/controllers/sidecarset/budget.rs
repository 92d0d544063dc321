//! The global rollout budget of a SidecarSet whose pods are spread over shards held by different
//! replicas. Pure: the protocol's two decisions and the accounting each shard keeps.
//!
//! Every shard with matched pods reports its counts; the shard that owns the set (its
//! "owner") hands out grants. Both quantities a grant carries only ever grow for one set hash, and
//! the shards' answers to them only ever grow, so any stale view is a conservative one:
//!
//! - maxUnavailable: shard `s` may keep up to `slots_s − returned_s` of its pods updated-but-not-
//!   ready. The owner grants `slots` so that `Σ max(slots_s − returned_s, in_flight_s) ≤ m`, with
//!   `returned_s` as last reported (never more than the true value), so the true total in flight
//!   never exceeds `m`. A shard returns slots it has no use for by raising `returned`.
//! - partition: shard `s` may update `updates_s − used_s` more pods. The owner keeps
//!   `Σ waiting_s − Σ (updates_s − used_s) ≥ p`: the pods that stay old once every permit out is
//!   used. A shard taken over after a crash cannot know what its predecessor used, so it counts
//!   every permit granted so far as used (they are re-granted from its fresh `waiting`).
//!
//! A new set hash starts everything from zero: grants for an older hash allow nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::planner::{RolloutCounts, UpgradeBudget, max_unavailable, partition};
use crate::api::sidecarset::SidecarSetUpdateStrategy;

/// What one shard says of one set (the rollout ConfigMap's key `shard-<i>`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardReport {
    /// The set hash the shard works towards.
    pub hash: String,
    #[serde(flatten)]
    pub counts: RolloutCounts,
    /// Slots handed back (cumulative for `hash`).
    pub returned_slots: u64,
    /// Permits used or forfeited (cumulative for `hash`).
    pub used_updates: u64,
    /// Set revisions the shard's matched pods record: kept when the history is truncated.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub revisions: BTreeSet<String>,
}

/// What a shard may do, cumulative for the grants' hash.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardGrant {
    pub slots: u64,
    pub updates: u64,
}

/// The owner's grants (the rollout ConfigMap's key `grants`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutGrants {
    pub hash: String,
    /// By shard number.
    pub shards: BTreeMap<u32, ShardGrant>,
}

impl RolloutGrants {
    /// Shard `shard`'s grant for `hash` (nothing for another hash).
    pub fn for_shard(&self, hash: &str, shard: u32) -> ShardGrant {
        if self.hash != hash {
            return ShardGrant::default();
        }
        self.shards.get(&shard).copied().unwrap_or_default()
    }
}

/// The set's status counts: the sum over shards (reports for an older hash count their pods, but
/// not as updated).
pub fn total_counts(hash: &str, reports: &BTreeMap<u32, ShardReport>) -> RolloutCounts {
    let mut total = RolloutCounts::default();
    for r in reports.values() {
        let mut c = r.counts;
        if r.hash != hash {
            c = RolloutCounts { matched: c.matched, ready: c.ready, ..Default::default() };
        }
        total.add(&c);
    }
    total
}

/// The revisions some shard's pods record.
pub fn revisions_in_use(reports: &BTreeMap<u32, ShardReport>) -> BTreeSet<String> {
    reports.values().flat_map(|r| r.revisions.iter().cloned()).collect()
}

/// Hands `free` out one at a time, round robin over the shards that want some, never giving a
/// shard more than it wants. Shards furthest behind (smallest share of their pods updated) come
/// first, so the rollout advances evenly over shards, and a partition leaves old pods everywhere.
fn share(free: u64, wants: &mut [(u32, u64)], reports: &BTreeMap<u32, ShardReport>) -> BTreeMap<u32, u64> {
    let progress = |s: u32| {
        reports.get(&s).map_or(0, |r| u64::from(r.counts.updated) * 1_000_000 / u64::from(r.counts.matched.max(1)))
    };
    wants.sort_by_key(|(s, _)| (progress(*s), *s));
    let mut given: BTreeMap<u32, u64> = BTreeMap::new();
    let mut left = free;
    while left > 0 {
        let mut progressed = false;
        for (shard, want) in wants.iter_mut() {
            if left == 0 {
                break;
            }
            if *want > 0 {
                *want -= 1;
                left -= 1;
                *given.entry(*shard).or_default() += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    given
}

/// The owner's decision: new grants from the current ones and the shards' last reports.
pub fn allocate(
    strategy: Option<&SidecarSetUpdateStrategy>,
    hash: &str,
    reports: &BTreeMap<u32, ShardReport>,
    current: &RolloutGrants,
) -> RolloutGrants {
    let mut grants = if current.hash == hash {
        current.clone()
    } else {
        RolloutGrants { hash: hash.into(), shards: BTreeMap::new() }
    };
    let matched: u32 = reports.values().map(|r| r.counts.matched).sum();
    let m = u64::from(max_unavailable(strategy, matched));
    let p = u64::from(partition(strategy, matched));
    let report = |s: u32| reports.get(&s).filter(|r| r.hash == hash);
    let shards: BTreeSet<u32> =
        grants.shards.keys().copied().chain(reports.iter().filter(|(_, r)| r.hash == hash).map(|(s, _)| *s)).collect();

    // Partition permits.
    let waiting: u64 = shards.iter().filter_map(|s| report(*s)).map(|r| u64::from(r.counts.waiting)).sum();
    let outstanding = |g: &RolloutGrants, s: u32| {
        g.shards.get(&s).map_or(0, |g| g.updates).saturating_sub(report(s).map_or(0, |r| r.used_updates))
    };
    let out_total: u64 = shards.iter().map(|s| outstanding(&grants, *s)).sum();
    let free_updates = waiting.saturating_sub(p).saturating_sub(out_total);
    let mut wants: Vec<(u32, u64)> = shards
        .iter()
        .filter_map(|s| report(*s).map(|r| (*s, u64::from(r.counts.waiting).saturating_sub(outstanding(&grants, *s)))))
        .collect();
    for (s, n) in share(free_updates, &mut wants, reports) {
        grants.shards.entry(s).or_default().updates += n;
    }

    // maxUnavailable slots, for the ready waiting pods the shards now hold permits for.
    let held = |g: &RolloutGrants, s: u32| {
        g.shards.get(&s).map_or(0, |g| g.slots).saturating_sub(report(s).map_or(0, |r| r.returned_slots))
    };
    let in_flight = |s: u32| report(s).map_or(0, |r| u64::from(r.counts.in_flight));
    let committed: u64 = shards.iter().map(|s| held(&grants, *s).max(in_flight(*s))).sum();
    let free_slots = m.saturating_sub(committed);
    let mut wants: Vec<(u32, u64)> = shards
        .iter()
        .filter_map(|s| {
            let r = report(*s)?;
            let ready_waiting = u64::from(r.counts.waiting - r.counts.waiting_not_ready.min(r.counts.waiting));
            let usable = ready_waiting.min(outstanding(&grants, *s));
            let slack = held(&grants, *s).saturating_sub(in_flight(*s));
            Some((*s, usable.saturating_sub(slack)))
        })
        .collect();
    for (s, n) in share(free_slots, &mut wants, reports) {
        grants.shards.entry(s).or_default().slots += n;
    }
    grants
}

/// One shard's accounting for one set hash: its grant as last seen, what it has returned and
/// used, and its namespaces' counts.
#[derive(Debug, Clone)]
pub struct ShardLedger {
    pub hash: String,
    pub grant: ShardGrant,
    pub returned_slots: u64,
    pub used_updates: u64,
    namespaces: BTreeMap<String, RolloutCounts>,
    /// Per namespace, the set revisions its matched pods record.
    revisions: BTreeMap<String, BTreeSet<String>>,
    /// Namespaces with pods in this shard not yet counted; nothing is returned until they are
    /// (their in-flight pods may still need the slots).
    uncounted: BTreeSet<String>,
}

impl ShardLedger {
    /// A ledger for a shard just acquired (or a new hash): continues from the persisted report and
    /// grant (both read fresh from the API server), counting every permit granted as used.
    pub fn resume(
        hash: &str,
        grant: ShardGrant,
        persisted: Option<&ShardReport>,
        namespaces: impl IntoIterator<Item = String>,
    ) -> Self {
        let persisted = persisted.filter(|r| r.hash == hash);
        ShardLedger {
            hash: hash.into(),
            grant,
            returned_slots: persisted.map_or(0, |r| r.returned_slots),
            used_updates: persisted.map_or(0, |r| r.used_updates).max(grant.updates),
            namespaces: BTreeMap::new(),
            revisions: BTreeMap::new(),
            uncounted: namespaces.into_iter().collect(),
        }
    }

    /// A newer grant was seen (grants only grow; an older view changes nothing).
    pub fn observe(&mut self, grant: ShardGrant) {
        self.grant.slots = self.grant.slots.max(grant.slots);
        self.grant.updates = self.grant.updates.max(grant.updates);
    }

    /// Records a namespace's counts (with pods this shard updated but the cache does not yet
    /// show counted as in flight).
    pub fn record(&mut self, namespace: &str, counts: RolloutCounts, revisions: BTreeSet<String>) {
        self.uncounted.remove(namespace);
        if counts.matched == 0 {
            self.namespaces.remove(namespace);
            self.revisions.remove(namespace);
        } else {
            self.namespaces.insert(namespace.to_string(), counts);
            self.revisions.insert(namespace.to_string(), revisions);
        }
    }

    pub fn counts(&self) -> RolloutCounts {
        let mut total = RolloutCounts::default();
        for c in self.namespaces.values() {
            total.add(c);
        }
        total
    }

    fn cap(&self) -> u64 {
        self.grant.slots.saturating_sub(self.returned_slots)
    }

    /// Whether a waiting pod could be updated now (a permit and a free slot).
    pub fn has_room(&self) -> bool {
        self.used_updates < self.grant.updates && u64::from(self.counts().in_flight) < self.cap()
    }

    /// The budget a namespace draws from; what it takes is counted at once (as in flight).
    pub fn budget<'a>(&'a mut self, namespace: &'a str) -> LedgerBudget<'a> {
        LedgerBudget { ledger: self, namespace }
    }

    /// Hands back slots beyond what the in-flight pods and the ready waiting pods (with permits)
    /// need. Returns how many were handed back.
    pub fn return_surplus(&mut self) -> u64 {
        if !self.uncounted.is_empty() {
            return 0;
        }
        let c = self.counts();
        let permits = self.grant.updates.saturating_sub(self.used_updates);
        let ready_waiting = u64::from(c.waiting.saturating_sub(c.waiting_not_ready));
        let need = u64::from(c.in_flight) + ready_waiting.min(permits);
        let surplus = self.cap().saturating_sub(need);
        self.returned_slots += surplus;
        surplus
    }

    pub fn report(&self) -> ShardReport {
        ShardReport {
            hash: self.hash.clone(),
            counts: self.counts(),
            returned_slots: self.returned_slots,
            used_updates: self.used_updates,
            revisions: self.revisions.values().flatten().cloned().collect(),
        }
    }
}

pub struct LedgerBudget<'a> {
    ledger: &'a mut ShardLedger,
    namespace: &'a str,
}

impl UpgradeBudget for LedgerBudget<'_> {
    fn take(&mut self, ready: bool) -> bool {
        let l = &mut *self.ledger;
        if l.used_updates >= l.grant.updates {
            return false;
        }
        if ready && u64::from(l.counts().in_flight) >= l.cap() {
            return false;
        }
        l.used_updates += 1;
        let c = l.namespaces.entry(self.namespace.to_string()).or_default();
        c.in_flight += 1;
        c.updated += 1;
        c.waiting = c.waiting.saturating_sub(1);
        if !ready {
            c.waiting_not_ready = c.waiting_not_ready.saturating_sub(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strategy(v: serde_json::Value) -> SidecarSetUpdateStrategy {
        serde_json::from_value(v).unwrap()
    }

    fn report(hash: &str, matched: u32, waiting: u32, in_flight: u32) -> ShardReport {
        ShardReport {
            hash: hash.into(),
            counts: RolloutCounts { matched, waiting, in_flight, updated: matched - waiting, ..Default::default() },
            returned_slots: 0,
            used_updates: 0,
            revisions: BTreeSet::new(),
        }
    }

    #[test]
    fn grants_split_the_window_and_the_partition_over_shards() {
        let s = strategy(json!({"maxUnavailable": 10, "partition": 50}));
        let reports = BTreeMap::from([(0, report("h", 60, 60, 0)), (1, report("h", 40, 40, 0))]);
        let g = allocate(Some(&s), "h", &reports, &RolloutGrants::default());
        let slots: u64 = g.shards.values().map(|g| g.slots).sum();
        let updates: u64 = g.shards.values().map(|g| g.updates).sum();
        assert_eq!((slots, updates), (10, 50));
        assert!(g.shards.values().all(|g| g.slots == 5), "{g:?}");
        // Nothing changed: nothing more to give.
        assert_eq!(allocate(Some(&s), "h", &reports, &g), g);
    }

    #[test]
    fn shards_furthest_behind_get_the_window_first() {
        let s = strategy(json!({"maxUnavailable": 2}));
        let mut ahead = report("h", 10, 2, 0);
        ahead.counts.updated = 8;
        let reports = BTreeMap::from([(0, ahead), (1, report("h", 10, 10, 0)), (2, report("h", 10, 10, 0))]);
        let g = allocate(Some(&s), "h", &reports, &RolloutGrants::default());
        assert_eq!(g.for_shard("h", 0).slots, 0, "{g:?}");
        assert_eq!(g.for_shard("h", 1).slots + g.for_shard("h", 2).slots, 2);
    }

    #[test]
    fn a_new_hash_starts_from_zero_and_old_hash_reports_get_nothing() {
        let s = strategy(json!({"maxUnavailable": 2}));
        let old =
            RolloutGrants { hash: "old".into(), shards: BTreeMap::from([(0, ShardGrant { slots: 9, updates: 9 })]) };
        let reports = BTreeMap::from([(0, report("new", 5, 5, 0)), (1, report("old", 5, 5, 0))]);
        let g = allocate(Some(&s), "new", &reports, &old);
        assert_eq!(g.hash, "new");
        assert_eq!(g.for_shard("new", 0), ShardGrant { slots: 2, updates: 5 });
        assert_eq!(g.for_shard("new", 1), ShardGrant::default());
        assert_eq!(g.for_shard("old", 0), ShardGrant::default());
    }

    #[test]
    fn a_taken_over_shard_forfeits_outstanding_permits() {
        let l = ShardLedger::resume(
            "h",
            ShardGrant { slots: 4, updates: 30 },
            Some(&ShardReport { used_updates: 10, returned_slots: 1, ..report("h", 50, 20, 3) }),
            ["ns".to_string()],
        );
        assert_eq!((l.used_updates, l.returned_slots), (30, 1));
        let mut l = l;
        assert_eq!(l.return_surplus(), 0, "nothing handed back before every namespace is counted");
        l.record("ns", RolloutCounts { matched: 50, in_flight: 1, waiting: 20, ..Default::default() }, BTreeSet::new());
        assert_eq!(l.return_surplus(), 2, "cap 3, one pod in flight, no permits left");
    }

    /// Shards acting on stale grants, an owner acting on stale reports, shards dying and being
    /// taken over: the pods in flight never exceed maxUnavailable and at least `partition`
    /// waiting pods stay old, at every step; and the rollout finishes.
    #[test]
    fn the_invariants_hold_under_stale_views_and_takeovers() {
        let shards = 5u32;
        let per_shard = 40u32;
        let s = strategy(json!({"maxUnavailable": 7, "partition": 30}));
        // Per shard: pods as (updated, in_flight).
        let mut pods: Vec<Vec<(bool, bool)>> = vec![vec![(false, false); per_shard as usize]; shards as usize];
        let mut ledgers: Vec<ShardLedger> =
            (0..shards).map(|_| ShardLedger::resume("h", ShardGrant::default(), None, ["ns".to_string()])).collect();
        let mut persisted: BTreeMap<u32, ShardReport> = BTreeMap::new();
        let mut grants = RolloutGrants::default();
        let mut seen_grants: Vec<RolloutGrants> = vec![RolloutGrants::default(); shards as usize];
        let mut rng = 12345u64;
        let mut next = |n: u64| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let counts = |pods: &[(bool, bool)]| {
            let mut c = RolloutCounts::default();
            for (updated, in_flight) in pods {
                c.matched += 1;
                c.updated += u32::from(*updated);
                c.in_flight += u32::from(*in_flight);
                c.waiting += u32::from(!*updated);
                c.ready += u32::from(!*in_flight);
            }
            c
        };
        for _step in 0..20_000 {
            let shard = next(u64::from(shards)) as usize;
            match next(6) {
                // The owner allocates from the persisted reports; shards see the grants later.
                0 => grants = allocate(Some(&s), "h", &persisted, &grants),
                1 => seen_grants[shard] = grants.clone(),
                // A shard reconciles: counts, takes what its budget allows, updates those pods.
                2 => {
                    let l = &mut ledgers[shard];
                    l.observe(seen_grants[shard].for_shard("h", shard as u32));
                    l.record("ns", counts(&pods[shard]), BTreeSet::new());
                    let mut b = l.budget("ns");
                    for p in pods[shard].iter_mut().filter(|p| !p.0) {
                        if !b.take(true) {
                            break;
                        }
                        *p = (true, true);
                    }
                    l.record("ns", counts(&pods[shard]), BTreeSet::new());
                    l.return_surplus();
                }
                // Pods finish their restart.
                3 => {
                    for p in pods[shard].iter_mut().filter(|p| p.1) {
                        if next(2) == 0 {
                            p.1 = false;
                        }
                    }
                }
                // The shard persists its report.
                4 => {
                    persisted.insert(shard as u32, ledgers[shard].report());
                }
                // The shard's replica dies; another takes over from what is persisted.
                _ => {
                    if next(10) == 0 {
                        let fresh = grants.for_shard("h", shard as u32);
                        seen_grants[shard] = grants.clone();
                        ledgers[shard] =
                            ShardLedger::resume("h", fresh, persisted.get(&(shard as u32)), ["ns".to_string()]);
                    }
                }
            }
            let in_flight: u32 = pods.iter().flatten().filter(|p| p.1).count() as u32;
            let old: u32 = pods.iter().flatten().filter(|p| !p.0).count() as u32;
            assert!(in_flight <= 7, "{in_flight} in flight");
            assert!(old >= 30, "only {old} old pods left");
        }
        let old: u32 = pods.iter().flatten().filter(|p| !p.0).count() as u32;
        assert_eq!(old, 30, "the rollout reaches the partition");
    }
}
