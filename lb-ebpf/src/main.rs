//! `xdp-lb`: hashes every flow to a VIP to a healthy backend and forwards it.
//! Parse -> VIP lookup -> connection table / Maglev ring -> dsr or ipip -> XDP_TX.
#![no_std]
#![no_main]
// `verdict::opaque`: `is_val_statically_known`, and a register move in asm!,
// which LLVM cannot see through.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, for is_val_statically_known")]
#![feature(asm_experimental_arch)]

mod conns;
mod flow_table;
mod forward;
mod icmp;
mod maps;
mod parse;
mod select;
mod too_big;
mod verdict;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    Backend, Counter, FlowKey4, LbConfig, Traffic,
    hash::{flow_hash64, flow_label},
    proto,
};

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
    // The most common packet, read at once (`parse::front`): its table hit leaves
    // here; anything else goes on below (from the header the front read).
    let front = parse::front(ctx);
    let mut looked = None;
    if let Some(f) = &front {
        if !vip::maybe(&[f.ip.dst, 0, 0, 0]) {
            return counted(NOT_VIP.into(), &Also::default());
        }
        if let Some((pkt, key)) = parse::front_flow(ctx, f) {
            match front_hit(ctx, &pkt, &key) {
                Ok(action) => return action,
                Err(found) => looked = found,
            }
        }
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return counted(NOT_VIP.into(), &Also::default()) };
    let s = unsafe { &mut *s };
    // Traffic for no VIP leaves first, each exit counted on its own (straight code).
    let start = if let Some(f) = &front {
        // Read again from the front's header, not carried from the front: carried,
        // they were spilled before every hit (~5 ns a hit in `bench xdp`).
        if let Some((cfg, lookup)) = looked
            && let Some((pkt, key)) = parse::front_flow(ctx, f)
        {
            s.flow = key.flow();
            Start::Front(pkt, cfg, lookup)
        } else {
            // The front read this header and passed its address through the filter.
            Start::Ip(parse::front_ip(f, &mut s.flow))
        }
    } else {
        match parse::ip(ctx, &mut s.flow) {
            Ok(ip) if vip::maybe(&s.flow.dst) => Start::Ip(ip),
            Ok(_) => return counted(NOT_VIP.into(), &Also::default()),
            Err(v) => return counted(v.into(), &Also::default()),
        }
    };
    let mut also = Also::default();
    match process(ctx, s, start, &mut also) {
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

/// The common packet's table hit (`parse::front`), from the frame's own words: no
/// flow key built, no SCRATCH, one read of the flow's set. Any other packet is
/// `process`'s: with the config this found and checked the MAC against and what
/// the set held, when this read it (no established entry, a backend down); else
/// (no config, a frame not for us) whole, as if this had not looked.
#[inline(always)]
fn front_hit(
    ctx: &XdpContext,
    pkt: &parse::Packet,
    key: &FlowKey4,
) -> Result<u32, Option<(&'static LbConfig, Lookup)>> {
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(None)?;
    if !parse::addressed_to_us(ctx, cfg) {
        return Err(None);
    }
    let (index, backend) = match select::established4(key.words(), cfg) {
        Lookup::Hit(index, backend) => (index, backend),
        missed => return Err(Some((cfg, missed))),
    };
    let mut also = Also::default();
    Ok(match hit(ctx, pkt, || flow_label(&key.flow()), index, backend, cfg, &mut also) {
        Ok(()) => xdp_action::XDP_TX,
        Err(v) => counted(v.into(), &also),
    })
}

/// Where `process` starts.
enum Start {
    /// From the IP header `parse::ip` (or the front) found: the flow key holds its
    /// family and addresses.
    Ip(parse::Ip),
    /// From the packet `front_hit` read (its flow in the flow key), with the config
    /// it found and checked the MAC against, and what the flow's set held (no hit).
    Front(parse::Packet, &'static LbConfig, Lookup),
}

/// Forwards a table hit to its backend (`index`) and counts it once: in the
/// backend's `hits` (lb_common::stats), or, not forwarded, as a `ConnHit` in `also`.
#[inline(always)]
fn hit(
    ctx: &XdpContext,
    pkt: &parse::Packet,
    label: impl FnOnce() -> u32,
    index: u32,
    backend: &Backend,
    cfg: &LbConfig,
    also: &mut Also,
) -> Result<(), Verdict> {
    forward::to_backend(ctx, pkt, label, backend, cfg)
        .inspect_err(|_| also.conn(Counter::ConnHit))?;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(index) {
        account(unsafe { &mut (*b).hits }, pkt.frame_len());
    }
    Ok(())
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
    start: Start,
    also: &mut Also,
) -> Result<Verdict, Counted> {
    let (cfg, pkt, looked) = match start {
        Start::Front(pkt, cfg, lookup) => (cfg, pkt, Some(lookup)),
        Start::Ip(ip) => {
            let cfg =
                CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Verdict::Drop(Counter::DropNoConfig))?;
            // Another host's frame (a standby's bridge port floods its peer's traffic
            // here) is that host's to forward: forwarding it too sends one flow twice.
            if !parse::addressed_to_us(ctx, cfg) {
                return Err(Verdict::Pass(Counter::PassNotForUs).into());
            }
            let pkt =
                parse::packet(ctx, &ip, &mut s.flow).map_err(|v| vip::unless_malformed(s, v))?;
            (cfg, pkt, None)
        }
    };
    let frame_len = pkt.frame_len();
    if pkt.kind == Kind::Fragment {
        return Err(vip::fragment(s).into());
    }
    // An established flow needs no VIP lookup: its backend entry names the VIP.
    let syn = pkt.kind == Kind::Flow { syn: true };
    // The front's packet (never a SYN) had its set read there already.
    let lookup = match looked {
        Some(lookup) => lookup,
        None if syn => Lookup::Miss,
        None => select::established(&s.flow, cfg),
    };
    // A hit runs straight to its own end: sharing the tail with the other paths, it
    // carried their index, handshake counts and flags in registers and on the stack.
    if let Lookup::Hit(index, backend) = lookup {
        hit(ctx, &pkt, || flow_label(&s.flow), index, backend, cfg, also)?;
        if pkt.kind == Kind::IcmpError {
            also.icmp_forwarded = true;
        }
        return Ok(Verdict::TxHit);
    }
    let (index, backend, handshakes) = if syn {
        let vip = vip::lookup(s).ok_or(NOT_VIP)?;
        also.conn(Counter::ConnSyn);
        select::syn(&s.flow, vip, cfg)?
    } else {
        let missed = match pkt.kind {
            Kind::IcmpError => Missed::IcmpError,
            _ if s.flow.proto == proto::TCP => Missed::TcpClient,
            _ => Missed::Other,
        };
        let (index, backend, counts) = unlisted(s, cfg, missed)?;
        also.conn(match lookup {
            _ if counts & select::COMPLETED != 0 => Counter::ConnHandshake,
            Lookup::Stale => Counter::ConnRehash,
            _ => Counter::ConnMiss,
        });
        (index, backend, counts)
    };
    let verdict = forward::to_backend(ctx, &pkt, || flow_label(&s.flow), backend, cfg)?;
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
    cfg: &LbConfig,
    missed: Missed,
) -> Result<(u32, &'static Backend, u8), Counted> {
    if missed == Missed::TcpClient
        && let Some((index, backend)) = select::completed_in_set(&s.flow, cfg)
    {
        return Ok((index, backend, select::COMPLETED));
    }
    let h = flow_hash64(&s.flow, &cfg.hash_seed);
    if missed == Missed::TcpClient
        && let Some((index, backend)) = select::completed(&s.flow, h, cfg)
    {
        return Ok((index, backend, select::COMPLETED));
    }
    let not_vip =
        if missed == Missed::IcmpError { Verdict::Pass(Counter::PassIcmp) } else { NOT_VIP };
    let vip = vip::lookup(s).ok_or(not_vip)?;
    let (index, backend) = select::first(&s.flow, h, vip, cfg, missed)?;
    Ok((index, backend, 0))
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
