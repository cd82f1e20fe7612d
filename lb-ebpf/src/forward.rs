//! Sending the packet to its backend: `dsr` rewrites MACs; `ipip` pushes an outer
//! IPv4 or IPv6 header (IPIP, 6in4, IP6IP6, 4in6) chosen by the backend's family,
//! or answers the client with ICMP when the result would not fit the MTU.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Backend, Counter, ForwardingMode, LbConfig, family, limits::ENCAP_TTL, proto};
use lb_ebpf::net::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_ZLEN, EthHdr, IP_DF, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr,
    Ipv6Hdr, VLAN_HLEN, copy_mac, copy_words, ipv4_checksum, ptr_at, write_words,
};

use crate::{
    parse::Packet,
    too_big,
    verdict::{MALFORMED, Verdict},
};

/// `label`: the flow's outer IPv6 flow label (`hash::flow_label`), asked for
/// only by a tunnel to an IPv6 backend.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    label: impl FnOnce() -> u32,
    b: &Backend,
    cfg: &LbConfig,
) -> Result<Verdict, Verdict> {
    if cfg.mode == ForwardingMode::Dsr as u32 {
        let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0).map_err(|()| MALFORMED)? };
        copy_mac(&mut eth.dst, &b.mac);
        copy_mac(&mut eth.src, &cfg.src_mac);
        return Ok(Verdict::Tx);
    }
    let inner = if pkt.family == family::V4 { proto::IPIP } else { proto::IPV6 };
    let outer = if b.family == family::V4 { IPV4_HLEN } else { IPV6_HLEN } as u32;
    if pkt.l3_len + outer > cfg.mtu {
        return Err(too_big::answer(ctx, pkt, cfg, cfg.mtu.saturating_sub(outer)));
    }
    trim(ctx, pkt, outer, cfg.mtu)?;
    if b.family == family::V4 {
        encap_v4(ctx, pkt, b, cfg, inner)
    } else {
        encap_v6(ctx, pkt, label, b, cfg, inner)
    }
}

/// Cuts what follows the IP packet (bytes behind a short total length) so the tunnel
/// carries the packet alone. A shortest frame's Ethernet padding stays where it fits
/// the MTU: the outer length is exact either way, so behind the tunnel it is padding
/// again, and the cut (a helper call) was most of a padded TCP ACK's extra cost.
#[inline(always)]
#[expect(clippy::cast_possible_wrap, reason = "a frame is at most a page")]
fn trim(ctx: &XdpContext, pkt: &Packet, outer: u32, mtu: u32) -> Result<(), Verdict> {
    let padding = pkt.frame_len() <= ETH_ZLEN as u64 && pkt.l3_len + pkt.trailer + outer <= mtu;
    if pkt.trailer > 0
        && !padding
        && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(pkt.trailer as i32)) } != 0
    {
        return Err(Verdict::Drop(Counter::DropEncapFailed));
    }
    Ok(())
}

/// What `push_l2` bounds-checks once after growing the head: the L2 header with a
/// VLAN tag and the largest header pushed behind it (an IPv6 one). Every frame it
/// grows is longer: it held an IP header and at least 8 bytes behind it already.
const PUSHED: usize = ETH_HLEN + VLAN_HLEN + IPV6_HLEN;

/// Grows the head by `outer` bytes and writes the L2 header in front: the given
/// MACs, the VLAN tag if there was one, `ether_type`. Returns the frame's start,
/// checked for `PUSHED` bytes so the caller writes its header without a check of
/// its own, and the offset of the new L3 header (where the old one was).
#[inline(always)]
#[expect(clippy::cast_possible_wrap, reason = "at most 48 bytes: an outer header, or IP and ICMP")]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "headers sit at even offsets; x86 BPF stores unaligned"
)]
pub fn push_l2(
    ctx: &XdpContext,
    l3_off: usize,
    outer: usize,
    dst: &[u8; 6],
    src: &[u8; 6],
    ether_type: u16,
) -> Result<(*mut u8, usize), Verdict> {
    let tagged = l3_off != ETH_HLEN;
    // The VLAN tag (TPID, TCI) moves with the MACs.
    let tag = if tagged {
        unsafe { *ptr_at::<[u16; 2]>(ctx, 12).map_err(|()| MALFORMED)? }
    } else {
        [0; 2]
    };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer as i32)) } != 0 {
        return Err(Verdict::Drop(Counter::DropEncapFailed));
    }
    let l2 = ptr_at::<[u8; PUSHED]>(ctx, 0).map_err(|()| MALFORMED)?.cast::<u8>();
    let eth = unsafe { &mut *l2.cast::<EthHdr>() };
    copy_mac(&mut eth.dst, dst);
    copy_mac(&mut eth.src, src);
    if tagged {
        unsafe { l2.add(12).cast::<[u16; 3]>().write([tag[0], tag[1], ether_type.to_be()]) };
        Ok((l2, ETH_HLEN + VLAN_HLEN))
    } else {
        eth.proto = ether_type.to_be();
        Ok((l2, ETH_HLEN))
    }
}

#[inline(always)]
fn encap_v4(
    ctx: &XdpContext,
    pkt: &Packet,
    b: &Backend,
    cfg: &LbConfig,
    inner: u8,
) -> Result<Verdict, Verdict> {
    let (l2, off) = push_l2(ctx, pkt.l3_off, IPV4_HLEN, &b.mac, &cfg.src_mac, ETH_P_IP)?;
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((pkt.l3_len + IPV4_HLEN as u32) as u16).to_be(),
        id: 0,
        // The encapsulated packet is never above the MTU (checked): no fragmenting on the way.
        frag_off: IP_DF.to_be(),
        ttl: ENCAP_TTL,
        proto: inner,
        check: 0,
        src: cfg.tunnel_src_v4,
        dst: b.addr[0],
    };
    hdr.check = ipv4_checksum(&hdr);
    // Stored from registers: the header never goes through the stack.
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers; `push_l2` checked the frame
    // holds it at `off`.
    let words = unsafe { core::mem::transmute::<Ipv4Hdr, [u32; 5]>(hdr) };
    write_words(unsafe { l2.add(off) }.cast(), words);
    Ok(Verdict::Tx)
}

#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "headers sit at even offsets; x86 BPF stores unaligned"
)]
fn encap_v6(
    ctx: &XdpContext,
    pkt: &Packet,
    label: impl FnOnce() -> u32,
    b: &Backend,
    cfg: &LbConfig,
    inner: u8,
) -> Result<Verdict, Verdict> {
    let (l2, off) = push_l2(ctx, pkt.l3_off, IPV6_HLEN, &b.mac, &cfg.src_mac, ETH_P_IPV6)?;
    // Routers on the way spread tunnels by flow (RFC 6438).
    let label = label();
    let ip = unsafe { &mut *l2.add(off).cast::<Ipv6Hdr>() };
    ip.version_tc_flow = ((6 << 28) | label).to_be();
    ip.payload_len = (pkt.l3_len as u16).to_be();
    ip.next_hdr = inner;
    ip.hop_limit = ENCAP_TTL;
    copy_words(&raw mut ip.src, &raw const cfg.tunnel_src_v6);
    copy_words(&raw mut ip.dst, &raw const b.addr);
    Ok(Verdict::Tx)
}
