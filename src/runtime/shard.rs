//! The shard key space: which virtual shard an object belongs to.
//!
//! A namespaced object belongs to the shard whose hash range holds the 64-bit FNV-1a hash of its
//! namespace (per-node cluster objects: of the node name). Shard `i` of `S` covers
//! `[floor(i·2^64/S), floor((i+1)·2^64/S))`, the ranges Kubernetes' sharded list/watch
//! (`shardRange(object.metadata.namespace, start, end)`) takes, so a replica's shards can be
//! pushed down to the API server as hash ranges.
//!
//! FNV-1a mixes the last bytes of a key poorly into the high bits, so namespaces named in a
//! sequence (`team-1`, `team-2`, ...) can crowd into a few shards: 3200 such names over 32 shards
//! left 9 shards empty. The hash is fixed by the API server's sharded watch; balance comes from
//! having many more shards than replicas.

use std::fmt;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A half-open range of hash values. `end` is a `u128` because the last shard ends at 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    pub start: u64,
    pub end: u128,
}

impl HashRange {
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start && u128::from(hash) < self.end
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("the shard count must be between 1 and {max}, got {got}")]
    BadCount { got: u32, max: u32 },
}

/// `S` virtual shards over the 64-bit hash space. Fixed per installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpace {
    count: u32,
}

impl ShardSpace {
    /// More shards than this buys nothing (a Lease each) and only costs API traffic.
    pub const MAX_SHARDS: u32 = 4096;

    pub fn new(count: u32) -> Result<Self, ShardError> {
        if count == 0 || count > Self::MAX_SHARDS {
            return Err(ShardError::BadCount { got: count, max: Self::MAX_SHARDS });
        }
        Ok(Self { count })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn shards(&self) -> impl Iterator<Item = ShardId> + use<> {
        (0..self.count).map(ShardId)
    }

    fn boundary(&self, i: u32) -> u128 {
        (u128::from(i) << 64) / u128::from(self.count)
    }

    /// The hash range shard `s` covers.
    pub fn range(&self, s: ShardId) -> HashRange {
        // boundary(i) < 2^64 for every i < count, so the start always fits.
        HashRange { start: self.boundary(s.0) as u64, end: self.boundary(s.0 + 1) }
    }

    /// The shard whose range holds `hash`.
    pub fn shard_of_hash(&self, hash: u64) -> ShardId {
        // floor(hash·S / 2^64) lands on the right shard or one below it (the boundaries are
        // rounded down); step up once if the next range already starts at or below `hash`.
        let guess = ((u128::from(hash) * u128::from(self.count)) >> 64) as u32;
        if guess + 1 < self.count && u128::from(hash) >= self.boundary(guess + 1) {
            ShardId(guess + 1)
        } else {
            ShardId(guess)
        }
    }

    /// The shard that owns everything in namespace `ns` (or the per-node object of node `ns`).
    pub fn shard_of_key(&self, key: &str) -> ShardId {
        self.shard_of_hash(fnv1a_64(key.as_bytes()))
    }
}

/// The field Kubernetes' sharded list/watch hashes for namespaced objects.
pub const NAMESPACE_FIELD: &str = "object.metadata.namespace";

impl HashRange {
    /// `'0x…'` bounds as the API server's shardRange() takes them: 16 hex digits, or
    /// `0x10000000000000000` for the exclusive end 2^64.
    fn hex(v: u128) -> String {
        if v == 1u128 << 64 { "0x10000000000000000".to_string() } else { format!("0x{v:016x}") }
    }
}

impl ShardSpace {
    /// A `shardSelector` for list/watch requests covering `shards` (KEP-5866, ShardedListAndWatch):
    /// one `shardRange(object.metadata.namespace, start, end)` per run of adjacent shards, joined
    /// by `||`. `None` for no shards (nothing to watch). The server supports only
    /// `object.metadata.namespace` and `object.metadata.uid`, so cluster-scoped objects keyed by
    /// name (NodePodProbe, NodeImage) must be filtered on the client.
    pub fn selector(&self, shards: &[ShardId]) -> Option<String> {
        let mut sorted: Vec<u32> = shards.iter().map(|s| s.0).filter(|s| *s < self.count).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for s in sorted {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                _ => ranges.push((s, s)),
            }
        }
        if ranges.is_empty() {
            return None;
        }
        let parts: Vec<String> = ranges
            .iter()
            .map(|(first, last)| {
                let start = u128::from(self.range(ShardId(*first)).start);
                let end = self.range(ShardId(*last)).end;
                format!("shardRange({NAMESPACE_FIELD}, '{}', '{}')", HashRange::hex(start), HashRange::hex(end))
            })
            .collect();
        Some(parts.join(" || "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_reference_vectors() {
        // From the FNV reference test suite (Fowler/Noll/Vo).
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn ranges_tile_the_hash_space_without_gaps_or_overlap() {
        for count in [1, 2, 3, 7, 32, 1000, ShardSpace::MAX_SHARDS] {
            let space = ShardSpace::new(count).unwrap();
            let mut next: u128 = 0;
            for s in space.shards() {
                let r = space.range(s);
                assert_eq!(u128::from(r.start), next, "shard {s} of {count} starts where the previous ended");
                assert!(r.end > u128::from(r.start));
                next = r.end;
            }
            assert_eq!(next, 1u128 << 64, "the last of {count} shards ends at 2^64");
        }
    }

    #[test]
    fn every_hash_maps_to_the_shard_whose_range_holds_it() {
        for count in [1, 3, 7, 32, 1000] {
            let space = ShardSpace::new(count).unwrap();
            let mut probes = vec![0, 1, u64::MAX, u64::MAX - 1];
            for s in space.shards() {
                let r = space.range(s);
                probes.extend([r.start, r.start.saturating_sub(1), r.start.saturating_add(1)]);
                if let Ok(last) = u64::try_from(r.end - 1) {
                    probes.push(last);
                }
            }
            probes.extend((0..2000u64).map(|i| fnv1a_64(format!("ns-{i}").as_bytes())));
            for h in probes {
                let s = space.shard_of_hash(h);
                assert!(s.0 < count);
                assert!(space.range(s).contains(h), "hash {h:#x} -> shard {s} of {count}, range {:?}", space.range(s));
            }
        }
    }

    #[test]
    fn selectors_merge_adjacent_shards_into_ranges() {
        let space = ShardSpace::new(4).unwrap();
        assert_eq!(space.selector(&[]), None);
        assert_eq!(
            space.selector(&[ShardId(0), ShardId(1)]).unwrap(),
            "shardRange(object.metadata.namespace, '0x0000000000000000', '0x8000000000000000')"
        );
        assert_eq!(
            space.selector(&[ShardId(3), ShardId(0), ShardId(3)]).unwrap(),
            "shardRange(object.metadata.namespace, '0x0000000000000000', '0x4000000000000000') || \
             shardRange(object.metadata.namespace, '0xc000000000000000', '0x10000000000000000')"
        );
    }

    #[test]
    fn shard_counts_out_of_range_are_rejected() {
        assert_eq!(ShardSpace::new(0), Err(ShardError::BadCount { got: 0, max: ShardSpace::MAX_SHARDS }));
        assert!(ShardSpace::new(ShardSpace::MAX_SHARDS + 1).is_err());
    }
}
