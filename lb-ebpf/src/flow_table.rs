//! `FLOWS4`, the IPv4 connection table (`lb_common::flow_table`): the one set a
//! flow's key hashes to, read and written in place. Ways are read whole
//! (`load`, then `FlowWay::state`) and written in `store`'s order, so a way
//! another CPU is writing reads as empty, never as another flow's entry.

use lb_common::{
    ConnValue, FlowSet, FlowWay, LbConfig,
    flow_table::{SERVED_MASK, State, WAYS, load, seal, store},
    hash::flow_set,
};

use crate::maps::{CONN_EPOCH, FLOWS4};

/// The controller's clock now (`flow::conn_epoch`'s high half).
#[inline(always)]
pub fn clock() -> u32 {
    (CONN_EPOCH.get(0).map_or(0, |e| unsafe { core::ptr::read_volatile(e) }) >> 32) as u32
}

/// The flow's set: the two lines every lookup and write of it touches.
#[inline(always)]
pub fn set(key: [u64; 2], cfg: &LbConfig) -> Option<*mut FlowSet> {
    FLOWS4.get_ptr_mut(flow_set(key, &cfg.flow_seed, cfg.flow_sets_mask))
}

/// The way of `set` whose key is `key`, whole or not.
#[inline(always)]
fn position(set: *mut FlowSet, key: [u64; 2]) -> Option<*mut FlowWay> {
    // SAFETY: a map value; a constant bound (the loop unrolls).
    (0..WAYS).map(|i| unsafe { &raw mut (*set).ways[i] }).find(|&w| unsafe { (*w).key } == key)
}

/// The way of `set` that holds the flow `key`, and what it holds, read whole.
#[inline(always)]
pub fn find(set: *mut FlowSet, key: [u64; 2]) -> Option<(*mut FlowWay, FlowWay, State)> {
    let way = position(set, key)?;
    // SAFETY: a map value; ways are read word by word (see the module text).
    let w = unsafe { load(way) };
    let state = w.state().filter(|_| w.key == key)?;
    Some((way, w, state))
}

/// The flow's established (or picked) entry; a packet that uses it stamps it with
/// the clock (once a clock step: most packets write nothing), which keeps it from
/// being the way its set gives up first. Every packet's path: plain reads (the
/// seal, not their order, tells a whole way), one compare for the key's way, one
/// for its seal, masked to take either served state.
#[inline(always)]
pub fn established(key: [u64; 2], cfg: &LbConfig) -> Option<ConnValue> {
    let way = position(set(key, cfg)?, key)?;
    // SAFETY: a map value; `store` writes it (see the module text).
    let (conn, meta) = unsafe { ((*way).conn, (*way).meta) };
    if meta as u32 & SERVED_MASK != seal(key, conn, State::Established) {
        return None;
    }
    let now = clock();
    if (meta >> 32) as u32 != now {
        let stamped = (u64::from(now) << 32) | (meta & u64::from(u32::MAX));
        unsafe { core::ptr::write_volatile(&raw mut (*way).meta, stamped) };
    }
    Some(conn)
}

/// Makes `way` (read as `w`) established, used now: a completed handshake.
#[inline(always)]
pub fn establish(way: *mut FlowWay, w: &FlowWay) {
    let meta = w.meta_as(State::Established, clock());
    // SAFETY: a map value (see `find`); the meta alone: key and entry stay.
    unsafe { core::ptr::write_volatile(&raw mut (*way).meta, meta) };
}

/// Empties `way`.
#[inline(always)]
pub fn clear(way: *mut FlowWay) {
    unsafe { core::ptr::write_volatile(&raw mut (*way).key[0], 0) };
}

/// Puts the flow in its set, established (`FlowSet::way_for_established`).
#[inline(always)]
pub fn insert(key: [u64; 2], conn: ConnValue, cfg: &LbConfig) {
    if let Some(set) = set(key, cfg) {
        let at = unsafe { (*set).way_for_established(key) };
        write(set, at, &FlowWay::new(key, conn, State::Established, clock()));
    }
}

/// Puts a flow picked up mid-stream in its set (`FlowSet::way_for_picked`): not
/// when every other way holds an established flow.
#[inline(always)]
pub fn pick_up(key: [u64; 2], conn: ConnValue, cfg: &LbConfig) {
    if let Some(set) = set(key, cfg)
        && let Some(at) = unsafe { (*set).way_for_picked(key) }
    {
        write(set, at, &FlowWay::new(key, conn, State::Picked, clock()));
    }
}

/// Puts a SYN of the flow in its set, pending (`FlowSet::way_for_pending`): false
/// when every way holds an established flow. Whether the set held the flow already
/// (a retransmission, or an earlier connection on the 5-tuple) in `known`.
#[inline(always)]
pub fn pend(set: *mut FlowSet, key: [u64; 2], conn: ConnValue, known: &mut bool) -> bool {
    let s = unsafe { &*set };
    *known = s.position(key).is_some();
    let Some(at) = s.way_for_pending(key) else { return false };
    write(set, at, &FlowWay::new(key, conn, State::Pending, clock()));
    true
}

#[inline(always)]
fn write(set: *mut FlowSet, at: usize, w: &FlowWay) {
    // SAFETY: a map value, `at` checked against its ways.
    unsafe {
        if let Some(way) = (*set).ways.get_mut(at) {
            store(way, w);
        }
    }
}
