//! The fuzzer: seeded random and mutated frames through the real `xdp-lb` (dsr and
//! ipip) and `xdp-decap` with BPF_PROG_TEST_RUN, every output judged by
//! [`oracle`], and the programs' own counters checked against what came out.
//!
//! Each run starts with every valid template cut at every length, then random
//! frames ([`frames`]), half of them mutated. A failure names the seed, the frame's
//! number and both frames in hex, so it can be replayed.

pub mod frames;
pub mod oracle;

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    time::{Duration, Instant},
};

use lb_common::{Counter, CounterSet, DecapCounter, DecapCounterSet, ForwardingMode};

use self::{
    frames::{MIN_FRAME, Rng, decap_frame, lb_frame, mutate, templates},
    oracle::{DECAP_INVARIANTS, DecapOracle, LB_INVARIANTS, LbOracle, Outcome},
};
use crate::{
    balancer::{Balancer, Run},
    decapsulator::{Decapsulator, standard_rules},
};

/// The seed of `cargo xtask test`'s runs (any other replays another sequence).
pub const DEFAULT_SEED: u64 = 0x5eed_f022_0009;
/// How often the programs' counters are read and compared with the outcomes.
const COUNTER_CHECK_EVERY: u64 = 25_000;

/// What a run did.
pub struct Report {
    pub program: &'static str,
    pub seed: u64,
    pub frames: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub invariants: &'static [&'static str],
    /// How many times the counters were compared with the outcomes.
    pub counter_checks: u64,
    pub took: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self.frames * 1000 / (self.took.as_millis() as u64).max(1);
        writeln!(
            f,
            "fuzz {}: {} frames (seed {:#x}) in {:.1} s ({rate} frames/s), no invariant broken",
            self.program,
            self.frames,
            self.seed,
            self.took.as_secs_f64()
        )?;
        let outcomes: Vec<String> =
            self.outcomes.iter().map(|(o, n)| format!("{} {n}", o.name())).collect();
        writeln!(f, "  outcomes: {}", outcomes.join(", "))?;
        writeln!(f, "  {} invariants checked on every frame:", self.invariants.len())?;
        for i in self.invariants {
            writeln!(f, "    - {i}")?;
        }
        write!(
            f,
            "  and the program's counters add up to the frames sent and match the outcomes ({} checks)",
            self.counter_checks
        )
    }
}

/// A broken invariant, with what it takes to replay it.
fn broken(program: &str, seed: u64, n: u64, input: &[u8], run: &Run, why: &str) -> String {
    format!(
        "fuzz {program}, seed {seed:#x}, frame {n}: {why}\n  in  ({} bytes): {}\n  out ({} bytes, action {}): {}",
        input.len(),
        hex(input),
        run.frame.len(),
        run.action,
        hex(&run.frame)
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The frames of a run: every template cut at every length, then `frames` minus
/// those, random and mutated.
fn sequence(
    rng: &mut Rng,
    frames: u64,
    random: fn(&mut Rng) -> Vec<u8>,
) -> impl Iterator<Item = Vec<u8>> + '_ {
    let cuts: Vec<Vec<u8>> = templates()
        .into_iter()
        .flat_map(|t| (MIN_FRAME..=t.len()).map(move |n| t[..n].to_vec()).collect::<Vec<_>>())
        .collect();
    let random_count = frames.saturating_sub(cuts.len() as u64);
    cuts.into_iter()
        .chain((0..random_count).map(move |_| {
            let f = random(rng);
            mutate(rng, f)
        }))
        .take(usize::try_from(frames).unwrap_or(usize::MAX))
}

/// `frames` frames through `xdp-lb`, half in dsr mode, half in ipip mode.
pub fn xdp_lb(frames: u64, seed: u64) -> Result<Report, String> {
    let started = Instant::now();
    let mut outcomes = BTreeMap::new();
    let mut counter_checks = 0;
    for (mode, share) in
        [(ForwardingMode::Dsr, frames / 2), (ForwardingMode::Ipip, frames - frames / 2)]
    {
        let lb = Balancer::new(mode);
        let oracle = LbOracle::new(&lb.plan);
        let mut rng = Rng::new(seed ^ mode as u64);
        let mut tally = Tally::default();
        let mut last = lb.counters();
        for (n, frame) in sequence(&mut rng, share, lb_frame).enumerate() {
            let run = lb.run(&frame);
            let outcome = oracle.check(&frame, &run).map_err(|why| {
                broken(&format!("xdp-lb ({mode:?})"), seed, n as u64, &frame, &run, &why)
            })?;
            tally.add(outcome);
            *outcomes.entry(outcome).or_insert(0) += 1;
            if (n as u64 + 1).is_multiple_of(COUNTER_CHECK_EVERY) {
                let now = lb.counters();
                lb_counters_add_up(&last, &now, &tally)
                    .map_err(|e| format!("xdp-lb ({mode:?}), after frame {n}: {e}"))?;
                (last, tally, counter_checks) = (now, Tally::default(), counter_checks + 1);
            }
        }
        lb_counters_add_up(&last, &lb.counters(), &tally)
            .map_err(|e| format!("xdp-lb ({mode:?}): {e}"))?;
        counter_checks += 1;
    }
    Ok(Report {
        program: "xdp-lb",
        seed,
        frames,
        outcomes,
        invariants: LB_INVARIANTS,
        counter_checks,
        took: started.elapsed(),
    })
}

/// `frames` frames through `xdp-decap` with the fixtures' rules.
pub fn xdp_decap(frames: u64, seed: u64) -> Result<Report, String> {
    let started = Instant::now();
    let rules = standard_rules();
    let d = Decapsulator::new(&rules);
    let oracle = DecapOracle::new(&rules);
    let mut rng = Rng::new(seed);
    let mut outcomes = BTreeMap::new();
    let (mut tally, mut last, mut counter_checks) = (Tally::default(), d.counters(), 0);
    for (n, frame) in sequence(&mut rng, frames, decap_frame).enumerate() {
        let run = d.run(&frame);
        let outcome = oracle
            .check(&frame, &run)
            .map_err(|why| broken("xdp-decap", seed, n as u64, &frame, &run, &why))?;
        tally.add(outcome);
        *outcomes.entry(outcome).or_insert(0) += 1;
        if (n as u64 + 1).is_multiple_of(COUNTER_CHECK_EVERY) {
            let now = d.counters();
            decap_counters_add_up(&last, &now, &tally)
                .map_err(|e| format!("xdp-decap, after frame {n}: {e}"))?;
            (last, tally, counter_checks) = (now, Tally::default(), counter_checks + 1);
        }
    }
    decap_counters_add_up(&last, &d.counters(), &tally).map_err(|e| format!("xdp-decap: {e}"))?;
    counter_checks += 1;
    Ok(Report {
        program: "xdp-decap",
        seed,
        frames,
        outcomes,
        invariants: DECAP_INVARIANTS,
        counter_checks,
        took: started.elapsed(),
    })
}

/// Outcomes since the last counter check.
#[derive(Default)]
struct Tally(BTreeMap<Outcome, u64>);

impl Tally {
    fn add(&mut self, o: Outcome) {
        *self.0.entry(o).or_insert(0) += 1;
    }

    fn get(&self, o: Outcome) -> u64 {
        self.0.get(&o).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The counters moved by exactly what the outcomes say: one action per frame, one
/// reason per pass and per drop, one answer counted per ICMP answer sent.
fn lb_counters_add_up(before: &CounterSet, after: &CounterSet, t: &Tally) -> Result<(), String> {
    let d = |c: Counter| after.get(c) - before.get(c);
    let sum_of = |prefix: &str| -> u64 {
        Counter::ALL.iter().filter(|c| c.name().starts_with(prefix)).map(|&c| d(c)).sum()
    };
    let actions = d(Counter::ActionPass)
        + d(Counter::ActionDrop)
        + d(Counter::ActionTx)
        + d(Counter::ActionAborted);
    let sent = t.get(Outcome::Forwarded) + t.get(Outcome::Encapsulated) + t.get(Outcome::Answered);
    let checks = [
        ("actions counted", actions, t.total()),
        ("action_pass", d(Counter::ActionPass), t.get(Outcome::Passed)),
        ("action_drop", d(Counter::ActionDrop), t.get(Outcome::Dropped)),
        ("action_tx", d(Counter::ActionTx), sent),
        ("pass reasons", sum_of("pass_"), d(Counter::ActionPass)),
        ("drop reasons", sum_of("drop_"), d(Counter::ActionDrop)),
        ("icmp_too_big_sent", d(Counter::IcmpTooBigSent), t.get(Outcome::Answered)),
    ];
    mismatches(&checks)
}

fn decap_counters_add_up(
    before: &DecapCounterSet,
    after: &DecapCounterSet,
    t: &Tally,
) -> Result<(), String> {
    let d = |c: DecapCounter| after.get(c) - before.get(c);
    let all: u64 = DecapCounter::ALL.iter().map(|&c| d(c)).sum();
    let drops =
        d(DecapCounter::DropSource) + d(DecapCounter::DropNotVip) + d(DecapCounter::DropMalformed);
    let checks = [
        ("frames counted", all, t.total()),
        ("decapsulated", d(DecapCounter::Decapsulated), t.get(Outcome::Decapsulated)),
        ("pass_not_tunnel", d(DecapCounter::PassNotTunnel), t.get(Outcome::Passed)),
        ("drops", drops, t.get(Outcome::Dropped)),
    ];
    mismatches(&checks)
}

fn mismatches(checks: &[(&str, u64, u64)]) -> Result<(), String> {
    let bad: Vec<String> = checks
        .iter()
        .filter(|(_, counted, want)| counted != want)
        .map(|(name, counted, want)| format!("{name}: counted {counted}, want {want}"))
        .collect();
    if bad.is_empty() { Ok(()) } else { Err(format!("counters do not add up: {}", bad.join("; "))) }
}
