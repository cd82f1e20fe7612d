//! A loaded `xdp-decap` configured through `lb_userspace::decap` (as a WAF node
//! runs it), driven frame by frame through BPF_PROG_TEST_RUN, and the tunnel frames
//! a balancer sends it.

use std::{collections::BTreeMap, net::IpAddr};

use etherparse::IpNumber;
use lb_common::{DecapCounter, DecapCounterSet};
use lb_userspace::decap::{Decap, DecapRules};

use crate::{
    balancer::{Run, TUNNEL_V4, TUNNEL_V6, VIP4, VIP6, run_program},
    packet::{ETH_P_IP, ETH_P_IPV6, ethernet, ipv4_header, ipv4_packet, ipv6_header, ipv6_packet},
};

/// The node's own tunnel addresses in the fixtures.
pub const NODE_V4: &str = "10.0.0.11";
pub const NODE_V6: &str = "fd00::11";

pub struct Decapsulator {
    pub decap: Decap,
}

/// The fixtures' rules: this node's two addresses, the fixtures' balancer tunnel
/// sources, the fixtures' two VIPs.
#[must_use]
pub fn standard_rules() -> DecapRules {
    let set = |a: &[&str]| a.iter().map(|s| s.parse::<IpAddr>().expect("address")).collect();
    DecapRules {
        local: set(&[NODE_V4, NODE_V6]),
        balancers: set(&[TUNNEL_V4, TUNNEL_V6]),
        vips: set(&[VIP4, VIP6]),
    }
}

impl Decapsulator {
    /// Loaded (not pinned, not attached) with `rules`.
    #[must_use]
    pub fn new(rules: &DecapRules) -> Self {
        let mut decap = Decap::load(None).expect("loading xdp-decap");
        decap.set_rules(rules).expect("setting the rules");
        Self { decap }
    }

    #[must_use]
    pub fn run(&self, frame: &[u8]) -> Run {
        run_program(self.decap.program().expect("xdp_decap"), frame)
    }

    #[must_use]
    pub fn counters(&self) -> DecapCounterSet {
        self.decap.counters().expect("reading decap counters")
    }

    /// Runs a frame and returns the counters it moved (name -> delta).
    #[must_use]
    pub fn run_counted(&self, frame: &[u8]) -> (Run, BTreeMap<&'static str, u64>) {
        let before = self.counters();
        let run = self.run(frame);
        (run, decap_deltas(&before, &self.counters()))
    }
}

#[must_use]
pub fn decap_deltas(
    before: &DecapCounterSet,
    after: &DecapCounterSet,
) -> BTreeMap<&'static str, u64> {
    DecapCounter::ALL
        .iter()
        .filter_map(|&c| {
            let d = after.get(c) - before.get(c);
            (d != 0).then_some((c.name(), d))
        })
        .collect()
}

/// The frame a balancer sends: `inner` (an IP packet) under an outer IPv4 or IPv6
/// header from `src` to `dst` (their family picks the outer header).
#[must_use]
pub fn tunnel_frame(src: &str, dst: &str, inner: &[u8]) -> Vec<u8> {
    let next = if inner[0] >> 4 == 4 { IpNumber::IPV4 } else { IpNumber::IPV6 };
    if src.contains(':') {
        ethernet(ETH_P_IPV6, &ipv6_packet(ipv6_header(src, dst, next), inner))
    } else {
        let mut h = ipv4_header(src, dst, next);
        h.dont_fragment = true;
        ethernet(ETH_P_IP, &ipv4_packet(h, inner))
    }
}
