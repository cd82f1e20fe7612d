//! The data path's flow caches (lb-ebpf's `flow_cache.rs`) as the controller
//! sees them: their size, and their epoch.
//!
//! `FLOW_CACHE` holds `limits::FLOW_CACHE_SETS` sets for each possible CPU, so
//! a loader sizes it for this host ([`entries`]).
//!
//! Each CPU keeps copies of IPv4 connection-table entries and uses one only while
//! the epoch (`CONN_EPOCH`) is the one it was copied under, so whoever writes or
//! deletes table entries from userspace (peer sync) bumps the epoch after the
//! writes: the next packet of a changed flow then reads the table. The map writer
//! bumps it when a backend goes down (`maps::BpfMaps::set_backend`): a copy naming
//! it must not come back to life when it comes up.
//!
//! The map is mmapped and bumped with an atomic add, as the data path bumps it
//! (a SYN replacing a reused 5-tuple's entry): the epoch only ever grows, so a
//! copy made before a change never becomes valid again.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::MapData;
use lb_common::{flow::conn_epoch, map_names};

/// Entries of `FLOW_CACHE` on this host: a region of sets for each possible CPU
/// (the data path indexes it by CPU number).
pub fn entries() -> Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("reading {what}: {e}"))?;
    let cpus = u32::try_from(cpus).context("possible CPUs")?;
    Ok(lb_common::limits::flow_cache_entries(cpus))
}

/// `CONN_EPOCH`, mapped into our memory.
pub struct ConnEpoch {
    ptr: NonNull<u64>,
    map: MapData,
}

impl ConnEpoch {
    /// Maps `map` (the loaded object's `CONN_EPOCH`, created `BPF_F_MMAPABLE`).
    pub fn new(map: MapData) -> Result<Self> {
        // SAFETY: mapping a BPF array fd; the kernel checks size and flags. The
        // mapping lives as long as `map` (the fd) in this struct.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                crate::maps::page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "mmap of {} (was it created without BPF_F_MMAPABLE?)",
                    map_names::CONN_EPOCH
                )
            });
        }
        let ptr = NonNull::new(ptr.cast::<u64>()).ok_or_else(|| anyhow!("mmap returned null"))?;
        Ok(Self { ptr, map })
    }

    /// Another mapping of the same epoch, through a handle of its own (for a
    /// thread that bumps it or steps its clock).
    pub fn try_clone(&self) -> Result<Self> {
        let name = map_names::CONN_EPOCH;
        let fd = self.map.fd().as_fd().try_clone_to_owned();
        let data = MapData::from_fd(fd.with_context(|| format!("{name}: dup"))?)
            .map_err(|e| anyhow!("{name}: {e}"))?;
        Self::new(data)
    }

    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: an 8-byte aligned u64 at the start of the mapping (a page), shared
        // with the kernel, which changes it only with atomic adds.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr()) }
    }

    /// Steps the clock the caches' copies refresh the table by (`FlowCacheSlot::stamp`).
    pub fn step_clock(&self) {
        self.atomic().fetch_add(conn_epoch::CLOCK_STEP, Ordering::SeqCst);
    }

    /// The epoch and clock now (`lb_common::flow::conn_epoch`).
    #[must_use]
    pub fn get(&self) -> u64 {
        self.atomic().load(Ordering::SeqCst)
    }

    /// Makes every CPU's cached copies out of date; call it after the table writes.
    pub fn bump(&self) {
        self.atomic().fetch_add(conn_epoch::BUMP, Ordering::SeqCst);
    }
}

impl Drop for ConnEpoch {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), crate::maps::page_size()) };
    }
}

// SAFETY: the mapping is plain memory owned by this struct, used atomically.
unsafe impl Send for ConnEpoch {}
unsafe impl Sync for ConnEpoch {}

/// How often the clock steps: a flow only the cache serves tells the table it is
/// alive this often, far inside the time a full table takes to age an entry out.
pub const CLOCK_STEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Steps `epoch`'s clock every `CLOCK_STEP`, for as long as the task runs (`xdplb
/// run` runs it: flows only the flow caches serve refresh their table entries by it).
pub async fn keep_time(epoch: ConnEpoch) {
    let mut step = tokio::time::interval(CLOCK_STEP);
    loop {
        step.tick().await;
        epoch.step_clock();
    }
}
