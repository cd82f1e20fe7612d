//! Is this for a VIP: the address filter (one array read, what every packet pays),
//! the VIP map (address, port, protocol), and the VIP address set for packets
//! whose ports cannot be trusted (fragments, malformed headers).

use lb_common::{Addr, Counter, VipMeta, vip::filter_bit};
use lb_ebpf::net::copy_words;

use crate::{
    maps::{Scratch, VIP_ADDRS, VIP_FILTER, VIPS},
    verdict::{MALFORMED, Verdict},
};

/// True when `addr` may hold a VIP (false positives are fine: the lookups decide).
#[inline(always)]
pub fn maybe(addr: &Addr) -> bool {
    let bit = filter_bit(addr);
    VIP_FILTER.get(bit / 64).is_some_and(|w| w & (1 << (bit % 64)) != 0)
}

/// The VIP for the flow's (address, port, protocol), or the address's port-0 wildcard.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key stays in the scratch map; by value it would be copied to the stack"
)]
pub fn lookup(s: &mut Scratch) -> Option<&'static VipMeta> {
    copy_words(&raw mut s.vip.addr, &raw const s.flow.dst);
    s.vip.port = s.flow.ports[1];
    s.vip.proto = s.flow.proto;
    s.vip.family = s.flow.family;
    if let Some(meta) = unsafe { VIPS.get(&s.vip) } {
        return Some(meta);
    }
    s.vip.port = 0;
    unsafe { VIPS.get(&s.vip) }
}

/// Fragments carry no ports: one to a VIP address is dropped (as Katran and GLB do),
/// any other goes to the kernel.
#[inline(always)]
pub fn fragment(s: &mut Scratch) -> Verdict {
    if holds_vip(s) {
        Verdict::Drop(Counter::DropFragment)
    } else {
        Verdict::Pass(Counter::PassNotVip)
    }
}

/// A malformed packet is dropped only when it is addressed to a VIP: traffic for
/// anything else leaves untouched, whatever its headers (the kernel judges it).
#[inline(always)]
pub fn unless_malformed(s: &mut Scratch, v: Verdict) -> Verdict {
    match v {
        MALFORMED if !holds_vip(s) => Verdict::Pass(Counter::PassNotVip),
        v => v,
    }
}

/// True when the flow's destination address holds a VIP (any port).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key stays in the scratch map; by value it would be copied to the stack"
)]
fn holds_vip(s: &mut Scratch) -> bool {
    copy_words(&raw mut s.vip_addr.addr, &raw const s.flow.dst);
    s.vip_addr.family = s.flow.family;
    unsafe { VIP_ADDRS.get(&s.vip_addr) }.is_some()
}
