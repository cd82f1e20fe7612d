//! The data path's counters, and who counts what.
//!
//! **A table hit is counted once** (issue #13: one per-CPU record per packet):
//! a packet forwarded on a connection-table hit adds to its backend slot's
//! `BackendStats::hits` and nowhere else. Every other verdict is counted as
//! before: in `STATS` (its action and reason or connection-table event) and, when
//! forwarded, in `VIP_STATS[vip]` and the slot's `BackendStats::traffic`. So
//! `action_tx` and `conn_hit`, a VIP's traffic and a backend's traffic are sums
//! that the controller derives (`lb_userspace::stats`, the one place):
//! - `action_tx`, `conn_hit`: `STATS` plus the hit packets of every backend slot
//!   plus those the controller moved out of slots (`vip_stats::retired`, `GONE`);
//! - a VIP's: `VIP_STATS[vip]` plus `VIP_STATS[retired(vip)]` plus the hits of the
//!   slots whose `BACKENDS` entry names the VIP;
//! - a backend's: its slot's `traffic` plus `hits`.
//!
//! Hits stay where they were counted until the controller moves them: when a
//! backend is removed, its slot's hits go to its VIP's retired count; when a VIP
//! index is given to a new VIP, that index's retired count goes to `GONE`; when a
//! slot is given to a new backend, anything left in it goes to `GONE`. Each move
//! keeps every total the same (the controller holds readers off while it moves).

/// Packets and bytes, the value of the per-VIP and per-backend per-CPU arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// What the TCP handshakes sent to one backend did, cumulative: the passive health
/// signal (the controller suspects a backend that gets SYNs and completes no
/// handshake). Counted by `xdp-lb` only for packets it forwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshakes {
    /// TCP SYNs (without ACK) forwarded to the backend, retransmitted ones included.
    pub syns: u64,
    /// Flows opened by a SYN forwarded to the backend whose client then sent a
    /// packet that is no SYN (the handshake's final ACK, or anything after it: the
    /// client got a SYN-ACK). Once per flow: the packet that takes the flow from the
    /// SYN array (`flow::SynSlot`) into the connection table.
    pub completed: u64,
    /// Of `syns`, those for a flow the balancer already remembers (in the SYN
    /// array or the connection table): a client retrying a SYN that got no answer
    /// (or reusing the ports of an earlier connection still in the table).
    pub syn_retransmits: u64,
}

impl Handshakes {
    /// Adds `other`'s counts (another CPU's).
    pub fn add(&mut self, other: &Self) {
        self.syns += other.syns;
        self.completed += other.completed;
        self.syn_retransmits += other.syn_retransmits;
    }
}

/// The value of the per-backend per-CPU BACKEND_STATS array: one map lookup per
/// packet counts all of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Forwarded packets that were no table hit (SYNs, handshakes' ACKs, first
    /// packets, re-hashed flows, ICMP errors).
    pub traffic: Traffic,
    pub handshakes: Handshakes,
    /// Forwarded on a connection-table hit: the hit's only record (module text).
    pub hits: Traffic,
}

impl BackendStats {
    /// Everything forwarded to the slot: its traffic and its hits.
    #[must_use]
    pub fn forwarded(&self) -> Traffic {
        let mut t = self.traffic;
        t.add(&self.hits);
        t
    }
}

/// Entries of the per-CPU VIP_STATS array: the data path's per VIP, then the
/// controller's (module text). The data path writes only `[0, MAX_VIPS)`.
pub mod vip_stats {
    use crate::limits::MAX_VIPS;

    /// Entries of VIP_STATS.
    pub const ENTRIES: u32 = 2 * MAX_VIPS + 1;

    /// Where the hits of VIP `vip`'s removed backends are kept.
    #[must_use]
    pub const fn retired(vip: u32) -> u32 {
        MAX_VIPS + vip
    }

    /// Where the retired hits of VIPs whose index went to another VIP are kept.
    pub const GONE: u32 = 2 * MAX_VIPS;
}

/// A counter enum (index, `ALL`, `COUNT`, stable `name()`) and its per-CPU value
/// (`$set`, one `u64` per counter, so a program pays one map lookup for all of its
/// counting). Used for `xdp-lb`'s STATS and `xdp-decap`'s DECAP_STATS.
macro_rules! counters {
    (
        $(#[doc = $enum_doc:literal])* enum $enum:ident;
        $(#[doc = $set_doc:literal])* set $set:ident;
        $($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*
    ) => {
        $(#[doc = $enum_doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $enum {
            $($(#[doc = $doc])* $variant,)*
        }

        impl $enum {
            /// Every counter, in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];
            /// Entries of the counter array.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name, used as a metric label.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }
        }

        $(#[doc = $set_doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $set {
            pub values: [u64; $enum::COUNT as usize],
        }

        impl Default for $set {
            fn default() -> Self {
                Self { values: [0; $enum::COUNT as usize] }
            }
        }

        impl $set {
            #[must_use]
            pub const fn get(&self, c: $enum) -> u64 {
                self.values[c as usize]
            }
        }
    };
}

counters! {
    /// Index into `xdp-lb`'s global per-CPU STATS array: one per action, per pass/drop
    /// reason and per connection-table event. The controller exports each by `name()`.
    enum Counter;
    /// The value of the one-entry per-CPU STATS array: every `Counter`.
    set CounterSet;
    /// Verdict XDP_PASS.
    ActionPass => "action_pass",
    /// Verdict XDP_TX.
    ActionTx => "action_tx",
    /// Verdict XDP_DROP.
    ActionDrop => "action_drop",
    /// Verdict XDP_ABORTED (an internal error; should stay 0).
    ActionAborted => "action_aborted",
    /// Passed: not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp => "pass_not_ip",
    /// Passed: IP but not to a VIP (or not TCP/UDP to a VIP port).
    PassNotVip => "pass_not_vip",
    /// Passed: ICMP to a VIP address that is not frag-needed / packet-too-big about a VIP flow.
    PassIcmp => "pass_icmp",
    /// Passed: IPv6 to a VIP address with an extension header not walked (AH, ESP,
    /// mobility) or a chain of hop-by-hop, routing and destination-options headers
    /// longer than `xdp-lb` skips (four).
    PassIpv6Ext => "pass_ipv6_ext",
    /// Passed: to a VIP address (by the address filter), but not addressed to this
    /// balancer's MAC (`LbConfig::src_mac`, `accept_macs`): another host's unicast
    /// frame that a bridge flooded or a promiscuous NIC let in (the VRRP peer's:
    /// forwarding it too would send one flow to two backends), broadcast or multicast.
    PassNotForUs => "pass_not_for_us",
    /// Passed: an IP header cut short: its destination cannot be read, so it cannot
    /// be for a VIP; the kernel's own checks drop it.
    PassMalformed => "pass_malformed",
    /// Dropped: a packet to a VIP address whose headers are cut short or inconsistent
    /// (IP version, header or total length against the frame, a transport header
    /// outside the packet). The same to any other address passes.
    DropMalformed => "drop_malformed",
    /// Dropped: IPv4 or IPv6 fragment to a VIP address.
    DropFragment => "drop_fragment",
    /// Dropped: the VIP has no usable backend.
    DropNoBackend => "drop_no_backend",
    /// Dropped: the encapsulated packet would exceed the MTU and is not answered with
    /// ICMP (IPv4 with DF clear, an ICMP error, or a frame too short to quote).
    DropTooBig => "drop_too_big",
    /// Dropped: the encapsulated packet would exceed the MTU, and the ICMP answer is
    /// over its budget (`limits::TOO_BIG_PER_SEC` per CPU).
    DropTooBigRateLimited => "drop_too_big_rate_limited",
    /// Dropped: bpf_xdp_adjust_head failed (no headroom).
    DropEncapFailed => "drop_encap_failed",
    /// Dropped: CONFIG has no forwarding settings yet.
    DropNoConfig => "drop_no_config",
    /// Connection table hit, backend used as is.
    ConnHit => "conn_hit",
    /// Connection table miss (non-SYN): hashed.
    ConnMiss => "conn_miss",
    /// TCP SYN: hashed to the ring, remembered in the SYN array (not the table)
    /// until its handshake's ACK.
    ConnSyn => "conn_syn",
    /// A TCP handshake's ACK (the first non-SYN packet of a flow whose SYN the SYN
    /// array remembers): sent where the SYN went and put in the table.
    ConnHandshake => "conn_handshake",
    /// Hit on a backend that is down or was replaced: re-hashed.
    ConnRehash => "conn_rehash",
    /// ICMP frag-needed / packet-too-big forwarded to the flow's backend.
    IcmpForwarded => "icmp_forwarded",
    /// Answered (XDP_TX back to the client): ICMP "fragmentation needed" / ICMPv6
    /// "packet too big" for a packet that would exceed the MTU once encapsulated.
    IcmpTooBigSent => "icmp_too_big_sent",
}

counters! {
    /// Index into `xdp-decap`'s per-CPU DECAP_STATS array: what became of each frame.
    /// A tunnel packet is stripped only when it comes from a balancer and carries
    /// traffic to a VIP; every other one is dropped, so a host that can reach a WAF
    /// node cannot inject packets with a forged client address.
    enum DecapCounter;
    /// The value of the one-entry per-CPU DECAP_STATS array: every `DecapCounter`.
    set DecapCounterSet;
    /// Passed untouched: not IPIP / IP6IP6 / 4in6 / 6in4 to one of this host's tunnel addresses.
    PassNotTunnel => "pass_not_tunnel",
    /// Stripped and passed up the stack.
    Decapsulated => "decapsulated",
    /// Dropped: the outer source is not a balancer's tunnel address.
    DropSource => "drop_source",
    /// Dropped: the inner destination is not a VIP.
    DropNotVip => "drop_not_vip",
    /// Dropped: the inner header is cut short, of the wrong version, or the outer
    /// packet is a fragment (balancers send DF).
    DropMalformed => "drop_malformed",
}
