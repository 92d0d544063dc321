//! Which shard leases a replica should renew, take or give up: a pure function of what it last saw.
//!
//! Each replica aims for its fair share `ceil(S / live replicas)`. Holding more, it gives up the
//! surplus (so a joining replica finds free shards); holding fewer, it takes free shards, growing
//! its range contiguously from where it already is, or from a start point derived from its identity
//! when it holds nothing, so replicas that start together fan out instead of colliding.

use std::collections::BTreeMap;

use super::lease::Holder;
use super::shard::{ShardId, ShardSpace, fnv1a_64};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardAction {
    Renew(ShardId),
    /// Take a lease that exists but is free.
    Acquire(ShardId),
    /// Create a lease that does not exist yet.
    Create(ShardId),
    Release(ShardId),
}

pub struct ShardPlanInput<'a> {
    pub space: ShardSpace,
    /// Replicas alive, this one included.
    pub live_replicas: usize,
    /// The holder of each shard's lease; a shard absent from the map has no lease yet.
    pub holders: &'a BTreeMap<ShardId, Holder>,
    /// Where to start taking shards when holding none.
    pub preferred_start: ShardId,
}

/// `ceil(S / live)`: what each replica may hold so that all shards are covered.
pub fn fair_share(space: ShardSpace, live_replicas: usize) -> usize {
    let live = live_replicas.max(1);
    (space.count() as usize).div_ceil(live)
}

/// A start point spread over the ring by the replica's identity.
pub fn preferred_start(space: ShardSpace, identity: &str) -> ShardId {
    ShardId((fnv1a_64(identity.as_bytes()) % u64::from(space.count())) as u32)
}

/// Forward distance from `from` to `to` on the ring of `n` shards.
fn forward(n: u32, from: ShardId, to: ShardId) -> u32 {
    (to.0 + n - from.0) % n
}

/// Distance either way round the ring.
fn ring_distance(n: u32, a: ShardId, b: ShardId) -> u32 {
    let f = forward(n, a, b);
    f.min(n - f)
}

pub fn plan(input: &ShardPlanInput<'_>) -> Vec<ShardAction> {
    let n = input.space.count();
    let fair = fair_share(input.space, input.live_replicas);
    let holder = |s: ShardId| input.holders.get(&s).unwrap_or(&Holder::Missing);

    let mut mine: Vec<ShardId> = input.space.shards().filter(|s| *holder(*s) == Holder::Me).collect();
    // Keep the shards nearest the start point, in ring order, so the kept set stays contiguous.
    mine.sort_by_key(|s| forward(n, input.preferred_start, *s));
    let surplus = mine.split_off(mine.len().min(fair));

    let mut actions: Vec<ShardAction> = mine.iter().map(|s| ShardAction::Renew(*s)).collect();
    actions.extend(surplus.iter().map(|s| ShardAction::Release(*s)));

    let wanted = fair.saturating_sub(mine.len());
    if wanted > 0 {
        let mut free: Vec<ShardId> =
            input.space.shards().filter(|s| matches!(holder(*s), Holder::Free | Holder::Missing)).collect();
        free.sort_by_key(|s| {
            let near_mine = mine.iter().map(|m| ring_distance(n, *m, *s)).min().unwrap_or(0);
            (near_mine, forward(n, input.preferred_start, *s))
        });
        for s in free.into_iter().take(wanted) {
            actions.push(match holder(s) {
                Holder::Missing => ShardAction::Create(s),
                _ => ShardAction::Acquire(s),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(n: u32) -> ShardSpace {
        ShardSpace::new(n).unwrap()
    }

    fn holders(entries: &[(u32, Holder)]) -> BTreeMap<ShardId, Holder> {
        entries.iter().map(|(s, h)| (ShardId(*s), h.clone())).collect()
    }

    fn count(actions: &[ShardAction], pred: impl Fn(&ShardAction) -> bool) -> usize {
        actions.iter().filter(|a| pred(a)).count()
    }

    #[test]
    fn fair_share_is_the_ceiling() {
        assert_eq!(fair_share(space(32), 3), 11);
        assert_eq!(fair_share(space(32), 2), 16);
        assert_eq!(fair_share(space(32), 1), 32);
        assert_eq!(fair_share(space(32), 0), 32, "a replica always counts itself");
        assert_eq!(fair_share(space(2), 5), 1);
    }

    #[test]
    fn a_lone_replica_creates_every_lease_starting_at_its_start_point() {
        let h = BTreeMap::new();
        let actions =
            plan(&ShardPlanInput { space: space(8), live_replicas: 1, holders: &h, preferred_start: ShardId(5) });
        assert_eq!(actions.len(), 8);
        assert_eq!(actions[0], ShardAction::Create(ShardId(5)));
        assert!(actions.iter().all(|a| matches!(a, ShardAction::Create(_))));
    }

    #[test]
    fn a_replica_above_its_share_keeps_a_contiguous_block_and_releases_the_rest() {
        let h = holders(&(0..16).map(|i| (i, Holder::Me)).collect::<Vec<_>>());
        let actions =
            plan(&ShardPlanInput { space: space(16), live_replicas: 3, holders: &h, preferred_start: ShardId(0) });
        let renewed: Vec<u32> =
            actions.iter().filter_map(|a| if let ShardAction::Renew(s) = a { Some(s.0) } else { None }).collect();
        assert_eq!(renewed, (0..6).collect::<Vec<_>>());
        assert_eq!(count(&actions, |a| matches!(a, ShardAction::Release(_))), 10);
    }

    #[test]
    fn a_replica_below_its_share_grows_next_to_what_it_holds() {
        // 12 shards, 2 replicas: fair share 6. We hold 3..=5; 0..=2 belong to the other replica.
        let mut entries: Vec<(u32, Holder)> = (0..3).map(|i| (i, Holder::Other("b".into()))).collect();
        entries.extend((3..6).map(|i| (i, Holder::Me)));
        entries.extend((6..12).map(|i| (i, Holder::Free)));
        let h = holders(&entries);
        let actions =
            plan(&ShardPlanInput { space: space(12), live_replicas: 2, holders: &h, preferred_start: ShardId(3) });
        let acquired: Vec<u32> =
            actions.iter().filter_map(|a| if let ShardAction::Acquire(s) = a { Some(s.0) } else { None }).collect();
        assert_eq!(acquired, vec![6, 7, 8]);
        assert_eq!(count(&actions, |a| matches!(a, ShardAction::Renew(_))), 3);
    }

    #[test]
    fn shards_held_by_live_others_are_left_alone() {
        let h = holders(&(0..4).map(|i| (i, Holder::Other("b".into()))).collect::<Vec<_>>());
        let actions =
            plan(&ShardPlanInput { space: space(4), live_replicas: 2, holders: &h, preferred_start: ShardId(0) });
        assert!(actions.is_empty(), "{actions:?}");
    }

    /// Simulates replicas that each plan on the others' results until nothing changes.
    fn converge(n: u32, replicas: &[&str]) -> BTreeMap<String, usize> {
        let sp = space(n);
        let mut owner: BTreeMap<ShardId, Option<String>> = BTreeMap::new();
        for _round in 0..20 {
            let mut changed = false;
            for me in replicas {
                let h: BTreeMap<ShardId, Holder> = owner
                    .iter()
                    .map(|(s, o)| {
                        let h = match o {
                            None => Holder::Free,
                            Some(o) if o == me => Holder::Me,
                            Some(o) => Holder::Other(o.clone()),
                        };
                        (*s, h)
                    })
                    .collect();
                let input = ShardPlanInput {
                    space: sp,
                    live_replicas: replicas.len(),
                    holders: &h,
                    preferred_start: preferred_start(sp, me),
                };
                for a in plan(&input) {
                    match a {
                        ShardAction::Acquire(s) | ShardAction::Create(s) => {
                            owner.insert(s, Some(me.to_string()));
                            changed = true;
                        }
                        ShardAction::Release(s) => {
                            owner.insert(s, None);
                            changed = true;
                        }
                        ShardAction::Renew(_) => {}
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut counts = BTreeMap::new();
        for o in owner.values().flatten() {
            *counts.entry(o.clone()).or_insert(0) += 1;
        }
        assert_eq!(owner.values().flatten().count(), n as usize, "every shard is held");
        counts
    }

    #[test]
    fn three_replicas_split_32_shards_11_11_10() {
        let counts = converge(32, &["manager-a", "manager-b", "manager-c"]);
        let mut v: Vec<usize> = counts.values().copied().collect();
        v.sort();
        assert_eq!(v, vec![10, 11, 11]);
    }
}
