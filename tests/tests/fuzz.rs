//! A million fuzzed frames (`cargo xtask test` sets FUZZ_FRAMES=1000000; a plain
//! `cargo test` runs a smaller set) through `xdp-lb` and `xdp-decap` with
//! BPF_PROG_TEST_RUN, every output judged against the invariants in
//! `xdplb_tests::fuzz::oracle`. FUZZ_SEED replays another sequence.

use xdplb_tests::{fuzz, privilege::have_root};

/// Frames per program in a plain `cargo test`.
const QUICK: u64 = 20_000;

fn frames() -> u64 {
    std::env::var("FUZZ_FRAMES").ok().and_then(|s| s.parse().ok()).unwrap_or(QUICK)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(fuzz::DEFAULT_SEED)
}

#[test]
fn fuzz_xdp_lb() {
    if !have_root("fuzz_xdp_lb") {
        return;
    }
    match fuzz::xdp_lb(frames(), seed()) {
        Ok(report) => println!("{report}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn fuzz_xdp_decap() {
    if !have_root("fuzz_xdp_decap") {
        return;
    }
    match fuzz::xdp_decap(frames(), seed()) {
        Ok(report) => println!("{report}"),
        Err(e) => panic!("{e}"),
    }
}
