//! `bench xdp`: cost per packet of `xdp_lb` through BPF_PROG_TEST_RUN (repeat 1),
//! against an empty program (the harness) and a MAC swap (the floor).

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::ForwardingMode;
use lb_userspace::objects;

use crate::{
    balancer::{Balancer, VIP4, VIP6, XDP_PASS, XDP_TX},
    packet::Flow,
};

/// One frame through a program, timed by the kernel (BPF_PROG_TEST_RUN, repeat 1,
/// so every run sees the original frame). Returns the action and the nanoseconds.
fn timed_run(prog: &Xdp, frame: &[u8], out: &mut [u8]) -> Result<(u32, u64)> {
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        repeat: 1,
        ..TestRunOptions::new()
    })?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

struct Case<'a> {
    name: &'static str,
    prog: &'a Xdp,
    /// Taken in turn, run by run (several: one new flow per run).
    frames: Vec<Vec<u8>>,
    want: u32,
}

impl<'a> Case<'a> {
    fn new(name: &'static str, prog: &'a Xdp, frame: Vec<u8>, want: u32) -> Self {
        Self { name, prog, frames: vec![frame], want }
    }

    fn frame(&self, run: usize) -> &[u8] {
        &self.frames[run % self.frames.len()]
    }
}

/// SYNs of distinct flows, more than the fixtures' connection table holds (8192),
/// so each is new to the table when it comes round again.
fn new_syns() -> Vec<Vec<u8>> {
    (0..16_384u16).map(|i| Flow::tcp("198.51.100.7", 1024 + i, VIP4, 80).frame()).collect()
}

/// `bench xdp [RUNS]`: ns per packet of each case, `RUNS` (20000) runs per case.
pub fn run(args: &[String]) -> Result<()> {
    let runs: usize = args.first().map_or(Ok(100_000), |s| s.parse()).context("runs per case")?;
    ensure!(runs > 0, "runs per case must be > 0");
    let mut tools = Ebpf::load(objects::XDP_TOOLS).context("loading xdp-tools")?;
    for name in ["xdp_tx", "xdp_mac_swap"] {
        let p: &mut Xdp = tools.program_mut(name).context(name)?.try_into()?;
        p.load()?;
    }
    let empty: &Xdp = tools.program("xdp_tx").context("xdp_tx")?.try_into()?;
    let floor: &Xdp = tools.program("xdp_mac_swap").context("xdp_mac_swap")?.try_into()?;
    let dsr = Balancer::new(ForwardingMode::Dsr);
    let ipip = Balancer::new(ForwardingMode::Ipip);

    let syn4 = Flow::tcp("198.51.100.7", 40000, VIP4, 80);
    let ack4 = syn4.ack().payload(0);
    let udp4 = Flow::udp("198.51.100.7", 40000, VIP4, 53).payload(18);
    let syn6 = Flow::tcp("2001:db8:c::7", 40000, VIP6, 80);
    let other = Flow::tcp("198.51.100.7", 40000, "192.0.2.1", 80);
    let mut cases = vec![
        Case::new("empty XDP_TX (harness)", empty, syn4.frame(), XDP_TX),
        Case::new("MAC swap + XDP_TX (floor)", floor, syn4.frame(), XDP_TX),
    ];
    for (mode, lb) in [("dsr", &dsr), ("ipip", &ipip)] {
        let p = lb.program();
        // Seed the connection table, so ACK and UDP measure a table hit.
        for f in [&ack4, &udp4] {
            ensure!(lb.run(&f.frame()).action == XDP_TX, "seeding {f:?}");
        }
        let label =
            |s: &str| -> &'static str { Box::leak(format!("{s}, {mode}").into_boxed_str()) };
        cases.extend([
            // The same SYN run after run: after the first, a retransmission (its
            // flow is in the table).
            Case::new(label("TCP SYN v4"), p, syn4.frame(), XDP_TX),
            Case {
                frames: new_syns(),
                ..Case::new(label("TCP SYN v4 (new flow)"), p, vec![], XDP_TX)
            },
            Case::new(label("TCP ACK v4 (table hit)"), p, ack4.frame(), XDP_TX),
            Case::new(label("UDP v4 (table hit)"), p, udp4.frame(), XDP_TX),
            Case::new(label("TCP SYN v6"), p, syn6.frame(), XDP_TX),
            Case::new(label("non-VIP pass"), p, other.frame(), XDP_PASS),
        ]);
    }

    // Interleave cases run by run, so a noisy neighbour hurts all of them alike.
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(runs); cases.len()];
    let mut out = vec![0u8; 2048];
    let started = Instant::now();
    for i in 0..runs {
        for (case, s) in cases.iter().zip(&mut samples) {
            let (action, ns) = timed_run(case.prog, case.frame(i), &mut out)?;
            ensure!(
                action == case.want,
                "{}: run {i} returned action {action}, want {}",
                case.name,
                case.want
            );
            s.push(ns);
        }
        if i % 5000 == 0 {
            eprintln!("  run {i}/{runs} ({:.1}s)", started.elapsed().as_secs_f64());
        }
    }

    let stat = |s: &mut Vec<u64>| -> (f64, f64) {
        s.sort_unstable();
        // Median, and the mean of the middle 80% (both robust to preemption spikes).
        let med = s[s.len() / 2] as f64;
        let lo = s.len() / 10;
        let mid = &s[lo..s.len() - lo];
        (med, mid.iter().sum::<u64>() as f64 / mid.len() as f64)
    };
    let stats: Vec<(f64, f64)> = samples.iter_mut().map(stat).collect();
    report(&cases, &stats, runs);
    Ok(())
}

/// The table of cases (`stats`: median and trimmed mean of each) and the verdict on
/// each target.
fn report(cases: &[Case<'_>], stats: &[(f64, f64)], runs: usize) {
    let harness = stats[0].1;
    let floor_net = (stats[1].1 - harness).max(0.1);
    let mut by_name = BTreeMap::new();
    println!(
        "| case | median ns | trimmed mean ns | net of harness ns | × floor (net) | × floor (raw) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (case, (med, mean)) in cases.iter().zip(stats) {
        let net = mean - harness;
        by_name.insert(case.name, (net / floor_net, mean / stats[1].1));
        println!(
            "| {} | {med:.0} | {mean:.1} | {net:.1} | {:.1} | {:.2} |",
            case.name,
            net / floor_net,
            mean / stats[1].1
        );
    }
    println!();
    println!(
        "{runs} runs per case, interleaved; every run's action checked. Harness = the empty program's trimmed mean ({harness:.1} ns); floor (net) = MAC swap minus harness = {floor_net:.1} ns."
    );
    println!();
    println!("Targets (issue #2), judged on both ratios:");
    let targets = [
        ("TCP ACK v4 (table hit)", 2.5),
        ("UDP v4 (table hit)", 3.0),
        ("TCP SYN v4", 5.0),
        ("TCP SYN v6", 5.5),
        ("non-VIP pass", 1.5),
    ];
    for mode in ["dsr", "ipip"] {
        for (case, target) in targets {
            let Some(&(net, raw)) = by_name.get(format!("{case}, {mode}").as_str()) else {
                continue;
            };
            let verdict = |x: f64| {
                if x <= target {
                    "met".to_owned()
                } else {
                    format!("**missed** by {:.0}%", (x / target - 1.0) * 100.0)
                }
            };
            println!(
                "- {case}, {mode}: ≤ {target}x; raw {raw:.2}x ({}), net {net:.1}x ({})",
                verdict(raw),
                verdict(net)
            );
        }
    }
}
