//! Backend selection: the connection table first; on a miss, the SYN array for a
//! handshake's ACK, else the VIP's Maglev ring.
//!
//! A table hit is kept unless its backend is down or the slot was given to another
//! backend since (a dead node's flows move at once, as IPVS `expire_nodest_conn`);
//! a draining backend keeps its hits. A TCP SYN skips the table: a new connection
//! always goes where the ring says, so it never lands on a draining backend.
//!
//! A SYN does not enter the table: the SYN array remembers its backend, and the
//! handshake's ACK puts the flow in the table there. The table therefore holds only
//! flows that completed a handshake (or sent data: UDP, flows from before a
//! restart), so spoofed SYNs cannot evict established flows; and the ACK follows
//! its SYN even when the ring changed in between, unless that backend went down.
//!
//! Each step also says what the packet counts for its backend's `Handshakes` (the
//! passive health signal): a SYN; a SYN for a flow the SYN array or the table
//! already holds (a retransmission, or a reused 5-tuple); the packet that takes a
//! flow from the SYN array into the table (a completed handshake, once per flow).

use lb_common::{
    Backend, BackendState, ConnValue, Counter, FlowKey, Handshakes, SynSlot, VipMeta,
    hash::{Seed, flow_hash64, ring_hash, syn_slot, syn_tag},
    limits::RING_SIZE,
};

use crate::{
    conns,
    maps::{BACKENDS, RINGS, SYNS},
    verdict::Verdict,
};

const NO_BACKEND: Verdict = Verdict::Drop(Counter::DropNoBackend);

/// What a packet counts for its backend's `Handshakes`: bits, so a table hit
/// carries one byte and most packets add nothing.
pub const SYN: u8 = 1;
pub const SYN_RETRANSMIT: u8 = 1 << 1;
pub const COMPLETED: u8 = 1 << 2;

/// Adds a packet's `counts` (bits above) to its backend's.
#[inline(always)]
pub fn count(h: &mut Handshakes, counts: u8) {
    h.syns += u64::from(counts & SYN);
    h.syn_retransmits += u64::from((counts & SYN_RETRANSMIT) >> 1);
    h.completed += u64::from((counts & COMPLETED) >> 2);
}

/// What the connection table says about a flow.
pub enum Lookup {
    /// A live backend (index, entry): use it.
    Hit(u32, &'static Backend),
    /// An entry whose backend is down or was replaced: re-hash.
    Stale,
    Miss,
}

#[inline(always)]
pub fn established(flow: &FlowKey, seed: &Seed, cache_read: bool) -> Lookup {
    let Some(conn) = conns::get(flow, seed, cache_read) else {
        return Lookup::Miss;
    };
    let index = conn.backend;
    match live(index, conn.generation) {
        Some(b) => Lookup::Hit(index, b),
        None => Lookup::Stale,
    }
}

/// `established` for an IPv4 flow the front read (`parse::front_flow`): a hit in
/// this CPU's flow cache on a live backend; anything else is `established`'s.
#[inline(always)]
pub fn cached(key: [u64; 2], seed: &Seed) -> Option<(u32, &'static Backend)> {
    let conn = conns::cached(key, seed)?;
    live(conn.backend, conn.generation).map(|b| (conn.backend, b))
}

/// The backend at `index` if it still holds the slot (`generation`) and is not down.
#[inline(always)]
fn live(index: u32, generation: u32) -> Option<&'static Backend> {
    BACKENDS
        .get(index)
        .filter(|b| b.generation == generation && b.state != BackendState::Down as u8)
}

/// A new TCP connection (a SYN): the ring's pick, remembered in the SYN array; and
/// what the SYN counts (`SYN`, `SYN_RETRANSMIT`).
#[inline(always)]
pub fn syn(
    flow: &FlowKey,
    vip: &VipMeta,
    seed: &Seed,
) -> Result<(u32, &'static Backend, u8), Verdict> {
    let h = flow_hash64(flow, seed);
    let tag = syn_tag(h, flow, seed);
    let (index, b) = from_ring(vip, h)?;
    // SAFETY: a map value; a racing SYN on another CPU for the same slot costs at
    // most that handshake's ACK following the ring instead.
    let slot = unsafe { &mut *SYNS.get_ptr_mut(syn_slot(h)).ok_or(NO_BACKEND)? };
    // A retransmission: this VIP's handshake of the flow is still pending (its
    // next packet empties the slot), so its first SYN took out any earlier entry
    // and the table lookup would find none.
    let pending = holds(slot, tag, vip.index);
    let mut known = pending;
    if !pending {
        // An entry for this 5-tuple is an earlier connection's (a reused client port,
        // a draining backend's flow): the handshake's ACK would follow it, not this SYN.
        let old = conns::in_table(flow).copied();
        if let Some(old) = old {
            // Only an entry that names another backend can mislead the handshake's
            // ACK on another CPU (a client's routine port reuse keeps its backend).
            conns::remove(flow, seed, old.backend != index || old.generation != b.generation);
        }
        known = old.is_some() || slot.tag == tag;
    }
    *slot = SynSlot { tag, backend: index, generation: b.generation };
    Ok((index, b, SYN | (u8::from(known) * SYN_RETRANSMIT)))
}

/// True when the SYN array holds a SYN of the flow that none of its packets has
/// followed yet, to the VIP of `conn`'s backend (`holds`): a new connection on the
/// flow's 5-tuple.
#[inline(always)]
pub fn syn_pending(flow: &FlowKey, seed: &Seed, conn: &ConnValue) -> bool {
    let h = flow_hash64(flow, seed);
    SYNS.get(syn_slot(h))
        .zip(BACKENDS.get(conn.backend))
        .is_some_and(|(slot, b)| holds(slot, syn_tag(h, flow, seed), b.vip))
}

/// Whether `slot` holds the SYN of the flow with tag `tag` (`syn_tag`) to the VIP
/// with index `vip`: the tag names the VIP's address, not the VIP, which may have
/// been replaced since the SYN.
#[inline(always)]
fn holds(slot: &SynSlot, tag: u64, vip: u32) -> bool {
    slot.tag == tag && BACKENDS.get(slot.backend).is_some_and(|b| b.vip == vip)
}

/// What kind of packet missed the table, for [`first`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// A TCP packet of the flow that is no SYN: may complete a handshake.
    TcpClient,
    /// An ICMP error quoting the flow: follows a pending handshake, completes none,
    /// and leaves the table alone (the flow's own packets decide its entry).
    IcmpError,
    /// Anything else (UDP): the ring's pick.
    Other,
}

/// A TCP packet that is no SYN, of a flow (hash `h`) the table does not hold (or
/// names a dead backend for), whose SYN the SYN array holds: a completed handshake.
/// It goes where its SYN went, unless that backend is down, and the flow enters the
/// table there. The slot's tag names the whole 5-tuple (`syn_tag`), so the packet
/// is to the SYN's VIP: no VIP lookup (~20 ns of the inserting ACK by `bench xdp`'s
/// first method). The flow's packet empties the slot either way; none: the VIP's
/// ring decides (`first`).
#[inline(always)]
pub fn completed(flow: &FlowKey, h: u64, seed: &Seed) -> Option<(u32, &'static Backend)> {
    // SAFETY: a map value (see `syn`).
    let slot = unsafe { &mut *SYNS.get_ptr_mut(syn_slot(h))? };
    if slot.tag != syn_tag(h, flow, seed) {
        return None;
    }
    slot.tag = 0;
    let index = slot.backend;
    let b = live(index, slot.generation)?;
    conns::insert(flow, &ConnValue { backend: index, generation: b.generation }, seed);
    Some((index, b))
}

/// A packet of a flow (hash `h`) the table does not hold (or names a dead backend
/// for) and that completes no handshake (`completed`): an ICMP error goes where a
/// pending SYN of the flow went, anything else where the ring says, and the flow
/// enters the table (but for an ICMP error).
#[inline(always)]
pub fn first(
    flow: &FlowKey,
    h: u64,
    vip: &VipMeta,
    seed: &Seed,
    missed: Missed,
) -> Result<(u32, &'static Backend), Verdict> {
    let pending = if missed == Missed::IcmpError { pending(flow, h, vip, seed) } else { None };
    let (index, b) = if let Some((index, b)) = pending { (index, b) } else { from_ring(vip, h)? };
    if missed != Missed::IcmpError {
        conns::insert(flow, &ConnValue { backend: index, generation: b.generation }, seed);
    }
    Ok((index, b))
}

/// For an ICMP error quoting the flow with hash `h`: the backend the flow's SYN
/// went to, if the SYN array still holds it (to this VIP: `holds`) and the
/// backend is not down. The slot stays: the flow's own packets empty it.
#[inline(always)]
fn pending(flow: &FlowKey, h: u64, vip: &VipMeta, seed: &Seed) -> Option<(u32, &'static Backend)> {
    let slot = SYNS.get(syn_slot(h))?;
    if !holds(slot, syn_tag(h, flow, seed), vip.index) {
        return None;
    }
    live(slot.backend, slot.generation).map(|b| (slot.backend, b))
}

/// The backend the VIP's ring gives the flow with hash `h`.
#[inline(always)]
fn from_ring(vip: &VipMeta, h: u64) -> Result<(u32, &'static Backend), Verdict> {
    let slot = vip.ring.wrapping_mul(RING_SIZE).wrapping_add(ring_hash(h) % RING_SIZE);
    let index = RINGS.get(slot).ok_or(NO_BACKEND)?.backend;
    // An empty ring holds NO_BACKEND, which is past the end of BACKENDS.
    let b = BACKENDS.get(index).ok_or(NO_BACKEND)?;
    Ok((index, b))
}
