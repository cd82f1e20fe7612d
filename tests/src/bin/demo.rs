//! `cargo xtask demo`: failover, live. Brings the lab up, runs xdplb on it, drives
//! HTTP load from the client and prints, once a second, requests/s per WAF node,
//! each node's health state and failed requests; kills waf2's nginx (refused
//! connections), brings it back, then cuts waf3's link (silence), restores it, and
//! sums up detection time, what saw it (the traffic or the health checks) and
//! failed requests per event. Removes the lab on exit
//! and on Ctrl-C.
//!
//! `--reserve`: four nodes, waf3 and waf4 reserves (`backup: true`). Both
//! primaries stop one after the other: the reserves take the traffic when the
//! second goes; the primaries come back and new connections return to them.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use xdplb_tests::{
    chart,
    lab::Mode,
    rig::{Checks, Rig, config_text, web4, with_reserves},
    traffic::{Failure, HttpLoad, Record, tally, tally_ended},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

const TIMEOUT: Duration = Duration::from_secs(1);

struct Event {
    what: &'static str,
    waf: String,
    at: Instant,
    detected: Option<Duration>,
    /// Suspicions that ended with the node down, when the event happened.
    confirmed_before: f64,
    /// What saw it: the traffic (a suspicion, then fast probes) or the checks.
    by: &'static str,
}

/// Suspicions so far that probes confirmed (the node went down).
fn confirmed(rig: &Rig) -> f64 {
    rig.daemon
        .metric("xdplb_suspicion_decision_seconds_count", &[("outcome", "down")])
        .unwrap_or(0.0)
}

fn main() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = if args.iter().any(|a| a == "ipip") { Mode::Ipip } else { Mode::Dsr };
    let reserve = args.iter().any(|a| a == "--reserve");
    let chart = args
        .iter()
        .position(|a| a == "--chart")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    match run(mode, reserve, chart.as_deref()) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// (second, action): what happens when.
type Script = Vec<(u64, &'static str)>;

/// The demo's nodes, script, length in seconds and xdplb config, and its banner printed.
fn variant(mode: Mode, reserve: bool) -> (usize, Script, u64, String) {
    let (wafs, script, end): (usize, Script, u64) = if reserve {
        let script =
            vec![(5, "stop waf1"), (9, "stop waf2"), (16, "start waf1"), (21, "start waf2")];
        (4, script, 26)
    } else {
        let script =
            vec![(5, "stop waf2"), (11, "start waf2"), (17, "cut waf3"), (24, "restore waf3")];
        (3, script, 30)
    };
    let mut text = config_text(mode, wafs, &Checks::default(), &[]);
    if reserve {
        text = with_reserves(&text, &[3, 4], 1);
        println!(
            "==> xdplb demo ({mode} mode, reserve tier): lab with {wafs} nginx WAF nodes, waf1 and waf2 primaries, \
             waf3 and waf4 reserves (backup: true), xdplb with its default health checks"
        );
    } else {
        println!(
            "==> xdplb demo ({mode} mode): lab with {wafs} nginx WAF nodes, xdplb with its default health checks"
        );
    }
    (wafs, script, end, text)
}

/// Each value right-aligned in a 10-character cell.
fn cells(values: impl Iterator<Item = String>) -> String {
    values.fold(String::new(), |mut s, v| {
        let _ = write!(s, " {v:>9}");
        s
    })
}

fn run(mode: Mode, reserve: bool, chart: Option<&std::path::Path>) -> Result<()> {
    let (wafs, script, end, text) = variant(mode, reserve);
    let rig = Rig::up_with(mode, wafs, &text)?;
    println!("==> xdplb is up; {} ", rig.daemon.status()?.lines().next().unwrap_or(""));
    // Enough workers that a few stuck on a silent node do not stall the load.
    let load = HttpLoad::start(xdplb_tests::lab::NS_CLIENT, web4(), 8, 25.0, TIMEOUT)?;
    let start = Instant::now();
    let mut events: Vec<Event> = Vec::new();
    let end = Duration::from_secs(end);
    println!();
    let heads = cells((1..=wafs).map(|k| format!("waf{k} r/s")));
    println!(
        "   time  {heads}   {:>6}   state (web4){}",
        "failed",
        if reserve { "  tier" } else { "" }
    );
    let mut next_row = Duration::from_secs(1);
    let mut done = 0;
    while start.elapsed() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        if done < script.len() && start.elapsed() >= Duration::from_secs(script[done].0) {
            let (_, action) = script[done];
            let (verb, waf) = action.split_once(' ').unwrap_or(("", ""));
            let k: usize = waf.trim_start_matches("waf").parse().unwrap_or(0);
            // The event starts before the action: requests failing while it runs are its own.
            let at = Instant::now();
            let confirmed_before = confirmed(&rig);
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
                at,
                detected: None,
                confirmed_before,
                by: "",
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
                ev.by = if want == "up" {
                    "health checks (rise)"
                } else if confirmed(&rig) > ev.confirmed_before {
                    "traffic: suspect, probed"
                } else {
                    "health checks"
                };
            }
        }
        if start.elapsed() >= next_row {
            let records = load.log.records();
            let row_end = start + next_row;
            let row_start = row_end.checked_sub(Duration::from_secs(1)).unwrap_or(start);
            let (ok, failed) = tally_ended(&records, row_start, row_end);
            let health: Vec<String> = (1..=wafs)
                .map(|k| rig.state("web4", &format!("waf{k}")).unwrap_or_else(|_| "?".into()))
                .collect();
            let counts = cells(
                (1..=wafs).map(|k| ok.get(&format!("waf{k}")).copied().unwrap_or(0).to_string()),
            );
            let tier = if reserve { format!("  {}", tier(&rig)) } else { String::new() };
            println!(
                "  {:>5.0}s {counts}   {:>6}   {}{tier}",
                next_row.as_secs_f64(),
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

/// The tier serving web4, from the status header (`tier reserve (...)` -> `reserve`).
fn tier(rig: &Rig) -> String {
    rig.daemon
        .status()
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VIP web4 "))
                .and_then(|l| l.split("  tier ").nth(1))
                .and_then(|t| t.split_whitespace().next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
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
    println!(
        "\nSummary (xdplb defaults: checks every 200ms, fall 3, rise 2; a refused check is down at \
         once; a node that gets SYNs but completes no handshake for 30 ms is probed every 10 ms)"
    );
    println!(
        "  {:<14} {:>12} {:<26} {:>16} {:>22}",
        "event", "detected in", " seen by", "failed requests", "last failure after"
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
            "  {:<14} {:>12}  {:<25} {:>16} {:>22}",
            ev.what,
            ev.detected
                .map_or("not seen".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
            ev.by,
            if kinds.is_empty() { "0".to_owned() } else { format!("{n} {kinds:?}") },
            last.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
        );
    }
    let total = records.len();
    let failed = records.iter().filter(|r| r.outcome.is_err()).count();
    println!("  {total} requests in all, {failed} failed");
}
