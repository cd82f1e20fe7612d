//! The one writer of the data path's maps. Given the desired [`DesiredState`], it
//! allocates VIP and backend slots, builds Maglev rings and applies only the
//! difference, in an order that never lets a packet reach a dead backend and that
//! a full map cannot wedge:
//!
//! 1. the whole plan is checked against the maps' capacity before anything is
//!    written (a refused plan writes nothing);
//! 2. keys that go away are deleted before new ones are inserted (the VIP map
//!    and the VIP address set hold exactly `MAX_VIPS` entries);
//! 3. backends coming up are written before the rings that use them; a changed
//!    ring is written into the VIP's idle ring and then switched to with one
//!    VIP-map update; backends going down are marked after the rings stop using them;
//! 4. a plan that needs slots still held by what it removes (a renamed VIP at
//!    `MAX_VIPS`, a replaced backend at `MAX_BACKENDS`) is applied in two steps:
//!    first without the new VIPs and backends (which frees the old slots and
//!    switches every ring away from them), then whole.
//!
//! Established flows skip the VIP lookup (their connection-table entry names a
//! backend, whose entry names the VIP), so a VIP whose address, port or protocol
//! changed gives its backends new generations once the old key is gone: their
//! flows on the old key are re-hashed, find no VIP, and stop being forwarded.
//!
//! A VIP or backend slot given to a new VIP or backend starts its packet and
//! byte counts from zero (they are read by slot), before anything points at it.
//!
//! The writer's own record of the maps follows every successful write, so a
//! write the kernel refuses leaves it knowing what the maps hold, and the next
//! apply converges from there.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Result, bail};
use lb_common::{
    Backend, BackendState, LbConfig, VipKey, VipMeta,
    limits::{MAX_BACKENDS, MAX_VIP_ADDRS, MAX_VIPS, RING_SIZE, RINGS_PER_VIP, VIP_FILTER_WORDS},
    pinned::backend_flags,
    vip::{VipAddrKey, filter_bit},
};

use crate::{
    desired::{DesiredState, DesiredVip, addr_words, ring_id},
    maglev::{self, Member},
    maps::{Maps, Slot},
    sync::exceptions::{View, ViewBackend, ViewVip},
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
    /// The plan needed slots that what it removed still held: it was applied in
    /// two steps (see the module documentation).
    pub two_step: bool,
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
    /// The pinned controller view (`pinned::backend_flags`) of each adopted
    /// (VIP, backend) that has one (none in maps of layout version 1).
    pub flags: BTreeMap<(String, String), u32>,
}

struct VipSlot {
    index: u32,
    /// The key the VIP map holds for this slot; `None` before its first write
    /// and once deleted.
    key: Option<VipKey>,
    /// Which of the VIP's two rings the kernel uses.
    active: u32,
    /// That ring as written; empty before the first write.
    table: Vec<u32>,
    /// The members it was built from (ring id, weight, backend index): the same
    /// members build the same ring, so an unchanged VIP costs no Maglev build.
    members: Vec<(String, u32, u32)>,
    /// Members and digest of `table`, once known (see [`Ring`]).
    ring: Option<Ring>,
}

/// What a VIP's ring in use holds, comparable across balancers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Backends with slots.
    pub members: usize,
    /// `maglev::digest` of the table: by backend identities, not indices.
    pub digest: u64,
}

impl VipSlot {
    fn ring(&self, which: u32) -> u32 {
        self.index * RINGS_PER_VIP + which
    }
}

/// Where each VIP and backend of a plan goes.
struct Allocation {
    /// Slot index of every VIP of the plan, by name.
    vips: BTreeMap<String, u32>,
    /// Index and entry of every backend of the plan.
    backends: BTreeMap<BackendId, (u32, Backend)>,
    /// The flags to pin for every backend of the plan.
    flags: BTreeMap<BackendId, u32>,
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
    /// `BACKEND_FLAGS` as written, per backend index.
    flags: Vec<u32>,
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
            flags: vec![0; MAX_BACKENDS as usize],
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
        for (index, f) in &snap.flags {
            if let Some(slot) = w.flags.get_mut(*index as usize) {
                *slot = *f;
            }
        }
        let mut claimed = BTreeSet::new();
        for (key, meta) in &snap.vips {
            let Some(active) =
                meta.ring.checked_sub(meta.index * RINGS_PER_VIP).filter(|a| *a < RINGS_PER_VIP)
            else {
                continue;
            };
            if meta.index >= MAX_VIPS || w.vips.values().any(|s| s.index == meta.index) {
                continue;
            }
            let table = w.maps.read_ring(meta.ring)?;
            let found = plan.vips.iter().find(|v| v.key() == *key && !w.vips.contains_key(&v.name));
            let name =
                found.map_or_else(|| format!("(orphan vip {})", meta.index), |v| v.name.clone());
            let slot = VipSlot {
                index: meta.index,
                key: Some(*key),
                active,
                table,
                members: vec![],
                ring: None,
            };
            w.vips.insert(name, slot);
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
                    let key = (vip.name.clone(), b.name.clone());
                    adopted.entries.insert(key.clone(), *entry);
                    let flags = w.flags[*index as usize];
                    if flags & backend_flags::KNOWN != 0 {
                        adopted.flags.insert(key, flags);
                    }
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

    /// Members and digest of the ring VIP `name` uses, once known.
    #[must_use]
    pub fn ring(&self, name: &str) -> Option<Ring> {
        self.vips.get(name).and_then(|v| v.ring)
    }

    /// Digests the rings switched (or adopted) since: by the identities of the
    /// backends in their slots. After the writes, as the digest is for comparing
    /// balancers, not for packets.
    fn note_rings(&mut self) {
        for (name, slot) in &mut self.vips {
            if slot.ring.is_some() || slot.table.is_empty() {
                continue;
            }
            let mut present = vec![false; MAX_BACKENDS as usize];
            for &value in &slot.table {
                if let Some(p) = present.get_mut(value as usize) {
                    *p = true;
                }
            }
            let ids: Vec<(String, u32)> = self
                .backends
                .iter()
                .filter(|((vip, _, _), (index, _))| {
                    vip == name && present.get(*index as usize) == Some(&true)
                })
                .map(|((_, backend, address), (index, _))| (ring_id(backend, *address), *index))
                .collect();
            let members: Vec<Member<'_>> =
                ids.iter().map(|(id, value)| Member { id, weight: 1, value: *value }).collect();
            let digest = maglev::digest(&members, &slot.table);
            slot.ring = Some(Ring { members: members.len(), digest });
        }
    }

    /// The rings and backend entries as written, for peer sync's exception rule.
    #[must_use]
    pub fn sync_view(&self, seed: lb_common::hash::Seed) -> View {
        let mut view = View { seed, ..View::default() };
        let mut keys = BTreeMap::new();
        for (name, slot) in &self.vips {
            if let Some(key) = slot.key
                && !slot.table.is_empty()
            {
                view.vips.insert(key, ViewVip { ring: slot.table.clone().into() });
                keys.insert(name.as_str(), key);
            }
        }
        for ((vip, _, address), (index, b)) in &self.backends {
            if let Some(key) = keys.get(vip.as_str()) {
                let state = BackendState::from_u8(b.state);
                let entry =
                    ViewBackend { vip: *key, address: *address, generation: b.generation, state };
                view.backends.insert(*index, entry);
            }
        }
        view
    }

    /// Whether `plan` fits the maps at all; `apply` checks this before writing.
    pub fn check(plan: &DesiredState) -> Result<()> {
        check_capacity(plan)
    }

    /// Makes the maps say what `plan` says. Fails without writing anything when the
    /// plan does not fit the maps.
    pub fn apply(&mut self, plan: &DesiredState) -> Result<Applied> {
        check_capacity(plan)?;
        let mut applied = Applied::default();
        if self.allocate(plan).is_none() {
            // The new VIPs or backends need slots that what the plan removes still
            // holds: remove first (rings switch away from the old slots), then add.
            applied.two_step = true;
            self.apply_fitting(&self.retained(plan), &mut applied)?;
        }
        self.apply_fitting(plan, &mut applied)?;
        self.note_rings();
        Ok(applied)
    }

    /// `plan` without the VIPs and backends the maps do not hold yet.
    fn retained(&self, plan: &DesiredState) -> DesiredState {
        let vips = plan
            .vips
            .iter()
            .filter(|v| self.vips.contains_key(&v.name))
            .map(|v| DesiredVip {
                backends: v
                    .backends
                    .iter()
                    .filter(|b| {
                        self.backends.contains_key(&(v.name.clone(), b.name.clone(), b.address))
                    })
                    .cloned()
                    .collect(),
                ..v.clone()
            })
            .collect();
        DesiredState { config: plan.config, vips }
    }

    /// Applies a plan whose new VIPs and backends fit in slots free now.
    fn apply_fitting(&mut self, plan: &DesiredState, applied: &mut Applied) -> Result<()> {
        let Some(alloc) = self.allocate(plan) else {
            bail!("internal error: no free slot for the plan after removing what it drops");
        };
        if self.config.as_ref() != Some(&plan.config) {
            self.maps.set_config(&plan.config)?;
            self.config = Some(plan.config);
            applied.config_written = true;
        }
        // The address filter lets new VIP addresses through before their VIP entries
        // exist, and drops removed ones only after them (the last step).
        let filter = vip_filter(plan);
        let union: Vec<u64> = filter.iter().zip(&self.filter).map(|(a, b)| a | b).collect();
        self.write_filter(union)?;
        self.retire_keys(plan)?;
        self.write_vip_addrs(plan)?;
        // Entries that are new, changed or re-generated and not going down: before
        // any ring or VIP key points at them.
        self.write_entries(&alloc.backends, false, applied)?;
        for vip in &plan.vips {
            self.switch_ring(vip, &alloc, applied)?;
        }
        // Entries going down, now that no ring points at them; then what the plan removed.
        self.write_entries(&alloc.backends, true, applied)?;
        self.remove_gone(&alloc, applied)?;
        self.write_flags(&alloc)?;
        self.write_filter(filter)
    }

    /// Where each VIP and backend of `plan` goes: kept where it is, or given a slot
    /// that nothing holds or points at now. `None` when the slots free now are too
    /// few. Backends of a VIP whose key changes get a new generation. Writes nothing.
    fn allocate(&self, plan: &DesiredState) -> Option<Allocation> {
        let mut used: BTreeSet<u32> = self.vips.values().map(|v| v.index).collect();
        let mut vips = BTreeMap::new();
        for vip in &plan.vips {
            let index = if let Some(slot) = self.vips.get(&vip.name) {
                slot.index
            } else {
                let free = (0..MAX_VIPS).find(|i| !used.contains(i))?;
                used.insert(free);
                free
            };
            vips.insert(vip.name.clone(), index);
        }
        // Free backend indices, lowest first; computed once, only if needed.
        let mut free: Option<std::vec::IntoIter<u32>> = None;
        let mut backends = BTreeMap::new();
        let mut flags = BTreeMap::new();
        for vip in &plan.vips {
            let rekeyed =
                self.vips.get(&vip.name).and_then(|s| s.key).is_some_and(|k| k != vip.key());
            for b in &vip.backends {
                let id = (vip.name.clone(), b.name.clone(), b.address);
                let (index, generation) = if let Some((i, e)) = self.backends.get(&id) {
                    (*i, if rekeyed { e.generation.wrapping_add(1) } else { e.generation })
                } else {
                    let free = free.get_or_insert_with(|| self.free_indices().into_iter());
                    let i = free.next()?;
                    (i, self.generations[i as usize].wrapping_add(1))
                };
                let (addr, family) = addr_words(b.address);
                let entry = Backend {
                    addr,
                    mac: b.mac.unwrap_or_default(),
                    family,
                    state: b.effective_state() as u8,
                    generation,
                    vip: vips[&vip.name],
                };
                flags.insert(id.clone(), b.flags);
                backends.insert(id, (index, entry));
            }
        }
        Some(Allocation { vips, backends, flags })
    }

    /// Backend indices a new backend may take, lowest first: held by no backend
    /// and in no ring the kernel uses (a slot is only reused once no ring sends
    /// packets to it).
    fn free_indices(&self) -> Vec<u32> {
        let mut taken = vec![false; MAX_BACKENDS as usize];
        for (i, _) in self.backends.values() {
            taken[*i as usize] = true;
        }
        for slot in self.vips.values() {
            for &i in &slot.table {
                if let Some(t) = taken.get_mut(i as usize) {
                    *t = true;
                }
            }
        }
        (0..MAX_BACKENDS).filter(|i| !taken[*i as usize]).collect()
    }

    /// Deletes the VIP keys the plan no longer has (removed VIPs, and the old key
    /// of a VIP whose address, port or protocol changed) before anything is added.
    fn retire_keys(&mut self, plan: &DesiredState) -> Result<()> {
        for (name, slot) in &mut self.vips {
            let Some(key) = slot.key else { continue };
            // Even a key that another VIP of the plan takes over is deleted first:
            // flows re-hashed meanwhile must not find the old VIP under it.
            if !plan.vips.iter().any(|v| v.name == *name && v.key() == key) {
                self.maps.remove_vip(&key)?;
                slot.key = None;
            }
        }
        Ok(())
    }

    /// Deletes the VIP addresses the plan no longer has, then adds its new ones
    /// (the set holds `MAX_VIP_ADDRS`: deleting first never overflows it).
    fn write_vip_addrs(&mut self, plan: &DesiredState) -> Result<()> {
        let addrs: BTreeSet<VipAddrKey> = plan.vips.iter().map(DesiredVip::addr_key).collect();
        for a in self.vip_addrs.difference(&addrs).copied().collect::<Vec<_>>() {
            self.maps.set_vip_addr(&a, false)?;
            self.vip_addrs.remove(&a);
        }
        for a in addrs.difference(&self.vip_addrs).copied().collect::<Vec<_>>() {
            self.maps.set_vip_addr(&a, true)?;
            self.vip_addrs.insert(a);
        }
        Ok(())
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
                if old.is_none() {
                    // A slot that changes hands starts its statistics from zero.
                    self.maps.zero_traffic(Slot::Backend, *index)?;
                }
                self.maps.set_backend(*index, entry)?;
                self.generations[*index as usize] = entry.generation;
                self.backends.insert(id.clone(), (*index, *entry));
                applied.backends_written += 1;
            }
        }
        Ok(())
    }

    /// Pins the controller's view of each backend of the plan where it changed
    /// (`remove_gone` clears the slots of removed ones).
    fn write_flags(&mut self, alloc: &Allocation) -> Result<()> {
        for (id, flags) in &alloc.flags {
            let index = alloc.backends[id].0 as usize;
            if self.flags[index] != *flags {
                self.maps.set_flags(index as u32, *flags)?;
                self.flags[index] = *flags;
            }
        }
        Ok(())
    }

    /// Builds the VIP's ring from its up backends; when it differs from the one in
    /// use, writes it into the idle ring and switches the VIP entry to it. A VIP
    /// whose key changed gets its entry under the new key.
    fn switch_ring(
        &mut self,
        vip: &DesiredVip,
        alloc: &Allocation,
        applied: &mut Applied,
    ) -> Result<()> {
        let members: Vec<(String, u32, u32)> = vip
            .backends
            .iter()
            .filter(|b| b.effective_state() == BackendState::Up)
            .filter_map(|b| {
                let (index, _) =
                    alloc.backends.get(&(vip.name.clone(), b.name.clone(), b.address))?;
                Some((b.ring_id(), b.weight, *index))
            })
            .collect();
        let key = vip.key();
        let index = alloc.vips[&vip.name];
        let slot = self.vips.entry(vip.name.clone()).or_insert_with(|| VipSlot {
            index,
            key: None,
            active: 1,
            table: Vec::new(),
            members: Vec::new(),
            ring: None,
        });
        let is_new = slot.key.is_none() && slot.table.is_empty();
        if is_new {
            self.maps.zero_traffic(Slot::Vip, slot.index)?;
        }
        let unchanged = members == slot.members && !slot.table.is_empty();
        let table = if unchanged {
            None
        } else {
            let built: Vec<Member<'_>> = members
                .iter()
                .map(|(id, weight, value)| Member { id, weight: *weight, value: *value })
                .collect();
            let table = maglev::build(&built, RING_SIZE);
            if table == slot.table {
                // Built from other members but the same (an adopted ring): remember them.
                slot.members.clone_from(&members);
                None
            } else {
                Some(table)
            }
        };
        if let Some(table) = table {
            let idle = 1 - slot.active;
            self.maps.write_ring(slot.ring(idle), &table)?;
            self.maps.set_vip(&key, &VipMeta { index: slot.index, ring: slot.ring(idle) })?;
            applied.slots_moved += if slot.table.is_empty() {
                table.len()
            } else {
                table.iter().zip(&slot.table).filter(|(a, b)| a != b).count()
            };
            slot.active = idle;
            slot.table = table;
            slot.members = members;
            slot.ring = None;
            applied.rings_switched += 1;
        } else if slot.key != Some(key) {
            self.maps
                .set_vip(&key, &VipMeta { index: slot.index, ring: slot.ring(slot.active) })?;
        } else {
            return Ok(());
        }
        slot.key = Some(key);
        if is_new {
            applied.vips_added += 1;
        }
        // A key taken over from another VIP no longer points at that VIP's slot.
        let name = vip.name.as_str();
        for (other, s) in &mut self.vips {
            if other != name && s.key == Some(key) {
                s.key = None;
            }
        }
        Ok(())
    }

    /// Marks removed backends down and forgets them and the removed VIPs (whose
    /// keys `retire_keys` deleted).
    fn remove_gone(&mut self, alloc: &Allocation, applied: &mut Applied) -> Result<()> {
        let gone: Vec<(BackendId, (u32, Backend))> = self
            .backends
            .iter()
            .filter(|(id, _)| !alloc.backends.contains_key(*id))
            .map(|(id, v)| (id.clone(), *v))
            .collect();
        for (id, (index, entry)) in gone {
            if entry.state != BackendState::Down as u8 {
                let down = Backend { state: BackendState::Down as u8, ..entry };
                self.maps.set_backend(index, &down)?;
                applied.backends_written += 1;
            }
            if self.flags[index as usize] != 0 && !alloc.backends.values().any(|(i, _)| *i == index)
            {
                self.maps.set_flags(index, 0)?;
                self.flags[index as usize] = 0;
            }
            self.backends.remove(&id);
        }
        let gone: Vec<String> = self
            .vips
            .iter()
            .filter(|(name, slot)| !alloc.vips.contains_key(*name) && slot.key.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.vips.remove(&name);
            applied.vips_removed += 1;
        }
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
}

fn vip_filter(plan: &DesiredState) -> Vec<u64> {
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for vip in &plan.vips {
        let bit = filter_bit(&vip.key().addr);
        words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    words
}

/// A VIP key as bytes, to compare and order keys.
pub(crate) fn key_bytes(k: &VipKey) -> [u8; 20] {
    let mut b = [0u8; 20];
    for (i, w) in k.addr.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b[16..18].copy_from_slice(&k.port.to_ne_bytes());
    b[18] = k.proto;
    b[19] = k.family;
    b
}

/// Whether `plan` fits the maps: VIPs, (VIP, backend) pairs and VIP addresses
/// within the maps' sizes, no two VIPs with one key, no VIP with a backend twice.
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
    let addrs: BTreeSet<VipAddrKey> = plan.vips.iter().map(DesiredVip::addr_key).collect();
    if addrs.len() > MAX_VIP_ADDRS as usize {
        bail!(
            "{} VIP addresses configured; the data path holds at most {MAX_VIP_ADDRS}",
            addrs.len()
        );
    }
    let mut keys = BTreeMap::new();
    let mut names = BTreeSet::new();
    for v in &plan.vips {
        if !names.insert(v.name.as_str()) {
            bail!("VIP {} appears twice", v.name);
        }
        if let Some(first) = keys.insert(key_bytes(&v.key()), v.name.as_str()) {
            bail!("VIPs {first} and {} have the same address, port and protocol", v.name);
        }
        let mut ids = BTreeSet::new();
        for b in &v.backends {
            if !ids.insert((b.name.as_str(), b.address)) {
                bail!("VIP {} has backend {} ({}) twice", v.name, b.name, b.address);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{BackendState, LbConfig, Traffic, limits::NO_BACKEND, proto};

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
            flags: 0,
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
    fn two_writers_with_other_slots_agree_on_the_ring_digest() {
        // A balancer that met the backends in another order (a reload history, a
        // restart) has other backend indices in its ring, and the same ring.
        let mut other = MapWriter::new(FakeMaps::default());
        let mut first = plan();
        first.vips[0].backends.retain(|b| b.name == "c");
        other.apply(&first).unwrap();
        other.apply(&plan()).unwrap();
        let w = writer();
        assert_ne!(other.table("web"), w.table("web"), "the indices differ");
        let ring = w.ring("web").unwrap();
        assert_eq!(other.ring("web"), Some(ring));
        assert_eq!(ring.members, 3);
        // A backend down changes it; back up, it is the same again.
        let mut p = plan();
        p.vips[0].backends[1].state = BackendState::Down;
        let mut w = w;
        w.apply(&p).unwrap();
        assert_eq!(w.ring("web").map(|r| r.members), Some(2));
        assert_ne!(w.ring("web"), Some(ring));
        w.apply(&plan()).unwrap();
        assert_eq!(w.ring("web"), Some(ring));
        // A restarted controller adopting the maps knows the same digest.
        let (adopted, _) = MapWriter::adopt(w.maps.clone(), &plan()).unwrap();
        let mut adopted = adopted;
        adopted.apply(&plan()).unwrap();
        assert_eq!(adopted.ring("web"), Some(ring));
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
    fn a_slot_given_to_a_new_backend_or_vip_starts_its_traffic_from_zero() {
        let mut w = writer();
        let kept = w.backend_index("web", "a").unwrap();
        let b = w.backend_index("web", "b").unwrap();
        let vip = w.vip_index("web").unwrap();
        let sent = Traffic { packets: 7, bytes: 700 };
        for key in [(Slot::Backend, kept), (Slot::Backend, b), (Slot::Vip, vip)] {
            w.maps.traffic.insert(key, sent);
        }
        let mut p = plan();
        p.vips[0].backends.remove(1);
        w.apply(&p).unwrap();
        w.maps.ops.clear();
        p.vips[0].backends.push(backend("d", 4));
        w.apply(&p).unwrap();
        assert_eq!(w.backend_index("web", "d"), Some(b), "d takes b's slot");
        let zeroed = position(&w.maps.ops, |o| *o == Op::ZeroTraffic(Slot::Backend, b));
        assert!(zeroed < position(&w.maps.ops, |o| matches!(o, Op::Backend(i, _) if *i == b)));
        assert_eq!(w.maps.traffic.get(&(Slot::Backend, b)), None, "d does not inherit b's counts");
        assert_eq!(w.maps.traffic[&(Slot::Backend, kept)], sent, "a keeps its own");

        w.apply(&DesiredState { config: p.config, vips: vec![] }).unwrap();
        p.vips[0].name = "renamed".into();
        w.apply(&p).unwrap();
        assert_eq!(w.vip_index("renamed"), Some(vip));
        assert_eq!(w.maps.traffic.get(&(Slot::Vip, vip)), None, "nor the renamed VIP web's");
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
    fn vip_port_change_deletes_the_old_key_before_adding_the_new_and_regenerates_its_backends() {
        let mut w = writer();
        let before: Vec<u32> = w.maps.backends.values().map(|b| b.generation).collect();
        let mut p = plan();
        p.vips[0].port = 8080;
        w.apply(&p).unwrap();
        let ops = &w.maps.ops;
        let remove = position(ops, |o| *o == Op::RemoveVip(80));
        let add = position(ops, |o| matches!(o, Op::Vip(8080, _)));
        let regenerated = position(ops, |o| matches!(o, Op::Backend(..)));
        assert!(remove < regenerated && regenerated < add, "{ops:?}");
        assert_eq!(w.maps.vips.len(), 1);
        let after: Vec<u32> = w.maps.backends.values().map(|b| b.generation).collect();
        assert!(
            before.iter().zip(&after).all(|(b, a)| a > b),
            "flows established on the old key must not find their backend: {before:?} -> {after:?}"
        );
        assert_invariants(&w);
    }

    #[test]
    fn two_vips_swapping_addresses_end_up_each_under_the_others_old_key() {
        let mut w = MapWriter::new(FakeMaps::default());
        let mut p = vips(2, 2);
        w.apply(&p).unwrap();
        let (a, b) = (p.vips[0].address, p.vips[1].address);
        (p.vips[0].address, p.vips[1].address) = (b, a);
        w.apply(&p).unwrap();
        for v in &p.vips {
            let (_, meta) = w.maps.vips[&key_bytes(&v.key())];
            assert_eq!(Some(meta.index), w.vip_index(&v.name), "{} under its new key", v.name);
        }
        assert_invariants(&w);
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

    /// `n` VIPs (192.0.2.x:80, one address each) of `m` backends each.
    fn vips(n: u32, m: u32) -> DesiredState {
        let vips = (0..n)
            .map(|v| DesiredVip {
                name: format!("vip{v}"),
                address: IpAddr::from([192, 0, 2, v as u8]),
                port: 80,
                proto: proto::TCP,
                backends: (0..m)
                    .map(|b| DesiredBackend {
                        address: IpAddr::from([10, v as u8, (b / 250) as u8, (b % 250) as u8 + 1]),
                        ..backend(&format!("b{b}"), 1)
                    })
                    .collect(),
            })
            .collect();
        DesiredState { config: plan().config, vips }
    }

    /// What must hold whatever was written last: every VIP entry points at a ring
    /// of that VIP whose slots name backends of that VIP (never a slot given to
    /// another VIP's backend), and the maps fit their sizes.
    fn assert_invariants(w: &MapWriter<FakeMaps>) {
        let m = &w.maps;
        assert!(m.vips.len() <= MAX_VIPS as usize && m.addrs.len() <= MAX_VIP_ADDRS as usize);
        for (key, meta) in m.vips.values() {
            assert_eq!(
                meta.ring / RINGS_PER_VIP,
                meta.index,
                "{key:?} points at another VIP's ring"
            );
            let mut seen = vec![false; MAX_BACKENDS as usize];
            for &slot in m.rings[&meta.ring].iter().filter(|s| **s != NO_BACKEND) {
                if !std::mem::replace(&mut seen[slot as usize], true) {
                    let b = m.backends[&slot];
                    assert_eq!(b.vip, meta.index, "{key:?}: ring slot {slot} is another VIP's");
                }
            }
        }
    }

    #[test]
    fn plan_over_capacity_writes_nothing() {
        let mut w = writer();
        let mut p = plan();
        p.vips[0].backends =
            (0..=MAX_BACKENDS).map(|i| backend(&format!("n{i}"), (i % 250) as u8)).collect();
        assert!(w.apply(&p).is_err());
        let err = w.apply(&vips(MAX_VIPS + 1, 1)).unwrap_err().to_string();
        assert_eq!(err, "33 VIPs configured; the data path holds at most 32");
        let mut twice = vips(2, 1);
        twice.vips[1].address = twice.vips[0].address;
        let err = w.apply(&twice).unwrap_err().to_string();
        assert_eq!(err, "VIPs vip0 and vip1 have the same address, port and protocol");
        assert!(w.maps.ops.is_empty());
    }

    #[test]
    fn at_max_vips_a_renamed_vip_takes_the_slot_its_old_name_frees() {
        let mut w = MapWriter::new(FakeMaps::default());
        let mut p = vips(MAX_VIPS, 1);
        w.apply(&p).unwrap();
        p.vips[5].name = "renamed".into();
        let a = w.apply(&p).expect("a rename at the limit applies");
        assert!(a.two_step && a.vips_removed == 1 && a.vips_added == 1, "{a:?}");
        assert_eq!(w.vip_index("renamed"), Some(5));
        assert_eq!(w.vip_index("vip5"), None);
        assert_eq!(w.maps.vips.len(), MAX_VIPS as usize);
        assert_invariants(&w);
        // ...and the writer is not wedged: a health change still applies.
        p.vips[0].backends[0].state = BackendState::Down;
        assert_eq!(w.apply(&p).unwrap().rings_switched, 1);
    }

    #[test]
    fn at_max_vips_a_replaced_vip_and_a_moved_address_fit() {
        let mut w = MapWriter::new(FakeMaps::default());
        let mut p = vips(MAX_VIPS, 1);
        w.apply(&p).unwrap();
        // One VIP replaced by another with a new name and address; one VIP moved.
        p.vips[3] = DesiredVip {
            name: "new".into(),
            address: IpAddr::from([198, 51, 100, 1]),
            ..p.vips[3].clone()
        };
        p.vips[7].address = IpAddr::from([198, 51, 100, 7]);
        w.apply(&p).expect("applies at the limit");
        assert_eq!(w.maps.vips.len(), MAX_VIPS as usize);
        assert_eq!(w.maps.addrs.len(), MAX_VIPS as usize);
        for v in &p.vips {
            assert!(w.maps.vips.contains_key(&key_bytes(&v.key())), "{} missing", v.name);
        }
        assert_invariants(&w);
    }

    #[test]
    fn at_max_backends_a_replaced_backend_takes_a_freed_slot_once_no_ring_uses_it() {
        let mut w = MapWriter::new(FakeMaps::default());
        let per_vip = MAX_BACKENDS / MAX_VIPS;
        let mut p = vips(MAX_VIPS, per_vip);
        w.apply(&p).unwrap();
        let old = w.backend_index("vip9", "b3").unwrap();
        p.vips[9].backends[3] = DesiredBackend {
            name: "fresh".into(),
            address: IpAddr::from([10, 200, 0, 1]),
            ..p.vips[9].backends[3].clone()
        };
        let a = w.apply(&p).expect("a replacement at the limit applies");
        assert!(a.two_step, "{a:?}");
        let fresh = w.backend_index("vip9", "fresh").unwrap();
        assert_eq!(fresh, old, "the only free slot");
        assert_eq!(w.maps.backends[&fresh].addr, addr_words(IpAddr::from([10, 200, 0, 1])).0);
        assert_invariants(&w);
        // A backend that moves to another VIP at the limit fits too.
        let moved = p.vips[0].backends.pop().unwrap();
        p.vips[1].backends.push(moved);
        w.apply(&p).expect("a move at the limit applies");
        assert_invariants(&w);
    }

    #[test]
    fn a_write_refused_at_any_point_leaves_the_maps_safe_and_the_next_apply_converges() {
        // From `before` to `after` (a VIP renamed, one moved, backends replaced and
        // flipped), with the maps refusing every write after the first k.
        let before = vips(3, 3);
        let mut after = before.clone();
        after.vips[0].name = "renamed".into();
        after.vips[1].port = 8080;
        after.vips[2].backends[0].state = BackendState::Down;
        after.vips[2].backends[1] = backend("new", 9);
        after.vips.push(DesiredVip { name: "added".into(), ..vips(4, 2).vips[3].clone() });
        let mut reference = MapWriter::new(FakeMaps::default());
        reference.apply(&after).unwrap();
        for k in 0.. {
            let mut w = MapWriter::new(FakeMaps::default());
            w.apply(&before).unwrap();
            w.maps.budget = Some(k);
            let done = w.apply(&after).is_ok();
            assert_invariants(&w);
            w.maps.budget = None;
            w.apply(&after).unwrap();
            assert_invariants(&w);
            for v in &after.vips {
                let (_, meta) = w.maps.vips[&key_bytes(&v.key())];
                assert_eq!(w.maps.rings[&meta.ring].len(), RING_SIZE as usize);
                let names = |w: &MapWriter<FakeMaps>| -> Vec<Option<String>> {
                    let table = w.table(&v.name).unwrap();
                    table
                        .iter()
                        .step_by(997)
                        .map(|i| {
                            w.backends
                                .iter()
                                .find(|(_, (j, _))| j == i)
                                .map(|((_, b, _), _)| b.clone())
                        })
                        .collect()
                };
                assert_eq!(names(&w), names(&reference), "{} after failing at write {k}", v.name);
            }
            if done {
                break;
            }
        }
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
    fn a_restart_at_max_vips_with_a_renamed_vip_adopts_the_orphan_and_applies() {
        // The old name's slot is adopted as an orphan; the new name needs it.
        let mut w = MapWriter::new(FakeMaps::default());
        let mut p = vips(MAX_VIPS, 2);
        w.apply(&p).unwrap();
        p.vips[5].name = "renamed".into();
        p.vips[9].port = 8080;
        let (mut again, adopted) = MapWriter::adopt(std::mem::take(&mut w.maps), &p).unwrap();
        assert_eq!(adopted.orphans, 1 + 2, "vip5 and its two backends");
        again.apply(&p).expect("a restart at the limit applies");
        assert_eq!(again.vip_index("renamed"), Some(5));
        assert_eq!(again.maps.vips.len(), MAX_VIPS as usize);
        assert_invariants(&again);
        // A second restart with the same config finds nothing to do.
        let (mut third, adopted) = MapWriter::adopt(std::mem::take(&mut again.maps), &p).unwrap();
        assert_eq!(adopted.orphans, 0);
        third.maps.ops.clear();
        assert!(third.apply(&p).unwrap().is_empty(), "{:?}", third.maps.ops);
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
