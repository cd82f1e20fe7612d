//! Frames for the fuzzer: valid frames of every kind a balancer or a WAF node sees
//! (to VIPs and not), and the ways a frame goes wrong on a wire or in an
//! attacker's hands: cut at any length, bits flipped, lengths and header lengths
//! that lie, VLAN tags stacked, IPv6 extension chains, ICMP errors whose quote is
//! mangled. Everything comes from a seeded generator, so a run is reproducible.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::IpNumber;

use crate::{
    balancer::{MIXED_VIP4, MIXED_VIP6, TUNNEL_V4, TUNNEL_V6, VIP4, VIP6, WILDCARD_VIP4},
    decapsulator::{NODE_V4, NODE_V6, tunnel_frame},
    packet::{
        BROADCAST_MAC, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Flow, L4, PEER_MAC,
        addressed_to, ethernet, ipv4_header, ipv4_packet, ipv6_header, ipv6_packet,
    },
};

/// SplitMix64: small, fast, and the same sequence on every machine for a seed.
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The largest frame generated: BPF_PROG_TEST_RUN takes at most a page minus room.
pub const MAX_FRAME: usize = 1600;
/// The smallest: BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// A client address from a small pool, so flows repeat and the connection table
/// gets hits as well as misses.
fn client(rng: &mut Rng, v6: bool) -> IpAddr {
    let n = rng.below(64) as u8;
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, u16::from(n) + 1).into()
    } else {
        Ipv4Addr::new(198, 51, 100, n + 1).into()
    }
}

fn port(rng: &mut Rng) -> u16 {
    40000 + rng.below(256) as u16
}

/// A TCP or UDP flow to one of the fixtures' VIPs (the right port and protocol).
fn vip_flow(rng: &mut Rng) -> Flow {
    let (dst, dport, udp) = *rng.pick(&[
        (VIP4, 80, false),
        (VIP4, 53, true),
        (VIP6, 80, false),
        (VIP6, 53, true),
        (WILDCARD_VIP4, 0, false),
        (MIXED_VIP4, 80, false),
        (MIXED_VIP6, 80, false),
    ]);
    let dst: IpAddr = dst.parse().expect("vip");
    // The wildcard VIP takes every port.
    let dport = if dport == 0 { rng.below(65535) as u16 + 1 } else { dport };
    flow(rng, dst, dport, udp)
}

fn flow(rng: &mut Rng, dst: IpAddr, dport: u16, udp: bool) -> Flow {
    let src = client(rng, dst.is_ipv6());
    let l4 = if udp {
        L4::Udp
    } else {
        // SYN, ACK, SYN+ACK, none: the SYN test and the table both see each.
        let (syn, ack) = *rng.pick(&[(true, false), (false, true), (true, true), (false, false)]);
        L4::Tcp { syn, ack }
    };
    // Mostly small; sometimes full-size (too big for a tunnel) or just under.
    let payload = match rng.below(6) {
        0 => 1400 + rng.below(61),
        1 => rng.below(1200),
        _ => rng.below(64),
    };
    let headers = if dst.is_ipv6() { 40 } else { 20 } + if udp { 8 } else { 20 };
    Flow {
        src,
        sport: port(rng),
        dst,
        dport,
        l4,
        vlan: None,
        payload_len: payload.min(1500 - headers),
    }
}

/// A frame of some kind, valid as built (mutations come later): mostly VIP
/// traffic, the rest what else reaches a balancer's NIC.
pub fn lb_frame(rng: &mut Rng) -> Vec<u8> {
    let mut frame = match rng.below(20) {
        0..=7 => vip_flow(rng).frame(),
        8 => ipv4_with_options(rng),
        9 | 10 => ipv6_with_extensions(rng),
        11 => frag_needed(rng),
        12 => packet_too_big(rng),
        13 => fragment(rng),
        14 => icmp_echo_to_a_vip(rng),
        15 => {
            // Not to a VIP: another address on the same link.
            let dst = if rng.one_in(2) {
                IpAddr::from(Ipv4Addr::new(192, 0, 2, rng.byte()))
            } else {
                IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, u16::from(rng.byte())))
            };
            let (dport, udp) = (port(rng), rng.one_in(2));
            flow(rng, dst, dport, udp).frame()
        }
        16 => other_l2(rng),
        _ => {
            let mut f = vip_flow(rng);
            f.vlan = Some(rng.below(4094) as u16 + 1);
            f.frame()
        }
    };
    if rng.one_in(8) {
        // Ethernet padding, or bytes behind the IP packet.
        frame.extend((0..=rng.below(64)).map(|_| rng.byte()));
    }
    if rng.one_in(16) {
        // Flooded here, not ours: the VRRP peer's, broadcast, multicast, or another VRRP MAC.
        let vrid = rng.byte();
        let mac = *rng.pick(&[
            PEER_MAC,
            BROADCAST_MAC,
            [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12],
            [0x00, 0x00, 0x5e, 0x00, 0x01, vrid],
        ]);
        frame = addressed_to(frame, mac);
    }
    frame
}

fn ipv4_with_options(rng: &mut Rng) -> Vec<u8> {
    let f = loop {
        let f = vip_flow(rng);
        if f.dst.is_ipv4() {
            break f;
        }
    };
    let l3 = f.l3();
    let words = rng.below(10) + 1;
    // NOP options, then end-of-list.
    let mut options = vec![1u8; words * 4];
    options[words * 4 - 1] = 0;
    let mut h = etherparse::Ipv4Header::from_slice(&l3).expect("ipv4").0;
    h.options = etherparse::Ipv4Options::try_from(&options[..]).expect("options");
    ethernet(ETH_P_IP, &ipv4_packet(h, &l3[20..]))
}

/// A VIP flow's IPv6 packet with a chain of extension headers (hop-by-hop,
/// destination options, routing, sometimes AH) in front of its transport header.
fn ipv6_with_extensions(rng: &mut Rng) -> Vec<u8> {
    let f = loop {
        let f = vip_flow(rng);
        if f.dst.is_ipv6() && f.payload_len < 1000 {
            break f;
        }
    };
    let l3 = f.l3();
    let kinds: Vec<u8> = (0..=rng.below(6)).map(|_| *rng.pick(&[0, 43, 60, 60, 51])).collect();
    let mut payload = Vec::new();
    for (i, _) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(l3[6]);
        let units = rng.below(3);
        let mut h = vec![next, units as u8];
        h.resize(8 + 8 * units, 0);
        payload.extend(h);
    }
    payload.extend_from_slice(&l3[40..]);
    ethernet(
        ETH_P_IPV6,
        &ipv6_packet(
            ipv6_header(&f.src.to_string(), &f.dst.to_string(), IpNumber(kinds[0])),
            &payload,
        ),
    )
}

/// "Fragmentation needed" from a router about a packet a backend sent on a VIP
/// flow, quoting a random amount of it.
fn frag_needed(rng: &mut Rng) -> Vec<u8> {
    let f = loop {
        let f = vip_flow(rng);
        if f.dst.is_ipv4() {
            break f;
        }
    };
    let quoted = f.reversed().l3();
    let take = rng.below(quoted.len().min(64) + 1);
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[..take]);
    set_checksum(&mut icmp, 2, 0);
    let to = f.dst.to_string();
    ethernet(ETH_P_IP, &ipv4_packet(ipv4_header("192.0.2.254", &to, IpNumber::ICMP), &icmp))
}

/// ICMPv6 "packet too big" about a VIP flow (checksum left 0: nobody checks it).
fn packet_too_big(rng: &mut Rng) -> Vec<u8> {
    let f = loop {
        let f = vip_flow(rng);
        if f.dst.is_ipv6() {
            break f;
        }
    };
    let quoted = f.reversed().l3();
    let take = rng.below(quoted.len().min(80) + 1);
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend_from_slice(&quoted[..take]);
    let to = f.dst.to_string();
    ethernet(
        ETH_P_IPV6,
        &ipv6_packet(ipv6_header("2001:db8:f::1", &to, IpNumber::IPV6_ICMP), &icmp),
    )
}

fn fragment(rng: &mut Rng) -> Vec<u8> {
    let f = vip_flow(rng);
    let l3 = f.l3();
    if f.dst.is_ipv4() {
        let mut h = etherparse::Ipv4Header::from_slice(&l3).expect("ipv4").0;
        h.more_fragments = rng.one_in(2);
        h.fragment_offset =
            etherparse::IpFragOffset::try_new(rng.below(200) as u16).expect("offset");
        if !h.more_fragments && h.fragment_offset.value() == 0 {
            h.more_fragments = true;
        }
        ethernet(ETH_P_IP, &ipv4_packet(h, &l3[20..]))
    } else {
        let mut payload = vec![l3[6], 0, 0, 1, 0, 0, 0, rng.byte()];
        payload.extend_from_slice(&l3[40..]);
        let (s, d) = (f.src.to_string(), f.dst.to_string());
        ethernet(
            ETH_P_IPV6,
            &ipv6_packet(ipv6_header(&s, &d, IpNumber::IPV6_FRAGMENTATION_HEADER), &payload),
        )
    }
}

fn icmp_echo_to_a_vip(rng: &mut Rng) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
    icmp.extend((0..rng.below(56)).map(|_| rng.byte()));
    set_checksum(&mut icmp, 2, 0);
    let from = client(rng, false).to_string();
    ethernet(ETH_P_IP, &ipv4_packet(ipv4_header(&from, VIP4, IpNumber::ICMP), &icmp))
}

/// ARP, LLDP, a random ether type, or a VIP frame under a stack of VLAN tags.
fn other_l2(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => ethernet(ETH_P_ARP, &[0u8; 28]),
        1 => ethernet(0x88cc, &(0..46).map(|_| rng.byte()).collect::<Vec<_>>()),
        2 => ethernet(
            rng.next_u64() as u16,
            &(0..=rng.below(100)).map(|_| rng.byte()).collect::<Vec<_>>(),
        ),
        _ => {
            let mut f = vip_flow(rng).frame();
            for _ in 0..=rng.below(3) {
                push_vlan_tag(rng, &mut f);
            }
            f
        }
    }
}

/// Inserts a VLAN tag (802.1Q or 802.1ad) after the MACs.
fn push_vlan_tag(rng: &mut Rng, frame: &mut Vec<u8>) {
    let tpid: u16 = if rng.one_in(2) { ETH_P_8021Q } else { 0x88a8 };
    let mut tag = tpid.to_be_bytes().to_vec();
    tag.extend((rng.below(4094) as u16 + 1).to_be_bytes());
    // The tag goes where the ether type was; the old ether type follows it.
    frame.splice(12..12, tag);
}

/// The internet checksum of `data` (with the field at `at` taken as zero, plus
/// `seed`) written at `at`.
fn set_checksum(data: &mut [u8], at: usize, seed: u32) {
    data[at..at + 2].copy_from_slice(&[0, 0]);
    let mut sum = seed
        + data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum::<u32>();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    data[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A frame a WAF node running `xdp-decap` sees: tunnel packets from balancers and
/// from anyone else, to this node and to others, carrying VIP traffic or not, and
/// plain traffic.
pub fn decap_frame(rng: &mut Rng) -> Vec<u8> {
    let balancers = [TUNNEL_V4, TUNNEL_V6];
    let strangers = ["10.0.0.99", "fd00::99", "198.51.100.7", "2001:db8:c::7"];
    let nodes = [NODE_V4, NODE_V6];
    let elsewhere = ["10.0.0.12", "fd00::12"];
    match rng.below(10) {
        0..=5 => {
            let v6_outer = rng.one_in(2);
            let pick = |rng: &mut Rng, set: &[&'static str]| -> &'static str {
                set[usize::from(v6_outer) + 2 * rng.below(set.len() / 2)]
            };
            let src = match rng.below(5) {
                0 => pick(rng, &strangers),
                _ => pick(rng, &balancers),
            };
            let dst = if rng.one_in(6) { pick(rng, &elsewhere) } else { pick(rng, &nodes) };
            let inner = if rng.one_in(5) {
                let dst = if rng.one_in(2) { NODE_V4 } else { "192.0.2.1" };
                flow(rng, dst.parse().expect("addr"), 22, false)
            } else {
                vip_flow(rng)
            };
            let mut frame = tunnel_frame(src, dst, &inner.l3());
            if rng.one_in(6) {
                push_vlan_tag(rng, &mut frame);
            }
            frame
        }
        6 => {
            let udp = rng.one_in(2);
            flow(rng, NODE_V4.parse().expect("node"), 80, udp).frame()
        }
        7 => vip_flow(rng).frame(),
        8 => {
            let proto = *rng.pick(&[IpNumber::GRE, IpNumber::TCP, IpNumber::IPV4]);
            let body: Vec<u8> = (0..rng.below(60)).map(|_| rng.byte()).collect();
            ethernet(ETH_P_IP, &ipv4_packet(ipv4_header(TUNNEL_V4, NODE_V4, proto), &body))
        }
        _ => other_l2(rng),
    }
}

/// One to three of the ways a frame goes wrong, or (half the time) none.
pub fn mutate(rng: &mut Rng, mut frame: Vec<u8>) -> Vec<u8> {
    if rng.one_in(2) {
        return frame;
    }
    for _ in 0..=rng.below(3) {
        // Where the IP header starts (a tag or two may be in front).
        let l3 = l3_offset(&frame);
        match rng.below(8) {
            0 => frame.truncate(MIN_FRAME + rng.below(frame.len() - MIN_FRAME + 1)),
            1 | 2 => {
                // Bits flipped, mostly in the headers.
                let span = frame.len().min(if rng.one_in(4) { MAX_FRAME } else { 100 });
                for _ in 0..=rng.below(8) {
                    let i = rng.below(span);
                    frame[i] ^= 1 << rng.below(8);
                }
            }
            3 => {
                // A length that lies: IPv4 total length or IPv6 payload length.
                let at = l3 + if frame.get(l3).is_some_and(|b| b >> 4 == 6) { 4 } else { 2 };
                if at + 2 <= frame.len() {
                    let v: u16 = match rng.below(4) {
                        0 => 0,
                        1 => rng.next_u64() as u16,
                        2 => (frame.len() - l3) as u16 + rng.below(64) as u16,
                        _ => (rng.below(frame.len() - l3) as u16).max(1),
                    };
                    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            4 => {
                // An IPv4 header length that lies.
                if let Some(b) = frame.get_mut(l3) {
                    *b = (*b & 0xf0) | rng.below(16) as u8;
                }
            }
            5 => push_vlan_tag(rng, &mut frame),
            6 => frame.extend((0..=rng.below(100)).map(|_| rng.byte())),
            _ => {
                // A byte of the transport header or the quote set at random.
                let i = l3 + 20 + rng.below(60);
                if let Some(b) = frame.get_mut(i) {
                    *b = rng.byte();
                }
            }
        }
    }
    frame.truncate(MAX_FRAME);
    frame
}

/// Where the IP header would start: after the MACs and any VLAN tags.
#[must_use]
pub fn l3_offset(frame: &[u8]) -> usize {
    let mut off = 12;
    while frame.len() >= off + 4
        && matches!(u16::from_be_bytes([frame[off], frame[off + 1]]), 0x8100 | 0x88a8)
    {
        off += 4;
    }
    off + 2
}

/// The valid frames the truncation sweep cuts at every length: one of each kind.
#[must_use]
pub fn templates() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(1);
    let mut out = Vec::new();
    for f in [
        Flow::tcp("198.51.100.7", 40000, VIP4, 80),
        Flow::tcp("198.51.100.7", 40000, VIP4, 80).ack(),
        Flow::udp("198.51.100.7", 40000, VIP4, 53),
        Flow::tcp("2001:db8:c::7", 40000, VIP6, 80).ack(),
        Flow::udp("2001:db8:c::7", 40000, VIP6, 53),
        Flow::tcp("198.51.100.7", 40000, VIP4, 80).ack().vlan(7),
        Flow::tcp("198.51.100.7", 40000, VIP4, 80).ack().payload(1460),
        Flow::tcp("2001:db8:c::7", 40000, MIXED_VIP6, 80).ack(),
    ] {
        out.push(f.frame());
    }
    out.push(ipv4_with_options(&mut rng));
    out.push(ipv6_with_extensions(&mut rng));
    out.push(frag_needed(&mut rng));
    out.push(packet_too_big(&mut rng));
    out.push(fragment(&mut rng));
    out.push(tunnel_frame(TUNNEL_V4, NODE_V4, &Flow::tcp("198.51.100.7", 40000, VIP4, 80).l3()));
    out.push(tunnel_frame(TUNNEL_V6, NODE_V6, &Flow::tcp("198.51.100.7", 40000, VIP4, 80).l3()));
    out
}
