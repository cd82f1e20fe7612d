//! `FLOWS4`, the data path's IPv4 connection table (`lb_common::flow_table`), as
//! the controller, peer sync and the tests read and write it: mapped into our
//! memory (the map is mmapable), each way read whole and written in
//! `flow_table::store`'s order, as the data path does, so that neither side
//! takes a way the other is writing for a flow's entry.
//!
//! Which set holds a flow is the table's own business ([`Index`]): its size, and
//! a seed chosen when the table was created. The controller stamps both into
//! every `LbConfig` it writes (`Index::stamp`), and a restarted controller takes
//! them back from the pinned config, so a flow's set never moves under its entry
//! (a reload may change `hash_seed`, which would).

use std::{path::Path, ptr::NonNull};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData};
use lb_common::{
    ConnValue, FlowKey, FlowKey4, FlowSet, FlowWay, LbConfig,
    flow_table::{self, State, WAYS},
    hash::{Seed, flow_set},
    map_names,
};

/// Where a flow's set is: the table's size and seed (`LbConfig::flow_sets_mask`,
/// `LbConfig::flow_seed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Index {
    pub mask: u32,
    pub seed: Seed,
}

impl Index {
    /// The index of a table of `sets` sets: the one `written` (the config the
    /// map holds, a previous controller's after a pinned restart) names if it is
    /// for this size, else a new one with a random seed.
    pub fn of(sets: u32, written: &LbConfig) -> Result<Self> {
        let mask = sets
            .checked_sub(1)
            .filter(|m| m & sets == 0)
            .ok_or_else(|| anyhow!("{}: {sets} sets, not a power of two", map_names::FLOWS4))?;
        if written.flow_sets_mask == mask && written.flow_seed != Seed::default() {
            return Ok(Self { mask, seed: written.flow_seed });
        }
        Ok(Self { mask, seed: crate::config::seed::generate()? })
    }

    /// The index `config` names (as a controller wrote it).
    #[must_use]
    pub const fn written(config: &LbConfig) -> Self {
        Self { mask: config.flow_sets_mask, seed: config.flow_seed }
    }

    /// `config` with this index in it: what the data path hashes flows by.
    #[must_use]
    pub const fn stamp(&self, config: LbConfig) -> LbConfig {
        LbConfig { flow_sets_mask: self.mask, flow_seed: self.seed, ..config }
    }

    /// The set of the flow `key`.
    #[must_use]
    pub const fn set(&self, key: &FlowKey4) -> usize {
        flow_set(key.words(), &self.seed, self.mask) as usize
    }
}

/// How many ways hold what, at one walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Flows served from the table: established or picked up.
    pub established: u64,
    pub pending: u64,
}

/// `FLOWS4`, mapped.
pub struct Flows4 {
    ptr: NonNull<FlowSet>,
    sets: usize,
    index: Index,
    map: MapData,
}

// SAFETY: the mapping is shared memory owned by this struct; every access goes
// through `flow_table::load` and `store`, word by word, as the data path's do.
unsafe impl Send for Flows4 {}
unsafe impl Sync for Flows4 {}

impl Flows4 {
    /// Maps `map` (the loaded object's `FLOWS4`, created `BPF_F_MMAPABLE`),
    /// whose sets `index` must match.
    pub fn new(map: MapData, index: Index) -> Result<Self> {
        let name = map_names::FLOWS4;
        let info = map.info().map_err(|e| anyhow!("{name}: {e}"))?;
        let sets = info.max_entries() as usize;
        if sets != index.mask as usize + 1 {
            bail!("{name} holds {sets} sets, its index is for {}", index.mask as usize + 1);
        }
        if info.value_size() as usize != size_of::<FlowSet>() {
            bail!(
                "{name}: values of {} bytes, not a set's {}",
                info.value_size(),
                size_of::<FlowSet>()
            );
        }
        // The mapping lives as long as `map` (the fd) in this struct.
        let ptr = crate::maps::mmap_shared(&map, Self::bytes(sets), name)?.cast::<FlowSet>();
        Ok(Self { ptr, sets, index, map })
    }

    /// The table pinned under `pin_dir` (a running or stopped balancer's), with
    /// the index its pinned config names.
    pub fn pinned(pin_dir: &Path) -> Result<Self> {
        let open = |name| {
            MapData::from_pin(crate::pins::map_path(pin_dir, name))
                .with_context(|| format!("opening the pinned {name}"))
        };
        let config: Array<MapData, LbConfig> =
            Array::try_from(Map::Array(open(map_names::CONFIG)?))?;
        let written = config.get(&0, 0).context("reading the pinned CONFIG")?;
        Self::new(open(map_names::FLOWS4)?, Index::written(&written))
    }

    /// Another mapping of the same table, through a handle of its own (for a
    /// thread of its own: sync, the counter).
    pub fn try_clone(&self) -> Result<Self> {
        Self::new(crate::maps::dup(&self.map, map_names::FLOWS4)?, self.index)
    }

    fn bytes(sets: usize) -> usize {
        (sets * size_of::<FlowSet>()).next_multiple_of(crate::maps::page_size())
    }

    /// The table's index (size and seed).
    #[must_use]
    pub const fn index(&self) -> Index {
        self.index
    }

    fn way(&self, set: usize, at: usize) -> *mut FlowWay {
        assert!(set < self.sets && at < WAYS);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { &raw mut (*self.ptr.as_ptr().add(set)).ways[at] }
    }

    fn read_set(&self, set: usize) -> FlowSet {
        // SAFETY: `way` is in the mapping and 8-byte aligned.
        FlowSet { ways: std::array::from_fn(|at| unsafe { flow_table::load(self.way(set, at)) }) }
    }

    /// What the table holds for the flow `key`, read whole: its entry and state.
    #[must_use]
    pub fn get(&self, key: &FlowKey4) -> Option<(ConnValue, State)> {
        let set = self.read_set(self.index.set(key));
        let w = set.ways[set.position(key.words())?];
        w.state().map(|state| (w.conn, state))
    }

    /// The flow's entry, established or picked up.
    #[must_use]
    pub fn established(&self, key: &FlowKey4) -> Option<ConnValue> {
        self.get(key).and_then(|(conn, state)| state.served().then_some(conn))
    }

    /// Puts the flow in the table established, used at `clock`, unless its set
    /// holds it (established or pending: the data path decided it); false then.
    /// A full set gives up its way used longest ago, as for the data path's own.
    #[must_use]
    pub fn insert_new(&self, key: &FlowKey4, conn: ConnValue, clock: u32) -> bool {
        let at = self.index.set(key);
        let set = self.read_set(at);
        if set.position(key.words()).is_some_and(|w| set.ways[w].state().is_some()) {
            return false;
        }
        self.write(at, &set, FlowWay::new(key.words(), conn, State::Established, clock));
        true
    }

    fn write(&self, at: usize, set: &FlowSet, way: FlowWay) {
        let w = set.way_for_established(way.key);
        // SAFETY: in the mapping, aligned; `store`'s order (see the module text).
        unsafe { flow_table::store(self.way(at, w), &way) };
    }

    /// Takes the flow out of the table; false if it was not there.
    #[must_use]
    pub fn remove(&self, key: &FlowKey4) -> bool {
        let at = self.index.set(key);
        let Some(w) = self.read_set(at).position(key.words()) else { return false };
        // SAFETY: in the mapping, aligned: a cleared first key word is an empty way.
        unsafe { std::ptr::write_volatile(&raw mut (*self.way(at, w)).key[0], 0) };
        true
    }

    /// The established (or picked-up) entries of sets `from..` (at most `sets` of them) into
    /// `out`; the set to go on from, `None` at the end of the table.
    pub fn scan(
        &self,
        from: usize,
        sets: usize,
        out: &mut Vec<(FlowKey, ConnValue)>,
    ) -> Option<usize> {
        let end = from.saturating_add(sets).min(self.sets);
        for at in from..end {
            for w in self.read_set(at).ways {
                if w.state().is_some_and(State::served) {
                    out.push((FlowKey4::from_words(w.key).flow(), w.conn));
                }
            }
        }
        (end < self.sets).then_some(end)
    }

    /// The ways that hold an established flow, and a pending handshake.
    #[must_use]
    pub fn count(&self) -> Counts {
        let mut c = Counts::default();
        for at in 0..self.sets {
            for w in self.read_set(at).ways {
                match w.state() {
                    Some(State::Established | State::Picked) => c.established += 1,
                    Some(State::Pending) => c.pending += 1,
                    None => {}
                }
            }
        }
        c
    }
}

impl Drop for Flows4 {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), Self::bytes(self.sets)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_keeps_the_index_its_written_config_names_and_a_new_one_gets_its_own() {
        let written =
            LbConfig { flow_sets_mask: 1023, flow_seed: [1, 2, 3, 4], ..LbConfig::default() };
        // A pinned table after a restart: the previous controller's index, so
        // every flow's set stays where its entry is.
        assert_eq!(Index::of(1024, &written).unwrap(), Index { mask: 1023, seed: [1, 2, 3, 4] });
        // Another size, or a config never stamped (a new table): a random seed.
        for (sets, config) in [(2048, written), (1024, LbConfig::default())] {
            let new = Index::of(sets, &config).unwrap();
            assert_eq!(new.mask, sets - 1);
            assert_ne!(new.seed, [1, 2, 3, 4]);
            assert_ne!(new.seed, Seed::default());
        }
        assert!(Index::of(1000, &written).unwrap_err().to_string().contains("not a power of two"));
        // Every config the controller writes carries it, whatever the plan said.
        let stamped =
            Index::of(1024, &written).unwrap().stamp(LbConfig { mtu: 1500, ..LbConfig::default() });
        assert_eq!(
            (stamped.mtu, stamped.flow_sets_mask, stamped.flow_seed),
            (1500, 1023, [1, 2, 3, 4])
        );
    }
}
