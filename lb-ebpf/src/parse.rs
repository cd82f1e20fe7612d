//! Header parsing: Ethernet (+ one VLAN tag), IPv4/IPv6, TCP/UDP. Fills the flow
//! key in the client -> VIP direction and says what kind of packet this is.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FlowKey, family, proto};
use lb_ebpf::net::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_MF, IP_OFFSET, IPV4_HLEN,
    IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, NEXTHDR_FRAGMENT, TCP_FLAG_ACK, TCP_FLAG_SYN, TcpHdr, UdpHdr,
    VLAN_HLEN, VlanHdr, copy_words, ptr_at,
};

use crate::{
    icmp,
    verdict::{MALFORMED, Verdict},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP; `syn` is a TCP SYN without ACK (a new connection).
    Flow { syn: bool },
    /// ICMP frag-needed / packet-too-big; the flow key is the quoted packet's flow, reversed.
    IcmpError,
    /// IPv4 or IPv6 fragment: no ports to read.
    Fragment,
}

pub struct Packet {
    /// Length of the L2 header (Ethernet, plus a VLAN tag).
    pub l3_off: usize,
    /// Length of the whole IP packet, as its header says.
    pub l3_len: u32,
    pub family: u8,
    pub kind: Kind,
}

#[inline(always)]
pub fn packet(ctx: &XdpContext, flow: &mut FlowKey) -> Result<Packet, Verdict> {
    let eth = ptr_at::<EthHdr>(ctx, 0).map_err(|()| MALFORMED)?;
    let mut ether_type = unsafe { (*eth).proto };
    let mut l3_off = ETH_HLEN;
    if ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be() {
        let vlan = ptr_at::<VlanHdr>(ctx, ETH_HLEN).map_err(|()| MALFORMED)?;
        ether_type = unsafe { (*vlan).proto };
        l3_off += VLAN_HLEN;
    }
    if ether_type == ETH_P_IP.to_be() {
        ipv4(ctx, l3_off, flow)
    } else if ether_type == ETH_P_IPV6.to_be() {
        ipv6(ctx, l3_off, flow)
    } else {
        Err(Verdict::Pass(Counter::PassNotIp))
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3_off: usize, flow: &mut FlowKey) -> Result<Packet, Verdict> {
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3_off).map_err(|()| MALFORMED)? };
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return Err(MALFORMED);
    }
    flow.family = family::V4;
    flow.src = [ip.src, 0, 0, 0];
    flow.dst = [ip.dst, 0, 0, 0];
    flow.proto = ip.proto;
    let kind = if u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0 {
        Kind::Fragment
    } else {
        let l4_off = l3_off + ihl;
        match ip.proto {
            proto::TCP | proto::UDP => transport(ctx, l4_off, ip.proto, flow)?,
            proto::ICMP => icmp::frag_needed(ctx, l4_off, flow).map(|()| Kind::IcmpError)?,
            _ => return Err(Verdict::Pass(Counter::PassNotVip)),
        }
    };
    Ok(Packet { l3_off, l3_len: u32::from(u16::from_be(ip.tot_len)), family: family::V4, kind })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3_off: usize, flow: &mut FlowKey) -> Result<Packet, Verdict> {
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3_off).map_err(|()| MALFORMED)? };
    flow.family = family::V6;
    copy_words(&raw mut flow.src, &raw const ip.src);
    copy_words(&raw mut flow.dst, &raw const ip.dst);
    flow.proto = ip.next_hdr;
    let l4_off = l3_off + IPV6_HLEN;
    let kind = match ip.next_hdr {
        proto::TCP | proto::UDP => transport(ctx, l4_off, ip.next_hdr, flow)?,
        proto::ICMPV6 => icmp::packet_too_big(ctx, l4_off, flow).map(|()| Kind::IcmpError)?,
        NEXTHDR_FRAGMENT => Kind::Fragment,
        // Hop-by-hop, routing, destination options: not walked; the kernel handles them.
        _ => return Err(Verdict::Pass(Counter::PassIpv6Ext)),
    };
    let l3_len = u32::from(u16::from_be(ip.payload_len)) + IPV6_HLEN as u32;
    Ok(Packet { l3_off, l3_len, family: family::V6, kind })
}

/// Reads the ports (and the SYN flag) of a TCP or UDP header at `off`.
#[inline(always)]
pub fn transport(
    ctx: &XdpContext,
    off: usize,
    l4: u8,
    flow: &mut FlowKey,
) -> Result<Kind, Verdict> {
    if l4 == proto::TCP {
        let tcp = unsafe { &*ptr_at::<TcpHdr>(ctx, off).map_err(|()| MALFORMED)? };
        flow.ports = [tcp.ports.src, tcp.ports.dst];
        Ok(Kind::Flow { syn: tcp.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN })
    } else {
        let udp = unsafe { &*ptr_at::<UdpHdr>(ctx, off).map_err(|()| MALFORMED)? };
        flow.ports = [udp.ports.src, udp.ports.dst];
        Ok(Kind::Flow { syn: false })
    }
}
