//! The kernel's connection table (`CONNS`) as sync reads and writes it, through
//! a second handle of its own (the writer's stays with the control loop). Reading
//! it whole walks it in batches (`conn_table::read_batch`) in bounded steps, so
//! the sync thread stays responsive while it scans.

use std::os::fd::AsFd as _;

use anyhow::{Result, anyhow};
use aya::maps::{HashMap, MapData, MapError};
use lb_common::{ConnValue, FlowKey};

use super::install::ConnTable;
pub use crate::conn_table::Cursor;
use crate::conn_table::read_batch;

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Entries read per batch call.
pub const BATCH: usize = 4096;

pub struct BpfConns {
    map: HashMap<MapData, FlowKey, ConnValue>,
}

impl BpfConns {
    #[must_use]
    pub fn new(map: HashMap<MapData, FlowKey, ConnValue>) -> Self {
        Self { map }
    }

    /// The next at most [`BATCH`] entries after `cursor` into `out`.
    pub fn scan_step(
        &self,
        cursor: &mut Cursor,
        out: &mut Vec<(FlowKey, ConnValue)>,
    ) -> Result<()> {
        use aya::maps::IterableMap as _;
        let mut keys = vec![FlowKey::default(); BATCH];
        let mut values = vec![ConnValue::default(); BATCH];
        let n = read_batch(self.map.map().fd().as_fd(), cursor, &mut keys, &mut values)
            .map_err(|e| anyhow!("reading CONNS in batches: {e}"))?;
        out.extend(keys.into_iter().zip(values).take(n));
        Ok(())
    }
}

impl ConnTable for BpfConns {
    fn get(&self, flow: &FlowKey) -> Option<ConnValue> {
        self.map.get(flow, 0).ok()
    }

    fn insert_new(&mut self, flow: &FlowKey, conn: &ConnValue) -> bool {
        match self.map.insert(flow, conn, BPF_NOEXIST) {
            Ok(()) => true,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                false
            }
            Err(e) => {
                log::debug!("sync: installing a peer's entry: {e}");
                false
            }
        }
    }

    fn remove(&mut self, flow: &FlowKey) {
        let _ = self.map.remove(flow);
    }
}
