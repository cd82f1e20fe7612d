//! `xdp-decap` on a WAF node, from userspace: load it, give it its rules (which
//! tunnel packets it may strip), attach it, read what it counted. In ipip mode a
//! WAF node runs it instead of kernel ipip/ip6tnl devices.
//!
//! A tunnel packet is stripped only when it is addressed to one of the node's own
//! tunnel addresses ([`DecapRules::local`]), comes from a balancer
//! ([`DecapRules::balancers`]) and carries a packet to a VIP ([`DecapRules::vips`]);
//! other tunnel packets to the node are dropped and counted, everything else passes
//! untouched. With a pin directory, the maps and the XDP link outlive the process
//! (as `xdplb run` does for `xdp-lb`): a later [`Decap::load`] with the same
//! directory finds the same rules and counters and swaps its program into the link.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{
    DecapCounter, DecapCounterSet, limits::MAX_DECAP_ADDRS, map_names, vip::VipAddrKey,
};

use crate::{config::Config, desired::addr_words, loader, objects};

const PROGRAM: &str = "xdp_decap";
/// The maps of the object, in the order of [`DecapRules`]' sets.
const RULE_MAPS: [&str; 3] =
    [map_names::DECAP_ADDRS, map_names::DECAP_SOURCES, map_names::DECAP_VIPS];
const PINNED_MAPS: [&str; 4] = [
    map_names::DECAP_ADDRS,
    map_names::DECAP_SOURCES,
    map_names::DECAP_VIPS,
    map_names::DECAP_STATS,
];

/// Which tunnel packets a WAF node strips.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapRules {
    /// The node's own tunnel endpoints: outer destinations (its addresses the
    /// balancers' `vips[].backends[].address` name).
    pub local: BTreeSet<IpAddr>,
    /// Outer sources accepted: every balancer's `tunnel_source` addresses.
    pub balancers: BTreeSet<IpAddr>,
    /// Inner destinations accepted: the VIP addresses.
    pub vips: BTreeSet<IpAddr>,
}

impl DecapRules {
    /// Rules for a node that serves the VIPs of `cfg`: the VIP addresses, the
    /// config's `tunnel_source` and the tunnel sources of `other_balancers` (a
    /// balancer pair's configs differ only there), and the node's own `local`
    /// addresses.
    #[must_use]
    pub fn for_config(
        cfg: &Config,
        local: impl IntoIterator<Item = IpAddr>,
        other_balancers: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        let ts = cfg.tunnel_source;
        let own = ts.ipv4.map(IpAddr::from).into_iter().chain(ts.ipv6.map(IpAddr::from));
        Self {
            local: local.into_iter().collect(),
            balancers: own.chain(other_balancers).collect(),
            vips: cfg.vips.iter().map(|v| v.address).collect(),
        }
    }

    fn sets(&self) -> [(&'static str, &BTreeSet<IpAddr>); 3] {
        [("local", &self.local), ("balancers", &self.balancers), ("vips", &self.vips)]
    }

    /// Every set non-empty (an empty one would drop every tunnel packet), within
    /// the maps' size, of unicast addresses.
    pub fn check(&self) -> Result<()> {
        for (name, set) in self.sets() {
            ensure!(
                !set.is_empty(),
                "decap rules: `{name}` is empty, so every tunnel packet would be dropped"
            );
            ensure!(
                set.len() <= MAX_DECAP_ADDRS as usize,
                "decap rules: {} addresses in `{name}`, at most {MAX_DECAP_ADDRS}",
                set.len()
            );
            if let Some(a) = set.iter().find(|a| a.is_unspecified() || a.is_multicast()) {
                anyhow::bail!("decap rules: `{name}` holds {a}, not a unicast address");
            }
        }
        Ok(())
    }
}

fn key(a: IpAddr) -> VipAddrKey {
    let (addr, family) = addr_words(a);
    VipAddrKey { addr, family, _pad: [0; 3] }
}

fn address(k: &VipAddrKey) -> IpAddr {
    if k.family == lb_common::family::V4 {
        IpAddr::from(k.addr[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (chunk, w) in o.chunks_exact_mut(4).zip(k.addr) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// A loaded `xdp-decap` (verified by the kernel), maybe attached.
pub struct Decap {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Decap {
    /// Loads `xdp-decap`. With `pin_dir`, its maps are pinned under `pin_dir/maps`
    /// (reused when already there: the rules and counters of an earlier load).
    pub fn load(pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                let maps = loader::maps_dir(dir);
                loader::ensure_bpffs(&maps)?;
                PINNED_MAPS.iter().map(|m| (*m, maps.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(objects::XDP_DECAP).context("loading the xdp-decap object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no program {PROGRAM} in the object"))?
            .try_into()?;
        prog.load().context("the kernel verifier rejected xdp_decap")?;
        Ok(Self { ebpf, pin_dir: pin_dir.map(Path::to_owned) })
    }

    /// Makes the maps hold exactly `rules`: missing addresses are added before
    /// extra ones are removed, so a packet both rule sets accept is never dropped.
    pub fn set_rules(&mut self, rules: &DecapRules) -> Result<()> {
        rules.check()?;
        for ((_, want), name) in rules.sets().into_iter().zip(RULE_MAPS) {
            let mut map = self.set_map(name)?;
            let have: Vec<VipAddrKey> = map.keys().collect::<Result<_, _>>()?;
            for &a in want {
                map.insert(key(a), 1, 0).with_context(|| format!("{name} <- {a}"))?;
            }
            for k in have.iter().filter(|k| !want.contains(&address(k))) {
                map.remove(k).with_context(|| format!("{name}: removing {}", address(k)))?;
            }
        }
        Ok(())
    }

    /// The rules the maps hold.
    pub fn rules(&mut self) -> Result<DecapRules> {
        let mut sets: [BTreeSet<IpAddr>; 3] = Default::default();
        for (set, name) in sets.iter_mut().zip(RULE_MAPS) {
            *set = self
                .set_map(name)?
                .keys()
                .map(|k| k.map(|k| address(&k)))
                .collect::<Result<_, _>>()?;
        }
        let [local, balancers, vips] = sets;
        Ok(DecapRules { local, balancers, vips })
    }

    fn set_map(&mut self, name: &str) -> Result<HashMap<&mut MapData, VipAddrKey, u32>> {
        let map = self.ebpf.map_mut(name).ok_or_else(|| anyhow!("no map {name} in xdp-decap"))?;
        HashMap::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))
    }

    /// What the program counted, summed over CPUs.
    pub fn counters(&self) -> Result<DecapCounterSet> {
        let name = map_names::DECAP_STATS;
        let map = self.ebpf.map(name).ok_or_else(|| anyhow!("no map {name} in xdp-decap"))?;
        let stats: PerCpuArray<&MapData, DecapCounterSet> =
            PerCpuArray::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))?;
        let mut total = DecapCounterSet::default();
        for cpu in stats.get(&0, 0)?.iter() {
            for c in DecapCounter::ALL {
                total.values[*c as usize] += cpu.get(*c);
            }
        }
        Ok(total)
    }

    /// The loaded program (e.g. for BPF_PROG_TEST_RUN).
    pub fn program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program(PROGRAM).ok_or_else(|| anyhow!("no program {PROGRAM}"))?.try_into()?)
    }

    /// Attaches to `interface` (in the calling thread's network namespace). With a
    /// pin directory the link is pinned at `pin_dir/link`, so the program stays
    /// attached after we exit, and an existing pinned link gets this program
    /// swapped in; without one it detaches when this `Decap` drops.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<()> {
        let if_index = loader::if_index(interface)?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no program {PROGRAM} in the object"))?
            .try_into()?;
        match &self.pin_dir {
            Some(dir) => {
                // The pin holds the link; our handle on it may go.
                let link = loader::link_path(dir);
                loader::attach_pinned_link(prog, PROGRAM, interface, if_index, mode, &link)?;
            }
            None => {
                prog.attach_to_if_index(if_index, mode).with_context(|| {
                    format!("attaching {PROGRAM} to {interface} ({mode:?} mode)")
                })?;
            }
        }
        Ok(())
    }
}

/// Detaches a pinned `xdp-decap` (once no process holds it) and removes its pins.
pub fn detach(pin_dir: &Path) -> Result<()> {
    loader::remove_pins(pin_dir).map(drop)
}
