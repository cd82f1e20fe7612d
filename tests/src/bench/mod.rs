//! The benchmarks behind `cargo xtask bench`, one module each. Every `run` prints a
//! Markdown section for BENCHMARKS.md on stdout (method, table, notes) and its
//! progress on stderr; `cargo xtask bench` adds the date, machine and command.
#![expect(
    clippy::cast_precision_loss,
    reason = "packet, request and slot counts are far below 2^52; rates are printed with 2 decimals"
)]

pub mod balancers;
pub mod conntrack;
pub mod failover;
pub mod http;
pub mod live;
pub mod maglev;
pub mod object;
pub mod reference;
pub mod soak;
pub mod stats;
pub mod sync;
pub mod synflood;
pub mod veth;
pub mod xdp;

use std::{sync::OnceLock, time::Instant};

/// Prints a progress line on stderr, with the seconds since the first one.
pub fn progress(msg: impl std::fmt::Display) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("  [{t:6.1}s] {msg}");
}
