//! The one writer of the data path's maps. Given the desired [`DesiredState`], it
//! allocates VIP and backend slots, builds Maglev rings and applies only the
//! difference, in an order that never lets a packet reach a dead backend:
//! backends coming up are written before the rings that use them; a changed ring
//! is written into the VIP's idle ring and then switched to with one VIP-map update;
//! backends going down are marked after the rings stop using them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Result, bail};
use lb_common::{
    Backend, BackendState, LbConfig, VipKey, VipMeta,
    limits::{MAX_BACKENDS, MAX_VIPS, RING_SIZE, RINGS_PER_VIP, VIP_FILTER_WORDS},
    vip::{VipAddrKey, filter_bit},
};

use crate::{
    desired::{DesiredState, DesiredVip, addr_words},
    maglev::{self, Member},
    maps::Maps,
};

/// What one `apply` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub config_written: bool,
    pub backends_written: usize,
    pub rings_switched: usize,
    /// Ring slots whose backend changed, over all switched rings.
    pub slots_moved: usize,
    pub vips_added: usize,
    pub vips_removed: usize,
}

impl Applied {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// (VIP name, backend name, backend address).
type BackendId = (String, String, IpAddr);

/// What a restarted controller found in pinned maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// The entry of each (VIP, backend) of the plan found in the maps (state, MAC).
    pub entries: BTreeMap<(String, String), Backend>,
    /// VIPs and backends in the maps that the plan no longer has; the next apply removes them.
    pub orphans: usize,
}

struct VipSlot {
    index: u32,
    key: VipKey,
    /// Which of the VIP's two rings the kernel uses.
    active: u32,
    table: Vec<u32>,
}

impl VipSlot {
    fn ring(&self, which: u32) -> u32 {
        self.index * RINGS_PER_VIP + which
    }
}

pub struct MapWriter<M: Maps> {
    maps: M,
    config: Option<LbConfig>,
    vips: BTreeMap<String, VipSlot>,
    backends: BTreeMap<BackendId, (u32, Backend)>,
    vip_addrs: BTreeSet<VipAddrKey>,
    /// The VIP address filter as written.
    filter: Vec<u64>,
    /// Generation last given to each backend index.
    generations: Vec<u32>,
}

impl<M: Maps> MapWriter<M> {
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            config: None,
            vips: BTreeMap::new(),
            backends: BTreeMap::new(),
            vip_addrs: BTreeSet::new(),
            filter: vec![0; VIP_FILTER_WORDS as usize],
            generations: vec![0; MAX_BACKENDS as usize],
        }
    }

    /// Takes over maps a previous controller filled (pinned maps after a restart):
    /// VIPs and backends of `plan` keep their slots, generations and rings, so
    /// established flows keep their backends; anything else is removed by the next
    /// `apply`.
    pub fn adopt(maps: M, plan: &DesiredState) -> Result<(Self, Adopted)> {
        let snap = maps.snapshot()?;
        let mut w = Self::new(maps);
        let mut adopted = Adopted::default();
        w.config = Some(snap.config);
        if snap.filter.len() == w.filter.len() {
            w.filter = snap.filter;
        }
        w.vip_addrs = snap.vip_addrs.into_iter().collect();
        for (index, b) in &snap.backends {
            if let Some(g) = w.generations.get_mut(*index as usize) {
                *g = b.generation;
            }
        }
        let mut claimed = BTreeSet::new();
        for (key, meta) in &snap.vips {
            let Some(active) =
                meta.ring.checked_sub(meta.index * RINGS_PER_VIP).filter(|a| *a < RINGS_PER_VIP)
            else {
                continue;
            };
            let table = w.maps.read_ring(meta.ring)?;
            let found = plan.vips.iter().find(|v| v.key() == *key && !w.vips.contains_key(&v.name));
            let name =
                found.map_or_else(|| format!("(orphan vip {})", meta.index), |v| v.name.clone());
            w.vips.insert(name, VipSlot { index: meta.index, key: *key, active, table });
            let Some(vip) = found else {
                adopted.orphans += 1;
                continue;
            };
            for b in &vip.backends {
                let (addr, family) = addr_words(b.address);
                let hit = snap.backends.iter().find(|(i, e)| {
                    e.vip == meta.index
                        && e.addr == addr
                        && e.family == family
                        && !claimed.contains(i)
                });
                if let Some((index, entry)) = hit {
                    claimed.insert(*index);
                    w.backends
                        .insert((vip.name.clone(), b.name.clone(), b.address), (*index, *entry));
                    adopted.entries.insert((vip.name.clone(), b.name.clone()), *entry);
                }
            }
        }
        for (index, entry) in &snap.backends {
            if !claimed.contains(index) && entry.state != BackendState::Down as u8 {
                let id = ("(orphan)".to_owned(), index.to_string(), IpAddr::from([0u8; 4]));
                w.backends.insert(id, (*index, *entry));
                adopted.orphans += 1;
            }
        }
        Ok((w, adopted))
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The VIP index (for per-VIP statistics) of VIP `name`.
    #[must_use]
    pub fn vip_index(&self, name: &str) -> Option<u32> {
        self.vips.get(name).map(|v| v.index)
    }

    /// The backend-table index of backend `backend` of VIP `vip`.
    #[must_use]
    pub fn backend_index(&self, vip: &str, backend: &str) -> Option<u32> {
        // Backends sort by (VIP, name, address): the first at or after the lowest
        // address is the one, if its names match.
        let from = (vip.to_owned(), backend.to_owned(), IpAddr::from([0u8; 4]));
        let ((v, b, _), (index, _)) = self.backends.range(from..).next()?;
        (v == vip && b == backend).then_some(*index)
    }

    /// The ring the kernel currently uses for VIP `name`, as written.
    #[must_use]
    pub fn table(&self, name: &str) -> Option<&[u32]> {
        self.vips.get(name).map(|v| v.table.as_slice())
    }

    /// Makes the maps say what `plan` says. Fails without writing anything when the
    /// plan does not fit the maps.
    pub fn apply(&mut self, plan: &DesiredState) -> Result<Applied> {
        check_capacity(plan)?;
        let mut applied = Applied::default();
        if self.config.as_ref() != Some(&plan.config) {
            self.maps.set_config(&plan.config)?;
            self.config = Some(plan.config);
            applied.config_written = true;
        }
        let wanted = self.allocate(plan)?;
        // The address filter lets new VIP addresses through before their VIP entries
        // exist, and drops removed ones only after them (step 4).
        let filter = vip_filter(plan);
        let union: Vec<u64> = filter.iter().zip(&self.filter).map(|(a, b)| a | b).collect();
        self.write_filter(union)?;
        // 1. Entries that are new or not going down: before any ring points at them.
        self.write_entries(&wanted, false, &mut applied)?;
        // 2. Rings and VIP entries.
        for vip in &plan.vips {
            self.switch_ring(vip, &wanted, &mut applied)?;
        }
        // 3. Entries going down, now that no ring points at them.
        self.write_entries(&wanted, true, &mut applied)?;
        // 4. Removed backends and VIPs.
        self.remove_gone(plan, wanted, &mut applied)?;
        self.write_filter(filter)?;
        Ok(applied)
    }

    /// Slots for new VIPs and backends, and the entry each backend should have.
    fn allocate(&mut self, plan: &DesiredState) -> Result<BTreeMap<BackendId, (u32, Backend)>> {
        let mut wanted: BTreeMap<BackendId, (u32, Backend)> = BTreeMap::new();
        for vip in &plan.vips {
            let vip_index = self.vip_slot(&vip.name);
            for b in &vip.backends {
                let id = (vip.name.clone(), b.name.clone(), b.address);
                let (index, generation) = if let Some((i, e)) = self.backends.get(&id) {
                    (*i, e.generation)
                } else {
                    let i = self.free_backend(&wanted)?;
                    self.generations[i as usize] += 1;
                    (i, self.generations[i as usize])
                };
                let (addr, family) = addr_words(b.address);
                let entry = Backend {
                    addr,
                    mac: b.mac.unwrap_or_default(),
                    family,
                    state: b.effective_state() as u8,
                    generation,
                    vip: vip_index,
                };
                wanted.insert(id, (index, entry));
            }
        }
        Ok(wanted)
    }

    /// Writes the changed entries that are going down (`down`) or not.
    fn write_entries(
        &mut self,
        wanted: &BTreeMap<BackendId, (u32, Backend)>,
        down: bool,
        applied: &mut Applied,
    ) -> Result<()> {
        for (id, (index, entry)) in wanted {
            let old = self.backends.get(id).map(|(_, e)| e);
            if old != Some(entry) && (entry.state == BackendState::Down as u8) == down {
                self.maps.set_backend(*index, entry)?;
                applied.backends_written += 1;
            }
        }
        Ok(())
    }

    /// Builds the VIP's ring from its up backends; when it differs from the one in
    /// use, writes it into the idle ring and switches the VIP entry to it.
    fn switch_ring(
        &mut self,
        vip: &DesiredVip,
        wanted: &BTreeMap<BackendId, (u32, Backend)>,
        applied: &mut Applied,
    ) -> Result<()> {
        let members: Vec<(String, u32, u32)> = vip
            .backends
            .iter()
            .filter(|b| b.effective_state() == BackendState::Up)
            .map(|b| {
                (b.ring_id(), b.weight, wanted[&(vip.name.clone(), b.name.clone(), b.address)].0)
            })
            .collect();
        let members: Vec<Member<'_>> = members
            .iter()
            .map(|(id, weight, value)| Member { id, weight: *weight, value: *value })
            .collect();
        let table = maglev::build(&members, RING_SIZE);
        let key = vip.key();
        let slot = self.vips.get_mut(&vip.name).expect("allocated by `allocate`");
        let is_new = slot.table.is_empty();
        let old_key = slot.key;
        if table != slot.table {
            let idle = 1 - slot.active;
            self.maps.write_ring(slot.ring(idle), &table)?;
            applied.slots_moved += if is_new {
                table.len()
            } else {
                table.iter().zip(&slot.table).filter(|(a, b)| a != b).count()
            };
            slot.active = idle;
            slot.table = table;
            applied.rings_switched += 1;
            self.maps.set_vip(&key, &VipMeta { index: slot.index, ring: slot.ring(idle) })?;
        } else if key != old_key {
            self.maps
                .set_vip(&key, &VipMeta { index: slot.index, ring: slot.ring(slot.active) })?;
        }
        if !is_new && key != old_key {
            self.maps.remove_vip(&old_key)?;
        }
        slot.key = key;
        if is_new {
            applied.vips_added += 1;
        }
        Ok(())
    }

    /// Marks removed backends down, deletes removed VIPs and their addresses.
    fn remove_gone(
        &mut self,
        plan: &DesiredState,
        wanted: BTreeMap<BackendId, (u32, Backend)>,
        applied: &mut Applied,
    ) -> Result<()> {
        for (id, (index, entry)) in &self.backends {
            if !wanted.contains_key(id) {
                let down = Backend { state: BackendState::Down as u8, ..*entry };
                self.maps.set_backend(*index, &down)?;
                applied.backends_written += 1;
            }
        }
        self.backends = wanted;
        let names: BTreeSet<&str> = plan.vips.iter().map(|v| v.name.as_str()).collect();
        let gone: Vec<String> =
            self.vips.keys().filter(|n| !names.contains(n.as_str())).cloned().collect();
        for name in gone {
            if let Some(slot) = self.vips.remove(&name) {
                self.maps.remove_vip(&slot.key)?;
                applied.vips_removed += 1;
            }
        }
        let addrs: BTreeSet<VipAddrKey> = plan.vips.iter().map(DesiredVip::addr_key).collect();
        for a in addrs.difference(&self.vip_addrs) {
            self.maps.set_vip_addr(a, true)?;
        }
        for a in self.vip_addrs.difference(&addrs) {
            self.maps.set_vip_addr(a, false)?;
        }
        self.vip_addrs = addrs;
        Ok(())
    }

    fn write_filter(&mut self, filter: Vec<u64>) -> Result<()> {
        for (i, (new, old)) in filter.iter().zip(&self.filter).enumerate() {
            if new != old {
                self.maps.set_vip_filter(i as u32, *new)?;
            }
        }
        self.filter = filter;
        Ok(())
    }

    fn vip_slot(&mut self, name: &str) -> u32 {
        if let Some(slot) = self.vips.get(name) {
            return slot.index;
        }
        let used: BTreeSet<u32> = self.vips.values().map(|v| v.index).collect();
        let index = (0..MAX_VIPS).find(|i| !used.contains(i)).expect("capacity checked");
        self.vips.insert(
            name.to_owned(),
            VipSlot { index, key: VipKey::default(), active: 1, table: Vec::new() },
        );
        index
    }

    /// A backend index used neither by the current maps nor by this plan so far.
    fn free_backend(&self, wanted: &BTreeMap<BackendId, (u32, Backend)>) -> Result<u32> {
        let used: BTreeSet<u32> =
            self.backends.values().chain(wanted.values()).map(|(i, _)| *i).collect();
        match (0..MAX_BACKENDS).find(|i| !used.contains(i)) {
            Some(i) => Ok(i),
            None => bail!("more than {MAX_BACKENDS} (VIP, backend) pairs"),
        }
    }
}

fn vip_filter(plan: &DesiredState) -> Vec<u64> {
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for vip in &plan.vips {
        let bit = filter_bit(&vip.key().addr);
        words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    words
}

fn check_capacity(plan: &DesiredState) -> Result<()> {
    if plan.vips.len() > MAX_VIPS as usize {
        bail!("{} VIPs configured; the data path holds at most {MAX_VIPS}", plan.vips.len());
    }
    let pairs: usize = plan.vips.iter().map(|v| v.backends.len()).sum();
    if pairs > MAX_BACKENDS as usize {
        bail!(
            "{pairs} (VIP, backend) pairs configured; the data path holds at most {MAX_BACKENDS}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{BackendState, LbConfig, limits::NO_BACKEND, proto};

    use super::*;
    use crate::{
        desired::{DesiredBackend, DesiredState, DesiredVip},
        testing::{FakeMaps, Op},
    };

    fn backend(name: &str, last: u8) -> DesiredBackend {
        DesiredBackend {
            name: name.into(),
            address: IpAddr::from([10, 0, 0, last]),
            mac: Some([2, 0, 0, 0, 0, last]),
            weight: 100,
            state: BackendState::Up,
        }
    }

    fn plan() -> DesiredState {
        DesiredState {
            config: LbConfig { mtu: 1500, ..LbConfig::default() },
            vips: vec![DesiredVip {
                name: "web".into(),
                address: IpAddr::from([192, 0, 2, 1]),
                port: 80,
                proto: proto::TCP,
                backends: vec![backend("a", 1), backend("b", 2), backend("c", 3)],
            }],
        }
    }

    fn writer() -> MapWriter<FakeMaps> {
        let mut w = MapWriter::new(FakeMaps::default());
        w.apply(&plan()).unwrap();
        w.maps.ops.clear();
        w
    }

    fn position(ops: &[Op], pred: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(pred).unwrap_or_else(|| panic!("op not found in {ops:?}"))
    }

    #[test]
    fn first_apply_writes_backends_before_the_ring_and_the_ring_before_the_vip() {
        let mut w = MapWriter::new(FakeMaps::default());
        let a = w.apply(&plan()).unwrap();
        let ops = &w.maps.ops;
        assert_eq!(ops[0], Op::Config);
        let last_backend = ops.iter().rposition(|o| matches!(o, Op::Backend(..))).unwrap();
        let ring = position(ops, |o| matches!(o, Op::Ring(_)));
        let vip = position(ops, |o| matches!(o, Op::Vip(..)));
        assert!(last_backend < ring && ring < vip, "{ops:?}");
        assert!(position(ops, |o| *o == Op::Filter) < vip, "filter lets the address through first");
        assert_eq!((a.backends_written, a.rings_switched, a.vips_added), (3, 1, 1));
        assert_eq!(a.slots_moved, RING_SIZE as usize);
    }

    #[test]
    fn applying_the_same_plan_again_writes_nothing() {
        let mut w = writer();
        let a = w.apply(&plan()).unwrap();
        assert!(a.is_empty(), "{a:?}");
        assert!(w.maps.ops.is_empty(), "{:?}", w.maps.ops);
    }

    #[test]
    fn backend_going_down_leaves_the_ring_before_it_is_marked_down() {
        let mut w = writer();
        let b_index = w.backend_index("web", "b").unwrap();
        let mut p = plan();
        p.vips[0].backends[1].state = BackendState::Down;
        let a = w.apply(&p).unwrap();
        let ops = &w.maps.ops;
        let ring = position(ops, |o| matches!(o, Op::Ring(_)));
        let flip = position(ops, |o| matches!(o, Op::Vip(..)));
        let down = position(ops, |o| *o == Op::Backend(b_index, BackendState::Down as u8));
        assert!(ring < flip && flip < down, "{ops:?}");
        assert_eq!(a.backends_written, 1, "only b's entry changes");
        assert!(!w.table("web").unwrap().contains(&b_index));
        // Only b's slots moved: about a third of the ring.
        let third = RING_SIZE as usize / 3;
        assert!(
            a.slots_moved > third * 9 / 10 && a.slots_moved < third * 11 / 10,
            "{}",
            a.slots_moved
        );
    }

    #[test]
    fn backend_coming_up_is_written_before_the_ring_that_uses_it() {
        let mut p = plan();
        p.vips[0].backends[2].state = BackendState::Down;
        let mut w = MapWriter::new(FakeMaps::default());
        w.apply(&p).unwrap();
        w.maps.ops.clear();
        p.vips[0].backends[2].state = BackendState::Up;
        w.apply(&p).unwrap();
        let c = w.backend_index("web", "c").unwrap();
        let ops = &w.maps.ops;
        let up = position(ops, |o| *o == Op::Backend(c, BackendState::Up as u8));
        assert!(up < position(ops, |o| matches!(o, Op::Ring(_))), "{ops:?}");
    }

    #[test]
    fn each_change_writes_the_idle_ring_and_switches_to_it() {
        let mut w = writer();
        let first = w.maps.vips.values().next().unwrap().1.ring;
        let mut p = plan();
        p.vips[0].backends[0].state = BackendState::Down;
        w.apply(&p).unwrap();
        let second = w.maps.vips.values().next().unwrap().1.ring;
        assert_ne!(first, second);
        assert_eq!(
            w.maps.ops.iter().filter(|o| matches!(o, Op::Ring(r) if *r == first)).count(),
            0,
            "active ring untouched"
        );
        p.vips[0].backends[0].state = BackendState::Up;
        w.apply(&p).unwrap();
        assert_eq!(w.maps.vips.values().next().unwrap().1.ring, first);
    }

    #[test]
    fn draining_backend_leaves_the_ring_but_stays_reachable() {
        let mut w = writer();
        let mut p = plan();
        p.vips[0].backends[0].state = BackendState::Draining;
        w.apply(&p).unwrap();
        let a = w.backend_index("web", "a").unwrap();
        assert!(!w.table("web").unwrap().contains(&a));
        assert_eq!(w.maps.backends[&a].state, BackendState::Draining as u8);
    }

    #[test]
    fn backend_without_mac_is_down_in_the_maps() {
        let mut w = writer();
        let mut p = plan();
        p.vips[0].backends[0].mac = None;
        w.apply(&p).unwrap();
        let a = w.backend_index("web", "a").unwrap();
        assert_eq!(w.maps.backends[&a].state, BackendState::Down as u8);
        assert!(!w.table("web").unwrap().contains(&a));
    }

    #[test]
    fn removed_backend_is_marked_down_and_its_slot_reused_with_a_new_generation() {
        let mut w = writer();
        let b = w.backend_index("web", "b").unwrap();
        let old_generation = w.maps.backends[&b].generation;
        let mut p = plan();
        p.vips[0].backends.remove(1);
        w.apply(&p).unwrap();
        assert_eq!(w.maps.backends[&b].state, BackendState::Down as u8);
        assert_eq!(w.backend_index("web", "b"), None);
        p.vips[0].backends.push(backend("d", 4));
        w.apply(&p).unwrap();
        assert_eq!(w.backend_index("web", "d"), Some(b));
        assert!(w.maps.backends[&b].generation > old_generation);
    }

    #[test]
    fn removed_vip_is_deleted_with_its_address() {
        let mut w = writer();
        let a = w.apply(&DesiredState { config: plan().config, vips: vec![] }).unwrap();
        assert_eq!(a.vips_removed, 1);
        assert!(w.maps.vips.is_empty());
        assert!(w.maps.addrs.is_empty());
        assert!(w.maps.filter.iter().all(|f| *f == 0));
        assert!(w.maps.backends.values().all(|b| b.state == BackendState::Down as u8));
    }

    #[test]
    fn vip_port_change_adds_the_new_key_before_removing_the_old() {
        let mut w = writer();
        let mut p = plan();
        p.vips[0].port = 8080;
        w.apply(&p).unwrap();
        let ops = &w.maps.ops;
        let add = position(ops, |o| matches!(o, Op::Vip(8080, _)));
        let remove = position(ops, |o| *o == Op::RemoveVip(80));
        assert!(add < remove, "{ops:?}");
        assert_eq!(w.maps.vips.len(), 1);
    }

    #[test]
    fn vip_with_no_usable_backend_gets_a_ring_of_no_backend() {
        let mut w = writer();
        let mut p = plan();
        for b in &mut p.vips[0].backends {
            b.state = BackendState::Down;
        }
        w.apply(&p).unwrap();
        assert!(w.table("web").unwrap().iter().all(|s| *s == NO_BACKEND));
    }

    #[test]
    fn plan_over_capacity_writes_nothing() {
        let mut w = writer();
        let mut p = plan();
        p.vips[0].backends =
            (0..=MAX_BACKENDS).map(|i| backend(&format!("n{i}"), (i % 250) as u8)).collect();
        assert!(w.apply(&p).is_err());
        assert!(w.maps.ops.is_empty());
    }

    #[test]
    fn adopting_maps_keeps_slots_and_rings_so_the_same_plan_writes_nothing() {
        let mut w = writer();
        let mut p = plan();
        p.vips[0].backends[1].state = BackendState::Draining;
        w.apply(&p).unwrap();
        let maps = std::mem::take(&mut w.maps);
        let (mut again, adopted) = MapWriter::adopt(maps, &p).unwrap();
        assert_eq!(adopted.orphans, 0);
        assert_eq!(
            adopted.entries[&("web".into(), "b".into())].state,
            BackendState::Draining as u8
        );
        again.maps.ops.clear();
        let a = again.apply(&p).unwrap();
        assert!(a.is_empty(), "{a:?} {:?}", again.maps.ops);
        assert_eq!(again.backend_index("web", "a"), w.backend_index("web", "a"));
    }

    #[test]
    fn adopting_maps_removes_what_the_config_no_longer_has() {
        let mut w = writer();
        let maps = std::mem::take(&mut w.maps);
        let mut p = plan();
        p.vips[0].backends.truncate(1);
        let (mut again, adopted) = MapWriter::adopt(maps, &p).unwrap();
        assert_eq!(adopted.orphans, 2, "b and c");
        again.apply(&p).unwrap();
        let live =
            again.maps.backends.values().filter(|b| b.state != BackendState::Down as u8).count();
        assert_eq!(live, 1);
    }
}
