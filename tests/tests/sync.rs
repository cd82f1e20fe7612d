//! Peer sync (#15) end to end on each balancer pair of the lab, dsr, four WAF
//! nodes weighted 1:2:3:4, IPv4 and IPv6 at once: the VRRP pair (keepalived
//! moving a floating next hop; the master carries every connection) and the
//! BGP/ECMP pair (BIRD announcing the VIPs; the router spreads connections over
//! both). The sequence that breaks connections when balancers share nothing:
//!
//! 1. waf2 is down on both balancers (its nginx stopped) while long-lived
//!    connections open, so none is on waf2;
//! 2. waf2 comes back (the ring gives it back its slots on both balancers) and
//!    waf3 is drained on both (`xdplb drain` on each), until both rings agree;
//!    each balancer keeps every connection it carries on its node through its
//!    connection table; the other's ring now sends part of them elsewhere;
//! 3. a balancer's host dies (the VRRP master; with BGP, the first of the
//!    router's two next hops); the other takes over its connections.
//!
//! With sync off (no `sync:` section), the dead balancer's connections whose slot
//! moved to waf2 and those on waf3 break: the test counts them and requires some
//! (what proves the sequence moves flows). With sync on, the survivor holds the
//! dead balancer's exceptions before the kill (waited for on the metrics, never
//! by sleeping), and not one connection is lost. Every connection exchanges data
//! after the takeover before it is judged. One pair serves both halves: sync off
//! first, then both balancers restart with a `sync:` section.

#![allow(clippy::unwrap_used, reason = "test")]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use lb_userspace::admin::Request;
use xdplb_tests::{
    daemon::{Daemon, binary},
    lab::{LAB_DIR, Mode, Redundancy, ha::BALANCERS},
    pair::{self, Conns, Pair},
    privilege::have_root,
    rig::{Checks, config_text, expect_ok, rows, warm_neighbours, web4, web6},
};

const WAFS: usize = 4;
const WEIGHTS: [u32; WAFS] = [1, 2, 3, 4];
/// Down while the connections open, then back: the ring moves slots to it.
const RETURNING: usize = 2;
/// Drained once the connections are open: every connection on it must stay.
const DRAINED: usize = 3;
/// The VIPs the connections go to (the others are left alone).
const VIPS: [&str; 2] = ["web4", "web6"];
/// Long-lived connections per address family.
const PER_FAMILY: usize = 128;
/// Each long-lived connection sends a request this often.
const PERIOD: Duration = Duration::from_secs(1);
/// Generous bound on any takeover or convergence here (a busy 2-core machine).
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn sync_vrrp() {
    run(Redundancy::Vrrp);
}

#[test]
fn sync_bgp() {
    run(Redundancy::Bgp);
}

fn run(ha: Redundancy) {
    let what = format!("peer sync ({ha})");
    let what = what.as_str();
    if !have_root(what) {
        return;
    }
    if !pair::available() {
        // Fails under CI=true; counted by `cargo xtask test` otherwise.
        lb_userspace::skip::skip(
            what,
            "keepalived or bird2 not installed (cargo xtask setup --lab)",
        );
        return;
    }
    binary().expect("the xdplb binary: `cargo build -p lb-userspace --bin xdplb`");
    let started = Instant::now();
    let text = config_text(Mode::Dsr, WAFS, &Checks::default(), &WEIGHTS);
    let mut pair = Pair::up_with(Mode::Dsr, ha, WAFS, &text, None)
        .unwrap_or_else(|e| panic!("pair up: {e:#}"));
    let key = Path::new(LAB_DIR).join("sync.key");
    let mut failed = Vec::new();
    let mut outcomes = Vec::new();
    // SYNC_ONLY=off (or on) runs one half, while developing.
    let only = std::env::var("SYNC_ONLY").unwrap_or_default();
    for sync in [false, true] {
        let tag = if sync { "sync on" } else { "sync off" };
        if !tag.ends_with(only.as_str()) {
            continue;
        }
        eprintln!("\n=== {tag}");
        let t = Instant::now();
        // The pair is fresh for the first half.
        let restart = !outcomes.is_empty() || !failed.is_empty();
        let result = configure(&mut pair, sync.then_some(key.as_path()), restart)
            .with_context(|| format!("{tag}: configuring the pair"))
            .and_then(|()| ring_change_then_death(&mut pair, tag, sync));
        match result {
            Ok(o) => {
                eprintln!("=== {tag}: ok in {:.1} s", t.elapsed().as_secs_f64());
                outcomes.push((tag, o));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let msg = if msg.starts_with(tag) { msg } else { format!("{tag}: {msg}") };
                eprintln!("=== FAILED: {msg}");
                failed.push(msg);
            }
        }
    }
    drop(pair);
    eprintln!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    for (tag, o) in &outcomes {
        eprintln!("{tag}: {o}");
    }
    assert!(failed.is_empty(), "{} half(s) failed:\n{}", failed.len(), failed.join("\n\n"));
}

/// What one half saw.
struct Outcome {
    connections: usize,
    /// Of the victim's, on the drained node.
    on_drained: usize,
    /// With sync: the exceptions the victim held and sent, and the survivor
    /// installed, before the kill.
    sync: Option<Exceptions>,
    takeover: Duration,
    lost: usize,
}

struct Exceptions {
    /// The victim's own (`xdplb_sync_exceptions{origin="local"}`).
    held: f64,
    /// Entries the victim sent its peer so far (`xdplb_sync_entries_sent_total`;
    /// a snapshot goes out every second, so it counts repeats).
    sent: f64,
    /// The survivor's from its peer (`xdplb_sync_exceptions{origin="peer"}`).
    installed: f64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections ({} of the victim's on the drained waf{DRAINED}); ",
            self.connections, self.on_drained
        )?;
        match &self.sync {
            Some(e) => write!(
                f,
                "exceptions held {} / sent {} / installed on the survivor {}; ",
                e.held, e.sent, e.installed
            )?,
            None => write!(f, "no sync; ")?,
        }
        write!(f, "takeover {} ms; lost {}", self.takeover.as_millis(), self.lost)
    }
}

/// Both balancers running with peer sync (`sync_key`) or without, healthy, every
/// node up and undrained, identical rings, one of them carrying the VIPs. A
/// balancer that already runs restarts to read its new config (a planned stop:
/// the other carries the VIPs meanwhile) if `restart` or its config changed;
/// each balancer (re)started here starts with an empty connection table, so that
/// the exceptions counted are this half's connections only.
fn configure(pair: &mut Pair, sync_key: Option<&Path>, restart: bool) -> Result<()> {
    if let Some(key) = sync_key {
        pair::write_sync_key(key)?;
    }
    let configs = |pair: &Pair| -> Vec<String> {
        pair.members
            .iter()
            .map(|m| std::fs::read_to_string(&m.config).unwrap_or_default())
            .collect()
    };
    let before = configs(pair);
    pair.set_sync(sync_key)?;
    let restart = restart || before != configs(pair);
    for k in 1..=WAFS {
        pair.lab.start_waf(k)?;
    }
    let running: Vec<usize> = (1..=BALANCERS).filter(|&k| pair.daemon(k).is_ok()).collect();
    for k in 1..=BALANCERS {
        if !running.contains(&k) {
            pair.lab.revive_balancer(k)?;
            pair.forget(k)?;
            pair.start(k)?;
            pair.wait_healthy(k, WAFS * 4)?;
        }
    }
    // Draining is kept across restarts (in the pins); the forgotten have none.
    for &k in running.iter().filter(|_| restart) {
        let other = other(k);
        pair.wait_healthy(other, WAFS * 4)?;
        pair.stop(k)?;
        pair.wait_carriers(&[other], WAIT)?;
        pair.forget(k)?;
        pair.start(k)?;
        pair.wait_healthy(k, WAFS * 4)?;
    }
    for k in 1..=BALANCERS {
        let d = pair.daemon(k)?;
        for row in rows(&d.status()?).into_iter().filter(|r| r.drained) {
            expect_ok(d.admin(&Request::Undrain { vip: row.vip, backend: row.backend })?)?;
        }
    }
    for k in 1..=BALANCERS {
        pair.wait_healthy(k, WAFS * 4)?;
    }
    pair.wait_carriers(&[1, 2], WAIT)?;
    Pair::wait("identical rings", WAIT, || same_rings(pair).unwrap_or(false))?;
    Ok(())
}

fn other(k: usize) -> usize {
    if k == 1 { 2 } else { 1 }
}

/// Whether both balancers show the same ring digest for every VIP.
fn same_rings(pair: &Pair) -> Result<bool> {
    let a = pair.digests(1)?;
    Ok(a == pair.digests(2)? && a.len() == 4)
}

/// Waits until WAF node `k` is in `state` in both web VIPs on both balancers.
fn wait_state(pair: &Pair, k: usize, state: &str) -> Result<Duration> {
    let node = format!("waf{k}");
    Pair::wait(&format!("{node} {state} on both balancers"), WAIT, || {
        (1..=BALANCERS).all(|k| {
            pair.daemon(k).and_then(Daemon::status).is_ok_and(|s| {
                rows(&s)
                    .iter()
                    .filter(|r| r.backend == node && VIPS.contains(&r.vip.as_str()))
                    .filter(|r| r.state == state)
                    .count()
                    == VIPS.len()
            })
        })
    })
}

/// Two counts read as floats (from metrics or text) are the same count.
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.5
}

/// `xdplb_sync_exceptions{origin}` on balancer `k`.
fn exceptions(pair: &Pair, k: usize, origin: &str) -> Result<f64> {
    pair.daemon(k)?.metric("xdplb_sync_exceptions", &[("origin", origin)])
}

/// The sequence of the module doc; what it lost.
fn ring_change_then_death(pair: &mut Pair, tag: &str, sync: bool) -> Result<Outcome> {
    // The balancer that dies: the VRRP master, or with BGP the first next hop.
    let victim = *pair.carriers(web4().ip())?.first().context("nothing carries the VIPs")?;
    let survivor = other(victim);
    let (returning, drained) = (format!("waf{RETURNING}"), format!("waf{DRAINED}"));

    // 1. A node down on both balancers while the connections open (neighbours
    // warmed first: `warm_neighbours` needs every node).
    warm_neighbours(WAFS, WAIT)?;
    pair.lab.stop_waf(RETURNING)?;
    wait_state(pair, RETURNING, "down")?;
    let rings_before = pair.digests(victim)?;
    let conns = Conns::open(pair, &[web4(), web6()], PER_FAMILY, PERIOD, None)?;
    let (by_node, spread) = (conns.by_node(), conns.spread());
    eprintln!(
        "{tag}: {} connections by (family, balancer) {spread:?}, by node {by_node:?}",
        conns.len()
    );
    match pair.ha {
        Redundancy::Vrrp => ensure!(
            conns.conns.iter().all(|(_, _, k)| *k == victim),
            "{tag}: not every connection went through the VRRP master {victim}"
        ),
        // Both carry some of each family: the dead one's are at stake, the
        // survivor's show that its own stay.
        Redundancy::Bgp => ensure!(
            spread.len() == 4 && spread.values().all(|&n| n >= 5),
            "{tag}: ECMP did not spread the connections over both balancers: {spread:?}"
        ),
    }
    ensure!(
        by_node.keys().all(|(_, n)| *n != returning),
        "{tag}: connections reached {returning} while it was down"
    );
    let on_drained =
        conns.conns.iter().filter(|(c, _, k)| *k == victim && c.backend == drained).count();
    ensure!(on_drained > 0, "{tag}: no connection via balancer {victim} on {drained}");

    // 2. It comes back and another node drains, on both balancers.
    pair.lab.start_waf(RETURNING)?;
    wait_state(pair, RETURNING, "up")?;
    for k in 1..=BALANCERS {
        for vip in VIPS {
            let drain = Request::Drain { vip: vip.into(), backend: drained.clone() };
            expect_ok(pair.daemon(k)?.admin(&drain)?)
                .with_context(|| format!("{tag}: draining {vip}/{drained} on balancer {k}"))?;
        }
    }
    wait_state(pair, DRAINED, "draining")?;
    Pair::wait("identical rings after the change", WAIT, || same_rings(pair).unwrap_or(false))?;
    let rings_after = pair.digests(victim)?;
    ensure!(
        VIPS.iter().all(|v| rings_before.get(*v) != rings_after.get(*v)),
        "{tag}: the web rings did not change: {rings_before:?} -> {rings_after:?}"
    );

    // 3. With sync, the survivor holds the victim's exceptions.
    let exchanged =
        if sync { Some(survivor_holds(pair, tag, victim, &conns, on_drained)?) } else { None };
    let broken = conns.lost();
    ensure!(broken.is_empty(), "{tag}: connections broke before the kill: {broken:#?}");

    // 4. The victim's host dies.
    let t_kill = Instant::now();
    pair.kill(victim)?;
    let takeover =
        pair.wait_carriers(&[survivor], WAIT).with_context(|| format!("{tag}: no takeover"))?;
    let settled = conns
        .settle(t_kill + takeover, WAIT)
        .with_context(|| format!("{tag}: connections after the takeover"))?;
    let lost = conns.lost();
    let outcome = Outcome {
        connections: conns.len(),
        on_drained,
        sync: exchanged,
        takeover,
        lost: lost.len(),
    };
    eprintln!(
        "{tag}: balancer {victim} killed, balancer {survivor} took over; every connection \
         exchanged data {} ms later: {outcome}; lost by (family, node): {:?}",
        settled.as_millis(),
        conns.lost_by_node()
    );
    if sync {
        ensure!(lost.is_empty(), "{tag}: connections lost with sync on: {lost:#?}");
    } else {
        ensure!(
            !lost.is_empty(),
            "{tag}: no connection lost without sync: the sequence moved no flow"
        );
    }
    Ok(outcome)
}

/// Waits until the survivor holds the victim's exceptions (the metrics, polled),
/// at least one per connection on the drained node: the victim found them after
/// the drain, not only after the earlier return. (Forged, replayed and other bad
/// sync messages: tests/tests/sync_forged.rs.)
fn survivor_holds(
    pair: &Pair,
    tag: &str,
    victim: usize,
    conns: &Conns,
    on_drained: usize,
) -> Result<Exceptions> {
    let survivor = other(victim);
    #[expect(clippy::cast_precision_loss, reason = "a few hundred connections")]
    let (floor, ceiling) = (on_drained as f64, conns.len() as f64);
    let took = Pair::wait("the survivor to hold the victim's exceptions", WAIT, || {
        let local = exceptions(pair, victim, "local").unwrap_or(-1.0);
        let peer = exceptions(pair, survivor, "peer").unwrap_or(-2.0);
        local >= floor && same(local, peer)
    })?;
    let held = exceptions(pair, victim, "local")?;
    let installed = exceptions(pair, survivor, "peer")?;
    let sent = pair.daemon(victim)?.metric("xdplb_sync_entries_sent_total", &[])?;
    eprintln!(
        "{tag}: the survivor holds the victim's {held} exceptions {} ms after the rings agreed \
         ({sent} entries sent)",
        took.as_millis()
    );
    // The tables started empty: every entry is one of these connections.
    ensure!(held <= ceiling, "{tag}: {held} exceptions held for {ceiling} connections");
    // `xdplb status` says the same: the victim's own count, the survivor's row for it.
    Pair::wait("xdplb status to show the exceptions on both balancers", WAIT, || {
        let own = peers_section(pair, victim).ok().map(|(own, _)| own);
        let row = peers_section(pair, survivor).ok().and_then(|(_, rows)| {
            rows.into_iter().find(|(peer, _)| *peer == pair::sync_address(victim).to_string())
        });
        own.is_some_and(|n| same(n, held)) && row.is_some_and(|(_, n)| same(n, installed))
    })
    .with_context(|| format!("{tag}: the peers: section of xdplb status"))?;
    Ok(Exceptions { held, sent, installed })
}

/// The `peers:` section of balancer `k`'s `xdplb status`: its own exception count,
/// and each peer's address with the exceptions installed from it.
fn peers_section(pair: &Pair, k: usize) -> Result<(f64, Vec<(String, f64)>)> {
    let status = pair.daemon(k)?.status()?;
    let mut lines = status.lines().skip_while(|l| !l.starts_with("peers:"));
    let head = lines.next().with_context(|| format!("no peers: section in\n{status}"))?;
    let own = head
        .split(['(', ' '])
        .find_map(|w| w.parse::<f64>().ok())
        .with_context(|| format!("no count in {head:?}"))?;
    // Rows: PEER, LAST HEARD (one or two words), RECEIVED, INSTALLED, SENT.
    let rows = lines
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let installed = w.get(w.len().checked_sub(2)?)?.parse().ok()?;
            Some(((*w.first()?).to_owned(), installed))
        })
        .collect();
    Ok((own, rows))
}
