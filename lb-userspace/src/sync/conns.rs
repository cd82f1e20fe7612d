//! The kernel's connection table (`CONNS4` for IPv4 flows, `CONNS` for IPv6) as
//! sync reads and writes it, through second handles of its own (the writer's stay
//! with the control loop). Sync names flows by `FlowKey` whatever their family;
//! only here do IPv4 flows take their 16-byte key. Reading the table whole walks
//! both maps in batches (`conn_table::read_batch`) in bounded steps, so the sync
//! thread stays responsive while it scans.

use std::os::fd::AsFd as _;

use anyhow::{Result, anyhow};
use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use lb_common::{ConnValue, FlowKey, FlowKey4, family};

use super::install::ConnTable;
use crate::{
    conn_table::{self, read_batch},
    flow_cache::ConnEpoch,
};

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Entries read per batch call.
pub const BATCH: usize = 4096;

/// Where a walk of both maps is: the IPv4 map first, then the IPv6 one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    /// In the IPv6 map (the IPv4 one is done).
    v6: bool,
    at: conn_table::Cursor,
    /// The walk is over.
    pub done: bool,
}

pub struct BpfConns {
    v4: HashMap<MapData, FlowKey4, ConnValue>,
    v6: HashMap<MapData, FlowKey, ConnValue>,
    /// Bumped after writes (`ConnTable::publish`): the data path's flow caches
    /// hold copies of `v4`'s entries.
    epoch: ConnEpoch,
}

impl BpfConns {
    /// `v4`: `CONNS4`; `v6`: `CONNS`; `epoch`: `CONN_EPOCH`.
    #[must_use]
    pub fn new(
        v4: HashMap<MapData, FlowKey4, ConnValue>,
        v6: HashMap<MapData, FlowKey, ConnValue>,
        epoch: ConnEpoch,
    ) -> Self {
        Self { v4, v6, epoch }
    }

    /// The next at most [`BATCH`] entries after `cursor` into `out`.
    pub fn scan_step(
        &self,
        cursor: &mut Cursor,
        out: &mut Vec<(FlowKey, ConnValue)>,
    ) -> Result<()> {
        let mut values = vec![ConnValue::default(); BATCH];
        if cursor.v6 {
            let mut keys = vec![FlowKey::default(); BATCH];
            let n = read_batch(self.v6.map().fd().as_fd(), &mut cursor.at, &mut keys, &mut values)
                .map_err(|e| anyhow!("reading CONNS in batches: {e}"))?;
            out.extend(keys.into_iter().zip(values).take(n));
            cursor.done = cursor.at.done;
        } else {
            let mut keys = vec![FlowKey4::default(); BATCH];
            let n = read_batch(self.v4.map().fd().as_fd(), &mut cursor.at, &mut keys, &mut values)
                .map_err(|e| anyhow!("reading CONNS4 in batches: {e}"))?;
            out.extend(keys.iter().map(FlowKey4::flow).zip(values).take(n));
            if cursor.at.done {
                (cursor.v6, cursor.at) = (true, conn_table::Cursor::default());
            }
        }
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
            self.v4.get(&FlowKey4::of(flow), 0).ok()
        } else {
            self.v6.get(flow, 0).ok()
        }
    }

    fn insert_new(&mut self, flow: &FlowKey, conn: &ConnValue) -> bool {
        inserted(if flow.family == family::V4 {
            self.v4.insert(FlowKey4::of(flow), conn, BPF_NOEXIST)
        } else {
            self.v6.insert(flow, conn, BPF_NOEXIST)
        })
    }

    fn remove(&mut self, flow: &FlowKey) {
        let _ = if flow.family == family::V4 {
            self.v4.remove(&FlowKey4::of(flow))
        } else {
            self.v6.remove(flow)
        };
    }

    fn publish(&mut self) {
        self.epoch.bump();
    }
}
