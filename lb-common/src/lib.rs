//! Everything the XDP programs and the controller must agree on: map names and
//! sizes, `#[repr(C)]` keys and values, counter indices, the flow hash.
//! Userspace never restates a layout; it imports it from here.
#![no_std]

pub mod backend;
pub mod bench;
pub mod config;
pub mod flow;
pub mod flow_table;
pub mod generator;
pub mod hash;
pub mod limits;
pub mod pinned;
pub mod stats;
pub mod vip;

pub use backend::{Backend, BackendState};
pub use config::{ForwardingMode, LbConfig};
pub use flow::{ConnValue, FlowKey, FlowKey4, SynSlot};
pub use flow_table::{FlowSet, FlowWay};
pub use stats::{
    BackendStats, Counter, CounterSet, DecapCounter, DecapCounterSet, Handshakes, Traffic,
    vip_stats,
};
pub use vip::{RingSlot, VipKey, VipMeta};

/// Address family tags stored in keys (not the AF_* values: those differ per OS).
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// IP protocol numbers used in keys.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ICMPV6: u8 = 58;
}

/// Names of the maps of the XDP objects; userspace opens them by these (the
/// `#[map]` names must be literals; `lb_userspace::objects` tests that they agree).
pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const VIPS: &str = "VIPS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const RINGS: &str = "RINGS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNS: &str = "CONNS";
    /// The connection table of IPv4 flows (`flow_table`: sets of `FlowWay`s under
    /// `flow::FlowKey4`'s words, shared by every CPU); `CONNS` holds IPv6's.
    pub const FLOWS4: &str = "FLOWS4";
    /// TCP SYNs waiting for their handshake's ACK (`flow::SynSlot`).
    pub const SYNS: &str = "SYNS";
    /// One u64: the controller's clock (`flow::conn_epoch`), by which `FLOWS4`
    /// tells the flows used longest ago.
    pub const CONN_EPOCH: &str = "CONN_EPOCH";
    pub const STATS: &str = "STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const SCRATCH: &str = "SCRATCH";
    /// Per CPU: when the next ICMP too-big answer is due (its rate limit).
    pub const TOO_BIG_RATE: &str = "TOO_BIG_RATE";
    /// In `xdp-lb` and `xdp-tools`: the `bench::Script` their timed programs replay
    /// (benchmarks only; never written by the controller).
    pub const BENCH_SCRIPT: &str = "BENCH_SCRIPT";
    /// Every map of the `xdp-lb` object.
    pub const XDP_LB: &[&str] = &[
        CONFIG,
        VIPS,
        VIP_ADDRS,
        VIP_FILTER,
        RINGS,
        BACKENDS,
        CONNS,
        FLOWS4,
        SYNS,
        CONN_EPOCH,
        STATS,
        VIP_STATS,
        BACKEND_STATS,
        SCRATCH,
        TOO_BIG_RATE,
        BENCH_SCRIPT,
    ];
    /// Pinned next to `XDP_LB`'s maps, created by the controller (not in the
    /// object): the layout version of the set (`pinned::LAYOUT_VERSION`), one u32.
    pub const LAYOUT: &str = "LAYOUT";
    /// Pinned next to `XDP_LB`'s maps, created by the controller: one u32 of
    /// `pinned::backend_flags` per `BACKENDS` slot.
    pub const BACKEND_FLAGS: &str = "BACKEND_FLAGS";
    /// In the `xdp-decap` object: outer destination addresses to strip (this host's).
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    /// In the `xdp-decap` object: outer source addresses accepted (the balancers').
    pub const DECAP_SOURCES: &str = "DECAP_SOURCES";
    /// In the `xdp-decap` object: inner destination addresses accepted (the VIPs).
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    /// In the `xdp-decap` object: its per-CPU `DecapCounterSet`.
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// Every map of the `xdp-decap` object.
    pub const XDP_DECAP: &[&str] = &[DECAP_ADDRS, DECAP_SOURCES, DECAP_VIPS, DECAP_STATS];
    /// In the `xdp-tools` object: the traffic generator's `generator::GenConfig`.
    pub const GEN_CONFIG: &str = "GEN_CONFIG";
    /// In the `xdp-tools` object: frames generated so far, per CPU.
    pub const GEN_SEQ: &str = "GEN_SEQ";
    /// In the `xdp-tools` object: frames and bytes the traffic sink counted.
    pub const SINK_STATS: &str = "SINK_STATS";
    /// In the `xdp-tools` object: the programs `xdp_tail_timed` hands a run to
    /// (`bench::Script::tail`): another balancer's, pinned outside this repository,
    /// and the empty ones of its harness (benchmarks only).
    pub const BENCH_TAIL: &str = "BENCH_TAIL";
}

/// An IPv4 or IPv6 address as four 32-bit words in network byte order
/// (IPv4 uses the first word, the rest is zero), so one key shape serves both.
pub type Addr = [u32; 4];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], made of integers and arrays of integers,
    // with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::ConnValue {}
    unsafe impl aya::Pod for super::SynSlot {}
    unsafe impl aya::Pod for super::FlowWay {}
    unsafe impl aya::Pod for super::FlowSet {}
    unsafe impl aya::Pod for super::LbConfig {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::BackendStats {}
    unsafe impl aya::Pod for super::CounterSet {}
    unsafe impl aya::Pod for super::DecapCounterSet {}
    unsafe impl aya::Pod for super::vip::VipAddrKey {}
    unsafe impl aya::Pod for super::RingSlot {}
    unsafe impl aya::Pod for super::generator::GenConfig {}
    unsafe impl aya::Pod for super::bench::Script {}
}
