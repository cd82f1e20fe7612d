//! Header parsing: Ethernet (+ one VLAN tag), IPv4/IPv6, TCP/UDP. Fills the flow
//! key in the client -> VIP direction and says what kind of packet this is.
//!
//! In two steps, so traffic that is not for a VIP costs the least and leaves as it
//! came: [`ip`] reads only as far as the destination address; the caller checks it
//! against the VIP filter; [`packet`] then checks the headers strictly (IP version,
//! lengths against the frame, extension headers, the transport header inside the
//! packet) and reads the ports. A header that fails a check is `DropMalformed`,
//! which the caller turns into a pass unless the destination holds a VIP.
//!
//! The most common packet (untagged IPv4 without options, TCP or UDP) is read
//! first behind one bounds check ([`front`], [`front_flow`]), so an established
//! flow's table hit needs no flow key built; any other takes the two steps.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FlowKey, FlowKey4, LbConfig, family, limits::ACCEPT_MACS, proto};
use lb_ebpf::net::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_MF, IP_OFFSET, IPV4_HLEN,
    IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, NEXTHDR_AH, NEXTHDR_DEST, NEXTHDR_ESP, NEXTHDR_FRAGMENT,
    NEXTHDR_HOP, NEXTHDR_MOBILITY, NEXTHDR_ROUTING, TCP_FLAG_ACK, TCP_FLAG_SYN, TcpHdr, UdpHdr,
    VLAN_HLEN, VlanHdr, copy_words, frame_len, mac_eq, ptr_at,
};

use crate::{
    icmp,
    verdict::{MALFORMED, Verdict},
};

/// IPv6 hop-by-hop, routing and destination-options headers skipped in front of
/// the transport header, at most (a packet may carry hop-by-hop, destination
/// options, routing, destination options). A longer chain passes to the kernel.
const MAX_IPV6_EXT: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP; `syn` is a TCP SYN without ACK (a new connection).
    Flow { syn: bool },
    /// ICMP frag-needed / packet-too-big; the flow key is the quoted packet's flow, reversed.
    IcmpError,
    /// IPv4 or IPv6 fragment: no ports to read.
    Fragment,
}

/// Where the IP header is; its family and addresses are in the flow key.
pub struct Ip {
    /// Length of the L2 header (Ethernet, plus a VLAN tag).
    pub l3_off: usize,
    pub family: u8,
}

pub struct Packet {
    /// Length of the L2 header (Ethernet, plus a VLAN tag).
    pub l3_off: usize,
    /// Length of the whole IP packet, as its header says: checked to fit the frame
    /// (which may be longer: Ethernet padding).
    pub l3_len: u32,
    /// Bytes in the frame after the IP packet (Ethernet padding, or bytes behind a
    /// short total length): known here, so forwarding need not measure the frame again.
    pub trailer: u32,
    pub family: u8,
    pub kind: Kind,
}

impl Packet {
    /// The frame's length as it came, from what parse measured (no second read of the context).
    #[inline(always)]
    pub fn frame_len(&self) -> u64 {
        self.l3_off as u64 + u64::from(self.l3_len + self.trailer)
    }
}

/// Ethernet, a VLAN tag, the fixed IPv4 or IPv6 header: fills the flow key's
/// family and addresses. Anything that is not IP, or too short to say where it
/// goes, passes.
#[inline(always)]
pub fn ip(ctx: &XdpContext, flow: &mut FlowKey) -> Result<Ip, Verdict> {
    const SHORT: Verdict = Verdict::Pass(Counter::PassMalformed);
    let eth = ptr_at::<EthHdr>(ctx, 0).map_err(|()| SHORT)?;
    let mut ether_type = unsafe { (*eth).proto };
    let mut l3_off = ETH_HLEN;
    // An untagged IPv4 frame, the most common, tests one type.
    if ether_type != ETH_P_IP.to_be()
        && (ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be())
    {
        let vlan = ptr_at::<VlanHdr>(ctx, ETH_HLEN).map_err(|()| SHORT)?;
        ether_type = unsafe { (*vlan).proto };
        l3_off += VLAN_HLEN;
    }
    if ether_type == ETH_P_IP.to_be() {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3_off).map_err(|()| SHORT)? };
        Ok(v4(ip, l3_off, flow))
    } else if ether_type == ETH_P_IPV6.to_be() {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3_off).map_err(|()| SHORT)? };
        flow.family = family::V6;
        copy_words(&raw mut flow.src, &raw const ip.src);
        copy_words(&raw mut flow.dst, &raw const ip.dst);
        Ok(Ip { l3_off, family: family::V6 })
    } else {
        Err(Verdict::Pass(Counter::PassNotIp))
    }
}

#[inline(always)]
fn v4(ip: &Ipv4Hdr, l3_off: usize, flow: &mut FlowKey) -> Ip {
    flow.family = family::V4;
    flow.src = [ip.src, 0, 0, 0];
    flow.dst = [ip.dst, 0, 0, 0];
    Ip { l3_off, family: family::V4 }
}

/// What [`ip`] says of a packet [`front`] read, from the header it read.
#[inline(always)]
pub fn front_ip(f: &Front, flow: &mut FlowKey) -> Ip {
    v4(f.ip, ETH_HLEN, flow)
}

/// Whether the frame is addressed to this balancer: to the interface's MAC (one
/// compare, what forwarded traffic pays) or to one of `accept_macs`. Another
/// host's frame (flooded by a bridge, let in by a promiscuous NIC: a VRRP peer's),
/// broadcast and multicast are not. [`ip`] checked the Ethernet header is there.
#[inline(always)]
pub fn addressed_to_us(ctx: &XdpContext, cfg: &LbConfig) -> bool {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else { return false };
    let dst = unsafe { &(*eth).dst };
    if mac_eq(dst, &cfg.src_mac) {
        return true;
    }
    let mut i = 0;
    while i < ACCEPT_MACS {
        if mac_eq(dst, &cfg.accept_macs[i]) {
            return true;
        }
        i += 1;
    }
    false
}

/// The rest of a packet [`ip`] read: strict header checks, then the kind and the
/// flow key's protocol and ports.
#[inline(always)]
pub fn packet(ctx: &XdpContext, ip: &Ip, flow: &mut FlowKey) -> Result<Packet, Verdict> {
    // Bytes from the IP header to the frame's end (`ip` found the header in it).
    let room = frame_len(ctx).wrapping_sub(ip.l3_off);
    if ip.family == family::V4 {
        ipv4(ctx, ip.l3_off, room, flow)
    } else {
        ipv6(ctx, ip.l3_off, room, flow)
    }
}

#[inline(always)]
fn ipv4(
    ctx: &XdpContext,
    l3_off: usize,
    room: usize,
    flow: &mut FlowKey,
) -> Result<Packet, Verdict> {
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3_off).map_err(|()| MALFORMED)? };
    // A header without options (version 4, 20 bytes), the most common: one compare.
    let ihl = if ip.version_ihl == 0x45 {
        IPV4_HLEN
    } else {
        let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
        if ip.version_ihl >> 4 != 4 || ihl < IPV4_HLEN {
            return Err(MALFORMED);
        }
        ihl
    };
    let len = usize::from(u16::from_be(ip.tot_len));
    if !ipv4_len_fits(len, ihl, room) {
        return Err(MALFORMED);
    }
    flow.proto = ip.proto;
    let kind = if is_fragment(ip) {
        Kind::Fragment
    } else {
        let (l4_off, end) = (l3_off + ihl, l3_off + len);
        match ip.proto {
            proto::TCP | proto::UDP => transport(ctx, l4_off, end, ip.proto, flow)?,
            proto::ICMP => icmp::frag_needed(ctx, l4_off, end, flow).map(|()| Kind::IcmpError)?,
            _ => return Err(Verdict::Pass(Counter::PassNotVip)),
        }
    };
    Ok(Packet {
        l3_off,
        l3_len: len as u32,
        trailer: (room - len) as u32,
        family: family::V4,
        kind,
    })
}

#[inline(always)]
fn ipv6(
    ctx: &XdpContext,
    l3_off: usize,
    room: usize,
    flow: &mut FlowKey,
) -> Result<Packet, Verdict> {
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3_off).map_err(|()| MALFORMED)? };
    let len = usize::from(u16::from_be(ip.payload_len)) + IPV6_HLEN;
    // Payload length 0 is a jumbogram (or nothing at all): never VIP traffic.
    if u32::from_be(ip.version_tc_flow) >> 28 != 6 || len == IPV6_HLEN || len > room {
        return Err(MALFORMED);
    }
    let end = l3_off + len;
    let (mut next, mut off) = (ip.next_hdr, l3_off + IPV6_HLEN);
    let mut i = 0;
    while i < MAX_IPV6_EXT && matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST) {
        // Next header, then the length in 8-byte units, not counting the first 8.
        let ext = unsafe { &*ptr_at::<[u8; 2]>(ctx, off).map_err(|()| MALFORMED)? };
        next = ext[0];
        off += (usize::from(ext[1]) + 1) * 8;
        i += 1;
    }
    flow.proto = next;
    let kind = match next {
        proto::TCP | proto::UDP => transport(ctx, off, end, next, flow)?,
        proto::ICMPV6 => icmp::packet_too_big(ctx, off, end, flow).map(|()| Kind::IcmpError)?,
        NEXTHDR_FRAGMENT => Kind::Fragment,
        // A longer chain, or AH, ESP, mobility...: the kernel handles them.
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AH | NEXTHDR_ESP
        | NEXTHDR_MOBILITY => {
            return Err(Verdict::Pass(Counter::PassIpv6Ext));
        }
        _ => return Err(Verdict::Pass(Counter::PassNotVip)),
    };
    Ok(Packet {
        l3_off,
        l3_len: len as u32,
        trailer: (room - len) as u32,
        family: family::V6,
        kind,
    })
}

/// Reads the ports (and the SYN flag) of a TCP or UDP header at `off`; the header
/// must end within the packet (`end`), not in the frame's padding.
#[inline(always)]
pub fn transport(
    ctx: &XdpContext,
    off: usize,
    end: usize,
    l4: u8,
    flow: &mut FlowKey,
) -> Result<Kind, Verdict> {
    if l4 == proto::TCP {
        if off + size_of::<TcpHdr>() > end {
            return Err(MALFORMED);
        }
        let tcp = unsafe { &*ptr_at::<TcpHdr>(ctx, off).map_err(|()| MALFORMED)? };
        flow.ports = [tcp.ports.src, tcp.ports.dst];
        Ok(Kind::Flow { syn: is_syn(tcp) })
    } else {
        if off + size_of::<UdpHdr>() > end {
            return Err(MALFORMED);
        }
        let udp = unsafe { &*ptr_at::<UdpHdr>(ctx, off).map_err(|()| MALFORMED)? };
        flow.ports = [udp.ports.src, udp.ports.dst];
        Ok(Kind::Flow { syn: false })
    }
}

/// A total length under the header, or over the frame (`room`), would let the
/// packet claim a size it does not have (the MTU check and the outer header use it).
#[inline(always)]
const fn ipv4_len_fits(len: usize, ihl: usize, room: usize) -> bool {
    len >= ihl && len <= room
}

#[inline(always)]
fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0
}

/// A SYN without ACK: a new connection.
#[inline(always)]
fn is_syn(tcp: &TcpHdr) -> bool {
    tcp.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

/// What the front reads of the most common packet at once: untagged Ethernet, an
/// IPv4 header without options, and a TCP header's worth behind it (a UDP header
/// and its first payload bytes, or Ethernet padding).
pub struct Front {
    pub ip: &'static Ipv4Hdr,
    /// The TCP header, or the UDP header's ports (the same place in both).
    tcp: &'static TcpHdr,
}

/// Bytes the front reads behind its one bounds check.
const FRONT_LEN: usize = ETH_HLEN + IPV4_HLEN + size_of::<TcpHdr>();

/// The front of the most common packet, behind one bounds check: none for any
/// other (tagged, IPv6, IPv4 options, a frame too short), which takes
/// [`ip`] and [`packet`].
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "headers sit at even offsets; x86 BPF loads unaligned"
)]
pub fn front(ctx: &XdpContext) -> Option<Front> {
    let at = ptr_at::<[u8; FRONT_LEN]>(ctx, 0).ok()?.cast::<u8>();
    let (eth, ip, tcp) = unsafe {
        (
            &*at.cast::<EthHdr>(),
            &*at.add(ETH_HLEN).cast::<Ipv4Hdr>(),
            &*at.add(ETH_HLEN + IPV4_HLEN).cast::<TcpHdr>(),
        )
    };
    (eth.proto == ETH_P_IP.to_be() && ip.version_ihl == 0x45).then_some(Front { ip, tcp })
}

/// A front packet that [`packet`] would take as `Kind::Flow { syn: false }`: its
/// `Packet` and flow. None for anything else (a fragment, a SYN, not TCP or UDP,
/// a length that fails a check), which [`packet`] then reads. The checks are
/// `ipv4`'s and `transport`'s, on the same predicates.
#[inline(always)]
pub fn front_flow(ctx: &XdpContext, f: &Front) -> Option<(Packet, FlowKey4)> {
    let room = frame_len(ctx).wrapping_sub(ETH_HLEN);
    let len = usize::from(u16::from_be(f.ip.tot_len));
    let l4 = match f.ip.proto {
        proto::TCP if !is_syn(f.tcp) => size_of::<TcpHdr>(),
        proto::UDP => size_of::<UdpHdr>(),
        _ => return None,
    };
    // `ipv4`'s length check, with the transport header inside the packet (`transport`).
    if !ipv4_len_fits(len, IPV4_HLEN + l4, room) || is_fragment(f.ip) {
        return None;
    }
    let ports = &f.tcp.ports;
    let key = FlowKey4 {
        src: f.ip.src,
        dst: f.ip.dst,
        ports: [ports.src, ports.dst],
        proto: u32::from(f.ip.proto),
    };
    let pkt = Packet {
        l3_off: ETH_HLEN,
        l3_len: len as u32,
        trailer: (room - len) as u32,
        family: family::V4,
        kind: Kind::Flow { syn: false },
    };
    Some((pkt, key))
}
