//! Backend selection: the connection table first, the VIP's Maglev ring on a miss.

use lb_common::{
    Backend, BackendState, ConnValue, Counter, CounterSet, FlowKey, VipMeta, hash::flow_hash,
    limits::RING_SIZE,
};

use crate::{
    maps::{BACKENDS, CONNS, RINGS},
    verdict::{Verdict, bump},
};

const NO_BACKEND: Verdict = Verdict::Drop(Counter::DropNoBackend);

/// Returns the backend index and entry for `flow`.
///
/// A table hit is kept unless its backend is down or the slot was given to another
/// backend since (a dead node's flows move at once, as IPVS `expire_nodest_conn`);
/// a draining backend keeps its hits. A TCP SYN skips the table: a new connection
/// always goes where the ring says, so it never lands on a draining backend.
#[inline(always)]
pub fn backend(
    flow: &FlowKey,
    vip: &VipMeta,
    syn: bool,
    stats: &mut CounterSet,
) -> Result<(u32, &'static Backend), Verdict> {
    if syn {
        bump(stats, Counter::ConnSyn);
    } else if let Some(conn) = unsafe { CONNS.get(flow) } {
        let (index, generation) = (conn.backend, conn.generation);
        if let Some(b) = BACKENDS.get(index)
            && b.generation == generation
            && b.state != BackendState::Down as u8
        {
            bump(stats, Counter::ConnHit);
            return Ok((index, b));
        }
        bump(stats, Counter::ConnRehash);
    } else {
        bump(stats, Counter::ConnMiss);
    }

    let slot = vip.ring.wrapping_mul(RING_SIZE).wrapping_add(flow_hash(flow) % RING_SIZE);
    let index = RINGS.get(slot).ok_or(NO_BACKEND)?.backend;
    // An empty ring holds NO_BACKEND, which is past the end of BACKENDS.
    let b = BACKENDS.get(index).ok_or(NO_BACKEND)?;
    let conn = ConnValue { backend: index, generation: b.generation };
    // A full table evicts (LRU); a failed insert only costs a re-hash later.
    let _ = CONNS.insert(flow, &conn, 0);
    Ok((index, b))
}
