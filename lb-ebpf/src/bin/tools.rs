//! `xdp-tools`: baselines and lab plumbing, built with the balancer so that
//! benchmarks compare like with like.
//! - `xdp_pass`: a pass-through for veth peers that receive XDP_TX'd frames (a
//!   veth drops redirected frames unless the receiver runs XDP).
//! - `xdp_tx`: returns XDP_TX and nothing else, the cost of the test harness.
//! - `xdp_mac_swap`: swaps MACs and returns XDP_TX, the floor for any forwarder.
//! - `xdp_ipip_floor`: swaps MACs, pushes an outer IPv4 header (IPIP, fixed
//!   addresses) and returns XDP_TX: the floor for any IPIP forwarder. No parse
//!   beyond the frame's length, no map read; the same header writes as xdp_lb's.
//! - `xdp_count`: counts frames and bytes per CPU and drops them (traffic sink).
//! - `xdp_tx_timed`, `xdp_mac_swap_timed`, `xdp_ipip_floor_timed`: the same behind
//!   the benchmarks' frame restore (`lb_ebpf::timed`), to compare with `xdp_lb_timed`.
//! - `xdp_tx_timed_pushed`: `xdp_tx_timed` for cases whose program pushes a header.
//! - `xdp_tail_timed`: the frame restore, then a tail call to another program
//!   (`BENCH_TAIL`): another balancer's, pinned outside this repository, timed by
//!   the same method as `xdp_lb_timed`; its harness is itself in front of `xdp_tx`
//!   or `xdp_tx_pushed` (`xdp_tx` making `xdp_tx_timed_pushed`'s head move).
//! - `xdp_gen`: a traffic generator for BPF_PROG_TEST_RUN in live-frames mode:
//!   writes the frame of the next flow (from a template) and returns XDP_TX.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    Traffic,
    bench::{IPIP_FLOOR_DST, IPIP_FLOOR_SRC, Script},
    generator::{FRAME_LEN, GenConfig},
    limits::ENCAP_TTL,
    proto,
};
use lb_ebpf::{
    net::{
        ETH_HLEN, ETH_P_IP, EthHdr, IP_DF, IPV4_HLEN, Ipv4Hdr, copy_mac, copy_words, frame_len,
        ipv4_checksum, ptr_at, write_words,
    },
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

/// What `xdp_tail_timed` hands a run to, by `Script::tail` (the bench fills it).
#[map(name = "BENCH_TAIL")]
static BENCH_TAIL: ProgramArray = ProgramArray::with_max_entries(8, 0);

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

/// Another program behind the frame restore: the restore, then a tail call to the
/// slot of `BENCH_TAIL` the script names. Its harness is itself with an empty
/// program in that slot (`xdp_tx`, or `xdp_tx_pushed` for a program that pushes a
/// header), so the tail call's cost is in both and nets out.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_tail_timed(ctx: XdpContext) -> u32 {
    if timed::restore_from(&ctx, &BENCH_SCRIPT).is_ok()
        && let Some(s) = BENCH_SCRIPT.get(0)
    {
        // SAFETY: an XDP context and a program array of XDP programs; on success the
        // call does not return.
        unsafe { BENCH_TAIL.tail_call(&ctx, s.tail) };
    }
    xdp_action::XDP_ABORTED
}

/// `xdp_tx` that makes the head move `xdp_tx_timed_pushed` makes: the callee of
/// `xdp_tail_timed`'s harness for a program that pushes a header.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_tx_pushed(ctx: XdpContext) -> u32 {
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 0) } == 0 {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_ABORTED
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
pub fn xdp_ipip_floor(ctx: XdpContext) -> u32 {
    ipip_floor(&ctx)
}

/// `xdp_ipip_floor` behind the frame restore: the ipip floor of the timed benchmarks
/// (paired with `xdp_tx_timed_pushed`, as xdp_lb's ipip cases are).
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "an #[xdp] entry point owns its context")]
pub fn xdp_ipip_floor_timed(ctx: XdpContext) -> u32 {
    match timed::restore_from(&ctx, &BENCH_SCRIPT) {
        Ok(()) => ipip_floor(&ctx),
        _ => xdp_action::XDP_ABORTED,
    }
}

/// The frame behind an Ethernet header and an outer IPv4 header, sent back out with
/// the MACs swapped: one `bpf_xdp_adjust_head` and the header writes every IPIP
/// forwarder makes. The frame after the Ethernet header is taken as the packet (no
/// parse): padding, if any, travels in the tunnel (xdp_lb keeps a shortest frame's
/// padding behind its outer packet).
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "a frame is at most a page")]
#[expect(clippy::cast_possible_wrap, reason = "an IPv4 header is 20 bytes")]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "headers sit at even offsets; x86 BPF stores unaligned"
)]
fn ipip_floor(ctx: &XdpContext) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    let (mut dst, mut src) = ([0u8; 6], [0u8; 6]);
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        copy_mac(&mut dst, &(*eth).src);
        copy_mac(&mut src, &(*eth).dst);
    }
    let inner = frame_len(ctx) - ETH_HLEN;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let Ok(l2) = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN]>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    let l2 = l2.cast::<u8>();
    // SAFETY: ptr_at checked the Ethernet and IPv4 headers' bytes.
    let eth = unsafe { &mut *l2.cast::<EthHdr>() };
    copy_mac(&mut eth.dst, &dst);
    copy_mac(&mut eth.src, &src);
    eth.proto = ETH_P_IP.to_be();
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((inner + IPV4_HLEN) as u16).to_be(),
        id: 0,
        frag_off: IP_DF.to_be(),
        ttl: ENCAP_TTL,
        proto: proto::IPIP,
        check: 0,
        src: u32::from_ne_bytes(IPIP_FLOOR_SRC),
        dst: u32::from_ne_bytes(IPIP_FLOOR_DST),
    };
    hdr.check = ipv4_checksum(&hdr);
    // As xdp_lb's encap_v4 stores it: from registers, never through the stack.
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers.
    let words = unsafe { core::mem::transmute::<Ipv4Hdr, [u32; 5]>(hdr) };
    write_words(unsafe { l2.add(ETH_HLEN) }.cast(), words);
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
