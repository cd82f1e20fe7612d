//! `xdp-tools`: baselines and lab plumbing, built with the balancer so that
//! benchmarks compare like with like.
//! - `xdp_pass`: a pass-through for veth peers that receive XDP_TX'd frames (a
//!   veth drops redirected frames unless the receiver runs XDP).
//! - `xdp_tx`: returns XDP_TX and nothing else, the cost of the test harness.
//! - `xdp_mac_swap`: swaps MACs and returns XDP_TX, the floor for any forwarder.
//! - `xdp_count`: counts frames and bytes per CPU and drops them (traffic sink).
//! - `xdp_tx_timed`, `xdp_mac_swap_timed`: the same behind the benchmarks' frame
//!   restore (`lb_ebpf::timed`), to compare with `xdp_lb_timed`.
//! - `xdp_tx_timed_pushed`: `xdp_tx_timed` for cases whose program pushes a header.
//! - `xdp_gen`: a traffic generator for BPF_PROG_TEST_RUN in live-frames mode:
//!   writes the frame of the next flow (from a template) and returns XDP_TX.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Traffic,
    bench::Script,
    generator::{FRAME_LEN, GenConfig},
};
use lb_ebpf::{
    net::{copy_words, ptr_at},
    timed,
};

#[map(name = "SINK_STATS")]
static SINK_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(1, 0);

/// Offsets in the template (Ethernet, IPv4 without options, then TCP or UDP).
const IP_CHECK: usize = 24;
const SADDR_LOW: usize = 28;
const SPORT: usize = 34;
const TCP_CHECK: usize = 50;
const UDP_CHECK: usize = 40;

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Frames sent so far on this CPU: picks the flow of the next one.
#[map(name = "GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What the timed programs replay (`lb_ebpf::timed`).
#[map(name = "BENCH_SCRIPT")]
static BENCH_SCRIPT: Array<Script> = Array::with_max_entries(1, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_mac_swap(ctx: XdpContext) -> u32 {
    mac_swap(&ctx)
}

/// `xdp_tx` behind the frame restore: the harness of the timed benchmarks.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_tx_timed(ctx: XdpContext) -> u32 {
    match timed::restore_from(&ctx, &BENCH_SCRIPT) {
        Ok(()) => xdp_action::XDP_TX,
        _ => xdp_action::XDP_ABORTED,
    }
}

/// The harness of a timed case whose program pushes a header (ipip): the restore
/// then moves the head back before each of its runs, a helper call the program
/// under test does not make. This one makes the same call (a move by 0), so the
/// case's net cost leaves it out.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_tx_timed_pushed(ctx: XdpContext) -> u32 {
    match timed::restore_from(&ctx, &BENCH_SCRIPT) {
        Ok(()) if unsafe { bpf_xdp_adjust_head(ctx.ctx, 0) } == 0 => xdp_action::XDP_TX,
        _ => xdp_action::XDP_ABORTED,
    }
}

/// `xdp_mac_swap` behind the frame restore: the floor of the timed benchmarks.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_mac_swap_timed(ctx: XdpContext) -> u32 {
    match timed::restore_from(&ctx, &BENCH_SCRIPT) {
        Ok(()) => mac_swap(&ctx),
        _ => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn mac_swap(ctx: &XdpContext) -> u32 {
    let Ok(macs) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // Destination and source MACs as six 16-bit words: three loads and stores each way.
    let m = unsafe { &mut *macs };
    let dst = [m[0], m[1], m[2]];
    m[0] = m[3];
    m[1] = m[4];
    m[2] = m[5];
    m[3] = dst[0];
    m[4] = dst[1];
    m[5] = dst[2];
    xdp_action::XDP_TX
}

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    if let Some(t) = SINK_STATS.get_ptr_mut(0) {
        let t = unsafe { &mut *t };
        t.packets += 1;
        t.bytes += (ctx.data_end() - ctx.data()) as u64;
    }
    xdp_action::XDP_DROP
}

/// In live-frames mode the kernel hands the program pages it has sent before, and a
/// receiver may have rewritten them (MACs, TTL, NAT): so every frame is written whole
/// from the template, then given its flow's source port and address, with both
/// checksums updated incrementally (RFC 1624). Returns XDP_TX (out of the veth the
/// test run names as ingress).
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    match generate(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Result<(), ()> {
    let cfg = GEN_CONFIG.get(0).ok_or(())?;
    let seq = unsafe { &mut *GEN_SEQ.get_ptr_mut(0).ok_or(())? };
    let frame = ptr_at::<[u32; FRAME_LEN / 4]>(ctx, 0)?;
    copy_words(frame, &raw const cfg.frame);
    if cfg.flows <= 1 || cfg.ports == 0 {
        return Ok(());
    }
    let flow = (*seq % u64::from(cfg.flows)) as u32;
    *seq += 1;
    let (port_step, addr_step) = (flow % cfg.ports, flow / cfg.ports);
    let field = |off: usize| -> Result<*mut u16, ()> { ptr_at::<u16>(ctx, off) };
    let (sport, saddr) = (field(SPORT)?, field(SADDR_LOW)?);
    let ip_check = field(IP_CHECK)?;
    let l4_check = field(if cfg.tcp == 1 { TCP_CHECK } else { UDP_CHECK })?;
    // SAFETY: every field was bounds-checked by ptr_at.
    unsafe {
        let (old_port, old_addr) = (u16::from_be(*sport), u16::from_be(*saddr));
        let (new_port, new_addr) =
            (old_port.wrapping_add(port_step as u16), old_addr.wrapping_add(addr_step as u16));
        *sport = new_port.to_be();
        *saddr = new_addr.to_be();
        *ip_check = csum_replace(u16::from_be(*ip_check), &[(old_addr, new_addr)]).to_be();
        let l4 = u16::from_be(*l4_check);
        let mut new = csum_replace(l4, &[(old_addr, new_addr), (old_port, new_port)]);
        // UDP: a computed 0 is sent as 0xffff (0 means "no checksum").
        if cfg.tcp != 1 && new == 0 {
            new = 0xffff;
        }
        *l4_check = new.to_be();
    }
    Ok(())
}

/// Checksum `check` after 16-bit words `old` became `new` (RFC 1624, eqn. 3).
#[inline(always)]
fn csum_replace(check: u16, changes: &[(u16, u16)]) -> u16 {
    let mut sum = u32::from(!check);
    for &(old, new) in changes {
        sum += u32::from(!old) + u32::from(new);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
