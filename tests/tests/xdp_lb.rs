//! Packet-level specification of `xdp-lb`: every case runs the real compiled
//! object through BPF_PROG_TEST_RUN, with maps filled by the controller's writer,
//! and checks the verdict, the frame that comes out, and the counters it moved.
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
};

use etherparse::{IpFragOffset, IpNumber, Ipv4Options};
use lb_common::{
    BackendState::*,
    Counter::*,
    FlowKey, FlowKey4,
    ForwardingMode::*,
    flow_table::{State, WAYS},
    proto,
};
use xdplb_tests::{
    balancer::*,
    packet::{
        BROADCAST_MAC, CLIENT_MAC, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Flow, LB_MAC,
        Outer, PEER_MAC, VRRP_VMAC, addressed_to, decode_too_big, ethernet, ipv4_header,
        ipv4_packet, ipv6_header, ipv6_packet,
    },
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

fn tcp4() -> Flow {
    Flow::tcp(CLIENT4, 40000, VIP4, 80)
}
fn tcp6() -> Flow {
    Flow::tcp(CLIENT6, 40000, VIP6, 80)
}
fn udp4() -> Flow {
    Flow::udp(CLIENT4, 40000, VIP4, 53)
}
fn udp6() -> Flow {
    Flow::udp(CLIENT6, 40000, VIP6, 53)
}

/// Forwarded in dsr mode: only the MACs change, the IP packet arrives byte for byte.
fn assert_dsr(lb: &Balancer, flow: &Flow, vip: &str, run: &Run) {
    assert_eq!(run.action, XDP_TX);
    let d = run.decoded();
    let want = lb.predict(vip, flow);
    assert_eq!(lb.receiver(run), want);
    assert_eq!(d.src_mac, LB_MAC, "source MAC is the balancer's");
    assert!(d.outer.is_none(), "dsr adds no header");
    assert_eq!(d.inner, flow.l3(), "IP packet untouched (addresses, TTL, checksums)");
}

/// Forwarded in ipip mode: the original IP packet, intact, under a correct outer header.
fn assert_encapsulated(lb: &Balancer, flow: &Flow, vip: &str, run: &Run) -> Outer {
    assert_eq!(run.action, XDP_TX);
    let d = run.decoded();
    let want = lb.predict(vip, flow);
    assert_eq!(lb.receiver(run), want);
    assert_eq!(d.src_mac, LB_MAC);
    let inner = flow.l3();
    assert_eq!(d.inner, inner, "inner packet untouched");
    let outer = d.outer.clone().expect("an outer header");
    let inner_is_v4 = flow.src.is_ipv4();
    match &outer {
        Outer::V4(h) => {
            assert_eq!(d.ether_type, ETH_P_IP);
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "outer IPv4 checksum");
            assert_eq!(h.total_len as usize, inner.len() + 20, "outer total length");
            assert_eq!(h.time_to_live, 64);
            assert!(h.dont_fragment);
            assert_eq!(h.source, TUNNEL_V4.parse::<Ipv4Addr>().unwrap().octets());
            assert_eq!(h.protocol, if inner_is_v4 { IpNumber::IPV4 } else { IpNumber::IPV6 });
        }
        Outer::V6(h) => {
            assert_eq!(d.ether_type, ETH_P_IPV6);
            assert_eq!(h.payload_length as usize, inner.len(), "outer payload length");
            assert_eq!(h.hop_limit, 64);
            assert_eq!(h.source, TUNNEL_V6.parse::<Ipv6Addr>().unwrap().octets());
            assert_eq!(h.next_header, if inner_is_v4 { IpNumber::IPV4 } else { IpNumber::IPV6 });
        }
    }
    outer
}

fn new_flow_counts(syn: bool) -> std::collections::BTreeMap<&'static str, u64> {
    counts(&[(ActionTx, 1), (if syn { ConnSyn } else { ConnMiss }, 1)])
}

// ---- forwarding, dsr ------------------------------------------------------

#[test]
fn dsr_tcp_syn_v4_goes_to_the_ring_backend_with_only_macs_rewritten() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (run, c) = lb.run_counted(&tcp4().frame());
    assert_dsr(&lb, &tcp4(), "web4", &run);
    assert_eq!(c, new_flow_counts(true));
}

#[test]
fn dsr_tcp_syn_v6_goes_to_the_ring_backend_with_only_macs_rewritten() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (run, c) = lb.run_counted(&tcp6().frame());
    assert_dsr(&lb, &tcp6(), "web6", &run);
    assert_eq!(c, new_flow_counts(true));
}

#[test]
fn dsr_udp_v4_is_forwarded_and_creates_a_connection_entry() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (run, c) = lb.run_counted(&udp4().frame());
    assert_dsr(&lb, &udp4(), "dns4", &run);
    assert_eq!(c, new_flow_counts(false));
    assert!(lb.conn(&udp4()).is_some());
}

#[test]
fn dsr_udp_v6_is_forwarded() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (run, c) = lb.run_counted(&udp6().frame());
    assert_dsr(&lb, &udp6(), "dns6", &run);
    assert_eq!(c, new_flow_counts(false));
}

// ---- forwarding, ipip -----------------------------------------------------

#[test]
fn ipip_tcp_v4_is_encapsulated_in_ipv4_to_the_backend() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let (run, c) = lb.run_counted(&tcp4().frame());
    let Outer::V4(h) = assert_encapsulated(&lb, &tcp4(), "web4", &run) else { panic!("want IPIP") };
    let want = lb.predict("web4", &tcp4());
    let addr = lb.plan.vips[0].backends.iter().find(|b| b.name == want).unwrap().address;
    assert_eq!(IpAddr::from(h.destination), addr);
    assert_eq!(c, new_flow_counts(true));
}

#[test]
fn ipip_tcp_v6_is_encapsulated_in_ipv6_with_a_flow_label() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let run = lb.run(&tcp6().frame());
    let Outer::V6(h) = assert_encapsulated(&lb, &tcp6(), "web6", &run) else {
        panic!("want IP6IP6")
    };
    let label = lb_common::hash::flow_label(&flow_key(&tcp6()));
    assert_eq!(h.flow_label.value(), label, "flow label from the flow's 5-tuple");
    let Outer::V6(later) = lb.run(&tcp6().ack().frame()).decoded().outer.unwrap() else {
        panic!("want IP6IP6")
    };
    assert_eq!(later.flow_label.value(), label, "the same for every packet of the flow");
}

#[test]
fn ipip_udp_v4_is_encapsulated() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let run = lb.run(&udp4().frame());
    assert!(matches!(assert_encapsulated(&lb, &udp4(), "dns4", &run), Outer::V4(_)));
}

#[test]
fn ipip_udp_v6_is_encapsulated() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let run = lb.run(&udp6().frame());
    assert!(matches!(assert_encapsulated(&lb, &udp6(), "dns6", &run), Outer::V6(_)));
}

#[test]
fn ipip_v4_vip_to_v6_backend_is_4in6() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = Flow::tcp(CLIENT4, 40000, MIXED_VIP4, 80);
    let run = lb.run(&flow.frame());
    let Outer::V6(h) = assert_encapsulated(&lb, &flow, "mixed4", &run) else { panic!("want 4in6") };
    assert_eq!(h.destination, "fd00::21".parse::<Ipv6Addr>().unwrap().octets());
}

#[test]
fn ipip_v6_vip_to_v4_backend_is_6in4() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = Flow::tcp(CLIENT6, 40000, MIXED_VIP6, 80);
    let run = lb.run(&flow.frame());
    let Outer::V4(h) = assert_encapsulated(&lb, &flow, "mixed6", &run) else { panic!("want 6in4") };
    assert_eq!(h.destination, [10, 0, 0, 31]);
}

#[test]
fn wildcard_port_vip_matches_every_port() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    for port in [1, 80, 443, 8443, 65535] {
        let flow = Flow::tcp(CLIENT4, 40000, WILDCARD_VIP4, port);
        let run = lb.run(&flow.frame());
        assert_dsr(&lb, &flow, "any4", &run);
    }
    assert_eq!(lb.vip_traffic("any4").packets, 5);
}

#[test]
fn exact_port_vip_wins_over_a_wildcard_on_the_same_address() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    lb.plan.vips.push(vip("all4", VIP4, 0, proto::TCP, vec![backend("catch-all", "10.0.0.99")]));
    lb.apply();
    let run = lb.run(&tcp4().frame());
    assert_dsr(&lb, &tcp4(), "web4", &run);
    let other = Flow::tcp(CLIENT4, 40000, VIP4, 8080);
    assert_eq!(lb.receiver(&lb.run(&other.frame())), "catch-all");
}

#[test]
fn vip_address_on_an_unconfigured_port_passes_untouched() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let frame = Flow::tcp(CLIENT4, 40000, VIP4, 22).frame();
    let (run, c) = lb.run_counted(&frame);
    assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
}

#[test]
fn udp_to_a_tcp_only_vip_port_passes() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let frame = Flow::udp(CLIENT4, 40000, VIP4, 80).frame();
    let (run, c) = lb.run_counted(&frame);
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
}

#[test]
fn non_vip_traffic_passes_untouched() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    for flow in [Flow::tcp(CLIENT4, 1, "192.0.2.1", 80), Flow::udp(CLIENT6, 1, "2001:db8::99", 53)]
    {
        let frame = flow.frame();
        let (run, c) = lb.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
        assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
    }
}

#[test]
fn arp_passes_untouched() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let mut arp = vec![0u8; 28];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    let frame = ethernet(ETH_P_ARP, &arp);
    let (run, c) = lb.run_counted(&frame);
    assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotIp, 1)]));
}

#[test]
fn other_ip_protocols_to_a_vip_address_pass() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let gre = ipv4_packet(ipv4_header(CLIENT4, VIP4, IpNumber::GRE), &[0; 8]);
    let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &gre));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
}

// ---- destination MAC --------------------------------------------------------

/// Every kind of VIP traffic: a SYN, a mid-flow ACK, UDP, IPv4 and IPv6.
fn vip_flows() -> [Flow; 4] {
    [tcp4(), tcp6().ack(), udp4(), udp6()]
}

#[test]
fn vip_traffic_addressed_to_another_hosts_mac_passes_untouched_and_is_counted() {
    needs_root!();
    // A standby balancer's bridge port floods the active one's frames here; forwarding
    // them too would send one flow to two backends.
    for mode in [Dsr, Ipip] {
        let lb = Balancer::new(mode);
        for flow in vip_flows() {
            let frame = addressed_to(flow.frame(), PEER_MAC);
            let (run, c) = lb.run_counted(&frame);
            assert_eq!((run.action, &run.frame), (XDP_PASS, &frame), "{mode:?} {flow:?}");
            assert_eq!(c, counts(&[(ActionPass, 1), (PassNotForUs, 1)]));
            assert_eq!(lb.conn(&flow), None, "nothing remembered of another host's flow");
        }
    }
}

#[test]
fn broadcast_and_multicast_frames_to_a_vip_pass_to_the_kernel() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let ipv4_multicast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
    let ipv6_multicast = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
    for mac in [BROADCAST_MAC, ipv4_multicast, ipv6_multicast] {
        let frame = addressed_to(tcp4().frame(), mac);
        let (run, c) = lb.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame), "{mac:02x?}");
        assert_eq!(c, counts(&[(ActionPass, 1), (PassNotForUs, 1)]));
    }
}

#[test]
fn vip_traffic_addressed_to_the_interfaces_mac_is_forwarded() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    assert_eq!(lb.plan.config.src_mac, LB_MAC, "the fixtures' frames go to the configured MAC");
    for flow in [tcp4(), tcp6()] {
        let vip = if flow.src.is_ipv4() { "web4" } else { "web6" };
        assert_dsr(&lb, &flow, vip, &lb.run(&flow.frame()));
    }
    // The interface's MAC changed (the controller rewrites CONFIG): the new one is ours,
    // the old one another host's.
    let new_mac = [0x02, 0, 0, 0, 0, 0x42];
    lb.plan.config.src_mac = new_mac;
    lb.plan.config.accept_macs = lb_common::config::accept_macs(new_mac, &[]);
    lb.apply();
    let run = lb.run(&addressed_to(tcp4().frame(), new_mac));
    assert_eq!(lb.receiver(&run), lb.predict("web4", &tcp4()));
    let (run, c) = lb.run_counted(&tcp4().frame());
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotForUs, 1)]));
}

#[test]
fn vip_traffic_addressed_to_an_accepted_mac_is_forwarded() {
    needs_root!();
    // keepalived with use_vmac: the router sends to the VRRP virtual MAC.
    let mut lb = Balancer::new(Dsr);
    lb.plan.config.accept_macs = lb_common::config::accept_macs(LB_MAC, &[VRRP_VMAC]);
    lb.apply();
    let flow = tcp4();
    let run = lb.run(&addressed_to(flow.frame(), VRRP_VMAC));
    assert_eq!(lb.receiver(&run), lb.predict("web4", &flow));
    assert_eq!(run.decoded().src_mac, LB_MAC, "sent from the interface's own MAC");
    assert_dsr(&lb, &flow, "web4", &lb.run(&flow.frame()));
    let other_vrid = [0x00, 0x00, 0x5e, 0x00, 0x01, 52];
    let (run, c) = lb.run_counted(&addressed_to(flow.frame(), other_vrid));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotForUs, 1)]));
}

#[test]
fn traffic_to_other_addresses_is_not_for_a_vip_whatever_its_mac() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let frame = addressed_to(Flow::tcp(CLIENT4, 1, "192.0.2.1", 80).frame(), PEER_MAC);
    let (run, c) = lb.run_counted(&frame);
    assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
}

// ---- L2 / L3 variants -----------------------------------------------------

#[test]
fn vlan_tagged_frame_is_forwarded_dsr_with_its_tag() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp4().vlan(100);
    let run = lb.run(&flow.frame());
    assert_dsr(&lb, &flow, "web4", &run);
    assert_eq!(run.decoded().vlan, Some((ETH_P_8021Q, 100)));
}

#[test]
fn vlan_tagged_frame_is_encapsulated_behind_its_tag() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    for flow in [tcp4().vlan(7), tcp6().vlan(4094)] {
        let run = lb.run(&flow.frame());
        let vip = if flow.src.is_ipv4() { "web4" } else { "web6" };
        assert_encapsulated(&lb, &flow, vip, &run);
        assert_eq!(run.decoded().vlan, Some((ETH_P_8021Q, flow.vlan.unwrap())));
    }
}

fn tcp4_with_options() -> Vec<u8> {
    let tcp = &tcp4().l3()[20..];
    let mut h = ipv4_header(CLIENT4, VIP4, IpNumber::TCP);
    h.options = Ipv4Options::try_from(&[1u8, 1, 1, 0, 0x94, 4, 0, 0][..]).unwrap();
    ipv4_packet(h, tcp)
}

#[test]
fn ipv4_with_options_is_matched_on_the_ports_after_the_options() {
    needs_root!();
    for mode in [Dsr, Ipip] {
        let lb = Balancer::new(mode);
        let l3 = tcp4_with_options();
        let run = lb.run(&ethernet(ETH_P_IP, &l3));
        assert_eq!(run.action, XDP_TX);
        assert_eq!(lb.receiver(&run), lb.predict("web4", &tcp4()));
        assert_eq!(run.decoded().inner, l3, "options kept ({mode:?})");
    }
}

// ---- too big for the tunnel -------------------------------------------------

/// A full-size segment of `flow`: an IP packet of exactly `l3` bytes.
fn full_size(flow: Flow, l3: usize) -> Flow {
    let headers = flow.ack().l3().len() - 100;
    flow.ack().payload(l3 - headers)
}

/// The answer must come back to the sender from the VIP, quote the offending
/// packet's first bytes, and advertise `mtu`.
fn assert_too_big(run: &Run, flow: &Flow, mtu: u32) {
    assert_eq!(run.action, XDP_TX, "answered back out");
    let a = decode_too_big(&run.frame).unwrap_or_else(|e| panic!("not a too-big answer: {e}"));
    assert_eq!((a.dst_mac, a.src_mac), (CLIENT_MAC, LB_MAC), "back to the sender, from us");
    assert_eq!((a.src, a.dst), (flow.dst, flow.src), "from the VIP to the client");
    assert_eq!(a.mtu, mtu, "the MTU that fits after encapsulation");
    assert_eq!(a.quote, flow.l3()[..lb_common::limits::TOO_BIG_QUOTE], "quotes the packet's start");
}

#[test]
fn ipip_full_size_ipv4_segment_is_answered_with_fragmentation_needed() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = full_size(tcp4(), 1500);
    let (run, c) = lb.run_counted(&flow.frame());
    assert_too_big(&run, &flow, MTU - 20);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1), (IcmpTooBigSent, 1)]));
    assert_eq!(lb.vip_traffic("web4").packets, 0, "nothing reached a backend");
}

#[test]
fn ipip_full_size_ipv6_segment_is_answered_with_packet_too_big() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = full_size(tcp6(), 1500);
    let (run, c) = lb.run_counted(&flow.frame());
    assert_too_big(&run, &flow, MTU - 40);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1), (IcmpTooBigSent, 1)]));
}

#[test]
fn too_big_answer_advertises_the_room_left_by_the_backends_outer_header() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    // An IPv4 VIP whose backend is IPv6: the outer header is 40 bytes.
    let flow = full_size(Flow::tcp(CLIENT4, 40000, MIXED_VIP4, 80), 1480);
    assert_too_big(&lb.run(&flow.frame()), &flow, MTU - 40);
    // An IPv6 VIP whose backend is IPv4: 20 bytes.
    let flow = full_size(Flow::tcp(CLIENT6, 40000, MIXED_VIP6, 80), 1500);
    assert_too_big(&lb.run(&flow.frame()), &flow, MTU - 20);
}

#[test]
fn segment_that_fits_exactly_is_encapsulated() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    for (flow, vip) in [(full_size(tcp4(), 1480), "web4"), (full_size(tcp6(), 1460), "web6")] {
        let run = lb.run(&flow.frame());
        assert_encapsulated(&lb, &flow, vip, &run);
    }
}

#[test]
fn vlan_tagged_too_big_segment_is_answered_on_its_vlan() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = full_size(tcp4(), 1500).vlan(7);
    let run = lb.run(&flow.frame());
    assert_too_big(&run, &flow, MTU - 20);
    assert_eq!(run.decoded().vlan, Some((ETH_P_8021Q, 7)));
}

#[test]
fn dsr_forwards_full_size_segments_unchanged() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    for (flow, vip) in [(full_size(tcp4(), 1500), "web4"), (full_size(tcp6(), 1500), "web6")] {
        let run = lb.run(&flow.frame());
        assert_dsr(&lb, &flow, vip, &run);
    }
}

#[test]
fn too_big_ipv4_with_df_clear_is_dropped_and_counted_not_answered() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let mut l3 = full_size(tcp4(), 1500).l3();
    l3[6] &= !0x40; // DF off
    let mut h = etherparse::Ipv4Header::from_slice(&l3).unwrap().0;
    h.header_checksum = h.calc_header_checksum();
    l3[..20].copy_from_slice(&h.to_bytes());
    let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &l3));
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (ConnMiss, 1), (DropTooBig, 1)]));
}

#[test]
fn too_big_answers_are_rate_limited_per_cpu() {
    use lb_common::limits::{TOO_BIG_BURST, TOO_BIG_PER_SEC};
    needs_root!();
    // The budget is per CPU: stay on one while sending.
    pin_to_one_cpu();
    let lb = Balancer::new(Ipip);
    let frame = full_size(tcp4(), 1500).frame();
    let sent = TOO_BIG_BURST * 3;
    let started = std::time::Instant::now();
    let answered = (0..sent).filter(|_| lb.run(&frame).action == XDP_TX).count() as u64;
    let took = started.elapsed();
    // The burst, plus what the rate refilled meanwhile.
    let refilled = took.as_nanos() as u64 * TOO_BIG_PER_SEC / 1_000_000_000;
    let most = TOO_BIG_BURST + refilled + 1;
    assert!(
        (TOO_BIG_BURST..=most).contains(&answered),
        "{answered} of {sent} answered in {took:?}"
    );
    let c = lb.counters();
    assert_eq!(c.get(IcmpTooBigSent), answered);
    assert_eq!(c.get(DropTooBigRateLimited), sent - answered);
    assert_eq!(c.get(ActionDrop), sent - answered);
}

fn pin_to_one_cpu() {
    on_cpu(0);
}

/// Runs the calling thread (and so its test runs) on CPU `cpu` from now on.
fn on_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "pinning to CPU {cpu} (this test needs two CPUs)"
        );
    }
}

#[test]
fn icmp_error_too_big_to_encapsulate_is_not_answered() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = tcp4().sport(41234);
    // A router quoting a whole 1500-byte packet: 1528 bytes of ICMP in all.
    let big = flow.reversed().ack().payload(1460).l3();
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&big);
    let frame =
        ethernet(ETH_P_IP, &ipv4_packet(ipv4_header("192.0.2.254", VIP4, IpNumber::ICMP), &icmp));
    let (run, c) = lb.run_counted(&frame);
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (ConnMiss, 1), (DropTooBig, 1)]));
}

// ---- fragments ------------------------------------------------------------

fn fragment4(dst: &str, more: bool, offset: u16) -> Vec<u8> {
    let mut h = ipv4_header(CLIENT4, dst, IpNumber::UDP);
    h.more_fragments = more;
    h.fragment_offset = IpFragOffset::try_new(offset).unwrap();
    ethernet(ETH_P_IP, &ipv4_packet(h, &[0u8; 64]))
}

#[test]
fn first_ipv4_fragment_to_a_vip_is_counted_and_dropped() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (run, c) = lb.run_counted(&fragment4(VIP4, true, 0));
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (DropFragment, 1)]));
}

#[test]
fn later_ipv4_fragment_to_a_vip_is_counted_and_dropped() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (run, c) = lb.run_counted(&fragment4(VIP4, false, 185));
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (DropFragment, 1)]));
}

#[test]
fn ipv6_fragment_to_a_vip_is_counted_and_dropped() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let frag_hdr = [17u8, 0, 0, 1, 0, 0, 0, 42]; // next UDP, offset 0, M=1
    let mut payload = frag_hdr.to_vec();
    payload.extend_from_slice(&[0u8; 64]);
    let p = ipv6_packet(ipv6_header(CLIENT6, VIP6, IpNumber::IPV6_FRAGMENTATION_HEADER), &payload);
    let (run, c) = lb.run_counted(&ethernet(ETH_P_IPV6, &p));
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (DropFragment, 1)]));
}

#[test]
fn fragment_to_a_non_vip_address_passes() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let frame = fragment4("192.0.2.1", true, 0);
    let (run, c) = lb.run_counted(&frame);
    assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
}

// ---- truncated frames -----------------------------------------------------

#[test]
fn frame_cut_short_passes_until_it_names_a_vip_and_is_dropped_after() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    // (frame, cut before the destination address is whole, cut after it)
    let cases = [
        ("tcp4", tcp4().frame(), vec![14, 18, 33], vec![34, 40, 53]),
        ("udp4", udp4().frame(), vec![14, 33], vec![34, 41]),
        ("tcp6", tcp6().frame(), vec![14, 30, 53], vec![54, 60, 73]),
        ("udp6", udp6().frame(), vec![14, 53], vec![54, 61]),
        ("vlan tcp4", tcp4().vlan(5).frame(), vec![14, 15, 17, 18, 37], vec![38, 57]),
    ];
    for (name, frame, unreadable, cut) in cases {
        for len in unreadable {
            // No destination, so not a VIP's: the kernel gets it as it came.
            let (run, c) = lb.run_counted(&frame[..len]);
            assert_eq!(
                (run.action, &run.frame[..]),
                (XDP_PASS, &frame[..len]),
                "{name} cut to {len}"
            );
            assert_eq!(c, counts(&[(ActionPass, 1), (PassMalformed, 1)]), "{name} cut to {len}");
        }
        for len in cut {
            let (run, c) = lb.run_counted(&frame[..len]);
            assert_eq!(run.action, XDP_DROP, "{name} cut to {len} bytes");
            assert_eq!(c, counts(&[(ActionDrop, 1), (DropMalformed, 1)]), "{name} cut to {len}");
        }
        assert_eq!(lb.run(&frame).action, XDP_TX, "{name} whole");
    }
}

#[test]
fn ipv4_header_length_below_20_is_malformed() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let mut l3 = tcp4().l3();
    l3[0] = 0x44; // IHL 4 = 16 bytes
    let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &l3));
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (DropMalformed, 1)]));
}

// ---- strict headers ---------------------------------------------------------

/// `l3` (an IPv4 packet) with `edit` applied to its header and the header checksum redone.
fn ipv4_edited(l3: &[u8], edit: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut p = l3.to_vec();
    edit(&mut p);
    p[10..12].copy_from_slice(&[0, 0]);
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let sum = !ones_sum(&p[..ihl.clamp(20, p.len())]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

fn set_total_length(p: &mut [u8], len: usize) {
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

#[test]
fn ipv4_header_that_does_not_add_up_is_dropped_when_it_names_a_vip() {
    needs_root!();
    for mode in [Dsr, Ipip] {
        let lb = Balancer::new(mode);
        let l3 = tcp4().ack().l3(); // 20 + 20 + 100 bytes
        let cases = [
            ("version 6", ipv4_edited(&l3, |p| p[0] = 0x65)),
            ("header length 16", ipv4_edited(&l3, |p| p[0] = 0x44)),
            ("total length past the frame", ipv4_edited(&l3, |p| set_total_length(p, 141))),
            ("total length under the header", ipv4_edited(&l3, |p| set_total_length(p, 19))),
            ("TCP header past the total length", ipv4_edited(&l3, |p| set_total_length(p, 30))),
        ];
        for (name, bad) in cases {
            let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &bad));
            assert_eq!(run.action, XDP_DROP, "{name} ({mode:?})");
            assert_eq!(c, counts(&[(ActionDrop, 1), (DropMalformed, 1)]), "{name} ({mode:?})");
        }
    }
}

#[test]
fn malformed_packet_to_an_address_without_a_vip_leaves_untouched() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let l3 = Flow::tcp(CLIENT4, 40000, "192.0.2.1", 80).ack().l3();
    for bad in [
        ipv4_edited(&l3, |p| p[0] = 0x44),
        ipv4_edited(&l3, |p| set_total_length(p, 9000)),
        ipv4_edited(&l3, |p| p[0] = 0x65),
    ] {
        let frame = ethernet(ETH_P_IP, &bad);
        let (run, c) = lb.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame));
        assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
    }
}

#[test]
fn bytes_behind_a_short_total_length_stay_out_of_the_tunnel_and_out_of_the_mtu_check() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    // A 40-byte packet (a bare ACK) in a 1514-byte frame: the total length says 40.
    let ack = tcp4().ack().payload(0).l3();
    let mut l3 = ack.clone();
    l3.extend_from_slice(&[0xee; 1460]);
    let run = lb.run(&ethernet(ETH_P_IP, &l3));
    let flow = tcp4().ack().payload(0);
    let Outer::V4(h) = assert_encapsulated(&lb, &flow, "web4", &run) else { panic!("want IPIP") };
    assert_eq!(usize::from(h.total_len), 20 + ack.len(), "the outer length is the packet's");
    assert_eq!(run.frame.len(), 14 + 20 + ack.len(), "nothing rides behind it");
    // The other way round: a full-size segment whose header claims 40 bytes is not
    // let through at 1500 + 20 on the strength of its total length either.
    let mut seg = full_size(tcp4(), 1500).l3();
    set_total_length(&mut seg, 40);
    let run = lb.run(&ethernet(ETH_P_IP, &ipv4_edited(&seg, |_| {})));
    assert_eq!(run.action, XDP_TX);
    assert!(run.frame.len() <= 14 + MTU as usize, "a {}-byte frame on the wire", run.frame.len());
}

#[test]
fn ethernet_padding_is_kept_in_dsr_and_behind_the_tunnel() {
    needs_root!();
    let flow = tcp4().ack().payload(0); // 40 bytes of IP: a 54-byte frame, padded to 60
    let mut padded = flow.frame();
    padded.resize(60, 0xee);
    let lb = Balancer::new(Dsr);
    let run = lb.run(&padded);
    assert_eq!(run.action, XDP_TX);
    assert_eq!(run.frame[12..], padded[12..], "dsr changes the MACs only");
    // The outer length is the packet's, so the padding behind it is padding again:
    // not cut (a helper call on every padded packet), not in the tunnel.
    let lb = Balancer::new(Ipip);
    let run = lb.run(&padded);
    let Outer::V4(h) = assert_encapsulated(&lb, &flow, "web4", &run) else { panic!("want IPIP") };
    assert_eq!(usize::from(h.total_len), 20 + 40);
    assert_eq!(run.frame[14 + 20 + 40..], padded[54..], "the padding rides behind the tunnel");
}

/// An IPv6 extension header (RFC 8200, 4.3): next header, length in 8-byte units
/// beyond the first 8, then options (PadN) to fill it.
fn ext_header(next: u8, units: u8) -> Vec<u8> {
    let mut h = vec![next, units, 1, 4 + 8 * units];
    h.resize(8 + 8 * usize::from(units), 0);
    h
}

/// `flow`'s IPv6 packet with extension headers `kinds` (next-header values) in front
/// of its transport header.
fn ipv6_with_extensions(flow: &Flow, kinds: &[u8]) -> Vec<u8> {
    let l3 = flow.l3();
    let transport = l3[6];
    let mut payload = Vec::new();
    for (i, _) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(transport);
        payload.extend(ext_header(next, u8::try_from(i % 2).unwrap()));
    }
    payload.extend_from_slice(&l3[40..]);
    let first = IpNumber(kinds.first().copied().unwrap_or(transport));
    ipv6_packet(ipv6_header(CLIENT6, VIP6, first), &payload)
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const DEST_OPTIONS: u8 = 60;
const AH: u8 = 51;

#[test]
fn ipv6_hop_by_hop_routing_and_destination_options_are_skipped_to_the_ports() {
    needs_root!();
    for mode in [Dsr, Ipip] {
        let lb = Balancer::new(mode);
        for kinds in
            [&[HOP_BY_HOP][..], &[DEST_OPTIONS], &[HOP_BY_HOP, DEST_OPTIONS, ROUTING, DEST_OPTIONS]]
        {
            for flow in [tcp6().sport(41001), udp6().sport(41002)] {
                let l3 = ipv6_with_extensions(&flow, kinds);
                let (run, c) = lb.run_counted(&ethernet(ETH_P_IPV6, &l3));
                let vip =
                    if matches!(flow.l4, xdplb_tests::packet::L4::Udp) { "dns6" } else { "web6" };
                assert_eq!(lb.receiver(&run), lb.predict(vip, &flow), "{kinds:?} ({mode:?})");
                assert_eq!(run.decoded().inner, l3, "forwarded whole ({kinds:?}, {mode:?})");
                assert_eq!(c[ActionTx.name()], 1);
            }
        }
    }
}

#[test]
fn ipv6_chain_longer_than_four_or_with_headers_not_walked_passes_to_the_kernel() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    for kinds in [&[DEST_OPTIONS; 5][..], &[AH], &[HOP_BY_HOP, AH]] {
        let frame = ethernet(ETH_P_IPV6, &ipv6_with_extensions(&tcp6(), kinds));
        let (run, c) = lb.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame), "{kinds:?}");
        assert_eq!(c, counts(&[(ActionPass, 1), (PassIpv6Ext, 1)]), "{kinds:?}");
    }
}

#[test]
fn ipv6_header_that_does_not_add_up_is_dropped_when_it_names_a_vip() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let good = ipv6_with_extensions(&tcp6(), &[HOP_BY_HOP, ROUTING]);
    let set_payload = |p: &mut Vec<u8>, len: u16| p[4..6].copy_from_slice(&len.to_be_bytes());
    let mut past_frame = good.clone();
    set_payload(&mut past_frame, u16::try_from(good.len() - 40 + 1).unwrap());
    let mut zero = good.clone();
    set_payload(&mut zero, 0);
    let mut version = good.clone();
    version[0] = 0x40;
    let mut ext_past_packet = good.clone();
    ext_past_packet[40 + 1] = 200; // the hop-by-hop header claims 1608 bytes
    let cut_in_chain = good[..49].to_vec(); // 1 byte of the routing header
    let mut cut_in_chain_consistent = cut_in_chain.clone();
    set_payload(&mut cut_in_chain_consistent, 9);
    for (name, bad) in [
        ("payload length past the frame", past_frame),
        ("payload length 0 (jumbogram)", zero),
        ("version 4", version),
        ("extension header past the packet", ext_past_packet),
        ("cut inside the chain", cut_in_chain),
        ("chain ends inside the packet", cut_in_chain_consistent),
    ] {
        let (run, c) = lb.run_counted(&ethernet(ETH_P_IPV6, &bad));
        assert_eq!(run.action, XDP_DROP, "{name}");
        assert_eq!(c, counts(&[(ActionDrop, 1), (DropMalformed, 1)]), "{name}");
    }
}

// ---- connection table -----------------------------------------------------

#[test]
fn established_flow_stays_on_its_backend_when_the_backend_set_changes() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    // Open 200 flows, then add a fourth backend: the ring moves ~1/4 of the slots.
    let flows: Vec<Flow> = (0..200).map(|i| tcp4().sport(10000 + i)).collect();
    let first: Vec<String> = flows.iter().map(|f| open(&lb, f)).collect();
    lb.plan.vips[0].backends.push(backend("waf-4", "10.0.0.14"));
    lb.apply();
    let moved_in_ring =
        flows.iter().zip(&first).filter(|(f, b)| lb.predict("web4", f) != **b).count();
    assert!(moved_in_ring > 10, "the new ring must move some of these flows ({moved_in_ring})");
    let before = lb.counters();
    for (flow, backend) in flows.iter().zip(&first) {
        assert_eq!(&lb.receiver(&lb.run(&flow.ack().frame())), backend, "{flow:?} moved");
    }
    let c = deltas(&before, &lb.counters());
    assert_eq!(c, counts(&[(ActionTx, 200), (ConnHit, 200)]));
}

#[test]
fn non_syn_without_an_entry_is_hashed_and_then_remembered() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp4().ack();
    let (run, c) = lb.run_counted(&flow.frame());
    assert_dsr(&lb, &flow, "web4", &run);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]));
    let conn = lb.conn(&flow).expect("an entry");
    assert_eq!(Some(conn.backend), lb.writer.backend_index("web4", &lb.predict("web4", &flow)));
    let (_, c) = lb.run_counted(&flow.frame());
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
}

/// Opens a TCP flow (its SYN, then the handshake's ACK); returns where both went.
fn open(lb: &Balancer, flow: &Flow) -> String {
    let (run, c) = lb.run_counted(&flow.syn().frame());
    let to = lb.receiver(&run);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnSyn, 1)]));
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), to, "the handshake's ACK follows its SYN");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
    to
}

/// A TCP flow the ring gives `from` (source ports from `first` on).
fn flow_to(lb: &Balancer, from: &str, first: u16) -> Flow {
    (0..1000)
        .map(|i| tcp4().sport(first + i))
        .find(|f| lb.predict("web4", f) == from)
        .expect("some flow hashes to the backend")
}

/// An open flow (in the table) on `from`; the callers then change its state.
fn pinned_flow(lb: &mut Balancer, from: &str) -> Flow {
    let flow = flow_to(lb, from, 20000);
    assert_eq!(open(lb, &flow), from);
    flow
}

/// What another balancer's peer sync installs (as `sync::install` does): the
/// table's entry for `flow` replaced by one naming web4's `backend`.
fn synced_entry(lb: &Balancer, flow: &Flow, backend: &str) {
    use lb_userspace::sync::install::ConnTable as _;
    let mut conns = lb.writer.maps().conns_handle().unwrap();
    let index = lb.writer.backend_index("web4", backend).unwrap();
    let generation = lb.writer.maps().backend(index).unwrap().generation;
    conns.remove(&flow_key(flow));
    assert!(
        conns.insert_new(&flow_key(flow), &lb_common::ConnValue { backend: index, generation })
    );
}

/// A flow whose SYN went to `from`, and no further.
fn half_open(lb: &Balancer, from: &str) -> Flow {
    let flow = flow_to(lb, from, 30000);
    assert_eq!(lb.receiver(&lb.run(&flow.frame())), from);
    flow
}

#[test]
fn hit_on_a_down_backend_is_rehashed_to_a_live_one_at_once() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-2");
    lb.set_state("web4", "waf-2", Down);
    let (run, c) = lb.run_counted(&flow.ack().frame());
    let now = lb.receiver(&run);
    assert_ne!(now, "waf-2");
    assert_eq!(now, lb.predict("web4", &flow));
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnRehash, 1)]));
    // The entry now names the new backend: the next packet is a plain hit.
    let (_, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
}

#[test]
fn syn_is_hashed_even_when_the_table_names_another_backend() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-1");
    // Drain waf-1: the table still names it (draining keeps flows), the ring does not.
    lb.set_state("web4", "waf-1", Draining);
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), "waf-1");
    // A new connection on the same 5-tuple (the client reused its port).
    let (run, c) = lb.run_counted(&flow.syn().frame());
    let to = lb.receiver(&run);
    assert_ne!(to, "waf-1");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnSyn, 1)]));
    // Its handshake's ACK goes where the SYN went, not where the old entry said.
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), to);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), to);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
}

#[test]
fn a_syn_alone_puts_nothing_in_the_table_its_handshakes_ack_does() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp4();
    assert_eq!(lb.run(&flow.syn().frame()).action, XDP_TX);
    assert_eq!(lb.run(&flow.syn().frame()).action, XDP_TX, "a retransmitted SYN");
    assert_eq!(lb.conn(&flow), None, "a SYN is not a connection yet");
    let to = lb.receiver(&lb.run(&flow.ack().frame()));
    let conn = lb.conn(&flow).expect("the ACK completed the handshake");
    assert_eq!(Some(conn.backend), lb.writer.backend_index("web4", &to));
}

#[test]
fn the_connection_table_is_counted_in_batches_however_they_split_it() {
    needs_root!();
    on_cpu(0);
    let lb = Balancer::new(Dsr);
    let conns = lb.map(lb_common::map_names::CONNS);
    let count =
        |batch| lb_userspace::conn_table::count_by::<FlowKey>(conns.fd().as_fd(), batch).unwrap();
    assert_eq!(count(64), 0);
    // Fewer IPv6 flows than one CPU's share of the fixtures' 2048 entries: none evicted.
    for port in 0..1000 {
        assert_eq!(lb.run(&udp6().sport(1000 + port).frame()).action, XDP_TX);
    }
    for batch in [64, 500, 999, 1000, 4096] {
        assert_eq!(count(batch), 1000, "{batch} per call");
    }
    assert_eq!(lb_userspace::conn_table::count::<FlowKey>(conns.fd().as_fd()).unwrap(), 1000);
}

#[test]
fn ipv4_flows_take_the_table_of_sets_and_ipv6_flows_the_40_byte_lru() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let (v4, v6) = (lb.flows4(), lb.map(lb_common::map_names::CONNS));
    let count = || {
        let n6 = lb_userspace::conn_table::count::<FlowKey>(v6.fd().as_fd()).unwrap();
        (v4.count().established, n6)
    };
    for port in 0..30 {
        assert_eq!(lb.run(&udp4().sport(1000 + port).frame()).action, XDP_TX);
    }
    for port in 0..20 {
        assert_eq!(lb.run(&udp6().sport(1000 + port).frame()).action, XDP_TX);
    }
    assert_eq!(count(), (30, 20));
    // Each flow is found under its own key (and hits: counted conn_hit).
    let (a, b) = (udp4().sport(1000), udp6().sport(1000));
    assert!(lb.conn(&a).is_some() && lb.conn(&b).is_some());
    let before = lb.counters();
    for f in [&a, &b] {
        assert_eq!(lb.run(&f.frame()).action, XDP_TX);
    }
    assert_eq!(deltas(&before, &lb.counters()).get("conn_hit"), Some(&2));
    assert_eq!(count(), (30, 20));
}

#[test]
fn handshake_ack_follows_its_syn_when_the_ring_changed_in_between() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    // A backend joins while SYNs are out: each handshake completes where its SYN went.
    let flows: Vec<Flow> = (0..200).map(|i| tcp4().sport(10000 + i)).collect();
    let first: Vec<String> = flows.iter().map(|f| lb.receiver(&lb.run(&f.frame()))).collect();
    lb.plan.vips[0].backends.push(backend("waf-4", "10.0.0.14"));
    lb.apply();
    let moved = flows.iter().zip(&first).filter(|(f, b)| lb.predict("web4", f) != **b).count();
    assert!(moved > 10, "the new ring must move some of these flows ({moved})");
    let before = lb.counters();
    for (flow, backend) in flows.iter().zip(&first) {
        assert_eq!(&lb.receiver(&lb.run(&flow.ack().frame())), backend, "{flow:?} moved");
    }
    assert_eq!(deltas(&before, &lb.counters()), counts(&[(ActionTx, 200), (ConnHandshake, 200)]));
}

#[test]
fn handshake_ack_follows_its_syn_to_a_backend_drained_in_between() {
    needs_root!();
    let mut lb = Balancer::new(Ipip);
    let flow = half_open(&lb, "waf-3");
    lb.set_state("web4", "waf-3", Draining);
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), "waf-3", "a draining backend keeps the connections it accepted");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
}

#[test]
fn handshake_ack_whose_syn_went_to_a_backend_now_down_is_hashed_to_a_live_one() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = half_open(&lb, "waf-2");
    lb.set_state("web4", "waf-2", Down);
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), lb.predict("web4", &flow));
    assert_ne!(lb.receiver(&run), "waf-2");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]));
}

#[test]
fn handshake_ack_to_another_vip_from_the_same_client_ports_is_not_that_vips_handshake() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    // The flow hash leaves the VIP out (each VIP has its own ring), so these two
    // flows share a SYN array slot; the slot's tag names the VIP's address, and the
    // handshake's ACK, which looks no VIP up, is told apart by it alone.
    let to_web = tcp4();
    let to_mixed = Flow::tcp(CLIENT4, to_web.sport, MIXED_VIP4, 80);
    let web = lb.receiver(&lb.run(&to_web.frame()));
    let (run, c) = lb.run_counted(&to_mixed.ack().frame());
    assert_eq!(lb.receiver(&run), "v6-node", "mixed4's only backend");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]));
    let (run, c) = lb.run_counted(&to_web.ack().frame());
    assert_eq!(lb.receiver(&run), web, "web4's handshake is still pending");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
}

#[test]
fn handshake_ack_whose_vip_went_while_its_syn_was_pending_is_not_forwarded() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = half_open(&lb, "waf-2");
    let web = lb.plan.vips.remove(0);
    lb.apply();
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(run.action, XDP_PASS, "no VIP: the kernel's");
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
    // Back, the VIP's backend slots are new: its ring decides the flow.
    lb.plan.vips.insert(0, web);
    lb.apply();
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), lb.predict("web4", &flow));
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]));
}

#[test]
fn handshake_ack_follows_an_entry_peer_sync_wrote_while_its_syn_was_pending() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = half_open(&lb, "waf-2");
    // The peer that saw the handshake complete says waf-1: the table is read first.
    synced_entry(&lb, &flow, "waf-1");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), "waf-1", "the synced entry, not the pending SYN's backend");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
}

#[test]
fn a_spoofed_syn_flood_evicts_no_established_flow() {
    needs_root!();
    flood_keeps_established_flows(tcp4(), Flow::syn, 0, ("waf-4", "10.0.0.14"), spoofed4);
}

#[test]
fn a_forged_mid_flow_ack_flood_evicts_no_established_flow() {
    needs_root!();
    // ACKs of no handshake seen here: each is picked up as a flow of its own, and
    // takes only a free, pending or picked-up way.
    flood_keeps_established_flows(tcp4(), Flow::ack, 0, ("waf-4", "10.0.0.14"), spoofed4);
}

fn spoofed4(i: u32) -> IpAddr {
    let [_, _, hi, lo] = i.to_be_bytes();
    Ipv4Addr::new(100, 64, hi, lo).into()
}

#[test]
fn a_spoofed_syn_flood_evicts_no_established_ipv6_flow() {
    needs_root!();
    flood_keeps_established_flows(tcp6(), Flow::syn, 2, ("waf-4", "fd00::14"), |i| {
        Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, (i >> 16) as u16, i as u16).into()
    });
}

/// 500 flows like `flow` opened through VIP `vip` of the fixture's plan, then
/// 20 000 spoofed packets made by `kind` (a SYN, an ACK) from `source(i)`, then a
/// ring change that adds `new`: every flow established before the flood is still
/// in the table and on its backend.
fn flood_keeps_established_flows(
    flow: Flow,
    kind: impl Fn(Flow) -> Flow,
    vip: usize,
    new: (&str, &str),
    source: impl Fn(u32) -> IpAddr,
) {
    // The flood offers more than twice the fixtures' 8192 entries in new flows.
    let mut lb = Balancer::new(Dsr);
    let flows: Vec<Flow> = (0..500).map(|i| flow.sport(10000 + i)).collect();
    let first: Vec<String> = flows.iter().map(|f| open(&lb, f)).collect();
    // IPv4: a set holds four flows; with the table's seed random, five of these 500
    // share one of its 2048 sets in about one run in a hundred, and the fifth opened
    // takes the way of the one used longest ago, before any SYN of the flood.
    let established: Vec<(&Flow, &String)> =
        flows.iter().zip(&first).filter(|(f, _)| lb.conn(f).is_some()).collect();
    assert!(established.len() >= flows.len() - 2, "{} of 500 opened", established.len());
    // The clock steps, as `xdplb run` steps it, and the established flows send
    // nothing: theirs are the ways used longest ago, the first a full set gives up.
    lb.writer.maps().conn_epoch().unwrap().step_clock();
    for i in 0..20_000u32 {
        let spoofed = Flow { src: source(i), sport: 1024 + (i % 50_000) as u16, ..kind(flow) };
        assert_eq!(lb.run(&spoofed.frame()).action, XDP_TX);
    }
    let kept = established.iter().filter(|(f, _)| lb.conn(f).is_some()).count();
    assert_eq!(kept, established.len(), "established flows evicted by the flood");
    // And they still go to their backends after a ring change.
    lb.plan.vips[vip].backends.push(backend(new.0, new.1));
    lb.apply();
    for (flow, backend) in established {
        assert_eq!(&lb.receiver(&lb.run(&flow.ack().frame())), backend, "{flow:?} moved");
    }
}

#[test]
fn draining_backend_keeps_its_established_flow() {
    needs_root!();
    let mut lb = Balancer::new(Ipip);
    let flow = pinned_flow(&mut lb, "waf-3");
    lb.set_state("web4", "waf-3", Draining);
    for _ in 0..3 {
        let (run, c) = lb.run_counted(&flow.ack().frame());
        assert_eq!(lb.receiver(&run), "waf-3");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    }
}

#[test]
fn draining_backend_gets_no_new_flow() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    lb.set_state("web4", "waf-3", Draining);
    for i in 0..300 {
        let f = Flow::tcp(CLIENT4, 30000 + i, VIP4, 80);
        assert_ne!(lb.receiver(&lb.run(&f.frame())), "waf-3");
        let u = Flow::tcp(CLIENT4, 30000 + i, VIP4, 80).ack().sport(50000 + i);
        assert_ne!(lb.receiver(&lb.run(&u.frame())), "waf-3", "a miss must not pick it either");
    }
}

#[test]
fn slot_given_to_another_backend_does_not_inherit_old_flows() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-2");
    let old_index = lb.writer.backend_index("web4", "waf-2").unwrap();
    // waf-2 leaves; a new backend takes its table slot.
    lb.plan.vips[0].backends.retain(|b| b.name != "waf-2");
    lb.apply();
    lb.plan.vips[0].backends.push(backend("waf-9", "10.0.0.19"));
    lb.apply();
    assert_eq!(lb.writer.backend_index("web4", "waf-9"), Some(old_index), "slot reused");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(
        lb.receiver(&run),
        lb.predict("web4", &flow),
        "re-hashed, not sent to the slot's new owner blindly"
    );
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnRehash, 1)]));
}

#[test]
fn established_flows_of_a_vip_whose_port_changed_stop_on_the_old_port() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-2");
    lb.plan.vips[0].port = 8080;
    lb.apply();
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(run.action, XDP_PASS, "the old key is no VIP any more: {c:?}");
    assert_eq!(c, counts(&[(ActionPass, 1), (PassNotVip, 1)]));
    let moved = Flow::tcp(CLIENT4, 40000, VIP4, 8080).ack();
    assert_dsr(&lb, &moved, "web4", &lb.run(&moved.frame()));
}

#[test]
fn established_flows_of_a_vip_whose_address_changed_stop_on_the_old_address() {
    needs_root!();
    let mut lb = Balancer::new(Ipip);
    let flow = pinned_flow(&mut lb, "waf-1");
    lb.plan.vips[0].address = "203.0.113.99".parse().unwrap();
    lb.apply();
    assert_eq!(lb.run(&flow.ack().frame()).action, XDP_PASS);
}

#[test]
fn a_backend_slot_or_vip_slot_given_to_a_newcomer_starts_counting_from_zero() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-2");
    for _ in 0..5 {
        assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), "waf-2");
    }
    assert!(lb.backend_traffic("web4", "waf-2").packets >= 5);
    assert_eq!(lb.handshakes("web4", "waf-2"), shakes(1, 1, 0));
    lb.plan.vips[0].backends.retain(|b| b.name != "waf-2");
    lb.apply();
    lb.plan.vips[0].backends.push(backend("waf-9", "10.0.0.19"));
    lb.apply();
    assert_eq!(lb.backend_traffic("web4", "waf-9").packets, 0, "waf-2's packets are not waf-9's");
    assert_eq!(lb.handshakes("web4", "waf-9"), shakes(0, 0, 0), "nor its handshakes");
    let web4 = lb.writer.vip_index("web4").unwrap();
    assert!(lb.vip_traffic("web4").packets >= 5);
    let web = lb.plan.vips.remove(0);
    lb.apply();
    lb.plan.vips.insert(0, lb_userspace::desired::DesiredVip { name: "www4".into(), ..web });
    lb.apply();
    assert_eq!(lb.writer.vip_index("www4"), Some(web4));
    assert_eq!(lb.vip_traffic("www4").packets, 0, "web4's packets are not www4's");
}

/// What STATS and `vip`'s VIP_STATS entry hold, per CPU, as the data path wrote them.
fn raw_counts(lb: &Balancer, vip: &str) -> (Vec<lb_common::CounterSet>, Vec<lb_common::Traffic>) {
    use aya::maps::{Map, PerCpuArray};
    let stats: PerCpuArray<_, lb_common::CounterSet> =
        PerCpuArray::try_from(Map::PerCpuArray(lb.map(lb_common::map_names::STATS))).unwrap();
    let vips: PerCpuArray<_, lb_common::Traffic> =
        PerCpuArray::try_from(Map::PerCpuArray(lb.map(lb_common::map_names::VIP_STATS))).unwrap();
    let index = lb.writer.vip_index(vip).unwrap();
    (stats.get(&0, 0).unwrap().to_vec(), vips.get(&index, 0).unwrap().to_vec())
}

#[test]
fn a_table_hit_writes_only_its_backend_slot() {
    // One per-CPU record per hit (issue #13): no STATS bump, no VIP_STATS write.
    needs_root!();
    let mut lb = Balancer::new(Ipip);
    let flow = pinned_flow(&mut lb, "waf-3");
    let before = raw_counts(&lb, "web4");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), "waf-3");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]), "counted all the same");
    assert_eq!(raw_counts(&lb, "web4"), before, "in the backend's slot only");
}

#[test]
fn a_table_hit_is_counted_once_and_every_total_keeps_it_when_slots_change_hands() {
    // A hit counts only in its backend slot (lb_common::stats); action_tx,
    // conn_hit and the VIP's traffic are derived, and must neither lose nor
    // double a hit when the slot or the VIP index goes to another.
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-2");
    let hit = flow.ack().payload(300).frame();
    for _ in 0..5 {
        let (run, c) = lb.run_counted(&hit);
        assert_eq!(lb.receiver(&run), "waf-2");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    }
    let opened = (flow.syn().frame().len() + flow.ack().frame().len()) as u64;
    let want = lb_common::Traffic { packets: 7, bytes: opened + 5 * hit.len() as u64 };
    assert_eq!(lb.vip_traffic("web4"), want, "the handshake and the hits");
    assert_eq!(lb.backend_traffic("web4", "waf-2"), want);
    let counted = lb.counters();
    lb.plan.vips[0].backends.retain(|b| b.name != "waf-2");
    lb.apply();
    lb.plan.vips[0].backends.push(backend("waf-9", "10.0.0.19"));
    lb.apply();
    assert_eq!(lb.backend_traffic("web4", "waf-9").packets, 0, "waf-9 took waf-2's slot");
    assert_eq!(lb.vip_traffic("web4"), want, "web4 keeps what waf-2 counted");
    assert_eq!(lb.counters(), counted);
    let web = lb.plan.vips.remove(0);
    lb.apply();
    lb.plan.vips.insert(0, lb_userspace::desired::DesiredVip { name: "www4".into(), ..web });
    lb.apply();
    assert_eq!(lb.vip_traffic("www4"), lb_common::Traffic::default(), "www4 took web4's index");
    assert_eq!(lb.counters(), counted, "the totals keep web4's hits");
    let flow = tcp4().sport(40000);
    let to = open(&lb, &flow);
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), to);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    assert_eq!(lb.vip_traffic("www4").packets, 3);
}

#[test]
fn a_table_hit_answered_too_big_counts_as_a_hit_and_an_answer() {
    needs_root!();
    on_cpu(0); // a hit the front serves, as most hits are
    let mut lb = Balancer::new(Ipip);
    let flow = pinned_flow(&mut lb, "waf-1");
    let before = lb.vip_traffic("web4");
    let big = full_size(flow, 1500);
    let (run, c) = lb.run_counted(&big.frame());
    assert_too_big(&run, &big, MTU - 20);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1), (IcmpTooBigSent, 1)]));
    assert_eq!(lb.vip_traffic("web4"), before, "nothing more reached a backend");
}

// ---- the IPv4 table's sets (`FLOWS4`) ------------------------------------------

/// `n` TCP flows whose entries share one set of `FLOWS4`.
fn sharing_a_set(lb: &Balancer, n: usize) -> Vec<Flow> {
    let index = lb.flows4().index();
    let mut by_set = std::collections::HashMap::<usize, Vec<Flow>>::new();
    for port in 1024..=u16::MAX {
        let flow = tcp4().sport(port);
        let flows = by_set.entry(index.set(&FlowKey4::of(&flow_key(&flow)))).or_default();
        flows.push(flow);
        if flows.len() == n {
            return flows.clone();
        }
    }
    panic!("no {n} source ports share a set");
}

/// What `FLOWS4` holds for `flow`: its entry and state, read whole.
fn in_set(lb: &Balancer, flow: &Flow) -> Option<(lb_common::ConnValue, State)> {
    lb.flows4().get(&FlowKey4::of(&flow_key(flow)))
}

#[test]
fn flows_sharing_a_set_are_all_served_from_it_up_to_its_ways() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flows = sharing_a_set(&lb, WAYS);
    let to: Vec<String> = flows.iter().map(|f| open(&lb, f)).collect();
    for (flow, to) in flows.iter().zip(&to) {
        let (run, c) = lb.run_counted(&flow.ack().frame());
        assert_eq!(&lb.receiver(&run), to);
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    }
}

#[test]
fn a_flow_beyond_a_full_sets_ways_takes_the_way_used_longest_ago() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flows = sharing_a_set(&lb, WAYS + 1);
    for flow in &flows[..WAYS] {
        open(&lb, flow);
    }
    // A clock step later, every flow but the first is used again (each packet
    // stamps its way once a step); then the set's next flow arrives.
    lb.writer.maps().conn_epoch().unwrap().step_clock();
    for flow in &flows[1..WAYS] {
        assert_eq!(lb.run(&flow.ack().frame()).action, XDP_TX);
    }
    open(&lb, &flows[WAYS]);
    assert_eq!(lb.conn(&flows[0]), None, "the flow used longest ago gave its way up");
    for flow in &flows[1..] {
        let (_, c) = lb.run_counted(&flow.ack().frame());
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]), "{flow:?}");
    }
    let (_, c) = lb.run_counted(&flows[0].ack().frame());
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]), "a miss: the ring's pick");
}

#[test]
fn syns_never_take_an_established_flows_way_and_wait_in_the_syn_array_instead() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flows = sharing_a_set(&lb, WAYS + 3);
    let (established, syns) = flows.split_at(WAYS);
    for flow in established {
        open(&lb, flow);
    }
    // A SYN flood into the full set: each SYN goes out, none takes a way.
    for flow in syns {
        assert_eq!(lb.run(&flow.syn().frame()).action, XDP_TX);
        assert_eq!(in_set(&lb, flow), None, "{flow:?} waits elsewhere");
    }
    for flow in established {
        let (_, c) = lb.run_counted(&flow.ack().frame());
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]), "{flow:?} kept its way");
    }
    // A flooded handshake still completes where its SYN went (the SYN array),
    // and enters the set over the way used longest ago.
    let (run, c) = lb.run_counted(&syns[0].ack().frame());
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
    let to = lb.writer.backend_index("web4", &lb.receiver(&run));
    assert_eq!(lb.conn(&syns[0]).map(|c| c.backend), to);
}

#[test]
fn a_syn_waits_as_a_pending_way_of_its_set_and_its_ack_makes_it_established_there() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp4();
    let to = lb.receiver(&lb.run(&flow.syn().frame()));
    let (pending, state) = in_set(&lb, &flow).expect("the SYN waits in its set");
    assert_eq!(
        (Some(pending.backend), state),
        (lb.writer.backend_index("web4", &to), State::Pending)
    );
    assert_eq!(lb.conn(&flow), None, "pending is no connection yet");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!((lb.receiver(&run), c), (to, counts(&[(ActionTx, 1), (ConnHandshake, 1)])));
    assert_eq!(in_set(&lb, &flow), Some((pending, State::Established)));
}

#[test]
fn a_way_half_written_is_taken_for_empty_never_for_another_flows_entry() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-1");
    // The flow's way with its entry from one writer and its seal from another
    // (as two CPUs writing the way at once could leave it).
    let map = lb.map(lb_common::map_names::FLOWS4);
    let mut sets: aya::maps::Array<_, lb_common::FlowSet> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).unwrap();
    let key = FlowKey4::of(&flow_key(&flow));
    let at = u32::try_from(lb.flows4().index().set(&key)).unwrap();
    let mut set = sets.get(&at, 0).unwrap();
    let way = set.ways.iter_mut().find(|w| w.key == key.words()).expect("the flow's way");
    way.conn.backend = lb.writer.backend_index("web4", "waf-2").unwrap();
    sets.set(at, set, 0).unwrap();
    assert_eq!(lb.conn(&flow), None, "no whole entry");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), lb.predict("web4", &flow), "the ring's pick, not waf-2");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]));
}

#[test]
fn a_table_hit_still_leaves_a_backend_that_went_down_or_was_replaced() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let down = pinned_flow(&mut lb, "waf-2");
    let replaced = pinned_flow(&mut lb, "waf-3");
    lb.set_state("web4", "waf-2", Down);
    let (run, c) = lb.run_counted(&down.ack().frame());
    assert_eq!(lb.receiver(&run), lb.predict("web4", &down));
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnRehash, 1)]));
    // waf-3 leaves and a newcomer takes its slot: the entry names the old generation.
    let index = lb.writer.backend_index("web4", "waf-3");
    lb.plan.vips[0].backends.retain(|b| b.name != "waf-3");
    lb.apply();
    lb.plan.vips[0].backends.push(backend("waf-9", "10.0.0.19"));
    lb.apply();
    assert_eq!(lb.writer.backend_index("web4", "waf-9"), index, "slot reused");
    let (run, c) = lb.run_counted(&replaced.ack().frame());
    assert_eq!(lb.receiver(&run), lb.predict("web4", &replaced));
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnRehash, 1)]));
    // The re-hash rewrote the entry: the next packet is a plain hit there.
    let (run, c) = lb.run_counted(&replaced.ack().frame());
    assert_eq!(lb.receiver(&run), lb.predict("web4", &replaced));
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
}

// ---- an established flow's packets: the front and the full path --------------
// An established IPv4 flow's untagged, option-less TCP or UDP packet is forwarded
// from the frame's first bytes alone (the front); any other packet of that flow
// must come out as the full path says. Each case is a packet of an established
// flow, so the front sees a hit if it looks. Covered elsewhere: a SYN on an
// established flow (`syn_is_hashed_even_when_the_table_names_another_backend`),
// an established flow's backend down or replaced
// (`a_table_hit_still_leaves_a_backend_that_went_down_or_was_replaced`), an
// established flow's segment too big for the tunnel
// (`a_table_hit_answered_too_big_counts_as_a_hit_and_an_answer`).

/// An open TCP flow on `to`, established in the table.
fn cached_flow(lb: &mut Balancer, to: &str) -> Flow {
    let flow = pinned_flow(lb, to);
    assert!(lb.conn(&flow).is_some(), "the handshake's ACK made it established");
    flow
}

#[test]
fn a_cached_flows_packet_with_ipv4_options_is_read_past_its_options() {
    needs_root!();
    on_cpu(0);
    for mode in [Dsr, Ipip] {
        let mut lb = Balancer::new(mode);
        let (a, b) = (cached_flow(&mut lb, "waf-2"), cached_flow(&mut lb, "waf-3"));
        // b's packet whose options are a's ports: a reader that took its header
        // for 20 bytes would find a's flow where b's ports are.
        let [s0, s1] = a.sport.to_be_bytes();
        let [d0, d1] = a.dport.to_be_bytes();
        let mut h = ipv4_header(CLIENT4, VIP4, IpNumber::TCP);
        h.options = Ipv4Options::try_from(&[s0, s1, d0, d1][..]).unwrap();
        let l3 = ipv4_packet(h, &b.ack().l3()[20..]);
        let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &l3));
        assert_eq!(lb.receiver(&run), "waf-3", "{mode:?}");
        assert_eq!(run.decoded().inner, l3, "options kept ({mode:?})");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    }
}

#[test]
fn a_cached_flows_vlan_tagged_packet_goes_to_its_backend_with_its_tag() {
    needs_root!();
    on_cpu(0);
    for mode in [Dsr, Ipip] {
        let mut lb = Balancer::new(mode);
        let flow = cached_flow(&mut lb, "waf-2").ack().vlan(100);
        let (run, c) = lb.run_counted(&flow.frame());
        assert_eq!(lb.receiver(&run), "waf-2", "{mode:?}");
        assert_eq!(run.decoded().vlan, Some((ETH_P_8021Q, 100)), "{mode:?}");
        assert_eq!(run.decoded().inner, flow.l3(), "{mode:?}");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    }
}

#[test]
fn a_cached_flows_frame_for_another_hosts_mac_passes_untouched() {
    needs_root!();
    on_cpu(0);
    for mode in [Dsr, Ipip] {
        let mut lb = Balancer::new(mode);
        let flow = cached_flow(&mut lb, "waf-2");
        let frame = addressed_to(flow.ack().frame(), PEER_MAC);
        let (run, c) = lb.run_counted(&frame);
        assert_eq!((run.action, &run.frame), (XDP_PASS, &frame), "{mode:?}");
        assert_eq!(c, counts(&[(ActionPass, 1), (PassNotForUs, 1)]));
    }
}

#[test]
fn a_cached_flows_packet_whose_ipv4_header_does_not_add_up_is_dropped() {
    needs_root!();
    on_cpu(0);
    for mode in [Dsr, Ipip] {
        let mut lb = Balancer::new(mode);
        let flow = cached_flow(&mut lb, "waf-2").ack();
        let l3 = flow.l3(); // 20 + 20 + 100 bytes
        let udp = Flow::udp(CLIENT4, 40000, VIP4, 53);
        assert_eq!(lb.run(&udp.frame()).action, XDP_TX);
        assert!(lb.conn(&udp).is_some(), "its first packet put it in the table");
        let cases = [
            (
                "total length past the frame",
                ipv4_edited(&l3, |p| set_total_length(p, 141)),
                DropMalformed,
            ),
            (
                "total length under the header",
                ipv4_edited(&l3, |p| set_total_length(p, 19)),
                DropMalformed,
            ),
            (
                "TCP header past the total length",
                ipv4_edited(&l3, |p| set_total_length(p, 39)),
                DropMalformed,
            ),
            (
                "UDP header past the total length",
                ipv4_edited(&udp.l3(), |p| set_total_length(p, 27)),
                DropMalformed,
            ),
            ("a first fragment", ipv4_edited(&l3, |p| p[6] |= 0x20), DropFragment),
            ("a later fragment", ipv4_edited(&l3, |p| p[7] = 185), DropFragment),
        ];
        for (name, bad, why) in cases {
            let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &bad));
            assert_eq!(run.action, XDP_DROP, "{name} ({mode:?})");
            assert_eq!(c, counts(&[(ActionDrop, 1), (why, 1)]), "{name} ({mode:?})");
        }
        let (run, c) = lb.run_counted(&flow.frame());
        assert_eq!(lb.receiver(&run), "waf-2", "the flow itself is still served ({mode:?})");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    }
}

#[test]
fn a_cached_flows_padded_frame_keeps_its_padding_behind_the_tunnel() {
    needs_root!();
    on_cpu(0);
    let mut lb = Balancer::new(Ipip);
    let flow = cached_flow(&mut lb, "waf-2").ack().payload(0);
    let mut padded = flow.frame();
    padded.resize(60, 0xee);
    let (run, c) = lb.run_counted(&padded);
    let Outer::V4(h) = assert_encapsulated(&lb, &flow, "web4", &run) else { panic!("want IPIP") };
    assert_eq!(usize::from(h.total_len), 20 + 40);
    assert_eq!(run.frame[14 + 20 + 40..], padded[54..], "the padding rides behind the tunnel");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
}

#[test]
fn a_cached_4in6_flows_tunnel_keeps_the_flows_label() {
    needs_root!();
    on_cpu(0);
    let lb = Balancer::new(Ipip);
    let flow = Flow::tcp(CLIENT4, 40000, MIXED_VIP4, 80).ack();
    let label = lb_common::hash::flow_label(&flow_key(&flow));
    for (packet, counted) in [("first", ConnMiss), ("cached", ConnHit)] {
        let (run, c) = lb.run_counted(&flow.frame());
        let Outer::V6(h) = assert_encapsulated(&lb, &flow, "mixed4", &run) else {
            panic!("want 4in6")
        };
        assert_eq!(h.flow_label.value(), label, "{packet} packet");
        assert_eq!(c, counts(&[(ActionTx, 1), (counted, 1)]), "{packet} packet");
    }
    assert!(lb.conn(&flow).is_some());
}

#[test]
fn a_syn_reusing_a_5_tuple_on_another_cpu_takes_the_old_entrys_place_for_every_cpu() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    on_cpu(0);
    let flow = pinned_flow(&mut lb, "waf-1");
    lb.set_state("web4", "waf-1", Draining);
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), "waf-1", "CPU 0 used the entry");
    // The client reuses its port; the new connection's SYN lands on CPU 1.
    on_cpu(1);
    let to = lb.receiver(&lb.run(&flow.syn().frame()));
    assert_ne!(to, "waf-1");
    // Its handshake's ACK on CPU 0 follows the SYN, not the old entry.
    on_cpu(0);
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), to);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
}

#[test]
fn a_syn_sharing_another_vips_pending_handshake_slot_still_takes_out_a_reused_entry() {
    needs_root!();
    on_cpu(0);
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-1");
    lb.set_state("web4", "waf-1", Draining);
    // The same client address and ports to another VIP hash alike (the flow hash
    // leaves out the VIP): that SYN holds the SYN array slot of this flow's.
    let other = Flow { dst: WILDCARD_VIP4.parse().unwrap(), ..flow };
    assert_eq!(lb.run(&other.syn().frame()).action, XDP_TX);
    // The client reuses its port to web4: a new connection, no retransmission of
    // the other VIP's SYN, so the old entry must go.
    let to = lb.receiver(&lb.run(&flow.syn().frame()));
    assert_ne!(to, "waf-1");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), to);
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
}

#[test]
fn a_client_reusing_its_port_for_the_same_backend_leaves_every_other_flow_alone() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let other = pinned_flow(&mut lb, "waf-2");
    let flow = pinned_flow(&mut lb, "waf-1");
    // A busy NAT reuses client ports the table still holds many times a second:
    // the SYN takes its own flow's way, no other.
    assert_eq!(lb.receiver(&lb.run(&flow.syn().frame())), "waf-1");
    assert_eq!(in_set(&lb, &flow).map(|(_, s)| s), Some(State::Pending));
    assert_eq!(in_set(&lb, &other).map(|(_, s)| s), Some(State::Established));
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), "waf-1");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHandshake, 1)]));
}

#[test]
fn a_flow_moved_off_a_dead_backend_stays_moved_on_every_cpu_when_it_comes_back() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    on_cpu(1);
    let flow = pinned_flow(&mut lb, "waf-2");
    on_cpu(0);
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), "waf-2", "both CPUs used it");
    lb.set_state("web4", "waf-2", Down);
    let moved = lb.receiver(&lb.run(&flow.ack().frame()));
    assert_ne!(moved, "waf-2", "CPU 0 moved the flow");
    lb.set_state("web4", "waf-2", Up);
    // CPU 1 used the entry when it named waf-2, which is up again: it must not
    // take the flow back there (the connection now lives on the other node).
    on_cpu(1);
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), moved);
}

#[test]
fn a_table_entry_peer_sync_replaces_or_removes_takes_effect_on_the_next_packet() {
    use lb_userspace::sync::install::ConnTable as _;
    needs_root!();
    on_cpu(0);
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-1");
    synced_entry(&lb, &flow, "waf-2");
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), "waf-2", "the replaced entry");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1)]));
    // A withdrawal: the flow is a miss again (and hashed by the ring, to waf-1).
    let mut conns = lb.writer.maps().conns_handle().unwrap();
    conns.remove(&flow_key(&flow));
    let (run, c) = lb.run_counted(&flow.ack().frame());
    assert_eq!(lb.receiver(&run), "waf-1");
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1)]));
}

#[test]
fn a_hit_stamps_its_way_with_the_clock_once_a_step() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-1");
    let clock = || {
        let table = lb.flows4();
        let key = FlowKey4::of(&flow_key(&flow));
        let set = lb.map(lb_common::map_names::FLOWS4);
        let sets: aya::maps::Array<_, lb_common::FlowSet> =
            aya::maps::Array::try_from(aya::maps::Map::Array(set)).unwrap();
        let at = u32::try_from(table.index().set(&key)).unwrap();
        let set = sets.get(&at, 0).unwrap();
        set.ways.iter().find(|w| w.key == key.words()).map(lb_common::FlowWay::clock).unwrap()
    };
    let now = || lb.writer.maps().conn_epoch().unwrap().clock();
    assert_eq!(clock(), now(), "stamped when its handshake completed");
    lb.writer.maps().conn_epoch().unwrap().step_clock();
    assert_eq!(clock(), now() - 1, "until a packet uses it");
    assert_eq!(lb.run(&flow.ack().frame()).action, XDP_TX);
    assert_eq!(clock(), now());
}

// ---- handshakes: the passive signal ---------------------------------------

/// A backend's handshake counters: SYNs forwarded, handshakes completed, SYNs retransmitted.
fn shakes(syns: u64, completed: u64, syn_retransmits: u64) -> lb_common::Handshakes {
    lb_common::Handshakes { syns, completed, syn_retransmits }
}

#[test]
fn a_syn_counts_for_its_backend_and_the_clients_next_packet_completes_the_handshake_once() {
    needs_root!();
    for mode in [Dsr, Ipip] {
        let lb = Balancer::new(mode);
        let flow = tcp4();
        let owner = lb.receiver(&lb.run(&flow.frame()));
        assert_eq!(lb.handshakes("web4", &owner), shakes(1, 0, 0), "{mode:?}: a SYN, waiting");
        for _ in 0..3 {
            assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), owner);
        }
        assert_eq!(lb.handshakes("web4", &owner), shakes(1, 1, 0), "{mode:?}: once per flow");
        assert_eq!(lb.backend_traffic("web4", &owner).packets, 4);
        for other in ["waf-1", "waf-2", "waf-3"].into_iter().filter(|b| *b != owner) {
            assert_eq!(lb.handshakes("web4", other), shakes(0, 0, 0), "{mode:?}: {other}");
        }
    }
}

#[test]
fn a_syn_for_a_flow_already_in_the_table_is_a_retransmission() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp6();
    let owner = lb.receiver(&lb.run(&flow.frame()));
    for _ in 0..2 {
        assert_eq!(lb.receiver(&lb.run(&flow.frame())), owner, "the ring's pick again");
    }
    assert_eq!(lb.handshakes("web6", &owner), shakes(3, 0, 2));
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), owner);
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), owner);
    assert_eq!(lb.handshakes("web6", &owner), shakes(3, 1, 2), "three SYNs, one connection");
    // Another flow's SYN is no retransmission.
    let next = (1..1000).map(|i| flow.sport(40000 + i)).find(|f| lb.predict("web6", f) == owner);
    assert_eq!(lb.receiver(&lb.run(&next.unwrap().frame())), owner);
    assert_eq!(lb.handshakes("web6", &owner), shakes(4, 1, 2));
}

#[test]
fn a_syn_reusing_the_ports_of_a_completed_connection_waits_for_its_own_handshake() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp4();
    let owner = lb.receiver(&lb.run(&flow.frame()));
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), owner);
    assert_eq!(lb.receiver(&lb.run(&flow.frame())), owner);
    assert_eq!(
        lb.handshakes("web4", &owner),
        shakes(2, 1, 1),
        "in the table: counted retransmitted"
    );
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), owner);
    assert_eq!(lb.handshakes("web4", &owner), shakes(2, 2, 1), "the new connection completes");
}

#[test]
fn flows_not_opened_by_a_syn_complete_no_handshake() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    // UDP, and a TCP flow picked up mid-way (a table miss: opened before the
    // balancer started, or evicted), say nothing about a handshake.
    for (vip, flow) in [("dns4", udp4()), ("web4", tcp4().ack().sport(41000))] {
        let owner = lb.receiver(&lb.run(&flow.frame()));
        for _ in 0..2 {
            assert_eq!(lb.receiver(&lb.run(&flow.frame())), owner);
        }
        assert_eq!(lb.handshakes(vip, &owner), shakes(0, 0, 0), "{flow:?}");
        assert_eq!(lb.backend_traffic(vip, &owner).packets, 3);
    }
}

#[test]
fn an_icmp_error_about_a_flow_does_not_complete_its_handshake() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = half_open(&lb, "waf-3");
    assert_eq!(lb.receiver(&lb.run(&frag_needed(&flow))), "waf-3");
    assert_eq!(lb.handshakes("web4", "waf-3"), shakes(1, 0, 0));
    assert_eq!(lb.receiver(&lb.run(&flow.ack().frame())), "waf-3");
    assert_eq!(lb.handshakes("web4", "waf-3"), shakes(1, 1, 0));
}

#[test]
fn a_handshake_whose_backend_went_down_completes_nowhere() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = half_open(&lb, "waf-2");
    lb.set_state("web4", "waf-2", Down);
    let now = lb.receiver(&lb.run(&flow.ack().frame()));
    assert_ne!(now, "waf-2");
    assert_eq!(lb.handshakes("web4", "waf-2"), shakes(1, 0, 0), "its SYN went unanswered");
    assert_eq!(lb.handshakes("web4", &now), shakes(0, 0, 0), "no SYN of this flow reached it");
}

#[test]
fn a_syn_answered_instead_of_forwarded_counts_for_no_backend() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    // A SYN carrying data (TCP Fast Open) too big for the tunnel.
    let syn = tcp4().payload(1500 - 40);
    assert_eq!(syn.l3().len(), 1500);
    let run = lb.run(&syn.frame());
    assert!(decode_too_big(&run.frame).is_ok(), "answered with fragmentation needed");
    for b in ["waf-1", "waf-2", "waf-3"] {
        assert_eq!(lb.handshakes("web4", b), shakes(0, 0, 0), "{b}");
    }
}

#[test]
fn same_flow_gets_the_same_backend_on_two_balancers_with_the_same_config() {
    needs_root!();
    let a = Balancer::new(Dsr);
    let b = Balancer::new(Dsr);
    for i in 0..100 {
        let f = tcp4().sport(1000 + i * 7);
        assert_eq!(a.receiver(&a.run(&f.frame())), b.receiver(&b.run(&f.frame())));
    }
}

#[test]
fn the_configured_seed_picks_the_ring_slot_and_balancers_agree_only_when_they_share_it() {
    needs_root!();
    let a = Balancer::new(Dsr);
    let mut b = Balancer::empty();
    b.plan = standard_plan(Dsr);
    b.plan.config.hash_seed = [7, 7, 7, 7];
    b.apply();
    let mut differ = 0;
    for i in 0..300 {
        let f = tcp4().sport(2000 + i);
        let (on_a, on_b) = (a.receiver(&a.run(&f.frame())), b.receiver(&b.run(&f.frame())));
        assert_eq!(on_a, a.predict("web4", &f), "the kernel hashes with the configured seed");
        assert_eq!(on_b, b.predict("web4", &f));
        differ += usize::from(on_a != on_b);
    }
    // Same ring, other seed: about two thirds of the flows land elsewhere.
    assert!((150..=250).contains(&differ), "{differ} of 300 flows moved with the seed");
}

// ---- no backend -----------------------------------------------------------

#[test]
fn vip_with_every_backend_down_counts_and_drops() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    for b in ["waf-1", "waf-2", "waf-3"] {
        lb.set_state("web4", b, Down);
    }
    for frame in [tcp4().frame(), tcp4().ack().frame()] {
        let (run, c) = lb.run_counted(&frame);
        assert_eq!(run.action, XDP_DROP);
        assert_eq!(c[DropNoBackend.name()], 1);
        assert_eq!(c[ActionDrop.name()], 1);
    }
}

#[test]
fn backend_without_a_resolved_mac_gets_no_traffic() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    lb.plan.vips[0].backends[0].mac = None;
    lb.apply();
    for i in 0..200 {
        let f = tcp4().sport(3000 + i);
        assert_ne!(lb.receiver(&lb.run(&f.frame())), "waf-1");
    }
}

#[test]
fn unconfigured_balancer_drops_vip_traffic_and_says_why() {
    needs_root!();
    let mut lb = Balancer::empty();
    lb.plan = standard_plan(Dsr);
    lb.plan.config.mtu = 0; // never written by a controller
    lb.apply();
    let (run, c) = lb.run_counted(&tcp4().frame());
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (DropNoConfig, 1)]));
}

// ---- ICMP -----------------------------------------------------------------

/// An ICMP error from a router about a packet the backend sent on `flow` (VIP -> client).
fn frag_needed(flow: &Flow) -> Vec<u8> {
    frag_needed_quoting(flow, 28)
}

/// The same, quoting the first `quote` bytes of the backend's packet.
fn frag_needed_quoting(flow: &Flow, quote: usize) -> Vec<u8> {
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&flow.reversed().l3()[..quote]);
    let sum = !ones_sum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ethernet(ETH_P_IP, &ipv4_packet(ipv4_header("192.0.2.254", VIP4, IpNumber::ICMP), &icmp))
}

/// `frame` (Ethernet, IPv4 without options, ICMP) with its ICMP checksum redone.
fn with_icmp_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[36..38].copy_from_slice(&[0, 0]);
    let sum = !ones_sum(&frame[34..]);
    frame[36..38].copy_from_slice(&sum.to_be_bytes());
    frame
}

fn packet_too_big(flow: &Flow) -> Vec<u8> {
    let quoted = &flow.reversed().l3()[..48];
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend_from_slice(quoted);
    ethernet(
        ETH_P_IPV6,
        &ipv6_packet(ipv6_header("2001:db8:f::1", VIP6, IpNumber::IPV6_ICMP), &icmp),
    )
}

fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 =
        b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn icmp_frag_needed_goes_to_the_backend_that_owns_the_flow() {
    needs_root!();
    for mode in [Dsr, Ipip] {
        let mut lb = Balancer::new(mode);
        let flow = pinned_flow(&mut lb, "waf-3");
        let frame = frag_needed(&flow);
        let (run, c) = lb.run_counted(&frame);
        assert_eq!(lb.receiver(&run), "waf-3", "{mode:?}");
        assert_eq!(run.decoded().inner, frame[14..], "ICMP forwarded whole ({mode:?})");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1), (IcmpForwarded, 1)]), "{mode:?}");
    }
}

#[test]
fn icmpv6_packet_too_big_goes_to_the_backend_that_owns_the_flow() {
    needs_root!();
    for mode in [Dsr, Ipip] {
        let lb = Balancer::new(mode);
        let flow = tcp6().sport(41000);
        let owner = open(&lb, &flow);
        let (run, c) = lb.run_counted(&packet_too_big(&flow));
        assert_eq!(lb.receiver(&run), owner, "{mode:?}");
        assert_eq!(c, counts(&[(ActionTx, 1), (ConnHit, 1), (IcmpForwarded, 1)]), "{mode:?}");
    }
}

#[test]
fn icmp_frag_needed_for_an_unknown_flow_follows_the_ring() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let flow = tcp4().sport(777);
    let (run, c) = lb.run_counted(&frag_needed(&flow));
    assert_eq!(lb.receiver(&run), lb.predict("web4", &flow));
    assert_eq!(c, counts(&[(ActionTx, 1), (ConnMiss, 1), (IcmpForwarded, 1)]));
}

#[test]
fn icmp_echo_to_a_vip_passes_to_the_kernel() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let echo =
        ipv4_packet(ipv4_header(CLIENT4, VIP4, IpNumber::ICMP), &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let (run, c) = lb.run_counted(&ethernet(ETH_P_IP, &echo));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(c, counts(&[(ActionPass, 1), (PassIcmp, 1)]));
}

#[test]
fn icmp_error_about_a_non_vip_flow_passes() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    // Addressed to the VIP, as the backend's packets come from it; the quote is not a VIP's.
    let flow = Flow::tcp(CLIENT4, 40000, "192.0.2.50", 80);
    let (run, c) = lb.run_counted(&frag_needed(&flow));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(c, counts(&[(ActionPass, 1), (PassIcmp, 1)]));
}

#[test]
fn icmp_error_whose_quote_stops_short_of_a_vip_flows_ports_passes() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-3");
    // The whole quote names the flow: forwarded to its backend...
    assert_eq!(lb.receiver(&lb.run(&frag_needed_quoting(&flow, 28))), "waf-3");
    // ...a quote cut inside its IP header, or before its ports end, names nothing.
    for quote in [10, 20, 22] {
        let (run, c) = lb.run_counted(&frag_needed_quoting(&flow, quote));
        assert_eq!(run.action, XDP_PASS, "quote of {quote} bytes");
        assert_eq!(c, counts(&[(ActionPass, 1), (PassIcmp, 1)]), "quote of {quote} bytes");
    }
    // The ICMP packet itself cut short (its total length says more) is malformed.
    let frame = frag_needed_quoting(&flow, 28);
    let (run, c) = lb.run_counted(&frame[..frame.len() - 2]);
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(c, counts(&[(ActionDrop, 1), (DropMalformed, 1)]));
}

#[test]
fn icmp_error_quoting_something_else_than_ipv4_tcp_or_udp_passes() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    let flow = pinned_flow(&mut lb, "waf-3");
    let whole = frag_needed_quoting(&flow, 28);
    // Offsets in the frame: Ethernet 14, IP 20, ICMP 8, then the quote.
    let quote = 14 + 20 + 8;
    let mut not_v4 = whole.clone();
    not_v4[quote] = 0x65; // "version 6" with a header length of 20
    let mut not_tcp = whole.clone();
    not_tcp[quote + 9] = 47; // GRE: its first bytes are no ports
    for (name, frame) in [("version 6", not_v4), ("GRE", not_tcp)] {
        let (run, c) = lb.run_counted(&with_icmp_checksum(frame));
        assert_eq!(run.action, XDP_PASS, "{name}");
        assert_eq!(c, counts(&[(ActionPass, 1), (PassIcmp, 1)]), "{name}");
    }
}

// ---- statistics -----------------------------------------------------------

#[test]
fn per_vip_and_per_backend_packets_and_bytes_are_counted() {
    needs_root!();
    let lb = Balancer::new(Ipip);
    let flow = tcp4().ack().payload(300);
    let frame = flow.frame();
    for _ in 0..5 {
        assert_eq!(lb.run(&frame).action, XDP_TX);
    }
    let owner = lb.predict("web4", &flow);
    let want = lb_common::Traffic { packets: 5, bytes: 5 * frame.len() as u64 };
    assert_eq!(lb.vip_traffic("web4"), want);
    assert_eq!(lb.backend_traffic("web4", &owner), want);
    for other in ["waf-1", "waf-2", "waf-3"].iter().filter(|b| **b != owner) {
        assert_eq!(lb.backend_traffic("web4", other).packets, 0);
    }
    assert_eq!(lb.vip_traffic("dns4").packets, 0);
}

#[test]
fn forwarding_mode_is_switched_by_the_config_alone() {
    needs_root!();
    let mut lb = Balancer::new(Dsr);
    assert!(lb.run(&tcp4().frame()).decoded().outer.is_none());
    lb.plan.config.mode = Ipip as u32;
    lb.apply();
    assert!(lb.run(&tcp4().frame()).decoded().outer.is_some());
}

#[test]
fn traffic_is_spread_over_all_backends_by_the_ring() {
    needs_root!();
    let lb = Balancer::new(Dsr);
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..3000u32 {
        let src = format!("198.51.{}.{}", 100 + i / 250, i % 250 + 1);
        let f = Flow::tcp(&src, 1024 + (i % 50000) as u16, VIP4, 80);
        *seen.entry(lb.receiver(&lb.run(&f.frame()))).or_default() += 1;
    }
    for (b, n) in &seen {
        assert!((900..=1100).contains(n), "{b} got {n} of 3000: {seen:?}");
    }
    assert_eq!(seen.len(), 3);
    let _ = CLIENT_MAC;
}
