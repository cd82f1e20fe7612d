//! The status the controller publishes after every change: what each backend
//! is, as `xdplb status` shows it and `/metrics` labels it. A value, read by the
//! endpoints without touching the controller.

use std::fmt::Write as _;

use lb_common::Traffic;

use super::{
    balancer_health::Health,
    planner::{Observed, Tier},
};
use crate::{
    config::{BackendConf, Config, Vip},
    mac,
    stats::Stats,
};

/// One published status: the running config, and for each of its VIPs and
/// backends (in config order) what the data path and the controller know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub config: Config,
    /// One per `config.vips`, in order.
    pub vips: Vec<VipStatus>,
    /// The last map write: `Err` says why it failed.
    pub last_write: Result<(), String>,
    /// Set while the balancer starts, until the health of every backend is
    /// decided (then never again: a reload that adds a backend does not restart it).
    pub starting: Option<Starting>,
}

/// How far a starting balancer is from knowing its backends' health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Starting {
    /// Probe targets without a decided state yet.
    pub undecided: usize,
    /// Healthy backends whose next-hop MAC is not known yet (out of the ring).
    pub unresolved: usize,
    /// Probe targets in all.
    pub checks: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipStatus {
    /// Its slot in the data path's per-VIP statistics, once written.
    pub index: Option<u32>,
    /// Which of its tiers takes new flows.
    pub tier: Tier,
    /// One per backend of the VIP in the config, in order.
    pub backends: Vec<BackendStatus>,
    /// The ring in use, once written.
    pub ring: Option<RingStatus>,
}

/// A VIP's ring in use, as every balancer can compare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingStatus {
    /// Backends with slots in it.
    pub members: usize,
    /// `maglev::digest`: equal on two balancers exactly when their rings send
    /// every slot to the same backend.
    pub digest: u64,
}

impl RingStatus {
    /// The digest as status and metrics show it.
    #[must_use]
    pub fn hex(&self) -> String {
        format!("{:016x}", self.digest)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub observed: Observed,
    /// Its slot in the backend table (and its statistics), once written.
    pub index: Option<u32>,
    /// Held down by flap damping.
    pub held: bool,
}

impl Status {
    /// Each VIP of the config with its status.
    pub fn vips(&self) -> impl Iterator<Item = (&Vip, &VipStatus)> {
        self.config.vips.iter().zip(&self.vips)
    }

    /// Each backend of the config, with its VIP and its status.
    pub fn backends(&self) -> impl Iterator<Item = (&Vip, &BackendConf, &BackendStatus)> {
        self.vips()
            .flat_map(|(v, vs)| v.backends.iter().zip(&vs.backends).map(move |(b, bs)| (v, b, bs)))
    }

    /// The `xdplb status` text. `attached` is the data path's attachment check,
    /// `health` the balancer's health; packet and byte counts and the connection
    /// table's use come from `traffic` (0 where unreadable).
    #[must_use]
    pub fn render(
        &self,
        attached: &Result<(), String>,
        health: &Health,
        traffic: &impl Stats,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "xdplb {} on {} (xdp {:?}, {:?}), config {}",
            env!("CARGO_PKG_VERSION"),
            self.config.interface,
            self.config.xdp_mode,
            self.config.forwarding,
            self.config.origin.file()
        );
        let _ = writeln!(
            s,
            "xdp: {}",
            match attached {
                Ok(()) => "attached".to_owned(),
                Err(e) => format!("NOT attached: {e}"),
            }
        );
        // Balancers of a group must show the same fingerprint, as the same ring digests.
        let _ = writeln!(s, "flow hash: {}", self.config.hash_seed);
        let _ = writeln!(s, "{}", health.line());
        for warning in &health.warnings {
            let _ = writeln!(s, "warning: {warning}");
        }
        if let Some(table) = traffic.conn_table() {
            let _ = writeln!(s, "{}", table.line(std::time::Instant::now()));
        }
        let row = |s: &mut String, cells: [&str; 9]| {
            let [name, address, weight, role, state, health, drained, mac, packets] = cells;
            let _ = writeln!(
                s,
                "  {name:<16} {address:<40} {weight:>6}  {role:<8} {state:<9} {health:<7} {drained:<7} {mac:<17} {packets:>10}"
            );
        };
        let indices: Vec<u32> = self.vips().filter_map(|(_, vs)| vs.index).collect();
        let mut vip_traffic = traffic.vips_traffic(&indices).unwrap_or_default().into_iter();
        for (v, vs) in self.vips() {
            let t = vs.index.and_then(|_| vip_traffic.next()).unwrap_or_default();
            let port = if v.port == 0 { "*".to_owned() } else { v.port.to_string() };
            let ring = vs.ring.map_or_else(String::new, |r| {
                let plural = if r.members == 1 { "" } else { "s" };
                format!("  ring {} ({} backend{plural})", r.hex(), r.members)
            });
            let _ = writeln!(
                s,
                "\nVIP {} {}:{}/{}  packets {}  bytes {}  tier {}  all_down {}  down_flows {}{ring}",
                v.name,
                v.address,
                port,
                v.protocol.name(),
                t.packets,
                t.bytes,
                tier_text(&vs.tier),
                v.all_down.name(),
                v.down_flows.name(),
            );
            row(
                &mut s,
                [
                    "BACKEND", "ADDRESS", "WEIGHT", "ROLE", "STATE", "HEALTH", "DRAINED", "MAC",
                    "PACKETS",
                ],
            );
            for (b, bs) in v.backends.iter().zip(&vs.backends) {
                let packets: Traffic =
                    bs.index.and_then(|i| traffic.backend_traffic(i).ok()).unwrap_or_default();
                let seen = bs.observed;
                let mac = seen.mac.map_or_else(|| "unresolved".to_owned(), |m| mac::format(&m));
                row(
                    &mut s,
                    [
                        &b.name,
                        &b.address.to_string(),
                        &b.weight.to_string(),
                        if b.backup { "reserve" } else { "primary" },
                        vs.tier.condition(b, &seen),
                        if bs.held {
                            "held"
                        } else if seen.healthy {
                            "up"
                        } else {
                            "down"
                        },
                        if seen.drained { "yes" } else { "no" },
                        &mac,
                        &packets.packets.to_string(),
                    ],
                );
            }
        }
        s
    }
}

/// Which tier serves, and for a VIP with reserves, why: e.g. `reserve (0 of 2
/// primaries usable, min_primaries 1; 2 of 2 reserves usable)`.
fn tier_text(tier: &Tier) -> String {
    let serving = tier.serving().name();
    if tier.reserves == 0 {
        return serving.to_owned();
    }
    format!(
        "{serving} ({} of {} primaries usable, min_primaries {}; {} of {} reserves usable)",
        tier.usable_primaries,
        tier.primaries,
        tier.min_primaries,
        tier.usable_reserves,
        tier.reserves
    )
}

#[cfg(test)]
mod tests {
    use anyhow::{Result, bail};
    use lb_common::CounterSet;

    use super::*;

    /// Traffic of `index` is `index * 10` packets, except index 9, unreadable.
    struct Counting;

    impl Stats for Counting {
        fn counters(&self) -> Result<CounterSet> {
            Ok(CounterSet::default())
        }
        fn vip_traffic(&self, index: u32) -> Result<Traffic> {
            self.backend_traffic(index).map(|t| Traffic { bytes: t.packets * 100, ..t })
        }
        fn backend_traffic(&self, index: u32) -> Result<Traffic> {
            if index == 9 {
                bail!("unreadable");
            }
            Ok(Traffic { packets: u64::from(index) * 10, bytes: 0 })
        }
        fn conn_table(&self) -> Option<crate::conn_table::Use> {
            Some(crate::conn_table::Use {
                size: crate::conn_table::Size::new(crate::conn_table::Configured::of(8192), 2),
                v4: 1000,
                v6: 24,
                counted: std::time::Instant::now(),
                error: None,
            })
        }
    }

    /// waf-1 up, waf-2 drained (no MAC), waf-3 a healthy reserve, waf-4 a reserve never seen.
    fn status(waf1: Observed) -> Status {
        let config = crate::config::parse(
            "interface: eth0\nhash_seed: \"00112233445566778899aabbccddeeff\"\nvips:\n  - name: web\n    address: 192.0.2.1\n    port: 0\n    backends:\n      - { name: waf-1, address: 10.0.0.11 }\n      - { name: waf-2, address: 10.0.0.12 }\n      - { name: waf-3, address: 10.0.0.13, backup: true }\n      - { name: waf-4, address: 10.0.0.14, backup: true }\n",
            "/etc/xdplb/xdplb.yaml",
        )
        .unwrap();
        let draining = Observed { healthy: true, drained: true, mac: None };
        let reserve = Observed { healthy: true, drained: false, mac: Some([2, 0, 0, 0, 0, 0xd]) };
        let seen = [waf1, draining, reserve, Observed::default()];
        let tier = Tier::of(&config.vips[0], |b| {
            seen[config.vips[0].backends.iter().position(|x| x == b).unwrap()]
        });
        Status {
            config,
            vips: vec![VipStatus {
                index: Some(2),
                tier,
                backends: vec![
                    BackendStatus { observed: seen[0], index: Some(1), held: false },
                    BackendStatus { observed: seen[1], index: Some(9), held: false },
                    BackendStatus { observed: seen[2], index: Some(3), held: false },
                    BackendStatus { observed: seen[3], index: None, held: false },
                ],
                ring: Some(RingStatus { members: 1, digest: 0x00c0_ffee }),
            }],
            last_write: Ok(()),
            starting: None,
        }
    }

    const UP: Observed =
        Observed { healthy: true, drained: false, mac: Some([2, 0, 0, 0, 0, 0xb]) };

    #[test]
    fn status_shows_each_backend_role_state_health_drain_mac_and_packets() {
        let text = status(UP).render(&Ok(()), &Health::default(), &Counting);
        let want = format!(
            "xdplb {} on eth0 (xdp Driver, Dsr), config /etc/xdplb/xdplb.yaml\n\
             xdp: attached\n\
             flow hash: hash_seed in the config, fingerprint {:08x}\n\
             health: ok\n\
             connection table: 1024 of 10240 entries in use (10.0%, counted 0 s ago): IPv4 1000 of 8192 (sets of 4, shared by all CPUs), IPv6 24 of 2048; LRU per CPU: 1024 IPv6 entries on each of 2 CPUs\n\
             \n\
             VIP web 192.0.2.1:*/tcp  packets 20  bytes 2000  tier primary (1 of 2 primaries usable, min_primaries 1; 1 of 2 reserves usable)  all_down drop  down_flows move  ring 0000000000c0ffee (1 backend)\n  \
             BACKEND          ADDRESS                                  WEIGHT  ROLE     STATE     HEALTH  DRAINED MAC                  PACKETS\n  \
             waf-1            10.0.0.11                                   100  primary  up        up      no      02:00:00:00:00:0b         10\n  \
             waf-2            10.0.0.12                                   100  primary  draining  up      yes     unresolved                 0\n  \
             waf-3            10.0.0.13                                   100  reserve  standby   up      no      02:00:00:00:00:0d         30\n  \
             waf-4            10.0.0.14                                   100  reserve  down      down    no      unresolved                 0\n",
            env!("CARGO_PKG_VERSION"),
            lb_common::hash::fingerprint(
                &crate::config::seed::parse("00112233445566778899aabbccddeeff").unwrap()
            )
        );
        assert_eq!(text, want);
    }

    #[test]
    fn with_no_usable_primary_the_status_says_the_reserves_serve() {
        let text = status(Observed::default()).render(&Ok(()), &Health::default(), &Counting);
        assert!(
            text.contains(
                "tier reserve (0 of 2 primaries usable, min_primaries 1; 1 of 2 reserves usable)"
            ),
            "{text}"
        );
        let waf3 = text.lines().find(|l| l.trim_start().starts_with("waf-3")).unwrap();
        assert_eq!(waf3.split_whitespace().nth(4), Some("up"), "{waf3}");
    }

    #[test]
    fn status_says_why_xdp_is_not_attached_and_why_the_balancer_fails() {
        let gone = "interface eth0 is gone or was recreated".to_owned();
        let health = Health { failing: vec![gone.clone()], warnings: vec!["mind the gap".into()] };
        let text = status(UP).render(&Err(gone), &health, &Counting);
        let lines: Vec<&str> =
            text.lines().skip(1).filter(|l| !l.starts_with("flow hash:")).take(3).collect();
        assert_eq!(
            lines,
            [
                "xdp: NOT attached: interface eth0 is gone or was recreated",
                "health: FAILING: interface eth0 is gone or was recreated",
                "warning: mind the gap"
            ]
        );
    }
}
