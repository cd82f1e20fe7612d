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
}
