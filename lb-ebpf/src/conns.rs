//! The connection table: IPv4 flows in `CONNS4` under a 16-byte key, IPv6 flows in
//! `CONNS` under the whole `FlowKey`. The kernel hashes and compares the whole key
//! on every lookup and insert, so IPv4 (most traffic) pays for 16 bytes, not 40.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference, as everywhere in the data path (the measured build)"
)]

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    ConnValue, FlowCacheSlot, FlowKey, FlowKey4, family, flow::conn_epoch, hash::Seed,
};

use crate::{
    flow_cache,
    maps::{CONNS, CONNS4},
    select,
};

/// The flow's entry: for IPv4, this CPU's flow cache first, then the table (a
/// found entry fills the cache). `cache_read`: the front asked `cached` already,
/// which only `from_table` then repeats (it returns an up-to-date copy too).
#[inline(always)]
pub fn get(flow: &FlowKey, seed: &Seed, cache_read: bool) -> Option<&'static ConnValue> {
    if flow.family == family::V4 {
        // The table's key is built where the table is read: a cache hit stores none.
        if !cache_read && let Some(conn) = cached(FlowKey4::of(flow).words(), seed) {
            return Some(conn);
        }
        from_table(flow, seed)
    } else {
        unsafe { CONNS.get(flow) }
    }
}

/// The up-to-date copy in this CPU's flow cache of the IPv4 flow whose
/// `FlowKey4::words` are `key`; none sends the flow to the table (`get`).
#[inline(always)]
pub fn cached(key: [u64; 2], seed: &Seed) -> Option<&'static ConnValue> {
    let now = flow_cache::now();
    let set = flow_cache::set(key, seed)?;
    let s = flow_cache::find(unsafe { &mut *set }, key)?;
    (s.stamp == now).then_some(&s.conn)
}

/// `get` for an IPv4 flow whose copy in the cache is missing or out of date, or
/// whose up-to-date copy the front found on a backend not live (`cache_read`). Out of
/// line (a BPF subprogram): inlined, its lookups, inserts and their spills shaped
/// the registers of every hit (~4 ns a hit in `bench xdp`).
#[inline(never)]
fn from_table(flow: &FlowKey, seed: &Seed) -> Option<&'static ConnValue> {
    let words = FlowKey4::of(flow).words();
    let now = flow_cache::now();
    let set = flow_cache::set(words, seed);
    if let Some(s) = set.and_then(|s| flow_cache::find(unsafe { &mut *s }, words))
        && conn_epoch::same_epoch(s.stamp, now)
    {
        if s.stamp == now {
            return Some(&s.conn);
        }
        // The clock stepped: the LRU only sees lookups, and would age out a
        // flow only the cache serves as if it had closed; an entry it
        // evicted meanwhile comes back from the copy (BPF_NOEXIST: never
        // over another CPU's newer entry).
        s.stamp = now;
        if unsafe { CONNS4.get(&FlowKey4::of(flow)) }.is_none() {
            // A SYN since is a new connection on the 5-tuple: the SYN read
            // only the table (`in_table`), so it is this copy that must go.
            if select::syn_pending(flow, seed, &s.conn) {
                s.key = [0; 2];
                return None;
            }
            let _ = CONNS4.insert(&FlowKey4::of(flow), &s.conn, u64::from(BPF_NOEXIST));
        }
        core::hint::black_box(());
        return Some(&s.conn);
    }
    let conn = unsafe { CONNS4.get(&FlowKey4::of(flow)) };
    // Keeps LLVM from merging the two lookups into one call on a choice of
    // maps, which the verifier cannot inline (a helper call: ~15 ns a packet).
    core::hint::black_box(());
    if let (Some(c), Some(s)) = (conn, set) {
        flow_cache::fill(unsafe { &mut *s }, FlowCacheSlot { key: words, conn: *c, stamp: now });
    }
    conn
}

/// The flow's table entry, for a SYN's reused-5-tuple check: the table alone,
/// because a new flow's cache set is a cold line (~100 ns a SYN of a new flow,
/// what a SYN flood sends). The table holds every flow a hit served before the
/// last clock step (`get` puts an evicted entry back then); a copy idle since
/// whose entry the LRU evicted gives way on its next packet to the pending SYN
/// (`get`). Only a copy whose entry went within the current clock step (a full
/// table evicting a flow used within the second) still takes the handshake's ACK.
#[inline(always)]
pub fn in_table(flow: &FlowKey) -> Option<&'static ConnValue> {
    if flow.family == family::V4 {
        let conn = unsafe { CONNS4.get(&FlowKey4::of(flow)) };
        // Two inlined lookups, not one call on a choice of maps (see `get`).
        core::hint::black_box(());
        conn
    } else {
        unsafe { CONNS.get(flow) }
    }
}

/// Takes the flow out of the table (nothing if it is not there) and out of this
/// CPU's flow cache; out of every CPU's too (an epoch bump) when `elsewhere`: its
/// next packet may come on another CPU that holds a copy, and the copy would
/// mislead it. A bump voids every cached flow, so it is kept for entries that
/// must not be followed (a client's routine port reuse would otherwise void the
/// cache many times a second on a busy site).
#[inline(always)]
pub fn remove(flow: &FlowKey, seed: &Seed, elsewhere: bool) {
    if flow.family == family::V4 {
        let key = FlowKey4::of(flow);
        let _ = CONNS4.remove(&key);
        core::hint::black_box(());
        if elsewhere {
            flow_cache::bump();
        } else {
            flow_cache::forget(key.words(), seed);
        }
    } else {
        let _ = CONNS.remove(flow);
    }
}

/// Puts the flow in the table, and in this CPU's flow cache. A full table evicts
/// (LRU); a failed insert only costs a re-hash later.
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &ConnValue, seed: &Seed) {
    if flow.family == family::V4 {
        let key = FlowKey4::of(flow);
        let words = key.words();
        // Before the write: a bump in between then voids the slot.
        let now = flow_cache::now();
        let _ = CONNS4.insert(&key, conn, 0);
        core::hint::black_box(());
        if let Some(s) = flow_cache::set(words, seed) {
            flow_cache::fill(
                unsafe { &mut *s },
                FlowCacheSlot { key: words, conn: *conn, stamp: now },
            );
        }
    } else {
        let _ = CONNS.insert(flow, conn, 0);
    }
}
