//! Every map of `xdp-lb`, one line of why each. Names come from `lb_common::map_names`
//! (the `#[map]` name must be a literal; a unit test in lb-userspace checks they agree).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, BackendStats, ConnValue, CounterSet, FlowCacheSet, FlowKey, FlowKey4, LbConfig,
    RingSlot, SynSlot, Traffic, VipKey, VipMeta,
    bench::Script,
    limits::{
        CONN_TABLE_SIZE, FLOW_CACHE_CPUS, MAX_BACKENDS, MAX_VIP_ADDRS, MAX_VIPS, RING_ENTRIES,
        SYN_SLOTS, VIP_FILTER_WORDS, conn_table_v6_entries, flow_cache_entries,
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

/// IPv4 flow -> backend, as `CONNS` under a 16-byte key (the kernel hashes and
/// compares the whole key on every lookup; `conns.rs`).
#[map(name = "CONNS4")]
pub static CONNS4: LruHashMap<FlowKey4, ConnValue> =
    LruHashMap::with_max_entries(CONN_TABLE_SIZE, BPF_F_NO_COMMON_LRU);

/// Copies of IPv4 flows' `CONNS4` entries, a region of `FLOW_CACHE_SETS` for each
/// CPU, so a table hit reads one cache line (`flow_cache.rs`). An array, not a
/// per-CPU array: that one's lookup reads the element's pointer first, a second
/// cache miss. Mmapable only for its page-aligned values: each 64-byte set is then
/// one cache line. The loader sizes it for the possible CPUs.
#[map(name = "FLOW_CACHE")]
pub static FLOW_CACHE: Array<FlowCacheSet> =
    Array::with_max_entries(flow_cache_entries(FLOW_CACHE_CPUS), BPF_F_MMAPABLE);

/// The flow cache's epoch: bumped (atomically, by the data path and the
/// controller alike) after a change to a table entry another CPU may hold a copy of,
/// and the controller's clock (`lb_common::flow::conn_epoch`).
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
