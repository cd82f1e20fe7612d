//! Benchmarks behind `cargo xtask bench`: `bench NAME [ARGS]` runs one, printing its
//! Markdown section for BENCHMARKS.md on stdout and its progress on stderr. The
//! benchmarks live in `xdplb_tests::bench`, one module each.

use anyhow::{Result, bail};
use xdplb_tests::bench;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("xdp") => bench::xdp::run(rest),
        Some("live") => bench::live::run(rest),
        Some("http") => bench::http::run(rest),
        Some("maglev") => bench::maglev::run(rest),
        Some("conntrack") => bench::conntrack::run(rest),
        Some("synflood") => bench::synflood::run(rest),
        Some("failover") => bench::failover::run(rest),
        Some("soak") => bench::soak::run(rest),
        Some("sync") => bench::sync::run(rest),
        _ => bail!(
            "usage: bench xdp [RUNS] [SAMPLES] [--object NAME=FILE].. [--reference NAME=PIN].. | live [RUNS] [--flows N] [--object NAME=FILE[@N]].. [--reference NAME=PIN].. | http [RUNS] | maglev [RUNS] | conntrack [RUNS] | synflood [RUNS] | failover [EVENTS] | soak [SECONDS] | sync [RUNS]"
        ),
    }
}
