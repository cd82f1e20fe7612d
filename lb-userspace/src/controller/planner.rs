//! The planner: from the config and what the controller observed of each
//! (VIP, backend) — health, drain, next-hop MAC — to the desired state of the
//! data path. Pure: no I/O, so the state rules are tested without a kernel.
//!
//! Rules that decide which backends take traffic belong here, as functions of the
//! same inputs, in [`Tier`]: the reserve tier (reserves join a VIP's ring only
//! while fewer than `min_primaries` of its primaries are usable), a VIP's
//! `all_down` policy (with no usable backend, drop new flows or fail open to
//! every reachable, undrained backend) and its `down_flows` policy (a backend
//! whose check failed has its flows moved, or keeps them as if draining).

use std::collections::BTreeMap;

use lb_common::{
    BackendState, ForwardingMode, LbConfig, config::accept_macs, pinned::backend_flags,
};

use crate::{
    config::{AllDown, BackendConf, Config, DownFlows, Forwarding, Vip},
    desired::{DesiredBackend, DesiredState, DesiredVip, addr_words},
    health::Target,
    mac::Mac,
};

/// (VIP name, backend name).
pub type Key = (String, String);

/// What the controller observed of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The health check says up.
    pub healthy: bool,
    /// An operator drained it (`xdplb drain`): no new flows, existing ones stay.
    pub drained: bool,
    /// Next-hop MAC from the neighbour table; `None` keeps it out of the ring.
    pub mac: Option<Mac>,
}

impl Observed {
    /// What a restarted controller reads back (`pinned::backend_flags`).
    #[must_use]
    pub fn flags(&self) -> u32 {
        backend_flags::KNOWN
            | if self.healthy { backend_flags::HEALTHY } else { 0 }
            | if self.drained { backend_flags::DRAINED } else { 0 }
    }

    /// The inverse of `flags`, with `mac`; `None` unless `KNOWN` is set.
    #[must_use]
    pub fn from_flags(flags: u32, mac: Option<Mac>) -> Option<Self> {
        (flags & backend_flags::KNOWN != 0).then_some(Self {
            healthy: flags & backend_flags::HEALTHY != 0,
            drained: flags & backend_flags::DRAINED != 0,
            mac,
        })
    }

    /// The state the data path should see. A dead backend is down even when drained:
    /// its flows must move.
    #[must_use]
    pub fn state(&self) -> BackendState {
        match (self.healthy, self.drained) {
            (false, _) => BackendState::Down,
            (true, true) => BackendState::Draining,
            (true, false) => BackendState::Up,
        }
    }
}

/// The health-check target of a backend of `vip`.
#[must_use]
pub fn check_target(vip: &Vip, backend: &BackendConf) -> Target {
    Target { address: backend.address, spec: vip.health_check.clone() }
}

/// Forwarding settings for the CONFIG map.
#[must_use]
pub fn lb_config(cfg: &Config, src_mac: Mac, interface_mtu: u32) -> LbConfig {
    let mode = match cfg.forwarding {
        Forwarding::Dsr => ForwardingMode::Dsr,
        Forwarding::Ipip => ForwardingMode::Ipip,
    };
    LbConfig {
        mode: mode as u32,
        mtu: cfg.mtu.unwrap_or(interface_mtu),
        src_mac,
        _pad: [0; 2],
        tunnel_src_v4: cfg.tunnel_source.ipv4.map_or(0, |a| u32::from_ne_bytes(a.octets())),
        tunnel_src_v6: cfg.tunnel_source.ipv6.map_or([0; 4], |a| addr_words(a.into()).0),
        hash_seed: cfg.hash_seed.seed,
        accept_macs: accept_macs(src_mac, &cfg.accept_macs),
        // The IPv4 table's own, not the config's: `BpfMaps` stamps them into
        // every config it writes (`flows4::Index`).
        flow_sets_mask: 0,
        flow_seed: [0; 4],
    }
}

/// Which backends of a VIP take new flows: the primaries, or the reserves with
/// them. A function of the config and of what was observed only, so every
/// balancer with the same config and the same view picks the same tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tier {
    /// Primaries (backends without `backup`) configured.
    pub primaries: usize,
    /// Reserves (`backup: true`) configured.
    pub reserves: usize,
    /// Primaries that can take new flows: healthy, not drained, next hop known.
    pub usable_primaries: usize,
    /// Reserves that can take new flows.
    pub usable_reserves: usize,
    /// The VIP's `min_primaries`.
    pub min_primaries: u32,
    /// Backends a failing-open VIP sends new flows to: next hop known, not
    /// drained by an operator, whatever their health.
    pub reachable: usize,
    /// The VIP's `all_down` and `down_flows` policies.
    pub all_down: AllDown,
    pub down_flows: DownFlows,
}

/// What serves a VIP's new flows, as `xdplb status` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    Primary,
    /// Too few primaries: reserves serve beside the usable primaries.
    PrimaryAndReserve,
    Reserve,
    /// No usable backend in either tier, `all_down: fail_open`: every reachable,
    /// undrained backend takes new flows, whatever its health.
    FailOpen,
    /// No usable backend in either tier: new flows are dropped.
    Nothing,
}

impl Serving {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::PrimaryAndReserve => "primary+reserve",
            Self::Reserve => "reserve",
            Self::FailOpen => "fail_open",
            Self::Nothing => "none",
        }
    }
}

impl Tier {
    /// The tier of `vip` given what `seen` says of each backend.
    pub fn of(vip: &Vip, seen: impl Fn(&BackendConf) -> Observed) -> Self {
        let mut tier = Self {
            min_primaries: vip.min_primaries,
            all_down: vip.all_down,
            down_flows: vip.down_flows,
            ..Self::default()
        };
        for b in &vip.backends {
            let seen = seen(b);
            tier.reachable += usize::from(reachable(&seen));
            let usable = usable(&seen);
            if b.backup {
                tier.reserves += 1;
                tier.usable_reserves += usize::from(usable);
            } else {
                tier.primaries += 1;
                tier.usable_primaries += usize::from(usable);
            }
        }
        tier
    }

    /// Fewer usable primaries than `min_primaries`: the usable reserves join the ring.
    #[must_use]
    pub fn reserves_called(&self) -> bool {
        self.reserves > 0 && self.usable_primaries < self.min_primaries as usize
    }

    /// Reserves are in the ring now (called, and at least one usable).
    #[must_use]
    pub fn reserve_active(&self) -> bool {
        self.reserves_called() && self.usable_reserves > 0
    }

    /// No backend of either tier can take new flows.
    #[must_use]
    pub fn all_down(&self) -> bool {
        self.usable_primaries == 0 && self.usable_reserves == 0
    }

    /// All down, `all_down: fail_open`, and some backend reachable: new flows go
    /// to every reachable, undrained backend.
    #[must_use]
    pub fn failing_open(&self) -> bool {
        self.all_down() && self.all_down == AllDown::FailOpen && self.reachable > 0
    }

    #[must_use]
    pub fn serving(&self) -> Serving {
        match (self.usable_primaries > 0, self.reserve_active()) {
            (true, false) => Serving::Primary,
            (true, true) => Serving::PrimaryAndReserve,
            (false, true) => Serving::Reserve,
            (false, false) if self.failing_open() => Serving::FailOpen,
            (false, false) => Serving::Nothing,
        }
    }

    /// A backend whose check failed that keeps its established flows
    /// (`down_flows: keep`, and the data path can still reach it).
    #[must_use]
    pub fn keeps_flows(&self, seen: &Observed) -> bool {
        self.down_flows == DownFlows::Keep && !seen.healthy && seen.mac.is_some()
    }

    /// A backend taking new flows only because its VIP fails open.
    #[must_use]
    pub fn failed_open(&self, seen: &Observed) -> bool {
        self.failing_open() && reachable(seen) && !usable(seen)
    }

    /// Whether backend `b`, observed as `seen`, waits outside the ring: a healthy,
    /// undrained reserve while its tier is not called. The data path holds it as
    /// draining: it keeps the flows it has (from the last time its tier served)
    /// and gets no new ones.
    #[must_use]
    pub fn standby(&self, b: &BackendConf, seen: &Observed) -> bool {
        b.backup && seen.state() == BackendState::Up && !self.reserves_called()
    }

    /// Backend `b` as `xdplb status` and the logs name it: `up`, `down`,
    /// `draining` (by an operator), `standby` (a reserve outside the ring),
    /// `down-keep` (down, keeping its flows) or `fail-open` (down, in the ring of
    /// a VIP that fails open).
    #[must_use]
    pub fn condition(&self, b: &BackendConf, seen: &Observed) -> &'static str {
        if self.failed_open(seen) {
            "fail-open"
        } else if self.standby(b, seen) {
            "standby"
        } else if self.keeps_flows(seen) {
            "down-keep"
        } else {
            seen.state().name()
        }
    }

    /// The state the data path should see for backend `b`: up in the ring,
    /// draining (out of the ring, keeping its flows: drained, standby, or down
    /// with `down_flows: keep`), or down (its flows move).
    #[must_use]
    pub fn state(&self, b: &BackendConf, seen: &Observed) -> BackendState {
        if self.failing_open() && reachable(seen) {
            BackendState::Up
        } else if self.standby(b, seen) || self.keeps_flows(seen) {
            BackendState::Draining
        } else {
            seen.state()
        }
    }
}

/// A backend the data path can send to and an operator has not drained.
fn reachable(seen: &Observed) -> bool {
    seen.mac.is_some() && !seen.drained
}

/// A backend that can take new flows (what the writer puts in the ring).
fn usable(seen: &Observed) -> bool {
    seen.state() == BackendState::Up && seen.mac.is_some()
}

/// What was observed of backend `b` of `vip` (a backend never observed is down).
#[must_use]
pub fn seen(observed: &BTreeMap<Key, Observed>, vip: &Vip, b: &BackendConf) -> Observed {
    observed.get(&(vip.name.clone(), b.name.clone())).copied().unwrap_or_default()
}

/// The desired state: every VIP of the config, every backend with the state and
/// MAC observed of it (a backend never observed is down), reserves outside the
/// ring unless their VIP's tier calls them.
#[must_use]
pub fn plan(cfg: &Config, lb: LbConfig, observed: &BTreeMap<Key, Observed>) -> DesiredState {
    let vips = cfg
        .vips
        .iter()
        .map(|v| {
            let tier = Tier::of(v, |b| seen(observed, v, b));
            DesiredVip {
                name: v.name.clone(),
                address: v.address,
                port: v.port,
                proto: v.protocol.number(),
                backends: v
                    .backends
                    .iter()
                    .map(|b| {
                        let seen = seen(observed, v, b);
                        DesiredBackend {
                            name: b.name.clone(),
                            address: b.address,
                            mac: seen.mac,
                            weight: b.weight,
                            state: tier.state(b, &seen),
                            flags: seen.flags(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    DesiredState { config: lb, vips }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_is_down_even_when_drained() {
        let seen = Observed { healthy: false, drained: true, mac: None };
        assert_eq!(seen.state(), BackendState::Down);
    }

    #[test]
    fn healthy_and_drained_is_draining() {
        let seen = Observed { healthy: true, drained: true, mac: Some([2; 6]) };
        assert_eq!(seen.state(), BackendState::Draining);
    }

    #[test]
    fn healthy_is_up() {
        assert_eq!(Observed { healthy: true, drained: false, mac: None }.state(), BackendState::Up);
    }

    #[test]
    fn plan_takes_state_and_mac_from_what_was_observed_and_defaults_to_down() {
        let cfg = crate::config::parse(
            "interface: lo\nhash_seed: \"000102030405060708090a0b0c0d0e0f\"\nvips:\n  - {name: web, address: 192.0.2.1, port: 80, backends: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2, weight: 7}]}\n",
            "t.yaml",
        )
        .unwrap();
        let mut observed = BTreeMap::new();
        observed.insert(
            ("web".into(), "a".into()),
            Observed { healthy: true, drained: false, mac: Some([1; 6]) },
        );
        let p = plan(&cfg, lb_config(&cfg, [9; 6], 1500), &observed);
        let b = &p.vips[0].backends;
        assert_eq!((b[0].state, b[0].mac), (BackendState::Up, Some([1; 6])));
        assert_eq!((b[1].state, b[1].mac, b[1].weight), (BackendState::Down, None, 7));
        assert_eq!(p.config.mtu, 1500);
        assert_eq!(p.config.hash_seed, [0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c]);
        assert_eq!(p.config.src_mac, [9; 6]);
        assert_eq!(p.config.accept_macs, [[9; 6]; 4], "none configured: the interface's own");
        let vrrp = crate::config::parse(
            "interface: lo\naccept_macs: [\"00:00:5e:00:01:33\"]\nvips:\n  - {name: web, address: 192.0.2.1, port: 80, backends: [{name: a, address: 10.0.0.1}]}\n",
            "t.yaml",
        )
        .unwrap();
        let vmac = [0, 0, 0x5e, 0, 1, 0x33];
        assert_eq!(lb_config(&vrrp, [9; 6], 1500).accept_macs, [vmac, [9; 6], [9; 6], [9; 6]]);
    }

    /// Configs without `backup` or `min_primaries`, as they existed before the
    /// reserve tier: two VIPs (IPv4 and IPv6), weights, a shared backend.
    const LEGACY: &str = "
interface: eth0
forwarding: ipip
tunnel_source: { ipv4: 10.0.0.2, ipv6: \"fd00::2\" }
vips:
  - name: web
    address: 192.0.2.1
    port: 80
    backends:
      - { name: waf-1, address: 10.0.0.11 }
      - { name: waf-2, address: 10.0.0.12, weight: 300 }
      - { name: waf-3, address: 10.0.0.13, weight: 50 }
      - { name: waf-4, address: 10.0.0.14 }
  - name: web6
    address: \"2001:db8::1\"
    port: 0
    backends:
      - { name: waf-1, address: \"fd00::11\" }
      - { name: waf-2, address: \"fd00::12\" }
      - { name: waf-3, address: 10.0.0.13 }
";

    /// FNV-1a over every ring the writer switched to and every backend entry
    /// it wrote, through a sequence of observations: all up, one down, one
    /// drained, one without a MAC, two down, all down, all up again.
    fn legacy_digest() -> u64 {
        use crate::{maglev::stable_hash, testing::FakeMaps, writer::MapWriter};
        let cfg = crate::config::parse(LEGACY, "legacy.yaml").unwrap();
        let lb = lb_config(&cfg, [9; 6], 1500);
        let keys: Vec<Key> = cfg
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (v.name.clone(), b.name.clone())))
            .collect();
        let up = |i: usize| Observed {
            healthy: true,
            drained: false,
            mac: Some([2, 0, 0, 0, 0, u8::try_from(i).unwrap()]),
        };
        let steps: Vec<Box<dyn Fn(usize) -> Observed>> = vec![
            Box::new(up),
            Box::new(move |i| if i == 1 { Observed { healthy: false, ..up(i) } } else { up(i) }),
            Box::new(move |i| if i == 0 { Observed { drained: true, ..up(i) } } else { up(i) }),
            Box::new(move |i| if i == 5 { Observed { mac: None, ..up(i) } } else { up(i) }),
            Box::new(
                move |i| if i % 2 == 0 { Observed { healthy: false, ..up(i) } } else { up(i) },
            ),
            Box::new(move |i| Observed { healthy: false, ..up(i) }),
            Box::new(up),
        ];
        let mut w = MapWriter::new(FakeMaps::default());
        let mut bytes = Vec::new();
        for step in &steps {
            let observed: BTreeMap<Key, Observed> =
                keys.iter().enumerate().map(|(i, k)| (k.clone(), step(i))).collect();
            w.apply(&plan(&cfg, lb, &observed)).unwrap();
            for v in &cfg.vips {
                for slot in w.table(&v.name).unwrap() {
                    bytes.extend_from_slice(&slot.to_le_bytes());
                }
            }
            for (index, entry) in &w.maps().backends {
                bytes.extend_from_slice(&index.to_le_bytes());
                bytes.extend_from_slice(&[entry.state]);
                bytes.extend_from_slice(&entry.generation.to_le_bytes());
            }
        }
        stable_hash(&bytes, 0)
    }

    #[test]
    fn configs_without_reserves_build_the_rings_they_always_built() {
        // Recorded before the reserve tier existed: a config without `backup` or
        // `min_primaries` must keep every ring and entry byte for byte, on every
        // balancer, through failures, drains and recoveries.
        assert_eq!(legacy_digest(), 897_196_269_933_238_551);
    }

    mod reserve_tier {
        //! The reserve tier, as the planner decides it.
        use super::*;

        /// Two primaries and two reserves; `extra` goes into the VIP (e.g. min_primaries).
        fn tiered(extra: &str) -> Config {
            crate::config::parse(
            &format!(
                "interface: lo\nvips:\n  - name: web\n    address: 192.0.2.1\n    port: 80\n{extra}    backends:\n      - {{ name: p1, address: 10.0.0.1 }}\n      - {{ name: p2, address: 10.0.0.2, weight: 300 }}\n      - {{ name: r1, address: 10.0.0.3, backup: true }}\n      - {{ name: r2, address: 10.0.0.4, backup: true, weight: 50 }}\n"
            ),
            "t.yaml",
        )
        .unwrap()
        }

        const USABLE: Observed = Observed { healthy: true, drained: false, mac: Some([2; 6]) };
        const DEAD: Observed = Observed { healthy: false, drained: false, mac: Some([2; 6]) };

        /// The planned state of each backend, in config order, given what was seen of
        /// each (in config order).
        fn states(cfg: &Config, seen: &[Observed]) -> Vec<BackendState> {
            let observed: BTreeMap<Key, Observed> = cfg.vips[0]
                .backends
                .iter()
                .zip(seen)
                .map(|(b, s)| (("web".to_owned(), b.name.clone()), *s))
                .collect();
            plan(cfg, lb_config(cfg, [9; 6], 1500), &observed).vips[0]
                .backends
                .iter()
                .map(DesiredBackend::effective_state)
                .collect()
        }

        use BackendState::{Down, Draining, Up};

        #[test]
        fn while_a_primary_is_usable_healthy_reserves_stand_by_as_draining() {
            let cfg = tiered("");
            assert_eq!(states(&cfg, &[USABLE; 4]), [Up, Up, Draining, Draining]);
            assert_eq!(
                states(&cfg, &[DEAD, USABLE, USABLE, USABLE]),
                [Down, Up, Draining, Draining]
            );
        }

        #[test]
        fn with_every_primary_down_the_usable_reserves_take_the_ring() {
            let cfg = tiered("");
            assert_eq!(states(&cfg, &[DEAD, DEAD, USABLE, USABLE]), [Down, Down, Up, Up]);
            // A dead reserve stays down: its flows move, whatever the tier.
            assert_eq!(states(&cfg, &[DEAD, DEAD, USABLE, DEAD]), [Down, Down, Up, Down]);
            assert_eq!(states(&cfg, &[USABLE, USABLE, USABLE, DEAD]), [Up, Up, Draining, Down]);
        }

        #[test]
        fn a_drained_primary_or_one_without_a_mac_is_not_usable() {
            let cfg = tiered("");
            let drained = Observed { drained: true, ..USABLE };
            let no_mac = Observed { mac: None, ..USABLE };
            // p2 without a MAC cannot be reached: the writer holds it as down.
            assert_eq!(states(&cfg, &[drained, no_mac, USABLE, USABLE]), [Draining, Down, Up, Up]);
        }

        #[test]
        fn an_operator_drain_of_a_reserve_holds_whatever_the_tier() {
            let cfg = tiered("");
            let drained = Observed { drained: true, ..USABLE };
            assert_eq!(states(&cfg, &[DEAD, DEAD, drained, USABLE]), [Down, Down, Draining, Up]);
            assert_eq!(
                states(&cfg, &[USABLE, USABLE, drained, USABLE]),
                [Up, Up, Draining, Draining]
            );
        }

        #[test]
        fn with_min_primaries_2_losing_one_of_two_primaries_brings_the_reserves_in_beside_the_other()
         {
            let cfg = tiered("    min_primaries: 2\n");
            assert_eq!(states(&cfg, &[USABLE; 4]), [Up, Up, Draining, Draining]);
            assert_eq!(states(&cfg, &[USABLE, DEAD, USABLE, USABLE]), [Up, Down, Up, Up]);
        }

        #[test]
        fn with_min_primaries_0_the_reserves_never_serve() {
            let cfg = tiered("    min_primaries: 0\n");
            assert_eq!(
                states(&cfg, &[DEAD, DEAD, USABLE, USABLE]),
                [Down, Down, Draining, Draining]
            );
        }

        #[test]
        fn a_vip_of_reserves_only_is_served_by_them() {
            let cfg = crate::config::parse(
            "interface: lo\nvips:\n  - {name: web, address: 192.0.2.1, port: 80, backends: [{name: r1, address: 10.0.0.3, backup: true}]}\n",
            "t.yaml",
        )
        .unwrap();
            assert_eq!(states(&cfg, &[USABLE]), [Up]);
        }

        #[test]
        fn the_tier_says_what_serves_and_why() {
            let cfg = tiered("");
            let tier = |seen: [Observed; 4]| {
                let v = &cfg.vips[0];
                Tier::of(v, |b| seen[v.backends.iter().position(|x| x == b).unwrap()])
            };
            let t = tier([USABLE; 4]);
            assert_eq!(
                (t.primaries, t.reserves, t.usable_primaries, t.usable_reserves, t.min_primaries),
                (2, 2, 2, 2, 1)
            );
            assert_eq!((t.serving(), t.reserve_active()), (Serving::Primary, false));
            let t = tier([DEAD, DEAD, USABLE, DEAD]);
            assert_eq!((t.serving(), t.reserve_active()), (Serving::Reserve, true));
            let t = tier([DEAD; 4]);
            assert_eq!(
                (t.serving(), t.reserves_called(), t.reserve_active()),
                (Serving::Nothing, true, false)
            );
            let cfg2 = tiered("    min_primaries: 2\n");
            let v = &cfg2.vips[0];
            let t = Tier::of(v, |b| if b.name == "p2" { DEAD } else { USABLE });
            assert_eq!(t.serving(), Serving::PrimaryAndReserve);
            let standby = Tier::of(&cfg.vips[0], |_| USABLE);
            let r1 = &cfg.vips[0].backends[2];
            assert_eq!(standby.condition(r1, &USABLE), "standby");
            assert_eq!(standby.condition(r1, &DEAD), "down");
        }

        #[test]
        fn two_balancers_with_the_same_config_in_any_order_build_the_same_reserve_ring() {
            use crate::{testing::FakeMaps, writer::MapWriter};
            let cfg = tiered("");
            let mut reordered = cfg.clone();
            reordered.vips[0].backends.reverse();
            let ring_by_name = |cfg: &Config| {
                let observed: BTreeMap<Key, Observed> = cfg.vips[0]
                    .backends
                    .iter()
                    .map(|b| {
                        (("web".to_owned(), b.name.clone()), if b.backup { USABLE } else { DEAD })
                    })
                    .collect();
                let mut w = MapWriter::new(FakeMaps::default());
                w.apply(&plan(cfg, lb_config(cfg, [9; 6], 1500), &observed)).unwrap();
                let names: BTreeMap<u32, String> = cfg.vips[0]
                    .backends
                    .iter()
                    .map(|b| (w.backend_index("web", &b.name).unwrap(), b.name.clone()))
                    .collect();
                w.table("web").unwrap().iter().map(|i| names[i].clone()).collect::<Vec<_>>()
            };
            let a = ring_by_name(&cfg);
            assert_eq!(a, ring_by_name(&reordered));
            // Weights apply within the ring: r1 (100) holds about twice r2's (50) slots.
            let r1 = a.iter().filter(|n| *n == "r1").count();
            let r2 = a.iter().filter(|n| *n == "r2").count();
            assert_eq!(r1 + r2, a.len());
            assert!(r1 * 10 > r2 * 19 && r1 * 10 < r2 * 21, "{r1} / {r2}");
        }
    }

    mod policies {
        //! A VIP's `all_down` and `down_flows` policies, as the planner decides them.
        use super::*;

        /// Three backends; `extra` goes into the VIP (the policy keys).
        fn vip(extra: &str) -> Config {
            crate::config::parse(
                &format!(
                    "interface: lo\nvips:\n  - name: web\n    address: 192.0.2.1\n    port: 80\n{extra}    backends:\n      - {{ name: a, address: 10.0.0.1 }}\n      - {{ name: b, address: 10.0.0.2 }}\n      - {{ name: c, address: 10.0.0.3 }}\n"
                ),
                "t.yaml",
            )
            .unwrap()
        }

        const UP: Observed = Observed { healthy: true, drained: false, mac: Some([2; 6]) };
        const DEAD: Observed = Observed { healthy: false, drained: false, mac: Some([2; 6]) };
        const DEAD_DRAINED: Observed = Observed { drained: true, ..DEAD };
        const DEAD_NO_MAC: Observed = Observed { mac: None, ..DEAD };

        fn planned(cfg: &Config, seen: &[Observed]) -> (Vec<BackendState>, Vec<&'static str>) {
            let v = &cfg.vips[0];
            let observed: BTreeMap<Key, Observed> = v
                .backends
                .iter()
                .zip(seen)
                .map(|(b, s)| (("web".to_owned(), b.name.clone()), *s))
                .collect();
            let states = plan(cfg, lb_config(cfg, [9; 6], 1500), &observed).vips[0]
                .backends
                .iter()
                .map(DesiredBackend::effective_state)
                .collect();
            let tier = Tier::of(v, |b| self::seen(&observed, v, b));
            let names = v.backends.iter().map(|b| tier.condition(b, &self::seen(&observed, v, b)));
            (states, names.collect())
        }

        use BackendState::{Down, Draining, Up};

        #[test]
        fn the_defaults_are_drop_and_move_as_before() {
            let cfg = vip("");
            assert_eq!(
                (cfg.vips[0].all_down, cfg.vips[0].down_flows),
                (AllDown::Drop, DownFlows::Move)
            );
            assert_eq!(planned(&cfg, &[DEAD; 3]), (vec![Down; 3], vec!["down"; 3]));
            assert_eq!(Tier::of(&cfg.vips[0], |_| DEAD).serving(), Serving::Nothing);
        }

        #[test]
        fn fail_open_puts_every_reachable_undrained_backend_in_the_ring_while_none_is_usable() {
            let cfg = vip("    all_down: fail_open\n");
            let (states, names) = planned(&cfg, &[DEAD, DEAD_DRAINED, DEAD_NO_MAC]);
            assert_eq!(states, [Up, Down, Down], "not the drained one, not the unreachable one");
            assert_eq!(names, ["fail-open", "down", "down"]);
            assert_eq!(Tier::of(&cfg.vips[0], |_| DEAD).serving(), Serving::FailOpen);
            // One usable backend is enough: the ring is the usual one again.
            let (states, _) = planned(&cfg, &[DEAD, UP, DEAD]);
            assert_eq!(states, [Down, Up, Down]);
            // Nothing reachable: nothing to fail open to.
            let tier = Tier::of(&cfg.vips[0], |_| DEAD_NO_MAC);
            assert!(tier.all_down() && !tier.failing_open());
            assert_eq!(tier.serving(), Serving::Nothing);
        }

        #[test]
        fn keep_holds_a_failed_backend_as_draining_so_its_flows_stay() {
            let cfg = vip("    down_flows: keep\n");
            let (states, names) = planned(&cfg, &[DEAD, UP, DEAD_NO_MAC]);
            assert_eq!(states, [Draining, Up, Down], "without a MAC nothing can be kept");
            assert_eq!(names, ["down-keep", "up", "down"]);
            let (states, names) = planned(&cfg, &[DEAD_DRAINED, UP, UP]);
            assert_eq!(states, [Draining, Up, Up], "a drained node that dies keeps its flows too");
            assert_eq!(names[0], "down-keep");
        }

        #[test]
        fn both_policies_together_fail_open_first() {
            let cfg = vip("    all_down: fail_open\n    down_flows: keep\n");
            assert_eq!(planned(&cfg, &[DEAD; 3]).0, [Up, Up, Up]);
            assert_eq!(planned(&cfg, &[DEAD, UP, DEAD]).0, [Draining, Up, Draining]);
        }

        #[test]
        fn the_keys_are_checked_and_written_back() {
            let bad = vip("").to_yaml().replace("all_down: drop", "all_down: open");
            let err = crate::config::parse(&bad, "t.yaml").unwrap_err().to_string();
            assert!(
                err.contains(
                    "vips[0].all_down: unknown variant `open`, expected `drop` or `fail_open`"
                ),
                "{err}"
            );
            let cfg = vip("    all_down: fail_open\n    down_flows: keep\n");
            let yaml = cfg.to_yaml();
            assert!(yaml.contains("    all_down: fail_open\n    down_flows: keep\n"), "{yaml}");
            assert_eq!(crate::config::parse(&yaml, "t.yaml").unwrap(), cfg);
        }
    }
}
