//! `bench live`: packets per second forwarded through a veth by xdplb (dsr, ipip),
//! by the least an XDP forwarder does (MAC swap + XDP_TX, the floor), by the least
//! an IPIP forwarder does (the floor plus an outer IPv4 header, the ipip floor), by
//! the kernel's nftables DNAT (the kernel peer) and by any balancer pinned outside
//! this repository (`--reference`: Katran), side by side in one run.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use lb_common::{Counter, ForwardingMode};
use lb_userspace::stats::Stats as _;

use super::{
    object::Object,
    progress,
    reference::Reference,
    stats::{Summary, ratio, show},
    veth::{self, L4, Lb, Pair},
};

/// Distinct flows (source ports) in every case, unless `--flows` says otherwise.
pub const FLOWS: u32 = 4096;
const RUNS: usize = 6;
/// Loads of each balancer, measured in turn run by run: two loads of one object
/// differ by up to ~15 ns per frame here (where the kernel puts the program, it
/// seems), so a figure from one load is partly that load's luck.
const LOADS: usize = 2;
const RUN: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_millis(300);
/// Environment variable naming the forwarding modes and protocols to run, as
/// comma-separated words (`dsr`, `ipip`, `udp`, `tcp`); a kind left unnamed runs whole.
pub const ONLY: &str = "LIVE_BENCH_ONLY";
/// Issue #5's target: xdplb at least this fraction of the floor's packet rate.
const FLOOR_TARGET: f64 = 0.8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The balancer at this index of [`Setup::lbs`].
    Lb(usize),
    Floor,
    /// `xdp_ipip_floor`: what no IPIP forwarder can skip (runs when ipip does).
    IpipFloor,
    Nft,
    /// The pinned program at this index of [`Setup::refs`] (`--reference`).
    Reference(usize),
}

/// An xdp_lb under test: which object, in which mode, loaded [`LOADS`] times.
struct LbCase {
    object: usize,
    mode: ForwardingMode,
    loads: Vec<Lb>,
}

impl LbCase {
    /// The load run `r` measures.
    fn load(&mut self, r: usize) -> &mut Lb {
        let n = self.loads.len();
        &mut self.loads[r % n]
    }
}

/// A program pinned outside this repository (`--reference NAME=PIN`; a name given
/// twice is two loads, measured in turn as xdp_lb's are).
struct RefCase {
    name: &'static str,
    loads: Vec<Reference>,
}

impl RefCase {
    /// The load run `r` measures.
    fn load(&mut self, r: usize) -> &mut Reference {
        let n = self.loads.len();
        &mut self.loads[r % n]
    }
}

/// The loads of each reference, grouped by name in the order first given.
fn ref_cases(refs: Vec<Reference>) -> Vec<RefCase> {
    by_name(refs, |r| r.name).into_iter().map(|(name, loads)| RefCase { name, loads }).collect()
}

/// `items` grouped by `name`, the groups in the order each name first comes, each
/// group's items in their order.
fn by_name<T>(items: Vec<T>, name: impl Fn(&T) -> &'static str) -> Vec<(&'static str, Vec<T>)> {
    let mut groups: Vec<(&'static str, Vec<T>)> = Vec::new();
    for item in items {
        let n = name(&item);
        match groups.iter_mut().find(|g| g.0 == n) {
            Some(g) => g.1.push(item),
            None => groups.push((n, vec![item])),
        }
    }
    groups
}

/// What one `bench live` measures.
struct Setup {
    runs: usize,
    flows: u32,
    /// The objects of an A/B (`--object`), or the embedded one alone.
    objects: Vec<Object>,
    ab: bool,
    lbs: Vec<LbCase>,
    refs: Vec<RefCase>,
    cases: Vec<Case>,
    protos: Vec<L4>,
}

impl Setup {
    fn label(&self, case: Case) -> String {
        match case {
            Case::Lb(i) => {
                let l = &self.lbs[i];
                let mode = mode_name(l.mode);
                if self.ab {
                    format!("{}, {mode}", self.objects[l.object].name)
                } else {
                    format!("xdplb, {mode} (`xdp_lb`)")
                }
            }
            Case::Floor => "floor: MAC swap + XDP_TX (not a balancer)".into(),
            Case::IpipFloor => {
                "ipip floor: MAC swap + outer IPv4 header + XDP_TX (not a balancer)".into()
            }
            Case::Nft => "peer: nftables DNAT (kernel forwarding)".into(),
            Case::Reference(i) => {
                format!("{} (`--reference`, pinned outside this repository)", self.refs[i].name)
            }
        }
    }
}

fn mode_name(mode: ForwardingMode) -> &'static str {
    match mode {
        ForwardingMode::Dsr => "dsr",
        ForwardingMode::Ipip => "ipip",
    }
}

/// The modes and protocols `LIVE_BENCH_ONLY` (`words`) keeps.
fn only(words: &str) -> Result<(Vec<ForwardingMode>, Vec<L4>)> {
    let (mut modes, mut protos) = (Vec::new(), Vec::new());
    for w in words.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match w.to_ascii_lowercase().as_str() {
            "dsr" => modes.push(ForwardingMode::Dsr),
            "ipip" => modes.push(ForwardingMode::Ipip),
            "udp" => protos.push(L4::Udp),
            "tcp" => protos.push(L4::Tcp),
            _ => bail!("{ONLY}: unknown word `{w}` (known: dsr, ipip, udp, tcp)"),
        }
    }
    if modes.is_empty() {
        modes = vec![ForwardingMode::Dsr, ForwardingMode::Ipip];
    }
    if protos.is_empty() {
        protos = vec![L4::Udp, L4::Tcp];
    }
    Ok((modes, protos))
}

/// `bench live [RUNS] [--flows N] [--object NAME=FILE]... [--reference NAME=PIN]...`.
/// With `--object` (repeated; `FILE` `main` = the embedded object): an A/B of the
/// objects against the floor, nftables left out, printed for development. With
/// `--reference` (repeated; a name twice is two loads): a program loaded, configured
/// for this rig's VIP (`veth::VIP`, TCP 80 and UDP 53) and pinned outside this
/// repository, run as one more case beside xdp_lb.
fn setup(args: &[String]) -> Result<Setup> {
    let (mut objects, plain) = Object::split_args(args)?;
    let (refs, plain) = Reference::split_args(&plain)?;
    let (mut runs, mut flows) = (RUNS, FLOWS);
    let mut it = plain.into_iter();
    let mut positional = 0;
    while let Some(a) = it.next() {
        if a == "--flows" {
            flows = it.next().context("--flows needs N")?.parse().context("--flows")?;
            ensure!(flows > 0, "--flows must be > 0");
        } else {
            ensure!(positional == 0, "unexpected argument `{a}`");
            runs = a.parse().context("runs")?;
            positional += 1;
        }
    }
    ensure!(runs > 0, "runs must be > 0");
    let ab = !objects.is_empty();
    ensure!(refs.is_empty() || !ab, "--reference and --object do not go together");
    if !ab {
        objects.push(Object::embedded());
    }
    let (modes, protos) = only(&std::env::var(ONLY).unwrap_or_default())?;
    let mut lbs = Vec::new();
    for (o, object) in objects.iter().enumerate() {
        for &mode in &modes {
            let loads = (0..LOADS)
                .map(|_| {
                    Lb::new_of(object.bytes, mode, object.conns)
                        .with_context(|| format!("object {}, {}", object.name, mode_name(mode)))
                })
                .collect::<Result<_>>()?;
            lbs.push(LbCase { object: o, mode, loads });
        }
    }
    let mut cases: Vec<Case> = (0..lbs.len()).map(Case::Lb).collect();
    cases.push(Case::Floor);
    if modes.contains(&ForwardingMode::Ipip) {
        cases.push(Case::IpipFloor);
    }
    if !ab {
        cases.push(Case::Nft);
    }
    let refs = ref_cases(refs);
    cases.extend((0..refs.len()).map(Case::Reference));
    Ok(Setup { runs, flows, objects, ab, lbs, refs, cases, protos })
}

/// Per case and protocol: rates (frames/s) and the fraction of sent frames that arrived.
#[derive(Default)]
struct Samples {
    rate: Vec<f64>,
    wall_rate: Vec<f64>,
    delivered: Vec<f64>,
    lb_tx: Vec<f64>,
    hit: Vec<f64>,
    /// An A/B's floor rate measured right after each of this case's runs.
    paired_floor: Vec<f64>,
}

impl Samples {
    fn push(&mut self, s: Sample) {
        self.rate.push(s.rate);
        self.wall_rate.push(s.wall_rate);
        self.delivered.push(s.delivered);
        if let Some((tx, hit)) = s.counted {
            self.lb_tx.push(tx);
            self.hit.push(hit);
        }
    }
}

/// One run of one case and protocol.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    wall_rate: f64,
    delivered: f64,
    /// xdp_lb's XDP_TX and connection-table-hit fractions (an xdp_lb case).
    counted: Option<(f64, f64)>,
}

/// Attaches `case` to lb0 and sends `l4` frames through it: a warm-up, then a run.
fn measure(pair: &mut Pair, setup: &mut Setup, case: Case, l4: L4, r: usize) -> Result<Sample> {
    let (ab, flows, label) = (setup.ab, setup.flows, setup.label(case));
    let _link = match case {
        Case::Lb(i) => setup.lbs[i].load(r).attach()?,
        Case::Floor => pair.attach_tool("xdp_mac_swap")?,
        Case::IpipFloor => pair.attach_tool("xdp_ipip_floor")?,
        // lb0 needs an XDP program to accept the generator's XDP frames;
        // xdp_pass hands every one to the kernel stack unchanged.
        Case::Nft => pair.attach_tool("xdp_pass")?,
        Case::Reference(i) => veth::attach_dut(&mut setup.refs[i].load(r).prog)?,
    };
    pair.send(l4, flows, WARMUP)?;
    let lb = match case {
        Case::Lb(i) => Some(&*setup.lbs[i].load(r)),
        _ => None,
    };
    // An A/B object may count in another layout: its checks are then left out.
    let counters = |lb: &Lb| {
        let c = lb.stats.counters();
        if ab { Ok(c.ok()) } else { c.map(Some) }
    };
    let before = (pair.received()?, lb.map(counters).transpose()?.flatten());
    let sent = pair.send(l4, flows, RUN)?;
    let got = pair.received()? - before.0;
    let mut counted = None;
    if let (Some(lb), Some(b)) = (lb, before.1)
        && let Some(a) = counters(lb)?
    {
        let d = |c: Counter| (a.get(c) - b.get(c)) as f64;
        counted = Some((
            d(Counter::ActionTx) / sent.frames as f64,
            d(Counter::ConnHit) / (d(Counter::ConnHit) + d(Counter::ConnMiss)).max(1.0),
        ));
    }
    let s = Sample {
        rate: got as f64 / sent.cpu.as_secs_f64(),
        wall_rate: got as f64 / sent.wall.as_secs_f64(),
        delivered: got as f64 / sent.frames as f64,
        counted,
    };
    let load = match case {
        Case::Lb(_) => format!(", load {}", r % LOADS + 1),
        Case::Reference(i) if setup.refs[i].loads.len() > 1 => {
            format!(", load {}", r % setup.refs[i].loads.len() + 1)
        }
        _ => String::new(),
    };
    progress(format_args!(
        "run {}/{} {:<45} {}: {:.2} Mpps per CPU-s, {:.2} Mpps wall, {:.1}% delivered",
        r + 1,
        setup.runs,
        label + &load,
        l4.name(),
        s.rate / 1e6,
        s.wall_rate / 1e6,
        100.0 * s.delivered
    ));
    Ok(s)
}

pub fn run(args: &[String]) -> Result<()> {
    let mut setup = setup(args)?;
    let mut pair = Pair::up()?;
    let (runs, ab, protos) = (setup.runs, setup.ab, setup.protos.clone());
    let mut samples: Vec<Vec<Samples>> = setup
        .cases
        .iter()
        .map(|_| setup.protos.iter().map(|_| Samples::default()).collect())
        .collect();
    let mut nft_conntrack = 0;
    let floor = setup.cases.iter().position(|&c| c == Case::Floor).unwrap_or(0);
    for r in 0..runs {
        // Each run starts at another case, so no case always comes first.
        let n = setup.cases.len();
        for ci in (0..n).map(|i| (i + r) % n) {
            let case = setup.cases[ci];
            // The floor is measured right after each other case's run (paired): the
            // load on this shared machine drifts over a minute, and ratios to a floor
            // measured once a round moved by ±0.1.
            if case == Case::Floor {
                continue;
            }
            for (pi, &l4) in protos.iter().enumerate() {
                let got = measure(&mut pair, &mut setup, case, l4, r)?;
                if case == Case::Nft {
                    nft_conntrack = nft_conntrack.max(veth::conntrack_count()?);
                }
                samples[ci][pi].push(got);
                let f = measure(&mut pair, &mut setup, Case::Floor, l4, r)?;
                samples[ci][pi].paired_floor.push(f.rate);
                samples[floor][pi].push(f);
            }
        }
    }
    drop(pair);
    if ab {
        report_objects(&setup, &samples);
        return Ok(());
    }
    report(&setup, &samples, nft_conntrack);
    Ok(())
}

/// The A/B table: per object, mode and protocol, the rate, its ratio to the floor of
/// the same run (median over runs), the ns per frame it adds over that floor, and the
/// ratio to the first object.
fn report_objects(setup: &Setup, samples: &[Vec<Samples>]) {
    let floor = setup.cases.iter().position(|&c| c == Case::Floor).unwrap_or(0);
    let names: Vec<&str> = setup.objects.iter().map(|o| o.name.as_str()).collect();
    println!(
        "### A/B of xdp-lb objects, live (`bench live --object`)\n\n\
         Each object loaded as `xdplb run` loads it (default map sizes unless `NAME=FILE@N` \
         gives `conn_table_size: N`, filled by the map writer), {LOADS} times, the loads measured \
         in turn run by run, each run of it followed by a run of the floor (the pair's ratio is robust to \
         the load drifting on this shared machine); {} runs of {} s per case and protocol \
         ({} ms warm-up), {} flows, each run starting at another object; nftables left out. \
         \"× floor\" and \"ns over floor\" are medians over runs of each run's figure against \
         the floor run right after it (ns per frame = 1e9 / rate). Objects: {}.\n",
        setup.runs,
        RUN.as_secs(),
        WARMUP.as_millis(),
        setup.flows,
        names.join(", ")
    );
    println!(
        "| object | mode | frames | Mpps per CPU-second, median (min–max) | × floor, median (run by run) | ns per frame | ns over floor | × {} |",
        names[0]
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (pi, l4) in setup.protos.iter().enumerate() {
        let floor_rate = &samples[floor][pi].rate;
        for (ci, &case) in setup.cases.iter().enumerate() {
            let (rate, paired) = (&samples[ci][pi].rate, &samples[ci][pi].paired_floor);
            let (object, mode, vs_first) = match case {
                Case::Lb(i) => {
                    let l = &setup.lbs[i];
                    // The same mode's balancer of the first object.
                    let first = setup
                        .cases
                        .iter()
                        .position(|&c| matches!(c, Case::Lb(j) if setup.lbs[j].object == 0 && setup.lbs[j].mode == l.mode))
                        .unwrap_or(ci);
                    let vs = format!("{:.2}", ratio(rate, &samples[first][pi].rate));
                    (names[l.object], mode_name(l.mode), vs)
                }
                Case::IpipFloor => ("ipip floor", "–", "–".to_owned()),
                Case::Floor | Case::Nft | Case::Reference(_) => continue,
            };
            let per_run = per_run_ratios(rate, paired);
            println!(
                "| {object} | {mode} | {} | {} | {:.2} ({}) | {:.0} | {:.0} | {vs_first} |",
                l4.name(),
                show(&rate.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2),
                Summary::of(&per_run).map_or(f64::NAN, |s| s.median),
                per_run.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" "),
                Summary::of(rate).map_or(f64::NAN, |r| 1e9 / r.median),
                ns_over(rate, paired),
            );
        }
        println!(
            "| floor | – | {} | {} | 1.00 | {:.0} | 0 | – |",
            l4.name(),
            show(&floor_rate.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2),
            Summary::of(floor_rate).map_or(f64::NAN, |r| 1e9 / r.median),
        );
    }
    println!();
    if let Some(ipip) = setup.cases.iter().position(|&c| c == Case::IpipFloor) {
        for (pi, l4) in setup.protos.iter().enumerate() {
            let s = &samples[ipip][pi];
            println!("- {} {}", l4.name(), ipip_reach(&per_run_ratios(&s.rate, &s.paired_floor)));
        }
        println!();
    }
    println!("Checks: {}.", checks(setup, samples));
}

/// Each run's rate against the floor's run it is paired with.
fn per_run_ratios(rate: &[f64], floor: &[f64]) -> Vec<f64> {
    rate.iter().zip(floor).map(|(a, f)| a / f).collect()
}

/// The median of each load's runs among `per_run` (run r measured load r % loads).
fn by_load(per_run: &[f64], loads: usize) -> Vec<Option<f64>> {
    (0..loads)
        .map(|l| {
            let of: Vec<f64> = per_run.iter().skip(l).step_by(loads).copied().collect();
            Summary::of(&of).map(|x| x.median)
        })
        .collect()
}

/// `by_load` as a target line shows it: "0.82, 0.85".
fn show_by_load(per_run: &[f64], loads: usize) -> String {
    by_load(per_run, loads)
        .iter()
        .map(|m| m.map_or("–".to_owned(), |m| format!("{m:.2}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the ipip floor's runs (× floor) say of [`FLOOR_TARGET`] for any IPIP
/// forwarder on this host: xdp_lb in ipip mode does at least what it does.
fn ipip_reach(per_run: &[f64]) -> String {
    let Some(s) = Summary::of(per_run) else { return "ipip floor: no runs".into() };
    let reached = per_run.iter().filter(|&&x| x >= FLOOR_TARGET).count();
    let reach = if reached == 0 {
        format!("no IPIP forwarder reaches {FLOOR_TARGET} here")
    } else {
        format!(
            "an IPIP forwarder reaches {FLOOR_TARGET} here in {reached} of {} runs",
            per_run.len()
        )
    };
    format!("ipip floor {:.2} × floor (runs {:.2}–{:.2}): {reach}", s.median, s.min, s.max)
}

/// The checks line: per case and protocol, the least fraction of sent frames that
/// arrived and, for xdp_lb, what it counted.
fn checks(setup: &Setup, samples: &[Vec<Samples>]) -> String {
    let mut notes = Vec::new();
    for (ci, &case) in setup.cases.iter().enumerate() {
        for (pi, l4) in setup.protos.iter().enumerate() {
            let s = &samples[ci][pi];
            let d = Summary::of(&s.delivered).map_or(0.0, |x| x.min);
            let mut n = format!(
                "{} {}: ≥ {:.1}% of sent frames arrived",
                setup.label(case),
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
    notes.join("; ")
}

fn report(setup: &Setup, samples: &[Vec<Samples>], nft_conntrack: u64) {
    let (cases, protos, runs, flows) = (&setup.cases, &setup.protos, setup.runs, setup.flows);
    let nft = cases.iter().position(|&c| c == Case::Nft).unwrap_or(0);
    println!(
        "Method: a traffic generator on BPF_PROG_TEST_RUN in live-frames mode (`xdp_gen` in \
         `lb-ebpf/src/bin/tools.rs`, batches of 64) sends 64-byte frames (60 + FCS) out of veth \
         `gen0` in namespace `xbench-gen`; its peer `lb0` in namespace `xbench-dut` runs the case \
         and sends each frame back out of `lb0`; `xdp_count` on `gen0` counts what arrives. \
         `xdp_gen` writes every frame whole from a template and steps the source port over \
         {flows} flows (checksums updated incrementally): live mode recycles pages, and the \
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
         machine is left out; the wall-clock rate, which includes it, is shown too. Cases are \
         interleaved run by run ({runs} runs of {} s each per case and protocol, after a {} ms \
         warm-up), each run starting at another case, and every run of a case is followed by a \
         run of the floor: \"× floor\" and \"ns over floor\" are medians over runs of each run's \
         figure against the floor run right after it (the load on this shared machine drifts \
         over a minute; a floor measured once a round moved the ratios by ±0.1). Each balancer \
         is loaded {LOADS} times, as `xdplb run` would load it, the loads measured in turn run by \
         run (two loads of one object differ by up to ~15 ns per frame here, where the kernel \
         put the program, it seems): the figures pool both, and each target line gives the \
         median of each load's runs too.\n",
        RUN.as_secs(),
        WARMUP.as_millis()
    );
    println!(
        "| case | frames | Mpps per CPU-second, median (min–max) | × floor, median of paired runs (min–max) | × nftables | ns per frame, whole path | ns over floor | wall-clock Mpps, median |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (pi, l4) in protos.iter().enumerate() {
        for (ci, case) in cases.iter().enumerate() {
            let s = &samples[ci][pi];
            let (vs_floor, over) = if *case == Case::Floor {
                ("1.00".to_owned(), 0.0)
            } else {
                (
                    show(&per_run_ratios(&s.rate, &s.paired_floor), 2),
                    ns_over(&s.rate, &s.paired_floor),
                )
            };
            println!(
                "| {} | {} | {} | {vs_floor} | {:.2} | {:.0} | {over:.0} | {:.2} |",
                setup.label(*case),
                l4.name(),
                show(&s.rate.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2),
                ratio(&s.rate, &samples[nft][pi].rate),
                Summary::of(&s.rate).map_or(f64::NAN, |r| 1e9 / r.median),
                Summary::of(&s.wall_rate).map_or(f64::NAN, |w| w.median / 1e6)
            );
        }
    }
    println!();
    println!("Checks: {}.", checks(setup, samples));
    println!();
    println!(
        "The nftables case held {nft_conntrack} conntrack entries (every flow was DNATed through connection tracking)."
    );
    println!();
    targets(setup, samples, nft);
}

/// Median over runs of the ns per frame a case adds to the floor's run paired with
/// it (measured right after it).
fn ns_over(rate: &[f64], floor: &[f64]) -> f64 {
    let over: Vec<f64> = rate.iter().zip(floor).map(|(a, f)| 1e9 / a - 1e9 / f).collect();
    Summary::of(&over).map_or(f64::NAN, |s| s.median)
}

fn targets(setup: &Setup, samples: &[Vec<Samples>], nft: usize) {
    println!(
        "\"ns per frame, whole path\" is 1 / rate: generator, both veths, the case and the sink. \
         The part every case shares dilutes the ratios (a lighter harness would lower xdplb's \
         ratio to the floor, a heavier one raise it); the difference to the floor's row is what \
         xdp_lb adds per frame in place, to compare with `bench xdp`.\n"
    );
    println!(
        "Targets (issue #5): xdplb ≥ {FLOOR_TARGET} × the floor's packet rate; ≥ 3 × nftables \
         DNAT. Every row is judged against the floor (MAC swap); next to ipip's, what the ipip \
         floor (the least any IPIP forwarder does: the floor plus one head move and an outer \
         header, frames 20 bytes longer on the way back, as ipip's) reads against its paired \
         floors, run by run.\n"
    );
    let ipip_floor = setup.cases.iter().position(|&c| c == Case::IpipFloor);
    for (ci, &case) in setup.cases.iter().enumerate() {
        let Case::Lb(i) = case else { continue };
        for (pi, l4) in setup.protos.iter().enumerate() {
            let got = &samples[ci][pi];
            let per_run = per_run_ratios(&got.rate, &got.paired_floor);
            let f = Summary::of(&per_run).map_or(f64::NAN, |x| x.median);
            let n = ratio(&got.rate, &samples[nft][pi].rate);
            let loads = show_by_load(&per_run, LOADS);
            let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
            let reach = match ipip_floor {
                Some(c) if setup.lbs[i].mode == ForwardingMode::Ipip => format!(
                    "; {}",
                    ipip_reach(&per_run_ratios(&samples[c][pi].rate, &samples[c][pi].paired_floor))
                ),
                _ => String::new(),
            };
            println!(
                "- {} {}: {:.2} × floor ({}; by load {loads}), {:.2} × nftables ({}){reach}.",
                setup.label(case),
                l4.name(),
                f,
                verdict(f >= FLOOR_TARGET),
                n,
                verdict(n >= 3.0)
            );
        }
    }
    references(setup, samples);
}

/// Each `--reference` beside xdp_lb: its rate against the floor (paired as
/// xdp_lb's), and xdp_lb's in each mode over its (the medians of each against the
/// floor: both pairings cancel the load's drift).
fn references(setup: &Setup, samples: &[Vec<Samples>]) {
    let against_floor = |ci: usize, pi: usize| {
        let s: &Samples = &samples[ci][pi];
        per_run_ratios(&s.rate, &s.paired_floor)
    };
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |x| x.median);
    for (ci, &case) in setup.cases.iter().enumerate() {
        let Case::Reference(i) = case else { continue };
        let name = setup.refs[i].name;
        for (pi, l4) in setup.protos.iter().enumerate() {
            let theirs = against_floor(ci, pi);
            let ours: Vec<String> = setup
                .cases
                .iter()
                .enumerate()
                .filter_map(|(c, &k)| match k {
                    Case::Lb(j) => Some(format!(
                        "{} {:.2}",
                        mode_name(setup.lbs[j].mode),
                        median(&against_floor(c, pi)) / median(&theirs)
                    )),
                    _ => None,
                })
                .collect();
            println!(
                "- {name} {}: {:.2} × floor (by load {}); xdplb's rate over {name}'s: {} \
                 (medians against the floor).",
                l4.name(),
                median(&theirs),
                show_by_load(&theirs, setup.refs[i].loads.len()),
                ours.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keeps_the_named_modes_and_protocols_and_all_of_an_unnamed_kind() {
        let (modes, protos) = only("").unwrap();
        assert_eq!(modes, [ForwardingMode::Dsr, ForwardingMode::Ipip]);
        assert_eq!(protos, [L4::Udp, L4::Tcp]);
        let (modes, protos) = only("ipip").unwrap();
        assert_eq!(modes, [ForwardingMode::Ipip]);
        assert_eq!(protos, [L4::Udp, L4::Tcp]);
        let (modes, protos) = only("dsr, TCP").unwrap();
        assert_eq!(modes, [ForwardingMode::Dsr]);
        assert_eq!(protos, [L4::Tcp]);
        assert!(only("dsr,sctp").unwrap_err().to_string().contains("`sctp`"));
    }

    #[test]
    fn a_references_loads_are_one_case_however_they_were_given() {
        let given = vec![("katran", 1), ("other", 1), ("katran", 2)];
        let groups = by_name(given, |g| g.0);
        assert_eq!(groups.len(), 2, "one case per name");
        assert_eq!(groups[0], ("katran", vec![("katran", 1), ("katran", 2)]));
        assert_eq!(groups[1], ("other", vec![("other", 1)]));
    }

    #[test]
    fn each_loads_median_is_of_the_runs_that_measured_it() {
        // Runs alternate the loads: 1, 2, 1, 2, 1, 2.
        let per_run = [0.80, 0.90, 0.82, 0.92, 0.84, 0.94];
        assert_eq!(by_load(&per_run, 2), [Some(0.82), Some(0.92)]);
        assert_eq!(by_load(&[0.8], 2), [Some(0.8), None], "one run measured one load");
        // Three loads (a reference given three times): runs 1, 2, 3, 1, 2, 3.
        assert_eq!(by_load(&[0.5, 1.0, 2.0, 0.5, 1.0, 2.0], 3), [Some(0.5), Some(1.0), Some(2.0)]);
    }

    #[test]
    fn the_ipip_floor_verdict_counts_the_runs_that_reach_the_target() {
        let none = ipip_reach(&[0.70, 0.79, 0.75]);
        assert!(none.contains("no IPIP forwarder reaches 0.8 here"), "{none}");
        let some = ipip_reach(&[0.93, 0.77, 0.95]);
        assert!(some.contains("0.93 × floor (runs 0.77–0.95)"), "{some}");
        assert!(some.contains("reaches 0.8 here in 2 of 3 runs"), "{some}");
        assert!(ipip_reach(&[0.8]).contains("in 1 of 1 runs"), "the target itself is reached");
    }
}
