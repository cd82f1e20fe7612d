use crate::{Addr, hash::Seed, limits::ACCEPT_MACS};

/// How a chosen backend is reached.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ForwardingMode {
    /// L2 direct server return: rewrite MACs, XDP_TX.
    #[default]
    Dsr = 0,
    /// Encapsulate in IPv4 (IPIP, 6in4) or IPv6 (IP6IP6, 4in6) towards the backend.
    Ipip = 1,
}

/// Global settings, the single entry of the CONFIG array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// A `ForwardingMode` as u32.
    pub mode: u32,
    /// Largest L3 packet the egress link carries; a packet that would exceed it once
    /// encapsulated is answered with ICMP too-big (`too_big` in lb-ebpf).
    pub mtu: u32,
    /// The balancer interface's own MAC: the source of forwarded frames, and the
    /// destination VIP traffic must be addressed to (or one of `accept_macs`).
    pub src_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Outer IPv4 source for ipip.
    pub tunnel_src_v4: u32,
    /// Outer IPv6 source for ip6ip6 and 4in6.
    pub tunnel_src_v6: Addr,
    /// The flow hash's secret seed (`hash::flow_hash`): the same on every balancer.
    pub hash_seed: Seed,
    /// Other destination MACs VIP traffic is taken on (the config's `accept_macs`,
    /// e.g. keepalived's VRRP virtual MAC); a frame to any other MAC (another
    /// host's, flooded here by a bridge or a promiscuous NIC; broadcast; multicast)
    /// passes untouched. Unused entries repeat `src_mac` (see [`accept_macs`]), so
    /// the data path compares them all without a count.
    pub accept_macs: [[u8; 6]; ACCEPT_MACS],
    /// `FLOWS4`'s sets less one (a power of two less one): the mask of
    /// `hash::flow_set`, as the controller sized the table.
    pub flow_sets_mask: u32,
    /// The seed of `hash::flow_set`: the table's, chosen when it was created and
    /// kept while it lives (pinned restarts, reloads), not `hash_seed`, which a
    /// reload may change: a flow's set must not move under its entry.
    pub flow_seed: Seed,
}

/// `LbConfig::accept_macs` for the interface's MAC `own` and the `extra` ones
/// (only the first `ACCEPT_MACS` fit; the config allows no more).
#[must_use]
pub fn accept_macs(own: [u8; 6], extra: &[[u8; 6]]) -> [[u8; 6]; ACCEPT_MACS] {
    let mut out = [own; ACCEPT_MACS];
    for (slot, mac) in out.iter_mut().zip(extra) {
        *slot = *mac;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_accepted_macs_repeat_the_interfaces_own() {
        let (own, vmac) = ([2, 0, 0, 0, 0, 1], [0, 0, 0x5e, 0, 1, 51]);
        assert_eq!(accept_macs(own, &[]), [own; ACCEPT_MACS]);
        assert_eq!(accept_macs(own, &[vmac]), [vmac, own, own, own]);
    }
}
