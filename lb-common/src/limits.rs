//! Map sizes. The kernel indexes with these; the controller allocates within them.

/// Slots in one Maglev ring: a prime > 100 x backends per VIP keeps imbalance <= 1%
/// (as in the Maglev paper and Katran).
pub const RING_SIZE: u32 = 65_537;
/// VIPs (address, port, protocol) one balancer serves.
pub const MAX_VIPS: u32 = 32;
/// Each VIP owns two rings: the writer fills the idle one, then flips `VipMeta::ring`,
/// so a packet never sees a half-written table.
pub const RINGS_PER_VIP: u32 = 2;
/// Entries in the ring map: every ring of every VIP, back to back.
pub const RING_ENTRIES: u32 = MAX_VIPS * RINGS_PER_VIP * RING_SIZE;
/// (VIP, backend) pairs. A ring slot holding an index >= this means "no backend".
pub const MAX_BACKENDS: u32 = 4096;
/// Ring slot value for a VIP with no usable backend.
pub const NO_BACKEND: u32 = u32::MAX;
/// Default connection-table size: entries of the IPv4 table (`FLOWS4`, sets of
/// two shared by all CPUs: `flow_table::sets_for`); the IPv6 table (an LRU per
/// CPU) holds a quarter as many.
pub const CONN_TABLE_SIZE: u32 = 1 << 20;

/// Entries of the IPv6 table (`CONNS`) when the config names none, for an IPv4
/// table of `conn_table_size`: a quarter, at least 1024 (the smallest size), so
/// both together take about what one table of 40-byte keys did.
#[must_use]
pub const fn conn_table_v6_entries(conn_table_size: u32) -> u32 {
    let quarter = conn_table_size / 4;
    if quarter < 1024 { 1024 } else { quarter }
}
/// Slots of the SYN array (`flow::SynSlot`, 16 B each): handshakes in flight that
/// can be told apart. A slot lives one round trip (SYN to ACK); two flows that
/// share one only matter when the ring changed in between (the ACK then follows
/// the ring). A power of two.
pub const SYN_SLOTS: u32 = 1 << 18;
/// 64-bit words of the VIP address filter (65536 bits).
pub const VIP_FILTER_WORDS: u32 = 1024;
/// Distinct VIP addresses (fragments are matched by address alone).
pub const MAX_VIP_ADDRS: u32 = MAX_VIPS;
/// Outer header TTL / hop limit for encapsulated packets.
pub const ENCAP_TTL: u8 = 64;
/// ICMP "fragmentation needed" / "packet too big" answers per second per CPU, and the
/// burst allowed above that rate. A client learns the path MTU from one answer and
/// caches it (10 minutes on Linux), so the rate tracks new client hosts per second;
/// the limit bounds what spoofed oversized packets can make us send elsewhere (an
/// answer is smaller than the packet it answers: no amplification).
pub const TOO_BIG_PER_SEC: u64 = 10_000;
pub const TOO_BIG_BURST: u64 = 500;
/// Bytes of the offending packet quoted in a too-big answer: its IP header and the
/// start of its TCP/UDP header, which is what the client's stack matches a socket by.
pub const TOO_BIG_QUOTE: usize = 128;
/// Addresses in each of `xdp-decap`'s sets (this host's tunnel endpoints, the
/// balancers' tunnel sources, the VIPs).
pub const MAX_DECAP_ADDRS: u32 = 64;
/// Destination MACs `xdp-lb` accepts VIP traffic on besides the interface's own
/// (`LbConfig::accept_macs`: VRRP virtual MACs, one per IPv4 or IPv6 instance).
pub const ACCEPT_MACS: usize = 4;
