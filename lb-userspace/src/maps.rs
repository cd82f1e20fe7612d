//! The maps of a loaded `xdp-lb` that say how traffic is forwarded, behind the
//! [`Maps`] trait so the writer can be tested against a fake. `BpfMaps` is the
//! real thing: typed aya maps plus the Maglev rings mapped into our memory. (The
//! statistics maps are read through `stats.rs`.)

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
};
use lb_common::{
    Backend, BackendStats, ConnValue, FlowKey, FlowKey4, LbConfig, RingSlot, Traffic, VipKey,
    VipMeta,
    limits::{MAX_BACKENDS, RING_ENTRIES, RING_SIZE},
    map_names as names,
    vip::VipAddrKey,
    vip_stats,
};

use crate::stats;

/// What the writer needs from the data path's maps.
pub trait Maps {
    fn set_config(&mut self, config: &LbConfig) -> Result<()>;
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    fn set_vip_addr(&mut self, key: &VipAddrKey, present: bool) -> Result<()>;
    fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<()>;
    /// Word `index` of the VIP address filter.
    fn set_vip_filter(&mut self, index: u32, word: u64) -> Result<()>;
    /// Overwrites ring `ring` (RING_SIZE slots). Only ever called on a ring no VIP points at.
    fn write_ring(&mut self, ring: u32, slots: &[u32]) -> Result<()>;
    /// Zeroes the counts of a VIP (`Slot::Vip`) or backend slot, before the slot
    /// is given to a new VIP or backend: it must not inherit the counts of the one
    /// that held it before. The table hits counted there move where the totals
    /// that include them keep them (`lb_common::stats`).
    fn zero_traffic(&mut self, slot: Slot, index: u32) -> Result<()>;
    /// The controller's view of backend slot `index` (`pinned::backend_flags`),
    /// for a restarted controller; the data path never reads it.
    fn set_flags(&mut self, index: u32, flags: u32) -> Result<()>;
    /// What the maps hold now, for a restarted controller to adopt.
    fn snapshot(&self) -> Result<Snapshot>;
    /// The slots of ring `ring`.
    fn read_ring(&self, ring: u32) -> Result<Vec<u32>>;
}

/// Which per-slot statistics: a VIP's (VIP_STATS) or a backend's (BACKEND_STATS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Vip,
    Backend,
}

/// The contents of the maps that say how traffic is forwarded (not the statistics
/// or the connection table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub config: LbConfig,
    pub vips: Vec<(VipKey, VipMeta)>,
    pub vip_addrs: Vec<VipAddrKey>,
    /// Backend entries that were ever written (generation > 0).
    pub backends: Vec<(u32, Backend)>,
    pub filter: Vec<u64>,
    /// Non-zero `BACKEND_FLAGS` entries, by backend slot.
    pub flags: Vec<(u32, u32)>,
}

/// The maps of one loaded `xdp-lb` object.
pub struct BpfMaps {
    config: Array<MapData, LbConfig>,
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    vip_filter: Array<MapData, u64>,
    backends: Array<MapData, Backend>,
    /// The connection table: IPv4 flows (`FLOWS4`, mapped), IPv6 flows (`CONNS`).
    flows4: crate::flows4::Flows4,
    conns: HashMap<MapData, FlowKey, ConnValue>,
    /// `CONN_EPOCH`, the controller's clock, mapped: the clock and sync take
    /// handles of their own.
    epoch: crate::clock::ConnEpoch,
    rings: RingMap,
    /// Per-VIP and per-backend traffic, zeroed when a slot changes hands (the
    /// statistics readers, `stats.rs`, hold their own handles).
    vip_stats: PerCpuArray<MapData, Traffic>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    /// `BACKEND_FLAGS`: not in the object; pinned by the loader, standalone otherwise.
    flags: Array<MapData, u32>,
}

/// Takes map `name` out of a loaded `xdp-lb` as the typed map `T`.
pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("the xdp-lb object has no map {name}"))?;
    T::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))
}

/// A second handle on map `name` of a loaded `xdp-lb`, leaving the map in the
/// object for whoever takes it.
fn duplicate<T>(ebpf: &Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| anyhow!("the xdp-lb object has no map {name}"))?;
    let (Map::PerCpuArray(data) | Map::Array(data)) = map else {
        bail!("map {name} is not an array")
    };
    let data = dup(data, name)?;
    let map = match map {
        Map::Array(_) => Map::Array(data),
        _ => Map::PerCpuArray(data),
    };
    T::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))
}

impl BpfMaps {
    /// Takes the balancer's forwarding maps out of a loaded object (and second
    /// handles on its traffic statistics and BACKENDS, which stay in the object
    /// for `stats::BpfStats`).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        let rings = ebpf
            .take_map(names::RINGS)
            .ok_or_else(|| anyhow!("the xdp-lb object has no map {}", names::RINGS))?;
        let epoch = crate::clock::ConnEpoch::new(array_data(ebpf, names::CONN_EPOCH)?)?;
        let config: Array<MapData, LbConfig> = take(ebpf, names::CONFIG)?;
        // A pinned table keeps the index a previous controller stamped into the
        // pinned config; a new one gets its own (`flows4::Index`).
        let written = config.get(&0, 0).context("reading CONFIG")?;
        let flows4 = array_data(ebpf, names::FLOWS4)?;
        let sets = flows4.info().map_err(|e| anyhow!("{}: {e}", names::FLOWS4))?.max_entries();
        let index = crate::flows4::Index::of(sets, &written)?;
        Ok(Self {
            config,
            vips: take(ebpf, names::VIPS)?,
            vip_addrs: take(ebpf, names::VIP_ADDRS)?,
            vip_filter: take(ebpf, names::VIP_FILTER)?,
            backends: duplicate(ebpf, names::BACKENDS)?,
            flows4: crate::flows4::Flows4::new(flows4, index)?,
            conns: take(ebpf, names::CONNS)?,
            epoch,
            rings: RingMap::new(rings)?,
            vip_stats: duplicate(ebpf, names::VIP_STATS)?,
            backend_stats: duplicate(ebpf, names::BACKEND_STATS)?,
            flags: backend_flags_map()?,
        })
    }

    /// Uses `flags` (the pinned `BACKEND_FLAGS`) instead of a map of its own.
    #[must_use]
    pub fn with_flags(self, flags: Array<MapData, u32>) -> Self {
        Self { flags, ..self }
    }

    /// The established connection-table entry of a flow, if any (`FLOWS4` holds
    /// IPv4 flows).
    pub fn conn(&self, flow: &FlowKey) -> Result<Option<ConnValue>> {
        if flow.family == lb_common::family::V4 {
            return Ok(self.flows4.established(&FlowKey4::of(flow)));
        }
        match self.conns.get(flow, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading the connection table"),
        }
    }

    /// Second handles on the connection table, for peer sync's own thread (with
    /// the clock, which its writes stamp entries with).
    pub fn conns_handle(&self) -> Result<crate::sync::conns::BpfConns> {
        Ok(crate::sync::conns::BpfConns::new(
            self.flows4.try_clone()?,
            second(&self.conns, names::CONNS)?,
            self.conn_epoch()?,
        ))
    }

    /// A second mapping of the IPv4 table (`FLOWS4`).
    pub fn flows4(&self) -> Result<crate::flows4::Flows4> {
        self.flows4.try_clone()
    }

    /// The controller's clock (`CONN_EPOCH`), mapped.
    pub fn conn_epoch(&self) -> Result<crate::clock::ConnEpoch> {
        self.epoch.try_clone()
    }

    pub fn backend(&self, index: u32) -> Result<Backend> {
        self.backends.get(&index, 0).with_context(|| format!("reading BACKENDS[{index}]"))
    }
}

/// Takes the array `name` out of a loaded `xdp-lb` as its map data (for a mapping).
fn array_data(ebpf: &mut Ebpf, name: &str) -> Result<MapData> {
    match ebpf.take_map(name) {
        Some(Map::Array(data)) => Ok(data),
        Some(_) => bail!("map {name} is not an array"),
        None => bail!("the xdp-lb object has no map {name}"),
    }
}

/// A second handle on the LRU hash `map` (called `name`).
fn second<K: aya::Pod>(
    map: &HashMap<MapData, K, ConnValue>,
    name: &str,
) -> Result<HashMap<MapData, K, ConnValue>> {
    use aya::maps::IterableMap as _;
    let data = dup(map.map(), name)?;
    HashMap::try_from(Map::LruHashMap(data)).map_err(|e| anyhow!("{name}: {e}"))
}

/// A second handle on the map `map` (called `name`), its own file descriptor.
pub(crate) fn dup(map: &MapData, name: &str) -> Result<MapData> {
    let fd = map.fd().as_fd().try_clone_to_owned().with_context(|| format!("map {name}: dup"))?;
    MapData::from_fd(fd).map_err(|e| anyhow!("map {name}: {e}"))
}

/// The first `bytes` of the array `map` (called `name`, created
/// `BPF_F_MMAPABLE`) mapped shared into our memory, read-write; the caller
/// unmaps it (`libc::munmap`) before it drops `map`.
pub(crate) fn mmap_shared(map: &MapData, bytes: usize, name: &str) -> Result<NonNull<u8>> {
    // SAFETY: mapping a BPF array fd; the kernel checks size and flags.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mmap of {name} (was it created without BPF_F_MMAPABLE?)"));
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| anyhow!("mmap of {name} returned null"))
}

impl Maps for BpfMaps {
    fn set_config(&mut self, config: &LbConfig) -> Result<()> {
        let stamped = self.flows4.index().stamp(*config);
        self.config.set(0, stamped, 0).context("writing CONFIG")
    }

    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        self.vips.insert(key, meta, 0).context("writing VIPS")
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        match self.vips.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing from VIPS"),
        }
    }

    fn set_vip_addr(&mut self, key: &VipAddrKey, present: bool) -> Result<()> {
        if present {
            return self.vip_addrs.insert(key, 1, 0).context("writing VIP_ADDRS");
        }
        match self.vip_addrs.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing from VIP_ADDRS"),
        }
    }

    fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<()> {
        self.backends.set(index, backend, 0).with_context(|| format!("writing BACKENDS[{index}]"))
    }

    fn set_vip_filter(&mut self, index: u32, word: u64) -> Result<()> {
        self.vip_filter.set(index, word, 0).with_context(|| format!("writing VIP_FILTER[{index}]"))
    }

    fn write_ring(&mut self, ring: u32, slots: &[u32]) -> Result<()> {
        self.rings.write(ring, slots)
    }

    fn set_flags(&mut self, index: u32, flags: u32) -> Result<()> {
        self.flags.set(index, flags, 0).with_context(|| format!("writing BACKEND_FLAGS[{index}]"))
    }

    fn zero_traffic(&mut self, slot: Slot, index: u32) -> Result<()> {
        // Readers attribute a slot's hits to the VIP its BACKENDS entry names.
        let _moving = stats::moving();
        match slot {
            Slot::Backend => {
                // Hits left in a slot given to another backend: its VIP keeps them.
                let vip = self.backend(index)?.vip;
                let left = stats::summed(&self.backend_stats, names::BACKEND_STATS, index)?.hits;
                add(&mut self.vip_stats, vip_stats::retired(vip), &left)?;
                zero(&mut self.backend_stats, names::BACKEND_STATS, index)
            }
            Slot::Vip => {
                // A VIP index given to another VIP: the old VIP's hits (retired, or
                // in slots still naming the index) stay in the global totals only.
                let mut gone =
                    stats::summed(&self.vip_stats, names::VIP_STATS, vip_stats::retired(index))?;
                for slot in 0..MAX_BACKENDS {
                    if self.backend(slot)?.vip != index {
                        continue;
                    }
                    let stats = stats::summed(&self.backend_stats, names::BACKEND_STATS, slot)?;
                    if stats.hits != Traffic::default() {
                        gone.add(&stats.hits);
                        zero(&mut self.backend_stats, names::BACKEND_STATS, slot)?;
                    }
                }
                add(&mut self.vip_stats, vip_stats::GONE, &gone)?;
                zero(&mut self.vip_stats, names::VIP_STATS, vip_stats::retired(index))?;
                zero(&mut self.vip_stats, names::VIP_STATS, index)
            }
        }
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut backends = Vec::new();
        let mut flags = Vec::new();
        for index in 0..MAX_BACKENDS {
            let b = self.backend(index)?;
            if b.generation != 0 {
                backends.push((index, b));
            }
            let f = self.flags.get(&index, 0).context("reading BACKEND_FLAGS")?;
            if f != 0 {
                flags.push((index, f));
            }
        }
        Ok(Snapshot {
            config: self.config.get(&0, 0).context("reading CONFIG")?,
            vips: self.vips.iter().collect::<Result<_, _>>().context("reading VIPS")?,
            vip_addrs: self
                .vip_addrs
                .keys()
                .collect::<Result<_, _>>()
                .context("reading VIP_ADDRS")?,
            backends,
            filter: self
                .vip_filter
                .iter()
                .collect::<Result<_, _>>()
                .context("reading VIP_FILTER")?,
            flags,
        })
    }

    fn read_ring(&self, ring: u32) -> Result<Vec<u32>> {
        Ok(self.rings.ring(ring))
    }
}

/// A fresh, unpinned `BACKEND_FLAGS` map (`loader` pins its own).
pub fn backend_flags_map() -> Result<Array<MapData, u32>> {
    Array::create(MAX_BACKENDS, 0).map_err(|e| anyhow!("creating BACKEND_FLAGS: {e}"))
}

/// The RINGS array, mmapped (it is created BPF_F_MMAPABLE): replacing a 65537-slot
/// ring is one pass over memory, not 65537 syscalls.
struct RingMap {
    ptr: NonNull<RingSlot>,
    len: usize,
    _map: MapData,
}

impl RingMap {
    fn new(map: Map) -> Result<Self> {
        let Map::Array(data) = map else { bail!("map {} is not an array", names::RINGS) };
        let len = RING_ENTRIES as usize;
        let bytes = (len * size_of::<RingSlot>()).next_multiple_of(page_size());
        // The mapping lives as long as `_map` (the fd) in this struct.
        let ptr = mmap_shared(&data, bytes, names::RINGS)?.cast::<RingSlot>();
        Ok(Self { ptr, len, _map: data })
    }

    fn range(ring: u32) -> std::ops::Range<usize> {
        let start = ring as usize * RING_SIZE as usize;
        start..start + RING_SIZE as usize
    }

    fn ring(&self, ring: u32) -> Vec<u32> {
        // SAFETY: ptr points at `len` slots mapped shared with the kernel; the kernel
        // only reads them.
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        all[Self::range(ring)].iter().map(|s| s.backend).collect()
    }

    fn write(&mut self, ring: u32, slots: &[u32]) -> Result<()> {
        let range = Self::range(ring);
        if range.end > self.len || slots.len() != range.len() {
            bail!("ring {ring} with {} slots does not fit RINGS", slots.len());
        }
        // SAFETY: as in `ring`; &mut self makes us the only writer.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        for (dst, &backend) in all[range].iter_mut().zip(slots) {
            dst.backend = backend;
        }
        Ok(())
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        let bytes = (self.len * size_of::<RingSlot>()).next_multiple_of(page_size());
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), bytes) };
    }
}

// SAFETY: the mapping is plain memory owned by this struct.
unsafe impl Send for RingMap {}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Adds `t` to entry `index` of VIP_STATS (one of the controller's entries: the
/// data path never writes them, so nothing races this read-modify-write).
fn add(map: &mut PerCpuArray<MapData, Traffic>, index: u32, t: &Traffic) -> Result<()> {
    if *t == Traffic::default() {
        return Ok(());
    }
    let name = names::VIP_STATS;
    let mut values: Vec<Traffic> =
        map.get(&index, 0).with_context(|| format!("reading {name}[{index}]"))?.to_vec();
    values.first_mut().ok_or_else(|| anyhow!("{name}[{index}] has no CPU"))?.add(t);
    let values = PerCpuValues::try_from(values).map_err(|e| anyhow!("{e}"))?;
    map.set(index, values, 0).with_context(|| format!("writing {name}[{index}]"))
}

/// Zeroes entry `index` of a per-CPU statistics array on every CPU.
fn zero<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    name: &str,
    index: u32,
) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
    let zeros = PerCpuValues::try_from((0..cpus).map(|_| T::default()).collect::<Vec<_>>())
        .map_err(|e| anyhow!("{e}"))?;
    map.set(index, zeros, 0).with_context(|| format!("zeroing {name}[{index}]"))
}
