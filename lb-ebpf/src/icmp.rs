//! ICMP errors about VIP flows. A backend answers clients from the VIP, so a router's
//! "fragmentation needed" / "packet too big" comes back to the VIP: it must reach the
//! backend that owns the flow, or path-MTU discovery breaks. The quoted header is the
//! backend's packet (VIP -> client); reversed, it is the client's flow key.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FlowKey, proto};
use lb_ebpf::net::{
    ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HLEN, ICMPV6_PKT_TOOBIG, IPV4_HLEN, IPV6_HLEN,
    IcmpHdr, Ipv4Hdr, Ipv6Hdr, Ports, copy_words, ptr_at,
};

use crate::verdict::{MALFORMED, Verdict};

/// Any other ICMP, or a quote we cannot read, goes to the kernel untouched.
const NOT_OURS: Verdict = Verdict::Pass(Counter::PassIcmp);

/// An IPv4 "fragmentation needed" about a VIP flow: fills `flow` (whose `dst` is the
/// error's destination) with that flow's key. The ICMP header, at `off`, and the
/// quote must end within the packet (`end`).
#[inline(always)]
pub fn frag_needed(
    ctx: &XdpContext,
    off: usize,
    end: usize,
    flow: &mut FlowKey,
) -> Result<(), Verdict> {
    let icmp = header(ctx, off, end)?;
    if icmp.kind != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
        return Err(NOT_OURS);
    }
    let quote = off + ICMP_HLEN;
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, quote).map_err(|()| NOT_OURS)? };
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    // A quote of something else than a TCP or UDP packet names no VIP flow; nor
    // does one the VIP did not send (an error about a VIP's packet goes to it).
    if ip.version_ihl >> 4 != 4
        || ihl < IPV4_HLEN
        || !matches!(ip.proto, proto::TCP | proto::UDP)
        || ip.src != flow.dst[0]
    {
        return Err(NOT_OURS);
    }
    let ports = quoted_ports(ctx, quote + ihl, end)?;
    flow.src = [ip.dst, 0, 0, 0];
    flow.dst = [ip.src, 0, 0, 0];
    flow.ports = [ports.dst, ports.src];
    flow.proto = ip.proto;
    Ok(())
}

/// An ICMPv6 "packet too big" about a VIP flow: fills `flow` with that flow's key.
/// The ICMPv6 header, at `off`, and the quote must end within the packet (`end`).
#[inline(always)]
pub fn packet_too_big(
    ctx: &XdpContext,
    off: usize,
    end: usize,
    flow: &mut FlowKey,
) -> Result<(), Verdict> {
    let icmp = header(ctx, off, end)?;
    if icmp.kind != ICMPV6_PKT_TOOBIG {
        return Err(NOT_OURS);
    }
    let quote = off + ICMP_HLEN;
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, quote).map_err(|()| NOT_OURS)? };
    if u32::from_be(ip.version_tc_flow) >> 28 != 6
        || !matches!(ip.next_hdr, proto::TCP | proto::UDP)
        || !same_addr(&ip.src, &flow.dst)
    {
        return Err(NOT_OURS);
    }
    let ports = quoted_ports(ctx, quote + IPV6_HLEN, end)?;
    copy_words(&raw mut flow.src, &raw const ip.dst);
    copy_words(&raw mut flow.dst, &raw const ip.src);
    flow.ports = [ports.dst, ports.src];
    flow.proto = ip.next_hdr;
    Ok(())
}

#[inline(always)]
fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// The ICMP header at `off`: one cut short is a malformed packet.
#[inline(always)]
fn header(ctx: &XdpContext, off: usize, end: usize) -> Result<&IcmpHdr, Verdict> {
    if off + ICMP_HLEN > end {
        return Err(MALFORMED);
    }
    Ok(unsafe { &*ptr_at::<IcmpHdr>(ctx, off).map_err(|()| MALFORMED)? })
}

/// The ports of the quoted transport header at `off`: a quote cut before them
/// names no flow, and the ICMP goes to the kernel.
#[inline(always)]
fn quoted_ports(ctx: &XdpContext, off: usize, end: usize) -> Result<&Ports, Verdict> {
    if off + size_of::<Ports>() > end {
        return Err(NOT_OURS);
    }
    Ok(unsafe { &*ptr_at::<Ports>(ctx, off).map_err(|()| NOT_OURS)? })
}
