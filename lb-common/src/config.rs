use crate::{Addr, hash::Seed};

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
    /// Source MAC of forwarded frames (the balancer interface's own).
    pub src_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Outer IPv4 source for ipip.
    pub tunnel_src_v4: u32,
    /// Outer IPv6 source for ip6ip6 and 4in6.
    pub tunnel_src_v6: Addr,
    /// The flow hash's secret seed (`hash::flow_hash`): the same on every balancer.
    pub hash_seed: Seed,
}
