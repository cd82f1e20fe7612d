//! Frames for the fixtures: built with etherparse, decoded by hand plus
//! etherparse's header parsers, so the kernel code is checked against an
//! independent implementation.

use std::net::IpAddr;

use etherparse::{IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, VlanId};

/// The balancer's interface MAC (the fixtures' `LbConfig::src_mac`): every frame
/// the fixtures build is addressed to it, as a client's router addresses them.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// Another balancer on the same segment (the VRRP peer).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// keepalived's VRRP virtual MAC for virtual router 51 (`use_vmac`).
pub const VRRP_VMAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 51];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { syn: bool, ack: bool },
    Udp,
}

/// A client flow to some destination, and the frames it sends.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub l4: L4,
    pub vlan: Option<u16>,
    pub payload_len: usize,
}

impl Flow {
    #[must_use]
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            src: src.parse().expect("src address"),
            sport,
            dst: dst.parse().expect("dst address"),
            dport,
            l4: L4::Tcp { syn: true, ack: false },
            vlan: None,
            payload_len: 0,
        }
    }

    #[must_use]
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self { l4: L4::Udp, payload_len: 32, ..Self::tcp(src, sport, dst, dport) }
    }

    /// The same flow, a later segment (ACK set, no SYN).
    #[must_use]
    pub fn ack(self) -> Self {
        Self { l4: L4::Tcp { syn: false, ack: true }, payload_len: 100, ..self }
    }

    #[must_use]
    pub fn syn(self) -> Self {
        Self { l4: L4::Tcp { syn: true, ack: false }, payload_len: 0, ..self }
    }

    #[must_use]
    pub fn sport(self, sport: u16) -> Self {
        Self { sport, ..self }
    }

    #[must_use]
    pub fn vlan(self, id: u16) -> Self {
        Self { vlan: Some(id), ..self }
    }

    #[must_use]
    pub fn payload(self, len: usize) -> Self {
        Self { payload_len: len, ..self }
    }

    /// The Ethernet frame the client sends.
    #[must_use]
    pub fn frame(&self) -> Vec<u8> {
        let payload: Vec<u8> = (0..self.payload_len).map(|i| i as u8).collect();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                let ip = $ip;
                match self.l4 {
                    L4::Tcp { syn, ack } => {
                        let mut t = ip.tcp(self.sport, self.dport, 1000, 64240);
                        if syn {
                            t = t.syn();
                        }
                        if ack {
                            t = t.ack(1);
                        }
                        t.write(&mut out, &payload).expect("tcp frame");
                    }
                    L4::Udp => {
                        ip.udp(self.sport, self.dport).write(&mut out, &payload).expect("udp frame")
                    }
                }
            }};
        }
        match (self.vlan, self.src, self.dst) {
            (None, IpAddr::V4(s), IpAddr::V4(d)) => finish!(eth.ipv4(s.octets(), d.octets(), 61)),
            (None, IpAddr::V6(s), IpAddr::V6(d)) => finish!(eth.ipv6(s.octets(), d.octets(), 61)),
            (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => {
                let vlan = eth.single_vlan(VlanId::try_new(v).expect("vlan id"));
                finish!(vlan.ipv4(s.octets(), d.octets(), 61));
            }
            (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => {
                let vlan = eth.single_vlan(VlanId::try_new(v).expect("vlan id"));
                finish!(vlan.ipv6(s.octets(), d.octets(), 61));
            }
            _ => panic!("mixed address families in one flow"),
        }
        out
    }

    /// `frame()` addressed to `mac`: a balancer forwards only frames for its own MAC,
    /// so tests that run a live daemon's program address its interface.
    #[must_use]
    pub fn frame_to(&self, mac: [u8; 6]) -> Vec<u8> {
        let mut frame = self.frame();
        frame[..6].copy_from_slice(&mac);
        frame
    }

    /// The IP packet inside `frame()` (what a backend must receive intact).
    #[must_use]
    pub fn l3(&self) -> Vec<u8> {
        self.frame()[l2_len(self.vlan.is_some())..].to_vec()
    }

    /// The same 5-tuple as the reply direction (backend -> client, from the VIP).
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self { src: self.dst, sport: self.dport, dst: self.src, dport: self.sport, ..*self }
    }
}

#[must_use]
pub const fn l2_len(vlan: bool) -> usize {
    if vlan { 18 } else { 14 }
}

/// `frame` with its destination MAC replaced by `mac`.
#[must_use]
pub fn addressed_to(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac);
    frame
}

/// An Ethernet header in front of an IP packet.
#[must_use]
pub fn ethernet(ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An IPv4 header (checksum filled in) serialised in front of `payload`.
#[must_use]
pub fn ipv4_packet(mut h: Ipv4Header, payload: &[u8]) -> Vec<u8> {
    h.total_len = (h.header_len() + payload.len()) as u16;
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// An IPv6 header serialised in front of `payload`.
#[must_use]
pub fn ipv6_packet(mut h: Ipv6Header, payload: &[u8]) -> Vec<u8> {
    h.payload_length = payload.len() as u16;
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[must_use]
pub fn ipv4_header(src: &str, dst: &str, proto: IpNumber) -> Ipv4Header {
    let s: std::net::Ipv4Addr = src.parse().expect("v4 src");
    let d: std::net::Ipv4Addr = dst.parse().expect("v4 dst");
    Ipv4Header::new(0, 61, proto, s.octets(), d.octets()).expect("ipv4 header")
}

#[must_use]
pub fn ipv6_header(src: &str, dst: &str, next: IpNumber) -> Ipv6Header {
    let s: std::net::Ipv6Addr = src.parse().expect("v6 src");
    let d: std::net::Ipv6Addr = dst.parse().expect("v6 dst");
    Ipv6Header {
        traffic_class: 0,
        flow_label: etherparse::Ipv6FlowLabel::default(),
        payload_length: 0,
        next_header: next,
        hop_limit: 61,
        source: s.octets(),
        destination: d.octets(),
    }
}

/// The outer header pushed by ipip forwarding.
#[derive(Debug, Clone)]
pub enum Outer {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

/// A frame as xdp-lb sent it.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// (TPID, TCI) when tagged.
    pub vlan: Option<(u16, u16)>,
    pub ether_type: u16,
    /// Present when the frame carries an IPIP/IP6IP6/4in6/6in4 header.
    pub outer: Option<Outer>,
    /// The IP packet after any outer header.
    pub inner: Vec<u8>,
}

/// Decodes Ethernet, an optional VLAN tag, and an outer tunnel header when the IP
/// protocol says IPIP or IPv6.
#[must_use]
pub fn decode(frame: &[u8]) -> Decoded {
    assert!(frame.len() >= 14, "frame of {} bytes", frame.len());
    let mac = |i: usize| -> [u8; 6] { frame[i..i + 6].try_into().expect("6 bytes") };
    let mut ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let mut off = 14;
    let mut vlan = None;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        vlan = Some((ether_type, u16::from_be_bytes([frame[14], frame[15]])));
        ether_type = u16::from_be_bytes([frame[16], frame[17]]);
        off = 18;
    }
    let l3 = &frame[off..];
    let mut outer = None;
    let mut inner = l3.to_vec();
    if ether_type == ETH_P_IP {
        let (h, rest) = Ipv4Header::from_slice(l3).expect("ipv4 header");
        if h.protocol == IpNumber::IPV4 || h.protocol == IpNumber::IPV6 {
            inner = rest[..h.total_len as usize - h.header_len()].to_vec();
            outer = Some(Outer::V4(h));
        }
    } else if ether_type == ETH_P_IPV6 {
        let (h, rest) = Ipv6Header::from_slice(l3).expect("ipv6 header");
        if h.next_header == IpNumber::IPV4 || h.next_header == IpNumber::IPV6 {
            inner = rest[..h.payload_length as usize].to_vec();
            outer = Some(Outer::V6(h));
        }
    }
    Decoded { dst_mac: mac(0), src_mac: mac(6), vlan, ether_type, outer, inner }
}

/// An ICMP "fragmentation needed" / ICMPv6 "packet too big" as xdp-lb answers a
/// packet too big to encapsulate, decoded with etherparse and its checksums
/// recomputed independently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooBig {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The MTU the answer advertises.
    pub mtu: u32,
    /// The bytes quoted after the ICMP header.
    pub quote: Vec<u8>,
}

/// Decodes a too-big answer; `Err` says what is not as an answer must be
/// (wrong type, bad checksum, lengths that disagree).
pub fn decode_too_big(frame: &[u8]) -> Result<TooBig, String> {
    use etherparse::{
        Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, icmpv4::DestUnreachableHeader,
    };
    let d = decode(frame);
    let off = l2_len(d.vlan.is_some());
    let l3 = &frame[off..];
    let (src, dst, mtu, quote) = match d.ether_type {
        ETH_P_IP => {
            let (h, rest) = Ipv4Header::from_slice(l3).map_err(|e| format!("ipv4 header: {e}"))?;
            if h.protocol != IpNumber::ICMP {
                return Err(format!("protocol {:?}, not ICMP", h.protocol));
            }
            if h.header_checksum != h.calc_header_checksum() {
                return Err("IPv4 header checksum".into());
            }
            if usize::from(h.total_len) != l3.len() {
                return Err(format!(
                    "IPv4 total length {} in a packet of {}",
                    h.total_len,
                    l3.len()
                ));
            }
            let icmp = Icmpv4Slice::from_slice(rest).map_err(|e| format!("icmp: {e}"))?;
            let Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu,
            }) = icmp.icmp_type()
            else {
                return Err(format!("ICMP type {:?}", icmp.icmp_type()));
            };
            let want =
                etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
            if icmp.checksum() != want {
                return Err(format!("ICMP checksum {:#06x}, want {want:#06x}", icmp.checksum()));
            }
            (
                IpAddr::from(h.source),
                IpAddr::from(h.destination),
                u32::from(next_hop_mtu),
                icmp.payload().to_vec(),
            )
        }
        ETH_P_IPV6 => {
            let (h, rest) = Ipv6Header::from_slice(l3).map_err(|e| format!("ipv6 header: {e}"))?;
            if h.next_header != IpNumber::IPV6_ICMP {
                return Err(format!("next header {:?}, not ICMPv6", h.next_header));
            }
            if usize::from(h.payload_length) != rest.len() {
                return Err(format!(
                    "IPv6 payload length {} with {} bytes",
                    h.payload_length,
                    rest.len()
                ));
            }
            let icmp = Icmpv6Slice::from_slice(rest).map_err(|e| format!("icmpv6: {e}"))?;
            let Icmpv6Type::PacketTooBig { mtu } = icmp.icmp_type() else {
                return Err(format!("ICMPv6 type {:?}", icmp.icmp_type()));
            };
            let want = icmp
                .icmp_type()
                .calc_checksum(h.source, h.destination, icmp.payload())
                .map_err(|e| format!("icmpv6 checksum: {e}"))?;
            if icmp.checksum() != want {
                return Err(format!("ICMPv6 checksum {:#06x}, want {want:#06x}", icmp.checksum()));
            }
            (IpAddr::from(h.source), IpAddr::from(h.destination), mtu, icmp.payload().to_vec())
        }
        t => return Err(format!("ether type {t:#06x}")),
    };
    Ok(TooBig { dst_mac: d.dst_mac, src_mac: d.src_mac, vlan: d.vlan, src, dst, mtu, quote })
}
