//! `xdp-lb`: hashes every flow to a VIP to a healthy backend and forwards it.
//! Parse -> VIP lookup -> connection table / Maglev ring -> dsr or ipip -> XDP_TX.
#![no_std]
#![no_main]
// `flow_cache::bump`'s atomic add: BPF has no compare-and-swap, so core's
// atomics offer no `fetch_add` here; the intrinsic compiles to BPF's atomic add.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, for atomic_xadd (see above)")]

mod conns;
mod flow_cache;
mod forward;
mod icmp;
mod maps;
mod parse;
mod select;
mod too_big;
mod verdict;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Counter, CounterSet, Traffic, proto};

use crate::{
    maps::{BACKEND_STATS, BENCH_SCRIPT, CONFIG, SCRATCH, STATS, VIP_STATS},
    parse::Kind,
    select::{Lookup, Missed},
    verdict::{Verdict, bump},
};

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    balance(&ctx)
}

/// `xdp_lb` behind the benchmarks' frame restore (`lb_ebpf::timed`): loaded by
/// `cargo xtask bench xdp` only, to time many runs per test run.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_lb_timed(ctx: XdpContext) -> u32 {
    match lb_ebpf::timed::restore_from(&ctx, &BENCH_SCRIPT) {
        Ok(()) => balance(&ctx),
        _ => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let stats = unsafe { &mut *stats };
    match process(ctx, stats) {
        Ok(v) | Err(v) => v.record(stats),
    }
}

#[inline(always)]
fn process(ctx: &XdpContext, stats: &mut CounterSet) -> Result<Verdict, Verdict> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let s = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Verdict::Pass(Counter::PassNotVip))? };
    let ip = parse::ip(ctx, &mut s.flow)?;
    if !vip::maybe(&s.flow.dst) {
        return Err(Verdict::Pass(Counter::PassNotVip));
    }
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Verdict::Drop(Counter::DropNoConfig))?;
    // Another host's frame (a standby's bridge port floods its peer's traffic
    // here) is that host's to forward: forwarding it too sends one flow twice.
    if !parse::addressed_to_us(ctx, cfg) {
        return Err(Verdict::Pass(Counter::PassNotForUs));
    }
    let pkt = parse::packet(ctx, &ip, &mut s.flow).map_err(|v| vip::unless_malformed(s, v))?;
    if pkt.kind == Kind::Fragment {
        return Err(vip::fragment(s));
    }
    let not_vip = Verdict::Pass(if pkt.kind == Kind::IcmpError {
        Counter::PassIcmp
    } else {
        Counter::PassNotVip
    });
    // An established flow needs no VIP lookup: its backend entry names the VIP.
    let syn = pkt.kind == Kind::Flow { syn: true };
    let lookup = if syn { Lookup::Miss } else { select::established(&s.flow, &cfg.hash_seed) };
    let hit = matches!(lookup, Lookup::Hit(..));
    let (index, backend, handshakes) = if let Lookup::Hit(index, backend) = lookup {
        (index, backend, 0)
    } else {
        let vip = vip::lookup(s).ok_or(not_vip)?;
        if syn {
            bump(stats, Counter::ConnSyn);
            select::syn(&s.flow, vip, &cfg.hash_seed)?
        } else {
            let missed = match pkt.kind {
                Kind::IcmpError => Missed::IcmpError,
                _ if s.flow.proto == proto::TCP => Missed::TcpClient,
                _ => Missed::Other,
            };
            let (index, backend, counts) = select::first(&s.flow, vip, &cfg.hash_seed, missed)?;
            bump(
                stats,
                match lookup {
                    _ if counts & select::COMPLETED != 0 => Counter::ConnHandshake,
                    Lookup::Stale => Counter::ConnRehash,
                    _ => Counter::ConnMiss,
                },
            );
            (index, backend, counts)
        }
    };
    let verdict = forward::to_backend(ctx, &pkt, &s.flow, backend, cfg).inspect_err(|_| {
        // A hit not forwarded is counted here; a forwarded one in its backend's `hits`.
        if hit {
            bump(stats, Counter::ConnHit);
        }
    })?;
    // A hit is counted once, in its backend's `hits` (lb_common::stats); any
    // other packet in the VIP's and the backend's traffic, with its handshakes.
    if !hit && let Some(t) = VIP_STATS.get_ptr_mut(backend.vip) {
        account(unsafe { &mut *t }, frame_len);
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(index) {
        let b = unsafe { &mut *b };
        if hit {
            account(&mut b.hits, frame_len);
        } else {
            account(&mut b.traffic, frame_len);
            if handshakes != 0 {
                select::count(&mut b.handshakes, handshakes);
            }
        }
    }
    if pkt.kind == Kind::IcmpError {
        bump(stats, Counter::IcmpForwarded);
    }
    Ok(if hit { Verdict::TxHit } else { verdict })
}

#[inline(always)]
fn account(t: &mut Traffic, bytes: u64) {
    t.packets += 1;
    t.bytes += bytes;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
