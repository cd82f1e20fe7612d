//! The flow hash that picks a ring slot. It lives here so the tests and the
//! controller can predict the kernel's choice; it must stay cheap (no loops over
//! data-dependent lengths) because every new flow pays for it.
//!
//! It is SipHash-1-3 keyed with a 128-bit secret, the seed (`LbConfig::hash_seed`,
//! from the config, the same on every balancer so they pick the same backend). A
//! client that does not know the seed cannot choose source ports or addresses that
//! land on one ring slot: SipHash is a keyed pseudo-random function, where a
//! public or 32-bit seed, or an unkeyed mix like Murmur (whose collisions do not
//! depend on the seed), would let it. The ring itself (Maglev) does not use it.

use crate::{FlowKey, limits::SYN_SLOTS};

/// A flow-hash seed: 128 bits as four words.
pub type Seed = [u32; 4];

/// The seed of a balancer whose config names none: public (it is in this source),
/// so clients can aim at one backend. The controller warns when it is in use.
pub const PUBLIC_SEED: Seed = [0x5eed_1b01, 0, 0, 0];

#[inline(always)]
const fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-C-D of three little-endian 64-bit words (24 bytes) under `seed`.
#[inline(always)]
#[must_use]
pub const fn siphash<const C: usize, const D: usize>(seed: &Seed, m: [u64; 3]) -> u64 {
    let k0 = seed[0] as u64 | (seed[1] as u64) << 32;
    let k1 = seed[2] as u64 | (seed[3] as u64) << 32;
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < 4 {
        // The fourth block is the length (24 bytes, no tail).
        let block = if i < 3 { m[i] } else { 24 << 56 };
        v[3] ^= block;
        let mut r = 0;
        while r < C {
            sip_round(&mut v);
            r += 1;
        }
        v[0] ^= block;
        i += 1;
    }
    v[2] ^= 0xff;
    let mut r = 0;
    while r < D {
        sip_round(&mut v);
        r += 1;
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The flow hash: SipHash-1-3 under `seed` of the client address, both ports and
/// the protocol. The VIP is not hashed: every VIP has its own ring. The data path
/// computes it once per new flow and derives the ring slot (`ring_hash`) and the
/// SYN array's slot and tag (`syn_slot`, `syn_tag`) from it.
#[inline(always)]
#[must_use]
pub const fn flow_hash64(key: &FlowKey, seed: &Seed) -> u64 {
    let ports = (key.ports[0] as u64) | (key.ports[1] as u64) << 16 | (key.proto as u64) << 32;
    let m = [
        key.src[0] as u64 | (key.src[1] as u64) << 32,
        key.src[2] as u64 | (key.src[3] as u64) << 32,
        ports,
    ];
    siphash::<1, 3>(seed, m)
}

/// The 32 bits of a flow hash the Maglev ring slot is taken from.
#[inline(always)]
#[must_use]
pub const fn ring_hash(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

/// `ring_hash` of the flow: the ring slot is this modulo `limits::RING_SIZE`.
#[inline(always)]
#[must_use]
pub const fn flow_hash(key: &FlowKey, seed: &Seed) -> u32 {
    ring_hash(flow_hash64(key, seed))
}

/// The flow's slot in the SYN array (`limits::SYN_SLOTS` slots).
#[inline(always)]
#[must_use]
pub const fn syn_slot(h: u64) -> u32 {
    (h >> 40) as u32 & (SYN_SLOTS - 1)
}

/// What a SYN array slot holds to say which flow it is for: the flow's hash `h`
/// (`flow_hash64` of `key`) with the VIP's address and the family mixed in (the
/// hash leaves them out), never 0 (an empty slot). So a tag names the whole
/// 5-tuple, and a packet whose tag a slot holds is to that SYN's VIP: the
/// handshake's ACK needs no VIP lookup. The mix is keyed and, for an IPv4
/// address, one-to-one but for the low bit (set: 0 is an empty slot), so flows to
/// two VIPs from the same client address and ports share a tag only as any two
/// flows do: with odds of 2^-63, and a client cannot aim at one without the seed.
#[inline(always)]
#[must_use]
pub const fn syn_tag(h: u64, key: &FlowKey, seed: &Seed) -> u64 {
    let k0 = seed[0] as u64 | (seed[1] as u64) << 32;
    let k1 = seed[2] as u64 | (seed[3] as u64) << 32;
    let low = (key.dst[0] as u64 | (key.dst[1] as u64) << 32) ^ k0;
    let high = (key.dst[2] as u64 | (key.dst[3] as u64) << 32) ^ k1 ^ (key.family as u64) << 56;
    (h ^ (low.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ high).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) | 1
}

/// The set of `FLOWS4` (`flow_table`, `mask + 1` sets) of the IPv4 flow whose
/// `FlowKey4::words` are `key`: a multiply-xor mix under the seed, a few
/// instructions for every packet where SipHash would cost ~20 ns. Flows aimed at
/// one set only evict each other (a SYN there then waits in the SYN array), so
/// the mix needs no keyed PRF; the seed still keeps a client from aiming blind.
#[inline(always)]
#[must_use]
pub const fn flow_set(key: [u64; 2], seed: &Seed, mask: u32) -> u32 {
    let k0 = seed[0] as u64 | (seed[1] as u64) << 32;
    let k1 = seed[2] as u64 | (seed[3] as u64) << 32;
    // A product's top bits depend on every bit of the factor, its low bits on few:
    // fold the top half down before the second word joins, and take the set from
    // the topmost bits (the high half times the sets, shifted down). Its middle
    // bits, masked, crowded flows that differ in their ports alone: one seed in
    // six put five of 500 such flows in one of 2048 sets.
    let h = (key[0] ^ k0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let h = (h ^ (h >> 32) ^ key[1] ^ k1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (((h >> 32) * (mask as u64 + 1)) >> 32) as u32
}

/// The outer IPv6 flow label of a tunnelled flow (RFC 6438): the same for every
/// packet of the flow and on every balancer, so routers keep a flow on one path.
/// An unkeyed mix of the whole 5-tuple, cheap enough for every packet: the label
/// only spreads tunnels over paths (a client that aims its flows at one label only
/// puts its own traffic on one path), so the keyed flow hash is not spent on it.
#[inline(always)]
#[must_use]
pub const fn flow_label(key: &FlowKey) -> u32 {
    let mut h = key.src[0] ^ key.src[1] ^ key.src[2] ^ key.src[3];
    h ^= (key.dst[0] ^ key.dst[1] ^ key.dst[2] ^ key.dst[3]).rotate_left(16);
    h ^= (key.ports[0] as u32 | (key.ports[1] as u32) << 16).rotate_left(8);
    h ^= key.proto as u32;
    // MurmurHash3's finaliser: every input bit reaches the label's 20 bits.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & 0x000f_ffff
}

/// A short public name for a seed, to compare balancers' seeds without showing
/// them: the flow hash of an empty flow key (a PRF output reveals nothing of the key).
#[must_use]
pub const fn fingerprint(seed: &Seed) -> u32 {
    flow_hash(
        &FlowKey { src: [0; 4], dst: [0; 4], ports: [0; 2], proto: 0, family: 0, _pad: [0; 2] },
        seed,
    )
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// The 24 bytes `siphash` reads from its three words.
    fn bytes(m: [u64; 3]) -> std::vec::Vec<u8> {
        m.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    #[allow(deprecated, reason = "std's SipHasher is SipHash-2-4: the reference to check against")]
    fn siphash_2_4_matches_the_reference_implementation() {
        use core::hash::Hasher as _;
        let seeds: [Seed; 3] = [
            [0; 4],
            [0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c],
            [0xdead_beef, 1, 0x8000_0000, u32::MAX],
        ];
        let inputs = [
            [0, 0, 0],
            [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908, 0x1716_1514_1312_1110],
            [u64::MAX, 42, 1 << 63],
        ];
        for seed in &seeds {
            for m in inputs {
                let k0 = u64::from(seed[0]) | u64::from(seed[1]) << 32;
                let k1 = u64::from(seed[2]) | u64::from(seed[3]) << 32;
                let mut h = core::hash::SipHasher::new_with_keys(k0, k1);
                h.write(&bytes(m));
                assert_eq!(siphash::<2, 4>(seed, m), h.finish(), "seed {seed:x?}, input {m:x?}");
            }
        }
    }

    #[test]
    fn siphash_2_4_gives_the_published_test_vector() {
        // The SipHash reference (vectors.h, vectors_sip64[24]): key 00..0f, message
        // 00..17, the 24 bytes our input always has.
        let seed = [0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c];
        let m = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908, 0x1716_1514_1312_1110];
        let want = u64::from_le_bytes([0x94, 0xaf, 0x49, 0xf6, 0xc6, 0x50, 0xad, 0xb8]);
        assert_eq!(siphash::<2, 4>(&seed, m), want);
    }

    #[test]
    fn flow_labels_spread_flows_that_differ_in_any_field() {
        let base = FlowKey {
            src: [0x0700_a8c0, 0, 0, 0],
            dst: [0x0100_00cb, 0, 0, 0],
            ports: [40000, 80],
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        let mut labels = std::collections::BTreeSet::new();
        for i in 0..1000u16 {
            let by_port = FlowKey { ports: [i, 80], ..base };
            let by_addr = FlowKey { src: [u32::from(i), 0, 0, 0], ..base };
            let by_vip = FlowKey { dst: [u32::from(i), 0, 0, 0], ..base };
            for k in [by_port, by_addr, by_vip] {
                assert!(flow_label(&k) < 1 << 20, "20 bits");
                labels.insert(flow_label(&k));
            }
        }
        // 3000 flows over 2^20 labels: a handful of collisions at most.
        assert!(labels.len() > 2990, "{} distinct labels of 3000", labels.len());
    }

    #[test]
    fn flow_sets_spread_flows_and_move_with_the_seed() {
        const SETS: u32 = 8192;
        let key = |port: u16, src: u32| {
            crate::FlowKey4 { src, dst: 0x0100_00cb, ports: [port, 80], proto: 6 }.words()
        };
        let sets = |seed: &Seed| -> std::collections::BTreeSet<u32> {
            (0..4096u16).map(|p| flow_set(key(p, 0x0700_a8c0), seed, SETS - 1)).collect()
        };
        // 4096 flows of one client over 8192 sets: ~3200 distinct sets expected
        // if they were random; a mix that ignored the port would give 1.
        let spread = sets(&PUBLIC_SEED);
        assert!(spread.len() > 3000, "{} distinct sets of 4096 flows", spread.len());
        assert!(spread.iter().all(|&s| s < SETS));
        let by_client: std::collections::BTreeSet<u32> =
            (0..4096u32).map(|a| flow_set(key(80, a << 8), &PUBLIC_SEED, SETS - 1)).collect();
        assert!(by_client.len() > 3000, "{} distinct sets by client", by_client.len());
        assert_ne!(spread, sets(&[1, 2, 3, 4]), "another seed, other sets");
    }

    #[test]
    fn flows_that_differ_in_their_source_port_alone_do_not_crowd_a_set() {
        // 500 connections of one client to one VIP, as the packet tests open them,
        // in a table of 2048 sets of four: under any seed, no set gets a fifth.
        let key = |port: u16| {
            crate::FlowKey4 {
                src: 0x0764_33c6,
                dst: 0x0a71_00cb,
                ports: [port.to_be(), 80u16.to_be()],
                proto: 6,
            }
            .words()
        };
        for s in 0..64u32 {
            let seed = [s.wrapping_mul(0x9e37_79b9), !s, s << 7 | 1, s ^ 0x5555_5555];
            let mut load = std::collections::HashMap::<u32, u32>::new();
            for port in 10_000..10_500 {
                *load.entry(flow_set(key(port), &seed, 2047)).or_default() += 1;
            }
            let most = load.values().copied().max().unwrap_or(0);
            assert!(most <= 4, "seed {s}: {most} flows in one set");
        }
    }

    #[test]
    fn flows_from_one_client_and_ports_to_two_vip_addresses_never_share_a_syn_tag() {
        // The flow hash leaves the VIP's address out, so such flows share a SYN
        // slot; the handshake's ACK looks no VIP up and goes by the tag alone.
        let flow = |dst: crate::Addr, family: u8| FlowKey {
            src: [0x0700_a8c0, 0, 0, 0],
            dst,
            ports: [40000, 443],
            proto: 6,
            family,
            ..FlowKey::default()
        };
        for seed in [PUBLIC_SEED, [1, 2, 3, 4]] {
            let h = flow_hash64(&flow([0, 0, 0, 0], 4), &seed);
            let tags: std::collections::BTreeSet<u64> = (0..4096u32)
                .map(|a| flow([0x0000_00cb | a << 8, 0, 0, 0], 4))
                .inspect(|f| assert_eq!(flow_hash64(f, &seed), h, "one slot"))
                .map(|f| syn_tag(h, &f, &seed))
                .collect();
            assert_eq!(tags.len(), 4096, "4096 VIP addresses, 4096 tags");
            assert!(!tags.contains(&0), "0 is an empty slot");
            let v4 = flow([0x0100_00cb, 0, 0, 0], 4);
            let v6 = flow([0x0100_00cb, 0, 0, 0], 6);
            assert_ne!(syn_tag(h, &v4, &seed), syn_tag(h, &v6, &seed), "the family too");
        }
    }

    #[test]
    fn the_seed_changes_every_flows_hash() {
        let flow = |port: u16| FlowKey {
            src: [0x0700_a8c0, 0, 0, 0],
            ports: [port, 80],
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        let other = [1, 2, 3, 4];
        let same = (0..1000)
            .filter(|&p| flow_hash(&flow(p), &PUBLIC_SEED) == flow_hash(&flow(p), &other))
            .count();
        assert_eq!(same, 0);
    }
}
