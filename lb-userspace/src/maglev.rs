//! Maglev consistent hashing (Eisenbud et al., NSDI '16), as a pure function:
//! backends in, lookup table out.
//!
//! Backends are identified by a stable string (name and address), never by list
//! position, and hashed with fixed seeds, so every balancer with the same config
//! builds the same table byte for byte. Weights are honoured with cumulative
//! credit: each round a backend earns its weight and fills one slot per `max
//! weight` of credit, so shares follow weights over the whole table, not only the
//! first pass.

use lb_common::limits::NO_BACKEND;

/// One ring member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// Stable identity, e.g. `"waf-1/10.0.0.11"`.
    pub id: &'a str,
    /// Relative weight, > 0.
    pub weight: u32,
    /// Value written in the slots this member owns (the backend-table index).
    pub value: u32,
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SEED_SKIP: u64 = 0x6d61_676c_6576_736b; // "maglevsk"
const SEED_DIGEST: u64 = 0x6d61_676c_6576_6467; // "maglevdg"

/// FNV-1a over the bytes, then a splitmix64 finaliser: stable across hosts,
/// releases and architectures (unlike std's `DefaultHasher`).
#[must_use]
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a table of `size` slots (a prime). Members with weight 0 get no slot;
/// with no member of positive weight every slot is `NO_BACKEND`.
#[must_use]
pub fn build(members: &[Member<'_>], size: u32) -> Vec<u32> {
    let size = size as usize;
    let mut table = vec![NO_BACKEND; size];
    // Fill order is by identity, so the table does not depend on config order.
    let mut members: Vec<&Member<'_>> = members.iter().filter(|m| m.weight > 0).collect();
    members.sort_by(|a, b| (a.id, a.value).cmp(&(b.id, b.value)));
    let Some(max_weight) = members.iter().map(|m| u64::from(m.weight)).max() else {
        return table;
    };
    // Permutation of member i: slot (offset + j * skip) mod size, j = 0, 1, ...
    let m = size as u64;
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|b| {
            let offset = stable_hash(b.id.as_bytes(), SEED_OFFSET) % m;
            let skip = stable_hash(b.id.as_bytes(), SEED_SKIP) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0u64; members.len()];
    let mut filled = 0;
    while filled < size {
        for (i, member) in members.iter().enumerate() {
            credit[i] += u64::from(member.weight);
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            let slot = loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == NO_BACKEND {
                    break slot;
                }
            };
            table[slot] = member.value;
            filled += 1;
            if filled == size {
                break;
            }
        }
    }
    table
}

/// A digest of `table` by the identities of the members in its slots, never by
/// the values written there (backend-table indices, which differ between
/// balancers that allocated them in another order): two tables that send every
/// slot to the same member have the same digest, on any host. `members` are the
/// table's members (as given to [`build`]); a slot whose value is no member's
/// counts as empty.
#[must_use]
pub fn digest(members: &[Member<'_>], table: &[u32]) -> u64 {
    let mut sorted: Vec<&Member<'_>> = members.iter().collect();
    sorted.sort_by(|a, b| (a.id, a.value).cmp(&(b.id, b.value)));
    // Each value's rank in identity order; values are small table indices.
    let top = sorted.iter().map(|m| m.value as usize + 1).max().unwrap_or(0);
    let mut rank = vec![u32::MAX; top];
    for (i, m) in sorted.iter().enumerate() {
        rank[m.value as usize] = i as u32;
    }
    let names: usize = sorted.iter().map(|m| m.id.len() + 1).sum();
    let mut bytes = Vec::with_capacity(names + 1 + table.len() * 4);
    for m in &sorted {
        bytes.extend_from_slice(m.id.as_bytes());
        bytes.push(b'\n');
    }
    bytes.push(0);
    for &value in table {
        let r = rank.get(value as usize).copied().unwrap_or(u32::MAX);
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    stable_hash(&bytes, SEED_DIGEST)
}

#[cfg(test)]
#[expect(clippy::cast_precision_loss, reason = "slot counts are far below 2^52")]
mod tests {
    use super::*;

    const SIZE: u32 = 65_537;
    const GOLDEN_OFFSET: u64 = 9_944_449_095_960_525_128;
    const GOLDEN_13: [u32; 13] = [2, 2, 2, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1];

    fn members(n: u32) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("waf-{i}/10.0.{}.{}", i / 250, i % 250 + 1), i)).collect()
    }

    fn ring(ids: &[(String, u32)], weight: impl Fn(u32) -> u32) -> Vec<u32> {
        let m: Vec<Member<'_>> =
            ids.iter().map(|(id, v)| Member { id, weight: weight(*v), value: *v }).collect();
        build(&m, SIZE)
    }

    fn shares(table: &[u32], n: u32) -> Vec<usize> {
        (0..n).map(|v| table.iter().filter(|&&s| s == v).count()).collect()
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Golden values: changing the hash moves every flow on every balancer.
        assert_eq!(stable_hash(b"", 0), 17_665_956_581_633_026_203);
        assert_eq!(stable_hash(b"waf-1/10.0.0.11", SEED_OFFSET), GOLDEN_OFFSET);
    }

    #[test]
    fn small_table_is_pinned() {
        // Every balancer host must build exactly this; a change here is a fleet-wide reshuffle.
        let m = [
            Member { id: "waf-1/10.0.0.11", weight: 1, value: 0 },
            Member { id: "waf-2/10.0.0.12", weight: 1, value: 1 },
            Member { id: "waf-3/10.0.0.13", weight: 2, value: 2 },
        ];
        assert_eq!(build(&m, 13), GOLDEN_13);
    }

    #[test]
    fn empty_or_zero_weight_gives_a_table_of_no_backend() {
        assert!(build(&[], 7).iter().all(|&s| s == NO_BACKEND));
        let m = [Member { id: "a", weight: 0, value: 1 }];
        assert!(build(&m, 7).iter().all(|&s| s == NO_BACKEND));
    }

    #[test]
    fn every_slot_is_filled() {
        let t = ring(&members(3), |_| 1);
        assert!(t.iter().all(|&s| s < 3));
    }

    #[test]
    fn same_members_in_any_order_build_the_same_table() {
        let ids = members(10);
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(ring(&ids, |_| 1), ring(&reversed, |_| 1));
    }

    #[test]
    fn equal_weights_differ_by_at_most_one_percent() {
        let n = 10;
        let s = shares(&ring(&members(n), |_| 1), n);
        let (min, max) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
        assert!((max - min) as f64 / (SIZE as f64 / n as f64) <= 0.01, "{s:?}");
    }

    #[test]
    fn weighted_shares_are_within_5_percent_of_their_weight() {
        let n = 5;
        let weights = [100, 50, 25, 200, 1];
        let s = shares(&ring(&members(n), |v| weights[v as usize]), n);
        let total: u32 = weights.iter().sum();
        for (i, &count) in s.iter().enumerate() {
            let want = SIZE as f64 * weights[i] as f64 / total as f64;
            assert!(
                (count as f64 - want).abs() <= want * 0.05 + 1.0,
                "member {i}: {count} slots, want {want:.0}"
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_close_to_one_nth_of_slots() {
        for n in [3u32, 10, 100] {
            let ids = members(n);
            let before = ring(&ids, |_| 1);
            let after = ring(&ids[1..], |_| 1);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let ideal = SIZE as f64 / n as f64;
            // The removed member's slots must move; Maglev's greedy fill moves some
            // others too (the paper's trade for even shares). `cargo xtask bench maglev`
            // reports the measured ratio; this bounds regressions.
            assert!(moved as f64 >= ideal * 0.95, "n={n}: moved {moved}, ideal {ideal:.0}");
            assert!(moved as f64 <= ideal * 1.6, "n={n}: moved {moved}, ideal {ideal:.0}");
        }
    }

    #[test]
    fn the_digest_follows_identities_not_table_indices() {
        let on = |values: [u32; 3]| {
            let ids = ["waf-1/10.0.0.11", "waf-2/10.0.0.12", "waf-3/10.0.0.13"];
            let m: Vec<Member<'_>> =
                ids.iter().zip(values).map(|(id, value)| Member { id, weight: 1, value }).collect();
            let table = build(&m, 13);
            (digest(&m, &table), table)
        };
        // Another balancer allocated other indices: other bytes, the same ring.
        let (a, table_a) = on([0, 1, 2]);
        let (b, table_b) = on([7, 3, 12]);
        assert_ne!(table_a, table_b);
        assert_eq!(a, b);
        assert_eq!(a, 0x8511_87e3_585e_9723, "pinned: balancers of different versions compare it");
        // One slot sent elsewhere, or a member fewer, changes it.
        let m = [
            Member { id: "waf-1/10.0.0.11", weight: 1, value: 0 },
            Member { id: "waf-2/10.0.0.12", weight: 1, value: 1 },
        ];
        let mut table = build(&m, 13);
        let whole = digest(&m, &table);
        assert_ne!(whole, a);
        table[0] = 1 - table[0];
        assert_ne!(digest(&m, &table), whole);
        assert_ne!(digest(&[], &build(&[], 13)), whole, "the empty ring has its own digest");
    }

    #[test]
    fn adding_one_moves_close_to_one_over_n_plus_one() {
        let ids = members(11);
        let before = ring(&ids[..10], |_| 1);
        let after = ring(&ids, |_| 1);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let ideal = SIZE as f64 / 11.0;
        assert!(moved as f64 <= ideal * 1.2, "moved {moved}, ideal {ideal:.0}");
    }
}
