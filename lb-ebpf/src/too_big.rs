//! Answering a packet that would exceed the MTU once encapsulated. The client gets
//! what a router on the path would send: ICMP "fragmentation needed" (IPv4) or
//! ICMPv6 "packet too big" carrying the MTU that fits, from the VIP, so its path-MTU
//! discovery shrinks the next segments. Without it a full-size segment over ipip
//! (1500 + 20 bytes) vanishes and the connection stalls.
//!
//! The frame becomes the answer in place: the head grows by the new IP and ICMP
//! headers, the offending packet's first `TOO_BIG_QUOTE` bytes stay as the quote,
//! the tail is cut, and the frame goes back out where it came from (XDP_TX).
//!
//! Not answered (counted `drop_too_big`): IPv4 with DF clear (the sender allowed
//! fragmentation, which XDP cannot do, and a VIP drops fragments anyway; RFC 1191
//! routers only answer DF packets), and ICMP errors (never an error about an error).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Counter, LbConfig, family,
    limits::{ENCAP_TTL, TOO_BIG_BURST, TOO_BIG_PER_SEC, TOO_BIG_QUOTE},
    proto,
};
use lb_ebpf::net::{
    ETH_P_IP, ETH_P_IPV6, EthHdr, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HLEN,
    ICMPV6_PKT_TOOBIG, IP_DF, IPTOS_PREC_INTERNETCONTROL, IPV4_HLEN, IPV6_HLEN, IcmpHdr, Ipv4Hdr,
    Ipv6Hdr, copy_mac, copy_words, csum_add, csum_fold, frame_len, ipv4_checksum, ptr_at,
};

use crate::{
    forward::push_l2,
    maps::TOO_BIG_RATE,
    parse::{Kind, Packet},
    verdict::Verdict,
};

/// The ICMP header and the quote: what the ICMP checksum covers, as 32-bit words.
type IcmpBody = [u32; (ICMP_HLEN + TOO_BIG_QUOTE) / 4];

const NOT_ANSWERED: Verdict = Verdict::Drop(Counter::DropTooBig);
/// A helper failed on a frame we already changed: it cannot go back to the kernel.
const FAILED: Verdict = Verdict::Drop(Counter::DropEncapFailed);

/// Turns the frame into the answer and returns the verdict: `Reply` when it goes
/// back to the client, a drop reason otherwise. `mtu` is the largest packet that
/// still fits once encapsulated.
#[inline(always)]
pub fn answer(ctx: &XdpContext, pkt: &Packet, cfg: &LbConfig, mtu: u32) -> Verdict {
    let frame = frame_len(ctx);
    if pkt.kind == Kind::IcmpError || frame < pkt.l3_off + TOO_BIG_QUOTE {
        return NOT_ANSWERED;
    }
    let result = if pkt.family == family::V4 {
        answer_v4(ctx, pkt, cfg, mtu)
    } else {
        answer_v6(ctx, pkt, cfg, mtu)
    };
    match result {
        Ok(()) => Verdict::Reply(Counter::IcmpTooBigSent),
        Err(v) => v,
    }
}

#[inline(always)]
fn answer_v4(ctx: &XdpContext, pkt: &Packet, cfg: &LbConfig, mtu: u32) -> Result<(), Verdict> {
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, pkt.l3_off).map_err(|()| NOT_ANSWERED)? };
    if u16::from_be(ip.frag_off) & IP_DF == 0 {
        return Err(NOT_ANSWERED);
    }
    let (client, vip) = (ip.src, ip.dst);
    let client_mac = sender(ctx)?;
    allow()?;
    let off = reshape(ctx, pkt.l3_off, IPV4_HLEN, &client_mac, cfg, ETH_P_IP)?;
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: IPTOS_PREC_INTERNETCONTROL,
        tot_len: ((IPV4_HLEN + ICMP_HLEN + TOO_BIG_QUOTE) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: ENCAP_TTL,
        proto: proto::ICMP,
        check: 0,
        src: vip,
        dst: client,
    };
    hdr.check = ipv4_checksum(&hdr);
    copy_words(ptr_at::<Ipv4Hdr>(ctx, off).map_err(|()| FAILED)?, &raw const hdr);
    // "Next-hop MTU" is the low 16 bits of the second word (RFC 1191).
    let rest = u32::from((mtu as u16).to_be()) << 16;
    let sum = icmp(ctx, off + IPV4_HLEN, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, rest, 0)?;
    set_icmp_check(ctx, off + IPV4_HLEN, sum)
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, pkt: &Packet, cfg: &LbConfig, mtu: u32) -> Result<(), Verdict> {
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, pkt.l3_off).map_err(|()| NOT_ANSWERED)? };
    let (mut client, mut vip) = ([0u32; 4], [0u32; 4]);
    copy_words(&raw mut client, &raw const ip.src);
    copy_words(&raw mut vip, &raw const ip.dst);
    let client_mac = sender(ctx)?;
    allow()?;
    let off = reshape(ctx, pkt.l3_off, IPV6_HLEN, &client_mac, cfg, ETH_P_IPV6)?;
    let len = (ICMP_HLEN + TOO_BIG_QUOTE) as u32;
    let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, off).map_err(|()| FAILED)? };
    ip.version_tc_flow = (6u32 << 28).to_be();
    ip.payload_len = (len as u16).to_be();
    ip.next_hdr = proto::ICMPV6;
    ip.hop_limit = ENCAP_TTL;
    copy_words(&raw mut ip.src, &raw const vip);
    copy_words(&raw mut ip.dst, &raw const client);
    // The pseudo-header (RFC 8200 8.1): both addresses, the length and the next
    // header as 32-bit big-endian words, summed like the rest.
    let addrs = ptr_at::<[u32; 8]>(ctx, off + 8).map_err(|()| FAILED)?;
    let seed = len.to_be().wrapping_add(u32::from(proto::ICMPV6).to_be());
    let pseudo = csum_add(addrs, seed);
    let sum = icmp(ctx, off + IPV6_HLEN, ICMPV6_PKT_TOOBIG, 0, mtu.to_be(), pseudo)?;
    set_icmp_check(ctx, off + IPV6_HLEN, sum)
}

/// The MAC the frame came from: where the answer goes.
#[inline(always)]
fn sender(ctx: &XdpContext) -> Result<[u8; 6], Verdict> {
    let eth = unsafe { &*ptr_at::<EthHdr>(ctx, 0).map_err(|()| NOT_ANSWERED)? };
    let mut mac = [0u8; 6];
    copy_mac(&mut mac, &eth.src);
    Ok(mac)
}

/// Makes room for `l3` + ICMP header in front of the packet (which becomes the
/// quote), addressed back to `to`, and cuts the frame after the quote. Returns
/// the offset of the new IP header.
#[inline(always)]
fn reshape(
    ctx: &XdpContext,
    l3_off: usize,
    l3: usize,
    to: &[u8; 6],
    cfg: &LbConfig,
    ether_type: u16,
) -> Result<usize, Verdict> {
    // Cut first: the frame is longer than the quote (checked by `answer`).
    let keep = l3_off + TOO_BIG_QUOTE;
    #[expect(clippy::cast_possible_wrap, reason = "a frame is at most a page")]
    let cut = -((frame_len(ctx) - keep) as i32);
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0 {
        return Err(FAILED);
    }
    push_l2(ctx, l3_off, l3 + ICMP_HLEN, to, &cfg.src_mac, ether_type)
        .map(|(_, off)| off)
        .map_err(|_| FAILED)
}

/// Writes the ICMP header at `off` with a zero checksum and returns the sum of it
/// and the quote, starting from `seed`.
#[inline(always)]
fn icmp(
    ctx: &XdpContext,
    off: usize,
    kind: u8,
    code: u8,
    rest: u32,
    seed: u32,
) -> Result<u32, Verdict> {
    let h = unsafe { &mut *ptr_at::<IcmpHdr>(ctx, off).map_err(|()| FAILED)? };
    h.kind = kind;
    h.code = code;
    h.check = 0;
    h.rest = rest;
    Ok(csum_add(ptr_at::<IcmpBody>(ctx, off).map_err(|()| FAILED)?, seed))
}

#[inline(always)]
fn set_icmp_check(ctx: &XdpContext, off: usize, sum: u32) -> Result<(), Verdict> {
    let h = unsafe { &mut *ptr_at::<IcmpHdr>(ctx, off).map_err(|()| FAILED)? };
    h.check = csum_fold(sum);
    Ok(())
}

/// The rate limit, per CPU (GCRA): an answer is due every `1 s / TOO_BIG_PER_SEC`,
/// and up to `TOO_BIG_BURST` may come early.
#[inline(always)]
fn allow() -> Result<(), Verdict> {
    const INTERVAL: u64 = 1_000_000_000 / TOO_BIG_PER_SEC;
    const LIMITED: Verdict = Verdict::Drop(Counter::DropTooBigRateLimited);
    let due = unsafe { &mut *TOO_BIG_RATE.get_ptr_mut(0).ok_or(LIMITED)? };
    let now = unsafe { bpf_ktime_get_ns() };
    let next = if *due > now { *due } else { now };
    if next - now > (TOO_BIG_BURST - 1) * INTERVAL {
        return Err(LIMITED);
    }
    *due = next + INTERVAL;
    Ok(())
}
