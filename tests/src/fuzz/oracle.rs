//! What may come out of the programs for a frame, judged independently of them:
//! headers read here by hand and with etherparse, never with the programs' code.
//! Each check returns what the frame became, or what is wrong with it.

use std::{collections::BTreeSet, net::IpAddr};

use etherparse::{IpNumber, Ipv4Header, Ipv6Header};
use lb_common::ForwardingMode;
use lb_userspace::{decap::DecapRules, desired::DesiredState};

use crate::{
    balancer::{Run, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{LB_MAC, decode_too_big},
};

/// The invariants checked on every frame through `xdp-lb`.
pub const LB_INVARIANTS: &[&str] = &[
    "the action is XDP_PASS, XDP_DROP or XDP_TX (never XDP_ABORTED)",
    "a frame whose IP destination holds no VIP (or cannot be read) passes unchanged",
    "a frame not addressed to the balancer's MAC (or an accepted one) passes unchanged",
    "a passed frame is unchanged",
    "a dsr frame sent is the frame, to a backend of a VIP at its destination, only the MACs changed",
    "an ipip frame sent is the whole IP packet (padding cut) under a correct outer header from the tunnel source to a backend of a VIP at its destination",
    "an ICMP answer goes back to the sender from the VIP, quotes the packet, checksums valid, with the MTU the tunnel leaves",
];

/// The invariants checked on every frame through `xdp-decap`.
pub const DECAP_INVARIANTS: &[&str] = &[
    "the action is XDP_PASS or XDP_DROP",
    "a frame that is not a tunnel packet to this node passes unchanged",
    "a frame passed changed is exactly the inner packet of a tunnel packet from a balancer to this node for a VIP",
    "a tunnel packet to this node from a non-balancer, or for a non-VIP, never passes",
];

/// What a frame became.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Passed,
    Dropped,
    /// dsr: the same frame, new MACs.
    Forwarded,
    /// ipip: under an outer header.
    Encapsulated,
    /// ipip: an ICMP too-big answer to the sender.
    Answered,
    /// xdp-decap: the inner packet.
    Decapsulated,
}

impl Outcome {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Dropped => "dropped",
            Self::Forwarded => "forwarded (dsr)",
            Self::Encapsulated => "encapsulated (ipip)",
            Self::Answered => "answered (ICMP too big)",
            Self::Decapsulated => "decapsulated",
        }
    }
}

/// The L2 header's length and the ether type after at most one VLAN tag (what
/// both programs accept); `None` for a frame too short to say.
fn l2(frame: &[u8]) -> Option<(usize, u16)> {
    let et = |i: usize| frame.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match et(12)? {
        0x8100 | 0x88a8 => Some((18, et(16)?)),
        t => Some((14, t)),
    }
}

/// Where the IP header starts, its version by ether type, its source and
/// destination: only when the fixed header is whole.
fn ip_addresses(frame: &[u8]) -> Option<(usize, IpAddr, IpAddr)> {
    let (off, et) = l2(frame)?;
    let arr4 = |i: usize| -> Option<IpAddr> {
        let b: [u8; 4] = frame.get(off + i..off + i + 4)?.try_into().ok()?;
        Some(IpAddr::from(b))
    };
    let arr16 = |i: usize| -> Option<IpAddr> {
        let b: [u8; 16] = frame.get(off + i..off + i + 16)?.try_into().ok()?;
        Some(IpAddr::from(b))
    };
    match et {
        0x0800 if frame.len() >= off + 20 => Some((off, arr4(12)?, arr4(16)?)),
        0x86dd if frame.len() >= off + 40 => Some((off, arr16(8)?, arr16(24)?)),
        _ => None,
    }
}

/// The IP packet of a frame as its header sizes it (at most what the frame holds).
fn ip_packet(frame: &[u8], off: usize) -> &[u8] {
    let l3 = &frame[off..];
    let declared = match l3.first().map(|b| b >> 4) {
        Some(4) if l3.len() >= 4 => usize::from(u16::from_be_bytes([l3[2], l3[3]])),
        Some(6) if l3.len() >= 6 => usize::from(u16::from_be_bytes([l3[4], l3[5]])) + 40,
        _ => l3.len(),
    };
    &l3[..declared.min(l3.len())]
}

fn mac(frame: &[u8], at: usize) -> [u8; 6] {
    frame[at..at + 6].try_into().expect("6 bytes")
}

/// Judges `xdp-lb`'s output for one frame against the desired state it runs.
pub struct LbOracle {
    mode: ForwardingMode,
    mtu: u32,
    tunnel_v4: IpAddr,
    tunnel_v6: IpAddr,
    vip_addrs: BTreeSet<IpAddr>,
    /// Destination MACs VIP traffic is taken on: the interface's and the accepted ones.
    macs: BTreeSet<[u8; 6]>,
    /// (VIP address, backend address, backend MAC) for every backend.
    backends: Vec<(IpAddr, IpAddr, [u8; 6])>,
}

impl LbOracle {
    #[must_use]
    pub fn new(plan: &DesiredState) -> Self {
        let c = &plan.config;
        let mut v6 = [0u8; 16];
        for (chunk, w) in v6.chunks_exact_mut(4).zip(c.tunnel_src_v6) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        Self {
            mode: if c.mode == ForwardingMode::Ipip as u32 {
                ForwardingMode::Ipip
            } else {
                ForwardingMode::Dsr
            },
            mtu: c.mtu,
            tunnel_v4: IpAddr::from(c.tunnel_src_v4.to_ne_bytes()),
            tunnel_v6: IpAddr::from(v6),
            vip_addrs: plan.vips.iter().map(|v| v.address).collect(),
            macs: std::iter::once(c.src_mac).chain(c.accept_macs).collect(),
            backends: plan
                .vips
                .iter()
                .flat_map(|v| {
                    v.backends.iter().filter_map(move |b| Some((v.address, b.address, b.mac?)))
                })
                .collect(),
        }
    }

    /// Is `backend` (by address, or by MAC when `address` is `None`) a backend of a
    /// VIP at `vip`?
    fn serves(&self, vip: IpAddr, address: Option<IpAddr>, mac: [u8; 6]) -> bool {
        self.backends
            .iter()
            .any(|&(v, a, m)| v == vip && m == mac && address.is_none_or(|x| x == a))
    }

    pub fn check(&self, input: &[u8], run: &Run) -> Result<Outcome, String> {
        let out = &run.frame;
        let addrs = ip_addresses(input);
        let to_vip = addrs.is_some_and(|(_, _, dst)| self.vip_addrs.contains(&dst));
        let to_us = self.macs.contains(&mac(input, 0));
        match run.action {
            XDP_PASS | XDP_DROP | XDP_TX => {}
            a => return Err(format!("action {a}")),
        }
        if !(to_vip && to_us) && (run.action != XDP_PASS || out != input) {
            return Err(format!(
                "not for a VIP ({addrs:?}) or to {:02x?}, not our MAC, yet action {} and changed: {}",
                mac(input, 0),
                run.action,
                out != input
            ));
        }
        match run.action {
            XDP_PASS if out == input => return Ok(Outcome::Passed),
            XDP_PASS => return Err("passed, but changed".into()),
            XDP_DROP => return Ok(Outcome::Dropped),
            _ => {}
        }
        let (off, src, dst) = addrs.ok_or("sent without a readable IP header")?;
        if self.mode == ForwardingMode::Dsr {
            if out.len() != input.len() || out[12..] != input[12..] {
                return Err("dsr changed more than the MACs".into());
            }
            if mac(out, 6) != LB_MAC || !self.serves(dst, None, mac(out, 0)) {
                return Err(format!("dsr to {:02x?}, not a backend of {dst}", mac(out, 0)));
            }
            return Ok(Outcome::Forwarded);
        }
        if let Ok(a) = decode_too_big(out) {
            let outer = self.mtu - a.mtu;
            if a.src != dst || a.dst != src || a.dst_mac != mac(input, 6) || a.src_mac != LB_MAC {
                return Err(format!(
                    "too-big answer from {} to {}, want {dst} to {src}",
                    a.src, a.dst
                ));
            }
            if !matches!(outer, 20 | 40) {
                return Err(format!("too-big answer advertises {}", a.mtu));
            }
            if input.get(off..off + a.quote.len()) != Some(&a.quote[..])
                || out[12..off] != input[12..off]
            {
                return Err("too-big answer: quote or L2 header differ from the packet".into());
            }
            return Ok(Outcome::Answered);
        }
        self.check_encapsulated(input, off, dst, out).map(|()| Outcome::Encapsulated)
    }

    fn check_encapsulated(
        &self,
        input: &[u8],
        off: usize,
        vip: IpAddr,
        out: &[u8],
    ) -> Result<(), String> {
        let inner = ip_packet(input, off);
        if out.len() < off || out[12..off - 2] != input[12..off - 2] {
            return Err("ipip: the VLAN tag changed".into());
        }
        // A shortest frame's padding rides behind the tunnel where it fits the MTU (the
        // outer length stays the packet's); anything else behind the packet is cut.
        let behind = &input[(off + inner.len()).min(input.len())..];
        let outer_len = if out.get(off - 2..off) == Some(&[0x86, 0xdd]) { 40 } else { 20 };
        let kept =
            if input.len() <= 60 && inner.len() + behind.len() + outer_len <= self.mtu as usize {
                behind
            } else {
                &[]
            };
        let Some(l3) = out[off..].strip_suffix(kept) else {
            return Err(format!("ipip: {} bytes of padding not behind the tunnel", kept.len()));
        };
        let inner_proto =
            if inner.first().map(|b| b >> 4) == Some(4) { IpNumber::IPV4 } else { IpNumber::IPV6 };
        let (backend, payload) = match u16::from_be_bytes([out[off - 2], out[off - 1]]) {
            0x0800 => {
                let (h, rest) =
                    Ipv4Header::from_slice(l3).map_err(|e| format!("ipip outer: {e}"))?;
                let ok = h.header_checksum == h.calc_header_checksum()
                    && usize::from(h.total_len) == 20 + rest.len()
                    && IpAddr::from(h.source) == self.tunnel_v4
                    && h.protocol == inner_proto
                    && h.dont_fragment
                    && h.time_to_live == 64;
                if !ok {
                    return Err(format!(
                        "ipip outer IPv4 header wrong: {h:?} over {} bytes",
                        rest.len()
                    ));
                }
                (IpAddr::from(h.destination), rest)
            }
            0x86dd => {
                let (h, rest) =
                    Ipv6Header::from_slice(l3).map_err(|e| format!("ipip outer: {e}"))?;
                let ok = usize::from(h.payload_length) == rest.len()
                    && IpAddr::from(h.source) == self.tunnel_v6
                    && h.next_header == inner_proto
                    && h.hop_limit == 64;
                if !ok {
                    return Err(format!(
                        "ipip outer IPv6 header wrong: {h:?} over {} bytes",
                        rest.len()
                    ));
                }
                (IpAddr::from(h.destination), rest)
            }
            t => return Err(format!("ipip: ether type {t:#06x}")),
        };
        if payload != inner {
            return Err(format!(
                "ipip: {} bytes inside, the packet has {}",
                payload.len(),
                inner.len()
            ));
        }
        if mac(out, 6) != LB_MAC || !self.serves(vip, Some(backend), mac(out, 0)) {
            return Err(format!(
                "ipip to {backend} ({:02x?}), not a backend of {vip}",
                mac(out, 0)
            ));
        }
        if out.len() - 14 > self.mtu as usize + (off - 14) {
            return Err(format!("ipip: a {}-byte frame exceeds the MTU", out.len()));
        }
        Ok(())
    }
}

/// Judges `xdp-decap`'s output for one frame against its rules.
pub struct DecapOracle {
    rules: DecapRules,
}

impl DecapOracle {
    #[must_use]
    pub fn new(rules: &DecapRules) -> Self {
        Self { rules: rules.clone() }
    }

    /// For a tunnel packet to this node: whether the rules accept it, and the frame
    /// it must become. `None` for anything else.
    fn tunnel(&self, input: &[u8]) -> Option<(bool, Vec<u8>)> {
        let (off, src, dst) = ip_addresses(input)?;
        let l3 = &input[off..];
        let (outer_len, next, fragment) = if src.is_ipv4() {
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            (
                ihl,
                l3[9],
                u16::from_be_bytes([l3[6], l3[7]]) & 0x3fff != 0 || ihl < 20 || l3[0] >> 4 != 4,
            )
        } else {
            (40, l3[6], l3[0] >> 4 != 6)
        };
        let inner_type: u16 = match next {
            4 => 0x0800,
            41 => 0x86dd,
            _ => return None,
        };
        if !self.rules.local.contains(&dst) {
            return None;
        }
        // Unusable outer headers to this node are dropped, like refused ones.
        let Some(inner) = l3.get(outer_len..).filter(|_| !fragment) else {
            return Some((false, Vec::new()));
        };
        let inner_dst = match (inner_type, inner.first().map(|b| b >> 4)) {
            (0x0800, Some(4)) if inner.len() >= 20 && inner[0] & 0x0f >= 5 => {
                IpAddr::from(<[u8; 4]>::try_from(&inner[16..20]).ok()?)
            }
            (0x86dd, Some(6)) if inner.len() >= 40 => {
                IpAddr::from(<[u8; 16]>::try_from(&inner[24..40]).ok()?)
            }
            _ => return Some((false, Vec::new())),
        };
        let ok = self.rules.balancers.contains(&src) && self.rules.vips.contains(&inner_dst);
        let mut want = input[..off].to_vec();
        let n = want.len();
        want[n - 2..].copy_from_slice(&inner_type.to_be_bytes());
        want.extend_from_slice(inner);
        Some((ok, want))
    }

    pub fn check(&self, input: &[u8], run: &Run) -> Result<Outcome, String> {
        let out = &run.frame;
        let tunnel = self.tunnel(input);
        match (run.action, tunnel) {
            (XDP_DROP, Some((false, _))) => Ok(Outcome::Dropped),
            (XDP_DROP, Some((true, _))) => Err("dropped a tunnel packet the rules accept".into()),
            (XDP_DROP, None) => {
                Err("dropped a frame that is not a tunnel packet to this node".into())
            }
            (XDP_PASS, None) if out == input => Ok(Outcome::Passed),
            (XDP_PASS, None) => {
                Err("changed a frame that is not a tunnel packet to this node".into())
            }
            (XDP_PASS, Some((true, want))) if *out == want => Ok(Outcome::Decapsulated),
            (XDP_PASS, Some((ok, _))) => Err(format!(
                "passed a tunnel packet to this node the rules {} as it should",
                if ok { "accept, not stripped" } else { "refuse" }
            )),
            (a, _) => Err(format!("action {a}")),
        }
    }
}
