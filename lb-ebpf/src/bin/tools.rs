//! `xdp-tools`: baselines and lab plumbing, built with the balancer so that
//! benchmarks compare like with like.
//! - `xdp_pass`: a pass-through for veth peers that receive XDP_TX'd frames (a
//!   veth drops redirected frames unless the receiver runs XDP).
//! - `xdp_tx`: returns XDP_TX and nothing else, the cost of the test harness.
//! - `xdp_mac_swap`: swaps MACs and returns XDP_TX, the floor for any forwarder.
//! - `xdp_count`: counts frames and bytes per CPU and drops them (traffic sink).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::Traffic;
use lb_ebpf::net::ptr_at;

#[map(name = "SINK_STATS")]
static SINK_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn xdp_mac_swap(ctx: XdpContext) -> u32 {
    let Ok(macs) = ptr_at::<[u16; 6]>(&ctx, 0) else {
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
pub fn xdp_count(ctx: XdpContext) -> u32 {
    if let Some(t) = SINK_STATS.get_ptr_mut(0) {
        let t = unsafe { &mut *t };
        t.packets += 1;
        t.bytes += (ctx.data_end() - ctx.data()) as u64;
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
