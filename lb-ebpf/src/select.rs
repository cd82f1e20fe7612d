//! Backend selection: the connection table first, the VIP's Maglev ring on a miss.
//!
//! A table hit is kept unless its backend is down or the slot was given to another
//! backend since (a dead node's flows move at once, as IPVS `expire_nodest_conn`);
//! a draining backend keeps its hits. A TCP SYN skips the table: a new connection
//! always goes where the ring says, so it never lands on a draining backend.

use lb_common::{
    Backend, BackendState, ConnValue, Counter, FlowKey, VipMeta,
    hash::{Seed, flow_hash},
    limits::RING_SIZE,
};

use crate::{
    maps::{BACKENDS, CONNS, RINGS},
    verdict::Verdict,
};

const NO_BACKEND: Verdict = Verdict::Drop(Counter::DropNoBackend);

/// What the connection table says about a flow.
pub enum Lookup {
    /// A live backend (index, entry): use it.
    Hit(u32, &'static Backend),
    /// An entry whose backend is down or was replaced: re-hash.
    Stale,
    Miss,
}

#[inline(always)]
pub fn established(flow: &FlowKey) -> Lookup {
    let Some(conn) = (unsafe { CONNS.get(flow) }) else {
        return Lookup::Miss;
    };
    let (index, generation) = (conn.backend, conn.generation);
    match BACKENDS.get(index) {
        Some(b) if b.generation == generation && b.state != BackendState::Down as u8 => {
            Lookup::Hit(index, b)
        }
        _ => Lookup::Stale,
    }
}

/// The backend the VIP's ring gives `flow`, remembered in the connection table.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map values go by reference, as everywhere in the data path"
)]
pub fn from_ring(
    flow: &FlowKey,
    vip: &VipMeta,
    seed: &Seed,
) -> Result<(u32, &'static Backend), Verdict> {
    let slot = vip.ring.wrapping_mul(RING_SIZE).wrapping_add(flow_hash(flow, seed) % RING_SIZE);
    let index = RINGS.get(slot).ok_or(NO_BACKEND)?.backend;
    // An empty ring holds NO_BACKEND, which is past the end of BACKENDS.
    let b = BACKENDS.get(index).ok_or(NO_BACKEND)?;
    let conn = ConnValue { backend: index, generation: b.generation };
    // A full table evicts (LRU); a failed insert only costs a re-hash later.
    let _ = CONNS.insert(flow, &conn, 0);
    Ok((index, b))
}
