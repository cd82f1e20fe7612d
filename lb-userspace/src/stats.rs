//! The data path's statistics, read-only: its global counters, the traffic per
//! VIP and per backend, and each backend's handshakes, summed over CPUs. Status,
//! /metrics and the passive signal read them; nothing here writes a map.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues},
};
use lb_common::{BackendStats, CounterSet, Handshakes, Traffic, map_names as names};

use crate::{conn_table, maps::take};

/// What readers of the statistics need; `BpfStats` is the real thing.
pub trait Stats {
    /// Every global counter.
    fn counters(&self) -> Result<CounterSet>;
    /// Packets and bytes sent to VIP `index`.
    fn vip_traffic(&self, index: u32) -> Result<Traffic>;
    /// Packets and bytes sent to backend `index`.
    fn backend_traffic(&self, index: u32) -> Result<Traffic>;
    /// The connection table's size and last count, where one is kept.
    fn conn_table(&self) -> Option<conn_table::Use>;
}

/// Where the passive signal reads each backend's SYN and handshake counters;
/// `BpfStats` is the real thing.
pub trait HandshakeCounters {
    /// The counters of backend `index`, cumulative, summed over CPUs.
    fn handshakes(&self, index: u32) -> Result<Handshakes>;
}

/// The statistics maps of one loaded `xdp-lb`.
pub struct BpfStats {
    stats: PerCpuArray<MapData, CounterSet>,
    vip_stats: PerCpuArray<MapData, Traffic>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    conn_table: Option<conn_table::Watch>,
}

impl BpfStats {
    /// Takes the statistics maps out of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            stats: take(ebpf, names::STATS)?,
            vip_stats: take(ebpf, names::VIP_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
            conn_table: None,
        })
    }

    /// With the connection table counted by `watch` (its thread stops when these
    /// statistics are dropped).
    #[must_use]
    pub fn counting(self, watch: conn_table::Watch) -> Self {
        Self { conn_table: Some(watch), ..self }
    }

    fn backend(&self, index: u32) -> Result<PerCpuValues<BackendStats>> {
        self.backend_stats
            .get(&index, 0)
            .with_context(|| format!("reading {}[{index}]", names::BACKEND_STATS))
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
        let mut sum = Traffic::default();
        for b in self.backend(index)?.iter() {
            add_traffic(&mut sum, &b.traffic);
        }
        Ok(sum)
    }

    fn conn_table(&self) -> Option<conn_table::Use> {
        self.conn_table.as_ref().map(conn_table::Watch::latest)
    }
}

impl HandshakeCounters for BpfStats {
    fn handshakes(&self, index: u32) -> Result<Handshakes> {
        let mut sum = Handshakes::default();
        for b in self.backend(index)?.iter() {
            sum.add(&b.handshakes);
        }
        Ok(sum)
    }
}

fn sum_traffic(map: &PerCpuArray<MapData, Traffic>, index: u32) -> Result<Traffic> {
    let mut sum = Traffic::default();
    for t in map.get(&index, 0).with_context(|| format!("reading traffic[{index}]"))?.iter() {
        add_traffic(&mut sum, t);
    }
    Ok(sum)
}

fn add_traffic(sum: &mut Traffic, t: &Traffic) {
    sum.packets += t.packets;
    sum.bytes += t.bytes;
}
