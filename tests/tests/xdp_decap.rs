//! Packet-level specification of `xdp-decap`, configured through
//! `lb_userspace::decap` as a WAF node runs it: a tunnel packet is stripped only
//! when it comes from a balancer, to this node, with a packet for a VIP inside;
//! other tunnel packets to the node are counted and dropped; everything else
//! passes untouched. Each case checks the verdict, the frame and the counter.
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use std::collections::BTreeMap;

use etherparse::IpNumber;
use lb_common::DecapCounter::{self, *};
use xdplb_tests::{
    balancer::{TUNNEL_V4, TUNNEL_V6, VIP4, VIP6, XDP_DROP, XDP_PASS},
    decapsulator::{Decapsulator, NODE_V4, NODE_V6, standard_rules, tunnel_frame},
    packet::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, Flow, ethernet, ipv4_header, ipv4_packet},
    privilege::have_root,
};

const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c::7";

macro_rules! needs_root {
    () => {
        if !have_root(module_path!()) {
            return;
        }
    };
}

fn counts(list: &[(DecapCounter, u64)]) -> BTreeMap<&'static str, u64> {
    list.iter().map(|(c, n)| (c.name(), *n)).collect()
}

fn to_vip4() -> Flow {
    Flow::tcp(CLIENT4, 40000, VIP4, 443).ack()
}

fn to_vip6() -> Flow {
    Flow::tcp(CLIENT6, 40000, VIP6, 443).ack()
}

/// Every tunnel a balancer builds: (name, outer source, outer destination, inner flow).
fn tunnels() -> [(&'static str, &'static str, &'static str, Flow); 4] {
    [
        ("IPIP", TUNNEL_V4, NODE_V4, to_vip4()),
        ("IP6IP6", TUNNEL_V6, NODE_V6, to_vip6()),
        ("4in6", TUNNEL_V6, NODE_V6, to_vip4()),
        ("6in4", TUNNEL_V4, NODE_V4, to_vip6()),
    ]
}

fn ether_type(flow: &Flow) -> u16 {
    if flow.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 }
}

#[test]
fn tunnel_packet_from_a_balancer_to_a_vip_is_stripped_and_passed_up() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    for (name, src, dst, flow) in tunnels() {
        let (run, c) = d.run_counted(&tunnel_frame(src, dst, &flow.l3()));
        assert_eq!(run.action, XDP_PASS, "{name}");
        assert_eq!(
            run.frame,
            ethernet(ether_type(&flow), &flow.l3()),
            "{name}: the inner packet, whole"
        );
        assert_eq!(c, counts(&[(Decapsulated, 1)]), "{name}");
    }
}

#[test]
fn vlan_tag_stays_in_front_of_the_inner_packet() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    let flow = to_vip4();
    let mut frame = tunnel_frame(TUNNEL_V4, NODE_V4, &flow.l3());
    frame.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    let run = d.run(&frame);
    let mut want = ethernet(ETH_P_IP, &flow.l3());
    want.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    assert_eq!((run.action, run.frame), (XDP_PASS, want));
    let _ = ETH_P_8021Q;
}

#[test]
fn tunnel_packet_from_a_host_that_is_not_a_balancer_is_dropped() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    // Any host that can reach the node: a client, another WAF node, the internet.
    for (name, src, dst, flow) in [
        ("IPIP", "10.0.0.99", NODE_V4, to_vip4()),
        ("IP6IP6", "fd00::99", NODE_V6, to_vip6()),
        ("4in6", CLIENT6, NODE_V6, to_vip4()),
        ("6in4", CLIENT4, NODE_V4, to_vip6()),
    ] {
        let (run, c) = d.run_counted(&tunnel_frame(src, dst, &flow.l3()));
        assert_eq!(run.action, XDP_DROP, "{name} from {src}");
        assert_eq!(c, counts(&[(DropSource, 1)]), "{name} from {src}");
    }
}

#[test]
fn tunnel_packet_from_a_balancer_to_an_address_that_is_not_a_vip_is_dropped() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    // The node's own address, a neighbour, the internet: never through the tunnel.
    for (src, dst, inner) in [
        (TUNNEL_V4, NODE_V4, Flow::tcp(CLIENT4, 40000, NODE_V4, 22)),
        (TUNNEL_V4, NODE_V4, Flow::udp(CLIENT4, 40000, "192.0.2.1", 53)),
        (TUNNEL_V6, NODE_V6, Flow::tcp(CLIENT6, 40000, NODE_V6, 22)),
    ] {
        let (run, c) = d.run_counted(&tunnel_frame(src, dst, &inner.l3()));
        assert_eq!(run.action, XDP_DROP, "inner to {}", inner.dst);
        assert_eq!(c, counts(&[(DropNotVip, 1)]), "inner to {}", inner.dst);
    }
}

#[test]
fn tunnel_packet_to_another_host_passes_untouched() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    for (src, dst, flow) in
        [(TUNNEL_V4, "10.0.0.12", to_vip4()), (TUNNEL_V6, "fd00::12", to_vip6())]
    {
        let frame = tunnel_frame(src, dst, &flow.l3());
        let (run, c) = d.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame), "to {dst}");
        assert_eq!(c, counts(&[(PassNotTunnel, 1)]));
    }
}

#[test]
fn plain_traffic_passes_untouched() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    let gre =
        ethernet(ETH_P_IP, &ipv4_packet(ipv4_header(TUNNEL_V4, NODE_V4, IpNumber::GRE), &[0; 24]));
    let arp = ethernet(0x0806, &[0u8; 28]);
    for frame in [
        Flow::tcp(CLIENT4, 40000, NODE_V4, 80).frame(),
        Flow::udp(CLIENT6, 40000, NODE_V6, 53).frame(),
        to_vip4().frame(),
        gre,
        arp,
        // An IPv4 header cut short (BPF_PROG_TEST_RUN takes no frame under 14 bytes).
        tunnel_frame(TUNNEL_V4, NODE_V4, &to_vip4().l3())[..14 + 8].to_vec(),
    ] {
        let (run, c) = d.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
        assert_eq!(c, counts(&[(PassNotTunnel, 1)]));
    }
}

#[test]
fn unusable_tunnel_packet_from_a_balancer_is_dropped_as_malformed() {
    needs_root!();
    let d = Decapsulator::new(&standard_rules());
    let inner = to_vip4().l3();
    let good = tunnel_frame(TUNNEL_V4, NODE_V4, &inner);
    let cut_inner = good[..14 + 20 + 12].to_vec();
    let mut wrong_version = good.clone();
    wrong_version[14 + 20] = 0x65; // IPIP announcing IPv4, carrying "version 6"
    let mut short_ihl = good.clone();
    short_ihl[14 + 20] = 0x44;
    let mut fragment = good.clone();
    fragment[14 + 6] = 0x20; // MF
    let six = tunnel_frame(TUNNEL_V6, NODE_V6, &to_vip6().l3());
    let mut six_as_four = six.clone();
    six_as_four[14 + 40] = 0x45; // IP6IP6 announcing IPv6, carrying "version 4"
    for (name, frame) in [
        ("inner header cut", cut_inner),
        ("inner version", wrong_version),
        ("inner IHL", short_ihl),
        ("outer fragment", fragment),
        ("inner version (v6)", six_as_four),
    ] {
        let (run, c) = d.run_counted(&frame);
        assert_eq!(run.action, XDP_DROP, "{name}");
        assert_eq!(c, counts(&[(DropMalformed, 1)]), "{name}");
    }
}

#[test]
fn rules_are_replaced_whole_and_read_back() {
    needs_root!();
    let mut d = Decapsulator::new(&standard_rules());
    assert_eq!(d.decap.rules().unwrap(), standard_rules());
    // A new balancer takes over: the old one's packets are dropped from now on.
    let mut rules = standard_rules();
    rules.balancers = ["10.0.0.3".parse().unwrap()].into();
    d.decap.set_rules(&rules).unwrap();
    assert_eq!(d.decap.rules().unwrap(), rules);
    let flow = to_vip4();
    assert_eq!(d.run(&tunnel_frame(TUNNEL_V4, NODE_V4, &flow.l3())).action, XDP_DROP);
    assert_eq!(d.run(&tunnel_frame("10.0.0.3", NODE_V4, &flow.l3())).action, XDP_PASS);
    let c = d.counters();
    assert_eq!((c.get(DropSource), c.get(Decapsulated)), (1, 1));
}

#[test]
fn rules_with_an_empty_set_are_refused() {
    needs_root!();
    let mut d = Decapsulator::new(&standard_rules());
    let mut rules = standard_rules();
    rules.balancers.clear();
    let err = d.decap.set_rules(&rules).unwrap_err().to_string();
    assert!(err.contains("`balancers` is empty"), "{err}");
    assert_eq!(d.decap.rules().unwrap(), standard_rules(), "nothing changed");
}
