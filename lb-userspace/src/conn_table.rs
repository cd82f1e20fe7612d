//! The connection table's size and use, for `xdplb status` and `/metrics`.
//!
//! IPv4 flows are in `FLOWS4` (`lb_common::flow_table`): sets of four ways shared
//! by every CPU, `conn_table_size` entries rounded up to a power of two sets
//! (32 B an entry). IPv6 flows are in `CONNS`, an LRU hash under the 40-byte
//! `FlowKey`, holding a quarter of `conn_table_size` ([`v6_entries`]) unless
//! `conn_table_size_v6` says otherwise (~112 B an entry).
//!
//! `CONNS` has one LRU list per CPU (`BPF_F_NO_COMMON_LRU`, as Katran): the kernel
//! rounds its size up to a multiple of the possible CPUs and gives each CPU's list
//! an equal share. A flow's entry comes from the list of the CPU that inserted it
//! (its RSS queue's), so a CPU that receives more flows than its share evicts
//! while the others have room; status shows each CPU's share. `FLOWS4` has no
//! such split: a flow's set is a hash of its key, whichever CPU receives it.
//!
//! Counting reads `FLOWS4` whole through its mapping and walks `CONNS`
//! (`BPF_MAP_LOOKUP_BATCH`, thousands of entries per system call): tens of
//! milliseconds at a million, so a thread of its own does it every [`INTERVAL`],
//! never the control loop, and readers take the last count.

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::MapData;
use lb_common::{
    ConnValue, FlowKey, FlowKey4,
    flow_table::{WAYS, sets_for},
    map_names,
};

use crate::flows4::Flows4;

/// How often the table is counted: a scrape every 15 s sees a count at most
/// this old; a walk of a full default table costs one CPU tens of milliseconds.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Entries fetched per system call.
const BATCH: usize = 4096;

/// The IPv6 table's default size, defined with the kernel's in lb-common.
pub use lb_common::limits::conn_table_v6_entries as v6_entries;

/// The entries the config asks of each table (`conn_table_size`,
/// `conn_table_size_v6`), before the kernel rounds them ([`Size`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Configured {
    pub v4: u32,
    pub v6: u32,
}

impl Configured {
    /// `conn_table_size` with the IPv6 table's default ([`v6_entries`]).
    #[must_use]
    pub const fn of(conn_table_size: u32) -> Self {
        Self { v4: conn_table_size, v6: v6_entries(conn_table_size) }
    }

    /// The tables' `max_entries` by map name, as the loader asks for them:
    /// `FLOWS4`'s sets, `CONNS`'s entries.
    #[must_use]
    pub const fn max_entries(&self) -> [(&'static str, u32); 2] {
        [(map_names::FLOWS4, sets_for(self.v4)), (map_names::CONNS, self.v6)]
    }
}

/// The two tables' sizes as the kernel holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Entries of the IPv4 table (`FLOWS4`: its sets times their ways).
    pub v4: u32,
    /// Entries of the IPv6 table (`CONNS`).
    pub v6: u32,
    /// Possible CPUs: one LRU list each in the IPv6 table.
    pub cpus: u32,
}

impl Size {
    /// The tables for the configured sizes: the IPv4 table in whole sets of a
    /// power of two (`flow_table::sets_for`); the IPv6 one as the kernel sizes a
    /// per-CPU LRU hash over `cpus` possible CPUs (`htab_map_alloc`): rounded up
    /// to a multiple of `cpus` so that every list holds the same share (down
    /// where rounding up would overflow).
    #[must_use]
    pub fn new(configured: Configured, cpus: u32) -> Self {
        let cpus = cpus.max(1);
        let round = |n: u32| n.checked_next_multiple_of(cpus).unwrap_or(n / cpus * cpus);
        let v4 = sets_for(configured.v4).saturating_mul(WAYS as u32);
        Self { v4, v6: round(configured.v6), cpus }
    }

    /// `configured` on this host's possible CPUs.
    pub fn on_this_host(configured: Configured) -> Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("reading {what}: {e}"))?;
        Ok(Self::new(configured, u32::try_from(cpus).unwrap_or(u32::MAX)))
    }

    /// Entries of both tables.
    #[must_use]
    pub fn entries(&self) -> u64 {
        u64::from(self.v4) + u64::from(self.v6)
    }
}

/// The tables' sizes and their last count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub size: Size,
    /// IPv4 and IPv6 entries at the last count.
    pub v4: u64,
    pub v6: u64,
    /// When that count finished.
    pub counted: Instant,
    /// Why the latest count failed, if it did (the entries are then an older one's).
    pub error: Option<String>,
}

impl Use {
    /// Entries of both tables at the last count.
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.v4 + self.v6
    }

    /// The `connection table:` line of `xdplb status`.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "a percentage with one decimal")]
    pub fn line(&self, now: Instant) -> String {
        let Size { v4, v6, cpus } = self.size;
        let size = self.size.entries();
        let percent = 100.0 * self.entries() as f64 / size.max(1) as f64;
        let age = now.saturating_duration_since(self.counted).as_secs();
        let failed =
            self.error.as_ref().map_or_else(String::new, |e| format!("; counting failed: {e}"));
        format!(
            "connection table: {} of {size} entries in use ({percent:.1}%, counted {age} s ago): \
             IPv4 {} of {v4} (sets of {WAYS}, shared by all CPUs), IPv6 {} of {v6}; LRU per CPU: \
             {} IPv6 entries on each of {cpus} CPUs{failed}",
            self.entries(),
            self.v4,
            self.v6,
            v6 / cpus,
        )
    }
}

/// A key type of an LRU hash of the connection table's kind: `FlowKey` (`CONNS`),
/// or `FlowKey4` (tests' and benchmarks' own maps).
pub trait Key: Copy + Default {}
impl Key for FlowKey {}
impl Key for FlowKey4 {}

/// Counts the entries of the hash map `map` whose keys and values are `K` and
/// `ConnValue` (an approximation while packets change it: an entry moved between
/// buckets during the walk may count twice or not at all).
pub fn count<K: Key>(map: BorrowedFd<'_>) -> io::Result<u64> {
    count_by::<K>(map, BATCH)
}

/// [`count`], fetching `batch` entries per system call (tests cross batches).
#[doc(hidden)]
pub fn count_by<K: Key>(map: BorrowedFd<'_>, batch: usize) -> io::Result<u64> {
    let mut keys = vec![K::default(); batch];
    let mut values = vec![ConnValue::default(); batch];
    let mut cursor = Cursor::default();
    let mut total = 0u64;
    while !cursor.done {
        total += read_batch(map, &mut cursor, &mut keys, &mut values)? as u64;
    }
    Ok(total)
}

/// Where a walk of the table is.
pub use crate::batch::Cursor;

/// The next entries of the walk at `cursor` (at most `keys.len()`, which must be
/// `values.len()`) into `keys` and `values`; how many. The walk uses
/// `BPF_MAP_LOOKUP_BATCH`: thousands of entries per system call.
pub fn read_batch<K: Key>(
    map: BorrowedFd<'_>,
    cursor: &mut Cursor,
    keys: &mut [K],
    values: &mut [ConnValue],
) -> io::Result<usize> {
    crate::batch::lookup(map, cursor, keys, values, 1)
}

/// A thread counting the connection table every [`INTERVAL`]; dropping it stops
/// the thread and closes its handle of the map.
pub struct Watch {
    latest: Arc<Mutex<Use>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The two tables, for [`Watch`].
pub struct Tables {
    /// `FLOWS4`, mapped.
    pub v4: Flows4,
    /// `CONNS`.
    pub v6: MapData,
}

impl Tables {
    /// Counts both: (IPv4, IPv6) established entries.
    fn count(&self) -> io::Result<(u64, u64)> {
        Ok((self.v4.count().established, count::<FlowKey>(self.v6.fd().as_fd())?))
    }
}

impl Watch {
    /// Counts `tables` (the connection table, of `size`) once, then starts the thread.
    pub fn spawn(tables: Tables, size: Size, interval: Duration) -> Result<Self> {
        let (v4, v6) = tables.count().context("counting the connection table")?;
        let latest =
            Arc::new(Mutex::new(Use { size, v4, v6, counted: Instant::now(), error: None }));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&latest);
        let thread = std::thread::Builder::new()
            .name("xdplb-conntrack".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let counted = tables.count();
                    let mut u = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    match counted {
                        Ok((v4, v6)) => {
                            (u.v4, u.v6, u.counted, u.error) = (v4, v6, Instant::now(), None);
                        }
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
    fn the_ipv6_table_holds_a_quarter_of_the_ipv4_tables_size_at_least_1024() {
        assert_eq!(v6_entries(1 << 20), 1 << 18);
        assert_eq!(v6_entries(4096), 1024);
        assert_eq!(v6_entries(1024), 1024, "the smallest conn_table_size");
        assert_eq!(v6_entries(u32::MAX), u32::MAX / 4);
    }

    #[test]
    fn the_ipv4_table_is_whole_sets_and_the_ipv6_one_a_share_per_cpu_as_the_kernel_sizes_it() {
        assert_eq!(
            Size::new(Configured::of(1 << 20), 2),
            Size { v4: 1 << 20, v6: 1 << 18, cpus: 2 }
        );
        assert_eq!(Size::new(Configured::of(1 << 20), 2).entries(), (1 << 20) + (1 << 18));
        assert_eq!(Size::new(Configured::of(8000), 3), Size { v4: 8192, v6: 2001, cpus: 3 });
        assert_eq!(
            Size::new(Configured { v4: 1024, v6: u32::MAX }, 2).v6,
            u32::MAX - 1,
            "down where up overflows"
        );
        assert_eq!(
            Configured::of(8000).max_entries(),
            [(map_names::FLOWS4, 2048), (map_names::CONNS, 2000)],
            "the loader asks for sets of FLOWS4"
        );
        assert_eq!(
            Size::new(Configured::of(1024), 0),
            Size { v4: 1024, v6: 1024, cpus: 1 },
            "no CPU count: one list"
        );
    }

    #[test]
    fn the_status_line_shows_size_use_of_each_table_and_each_cpus_share() {
        let at = Instant::now();
        let size = Size::new(Configured::of(1 << 20), 2);
        let mut u = Use { size, v4: 4000, v6: 96, counted: at, error: None };
        let later = at + Duration::from_secs(3);
        assert_eq!(
            u.line(later),
            "connection table: 4096 of 1310720 entries in use (0.3%, counted 3 s ago): IPv4 4000 \
             of 1048576 (sets of 4, shared by all CPUs), IPv6 96 of 262144; LRU per CPU: 131072 \
             IPv6 entries on each of 2 CPUs"
        );
        u.error = Some("Operation not permitted".into());
        assert!(u.line(later).ends_with("; counting failed: Operation not permitted"));
    }
}
