//! Every map of `xdp-lb`, one line of why each. Names come from `lb_common::map_names`
//! (the `#[map]` name must be a literal; a unit test in lb-userspace checks they agree).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, BackendStats, ConnValue, CounterSet, FlowKey, FlowSet, LbConfig, RingSlot, SynSlot,
    Traffic, VipKey, VipMeta,
    bench::Script,
    flow_table::sets_for,
    limits::{
        CONN_TABLE_SIZE, MAX_BACKENDS, MAX_VIP_ADDRS, MAX_VIPS, RING_ENTRIES, SYN_SLOTS,
        VIP_FILTER_WORDS, conn_table_v6_entries,
    },
    vip::VipAddrKey,
};

/// Forwarding mode, MTU, our MAC, tunnel sources: one entry.
#[map(name = "CONFIG")]
pub static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// (address, port, protocol) -> VIP index and active ring.
#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Addresses that hold a VIP: lets fragments (no ports) be recognised.
#[map(name = "VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIP_ADDRS, 0);

/// Bitmap of `vip::filter_bit` over every VIP address: rejects non-VIP traffic cheaply.
#[map(name = "VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Maglev rings, two per VIP; the controller fills them through mmap.
#[map(name = "RINGS")]
pub static RINGS: Array<RingSlot> = Array::with_max_entries(RING_ENTRIES, BPF_F_MMAPABLE);

/// (VIP, backend) pairs: address, next-hop MAC, state.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// IPv6 flow -> backend. One hash for all CPUs, an LRU list per CPU (as Katran)
/// so eviction needs no cross-CPU lock. The controller sizes it from
/// `conn_table_size_v6` (default `limits::conn_table_v6_entries`).
#[map(name = "CONNS")]
pub static CONNS: LruHashMap<FlowKey, ConnValue> =
    LruHashMap::with_max_entries(conn_table_v6_entries(CONN_TABLE_SIZE), BPF_F_NO_COMMON_LRU);

/// IPv4 flow -> backend: sets of four ways shared by every CPU, pending handshakes
/// among them (`lb_common::flow_table`). Mmapable only for its page-aligned
/// values: each 128-byte set is then two cache lines of its own. The controller
/// sizes it from `conn_table_size` (`flow_table::sets_for`).
#[map(name = "FLOWS4")]
pub static FLOWS4: Array<FlowSet> =
    Array::with_max_entries(sets_for(CONN_TABLE_SIZE), BPF_F_MMAPABLE);

/// The controller's clock (`lb_common::flow::conn_epoch`): `FLOWS4` stamps a way
/// with it when a packet uses it.
#[map(name = "CONN_EPOCH")]
pub static CONN_EPOCH: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// TCP SYNs waiting for their handshake's ACK, direct-mapped by flow hash: a new
/// connection enters `CONNS` only once its handshake completes, so spoofed SYNs
/// cannot evict established flows. Shared by all CPUs: the ACK may arrive on
/// another one than the SYN.
#[map(name = "SYNS")]
pub static SYNS: Array<SynSlot> = Array::with_max_entries(SYN_SLOTS, 0);

/// Every global counter, one entry per CPU.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<CounterSet> = PerCpuArray::with_max_entries(1, 0);

/// Packets and bytes per VIP index, but for table hits (`lb_common::stats`); the
/// entries from `MAX_VIPS` on are the controller's.
#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(lb_common::vip_stats::ENTRIES, 0);

/// Packets, bytes, handshakes and table hits per backend index.
#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-packet scratch: map keys built here, not on the 512-byte stack.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: when the next ICMP too-big answer is due, in `bpf_ktime_get_ns` time
/// (the answers' rate limit, `too_big::allow`).
#[map(name = "TOO_BIG_RATE")]
pub static TOO_BIG_RATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What `xdp_lb_timed` replays (benchmarks only, `lb_ebpf::timed`).
#[map(name = "BENCH_SCRIPT")]
pub static BENCH_SCRIPT: Array<Script> = Array::with_max_entries(1, 0);

#[repr(C)]
pub struct Scratch {
    pub flow: FlowKey,
    pub vip: VipKey,
    pub vip_addr: VipAddrKey,
}
