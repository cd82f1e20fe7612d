//! The one writer of the data path's maps. Given the desired [`DataPlane`], it
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
    dataplane::{DataPlane, VipPlan, addr_words},
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

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Direct access, for tests that need to put the maps in a state the writer never would.
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The VIP index (for per-VIP statistics) of VIP `name`.
    #[must_use]
    pub fn vip_index(&self, name: &str) -> Option<u32> {
        self.vips.get(name).map(|v| v.index)
    }

    /// The backend-table index of backend `backend` of VIP `vip`.
    #[must_use]
    pub fn backend_index(&self, vip: &str, backend: &str) -> Option<u32> {
        self.backends.iter().find(|((v, b, _), _)| v == vip && b == backend).map(|(_, (i, _))| *i)
    }

    /// The ring the kernel currently uses for VIP `name`, as written.
    #[must_use]
    pub fn table(&self, name: &str) -> Option<&[u32]> {
        self.vips.get(name).map(|v| v.table.as_slice())
    }

    /// Makes the maps say what `plan` says. Fails without writing anything when the
    /// plan does not fit the maps.
    pub fn apply(&mut self, plan: &DataPlane) -> Result<Applied> {
        check_capacity(plan)?;
        let mut applied = Applied::default();
        if self.config.as_ref() != Some(&plan.config) {
            self.maps.set_config(&plan.config)?;
            self.config = Some(plan.config);
            applied.config_written = true;
        }

        // Slots for new VIPs and backends; the entries each backend should have.
        let mut wanted: BTreeMap<BackendId, (u32, Backend)> = BTreeMap::new();
        for vip in &plan.vips {
            let index = self.vip_slot(&vip.name)?;
            for b in &vip.backends {
                let id = (vip.name.clone(), b.name.clone(), b.address);
                let index_b = match self.backends.get(&id) {
                    Some((i, _)) => *i,
                    None => self.free_backend(&wanted)?,
                };
                let generation = match self.backends.get(&id) {
                    Some((_, e)) => e.generation,
                    None => {
                        self.generations[index_b as usize] += 1;
                        self.generations[index_b as usize]
                    }
                };
                let (addr, family) = addr_words(b.address);
                let entry = Backend {
                    addr,
                    mac: b.mac.unwrap_or_default(),
                    family,
                    state: b.effective_state() as u8,
                    generation,
                    vip: index,
                };
                wanted.insert(id, (index_b, entry));
            }
        }

        // The address filter lets new VIP addresses through before their VIP entries
        // exist, and drops removed ones only after (step 4).
        let filter = vip_filter(plan);
        let union: Vec<u64> = filter.iter().zip(&self.filter).map(|(a, b)| a | b).collect();
        self.write_filter(union)?;

        // 1. Entries that are new or not going down: before any ring points at them.
        for (id, (index, entry)) in &wanted {
            let old = self.backends.get(id).map(|(_, e)| e);
            if old != Some(entry) && entry.state != BackendState::Down as u8 {
                self.maps.set_backend(*index, entry)?;
                applied.backends_written += 1;
            }
        }

        // 2. Rings and VIP entries.
        for vip in &plan.vips {
            let members: Vec<(String, u32, u32)> = vip
                .backends
                .iter()
                .filter(|b| b.effective_state() == BackendState::Up)
                .map(|b| {
                    let id = (vip.name.clone(), b.name.clone(), b.address);
                    (b.ring_id(), b.weight, wanted[&id].0)
                })
                .collect();
            let members: Vec<Member<'_>> = members
                .iter()
                .map(|(id, weight, value)| Member { id, weight: *weight, value: *value })
                .collect();
            let table = maglev::build(&members, RING_SIZE);
            let key = vip.key();
            let slot = self.vips.get_mut(&vip.name).expect("allocated above");
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
                self.maps.set_vip(&key, &VipMeta { index: slot.index, ring: slot.ring(slot.active) })?;
            }
            if !is_new && key != old_key {
                self.maps.remove_vip(&old_key)?;
            }
            slot.key = key;
            if is_new {
                applied.vips_added += 1;
            }
        }

        // 3. Entries going down, now that no ring points at them.
        for (id, (index, entry)) in &wanted {
            let old = self.backends.get(id).map(|(_, e)| e);
            if old != Some(entry) && entry.state == BackendState::Down as u8 {
                self.maps.set_backend(*index, entry)?;
                applied.backends_written += 1;
            }
        }

        // 4. Removed backends and VIPs.
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
        let addrs: BTreeSet<VipAddrKey> = plan.vips.iter().map(VipPlan::addr_key).collect();
        for a in addrs.difference(&self.vip_addrs) {
            self.maps.set_vip_addr(a, true)?;
        }
        for a in self.vip_addrs.difference(&addrs) {
            self.maps.set_vip_addr(a, false)?;
        }
        self.vip_addrs = addrs;
        self.write_filter(filter)?;
        Ok(applied)
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

    fn vip_slot(&mut self, name: &str) -> Result<u32> {
        if let Some(slot) = self.vips.get(name) {
            return Ok(slot.index);
        }
        let used: BTreeSet<u32> = self.vips.values().map(|v| v.index).collect();
        let index = (0..MAX_VIPS).find(|i| !used.contains(i)).expect("capacity checked");
        self.vips.insert(
            name.to_owned(),
            VipSlot { index, key: VipKey::default(), active: 1, table: Vec::new() },
        );
        Ok(index)
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

fn vip_filter(plan: &DataPlane) -> Vec<u64> {
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for vip in &plan.vips {
        let bit = filter_bit(&vip.key().addr);
        words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    words
}

fn check_capacity(plan: &DataPlane) -> Result<()> {
    if plan.vips.len() > MAX_VIPS as usize {
        bail!("{} VIPs configured; the data path holds at most {MAX_VIPS}", plan.vips.len());
    }
    let pairs: usize = plan.vips.iter().map(|v| v.backends.len()).sum();
    if pairs > MAX_BACKENDS as usize {
        bail!("{pairs} (VIP, backend) pairs configured; the data path holds at most {MAX_BACKENDS}");
    }
    Ok(())
}
