//! The data path's statistics, read-only: its global counters and the traffic
//! per VIP and per backend, summed over CPUs. Status, /metrics and (later)
//! passive detection read them; nothing here writes a map.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use lb_common::{CounterSet, Traffic, map_names as names};

use crate::maps::take;

/// What readers of the statistics need; `BpfStats` is the real thing.
pub trait Stats {
    /// Every global counter.
    fn counters(&self) -> Result<CounterSet>;
    /// Packets and bytes sent to VIP `index`.
    fn vip_traffic(&self, index: u32) -> Result<Traffic>;
    /// Packets and bytes sent to backend `index`.
    fn backend_traffic(&self, index: u32) -> Result<Traffic>;
}

/// The statistics maps of one loaded `xdp-lb`.
pub struct BpfStats {
    stats: PerCpuArray<MapData, CounterSet>,
    vip_stats: PerCpuArray<MapData, Traffic>,
    backend_stats: PerCpuArray<MapData, Traffic>,
}

impl BpfStats {
    /// Takes the statistics maps out of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            stats: take(ebpf, names::STATS)?,
            vip_stats: take(ebpf, names::VIP_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
        })
    }
}

impl Stats for BpfStats {
    fn counters(&self) -> Result<CounterSet> {
        let mut sum = CounterSet::default();
        for cpu in self.stats.get(&0, 0).context("reading STATS")?.iter() {
            for (total, v) in sum.values.iter_mut().zip(cpu.values) {
                *total += v;
            }
        }
        Ok(sum)
    }

    fn vip_traffic(&self, index: u32) -> Result<Traffic> {
        sum_traffic(&self.vip_stats, index)
    }

    fn backend_traffic(&self, index: u32) -> Result<Traffic> {
        sum_traffic(&self.backend_stats, index)
    }
}

fn sum_traffic(map: &PerCpuArray<MapData, Traffic>, index: u32) -> Result<Traffic> {
    let mut sum = Traffic::default();
    for t in map.get(&index, 0).with_context(|| format!("reading traffic[{index}]"))?.iter() {
        sum.packets += t.packets;
        sum.bytes += t.bytes;
    }
    Ok(sum)
}
