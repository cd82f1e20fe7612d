//! The desired state of the data path, as the planner (`controller/planner.rs`)
//! computes it from the config and what the controller observed: which VIPs
//! exist and, for each, its backends with their state. The writer turns it into
//! map contents; nothing here touches the kernel.

use std::net::IpAddr;

use lb_common::{Addr, BackendState, LbConfig, VipKey, family, vip::VipAddrKey};

use crate::mac::Mac;

/// Everything the maps should say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    pub config: LbConfig,
    pub vips: Vec<DesiredVip>,
}

/// One VIP and its backends, in config order.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredVip {
    /// Stable identity (the config's `name`).
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    /// `lb_common::proto::TCP` or `UDP`.
    pub proto: u8,
    pub backends: Vec<DesiredBackend>,
}

/// One backend of a VIP as the data path should see it.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredBackend {
    pub name: String,
    pub address: IpAddr,
    /// Next-hop MAC; `None` while unresolved, which keeps the backend out of the ring.
    pub mac: Option<Mac>,
    pub weight: u32,
    pub state: BackendState,
    /// The controller's view, pinned for a restarted controller
    /// (`lb_common::pinned::backend_flags`); 0 where nobody needs it (tests).
    pub flags: u32,
}

impl DesiredVip {
    #[must_use]
    pub fn key(&self) -> VipKey {
        let (addr, family) = addr_words(self.address);
        VipKey { addr, port: self.port.to_be(), proto: self.proto, family }
    }

    #[must_use]
    pub fn addr_key(&self) -> VipAddrKey {
        let (addr, family) = addr_words(self.address);
        VipAddrKey { addr, family, _pad: [0; 3] }
    }
}

impl DesiredBackend {
    /// The identity Maglev hashes: name and address, never list position.
    #[must_use]
    pub fn ring_id(&self) -> String {
        ring_id(&self.name, self.address)
    }

    /// The state the data path should see: a backend without a MAC cannot be reached.
    #[must_use]
    pub fn effective_state(&self) -> BackendState {
        if self.mac.is_none() { BackendState::Down } else { self.state }
    }
}

/// A backend's identity in its VIP's ring: `name/address`.
#[must_use]
pub fn ring_id(name: &str, address: IpAddr) -> String {
    format!("{name}/{address}")
}

/// An address as the four network-order words the maps use, and its family tag.
#[must_use]
pub fn addr_words(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], family::V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], family::V6)
        }
    }
}
