//! `bench maglev`: the controller's Maglev table (`lb_userspace::maglev::build`):
//! build time, slots moved when a backend leaves or joins, and balance.

use std::{fmt::Write as _, time::Instant};

use anyhow::{Context as _, Result, ensure};
use lb_common::limits::RING_SIZE;
use lb_userspace::maglev::{Member, build};

use super::{
    progress,
    stats::{Summary, show},
};

const SIZES: [usize; 3] = [10, 100, 1000];
const RUNS: usize = 15;
/// Backends removed in turn to measure disruption (spread over the sorted order).
const REMOVALS: usize = 10;
/// Larger primes than RING_SIZE, to show how disruption falls as the ring grows.
const LARGER_RINGS: [u32; 2] = [262_147, 655_373];

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("waf-{i}/10.{}.{}.{}", i / 65_536, i / 256 % 256, i % 256)).collect()
}

fn table(ids: &[String], size: u32) -> Vec<u32> {
    let members: Vec<Member<'_>> =
        ids.iter().enumerate().map(|(i, id)| Member { id, weight: 100, value: i as u32 }).collect();
    build(&members, size)
}

/// Slots whose backend differs, comparing backends by identity (values are list
/// positions, which shift when one is removed).
fn moved(before: &[u32], before_ids: &[String], after: &[u32], after_ids: &[String]) -> usize {
    let name = |t: u32, ids: &[String]| ids.get(t as usize).cloned();
    before.iter().zip(after).filter(|&(&a, &b)| name(a, before_ids) != name(b, after_ids)).count()
}

struct Row {
    n: usize,
    size: u32,
    build_ms: Vec<f64>,
    /// moved / (size / n), one per removed backend.
    removal: Vec<f64>,
    /// moved / (size / (n + 1)).
    addition: f64,
    /// max / min slots per backend.
    imbalance: f64,
}

fn measure(n: usize, size: u32, runs: usize) -> Row {
    let all = ids(n + 1);
    let members = &all[..n];
    let base = table(members, size);
    let mut build_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = table(members, size);
        build_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(out);
    }
    let ideal_removed = f64::from(size) / n as f64;
    let removal = (0..REMOVALS.min(n))
        .map(|k| {
            let gone = k * n / REMOVALS.min(n);
            let rest: Vec<String> = members
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, s)| s.clone())
                .collect();
            moved(&base, members, &table(&rest, size), &rest) as f64 / ideal_removed
        })
        .collect();
    let addition =
        moved(&base, members, &table(&all, size), &all) as f64 / (f64::from(size) / (n + 1) as f64);
    let mut shares = vec![0usize; n];
    for &s in &base {
        if let Some(c) = shares.get_mut(s as usize) {
            *c += 1;
        }
    }
    let (min, max) =
        (shares.iter().min().copied().unwrap_or(0), shares.iter().max().copied().unwrap_or(0));
    Row { n, size, build_ms, removal, addition, imbalance: max as f64 / min.max(1) as f64 }
}

pub fn run(args: &[String]) -> Result<()> {
    let runs: usize = args.first().map_or(Ok(RUNS), |s| s.parse()).context("runs")?;
    ensure!(runs > 0, "runs must be > 0");
    let mut rows = Vec::new();
    for n in SIZES {
        progress(format_args!("{n} backends, ring {RING_SIZE}"));
        rows.push(measure(n, RING_SIZE, runs));
    }
    let mut larger = Vec::new();
    for size in LARGER_RINGS {
        progress(format_args!("100 backends, ring {size}"));
        larger.push(measure(100, size, 3));
    }
    report(&rows, &larger, runs);
    Ok(())
}

fn report(rows: &[Row], larger: &[Row], runs: usize) {
    println!(
        "Method: `lb_userspace::maglev::build` as the controller calls it, in this release build, \
         for N equal-weight backends with ids like the controller's (`name/address`). Build time: \
         {runs} builds per N, best and median (min–max). Disruption: the slots whose backend \
         changes (compared by identity) when one backend is removed, as a multiple of the ideal \
         size / N (the removed backend's own slots), over {REMOVALS} different removed backends \
         (median, min–max); when one joins, as a multiple of size / (N + 1). Imbalance: the most \
         slots any backend holds over the fewest.\n"
    );
    println!(
        "| backends | ring | build ms, best | build ms, median (min–max) | removal: moved × ideal 1/N | addition: moved × ideal 1/(N+1) | max/min share |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().chain(larger) {
        let best = Summary::of(&r.build_ms).map_or(f64::NAN, |s| s.min);
        println!(
            "| {} | {} | {best:.2} | {} | {} | {:.2} | {:.3} |",
            r.n,
            r.size,
            show(&r.build_ms, 2),
            show(&r.removal, 2),
            r.addition,
            r.imbalance
        );
    }
    println!();
    println!(
        "Rows with a ring above {RING_SIZE} are for comparison only (the data path's ring is \
         `RING_SIZE` = {RING_SIZE}); they show that disruption falls as the ring grows relative to \
         N, as the Maglev paper reports.\n"
    );
    println!(
        "Targets (issue #5): 1000 backends built in ≤ 20 ms; removal moves ≤ 1.2/N of slots.\n"
    );
    for r in rows {
        let build = Summary::of(&r.build_ms).map_or(f64::NAN, |s| s.median);
        let removal = Summary::of(&r.removal).map_or(f64::NAN, |s| s.median);
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let mut line =
            format!("- N = {}: removal moves {removal:.2}/N ({})", r.n, verdict(removal <= 1.2));
        if r.n == 1000 {
            let _ = write!(line, "; build {build:.2} ms median ({})", verdict(build <= 20.0));
        }
        println!("{line}.");
    }
}
