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

/// An IPv4 "fragmentation needed" about a VIP flow: fills `flow` with that flow's key.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, off: usize, flow: &mut FlowKey) -> Result<(), Verdict> {
    let icmp = unsafe { &*ptr_at::<IcmpHdr>(ctx, off).map_err(|()| MALFORMED)? };
    if icmp.kind != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
        return Err(NOT_OURS);
    }
    let quote = off + ICMP_HLEN;
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, quote).map_err(|()| NOT_OURS)? };
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return Err(NOT_OURS);
    }
    let ports = unsafe { &*ptr_at::<Ports>(ctx, quote + ihl).map_err(|()| NOT_OURS)? };
    flow.src = [ip.dst, 0, 0, 0];
    flow.dst = [ip.src, 0, 0, 0];
    flow.ports = [ports.dst, ports.src];
    flow.proto = ip.proto;
    Ok(())
}

/// An ICMPv6 "packet too big" about a VIP flow: fills `flow` with that flow's key.
#[inline(always)]
pub fn packet_too_big(ctx: &XdpContext, off: usize, flow: &mut FlowKey) -> Result<(), Verdict> {
    let icmp = unsafe { &*ptr_at::<IcmpHdr>(ctx, off).map_err(|()| MALFORMED)? };
    if icmp.kind != ICMPV6_PKT_TOOBIG {
        return Err(NOT_OURS);
    }
    let quote = off + ICMP_HLEN;
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, quote).map_err(|()| NOT_OURS)? };
    if ip.next_hdr != proto::TCP && ip.next_hdr != proto::UDP {
        return Err(NOT_OURS);
    }
    let ports = unsafe { &*ptr_at::<Ports>(ctx, quote + IPV6_HLEN).map_err(|()| NOT_OURS)? };
    copy_words(&raw mut flow.src, &raw const ip.dst);
    copy_words(&raw mut flow.dst, &raw const ip.src);
    flow.ports = [ports.dst, ports.src];
    flow.proto = ip.next_hdr;
    Ok(())
}
