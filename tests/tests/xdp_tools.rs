//! Packet-level specification of the benchmarks' reference programs in
//! `xdp-tools` that stand for a forwarder: what a bench row measures against
//! must do what its label says. Each case runs the compiled object through
//! BPF_PROG_TEST_RUN and checks the verdict and the frame that comes out.
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use aya::{
    Ebpf,
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use etherparse::{IpNumber, Ipv4Header};
use lb_common::{
    bench::{IPIP_FLOOR_DST, IPIP_FLOOR_SRC, Script},
    limits::ENCAP_TTL,
    map_names,
};
use lb_userspace::objects;
use xdplb_tests::{
    balancer::{VIP4, XDP_ABORTED, XDP_PASS, XDP_TX, run_program},
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

/// `xdp_tail_timed` hands every run, after the frame restore, to the program in the
/// slot of `BENCH_TAIL` the script names (how `bench xdp --reference` times a
/// program pinned outside this repository by the second method): run three times
/// in one test run, a program that pushes a header sends the frame tunnelled once,
/// not three times over; an empty slot aborts.
#[test]
fn the_tail_wrapper_restores_the_frame_then_runs_the_program_in_the_scripts_slot() {
    needs_root!();
    let (ebpf, mut script, _slots) = tail_wrapper(&["xdp_pass", "xdp_ipip_floor"]);
    let prog: &Xdp = ebpf.program("xdp_tail_timed").unwrap().try_into().unwrap();
    let flow = Flow::tcp("198.51.100.7", 40000, VIP4, 80).ack().payload(20);
    let frame = flow.frame();
    let mut run = |tail: u32| {
        let mut s = Script { per_flow: 0, first: 1, tail, ..Script::default() };
        s.frames[0][..frame.len()].copy_from_slice(&frame);
        s.lens = [frame.len() as u32; 2];
        script.set(0, s, 0).unwrap();
        test_run(prog, &frame, 3)
    };

    assert_eq!(run(0), (XDP_PASS, frame.clone()), "slot 0: xdp_pass, the frame as restored");
    let (action, out) = run(1);
    assert_eq!(action, XDP_TX, "slot 1: xdp_ipip_floor");
    assert_eq!(out.len(), frame.len() + Ipv4Header::MIN_LEN, "one outer header: {out:02x?}");
    assert_eq!(xdplb_tests::packet::decode(&out).inner, flow.l3());
    assert_eq!(run(5).0, XDP_ABORTED, "an empty slot");
}

/// The restore's flows (`lb_ebpf::timed`, here through `xdp_tail_timed` into
/// `xdp_pass`, which leaves the frame as restored): run `n` of a script of flows of
/// `per_flow` packets sends packet `n % per_flow` of flow `n / per_flow`, its source
/// port stepped by the flow number; with a `lag`, a flow's packets past its first
/// `first` are the flow's `lag` flows back (a handshake's ACK a round trip later).
#[test]
fn the_restore_sends_a_flows_later_packets_lag_flows_after_its_first() {
    needs_root!();
    let (ebpf, mut script, _slots) = tail_wrapper(&["xdp_pass"]);
    let prog: &Xdp = ebpf.program("xdp_tail_timed").unwrap().try_into().unwrap();
    let syn = Flow::tcp("198.51.100.7", 40000, VIP4, 80);
    let ack = syn.ack().payload(0);
    // The frame run `seq` of a script of 2-packet flows (a SYN, then an ACK) sends.
    let mut run = |seq: u64, lag: u32| {
        let mut s = Script { per_flow: 2, first: 1, lag, seq, ..Script::default() };
        for (i, f) in [syn.frame(), ack.frame()].iter().enumerate() {
            s.frames[i][..f.len()].copy_from_slice(f);
            s.lens[i] = f.len() as u32;
        }
        (s.addr_off, s.port_off) = (14 + 12 + 2, 14 + 20);
        script.set(0, s, 0).unwrap();
        let (action, out) = test_run(prog, &syn.frame(), 1);
        assert_eq!(action, XDP_PASS);
        unchecked(out)
    };
    let at = |flow: &Flow, n: u16| unchecked(flow.sport(40000 + n).frame());
    assert_eq!(run(4, 0), at(&syn, 2), "run 4: flow 2's SYN");
    assert_eq!(run(5, 0), at(&ack, 2), "run 5: flow 2's ACK");
    assert_eq!(run(4, 1), at(&syn, 2), "a flow's first packet is its own");
    assert_eq!(run(5, 1), at(&ack, 1), "run 5 with a lag of 1: flow 1's ACK");
    assert_eq!(run(7, 2), at(&ack, 1), "run 7 with a lag of 2: flow 1's ACK");
}

/// The tools object with `xdp_tail_timed` loaded and the programs `slots` names in
/// `BENCH_TAIL`'s slots 0, 1, ..., and its script. The slots' map goes with them:
/// the kernel empties a program array when its last handle in user space closes.
fn tail_wrapper(slots: &[&str]) -> (Ebpf, Array<MapData, Script>, ProgramArray<MapData>) {
    let mut ebpf = tools("xdp_tail_timed");
    let mut tail = ProgramArray::try_from(ebpf.take_map(map_names::BENCH_TAIL).unwrap()).unwrap();
    for (slot, name) in (0..).zip(slots) {
        let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap();
        tail.set(slot, p.fd().unwrap(), 0).unwrap();
    }
    let script = Array::try_from(ebpf.take_map(map_names::BENCH_SCRIPT).unwrap()).unwrap();
    (ebpf, script, tail)
}

/// `prog`'s action and frame out after `repeat` runs in one test run on `frame`.
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 2048];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        })
        .unwrap();
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// `frame` without its TCP checksum: the restore fixes none (the programs it
/// times read none).
fn unchecked(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 20 + 16..14 + 20 + 18].fill(0);
    frame
}
