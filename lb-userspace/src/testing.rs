//! Test doubles for the controller's kernel-facing edges: maps in memory
//! ([`FakeMaps`]) and neighbour tables set by the test ([`FakeNeighbours`]);
//! and reading samples back out of the metrics text.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Result, bail};
use lb_common::{
    Backend, LbConfig, Traffic, VipKey, VipMeta,
    limits::{MAX_BACKENDS, MAX_VIP_ADDRS, MAX_VIPS, RING_SIZE, RINGS_PER_VIP, VIP_FILTER_WORDS},
    vip::VipAddrKey,
};

use crate::{
    interface::Interface,
    mac::Mac,
    maps::{Maps, Slot, Snapshot},
    neighbours::{NUD_REACHABLE, Neighbour, NeighbourSource, Tables},
    writer::key_bytes,
};

/// Map writes, in order, as the fake saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Config,
    Vip(u16, u32),
    RemoveVip(u16),
    VipAddr(bool),
    Backend(u32, u8),
    Filter,
    Ring(u32),
    ZeroTraffic(Slot, u32),
    Flags(u32, u32),
}

/// The maps in memory: what was written, and in which order. A clone has the
/// same contents (the maps a restarted controller finds) and the same `fail` switch.
/// Sizes are the kernel maps': a full VIP map refuses a new key, an index past
/// the backend table is an error.
#[derive(Clone, Default)]
pub struct FakeMaps {
    pub ops: Vec<Op>,
    pub config: LbConfig,
    pub vips: BTreeMap<[u8; 20], (VipKey, VipMeta)>,
    pub addrs: BTreeSet<VipAddrKey>,
    pub backends: BTreeMap<u32, Backend>,
    pub filter: Vec<u64>,
    pub rings: BTreeMap<u32, Vec<u32>>,
    /// While set, every write fails (as a full or vanished map would) and changes
    /// nothing. Shared, so a test flips it while the writer owns the maps.
    pub fail: Arc<AtomicBool>,
    /// When set, this many more writes succeed; every one after fails.
    pub budget: Option<usize>,
    /// Packets counted per VIP or backend slot (a test sets them; zeroing clears them).
    pub traffic: BTreeMap<(Slot, u32), Traffic>,
    /// `BACKEND_FLAGS`, non-zero entries.
    pub flags: BTreeMap<u32, u32>,
}

impl FakeMaps {
    /// Records `op`, or fails it while `fail` is set.
    fn write(&mut self, op: Op) -> Result<()> {
        if self.fail.load(Ordering::Relaxed) || self.budget == Some(0) {
            bail!("injected map write failure ({op:?})");
        }
        if let Some(left) = &mut self.budget {
            *left -= 1;
        }
        self.ops.push(op);
        Ok(())
    }
}

impl Maps for FakeMaps {
    fn set_config(&mut self, config: &LbConfig) -> Result<()> {
        self.write(Op::Config)?;
        self.config = *config;
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        // A hash map refuses a new key when full (E2BIG), as the kernel's does.
        if self.vips.len() >= MAX_VIPS as usize && !self.vips.contains_key(&key_bytes(key)) {
            bail!("VIPS is full ({MAX_VIPS} entries)");
        }
        if meta.ring >= MAX_VIPS * RINGS_PER_VIP || meta.index >= MAX_VIPS {
            bail!("VIPS value {meta:?} out of range");
        }
        self.write(Op::Vip(u16::from_be(key.port), meta.ring))?;
        self.vips.insert(key_bytes(key), (*key, *meta));
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write(Op::RemoveVip(u16::from_be(key.port)))?;
        self.vips.remove(&key_bytes(key));
        Ok(())
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, present: bool) -> Result<()> {
        if present && self.addrs.len() >= MAX_VIP_ADDRS as usize && !self.addrs.contains(key) {
            bail!("VIP_ADDRS is full ({MAX_VIP_ADDRS} entries)");
        }
        self.write(Op::VipAddr(present))?;
        if present {
            self.addrs.insert(*key);
        } else {
            self.addrs.remove(key);
        }
        Ok(())
    }
    fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<()> {
        if index >= MAX_BACKENDS {
            bail!("BACKENDS[{index}] is out of bounds");
        }
        self.write(Op::Backend(index, backend.state))?;
        self.backends.insert(index, *backend);
        Ok(())
    }
    fn set_vip_filter(&mut self, index: u32, word: u64) -> Result<()> {
        self.write(Op::Filter)?;
        if self.filter.is_empty() {
            self.filter = vec![0; VIP_FILTER_WORDS as usize];
        }
        self.filter[index as usize] = word;
        Ok(())
    }
    fn write_ring(&mut self, ring: u32, slots: &[u32]) -> Result<()> {
        if ring >= MAX_VIPS * RINGS_PER_VIP || slots.len() != RING_SIZE as usize {
            bail!("ring {ring} with {} slots does not fit RINGS", slots.len());
        }
        self.write(Op::Ring(ring))?;
        self.rings.insert(ring, slots.to_vec());
        Ok(())
    }
    fn zero_traffic(&mut self, slot: Slot, index: u32) -> Result<()> {
        self.write(Op::ZeroTraffic(slot, index))?;
        self.traffic.remove(&(slot, index));
        Ok(())
    }
    fn set_flags(&mut self, index: u32, flags: u32) -> Result<()> {
        if index >= MAX_BACKENDS {
            bail!("BACKEND_FLAGS[{index}] is out of bounds");
        }
        self.write(Op::Flags(index, flags))?;
        if flags == 0 {
            self.flags.remove(&index);
        } else {
            self.flags.insert(index, flags);
        }
        Ok(())
    }
    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            config: self.config,
            vips: self.vips.values().copied().collect(),
            vip_addrs: self.addrs.iter().copied().collect(),
            backends: self.backends.iter().map(|(i, b)| (*i, *b)).collect(),
            filter: self.filter.clone(),
            flags: self.flags.iter().map(|(i, f)| (*i, *f)).collect(),
        })
    }
    fn read_ring(&self, ring: u32) -> Result<Vec<u32>> {
        Ok(self.rings.get(&ring).cloned().unwrap_or_else(|| vec![0; RING_SIZE as usize]))
    }
}

/// Neighbour tables the test sets, and the solicitations the controller sent.
#[derive(Debug, Default)]
pub struct FakeNeighbours {
    pub tables: Tables,
    /// While set, reading the tables fails with this message.
    pub fail: Option<String>,
    /// Every next hop the controller asked to resolve, in order.
    pub solicited: Vec<IpAddr>,
}

impl FakeNeighbours {
    /// Makes `hop` resolve to `mac` on interface `ifindex` (replacing its entries).
    pub fn resolve(&mut self, ifindex: u32, hop: IpAddr, mac: Mac) {
        self.forget(hop);
        let hop = hop.to_canonical();
        let entry = Neighbour { ifindex, state: NUD_REACHABLE, dst: Some(hop), lladdr: Some(mac) };
        if hop.is_ipv6() { &mut self.tables.v6 } else { &mut self.tables.v4 }.push(entry);
    }

    /// Removes every entry of `hop`.
    pub fn forget(&mut self, hop: IpAddr) {
        let hop = Some(hop.to_canonical());
        self.tables.v4.retain(|n| n.dst != hop);
        self.tables.v6.retain(|n| n.dst != hop);
    }
}

impl NeighbourSource for FakeNeighbours {
    fn tables(&mut self) -> Result<Tables> {
        match &self.fail {
            Some(message) => bail!("{message}"),
            None => Ok(self.tables.clone()),
        }
    }

    fn solicit(&mut self, _interface: &Interface, hop: IpAddr) {
        self.solicited.push(hop);
    }
}

/// One sample line: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let labels = rest
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label pair");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// The value of `name{labels}` (exactly those labels), if exported.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    parse_samples(text).into_iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| v)
}
