//! `xdp-decap`, for backends: strips an outer IPv4 or IPv6 header (IPIP, 6in4,
//! IP6IP6, 4in6) addressed to this host and passes the inner packet up the stack.
//! Real backends can use it instead of ipip/ip6tnl devices; the lab must (its kernel
//! has no ipip module).
//!
//! Only what a balancer sends is stripped: the outer source must be a balancer's
//! tunnel address and the inner destination a VIP. Any other tunnel packet to this
//! host is counted and dropped, so a host that can reach a WAF node cannot slip in
//! packets with a forged client address past IP-based WAF rules. Anything that is
//! not a tunnel packet to this host passes untouched. Every frame is counted once
//! (`lb_common::DecapCounter`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    DecapCounter, DecapCounterSet, family, limits::MAX_DECAP_ADDRS, proto, vip::VipAddrKey,
};
use lb_ebpf::net::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_MF, IP_OFFSET, IPV4_HLEN,
    IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, VLAN_HLEN, copy_mac, copy_words, ptr_at,
};

/// Outer destinations to decapsulate (this host's tunnel endpoints).
#[map(name = "DECAP_ADDRS")]
static DECAP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Outer sources accepted: the balancers' tunnel addresses.
#[map(name = "DECAP_SOURCES")]
static DECAP_SOURCES: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Inner destinations accepted: the VIPs.
#[map(name = "DECAP_VIPS")]
static DECAP_VIPS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// What became of every frame, per CPU.
#[map(name = "DECAP_STATS")]
static DECAP_STATS: PerCpuArray<DecapCounterSet> = PerCpuArray::with_max_entries(1, 0);

type Outcome = Result<DecapCounter, DecapCounter>;

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    let (Ok(c) | Err(c)) = try_decap(&ctx);
    if let Some(stats) = DECAP_STATS.get_ptr_mut(0)
        && let Some(v) = unsafe { &mut *stats }.values.get_mut(c as usize)
    {
        *v += 1;
    }
    match c {
        DecapCounter::PassNotTunnel | DecapCounter::Decapsulated => xdp_action::XDP_PASS,
        DecapCounter::DropSource | DecapCounter::DropNotVip | DecapCounter::DropMalformed => {
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference, as everywhere in the data path"
)]
#[expect(clippy::cast_possible_wrap, reason = "an outer header is at most 40 bytes")]
fn try_decap(ctx: &XdpContext) -> Outcome {
    const NOT_OURS: DecapCounter = DecapCounter::PassNotTunnel;
    const MALFORMED: DecapCounter = DecapCounter::DropMalformed;
    let eth = unsafe { &*ptr_at::<EthHdr>(ctx, 0).map_err(|()| NOT_OURS)? };
    let (dst, src, mut ether_type) = (eth.dst, eth.src, eth.proto);
    let mut l3 = ETH_HLEN;
    let mut tag = [0u16; 2];
    if ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be() {
        let vlan = unsafe { &*ptr_at::<[u16; 2]>(ctx, ETH_HLEN).map_err(|()| NOT_OURS)? };
        tag = [ether_type, vlan[0]];
        ether_type = vlan[1];
        l3 += VLAN_HLEN;
    }
    // Outer header: its length, the inner protocol, whether it is unusable (a
    // fragment, a wrong version or length), and the addresses as keys.
    let (mut to, mut from) = (VipAddrKey::default(), VipAddrKey::default());
    let (outer_len, inner, unusable) = if ether_type == ETH_P_IP.to_be() {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3).map_err(|()| NOT_OURS)? };
        (to.family, from.family) = (family::V4, family::V4);
        (to.addr[0], from.addr[0]) = (ip.dst, ip.src);
        let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
        let fragment = u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0;
        (ihl, ip.proto, fragment || ihl < IPV4_HLEN || ip.version_ihl >> 4 != 4)
    } else if ether_type == ETH_P_IPV6.to_be() {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3).map_err(|()| NOT_OURS)? };
        (to.family, from.family) = (family::V6, family::V6);
        copy_words(&raw mut to.addr, &raw const ip.dst);
        copy_words(&raw mut from.addr, &raw const ip.src);
        (IPV6_HLEN, ip.next_hdr, u32::from_be(ip.version_tc_flow) >> 28 != 6)
    } else {
        return Err(NOT_OURS);
    };
    let inner_type = match inner {
        proto::IPIP => ETH_P_IP,
        proto::IPV6 => ETH_P_IPV6,
        _ => return Err(NOT_OURS),
    };
    if unsafe { DECAP_ADDRS.get(&to) }.is_none() {
        return Err(NOT_OURS);
    }
    // A tunnel packet to us: from here on it is stripped or dropped.
    if unsafe { DECAP_SOURCES.get(&from) }.is_none() {
        return Err(DecapCounter::DropSource);
    }
    if unusable {
        return Err(MALFORMED);
    }
    let vip = inner_destination(ctx, l3 + outer_len, inner_type)?;
    if unsafe { DECAP_VIPS.get(&vip) }.is_none() {
        return Err(DecapCounter::DropNotVip);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(MALFORMED);
    }
    let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0).map_err(|()| MALFORMED)? };
    copy_mac(&mut eth.dst, &dst);
    copy_mac(&mut eth.src, &src);
    if l3 == ETH_HLEN {
        eth.proto = inner_type.to_be();
    } else {
        eth.proto = tag[0];
        let vlan = ptr_at::<[u16; 2]>(ctx, ETH_HLEN).map_err(|()| MALFORMED)?;
        unsafe { vlan.write([tag[1], inner_type.to_be()]) };
    }
    Ok(DecapCounter::Decapsulated)
}

/// The inner packet's destination, as a key of DECAP_VIPS; its header must be whole
/// and of the version the outer header announced.
#[inline(always)]
fn inner_destination(
    ctx: &XdpContext,
    off: usize,
    ether_type: u16,
) -> Result<VipAddrKey, DecapCounter> {
    const MALFORMED: DecapCounter = DecapCounter::DropMalformed;
    let mut key = VipAddrKey::default();
    if ether_type == ETH_P_IP {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, off).map_err(|()| MALFORMED)? };
        if ip.version_ihl >> 4 != 4 || ip.version_ihl & 0x0f < 5 {
            return Err(MALFORMED);
        }
        key.family = family::V4;
        key.addr[0] = ip.dst;
    } else {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, off).map_err(|()| MALFORMED)? };
        if u32::from_be(ip.version_tc_flow) >> 28 != 6 {
            return Err(MALFORMED);
        }
        key.family = family::V6;
        copy_words(&raw mut key.addr, &raw const ip.dst);
    }
    Ok(key)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
