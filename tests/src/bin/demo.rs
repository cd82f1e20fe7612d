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
//!
//! `--ha vrrp|bgp`: a pair of balancers instead (`pair.rs`): a balancer's host dies,
//! comes back, then one is stopped for maintenance; a column per balancer shows the
//! packets it forwards, and long-lived connections show that none is lost.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use xdplb_tests::{
    chart,
    lab::{Mode, Redundancy},
    pair::Pair,
    rig::{Checks, Rig, config_text, web4, with_reserves},
    traffic::{Failure, HttpLoad, LongLived, Record, tally, tally_ended},
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
    let ha = args.iter().position(|a| a == "--ha").and_then(|i| args.get(i + 1));
    let result = match ha.map(|h| h.parse::<Redundancy>()) {
        Some(Ok(ha)) => run_ha(mode, ha),
        Some(Err(e)) => Err(e),
        None => run(mode, reserve, chart.as_deref()),
    };
    match result {
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

/// Long-lived connections the HA demo keeps open through every event.
const LONG_LIVED: usize = 20;
/// WAF nodes behind the pair.
const WAFS: usize = 3;

/// What happens when, in the HA demo: (second, action).
const HA_SCRIPT: [(u64, &str); 4] = [(5, "kill"), (12, "revive"), (18, "stop"), (24, "start")];

/// One event of the HA demo: what, on which balancer, when, and when the engine
/// carried the VIP elsewhere.
struct HaEvent {
    action: &'static str,
    k: usize,
    at: Instant,
    moved: Option<Duration>,
}

/// Carries out `action` on the pair (`kill` and `stop` pick the carrier); what to print.
fn ha_act(pair: &mut Pair, action: &str, target: &mut usize) -> Result<&'static str> {
    Ok(match action {
        "kill" => {
            *target = *pair.carriers(web4().ip())?.first().context("nothing carries")?;
            pair.kill(*target)?;
            "host dies (link cut, xdplb and its engine killed)"
        }
        "revive" => {
            pair.revive(*target)?;
            "host back (link, engine, xdplb adopting its pins)"
        }
        "stop" => {
            *target = *pair.carriers(web4().ip())?.last().context("nothing carries")?;
            // SIGTERM; the demo goes on while it withdraws and waits.
            let pid = pair.daemon(*target)?.pid().context("no pid")?;
            // SAFETY: signalling the daemon the pair started.
            unsafe { libc::kill(i32::try_from(pid)?, libc::SIGTERM) };
            "xdplb stopped for maintenance (withdraw, wait 2 s, exit)"
        }
        _ => {
            pair.stop(*target)?;
            pair.start(*target)?;
            "xdplb started again"
        }
    })
}

/// One line of the HA demo's table: the second ending at `row_end`.
fn ha_row(
    pair: &Pair,
    records: &[Record],
    row_end: Instant,
    second: Duration,
    packets: &mut [Option<u64>; 2],
    alive: usize,
) {
    let row_start = row_end.checked_sub(Duration::from_secs(1)).unwrap_or(row_end);
    let (ok, failed) = tally_ended(records, row_start, row_end);
    let mut rates = [String::new(), String::new()];
    for k in 1..=2 {
        let now = pair.vip_packets(k).ok();
        rates[k - 1] = match (packets[k - 1], now) {
            (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
            (_, None) => "-".to_owned(),
            _ => String::new(),
        };
        packets[k - 1] = now;
    }
    let carried: Vec<String> = pair
        .carriers(web4().ip())
        .unwrap_or_default()
        .iter()
        .map(|k| xdplb_tests::pair::node(*k).ns())
        .collect();
    println!(
        "  {:>5.0}s   {:>9} {:>9} {:>9}   {:>11} {:>11}   {:>6}   {:>6}/{LONG_LIVED}   {}",
        second.as_secs_f64(),
        ok.get("waf1").copied().unwrap_or(0),
        ok.get("waf2").copied().unwrap_or(0),
        ok.get("waf3").copied().unwrap_or(0),
        rates[0],
        rates[1],
        failed.values().sum::<usize>(),
        alive,
        if carried.is_empty() { "nobody".to_owned() } else { carried.join(" ") }
    );
}

fn ha_summary(ha: Redundancy, events: &[HaEvent], records: &[Record], lost: usize) {
    println!("\nSummary ({ha})");
    println!(
        "  {:<8} {:<5} {:>22} {:>16}",
        "event", "on", "traffic moved after", "failed requests"
    );
    for (i, ev) in events.iter().enumerate() {
        let until = events.get(i + 1).map_or(Instant::now(), |n| n.at);
        let (_, failed) = tally(records, ev.at, until);
        println!(
            "  {:<8} {:<5} {:>22} {:>16}",
            ev.action,
            xdplb_tests::pair::node(ev.k).ns(),
            ev.moved.map_or("-".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
            failed.values().sum::<usize>()
        );
    }
    println!(
        "  {} requests on new connections, {} failed; {LONG_LIVED} long-lived connections, {lost} lost",
        records.len(),
        records.iter().filter(|r| r.outcome.is_err()).count()
    );
}

/// The HA demo: a pair of balancers, load and long-lived connections from the
/// client, a host death, a revival, a planned stop and a start; a line a second.
fn run_ha(mode: Mode, ha: Redundancy) -> Result<()> {
    println!(
        "==> xdplb redundancy demo ({ha}, {mode} mode): balancers lb and lb2 with the same config, \
         {WAFS} nginx WAF nodes"
    );
    let mut pair = Pair::up(mode, ha, WAFS, &Checks::default())?;
    println!("==> both balancers up; {}", pair.lab.engines_status());
    let long: Vec<LongLived> = (0..LONG_LIVED)
        .map(|_| LongLived::open(xdplb_tests::lab::NS_CLIENT, web4(), Duration::from_millis(200)))
        .collect::<Result<_>>()?;
    let load =
        HttpLoad::start(xdplb_tests::lab::NS_CLIENT, web4(), 8, 25.0, Duration::from_secs(2))?;
    let start = Instant::now();
    println!(
        "\n   time   {:>9} {:>9} {:>9}   {:>11} {:>11}   {:>6}   {:>9}   carried by",
        "waf1 r/s", "waf2 r/s", "waf3 r/s", "lb pkt/s", "lb2 pkt/s", "failed", "long-lived"
    );
    let (mut done, mut target) = (0, 1);
    let mut next_row = Duration::from_secs(1);
    let mut packets: [Option<u64>; 2] = [None, None];
    let mut events: Vec<HaEvent> = Vec::new();
    while start.elapsed() < Duration::from_secs(30) && !INTERRUPTED.load(Ordering::Relaxed) {
        if done < HA_SCRIPT.len() && start.elapsed() >= Duration::from_secs(HA_SCRIPT[done].0) {
            let action = HA_SCRIPT[done].1;
            let at = Instant::now();
            let what = ha_act(&mut pair, action, &mut target)?;
            let ns = xdplb_tests::pair::node(target).ns();
            println!("   >>> {:>5.1}s  {ns}: {what}", start.elapsed().as_secs_f64());
            events.push(HaEvent { action, k: target, at, moved: None });
            done += 1;
        }
        // The first moment the engine carries the VIP elsewhere.
        if let Some(ev) = events
            .last_mut()
            .filter(|e| e.moved.is_none() && (e.action == "kill" || e.action == "stop"))
        {
            let carriers = pair.carriers(web4().ip()).unwrap_or_default();
            if !carriers.is_empty() && !carriers.contains(&ev.k) {
                ev.moved = Some(ev.at.elapsed());
            }
        }
        if start.elapsed() >= next_row {
            let alive =
                long.iter().filter(|l| l.log.records().iter().all(|r| r.outcome.is_ok())).count();
            ha_row(&pair, &load.log.records(), start + next_row, next_row, &mut packets, alive);
            next_row += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let records = load.stop();
    let lost =
        long.into_iter().filter(|l| l.log.records().iter().any(|r| r.outcome.is_err())).count();
    if INTERRUPTED.load(Ordering::Relaxed) {
        println!("\n==> interrupted; removing the lab");
        return Ok(());
    }
    ha_summary(ha, &events, &records, lost);
    println!("\n==> removing the lab");
    Ok(())
}
