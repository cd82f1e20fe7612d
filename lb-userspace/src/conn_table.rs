//! The connection table's size and use, for `xdplb status` and `/metrics`.
//!
//! `CONNS` is an LRU hash with one LRU list per CPU (`BPF_F_NO_COMMON_LRU`, as
//! Katran): the kernel rounds its size up to a multiple of the possible CPUs and
//! gives each CPU's list an equal share. A flow's entry comes from the list of the
//! CPU that inserted it (its RSS queue's), so a CPU that receives more flows than
//! its share evicts while the others have room. The kernel does not say which list
//! holds an entry, so the use is counted for the whole table; status shows each
//! CPU's share beside it.
//!
//! Counting walks the whole table (`BPF_MAP_LOOKUP_BATCH`, thousands of entries
//! per system call; tens of milliseconds at a million): a thread of its own does
//! it every [`INTERVAL`], never the control loop, and readers take the last count.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::MapData;
use lb_common::{ConnValue, FlowKey};

/// How often the table is counted: a scrape every 15 s sees a count at most
/// this old; a walk of a full default table costs one CPU tens of milliseconds.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Entries fetched per system call.
const BATCH: usize = 4096;

/// The table's size as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Entries in all.
    pub entries: u32,
    /// Possible CPUs: one LRU list each.
    pub cpus: u32,
}

impl Size {
    /// `configured` entries as the kernel sizes a per-CPU LRU hash over `cpus`
    /// possible CPUs (`htab_map_alloc`): rounded up to a multiple of `cpus` so that
    /// every list holds the same share (down where rounding up would overflow).
    #[must_use]
    pub fn new(configured: u32, cpus: u32) -> Self {
        let cpus = cpus.max(1);
        let entries = configured.checked_next_multiple_of(cpus).unwrap_or(configured / cpus * cpus);
        Self { entries, cpus }
    }

    /// `configured` entries on this host's possible CPUs.
    pub fn on_this_host(configured: u32) -> Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("reading {what}: {e}"))?;
        Ok(Self::new(configured, u32::try_from(cpus).unwrap_or(u32::MAX)))
    }

    /// Entries of each CPU's LRU list.
    #[must_use]
    pub fn per_cpu(&self) -> u32 {
        self.entries / self.cpus
    }
}

/// The table's size and its last count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub size: Size,
    /// Entries at the last count.
    pub entries: u64,
    /// When that count finished.
    pub counted: Instant,
    /// Why the latest count failed, if it did (`entries` is then an older one's).
    pub error: Option<String>,
}

impl Use {
    /// The `connection table:` line of `xdplb status`.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "a percentage with one decimal")]
    pub fn line(&self, now: Instant) -> String {
        let Size { entries: size, cpus } = self.size;
        let percent = 100.0 * self.entries as f64 / f64::from(size.max(1));
        let age = now.saturating_duration_since(self.counted).as_secs();
        let failed =
            self.error.as_ref().map_or_else(String::new, |e| format!("; counting failed: {e}"));
        format!(
            "connection table: {} of {size} entries in use ({percent:.1}%, counted {age} s ago); \
             LRU per CPU: {} entries on each of {cpus} CPUs{failed}",
            self.entries,
            self.size.per_cpu(),
        )
    }
}

/// Counts the entries of the hash map `map` whose keys and values are
/// `FlowKey` and `ConnValue` (an approximation while packets change it: an entry
/// moved between buckets during the walk may count twice or not at all).
pub fn count(map: BorrowedFd<'_>) -> io::Result<u64> {
    count_by(map, BATCH)
}

/// [`count`], fetching `batch` entries per system call (tests cross batches).
#[doc(hidden)]
pub fn count_by(map: BorrowedFd<'_>, batch: usize) -> io::Result<u64> {
    let mut keys = vec![FlowKey::default(); batch];
    let mut values = vec![ConnValue::default(); batch];
    let mut cursor = Cursor::default();
    let mut total = 0u64;
    while !cursor.done {
        total += read_batch(map, &mut cursor, &mut keys, &mut values)? as u64;
    }
    Ok(total)
}

/// Where a walk of the table is: the kernel's batch position.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    position: Option<u32>,
    /// The walk is over.
    pub done: bool,
}

/// The next entries of the walk at `cursor` (at most `keys.len()`, which must be
/// `values.len()`) into `keys` and `values`; how many. The walk uses
/// `BPF_MAP_LOOKUP_BATCH`: thousands of entries per system call.
pub fn read_batch(
    map: BorrowedFd<'_>,
    cursor: &mut Cursor,
    keys: &mut [FlowKey],
    values: &mut [ConnValue],
) -> io::Result<usize> {
    /// `union bpf_attr`'s `batch` member.
    #[repr(C)]
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
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let batch = keys.len().min(values.len());
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: cursor.position.as_ref().map_or(0, |p| std::ptr::from_ref(p) as u64),
        out_batch: (&raw mut next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(batch).unwrap_or(u32::MAX),
        map_fd: u32::try_from(map.as_raw_fd()).unwrap_or(u32::MAX),
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the attribute points at buffers of `batch` keys and values of the
    // map's sizes and at two u32 batch positions (a hash map's), all alive for
    // the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
    };
    let n = attr.count as usize;
    if rc != 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the walk is over (this call's entries are in the buffers).
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
        cursor.done = true;
    }
    cursor.position = Some(next);
    Ok(n)
}

/// A thread counting the connection table every [`INTERVAL`]; dropping it stops
/// the thread and closes its handle of the map.
pub struct Watch {
    latest: Arc<Mutex<Use>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Counts `map` (the connection table, of `size`) once, then starts the thread.
    pub fn spawn(map: MapData, size: Size, interval: Duration) -> Result<Self> {
        let first = count(map.fd().as_fd()).context("counting the connection table")?;
        let latest = Arc::new(Mutex::new(Use {
            size,
            entries: first,
            counted: Instant::now(),
            error: None,
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&latest);
        let thread = std::thread::Builder::new()
            .name("xdplb-conntrack".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let counted = count(map.fd().as_fd());
                    let mut u = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    match counted {
                        Ok(n) => (u.entries, u.counted, u.error) = (n, Instant::now(), None),
                        Err(e) => u.error = Some(e.to_string()),
                    }
                }
            })
            .context("starting the connection-table counter")?;
        Ok(Self { latest, stop: Some(stop), thread: Some(thread) })
    }

    /// The size and the last count.
    #[must_use]
    pub fn latest(&self) -> Use {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_rounded_up_to_a_share_per_cpu_as_the_kernel_does() {
        assert_eq!(Size::new(1 << 20, 2), Size { entries: 1 << 20, cpus: 2 });
        assert_eq!(Size::new(1 << 20, 2).per_cpu(), 1 << 19);
        assert_eq!(Size::new(1000, 3), Size { entries: 1002, cpus: 3 });
        assert_eq!(Size::new(1000, 3).per_cpu(), 334);
        assert_eq!(Size::new(u32::MAX, 2).entries, u32::MAX - 1, "down where up overflows");
        assert_eq!(Size::new(1024, 0).entries, 1024, "no CPU count read: one list");
    }

    #[test]
    fn the_status_line_shows_size_use_and_each_cpus_share() {
        let at = Instant::now();
        let mut u = Use { size: Size::new(1 << 20, 2), entries: 4096, counted: at, error: None };
        let later = at + Duration::from_secs(3);
        assert_eq!(
            u.line(later),
            "connection table: 4096 of 1048576 entries in use (0.4%, counted 3 s ago); \
             LRU per CPU: 524288 entries on each of 2 CPUs"
        );
        u.error = Some("Operation not permitted".into());
        assert!(u.line(later).ends_with("; counting failed: Operation not permitted"));
    }
}
