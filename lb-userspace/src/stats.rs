//! The data path's statistics, read-only: its global counters, the traffic per
//! VIP and per backend, and each backend's handshakes, summed over CPUs. Status,
//! /metrics and the passive signal read them; nothing here writes a map.
//!
//! A table hit is counted only in its backend slot's `hits` (`lb_common::stats`),
//! so `action_tx`, `conn_hit` and a VIP's traffic are derived here, the one
//! place, from every slot's hits and the hits the writer moved out of slots it
//! gave to another backend or VIP (`maps::BpfMaps::zero_traffic`, under
//! [`moving`], so a reader never sees a hit twice or not at all).

use std::{
    os::fd::AsFd as _,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, MapData, PerCpuArray},
};
use lb_common::{
    Backend, BackendStats, Counter, CounterSet, Handshakes, Traffic, limits::MAX_BACKENDS,
    map_names as names, vip_stats,
};

use crate::{batch, conn_table, maps::take};

/// Held for writing while the writer moves hits between entries, for reading
/// while a total that includes them is read.
static MOVING: RwLock<()> = RwLock::new(());

/// The writer's hold of [`MOVING`].
pub(crate) fn moving() -> RwLockWriteGuard<'static, ()> {
    MOVING.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn reading() -> RwLockReadGuard<'static, ()> {
    MOVING.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The global counters with the table hits counted outside `STATS` (`hits`: the
/// packets of every slot's and every moved `Traffic`): each was forwarded, a hit.
#[must_use]
pub fn with_hits(mut counters: CounterSet, hits: u64) -> CounterSet {
    for c in [Counter::ActionTx, Counter::ConnHit] {
        counters.values[c as usize] += hits;
    }
    counters
}

/// What readers of the statistics need; `BpfStats` is the real thing.
pub trait Stats {
    /// Every global counter.
    fn counters(&self) -> Result<CounterSet>;
    /// Packets and bytes sent to VIP `index`.
    fn vip_traffic(&self, index: u32) -> Result<Traffic>;
    /// [`Stats::vip_traffic`] of each of `indices`, in order (`BpfStats` reads the
    /// backend slots once for all of them).
    fn vips_traffic(&self, indices: &[u32]) -> Result<Vec<Traffic>> {
        indices.iter().map(|&i| self.vip_traffic(i)).collect()
    }
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
    /// Which VIP each backend slot's hits count for.
    backends: Array<MapData, Backend>,
    conn_table: Option<conn_table::Watch>,
}

impl BpfStats {
    /// Takes the statistics maps out of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            stats: take(ebpf, names::STATS)?,
            vip_stats: take(ebpf, names::VIP_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
            backends: take(ebpf, names::BACKENDS)?,
            conn_table: None,
        })
    }

    /// With the connection table counted by `watch` (its thread stops when these
    /// statistics are dropped).
    #[must_use]
    pub fn counting(self, watch: conn_table::Watch) -> Self {
        Self { conn_table: Some(watch), ..self }
    }

    /// Every backend slot's hits, summed over CPUs, with the VIP index its
    /// BACKENDS entry names (two system calls, not one per slot).
    fn slot_hits(&self) -> Result<Vec<(u32, Traffic)>> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let fd = self.backend_stats.map().fd().as_fd();
        let stats: Vec<BackendStats> = batch::array(fd, MAX_BACKENDS, cpus)
            .with_context(|| format!("reading {}", names::BACKEND_STATS))?;
        let backends: Vec<Backend> =
            batch::array(self.backends.map().fd().as_fd(), MAX_BACKENDS, 1)
                .with_context(|| format!("reading {}", names::BACKENDS))?;
        Ok(backends
            .iter()
            .zip(stats.chunks(cpus))
            .map(|(b, per_cpu)| {
                let mut hits = Traffic::default();
                for s in per_cpu {
                    hits.add(&s.hits);
                }
                (b.vip, hits)
            })
            .collect())
    }
}

impl Stats for BpfStats {
    fn counters(&self) -> Result<CounterSet> {
        let _reading = reading();
        let mut sum = CounterSet::default();
        for cpu in self.stats.get(&0, 0).context("reading STATS")?.iter() {
            for (total, v) in sum.values.iter_mut().zip(cpu.values) {
                *total += v;
            }
        }
        let mut hits: u64 = self.slot_hits()?.iter().map(|(_, t)| t.packets).sum();
        for moved in vip_stats::retired(0)..vip_stats::ENTRIES {
            hits += summed(&self.vip_stats, names::VIP_STATS, moved)?.packets;
        }
        Ok(with_hits(sum, hits))
    }

    fn vip_traffic(&self, index: u32) -> Result<Traffic> {
        Ok(self.vips_traffic(&[index])?[0])
    }

    fn vips_traffic(&self, indices: &[u32]) -> Result<Vec<Traffic>> {
        let _reading = reading();
        let slots = self.slot_hits()?;
        indices
            .iter()
            .map(|&index| {
                let mut sum = summed(&self.vip_stats, names::VIP_STATS, index)?;
                sum.add(&summed(&self.vip_stats, names::VIP_STATS, vip_stats::retired(index))?);
                for (_, hits) in slots.iter().filter(|(vip, _)| *vip == index) {
                    sum.add(hits);
                }
                Ok(sum)
            })
            .collect()
    }

    fn backend_traffic(&self, index: u32) -> Result<Traffic> {
        let _reading = reading();
        Ok(summed(&self.backend_stats, names::BACKEND_STATS, index)?.forwarded())
    }

    fn conn_table(&self) -> Option<conn_table::Use> {
        self.conn_table.as_ref().map(conn_table::Watch::latest)
    }
}

impl HandshakeCounters for BpfStats {
    fn handshakes(&self, index: u32) -> Result<Handshakes> {
        Ok(summed(&self.backend_stats, names::BACKEND_STATS, index)?.handshakes)
    }
}

/// Entry `index` of the per-CPU statistics array `map` (called `name`), summed
/// over CPUs.
pub(crate) fn summed<T: aya::Pod + Default + Summed>(
    map: &PerCpuArray<MapData, T>,
    name: &str,
    index: u32,
) -> Result<T> {
    let mut total = T::default();
    for v in map.get(&index, 0).with_context(|| format!("reading {name}[{index}]"))?.iter() {
        total.add_to(v);
    }
    Ok(total)
}

/// A statistics value that adds up over CPUs.
pub(crate) trait Summed {
    fn add_to(&mut self, other: &Self);
}

impl Summed for Traffic {
    fn add_to(&mut self, other: &Self) {
        self.add(other);
    }
}

impl Summed for BackendStats {
    fn add_to(&mut self, other: &Self) {
        self.traffic.add(&other.traffic);
        self.handshakes.add(&other.handshakes);
        self.hits.add(&other.hits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_hits_are_forwarded_packets_and_connection_table_hits() {
        let mut stats = CounterSet::default();
        stats.values[Counter::ActionTx as usize] = 3;
        stats.values[Counter::ConnSyn as usize] = 2;
        let derived = with_hits(stats, 10);
        assert_eq!(derived.get(Counter::ActionTx), 13);
        assert_eq!(derived.get(Counter::ConnHit), 10);
        assert_eq!(derived.get(Counter::ConnSyn), 2, "nothing else");
        assert_eq!(derived.values.iter().sum::<u64>(), 25);
    }
}
