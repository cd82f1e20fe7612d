//! The flow cache: per CPU, copies of IPv4 flows' connection-table entries
//! (`FLOW_CACHE`, a region of two-slot sets for each CPU), so a table hit reads one
//! cache line instead of the LRU table's bucket and element (its lookup was ~40 of
//! a hit's ~80 ns, more once the table's lines fall out of the CPU's caches). Two
//! slots a set: direct-mapped, ~22% of 4096 random flows on a CPU shared their
//! slot with another and went to the table on every packet.
//!
//! A slot holds while its stamp's epoch is `CONN_EPOCH`'s. Whoever changes an
//! entry that another CPU may have copied bumps the epoch after the change: peer
//! sync, the map writer when a backend goes down, and a SYN that takes out a
//! reused 5-tuple's entry naming another backend than the SYN's (its handshake's
//! ACK may come on another CPU; one naming the SYN's own backend only leaves this
//! CPU's slot, `forget`). A CPU updates its own slot when it writes the table.
//! When the controller's clock steps, a hit tells the table the flow is alive
//! (`conns::get`); an entry the LRU evicts meanwhile keeps its slot and comes back,
//! unless a SYN of a new connection on its 5-tuple is pending (a SYN reads only the
//! table: `conns::in_table`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_common::{
    FlowCacheSet, FlowCacheSlot,
    flow::conn_epoch,
    hash::{Seed, cache_set},
    limits::FLOW_CACHE_SETS,
};

use crate::maps::{CONN_EPOCH, FLOW_CACHE};

/// The epoch and clock now (`FlowCacheSlot::stamp`). Read before the table: a
/// slot filled from a table read made after a bump then carries the bumped epoch.
#[inline(always)]
pub fn now() -> u64 {
    CONN_EPOCH.get(0).map_or(0, |e| unsafe { core::ptr::read_volatile(e) })
}

/// This CPU's set for the flow whose `FlowKey4::words` are `key`, in this CPU's
/// region (only this CPU's program touches it); none on a CPU past the regions.
#[inline(always)]
pub fn set(key: [u64; 2], seed: &Seed) -> Option<*mut FlowCacheSet> {
    // The verifier inlines this helper (a per-CPU variable read).
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    FLOW_CACHE.get_ptr_mut(cpu.wrapping_mul(FLOW_CACHE_SETS).wrapping_add(cache_set(key, seed)))
}

/// The slot of `set` that holds the flow whose `FlowKey4::words` are `key`.
#[inline(always)]
pub fn find(set: &mut FlowCacheSet, key: [u64; 2]) -> Option<&mut FlowCacheSlot> {
    let [first, second] = &mut set.ways;
    if first.key == key {
        Some(first)
    } else if second.key == key {
        Some(second)
    } else {
        None
    }
}

/// Puts `copy` in `set`'s first slot. Another flow there moves to the second
/// slot, whose flow (the one filled longest ago) leaves; an older copy of the
/// same flow is overwritten where it is, or pushed out of the second slot.
#[inline(always)]
pub fn fill(set: &mut FlowCacheSet, copy: FlowCacheSlot) {
    if set.ways[0].key != copy.key {
        set.ways[1] = set.ways[0];
    }
    set.ways[0] = copy;
}

/// Empties this CPU's slot for the flow whose `FlowKey4::words` are `key`, if its
/// set holds it (other flows' copies stay).
#[inline(always)]
pub fn forget(key: [u64; 2], seed: &Seed) {
    if let Some(set) = set(key, seed) {
        // SAFETY: this CPU's set (see `set`).
        if let Some(s) = find(unsafe { &mut *set }, key) {
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
