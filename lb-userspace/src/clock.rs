//! The controller's clock (`CONN_EPOCH`'s high half, `lb_common::flow::conn_epoch`):
//! stepped every [`CLOCK_STEP`] while `xdplb run` runs; a packet that uses an IPv4
//! flow's entry stamps it with the clock (`flow_table::FlowWay::clock`), so a full
//! set gives up the way used longest ago.
//!
//! The map is mmapped and stepped with an atomic add, as the data path's atomic
//! adds to it: the clock only ever grows.

use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Result;
use aya::maps::MapData;
use lb_common::{flow::conn_epoch, map_names};

/// `CONN_EPOCH`, mapped into our memory.
pub struct ConnEpoch {
    ptr: NonNull<u64>,
    map: MapData,
}

impl ConnEpoch {
    /// Maps `map` (the loaded object's `CONN_EPOCH`, created `BPF_F_MMAPABLE`).
    pub fn new(map: MapData) -> Result<Self> {
        // The mapping lives as long as `map` (the fd) in this struct.
        let ptr = crate::maps::mmap_shared(&map, crate::maps::page_size(), map_names::CONN_EPOCH)?
            .cast::<u64>();
        Ok(Self { ptr, map })
    }

    /// Another mapping of the same clock, through a handle of its own (for a
    /// thread that steps it or stamps entries with it).
    pub fn try_clone(&self) -> Result<Self> {
        Self::new(crate::maps::dup(&self.map, map_names::CONN_EPOCH)?)
    }

    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: an 8-byte aligned u64 at the start of the mapping (a page), shared
        // with the kernel, which only reads it.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr()) }
    }

    /// Steps the clock.
    pub fn step_clock(&self) {
        self.atomic().fetch_add(conn_epoch::CLOCK_STEP, Ordering::SeqCst);
    }

    /// The epoch and clock now (`lb_common::flow::conn_epoch`).
    #[must_use]
    pub fn get(&self) -> u64 {
        self.atomic().load(Ordering::SeqCst)
    }

    /// The clock now, as the data path stamps ways with it.
    #[must_use]
    pub fn clock(&self) -> u32 {
        (self.get() >> 32) as u32
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

/// How often the clock steps: a flow's way is stamped at most this often, and
/// its set tells flows used within one step from those used before.
pub const CLOCK_STEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Steps `epoch`'s clock every `CLOCK_STEP`, for as long as the task runs (`xdplb
/// run` runs it).
pub async fn keep_time(epoch: ConnEpoch) {
    let mut step = tokio::time::interval(CLOCK_STEP);
    loop {
        step.tick().await;
        epoch.step_clock();
    }
}
