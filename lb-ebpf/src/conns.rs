//! The connection table: IPv4 flows in `FLOWS4` (`flow_table`: one set a flow,
//! pending handshakes among them), IPv6 flows in `CONNS`, an LRU hash under the
//! whole `FlowKey` (IPv6's pending handshakes wait in the SYN array).

use lb_common::{ConnValue, FlowKey, FlowKey4, LbConfig, family};

use crate::{flow_table, maps::CONNS};

/// The flow's established entry.
#[inline(always)]
pub fn get(flow: &FlowKey, cfg: &LbConfig) -> Option<ConnValue> {
    if flow.family == family::V4 {
        flow_table::established(FlowKey4::of(flow).words(), cfg)
    } else {
        unsafe { CONNS.get(flow) }.copied()
    }
}

/// Takes the IPv6 flow out of the table (nothing if it is not there). An IPv4
/// flow's entry gives way in its own set instead (`flow_table::pend`).
#[inline(always)]
pub fn remove_v6(flow: &FlowKey) {
    let _ = CONNS.remove(flow);
}

/// Puts the flow in the table, established: its handshake completed here. A full
/// IPv4 set gives up the way used longest ago, a full IPv6 table its LRU entry; a
/// failed insert only costs a re-hash later.
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &ConnValue, cfg: &LbConfig) {
    if flow.family == family::V4 {
        flow_table::insert(FlowKey4::of(flow).words(), *conn, cfg);
    } else {
        let _ = CONNS.insert(flow, conn, 0);
    }
}

/// Puts a flow picked up mid-stream in the table (UDP, or TCP that completes no
/// handshake here): an IPv4 one takes no established flow's way
/// (`flow_table::pick_up`); the IPv6 table's LRU does not tell them apart.
#[inline(always)]
pub fn pick_up(flow: &FlowKey, conn: &ConnValue, cfg: &LbConfig) {
    if flow.family == family::V4 {
        flow_table::pick_up(FlowKey4::of(flow).words(), *conn, cfg);
    } else {
        let _ = CONNS.insert(flow, conn, 0);
    }
}
