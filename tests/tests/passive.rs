//! The passive signal end to end, in the lab, with xdplb's default health
//! settings (issue #11):
//!
//! 1. SYNs with forged sources — 10 000 a second to the VIP for 30 s, and no real
//!    client — raise suspicions (nothing ever completes a handshake) but take no
//!    healthy node down: only probes decide, and they are answered.
//! 2. A node that goes silent under load costs clients with the kernel's default
//!    SYN retries (connect timeout 3 s) no failed connection: the data path's
//!    counters make it suspect, fast probes take it down, and a client's
//!    retransmitted SYN (1 s after the first) goes through the ring to a live node.
//!
//! Detection times are measured by `cargo xtask bench failover`, not asserted here.

#![allow(clippy::unwrap_used, reason = "test")]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts and rates"
)]

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use xdplb_tests::{
    daemon::binary,
    lab::{HTTP_PORT, Mode, NS_CLIENT, VIP4},
    privilege::have_root,
    rig::{Checks, Rig, web4},
    syn_flood::SynFlood,
    traffic::{HttpLoad, Record},
};

const WAFS: usize = 3;
/// The flood: forged SYNs per second, for how long.
const FLOOD_RATE: u32 = 10_000;
const FLOOD_FOR: Duration = Duration::from_secs(30);
/// Silent deaths, one after the other on the same node.
const SILENT_EVENTS: usize = 3;
/// Load during them: new connections per second, spread over workers so that a few
/// waiting a second for a retransmitted SYN do not stall it.
const WORKERS: usize = 32;
const RATE_PER_WORKER: f64 = 8.0;
/// The client's connect (and read) timeout: the kernel's default SYN retries answer
/// within it after a lost first SYN (retransmissions at 1 s and 3 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn passive_signal_in_the_lab() {
    if !have_root("passive signal (lab)") {
        return;
    }
    binary().expect("the xdplb binary: `cargo build -p lb-userspace --bin xdplb`");
    let rig = Rig::up(Mode::Dsr, WAFS, &Checks::default()).unwrap();
    let mut failed = Vec::new();
    for (name, scenario) in [
        ("forged SYNs take no node down", forged_syns as fn(&Rig) -> Result<()>),
        ("a silent node costs default clients no connection", silent_death),
    ] {
        eprintln!("\n=== {name}");
        if let Err(e) = scenario(&rig) {
            eprintln!("=== FAILED: {name}: {e:#}");
            failed.push(format!("{name}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        eprintln!("xdplb log:\n{}", rig.daemon.log_text());
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Metrics this test reads, summed over their series.
struct Counters {
    downs: f64,
    suspicions: f64,
    triggered: f64,
    decided_down: f64,
    syns: f64,
}

impl Counters {
    fn read(rig: &Rig) -> Result<Self> {
        let m = |name, labels: &[(&str, &str)]| rig.daemon.metric(name, labels);
        Ok(Self {
            downs: m("xdplb_backend_transitions_total", &[("to", "down")])?,
            suspicions: m("xdplb_suspicions_total", &[])?,
            triggered: m("xdplb_triggered_probes_total", &[])?,
            decided_down: m("xdplb_suspicion_decision_seconds_count", &[("outcome", "down")])?,
            syns: m("xdplb_conntrack_total", &[("event", "syn")])?,
        })
    }
}

/// Every backend line of `xdplb status` that is not up.
fn not_up(rig: &Rig) -> Result<Vec<String>> {
    let status = rig.daemon.status()?;
    Ok(xdplb_tests::rig::states(&status)
        .into_iter()
        .filter(|(_, _, state)| state != "up")
        .map(|(vip, backend, state)| format!("{vip}/{backend} {state}"))
        .collect())
}

fn forged_syns(rig: &Rig) -> Result<()> {
    let before = Counters::read(rig)?;
    let target = SocketAddrV4::new(VIP4, HTTP_PORT);
    let flood = SynFlood::start(NS_CLIENT, target, FLOOD_RATE)?;
    let start = Instant::now();
    let mut downs = Vec::new();
    while start.elapsed() < FLOOD_FOR {
        let now = not_up(rig)?;
        if !now.is_empty() {
            downs.push(format!("at {} ms: {}", start.elapsed().as_millis(), now.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sent, took) = flood.stop()?;
    eprintln!("probe durations during the flood: {}", probe_durations(rig)?);
    // The last probes of the flood's suspicions end within a second.
    std::thread::sleep(Duration::from_secs(1));
    let after = Counters::read(rig)?;
    let rate = sent as f64 / took.as_secs_f64();
    let seen = after.syns - before.syns;
    eprintln!(
        "{sent} forged SYNs in {:.1} s ({rate:.0}/s); the data path forwarded {seen:.0} SYNs; \
         suspicions {:.0}, probes triggered {:.0}, suspicions ended down {:.0}; backends taken down {:.0}",
        took.as_secs_f64(),
        after.suspicions - before.suspicions,
        after.triggered - before.triggered,
        after.decided_down - before.decided_down,
        after.downs - before.downs,
    );
    ensure!(rate >= f64::from(FLOOD_RATE) * 0.95, "the flood reached only {rate:.0} SYN/s");
    ensure!(seen >= sent as f64 * 0.95, "xdp_lb saw {seen:.0} of {sent} SYNs");
    ensure!(
        downs.is_empty(),
        "healthy backends went down under forged SYNs:\n{}",
        downs.join("\n")
    );
    ensure!(after.downs - before.downs < 0.5, "backends were taken down meanwhile");
    ensure!(
        after.suspicions > before.suspicions && after.triggered > before.triggered,
        "forged SYNs that never complete raised no suspicion: is the passive signal wired?"
    );
    ensure!(after.decided_down - before.decided_down < 0.5, "a suspicion ended in a down");
    Ok(())
}

fn silent_death(rig: &Rig) -> Result<()> {
    let before = Counters::read(rig)?;
    let load = HttpLoad::start(NS_CLIENT, web4(), WORKERS, RATE_PER_WORKER, CLIENT_TIMEOUT)?;
    std::thread::sleep(Duration::from_secs(1));
    let first_cut = Instant::now();
    for event in 1..=SILENT_EVENTS {
        rig.wait_all(WAFS * 4, "up", WAIT)?;
        std::thread::sleep(Duration::from_millis(500));
        rig.lab.cut_link(3)?;
        let detected =
            wait(|| Ok(rig.state("web4", "waf3")? == "down")).context("waf3 never marked down")?;
        eprintln!("event {event}: waf3 silent, down after {} ms", detected.as_millis());
        // Until every connection started before detection has had its retries.
        std::thread::sleep(CLIENT_TIMEOUT + Duration::from_millis(500));
        rig.lab.restore_link(3)?;
    }
    rig.wait_all(WAFS * 4, "up", WAIT)?;
    let records = load.stop();
    let after = Counters::read(rig)?;
    let since: Vec<&Record> = records.iter().filter(|r| r.start >= first_cut).collect();
    let connect_failures: Vec<&&Record> = since.iter().filter(|r| r.failed_to_connect()).collect();
    let cut_mid_request = since.iter().filter(|r| r.failed_connected()).count();
    let rescued = since
        .iter()
        .filter(|r| r.outcome.is_ok() && r.connect.is_some_and(|c| c >= Duration::from_millis(900)))
        .count();
    eprintln!(
        "{} connections over {SILENT_EVENTS} silent deaths: {} failed to connect, {rescued} \
         connected after a retransmitted SYN, {cut_mid_request} failed after connecting (the \
         node died holding them); suspicions {:.0}, ended down {:.0}",
        since.len(),
        connect_failures.len(),
        after.suspicions - before.suspicions,
        after.decided_down - before.decided_down,
    );
    ensure!(
        connect_failures.is_empty(),
        "connections failed: {:?}",
        connect_failures.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
    ensure!(rescued > 0, "no SYN was lost to the silent node: was it receiving new connections?");
    ensure!(
        after.decided_down - before.decided_down >= SILENT_EVENTS as f64,
        "the silent node was not taken down by suspicions' probes in every event"
    );
    Ok(())
}

/// The health probes' durations so far, as bucket bounds of the histogram: the
/// share of probes that took at most each bound.
fn probe_durations(rig: &Rig) -> Result<String> {
    let (_, body) = rig.daemon.http_get("/metrics")?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in body.lines().filter(|l| l.starts_with("xdplb_probe_duration_seconds_bucket{")) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
        let n: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        match buckets
            .iter_mut()
            .find(|(b, _)| (*b - le).abs() < 1e-12 || (b.is_infinite() && le.is_infinite()))
        {
            Some((_, total)) => *total += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all = buckets.last().map_or(0.0, |b| b.1);
    Ok(buckets
        .iter()
        .map(|(le, n)| format!("≤{}ms {:.1}%", le * 1000.0, 100.0 * n / all.max(1.0)))
        .collect::<Vec<_>>()
        .join(", "))
}

fn wait(mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if check().unwrap_or(false) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("not within {WAIT:?}")
}
