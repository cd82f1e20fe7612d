//! The planner: from the config and what the controller observed of each
//! (VIP, backend) — health, drain, next-hop MAC — to the desired state of the
//! data path. Pure: no I/O, so the state rules are tested without a kernel.
//!
//! Rules that decide which backends take traffic (a reserve tier, a policy for a
//! VIP whose backends are all down) belong here, as functions of the same inputs.

use std::collections::BTreeMap;

use lb_common::{BackendState, ForwardingMode, LbConfig};

use crate::{
    config::{BackendConf, Config, Forwarding, Vip},
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
    }
}

/// The desired state: every VIP of the config, every backend with the state and
/// MAC observed of it (a backend never observed is down).
#[must_use]
pub fn plan(cfg: &Config, lb: LbConfig, observed: &BTreeMap<Key, Observed>) -> DesiredState {
    let vips = cfg
        .vips
        .iter()
        .map(|v| DesiredVip {
            name: v.name.clone(),
            address: v.address,
            port: v.port,
            proto: v.protocol.number(),
            backends: v
                .backends
                .iter()
                .map(|b| {
                    let seen = observed
                        .get(&(v.name.clone(), b.name.clone()))
                        .copied()
                        .unwrap_or_default();
                    DesiredBackend {
                        name: b.name.clone(),
                        address: b.address,
                        mac: seen.mac,
                        weight: b.weight,
                        state: seen.state(),
                    }
                })
                .collect(),
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
            "interface: lo\nvips:\n  - {name: web, address: 192.0.2.1, port: 80, backends: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2, weight: 7}]}\n",
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
        assert_eq!(p.config.src_mac, [9; 6]);
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
            Box::new(move |i| if i % 2 == 0 { Observed { healthy: false, ..up(i) } } else { up(i) }),
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
}
