//! The connection table: IPv4 flows in `CONNS4` under a 16-byte key, IPv6 flows in
//! `CONNS` under the whole `FlowKey`. The kernel hashes and compares the whole key
//! on every lookup and insert, so IPv4 (most traffic) pays for 16 bytes, not 40.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference, as everywhere in the data path (the measured build)"
)]

use lb_common::{ConnValue, FlowKey, FlowKey4, family};

use crate::maps::{CONNS, CONNS4};

#[inline(always)]
pub fn get(flow: &FlowKey) -> Option<&'static ConnValue> {
    if flow.family == family::V4 {
        let conn = unsafe { CONNS4.get(&FlowKey4::of(flow)) };
        // Keeps LLVM from merging the two lookups into one call on a choice of
        // maps, which the verifier cannot inline (a helper call: ~15 ns a packet).
        core::hint::black_box(());
        conn
    } else {
        unsafe { CONNS.get(flow) }
    }
}

/// Takes the flow out of the table (nothing if it is not there).
#[inline(always)]
pub fn remove(flow: &FlowKey) {
    if flow.family == family::V4 {
        let _ = CONNS4.remove(&FlowKey4::of(flow));
        core::hint::black_box(());
    } else {
        let _ = CONNS.remove(flow);
    }
}

/// Puts the flow in the table. A full table evicts (LRU); a failed insert only
/// costs a re-hash later.
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &ConnValue) {
    if flow.family == family::V4 {
        let _ = CONNS4.insert(&FlowKey4::of(flow), conn, 0);
        core::hint::black_box(());
    } else {
        let _ = CONNS.insert(flow, conn, 0);
    }
}
