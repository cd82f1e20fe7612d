//! `xdp-decap`, for backends: strips an outer IPv4 or IPv6 header (IPIP, 6in4,
//! IP6IP6, 4in6) addressed to this host and passes the inner packet up the stack.
//! Real backends can use it instead of ipip/ip6tnl devices; the lab must (its kernel
//! has no ipip module). Anything else passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::HashMap,
    programs::XdpContext,
};
use lb_common::{family, limits::MAX_VIP_ADDRS, proto, vip::VipAddrKey};
use lb_ebpf::net::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, IPV4_HLEN, IPV6_HLEN,
    Ipv4Hdr, Ipv6Hdr, VLAN_HLEN, copy_mac, copy_words, ptr_at,
};

/// Outer destinations to decapsulate (this host's tunnel endpoints).
#[map(name = "DECAP_ADDRS")]
static DECAP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIP_ADDRS, 0);

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    match try_decap(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference, as everywhere in the data path"
)]
#[expect(clippy::cast_possible_wrap, reason = "an outer header is at most 40 bytes")]
fn try_decap(ctx: &XdpContext) -> Result<u32, u32> {
    const PASS: u32 = xdp_action::XDP_PASS;
    let eth = unsafe { &*ptr_at::<EthHdr>(ctx, 0).map_err(|()| PASS)? };
    let (dst, src, mut ether_type) = (eth.dst, eth.src, eth.proto);
    let mut l3 = ETH_HLEN;
    let mut tag = [0u16; 2];
    if ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be() {
        let vlan = unsafe { &*ptr_at::<[u16; 2]>(ctx, ETH_HLEN).map_err(|()| PASS)? };
        tag = [ether_type, vlan[0]];
        ether_type = vlan[1];
        l3 += VLAN_HLEN;
    }
    let mut key = VipAddrKey::default();
    let (outer_len, inner) = if ether_type == ETH_P_IP.to_be() {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3).map_err(|()| PASS)? };
        key.family = family::V4;
        key.addr[0] = ip.dst;
        (usize::from(ip.version_ihl & 0x0f) * 4, ip.proto)
    } else if ether_type == ETH_P_IPV6.to_be() {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3).map_err(|()| PASS)? };
        key.family = family::V6;
        copy_words(&raw mut key.addr, &raw const ip.dst);
        (IPV6_HLEN, ip.next_hdr)
    } else {
        return Err(PASS);
    };
    let inner_type = match inner {
        proto::IPIP => ETH_P_IP,
        proto::IPV6 => ETH_P_IPV6,
        _ => return Err(PASS),
    };
    if outer_len < IPV4_HLEN || unsafe { DECAP_ADDRS.get(&key) }.is_none() {
        return Err(PASS);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(xdp_action::XDP_DROP);
    }
    let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0).map_err(|()| xdp_action::XDP_DROP)? };
    copy_mac(&mut eth.dst, &dst);
    copy_mac(&mut eth.src, &src);
    if l3 == ETH_HLEN {
        eth.proto = inner_type.to_be();
    } else {
        eth.proto = tag[0];
        let vlan = ptr_at::<[u16; 2]>(ctx, ETH_HLEN).map_err(|()| xdp_action::XDP_DROP)?;
        unsafe { vlan.write([tag[1], inner_type.to_be()]) };
    }
    Ok(PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
