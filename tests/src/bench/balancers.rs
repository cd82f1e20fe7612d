//! `bench failover`, balancer rows: a pair of balancers (`pair.rs`) with the
//! shipped engine settings (deploy/keepalived, deploy/bird), under new-connection
//! load from the client, IPv4. Per event:
//!
//! - a balancer's host dies (its link cut, every process on it killed): the
//!   takeover, from the fault to the first new connection served after the last
//!   one that failed (from then on the survivor serves the dead balancer's share),
//!   measured by probes (a new connection every few milliseconds, 100 ms to
//!   connect); and the ordinary client connections (3 s timeout) that failed;
//! - a balancer's xdplb is stopped for maintenance (SIGTERM: withdraw, forward on
//!   for `ha.withdraw_wait`, exit): failed probes and client connections.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    lab::{Mode, NS_CLIENT, Redundancy, in_netns},
    pair::Pair,
    rig::{Checks, web4},
    traffic::{HttpLoad, Record},
};

const WAFS: usize = 3;
/// A probe gives up connecting after this: a SYN that vanished is a failure at once.
const PROBE_CONNECT: Duration = Duration::from_millis(100);
const PROBERS: usize = 6;
/// Ordinary clients: a SYN retransmission (1 s) still succeeds.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a fault failures are attributed to it.
const WINDOW: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(40);

/// One probe: when it started, whether a new connection was served.
#[derive(Clone, Copy, Debug)]
struct Probe {
    start: Instant,
    ok: bool,
}

/// New connections as fast as they fail or succeed, from several threads.
struct Probers {
    log: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn probe(target: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&target, PROBE_CONNECT) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

impl Probers {
    fn start(target: SocketAddr) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..PROBERS)
            .map(|_| {
                let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let _ = in_netns(Some(NS_CLIENT), || {
                        while !stop.load(Ordering::Relaxed) {
                            let start = Instant::now();
                            let ok = probe(target);
                            log.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(Probe { start, ok });
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(())
                    });
                })
            })
            .collect();
        Self { log, stop, threads }
    }

    fn since(&self, from: Instant) -> Vec<Probe> {
        let log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<Probe> =
            log.iter().copied().filter(|p| p.start >= from && p.start < from + WINDOW).collect();
        v.sort_by_key(|p| p.start);
        v
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From `fault` to the first probe that succeeded after the last one that failed;
/// zero when none failed. And the failed probes.
fn takeover(probes: &[Probe], fault: Instant) -> (Duration, usize) {
    let failed = probes.iter().filter(|p| !p.ok).count();
    let Some(last_failed) = probes.iter().filter(|p| !p.ok).map(|p| p.start).max() else {
        return (Duration::ZERO, 0);
    };
    let served =
        probes.iter().find(|p| p.ok && p.start > last_failed).map_or(last_failed, |p| p.start);
    (served.saturating_duration_since(fault), failed)
}

fn failed_clients(records: &[Record], from: Instant) -> usize {
    records
        .iter()
        .filter(|r| r.start >= from && r.start < from + WINDOW && r.outcome.is_err())
        .count()
}

/// One event of a row.
#[derive(Clone, Copy)]
struct Sample {
    /// From the fault to the engine carrying the VIPs through the other balancer
    /// only (the VRRP master, the router's route), polled.
    engine: Duration,
    /// From the fault to the first probe served after the last one that failed.
    takeover: Duration,
    failed_probes: usize,
    failed_clients: usize,
}

/// One row of the table.
pub struct Row {
    engine: Redundancy,
    fault: &'static str,
    samples: Vec<Sample>,
}

fn other(k: usize) -> usize {
    if k == 1 { 2 } else { 1 }
}

/// The balancer that carries new flows now: the VRRP master, or (BGP) `prefer`.
fn victim(pair: &Pair, prefer: usize) -> Result<usize> {
    match pair.ha {
        Redundancy::Vrrp => pair.lab.vrrp_master().context("no VRRP master"),
        Redundancy::Bgp => Ok(prefer),
    }
}

/// Waits until both balancers are back in service: healthy, and in the router's
/// route (BGP) or one the master and the other's keepalived a backup (VRRP).
fn both_ready(pair: &Pair, revived: usize) -> Result<()> {
    pair.wait_healthy(revived, WAFS * 4)?;
    match pair.ha {
        Redundancy::Bgp => {
            pair.wait_carriers(&[1, 2], WAIT)?;
        }
        Redundancy::Vrrp => {
            let log = crate::pair::node(revived).dir().join("keepalived.log");
            let from = std::fs::read_to_string(&log).map_or(0, |t| t.len());
            Pair::wait("the revived keepalived to enter BACKUP", WAIT, || {
                std::fs::read_to_string(&log).is_ok_and(|t| {
                    t.get(from..).is_some_and(|new| new.contains("Entering BACKUP STATE"))
                        || t.lines()
                            .rev()
                            .find(|l| l.contains("STATE"))
                            .is_some_and(|l| l.contains("BACKUP"))
                })
            })?;
        }
    }
    // Let routes and neighbour caches settle before the next fault.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn host_deaths(pair: &mut Pair, events: usize) -> Result<Row> {
    let probers = Probers::start(web4());
    let load = HttpLoad::start(NS_CLIENT, web4(), 8, 10.0, CLIENT_TIMEOUT)?;
    let mut samples = Vec::new();
    for event in 0..events {
        let dead = victim(pair, 1 + event % 2)?;
        std::thread::sleep(Duration::from_millis(500));
        let fault = Instant::now();
        pair.kill(dead)?;
        pair.wait_carriers(&[other(dead)], WAIT)?;
        let engine = fault.elapsed();
        std::thread::sleep(WINDOW);
        let (took, failed_probes) = takeover(&probers.since(fault), fault);
        let failed = failed_clients(&load.log.records(), fault);
        super::progress(format!(
            "{}, host of balancer {dead} dies, event {}: engine moved after {:.0} ms, traffic gap {:.0} ms, {failed_probes} probes and {failed} client connections failed",
            pair.ha,
            event + 1,
            ms(engine),
            ms(took)
        ));
        samples.push(Sample { engine, takeover: took, failed_probes, failed_clients: failed });
        pair.revive(dead)?;
        both_ready(pair, dead)?;
    }
    drop(probers);
    let _ = load.stop();
    Ok(Row { engine: pair.ha, fault: "host dies (link cut, processes killed)", samples })
}

fn planned_stops(pair: &mut Pair, events: usize) -> Result<Row> {
    let probers = Probers::start(web4());
    let load = HttpLoad::start(NS_CLIENT, web4(), 8, 10.0, CLIENT_TIMEOUT)?;
    let mut samples = Vec::new();
    for event in 0..events {
        let stopped = victim(pair, 1 + event % 2)?;
        std::thread::sleep(Duration::from_millis(500));
        let at = Instant::now();
        // SIGTERM, then measure while it withdraws, waits and exits.
        let pid = pair.daemon(stopped)?.pid().context("no pid")?;
        // SAFETY: signalling the daemon the pair started.
        unsafe { libc::kill(i32::try_from(pid)?, libc::SIGTERM) };
        let moved = pair.wait_carriers(&[other(stopped)], WAIT)?;
        pair.stop(stopped)?;
        std::thread::sleep(Duration::from_secs(1));
        let seen = probers.since(at);
        let (took, _) = takeover(&seen, at);
        let failed_probes = seen.iter().filter(|p| !p.ok).count();
        let failed = failed_clients(&load.log.records(), at);
        super::progress(format!(
            "{}, planned stop of balancer {stopped}, event {}: traffic moved after {:.0} ms; {failed_probes} of {} probes and {failed} client connections failed",
            pair.ha,
            event + 1,
            ms(moved),
            seen.len()
        ));
        samples.push(Sample {
            engine: moved,
            takeover: took,
            failed_probes,
            failed_clients: failed,
        });
        pair.start(stopped)?;
        both_ready(pair, stopped)?;
    }
    drop(probers);
    let _ = load.stop();
    Ok(Row { engine: pair.ha, fault: "planned stop (SIGTERM to xdplb)", samples })
}

/// The balancer rows: for each engine, `events` host deaths and planned stops.
pub fn measure(events: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (ha, mode) in [(Redundancy::Vrrp, Mode::Dsr), (Redundancy::Bgp, Mode::Dsr)] {
        super::progress(format!("balancer pair with {ha}"));
        let mut pair = Pair::up(mode, ha, WAFS, &Checks::default())?;
        rows.push(host_deaths(&mut pair, events)?);
        rows.push(planned_stops(&mut pair, events)?);
    }
    Ok(rows)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_worst(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn engine(ha: Redundancy) -> &'static str {
    match ha {
        Redundancy::Vrrp => "VRRP: keepalived 2.2, advert_int 0.1 s, track file",
        Redundancy::Bgp => "BGP: BIRD 2.0, BFD 50 ms x 3, ECMP on the router",
    }
}

/// The Markdown table of the balancer rows.
#[must_use]
pub fn report(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Balancer failover: a pair of balancers (`cargo xtask bench failover`, balancer rows)\n"
    );
    let _ = writeln!(
        s,
        "| engine (shipped settings) | fault | events | engine moved the VIPs, median (worst) | traffic gap seen by probes, median (worst) | failed probes median (worst) | failed client connections median (worst) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let stat = |f: fn(&Sample) -> f64| median_worst(r.samples.iter().map(f).collect());
        let (em, ew) = stat(|s| ms(s.engine));
        let (tm, tw) = stat(|s| ms(s.takeover));
        let (pm, pw) = stat(|s| s.failed_probes as f64);
        let (cm, cw) = stat(|s| s.failed_clients as f64);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {em:.0} ms ({ew:.0}) | {tm:.0} ms ({tw:.0}) | {pm:.0} ({pw:.0}) | {cm:.0} ({cw:.0}) |",
            engine(r.engine),
            r.fault,
            r.samples.len()
        );
    }
    let _ = writeln!(
        s,
        "\nTwo balancers in the lab (`lab/ha.rs`) run xdplb with the same config and the shipped keepalived or \
         BIRD config (deploy/), dsr, 3 nginx WAF nodes, IPv4. Engine moved the VIPs: from the fault (for a \
         planned stop: the SIGTERM) to the engine carrying the VIPs through the other balancer only (the \
         survivor is VRRP master, or the router's route has only the survivor as next hop), polled every \
         10 ms. Traffic gap: from the fault to the first probe (a new connection, {PROBERS} threads, one \
         every ~5 ms each, {} ms to connect) served after the last one that failed; 0 when none failed. \
         In this lab a host death takes the balancer's bridge port down, so the bridge floods frames for \
         the dead balancer's MAC to the survivor, whose XDP program passes them to its kernel (they are \
         not addressed to it), as on a switch: the gap lasts until the engine has moved the VIPs and \
         the router or client has learnt the survivor's MAC. Client connections: 8 threads x \
         10 requests/s, a new connection each, {} s timeout (a lost SYN is retransmitted after 1 s and \
         still succeeds). A host death alternates between the balancers (VRRP: the master), the balancer \
         is revived between events (it rejoins: VRRP as backup, nopreempt; BGP after BIRD's error wait). \
         A planned stop is SIGTERM to xdplb: it withdraws at once, forwards on for ha.withdraw_wait (2 s), \
         then exits.",
        PROBE_CONNECT.as_millis(),
        CLIENT_TIMEOUT.as_secs()
    );
    s
}
