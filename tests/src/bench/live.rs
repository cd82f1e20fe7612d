//! `bench live`: packets per second forwarded through a veth by xdplb (dsr, ipip),
//! by the least an XDP forwarder does (MAC swap + XDP_TX, the floor) and by the
//! kernel's nftables DNAT (the kernel peer), side by side in one run.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, ensure};
use lb_common::{Counter, ForwardingMode};
use lb_userspace::stats::Stats as _;

use super::{
    progress,
    stats::{Summary, ratio, show},
    veth::{self, L4, Lb, Pair},
};

/// Distinct flows (source ports) in every case.
pub const FLOWS: u32 = 4096;
const RUNS: usize = 5;
const RUN: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Lb(ForwardingMode),
    Floor,
    Nft,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Self::Lb(ForwardingMode::Dsr) => "xdplb, dsr (`xdp_lb`)",
            Self::Lb(ForwardingMode::Ipip) => "xdplb, ipip (`xdp_lb`)",
            Self::Floor => "floor: MAC swap + XDP_TX (not a balancer)",
            Self::Nft => "peer: nftables DNAT (kernel forwarding)",
        }
    }
}

/// Per case and protocol: rates (frames/s) and the fraction of sent frames that arrived.
#[derive(Default)]
struct Samples {
    rate: Vec<f64>,
    wall_rate: Vec<f64>,
    delivered: Vec<f64>,
    lb_tx: Vec<f64>,
    hit: Vec<f64>,
}

pub fn run(args: &[String]) -> Result<()> {
    let runs: usize = args.first().map_or(Ok(RUNS), |s| s.parse()).context("runs")?;
    ensure!(runs > 0, "runs must be > 0");
    let mut pair = Pair::up()?;
    let mut dsr = Lb::new(ForwardingMode::Dsr)?;
    let mut ipip = Lb::new(ForwardingMode::Ipip)?;
    let cases =
        [Case::Lb(ForwardingMode::Dsr), Case::Lb(ForwardingMode::Ipip), Case::Floor, Case::Nft];
    let protos = [L4::Udp, L4::Tcp];
    let mut samples: Vec<Vec<Samples>> =
        cases.iter().map(|_| protos.iter().map(|_| Samples::default()).collect()).collect();
    let mut nft_conntrack = 0;
    for r in 0..runs {
        for (ci, &case) in cases.iter().enumerate() {
            let _link = match case {
                Case::Lb(ForwardingMode::Dsr) => dsr.attach()?,
                Case::Lb(ForwardingMode::Ipip) => ipip.attach()?,
                Case::Floor => pair.attach_tool("xdp_mac_swap")?,
                // lb0 needs an XDP program to accept the generator's XDP frames;
                // xdp_pass hands every one to the kernel stack unchanged.
                Case::Nft => pair.attach_tool("xdp_pass")?,
            };
            for (pi, &l4) in protos.iter().enumerate() {
                pair.send(l4, FLOWS, WARMUP)?;
                let lb = match case {
                    Case::Lb(ForwardingMode::Dsr) => Some(&dsr),
                    Case::Lb(ForwardingMode::Ipip) => Some(&ipip),
                    _ => None,
                };
                let before = (pair.received()?, lb.map(|l| l.stats.counters()).transpose()?);
                let sent = pair.send(l4, FLOWS, RUN)?;
                let got = pair.received()? - before.0;
                let s = &mut samples[ci][pi];
                s.rate.push(got as f64 / sent.cpu.as_secs_f64());
                s.wall_rate.push(got as f64 / sent.wall.as_secs_f64());
                s.delivered.push(got as f64 / sent.frames as f64);
                if let (Some(lb), Some(b)) = (lb, before.1) {
                    let a = lb.stats.counters()?;
                    let d = |c: Counter| (a.get(c) - b.get(c)) as f64;
                    s.lb_tx.push(d(Counter::ActionTx) / sent.frames as f64);
                    s.hit.push(
                        d(Counter::ConnHit) / (d(Counter::ConnHit) + d(Counter::ConnMiss)).max(1.0),
                    );
                }
                if case == Case::Nft {
                    nft_conntrack = nft_conntrack.max(veth::conntrack_count()?);
                }
                progress(format_args!(
                    "run {}/{runs} {:<45} {}: {:.2} Mpps per CPU-s, {:.2} Mpps wall, {:.1}% delivered",
                    r + 1,
                    case.label(),
                    l4.name(),
                    s.rate.last().copied().unwrap_or(0.0) / 1e6,
                    s.wall_rate.last().copied().unwrap_or(0.0) / 1e6,
                    100.0 * s.delivered.last().copied().unwrap_or(0.0)
                ));
            }
        }
    }
    drop(pair);
    report(&cases, &protos, &samples, runs, nft_conntrack);
    Ok(())
}

fn report(
    cases: &[Case],
    protos: &[L4],
    samples: &[Vec<Samples>],
    runs: usize,
    nft_conntrack: u64,
) {
    let floor = cases.iter().position(|&c| c == Case::Floor).unwrap_or(0);
    let nft = cases.iter().position(|&c| c == Case::Nft).unwrap_or(0);
    println!(
        "Method: a traffic generator on BPF_PROG_TEST_RUN in live-frames mode (`xdp_gen` in \
         `lb-ebpf/src/bin/tools.rs`, batches of 64) sends 64-byte frames (60 + FCS) out of veth \
         `gen0` in namespace `xbench-gen`; its peer `lb0` in namespace `xbench-dut` runs the case \
         and sends each frame back out of `lb0`; `xdp_count` on `gen0` counts what arrives. \
         `xdp_gen` writes every frame whole from a template and steps the source port over \
         {FLOWS} flows (checksums updated incrementally): live mode recycles pages, and the \
         receivers rewrite them (MACs, TTL, NAT), so a generator that only bounced the page would \
         send their output. TCP frames are ACKs of established flows, UDP frames datagrams; \
         xdp_lb has one TCP and one UDP VIP over 3 backends, loaded as `xdplb run` loads it \
         (default map sizes) and filled by the controller's map writer. The kernel peer: \
         `xdp_pass` on `lb0` (a veth only accepts XDP frames when it runs XDP), then IPv4 \
         forwarding with an nftables `dnat to jhash ... map` rule over the same 3 backends \
         (connection tracking on, as DNAT needs). The generator is pinned to one CPU; the veths' \
         NAPI polls run on that CPU when the test run flushes each batch (or in its ksoftirqd), so \
         generator, forwarder and sink share one CPU in every case. The rate is the sink's frames \
         per CPU-second spent on them (the generator thread's CPU time, which includes the polls \
         run inline, plus that CPU's ksoftirqd time): time taken by other processes on this shared \
         machine is left out; the wall-clock rate, which includes it, is shown too. Cases are interleaved run by run ({runs} runs of {} s each per case and \
         protocol, after a {} ms warm-up), so a busy neighbour slows all of them alike; read the \
         ratios.\n",
        RUN.as_secs(),
        WARMUP.as_millis()
    );
    println!(
        "| case | frames | Mpps per CPU-second, median (min–max) | × floor | × nftables | ns per frame, whole path | wall-clock Mpps, median |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (pi, l4) in protos.iter().enumerate() {
        for (ci, case) in cases.iter().enumerate() {
            let s = &samples[ci][pi];
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.2} |",
                case.label(),
                l4.name(),
                show(&s.rate.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2),
                ratio(&s.rate, &samples[floor][pi].rate),
                ratio(&s.rate, &samples[nft][pi].rate),
                Summary::of(&s.rate).map_or(f64::NAN, |r| 1e9 / r.median),
                Summary::of(&s.wall_rate).map_or(f64::NAN, |w| w.median / 1e6)
            );
        }
    }
    println!();
    let mut notes = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        for (pi, l4) in protos.iter().enumerate() {
            let s = &samples[ci][pi];
            let d = Summary::of(&s.delivered).map_or(0.0, |x| x.min);
            let mut n = format!(
                "{} {}: ≥ {:.1}% of sent frames arrived",
                case.label(),
                l4.name(),
                100.0 * d
            );
            if let (Some(tx), Some(hit)) = (Summary::of(&s.lb_tx), Summary::of(&s.hit)) {
                let _ = write!(
                    n,
                    ", xdp_lb counted {:.1}% as XDP_TX, {:.2}% connection-table hits",
                    100.0 * tx.median,
                    100.0 * hit.median
                );
            }
            notes.push(n);
        }
    }
    println!("Checks: {}.", notes.join("; "));
    println!();
    println!(
        "The nftables case held {nft_conntrack} conntrack entries (every flow was DNATed through connection tracking)."
    );
    println!();
    targets(cases, protos, samples, floor, nft);
}

fn targets(cases: &[Case], protos: &[L4], samples: &[Vec<Samples>], floor: usize, nft: usize) {
    println!(
        "\"ns per frame, whole path\" is 1 / rate: generator, both veths, the case and the sink. \
         The part every case shares dilutes the ratios (a lighter harness would lower xdplb's \
         ratio to the floor, a heavier one raise it); the difference to the floor's row is what \
         xdp_lb adds per frame in place, to compare with `bench xdp`.\n"
    );
    println!("Targets (issue #5): xdplb ≥ 0.8 × the floor's packet rate; ≥ 3 × nftables DNAT.\n");
    for (ci, case) in cases.iter().enumerate() {
        let Case::Lb(_) = case else { continue };
        for (pi, l4) in protos.iter().enumerate() {
            let f = ratio(&samples[ci][pi].rate, &samples[floor][pi].rate);
            let n = ratio(&samples[ci][pi].rate, &samples[nft][pi].rate);
            let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
            println!(
                "- {} {}: {:.2} × floor ({}), {:.2} × nftables ({}).",
                case.label(),
                l4.name(),
                f,
                verdict(f >= 0.8),
                n,
                verdict(n >= 3.0)
            );
        }
    }
}
