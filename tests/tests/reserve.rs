//! The reserve tier end to end, with real traffic from the lab's `client`
//! namespace through `xdplb run` to nginx WAF nodes: waf1 and waf2 are primaries,
//! waf3 and waf4 reserves (`backup: true`) of every VIP.
//!
//! - While a primary is up, no new connection reaches a reserve.
//! - With every primary down, new connections reach the reserves as soon as the
//!   daemon sees the primaries down (the ordinary failover budget), and none fails
//!   after that; a long-lived connection opened on a reserve then survives the
//!   primaries' return, while new connections go back to the primaries.
//! - With `min_primaries: 2`, losing one of the two primaries brings the reserves
//!   in beside the other.
//!
//! IPv4 and IPv6 VIPs are loaded at the same time (stopping a node's nginx takes it
//! out of both), in dsr and in ipip mode, one `#[test]` each; they share the lab
//! lock with the other lab suites. Bounds on failures come from the measured
//! request rate and xdplb's default check timing, as in e2e.rs.

#![allow(clippy::unwrap_used, reason = "test")]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "rates and bounds from request counts (never negative)"
)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use lb_userspace::admin::Request;
use xdplb_tests::{
    daemon::binary,
    lab::{Mode, NS_CLIENT, PIN_DIR},
    privilege::have_root,
    rig::{
        Checks, Rig, config_text, expect_ok, rows, wait_until, warm_neighbours, web4, web6,
        with_reserves,
    },
    traffic::{Failure, HttpLoad, LongLived, Record, tally, tally_all, tally_within},
};

/// waf1 and waf2 are primaries, waf3 and waf4 reserves.
const WAFS: usize = 4;
const PRIMARIES: [&str; 2] = ["waf1", "waf2"];
const RESERVES: [&str; 2] = ["waf3", "waf4"];
/// The VIPs loaded, with their addresses.
fn vips() -> [(&'static str, SocketAddr); 2] {
    [("web4", web4()), ("web6", web6())]
}

/// xdplb's health-check defaults (the rig does not override them).
use lb_userspace::config::defaults::{FALL, INTERVAL, TIMEOUT as CHECK_TIMEOUT};
/// Scheduling slack on this shared 2-core machine, added to every detection budget.
const MARGIN: Duration = Duration::from_millis(500);
/// Load per VIP: workers on new connections, each at most this many requests per second.
const WORKERS: usize = 4;
const RATE_PER_WORKER: f64 = 40.0;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the load runs after detection, when no new connection may fail.
const AFTER: Duration = Duration::from_secs(2);
const KEEPALIVE_PERIOD: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn reserve_dsr() {
    run_mode(Mode::Dsr);
}

#[test]
fn reserve_ipip() {
    run_mode(Mode::Ipip);
}

type Scenario = fn(&Rig, &str) -> Result<()>;

fn run_mode(mode: Mode) {
    if !have_root(&format!("reserve tier e2e ({mode})")) {
        return;
    }
    binary().expect("the xdplb binary: `cargo build -p lb-userspace --bin xdplb`");
    let started = Instant::now();
    let text = with_reserves(&config_text(mode, WAFS, &Checks::default(), &[]), &[3, 4], 1);
    let mut rig =
        Rig::up_with(mode, WAFS, &text).unwrap_or_else(|e| panic!("{mode}: rig up: {e:#}"));
    let scenarios: [(&str, Scenario); 3] = [
        ("primaries serve, reserves stand by", primaries_serve),
        ("every primary down: reserves, then the primaries' return", every_primary_down),
        ("min_primaries 2: one primary down brings the reserves in", min_primaries_2),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        let tag = format!("{mode} / {name}");
        eprintln!("\n=== {tag}");
        let t = Instant::now();
        let result = warm_neighbours(WAFS, WAIT).and_then(|()| scenario(&rig, &tag));
        match result {
            Ok(()) => eprintln!("=== {tag}: ok in {:.1} s", t.elapsed().as_secs_f64()),
            Err(e) => {
                let msg = format!("{tag}: {e:#}");
                eprintln!("=== FAILED: {msg}");
                failed.push(msg);
            }
        }
        if let Err(e) = restore(&rig, &text) {
            failed.push(format!("{tag}: restoring the lab afterwards: {e:#}"));
            break;
        }
    }
    let log = rig.daemon.stop().unwrap_or_default();
    let switches = log.lines().filter(|l| l.contains("reserve tier")).count();
    eprintln!(
        "{mode}: {switches} tier log lines, e.g. {:?}",
        log.lines().find(|l| l.contains("switched to its reserve tier"))
    );
    drop(rig);
    assert!(!std::path::Path::new(PIN_DIR).exists(), "{mode}: {PIN_DIR} left behind");
    eprintln!(
        "\n{mode}: done in {:.1} s (waiting for the lab lock included)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{mode}: {} scenario(s) failed:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

/// Every node serving, the original config, the VIPs back on their primaries.
fn restore(rig: &Rig, text: &str) -> Result<()> {
    for k in 1..=WAFS {
        rig.lab.start_waf(k)?;
    }
    if std::fs::read_to_string(&rig.config)? != text {
        std::fs::write(&rig.config, text)?;
        expect_ok(rig.daemon.admin(&Request::Reload)?).context("reloading the original config")?;
    }
    wait_until(Duration::from_secs(30), || on_primaries(rig))
        .context("waiting for every VIP on its primaries, every reserve on standby")?;
    Ok(())
}

// ---------------------------------------------------------------- scenarios

/// 300 connections to each VIP, all answered by the primaries (both), none by a
/// reserve; the status says so.
fn primaries_serve(rig: &Rig, tag: &str) -> Result<()> {
    ensure!(on_primaries(rig)?, "{tag}: not on the primaries:\n{}", rig.daemon.status()?);
    for (vip, target) in vips() {
        let records = requests(target, 300)?;
        let (ok, failed) = tally_all(&records);
        eprintln!("{tag}: {vip}: 300 connections: {ok:?}, failed {failed:?}");
        ensure!(failed.is_empty(), "{tag}: {vip}: requests failed: {failed:?}");
        ensure!(
            RESERVES.iter().all(|r| !ok.contains_key(*r)),
            "{tag}: {vip}: a reserve got new connections while the primaries were up: {ok:?}"
        );
        ensure!(PRIMARIES.iter().all(|p| ok.contains_key(*p)), "{tag}: {vip}: {ok:?}");
    }
    Ok(())
}

/// Both primaries stop under load. Once the daemon sees them down, every new
/// connection goes to the reserves, none fails; before, failures are bounded by
/// the detection budget and all refused. Then long-lived connections on the
/// reserves, and the primaries come back: new connections return to them, the
/// long-lived ones stay on their reserves.
fn every_primary_down(rig: &Rig, tag: &str) -> Result<()> {
    let loads = start_loads()?;
    std::thread::sleep(Duration::from_millis(1500));
    let t_break = Instant::now();
    rig.lab.stop_waf(1)?;
    rig.lab.stop_waf(2)?;
    let t_broken = Instant::now();
    let mut detected = BTreeMap::new();
    wait_until(WAIT, || {
        for (vip, _) in vips() {
            if !detected.contains_key(vip)
                && PRIMARIES.iter().all(|p| health(rig, vip, p).is_ok_and(|h| h == "down"))
            {
                detected.insert(vip, Instant::now());
            }
        }
        Ok(detected.len() == vips().len())
    })
    .with_context(|| format!("{tag}: the daemon never saw both primaries down"))?;
    let last = *detected.values().max().unwrap();
    std::thread::sleep(AFTER.saturating_sub(last.elapsed()));
    let status = rig.daemon.status()?;
    let metrics = rig.daemon.http_get("/metrics")?.1;
    for ((vip, _), (load_start, load)) in vips().into_iter().zip(loads) {
        let records = load.stop();
        let times = Times { load_start, t_break, t_broken, t_det: detected[vip] };
        check_switch(&records, tag, vip, &times, &RESERVES)?;
        ensure!(
            status.lines().any(|l| l.starts_with(&format!("VIP {vip} "))
                && l.contains("tier reserve (0 of 2 primaries usable")),
            "{tag}: {vip}: the status does not say the reserves serve:\n{status}"
        );
        ensure!(
            metrics.lines().any(|l| l == format!("xdplb_vip_reserve_active{{vip=\"{vip}\"}} 1")),
            "{tag}: {vip}: xdplb_vip_reserve_active is not 1"
        );
    }

    // Long-lived connections on a reserve of each VIP, then the primaries return.
    let long: Vec<(&str, LongLived)> = vips()
        .into_iter()
        .map(|(vip, target)| Ok((vip, LongLived::open(NS_CLIENT, target, KEEPALIVE_PERIOD)?)))
        .collect::<Result<_>>()?;
    for (vip, l) in &long {
        ensure!(
            RESERVES.contains(&l.backend.as_str()),
            "{tag}: {vip}: a new connection went to {}",
            l.backend
        );
    }
    let loads = start_loads()?;
    std::thread::sleep(Duration::from_millis(500));
    let t_start = Instant::now();
    rig.lab.start_waf(1)?;
    rig.lab.start_waf(2)?;
    let took = wait_until(WAIT, || on_primaries(rig))
        .with_context(|| format!("{tag}: the VIPs never went back to their primaries"))?;
    let t_back = Instant::now();
    std::thread::sleep(AFTER);
    for ((vip, _), (_, load)) in vips().into_iter().zip(loads) {
        let records = load.stop();
        let (ok, _) = tally(&records, t_back, t_back + AFTER);
        let (_, failed) = tally(&records, t_start, t_back + AFTER);
        eprintln!(
            "{tag}: {vip}: primaries back after {} ms; next {AFTER:?}: {ok:?}; failed since the start {failed:?}",
            took.as_millis()
        );
        ensure!(
            failed.is_empty(),
            "{tag}: {vip}: requests failed while the primaries came back: {failed:?}"
        );
        ensure!(
            RESERVES.iter().all(|r| !ok.contains_key(*r)),
            "{tag}: {vip}: new connections still reach a reserve after the primaries are back: {ok:?}"
        );
        ensure!(PRIMARIES.iter().all(|p| ok.contains_key(*p)), "{tag}: {vip}: {ok:?}");
    }
    for (vip, l) in long {
        let name = l.backend.clone();
        let (same, other) = l.close();
        eprintln!(
            "{tag}: {vip}: long-lived on reserve {name}: {same} answers, {} other",
            other.len()
        );
        ensure!(
            other.is_empty(),
            "{tag}: {vip}: the long-lived connection on {name} broke or moved: {other:?}"
        );
        let expected =
            (t_back + AFTER - t_start).as_secs_f64() / KEEPALIVE_PERIOD.as_secs_f64() / 2.0;
        ensure!(
            same as f64 >= expected,
            "{tag}: {vip}: the long-lived connection on {name} answered only {same} times"
        );
    }
    Ok(())
}

/// With `min_primaries: 2`, one of the two primaries stops under load: once it
/// is seen down, new connections spread over the other primary and both reserves.
fn min_primaries_2(rig: &Rig, tag: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(&rig.config)?.replace("min_primaries: 1", "min_primaries: 2");
    std::fs::write(&rig.config, text)?;
    expect_ok(rig.daemon.admin(&Request::Reload)?).context("reloading with min_primaries 2")?;
    ensure!(
        on_primaries(rig)?,
        "{tag}: with both primaries up the reserves must stand by:\n{}",
        rig.daemon.status()?
    );
    let loads = start_loads()?;
    std::thread::sleep(Duration::from_millis(1500));
    let t_break = Instant::now();
    rig.lab.stop_waf(1)?;
    let t_broken = Instant::now();
    let mut detected = BTreeMap::new();
    wait_until(WAIT, || {
        for (vip, _) in vips() {
            if !detected.contains_key(vip) && health(rig, vip, "waf1").is_ok_and(|h| h == "down") {
                detected.insert(vip, Instant::now());
            }
        }
        Ok(detected.len() == vips().len())
    })
    .with_context(|| format!("{tag}: the daemon never saw waf1 down"))?;
    let last = *detected.values().max().unwrap();
    std::thread::sleep(AFTER.saturating_sub(last.elapsed()));
    let status = rig.daemon.status()?;
    for ((vip, _), (load_start, load)) in vips().into_iter().zip(loads) {
        let records = load.stop();
        let times = Times { load_start, t_break, t_broken, t_det: detected[vip] };
        check_switch(&records, tag, vip, &times, &["waf2", "waf3", "waf4"])?;
        ensure!(
            status.lines().any(|l| l.starts_with(&format!("VIP {vip} "))
                && l.contains("tier primary+reserve (1 of 2 primaries usable, min_primaries 2")),
            "{tag}: {vip}: the status does not say primary+reserve:\n{status}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- checks

/// When the load started, the nodes were stopped (from, to) and the daemon saw them down.
#[derive(Clone, Copy)]
struct Times {
    load_start: Instant,
    t_break: Instant,
    t_broken: Instant,
    t_det: Instant,
}

/// The load on `vip` around a switch: nothing failed before the break; failures
/// between break and detection are bounded by rate x detection budget, and those
/// of connections started once the nodes were stopped are refusals (the ones in
/// flight at the stop are reset); after detection none failed and exactly
/// `serving` answered.
fn check_switch(
    records: &[Record],
    tag: &str,
    vip: &str,
    times: &Times,
    serving: &[&str],
) -> Result<()> {
    let Times { load_start, t_break, t_broken, t_det } = *times;
    let warm = load_start + Duration::from_millis(300);
    let base = records.iter().filter(|r| r.start >= warm && r.start < t_break).count();
    let rate = base as f64 / t_break.duration_since(warm).as_secs_f64();
    // Requests still in flight at the stop are the break's (reset by it), not the base's.
    let (_, base_failed) = tally_within(records, warm, t_break);
    let (_, before) = tally(records, t_break, t_det);
    let (after_ok, after) = tally(records, t_det, t_det + AFTER);
    let budget = INTERVAL * FALL + INTERVAL + CHECK_TIMEOUT + MARGIN;
    let bound = (rate * budget.as_secs_f64()).ceil() as usize;
    let n_before: usize = before.values().sum();
    // When the first new connection reached a reserve.
    let first_new = records
        .iter()
        .filter(|r| r.start >= t_break)
        .filter(|r| r.outcome.as_ref().is_ok_and(|w| RESERVES.contains(&w.as_str())))
        .map(|r| r.start.duration_since(t_break))
        .min();
    eprintln!(
        "{tag}: {vip}: seen down after {} ms; first new connection on a reserve at +{} ms; rate {rate:.0}/s; \
         failures before detection {n_before} {before:?} (bound {bound}); after: {after_ok:?} failed {after:?}",
        t_det.duration_since(t_break).as_millis(),
        first_new.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string()),
    );
    ensure!(
        base_failed.is_empty(),
        "{tag}: {vip}: requests failed before the break: {base_failed:?}"
    );
    ensure!(
        after.is_empty(),
        "{tag}: {vip}: {after:?} new connections failed after detection (answers {after_ok:?})"
    );
    let answered: Vec<&str> = after_ok.keys().map(String::as_str).collect();
    let mut want = serving.to_vec();
    want.sort_unstable();
    ensure!(answered == want, "{tag}: {vip}: after detection {answered:?} answered, want {want:?}");
    ensure!(
        n_before <= bound,
        "{tag}: {vip}: {n_before} failed before detection, more than {bound}: {before:?}"
    );
    let (_, while_broken) = tally(records, t_broken, t_det);
    ensure!(
        while_broken.keys().all(|f| *f == Failure::Refused),
        "{tag}: {vip}: failures of connections started while the nodes were stopped should all be refusals: {while_broken:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// Load on each VIP (in [`vips`] order), with when it started.
fn start_loads() -> Result<Vec<(Instant, HttpLoad)>> {
    vips()
        .into_iter()
        .map(|(_, target)| {
            let load =
                HttpLoad::start(NS_CLIENT, target, WORKERS, RATE_PER_WORKER, REQUEST_TIMEOUT)?;
            Ok((Instant::now(), load))
        })
        .collect()
}

/// Every VIP on its primaries (healthy), every reserve healthy and on standby.
fn on_primaries(rig: &Rig) -> Result<bool> {
    let rows = rows(&rig.daemon.status()?);
    Ok(rows.len() == WAFS * 4
        && rows.iter().all(|r| {
            r.health == "up"
                && if r.role == "reserve" { r.state == "standby" } else { r.state == "up" }
        }))
}

fn health(rig: &Rig, vip: &str, backend: &str) -> Result<String> {
    let s = rig.daemon.status()?;
    rows(&s)
        .into_iter()
        .find(|r| r.vip == vip && r.backend == backend)
        .map(|r| r.health)
        .with_context(|| format!("{vip}/{backend} not in status:\n{s}"))
}

/// `n` requests on new connections, as fast as they are answered.
fn requests(target: SocketAddr, n: usize) -> Result<Vec<Record>> {
    xdplb_tests::traffic::requests(NS_CLIENT, target, n, WORKERS, REQUEST_TIMEOUT)
}
