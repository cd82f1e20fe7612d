//! The kernel's connection table (`CONNS`) as sync reads and writes it, through
//! a second handle of its own (the writer's stays with the control loop). Reading
//! it whole uses `BPF_MAP_LOOKUP_BATCH` (thousands of entries per system call;
//! 1M entries in well under a second) in bounded steps, so the sync thread stays
//! responsive while it scans.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Result, anyhow};
use aya::maps::{HashMap, MapData, MapError};
use lb_common::{ConnValue, FlowKey};

use super::install::ConnTable;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Entries read per batch call.
pub const BATCH: usize = 4096;

/// `bpf_attr` for the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

pub struct BpfConns {
    map: HashMap<MapData, FlowKey, ConnValue>,
}

/// Where a scan of the table is: the kernel's opaque batch position.
#[derive(Debug, Default)]
pub struct Cursor {
    token: Option<u64>,
    pub done: bool,
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
        let mut keys = vec![FlowKey::default(); BATCH];
        let mut values = vec![ConnValue::default(); BATCH];
        let mut next: u64 = 0;
        let mut attr = BatchAttr {
            in_batch: cursor.token.as_ref().map_or(0, |t| std::ptr::from_ref(t) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: self.map_fd(),
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of BATCH keys and values of the map's
        // sizes and at 8-byte batch tokens (the hash map's is 4 bytes), all alive
        // for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        out.extend(keys.into_iter().zip(values).take(n));
        match err {
            None => cursor.token = Some(next),
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => cursor.done = true,
            Some(e) => return Err(anyhow!("reading CONNS in batches: {e}")),
        }
        Ok(())
    }

    fn map_fd(&self) -> u32 {
        use aya::maps::IterableMap as _;
        self.map.map().fd().as_fd().as_raw_fd().cast_unsigned()
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
