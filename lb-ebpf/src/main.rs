//! `xdp-lb`: hashes every flow to a VIP to a healthy backend and forwards it.
//! Parse -> VIP lookup -> connection table / Maglev ring -> dsr or ipip -> XDP_TX.
#![no_std]
#![no_main]

mod forward;
mod icmp;
mod maps;
mod parse;
mod select;
mod too_big;
mod verdict;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Counter, CounterSet, Traffic, VipMeta, vip::filter_bit};
use lb_ebpf::net::copy_words;

use crate::{
    maps::{
        BACKEND_STATS, CONFIG, SCRATCH, STATS, Scratch, VIP_ADDRS, VIP_FILTER, VIP_STATS, VIPS,
    },
    parse::Kind,
    select::Lookup,
    verdict::{Verdict, bump},
};

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let stats = unsafe { &mut *stats };
    match process(&ctx, stats) {
        Ok(v) | Err(v) => v.record(stats),
    }
}

#[inline(always)]
fn process(ctx: &XdpContext, stats: &mut CounterSet) -> Result<Verdict, Verdict> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let s = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Verdict::Pass(Counter::PassNotVip))? };
    let pkt = parse::packet(ctx, &mut s.flow)?;
    if pkt.kind == Kind::Fragment {
        return Err(fragment(s));
    }
    let not_vip = Verdict::Pass(if pkt.kind == Kind::IcmpError {
        Counter::PassIcmp
    } else {
        Counter::PassNotVip
    });
    if !maybe_vip(&s.flow.dst) {
        return Err(not_vip);
    }
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Verdict::Drop(Counter::DropNoConfig))?;
    // An established flow needs no VIP lookup: its backend entry names the VIP.
    let syn = pkt.kind == Kind::Flow { syn: true };
    let lookup = if syn { Lookup::Miss } else { select::established(&s.flow) };
    let (index, backend) = if let Lookup::Hit(index, backend) = lookup {
        bump(stats, Counter::ConnHit);
        (index, backend)
    } else {
        let vip = lookup_vip(s).ok_or(not_vip)?;
        bump(
            stats,
            match lookup {
                _ if syn => Counter::ConnSyn,
                Lookup::Stale => Counter::ConnRehash,
                _ => Counter::ConnMiss,
            },
        );
        select::from_ring(&s.flow, vip, &cfg.hash_seed)?
    };
    let verdict = forward::to_backend(ctx, &pkt, &s.flow, backend, cfg)?;
    account(&VIP_STATS, backend.vip, frame_len);
    account(&BACKEND_STATS, index, frame_len);
    if pkt.kind == Kind::IcmpError {
        bump(stats, Counter::IcmpForwarded);
    }
    Ok(verdict)
}

/// True when `addr` may hold a VIP (false positives are fine: the lookups decide).
#[inline(always)]
fn maybe_vip(addr: &lb_common::Addr) -> bool {
    let bit = filter_bit(addr);
    VIP_FILTER.get(bit / 64).is_some_and(|w| w & (1 << (bit % 64)) != 0)
}

/// The VIP for the flow's (address, port, protocol), or the address's port-0 wildcard.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key stays in the scratch map; by value it would be copied to the stack"
)]
fn lookup_vip(s: &mut Scratch) -> Option<&'static VipMeta> {
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
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key stays in the scratch map; by value it would be copied to the stack"
)]
fn fragment(s: &mut Scratch) -> Verdict {
    copy_words(&raw mut s.vip_addr.addr, &raw const s.flow.dst);
    s.vip_addr.family = s.flow.family;
    if maybe_vip(&s.flow.dst) && unsafe { VIP_ADDRS.get(&s.vip_addr) }.is_some() {
        Verdict::Drop(Counter::DropFragment)
    } else {
        Verdict::Pass(Counter::PassNotVip)
    }
}

#[inline(always)]
fn account(map: &aya_ebpf::maps::PerCpuArray<Traffic>, index: u32, bytes: u64) {
    if let Some(t) = map.get_ptr_mut(index) {
        let t = unsafe { &mut *t };
        t.packets += 1;
        t.bytes += bytes;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
