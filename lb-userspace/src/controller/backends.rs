//! What the controller knows about each (VIP, backend) beyond the config — health,
//! drain, next-hop MAC — and the desired data plane that follows from it. Pure:
//! no I/O, so the state rules are tested without a kernel.

use std::collections::BTreeMap;

use lb_common::{BackendState, ForwardingMode, LbConfig};

use crate::{
    config::{BackendConf, Config, Forwarding, Vip},
    dataplane::{BackendPlan, DataPlane, VipPlan, addr_words},
    health::Target,
};

/// (VIP name, backend name).
pub type Key = (String, String);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// The health check says up.
    pub healthy: bool,
    /// An operator drained it (`xdplb drain`): no new flows, existing ones stay.
    pub drained: bool,
    /// Next-hop MAC from the neighbour table; `None` keeps it out of the ring.
    pub mac: Option<[u8; 6]>,
}

impl Runtime {
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
pub fn target(vip: &Vip, backend: &BackendConf) -> Target {
    Target { address: backend.address, spec: vip.health_check.clone() }
}

/// Forwarding settings for the CONFIG map.
#[must_use]
pub fn lb_config(cfg: &Config, src_mac: [u8; 6], interface_mtu: u32) -> LbConfig {
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

/// The desired data plane: every VIP of the config, every backend with the state
/// and MAC its runtime says (a backend without runtime is down).
#[must_use]
pub fn plan(cfg: &Config, lb: LbConfig, runtime: &BTreeMap<Key, Runtime>) -> DataPlane {
    let vips = cfg
        .vips
        .iter()
        .map(|v| VipPlan {
            name: v.name.clone(),
            address: v.address,
            port: v.port,
            proto: v.protocol.number(),
            backends: v
                .backends
                .iter()
                .map(|b| {
                    let rt =
                        runtime.get(&(v.name.clone(), b.name.clone())).cloned().unwrap_or_default();
                    BackendPlan {
                        name: b.name.clone(),
                        address: b.address,
                        mac: rt.mac,
                        weight: b.weight,
                        state: rt.state(),
                    }
                })
                .collect(),
        })
        .collect();
    DataPlane { config: lb, vips }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_is_down_even_when_drained() {
        let rt = Runtime { healthy: false, drained: true, mac: None };
        assert_eq!(rt.state(), BackendState::Down);
    }

    #[test]
    fn healthy_and_drained_is_draining() {
        let rt = Runtime { healthy: true, drained: true, mac: Some([2; 6]) };
        assert_eq!(rt.state(), BackendState::Draining);
    }

    #[test]
    fn healthy_is_up() {
        assert_eq!(Runtime { healthy: true, drained: false, mac: None }.state(), BackendState::Up);
    }

    #[test]
    fn plan_takes_state_and_mac_from_runtime_and_defaults_to_down() {
        let cfg = crate::config::parse(
            "interface: lo\nvips:\n  - {name: web, address: 192.0.2.1, port: 80, backends: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2, weight: 7}]}\n",
            "t.yaml",
        )
        .unwrap();
        let mut rt = BTreeMap::new();
        rt.insert(
            ("web".into(), "a".into()),
            Runtime { healthy: true, drained: false, mac: Some([1; 6]) },
        );
        let p = plan(&cfg, lb_config(&cfg, [9; 6], 1500), &rt);
        let b = &p.vips[0].backends;
        assert_eq!((b[0].state, b[0].mac), (BackendState::Up, Some([1; 6])));
        assert_eq!((b[1].state, b[1].mac, b[1].weight), (BackendState::Down, None, 7));
        assert_eq!(p.config.mtu, 1500);
        assert_eq!(p.config.src_mac, [9; 6]);
    }
}
