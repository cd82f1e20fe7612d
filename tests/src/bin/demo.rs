//! `cargo xtask demo`: failover, live. Brings the lab up, runs xdplb on it, drives
//! HTTP load from the client and prints, once a second, requests/s per WAF node,
//! each node's health state and failed requests; kills waf2's nginx (refused
//! connections), brings it back, then cuts waf3's link (silence), restores it, and
//! sums up detection time and failed requests per event. Removes the lab on exit
//! and on Ctrl-C.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use xdplb_tests::{
    chart,
    lab::Mode,
    rig::{Checks, Rig, web4},
    traffic::{Failure, HttpLoad, Record, tally, tally_ended},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

const WAFS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(1);

struct Event {
    what: &'static str,
    waf: String,
    at: Instant,
    detected: Option<Duration>,
}

fn main() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = if args.iter().any(|a| a == "ipip") { Mode::Ipip } else { Mode::Dsr };
    let chart = args
        .iter()
        .position(|a| a == "--chart")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    match run(mode, chart.as_deref()) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(mode: Mode, chart: Option<&std::path::Path>) -> Result<()> {
    println!(
        "==> xdplb demo ({mode} mode): lab with {WAFS} nginx WAF nodes, xdplb with its default health checks"
    );
    let rig = Rig::up(mode, WAFS, &Checks::default())?;
    println!("==> xdplb is up; {} ", rig.daemon.status()?.lines().next().unwrap_or(""));
    // Enough workers that a few stuck on a silent node do not stall the load.
    let load = HttpLoad::start(xdplb_tests::lab::NS_CLIENT, web4(), 8, 25.0, TIMEOUT)?;
    let start = Instant::now();
    let mut events: Vec<Event> = Vec::new();
    // (second, action): what happens when.
    let script: [(u64, &str); 4] =
        [(5, "stop waf2"), (11, "start waf2"), (17, "cut waf3"), (24, "restore waf3")];
    let end = Duration::from_secs(30);
    println!();
    println!(
        "   time   {:>9} {:>9} {:>9}   {:>6}   health (web4)",
        "waf1 r/s", "waf2 r/s", "waf3 r/s", "failed"
    );
    let mut next_row = Duration::from_secs(1);
    let mut done = 0;
    while start.elapsed() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        if done < script.len() && start.elapsed() >= Duration::from_secs(script[done].0) {
            let (_, action) = script[done];
            let (verb, waf) = action.split_once(' ').unwrap_or(("", ""));
            let k: usize = waf.trim_start_matches("waf").parse().unwrap_or(0);
            match verb {
                "stop" => rig.lab.stop_waf(k)?,
                "start" => rig.lab.start_waf(k)?,
                "cut" => rig.lab.cut_link(k)?,
                _ => rig.lab.restore_link(k)?,
            }
            let what = match verb {
                "stop" => "nginx stopped (connections refused)",
                "start" => "nginx started again",
                "cut" => "link cut (silent: packets dropped)",
                _ => "link restored",
            };
            println!("   >>> {:>5.1}s  {waf}: {what}", start.elapsed().as_secs_f64());
            events.push(Event {
                what: action,
                waf: waf.to_owned(),
                at: Instant::now(),
                detected: None,
            });
            done += 1;
        }
        // Detection: the first moment the daemon shows the new state.
        if let Some(ev) = events.last_mut().filter(|e| e.detected.is_none()) {
            let want = if ev.what.starts_with("stop") || ev.what.starts_with("cut") {
                "down"
            } else {
                "up"
            };
            if rig.state("web4", &ev.waf).is_ok_and(|s| s == want) {
                ev.detected = Some(ev.at.elapsed());
            }
        }
        if start.elapsed() >= next_row {
            let records = load.log.records();
            let row_end = start + next_row;
            let row_start = row_end.checked_sub(Duration::from_secs(1)).unwrap_or(start);
            let (ok, failed) = tally_ended(&records, row_start, row_end);
            let health: Vec<String> = (1..=WAFS)
                .map(|k| rig.state("web4", &format!("waf{k}")).unwrap_or_else(|_| "?".into()))
                .collect();
            println!(
                "  {:>5.0}s   {:>9} {:>9} {:>9}   {:>6}   {}",
                next_row.as_secs_f64(),
                ok.get("waf1").copied().unwrap_or(0),
                ok.get("waf2").copied().unwrap_or(0),
                ok.get("waf3").copied().unwrap_or(0),
                failed.values().sum::<usize>(),
                health.join(" ")
            );
            next_row += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let records = load.stop();
    if INTERRUPTED.load(Ordering::Relaxed) {
        println!("\n==> interrupted; removing the lab");
        return Ok(());
    }
    summary(&events, &records);
    if let Some(path) = chart {
        draw(path, mode, start, &events, &records)?;
        println!("\n==> wrote the timeline chart to {}", path.display());
    }
    println!("\n==> removing the lab");
    Ok(())
}

/// The run as a timeline: requests/s per node in 100 ms bins, each event and its detection marked.
fn draw(
    path: &std::path::Path,
    mode: Mode,
    start: Instant,
    events: &[Event],
    records: &[Record],
) -> Result<()> {
    let end =
        records.iter().map(|r| r.start.duration_since(start).as_secs_f64()).fold(1.0, f64::max);
    let mut markers = vec![];
    for ev in events {
        let at = ev.at.duration_since(start).as_secs_f64();
        markers.push(chart::Marker { at, label: ev.what.to_owned(), detection: false });
        if let Some(d) = ev.detected {
            markers.push(chart::Marker {
                at: at + d.as_secs_f64(),
                label: format!("seen {:.0} ms", d.as_secs_f64() * 1000.0),
                detection: true,
            });
        }
    }
    let panel = chart::Panel {
        title: format!("xdplb demo ({mode} mode), default health checks (200ms x 3)"),
        x: (0.0, end),
        series: chart::bin(records, start, (0.0, end)),
        markers,
    };
    chart::write_svg(
        path,
        "xdplb demo: requests/s per WAF node in 100 ms bins by send time",
        &[panel],
        1,
    )
}

fn summary(events: &[Event], records: &[Record]) {
    println!("\nSummary (health checks: xdplb defaults, interval 200ms, fall 3, rise 2)");
    println!(
        "  {:<14} {:>12} {:>16} {:>22}",
        "event", "detected in", "failed requests", "last failure after"
    );
    for (i, ev) in events.iter().enumerate() {
        let until = events.get(i + 1).map_or(Instant::now(), |n| n.at);
        let (_, failed) = tally(records, ev.at, until);
        let n: usize = failed.values().sum();
        let last = records
            .iter()
            .filter(|r| r.start >= ev.at && r.start < until && r.outcome.is_err())
            .map(|r| r.start.duration_since(ev.at))
            .max();
        let kinds: BTreeMap<Failure, usize> = failed;
        println!(
            "  {:<14} {:>12} {:>16} {:>22}",
            ev.what,
            ev.detected
                .map_or("not seen".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
            if kinds.is_empty() { "0".to_owned() } else { format!("{n} {kinds:?}") },
            last.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
        );
    }
    let total = records.len();
    let failed = records.iter().filter(|r| r.outcome.is_err()).count();
    println!("  {total} requests in all, {failed} failed");
}
