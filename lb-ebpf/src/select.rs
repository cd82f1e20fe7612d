//! Backend selection: the connection table first, the VIP's Maglev ring on a miss.
//!
//! A table hit is kept unless its backend is down or the slot was given to another
//! backend since (a dead node's flows move at once, as IPVS `expire_nodest_conn`);
//! a draining backend keeps its hits. A TCP SYN skips the table: a new connection
//! always goes where the ring says, so it never lands on a draining backend.
//!
//! Both count what the packet says about the flow's handshake (`Handshakes`, the
//! passive health signal): a SYN, a SYN for a flow already in the table (a
//! retransmission), the first client packet after a SYN (a completed handshake,
//! once per flow through a flag in the entry). Constant cost: the SYN's insert
//! itself tells a retransmission (`BPF_NOEXIST` fails), the flag is written once.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    Backend, BackendState, ConnValue, Counter, FlowKey, Handshakes, VipMeta,
    conn_flags::AWAITING_HANDSHAKE,
    hash::{Seed, flow_hash},
    limits::RING_SIZE,
};

use crate::{
    maps::{BACKENDS, CONNS, RINGS},
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
/// What `bpf_map_update_elem` returns for `BPF_NOEXIST` on a present key.
const EEXIST: i32 = -17;

/// What the connection table says about a flow.
pub enum Lookup {
    /// A live backend (index, entry): use it; and what the packet counts for it
    /// (`COMPLETED` or nothing).
    Hit(u32, &'static Backend, u8),
    /// An entry whose backend is down or was replaced: re-hash.
    Stale,
    Miss,
}

/// The table's backend for a packet that is no SYN; `client`: the packet is the
/// flow's own (not an ICMP error quoting it), so it can complete a handshake.
#[inline(always)]
pub fn established(flow: &FlowKey, client: bool) -> Lookup {
    let Some(conn) = CONNS.get_ptr_mut(flow) else {
        return Lookup::Miss;
    };
    // An entry evicted and reused under us (LRU) miscounts one handshake at worst.
    let conn = unsafe { &mut *conn };
    let (index, generation) = (conn.backend, conn.generation);
    match BACKENDS.get(index) {
        Some(b) if b.generation == generation && b.state != BackendState::Down as u8 => {
            let completed = client && conn.flags & AWAITING_HANDSHAKE != 0;
            if completed {
                // Written once per flow, so later hits leave the entry's cache line clean.
                conn.flags &= !AWAITING_HANDSHAKE;
            }
            Lookup::Hit(index, b, if completed { COMPLETED } else { 0 })
        }
        _ => Lookup::Stale,
    }
}

/// The backend the VIP's ring gives `flow`, remembered in the connection table,
/// and what the packet counts for it (`syn`: a TCP SYN).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map values go by reference, as everywhere in the data path"
)]
pub fn from_ring(
    flow: &FlowKey,
    vip: &VipMeta,
    seed: &Seed,
    syn: bool,
) -> Result<(u32, &'static Backend, u8), Verdict> {
    let slot = vip.ring.wrapping_mul(RING_SIZE).wrapping_add(flow_hash(flow, seed) % RING_SIZE);
    let index = RINGS.get(slot).ok_or(NO_BACKEND)?.backend;
    // An empty ring holds NO_BACKEND, which is past the end of BACKENDS.
    let b = BACKENDS.get(index).ok_or(NO_BACKEND)?;
    let flags = if syn { AWAITING_HANDSHAKE } else { 0 };
    let conn = ConnValue { backend: index, generation: b.generation, flags };
    // A full table evicts (LRU); a failed insert only costs a re-hash later. A SYN
    // inserts only where there is no entry, so a new flow pays one insert as
    // before; the refusal is a retransmission, whose entry takes the ring's pick
    // in place.
    let mut retransmit = false;
    if !syn {
        let _ = CONNS.insert(flow, &conn, u64::from(BPF_ANY));
    } else if CONNS.insert(flow, &conn, u64::from(BPF_NOEXIST)) == Err(EEXIST) {
        retransmit = true;
        match CONNS.get_ptr_mut(flow) {
            Some(entry) => unsafe { *entry = conn },
            // Evicted since: insert.
            None => {
                let _ = CONNS.insert(flow, &conn, u64::from(BPF_ANY));
            }
        }
    }
    Ok((index, b, (u8::from(syn) * SYN) | (u8::from(retransmit) * SYN_RETRANSMIT)))
}
