//! `xdp-lb`: hashes every flow to a VIP to a healthy backend and forwards it.
//! Parse -> VIP lookup -> connection table / Maglev ring -> dsr or ipip -> XDP_TX.
#![no_std]
#![no_main]
// `flow_cache::bump`'s atomic add: BPF has no compare-and-swap, so core's
// atomics offer no `fetch_add` here; the intrinsic compiles to BPF's atomic add.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, for atomic_xadd (see above)")]
// `verdict::opaque`: a register move in asm!, which LLVM cannot see through.
#![feature(asm_experimental_arch)]

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
use lb_common::{Backend, Counter, Traffic, hash::Seed, proto};

use crate::{
    maps::{BACKEND_STATS, BENCH_SCRIPT, CONFIG, SCRATCH, STATS, Scratch, VIP_STATS},
    parse::Kind,
    select::{Lookup, Missed},
    verdict::{Also, Counted, Verdict},
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

/// Passed: for no VIP.
const NOT_VIP: Verdict = Verdict::Pass(Counter::PassNotVip);

#[inline(always)]
fn balance(ctx: &XdpContext) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return counted(NOT_VIP.into(), &Also::default()) };
    let s = unsafe { &mut *s };
    // Traffic for no VIP leaves first, each exit counted on its own (straight code).
    let ip = match parse::ip(ctx, &mut s.flow) {
        Ok(ip) if vip::maybe(&s.flow.dst) => ip,
        Ok(_) => return counted(NOT_VIP.into(), &Also::default()),
        Err(v) => return counted(v.into(), &Also::default()),
    };
    let mut also = Also::default();
    match process(ctx, s, &ip, &mut also) {
        // A forwarded table hit is counted in its backend's `hits` alone: no STATS lookup.
        Ok(Verdict::TxHit) if !also.icmp_forwarded => xdp_action::XDP_TX,
        // Forwarded: one of two verdicts, spelled out so that counting it needs no
        // match on the verdict (LLVM would otherwise merge this arm with the next).
        Ok(v) => {
            counted(if v == Verdict::TxHit { Verdict::TxHit } else { Verdict::Tx }.into(), &also)
        }
        Err(v) => counted(v, &also),
    }
}

/// Counts `v` and `also` in this CPU's `STATS`; returns the XDP action.
#[inline(always)]
fn counted(v: Counted, also: &Also) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let stats = unsafe { &mut *stats };
    also.record(stats);
    v.record(stats)
}

#[inline(always)]
fn process(
    ctx: &XdpContext,
    s: &mut Scratch,
    ip: &parse::Ip,
    also: &mut Also,
) -> Result<Verdict, Counted> {
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Verdict::Drop(Counter::DropNoConfig))?;
    // Another host's frame (a standby's bridge port floods its peer's traffic
    // here) is that host's to forward: forwarding it too sends one flow twice.
    if !parse::addressed_to_us(ctx, cfg) {
        return Err(Verdict::Pass(Counter::PassNotForUs).into());
    }
    let pkt = parse::packet(ctx, ip, &mut s.flow).map_err(|v| vip::unless_malformed(s, v))?;
    // The frame as it came, from what parse measured (no second read of the context).
    let frame_len = pkt.l3_off as u64 + u64::from(pkt.l3_len + pkt.trailer);
    if pkt.kind == Kind::Fragment {
        return Err(vip::fragment(s).into());
    }
    // An established flow needs no VIP lookup: its backend entry names the VIP.
    let syn = pkt.kind == Kind::Flow { syn: true };
    let lookup = if syn { Lookup::Miss } else { select::established(&s.flow, &cfg.hash_seed) };
    // A hit runs straight to its own end: sharing the tail with the other paths, it
    // carried their index, handshake counts and flags in registers and on the stack.
    if let Lookup::Hit(index, backend) = lookup {
        // A hit not forwarded is counted here; a forwarded one in its backend's `hits`.
        forward::to_backend(ctx, &pkt, &s.flow, backend, cfg)
            .inspect_err(|_| also.conn(Counter::ConnHit))?;
        // A hit is counted once, in its backend's `hits` (lb_common::stats).
        if let Some(b) = BACKEND_STATS.get_ptr_mut(index) {
            account(unsafe { &mut (*b).hits }, frame_len);
        }
        if pkt.kind == Kind::IcmpError {
            also.icmp_forwarded = true;
        }
        return Ok(Verdict::TxHit);
    }
    let (index, backend, handshakes) = if syn {
        let vip = vip::lookup(s).ok_or(NOT_VIP)?;
        also.conn(Counter::ConnSyn);
        select::syn(&s.flow, vip, &cfg.hash_seed)?
    } else {
        let missed = match pkt.kind {
            Kind::IcmpError => Missed::IcmpError,
            _ if s.flow.proto == proto::TCP => Missed::TcpClient,
            _ => Missed::Other,
        };
        let (index, backend, counts) = unlisted(s, &cfg.hash_seed, missed)?;
        also.conn(match lookup {
            _ if counts & select::COMPLETED != 0 => Counter::ConnHandshake,
            Lookup::Stale => Counter::ConnRehash,
            _ => Counter::ConnMiss,
        });
        (index, backend, counts)
    };
    let verdict = forward::to_backend(ctx, &pkt, &s.flow, backend, cfg)?;
    // Counted in the VIP's and the backend's traffic, with its handshakes.
    if let Some(t) = VIP_STATS.get_ptr_mut(backend.vip) {
        account(unsafe { &mut *t }, frame_len);
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(index) {
        let b = unsafe { &mut *b };
        account(&mut b.traffic, frame_len);
        if handshakes != 0 {
            select::count(&mut b.handshakes, handshakes);
        }
    }
    if pkt.kind == Kind::IcmpError {
        also.icmp_forwarded = true;
    }
    Ok(verdict)
}

/// A packet that is no SYN, of a flow the table does not hold live: its VIP's
/// backend (the SYN array's for a handshake's ACK, else the ring's) and what it
/// counts for it. Out of line, a BPF subprogram: inlined, its lookups and spills
/// shaped the registers of every table hit.
#[inline(never)]
fn unlisted(
    s: &mut Scratch,
    seed: &Seed,
    missed: Missed,
) -> Result<(u32, &'static Backend, u8), Counted> {
    let not_vip =
        if missed == Missed::IcmpError { Verdict::Pass(Counter::PassIcmp) } else { NOT_VIP };
    let vip = vip::lookup(s).ok_or(not_vip)?;
    Ok(select::first(&s.flow, vip, seed, missed)?)
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
