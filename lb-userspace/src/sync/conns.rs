//! The kernel's connection table (`FLOWS4` for IPv4 flows, `CONNS` for IPv6) as
//! sync reads and writes it, through handles of its own (the writer's stay with
//! the control loop). Sync names flows by `FlowKey` whatever their family; only
//! here do IPv4 flows take their place in `FLOWS4`'s sets. Reading the table whole
//! walks both in bounded steps (sets of `FLOWS4`, batches of `CONNS`:
//! `conn_table::read_batch`), so the sync thread stays responsive while it scans.

use std::os::fd::AsFd as _;

use anyhow::{Result, anyhow};
use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use lb_common::{ConnValue, FlowKey, FlowKey4, family};

use super::install::ConnTable;
use crate::{
    clock::ConnEpoch,
    conn_table::{self, read_batch},
    flows4::Flows4,
};

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Entries read per batch call of `CONNS`, and sets of `FLOWS4` read per step.
pub const BATCH: usize = 4096;

/// Where a walk of both maps is: the IPv4 table's sets first, then the IPv6 map.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    /// In the IPv6 map (the IPv4 one is done).
    v6: bool,
    /// The next set of `FLOWS4`.
    set: usize,
    at: conn_table::Cursor,
    /// The walk is over.
    pub done: bool,
}

pub struct BpfConns {
    v4: Flows4,
    v6: HashMap<MapData, FlowKey, ConnValue>,
    /// The clock a peer's IPv4 entry is stamped with: used now.
    clock: ConnEpoch,
}

impl BpfConns {
    /// `v4`: `FLOWS4`; `v6`: `CONNS`; `clock`: `CONN_EPOCH`.
    #[must_use]
    pub fn new(v4: Flows4, v6: HashMap<MapData, FlowKey, ConnValue>, clock: ConnEpoch) -> Self {
        Self { v4, v6, clock }
    }

    /// The next at most [`BATCH`] entries after `cursor` into `out`.
    pub fn scan_step(
        &self,
        cursor: &mut Cursor,
        out: &mut Vec<(FlowKey, ConnValue)>,
    ) -> Result<()> {
        if !cursor.v6 {
            match self.v4.scan(cursor.set, BATCH, out) {
                Some(next) => cursor.set = next,
                None => cursor.v6 = true,
            }
            return Ok(());
        }
        let mut keys = vec![FlowKey::default(); BATCH];
        let mut values = vec![ConnValue::default(); BATCH];
        let n = read_batch(self.v6.map().fd().as_fd(), &mut cursor.at, &mut keys, &mut values)
            .map_err(|e| anyhow!("reading CONNS in batches: {e}"))?;
        out.extend(keys.into_iter().zip(values).take(n));
        cursor.done = cursor.at.done;
        Ok(())
    }
}

/// What an insert's error says: false (and a debug line) for anything but success.
fn inserted(r: Result<(), MapError>) -> bool {
    match r {
        Ok(()) => true,
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => {
            log::debug!("sync: installing a peer's entry: {e}");
            false
        }
    }
}

impl ConnTable for BpfConns {
    fn get(&self, flow: &FlowKey) -> Option<ConnValue> {
        if flow.family == family::V4 {
            self.v4.established(&FlowKey4::of(flow))
        } else {
            self.v6.get(flow, 0).ok()
        }
    }

    fn insert_new(&mut self, flow: &FlowKey, conn: &ConnValue) -> bool {
        if flow.family == family::V4 {
            self.v4.insert_new(&FlowKey4::of(flow), *conn, self.clock.clock())
        } else {
            inserted(self.v6.insert(flow, conn, BPF_NOEXIST))
        }
    }

    fn remove(&mut self, flow: &FlowKey) {
        if flow.family == family::V4 {
            let _ = self.v4.remove(&FlowKey4::of(flow));
        } else {
            let _ = self.v6.remove(flow);
        }
    }
}
