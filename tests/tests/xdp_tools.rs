//! Packet-level specification of the benchmarks' reference programs in
//! `xdp-tools` that stand for a forwarder: what a bench row measures against
//! must do what its label says. Each case runs the compiled object through
//! BPF_PROG_TEST_RUN and checks the verdict and the frame that comes out.
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use aya::{Ebpf, programs::Xdp};
use etherparse::{IpNumber, Ipv4Header};
use lb_common::{
    bench::{IPIP_FLOOR_DST, IPIP_FLOOR_SRC},
    limits::ENCAP_TTL,
};
use lb_userspace::objects;
use xdplb_tests::{
    balancer::{VIP4, XDP_TX, run_program},
    packet::{CLIENT_MAC, ETH_P_IP, Flow, LB_MAC, Outer},
    privilege::have_root,
};

macro_rules! needs_root {
    () => {
        if !have_root(module_path!()) {
            return;
        }
    };
}

/// The tools object with `name` loaded.
fn tools(name: &str) -> Ebpf {
    let mut ebpf = Ebpf::load(objects::XDP_TOOLS).unwrap();
    let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
    p.load().unwrap();
    ebpf
}

#[test]
fn the_ipip_floor_sends_the_frame_back_in_an_ipip_tunnel_with_its_macs_swapped() {
    needs_root!();
    let ebpf = tools("xdp_ipip_floor");
    let prog: &Xdp = ebpf.program("xdp_ipip_floor").unwrap().try_into().unwrap();
    for flow in [
        Flow::udp("198.51.100.7", 40000, VIP4, 53).payload(18),
        Flow::tcp("198.51.100.7", 40000, VIP4, 80).ack().payload(100),
    ] {
        let run = run_program(prog, &flow.frame());
        assert_eq!(run.action, XDP_TX, "{flow:?}");
        let d = run.decoded();
        assert_eq!(
            (d.dst_mac, d.src_mac, d.ether_type),
            (CLIENT_MAC, LB_MAC, ETH_P_IP),
            "{flow:?}"
        );
        let Some(Outer::V4(outer)) = d.outer else {
            panic!("{flow:?}: no outer IPv4 header in {:?}", run.frame)
        };
        assert_eq!(outer.protocol, IpNumber::IPV4, "IPIP");
        assert_eq!((outer.source, outer.destination), (IPIP_FLOOR_SRC, IPIP_FLOOR_DST));
        assert_eq!(outer.total_len as usize, 20 + flow.l3().len(), "{flow:?}");
        assert!(outer.dont_fragment && !outer.more_fragments, "{outer:?}");
        assert_eq!(outer.time_to_live, ENCAP_TTL);
        assert_eq!(outer.header_checksum, outer.calc_header_checksum(), "{outer:?}");
        assert_eq!(d.inner, flow.l3(), "{flow:?}: the client's packet, whole, behind it");
        assert_eq!(run.frame.len(), flow.frame().len() + Ipv4Header::MIN_LEN);
    }
}
