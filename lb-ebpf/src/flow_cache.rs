//! The flow cache: per CPU, a direct-mapped copy of IPv4 flows' connection-table
//! entries (`FLOW_CACHE`, a region for each CPU), so a table hit reads one cache
//! line instead of the LRU table's bucket and element (its lookup was ~40 of a
//! hit's ~80 ns, more once the table's lines fall out of the CPU's caches).
//!
//! A slot holds while its stamp's epoch is `CONN_EPOCH`'s. Whoever changes an
//! entry that another CPU may have copied bumps the epoch after the change: peer
//! sync, the map writer when a backend goes down, and a SYN that takes out a
//! reused 5-tuple's entry naming another backend than the SYN's (its handshake's
//! ACK may come on another CPU; one naming the SYN's own backend only leaves this
//! CPU's slot, `forget`). A CPU updates its own slot when it writes the table.
//! When the controller's clock steps, a hit tells the table the flow is alive
//! (`conns::get`); an entry the LRU evicts meanwhile keeps its slot and comes back.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_common::{
    FlowCacheSlot,
    flow::conn_epoch,
    hash::{Seed, cache_slot},
    limits::FLOW_CACHE_SLOTS,
};

use crate::maps::{CONN_EPOCH, FLOW_CACHE};

/// The epoch and clock now (`FlowCacheSlot::stamp`). Read before the table: a
/// slot filled from a table read made after a bump then carries the bumped epoch.
#[inline(always)]
pub fn now() -> u64 {
    CONN_EPOCH.get(0).map_or(0, |e| unsafe { core::ptr::read_volatile(e) })
}

/// This CPU's slot for the flow whose `FlowKey4::words` are `key`, in this CPU's
/// region (only this CPU's program touches it); none on a CPU past the regions.
#[inline(always)]
pub fn slot(key: [u64; 2], seed: &Seed) -> Option<*mut FlowCacheSlot> {
    // The verifier inlines this helper (a per-CPU variable read).
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    FLOW_CACHE.get_ptr_mut(cpu.wrapping_mul(FLOW_CACHE_SLOTS).wrapping_add(cache_slot(key, seed)))
}

/// Empties this CPU's slot for the flow whose `FlowKey4::words` are `key`, if the
/// slot holds it (another flow's copy in that slot stays).
#[inline(always)]
pub fn forget(key: [u64; 2], seed: &Seed) {
    if let Some(s) = slot(key, seed) {
        // SAFETY: this CPU's slot (see `slot`).
        let s = unsafe { &mut *s };
        if s.key == key {
            s.key = [0; 2];
        }
    }
}

/// Makes every CPU's slots out of date.
#[inline(always)]
pub fn bump() {
    if let Some(e) = CONN_EPOCH.get_ptr_mut(0) {
        // SAFETY: an aligned u64 map value. An atomic add (BPF has no
        // compare-and-swap, so `AtomicU64::fetch_add` does not exist here).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(e, conn_epoch::BUMP) };
    }
}
