//! Backend selection: the connection table first; on a miss, the SYN array for a
//! handshake's ACK, else the VIP's Maglev ring.
//!
//! A table hit is kept unless its backend is down or the slot was given to another
//! backend since (a dead node's flows move at once, as IPVS `expire_nodest_conn`);
//! a draining backend keeps its hits. A TCP SYN skips the table: a new connection
//! always goes where the ring says, so it never lands on a draining backend.
//!
//! A SYN does not enter the table established: an IPv4 SYN waits as a pending way
//! of its flow's set (`flow_table`), which never takes an established flow's way;
//! an IPv6 SYN, or an IPv4 one whose set holds established flows in every way,
//! waits in the SYN array. The handshake's ACK makes the flow established there. The
//! table's established entries are therefore only flows that completed a
//! handshake, so spoofed SYNs cannot evict established flows; and the ACK follows
//! its SYN even when the ring changed in between, unless that backend went down.
//! A flow that sends data without a handshake seen here (UDP, a flow from before a
//! restart or another balancer's) enters as picked up: an IPv4 one takes no
//! established flow's way, so forged mid-flow packets cannot evict those either.
//!
//! Each step also says what the packet counts for its backend's `Handshakes` (the
//! passive health signal): a SYN; a SYN for a flow the table (pending or
//! established) or the SYN array already holds (a retransmission, or a reused
//! 5-tuple); the packet that makes a pending flow established (a completed
//! handshake, once per flow).

use lb_common::{
    Backend, BackendState, ConnValue, Counter, FlowKey, FlowKey4, Handshakes, LbConfig, SynSlot,
    VipMeta, family,
    flow_table::State,
    hash::{flow_hash64, ring_hash, syn_slot, syn_tag},
    limits::RING_SIZE,
};

use crate::{
    conns, flow_table,
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
pub fn established(flow: &FlowKey, cfg: &LbConfig) -> Lookup {
    looked_up(conns::get(flow, cfg))
}

#[inline(always)]
fn looked_up(conn: Option<ConnValue>) -> Lookup {
    let Some(conn) = conn else {
        return Lookup::Miss;
    };
    let index = conn.backend;
    match live(index, conn.generation) {
        Some(b) => Lookup::Hit(index, b),
        None => Lookup::Stale,
    }
}

/// `established` for an IPv4 flow the front read (`parse::front_flow`), whose
/// `FlowKey4::words` are `key`.
#[inline(always)]
pub fn established4(key: [u64; 2], cfg: &LbConfig) -> Lookup {
    looked_up(flow_table::established(key, cfg))
}

/// The backend at `index` if it still holds the slot (`generation`) and is not down.
#[inline(always)]
fn live(index: u32, generation: u32) -> Option<&'static Backend> {
    BACKENDS
        .get(index)
        .filter(|b| b.generation == generation && b.state != BackendState::Down as u8)
}

/// A new TCP connection (a SYN): the ring's pick, remembered as a pending way of
/// the flow's set (IPv4) or in the SYN array; and what the SYN counts (`SYN`,
/// `SYN_RETRANSMIT`). Out of line (a BPF subprogram): inlined, it grew the
/// benchmarks' `xdp_lb_timed` past what LLVM inlines `balance` into (a call in
/// every packet's path there, ~6 ns, which `xdp_lb` does not pay).
#[inline(never)]
pub fn syn(
    flow: &FlowKey,
    vip: &VipMeta,
    cfg: &LbConfig,
) -> Result<(u32, &'static Backend, u8), Verdict> {
    let seed = &cfg.hash_seed;
    let h = flow_hash64(flow, seed);
    let (index, b) = from_ring(vip, h)?;
    let conn = ConnValue { backend: index, generation: b.generation };
    let mut known = false;
    if flow.family == family::V4 {
        let key = FlowKey4::of(flow).words();
        let set = flow_table::set(key, cfg).ok_or(NO_BACKEND)?;
        // Over the flow's own way, if any: a retransmission, or an earlier
        // connection on the 5-tuple, whose entry the handshake's ACK must not follow.
        if flow_table::pend(set, key, conn, &mut known) {
            return Ok((index, b, SYN | (u8::from(known) * SYN_RETRANSMIT)));
        }
        // Established flows hold every way of the set (none this one's): the SYN array.
    }
    let tag = syn_tag(h, flow, seed);
    // SAFETY: a map value; a racing SYN on another CPU for the same slot costs at
    // most that handshake's ACK following the ring instead.
    let slot = unsafe { &mut *SYNS.get_ptr_mut(syn_slot(h)).ok_or(NO_BACKEND)? };
    // A retransmission: this VIP's handshake of the flow is still pending (its
    // next packet empties the slot), so its first SYN took out any earlier entry
    // and the table lookup would find none. An IPv4 flow here is in no set.
    let pending = holds(slot, tag, vip.index);
    known = pending || slot.tag == tag;
    if !pending && flow.family != family::V4 {
        // An entry for this 5-tuple is an earlier connection's (a reused client port,
        // a draining backend's flow): the handshake's ACK would follow it, not this SYN.
        if conns::get(flow, cfg).is_some() {
            conns::remove_v6(flow);
            known = true;
        }
    }
    *slot = SynSlot { tag, backend: index, generation: b.generation };
    Ok((index, b, SYN | (u8::from(known) * SYN_RETRANSMIT)))
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

/// A TCP packet that is no SYN, of an IPv4 flow the table does not hold
/// established (or names a dead backend for), whose SYN waits as a pending way of
/// its set: a completed handshake. It goes where its SYN went, unless that backend
/// is down, and the flow becomes established there, in place. The way's key is
/// the whole 5-tuple, so the packet is to the SYN's VIP: no VIP lookup (~20 ns of
/// the inserting ACK by `bench xdp`'s first method), and no flow hash: the set is
/// the line the packet read already. A pending way whose backend is down is
/// emptied; none: the SYN array (`completed`), then the VIP's ring (`first`).
#[inline(always)]
pub fn completed_in_set(flow: &FlowKey, cfg: &LbConfig) -> Option<(u32, &'static Backend)> {
    if flow.family != family::V4 {
        return None;
    }
    let key = FlowKey4::of(flow).words();
    let (way, w, State::Pending) = flow_table::find(flow_table::set(key, cfg)?, key)? else {
        return None;
    };
    let Some(b) = live(w.conn.backend, w.conn.generation) else {
        flow_table::clear(way);
        return None;
    };
    flow_table::establish(way, &w);
    Some((w.conn.backend, b))
}

/// As `completed_in_set`, for a flow (hash `h`) whose SYN waits in the SYN array
/// (an IPv6 flow's, or an IPv4 one whose set held only established flows): the
/// flow enters the table there. The slot's tag names the whole 5-tuple
/// (`syn_tag`): no VIP lookup either. The flow's packet empties the slot either
/// way; none: the VIP's ring decides (`first`).
#[inline(always)]
pub fn completed(flow: &FlowKey, h: u64, cfg: &LbConfig) -> Option<(u32, &'static Backend)> {
    // SAFETY: a map value (see `syn`).
    let slot = unsafe { &mut *SYNS.get_ptr_mut(syn_slot(h))? };
    if slot.tag != syn_tag(h, flow, &cfg.hash_seed) {
        return None;
    }
    slot.tag = 0;
    let index = slot.backend;
    let b = live(index, slot.generation)?;
    conns::insert(flow, &ConnValue { backend: index, generation: b.generation }, cfg);
    Some((index, b))
}

/// A packet of a flow (hash `h`) the table does not hold (or names a dead backend
/// for) and that completes no handshake (`completed`): an ICMP error goes where a
/// pending SYN of the flow went, anything else where the ring says, and the flow
/// enters the table picked up (but for an ICMP error).
#[inline(always)]
pub fn first(
    flow: &FlowKey,
    h: u64,
    vip: &VipMeta,
    cfg: &LbConfig,
    missed: Missed,
) -> Result<(u32, &'static Backend), Verdict> {
    let pending = if missed == Missed::IcmpError { pending(flow, h, vip, cfg) } else { None };
    let (index, b) = if let Some((index, b)) = pending { (index, b) } else { from_ring(vip, h)? };
    if missed != Missed::IcmpError {
        conns::pick_up(flow, &ConnValue { backend: index, generation: b.generation }, cfg);
    }
    Ok((index, b))
}

/// For an ICMP error quoting the flow with hash `h`: the backend the flow's SYN
/// went to, if it waits pending in the flow's set or the SYN array (to this VIP:
/// `holds`) and the backend is not down. It stays pending: the flow's own packets
/// complete it.
#[inline(always)]
fn pending(
    flow: &FlowKey,
    h: u64,
    vip: &VipMeta,
    cfg: &LbConfig,
) -> Option<(u32, &'static Backend)> {
    let key = FlowKey4::of(flow).words();
    let syn = if flow.family == family::V4
        && let Some((_, w, State::Pending)) =
            flow_table::set(key, cfg).and_then(|set| flow_table::find(set, key))
    {
        SynSlot { tag: 0, backend: w.conn.backend, generation: w.conn.generation }
    } else {
        let slot = SYNS.get(syn_slot(h))?;
        if slot.tag != syn_tag(h, flow, &cfg.hash_seed) {
            return None;
        }
        *slot
    };
    if BACKENDS.get(syn.backend).is_none_or(|b| b.vip != vip.index) {
        return None;
    }
    live(syn.backend, syn.generation).map(|b| (syn.backend, b))
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
