//! `bench failover`: how fast a dead WAF node stops getting new
//! connections, xdplb against HAProxy in TCP mode, in the same lab with the same
//! load. Two failure kinds: nginx stopped (connections refused) and the node's
//! link cut (silence). For each event: detection time (balancer marks the node
//! down), the time after which no new connection reached the dead node (the last
//! failed request's start; only requests to the dead node fail), and the number
//! of failed connections. A third event: every primary stopped (waf1 and waf2)
//! with waf3 a reserve (xdplb `backup: true`, HAProxy `backup`): the time until
//! new connections reach the reserve and the failed connections. xdplb runs with
//! its defaults and with its health checks alone (as before issue #11), with
//! clients that time out after 1 s and after 3 s (the kernel's SYN retries at work).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_userspace::admin::{Request, Response};

use crate::{
    chart,
    lab::{self, Lab, NS_CLIENT, NS_LB, VIP4},
    rig::{Checks, Rig, config_text, rows, web4, with_reserves},
    traffic::{HttpLoad, Record},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// nginx stopped: SYNs are answered with RST.
    Refused,
    /// Link cut: nothing comes back.
    Silent,
}

impl Kind {
    fn waf(self) -> usize {
        match self {
            Self::Refused => 2,
            Self::Silent => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Refused => "nginx stopped (refused)",
            Self::Silent => "link cut (silent)",
        }
    }

    fn inject(self, lab: &Lab) -> Result<()> {
        match self {
            Self::Refused => lab.stop_waf(self.waf()),
            Self::Silent => lab.cut_link(self.waf()),
        }
    }

    fn repair(self, lab: &Lab) -> Result<()> {
        match self {
            Self::Refused => lab.start_waf(self.waf()),
            Self::Silent => lab.restore_link(self.waf()),
        }
    }
}

/// One failure event.
#[derive(Clone, Debug)]
pub struct Sample {
    pub detection: Duration,
    /// Start of the last request that failed, after the failure.
    pub last_new_connection: Duration,
    pub failed: usize,
    /// Of `failed`: connections that never got established (refused, or no SYN
    /// answered within the client's timeout) ...
    pub failed_to_connect: usize,
    /// ... and requests whose connection was established before the node died
    /// (no balancer can save those: the node held them).
    pub failed_connected: usize,
    /// Requests that succeeded after a connect of 0.9 s or more: a retransmitted SYN
    /// reached a live node after the first was lost to the dead one.
    pub rescued: usize,
    /// Requests per 100 ms bin and answering node (`failed` for failures), from
    /// [`BEFORE`] before the fault until the node is repaired.
    pub timeline: BTreeMap<String, Vec<f64>>,
}

/// How long all nodes are up before a fault (the chart starts there).
const BEFORE: Duration = Duration::from_millis(500);

/// A balancer under test: how to see whether it has marked a node down.
trait Balancer {
    fn is_down(&self, waf: usize) -> Result<bool>;
    /// Healthy (a reserve on standby included).
    fn is_up(&self, waf: usize) -> Result<bool>;
    fn all_up(&self, wafs: usize) -> Result<bool>;
}

impl Balancer for Rig {
    fn is_down(&self, waf: usize) -> Result<bool> {
        Ok(self.state("web4", &format!("waf{waf}"))? == "down")
    }

    fn is_up(&self, waf: usize) -> Result<bool> {
        let name = format!("waf{waf}");
        Ok(rows(&self.daemon.status()?)
            .iter()
            .any(|r| r.vip == "web4" && r.backend == name && r.health == "up" && !r.drained))
    }

    fn all_up(&self, wafs: usize) -> Result<bool> {
        Ok((1..=wafs).all(|k| self.state("web4", &format!("waf{k}")).is_ok_and(|s| s == "up")))
    }
}

/// Client timeout: a request to a silent node fails after this (the connect gets
/// no SYN retransmission: Linux resends a SYN after 1 s).
const TIMEOUT: Duration = Duration::from_secs(1);
/// Client timeout that lets the kernel's default SYN retries work (resends at 1 s
/// and 3 s): a client as most are.
const TIMEOUT_RETRIES: Duration = Duration::from_secs(3);
/// A connect this slow waited for a retransmitted SYN.
const RETRANSMITTED: Duration = Duration::from_millis(900);
const WAFS: usize = 3;

/// `runs` events of `kind` under `load` (whose clients time out after `timeout`).
fn measure(
    b: &dyn Balancer,
    lab: &Lab,
    (load, timeout): (&HttpLoad, Duration),
    kind: Kind,
    runs: usize,
    label: &str,
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for run in 0..runs {
        wait(|| b.all_up(WAFS), Duration::from_secs(30), "all nodes up")?;
        std::thread::sleep(BEFORE);
        let t0 = Instant::now();
        kind.inject(lab)?;
        let detection =
            wait(|| b.is_down(kind.waf()), Duration::from_secs(30), "the node marked down")?;
        // Let requests sent before detection finish (or time out).
        std::thread::sleep(timeout + Duration::from_millis(300));
        let repaired = Instant::now();
        kind.repair(lab)?;
        let records = load.log.records();
        // Every request that ended badly while the node was dead, including one
        // that started before the fault and was cut by it.
        let during: Vec<&Record> =
            records.iter().filter(|r| r.end >= t0 && r.end < repaired).collect();
        let failed: Vec<&&Record> = during.iter().filter(|r| r.outcome.is_err()).collect();
        let last = failed.iter().map(|r| r.start.saturating_duration_since(t0)).max();
        let sample = Sample {
            detection,
            last_new_connection: last.unwrap_or_default(),
            failed: failed.len(),
            failed_to_connect: failed.iter().filter(|r| r.failed_to_connect()).count(),
            failed_connected: failed.iter().filter(|r| r.failed_connected()).count(),
            rescued: during
                .iter()
                .filter(|r| r.outcome.is_ok() && r.connect.is_some_and(|c| c >= RETRANSMITTED))
                .count(),
            timeline: chart::bin(
                &records,
                t0,
                (
                    -BEFORE.as_secs_f64(),
                    (detection + timeout + Duration::from_millis(300)).as_secs_f64(),
                ),
            ),
        };
        super::progress(format!(
            "{label}, {}, client timeout {timeout:?}, run {}: detected in {:.0} ms, last failed \
             request started at {:.0} ms, {} failed ({} to connect, {} after connecting), {} \
             rescued by a retransmitted SYN",
            kind.name(),
            run + 1,
            ms(detection),
            ms(sample.last_new_connection),
            sample.failed,
            sample.failed_to_connect,
            sample.failed_connected,
            sample.rescued,
        ));
        out.push(sample);
    }
    wait(|| b.all_up(WAFS), Duration::from_secs(30), "all nodes up")?;
    Ok(out)
}

fn wait(
    mut check: impl FnMut() -> Result<bool>,
    timeout: Duration,
    what: &str,
) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().unwrap_or(false) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// HAProxy in TCP mode in the lb namespace, the VIP on its loopback.
struct Haproxy {
    dir: PathBuf,
    pid: i32,
}

impl Haproxy {
    /// With `backup`, waf3 is a `backup` server: it takes connections only while
    /// every other server is down.
    fn start(checks: &str, backup: bool) -> Result<Self> {
        let dir = Path::new(lab::LAB_DIR).join("haproxy");
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("stats.sock");
        let mut cfg = format!(
            "global\n  stats socket {} mode 600 level admin\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend vip\n  bind {VIP4}:80\n  default_backend wafs\n\
             backend wafs\n  balance roundrobin\n{checks}",
            sock.display()
        );
        for k in 1..=WAFS {
            let role = if backup && k == RESERVE { " backup" } else { "" };
            let _ = writeln!(cfg, "  server waf{k} {}:80 check{role}", lab::waf4(k));
        }
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, cfg)?;
        lab::sh::ns_sh(NS_LB, &["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
        let pidfile = dir.join("haproxy.pid");
        lab::sh::ns_sh(
            NS_LB,
            &["haproxy", "-D", "-f", &conf.to_string_lossy(), "-p", &pidfile.to_string_lossy()],
        )?;
        let pid = std::fs::read_to_string(&pidfile)?.trim().parse()?;
        Ok(Self { dir, pid })
    }

    fn status(&self, waf: usize) -> Result<String> {
        let mut s = UnixStream::connect(self.dir.join("stats.sock"))?;
        s.write_all(b"show stat\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let header: Vec<&str> = text
            .lines()
            .next()
            .context("empty stats")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = header.iter().position(|h| *h == "status").context("no status column")?;
        let name = format!("waf{waf}");
        text.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"wafs") && f.get(1) == Some(&name.as_str()))
            .and_then(|f| f.get(col).map(|s| (*s).to_owned()))
            .context("server not in stats")
    }
}

impl Balancer for Haproxy {
    fn is_down(&self, waf: usize) -> Result<bool> {
        Ok(self.status(waf)?.starts_with("DOWN"))
    }

    fn is_up(&self, waf: usize) -> Result<bool> {
        Ok(self.status(waf)?.starts_with("UP"))
    }

    fn all_up(&self, wafs: usize) -> Result<bool> {
        Ok((1..=wafs).all(|k| self.status(k).is_ok_and(|s| s.starts_with("UP"))))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon we started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(200));
        let _ = lab::sh::ns_sh(NS_LB, &["ip", "addr", "del", &format!("{VIP4}/32"), "dev", "lo"]);
    }
}

struct Row {
    system: &'static str,
    checks: &'static str,
    /// `checks` in a chart title.
    checks_short: &'static str,
    /// The clients' connect and read timeout.
    timeout: Duration,
    kind: Kind,
    samples: Vec<Sample>,
}

/// Where `cargo xtask bench failover` draws its timeline (README and BENCHMARKS.md show it).
pub const CHART: &str = "docs/failover.svg";

/// `bench failover [EVENTS] [--chart FILE] [--balancers-only]` (default 10 events
/// per failure kind and balancer, chart in [`CHART`]): WAF nodes failing behind
/// xdplb and HAProxy, then a pair of balancers losing one (`balancers.rs`).
/// `--balancers-only` (development) runs the balancer rows alone.
pub fn run(args: &[String]) -> Result<()> {
    let mut runs = 10;
    let mut chart_path = PathBuf::from(CHART);
    let mut balancers_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--chart" {
            chart_path = it.next().context("--chart needs a file")?.into();
        } else if a == "--balancers-only" {
            balancers_only = true;
        } else {
            runs = a.parse().with_context(|| format!("events per row: {a:?}"))?;
        }
    }
    if !balancers_only {
        let (rows, reserve_rows) = measure_all(runs)?;
        draw(&rows, &chart_path)?;
        super::progress(format!("wrote the failover timeline to {}", chart_path.display()));
        print!("{}", report(&rows, &chart_path));
        print!("{}", reserve_report(&reserve_rows));
    }
    if crate::pair::available() {
        print!("{}", super::balancers::report(&super::balancers::measure(runs)?));
    } else {
        super::progress("keepalived or BIRD missing: no balancer rows (cargo xtask setup --lab)");
        println!("\n(Balancer rows not measured: keepalived or BIRD not installed.)");
    }
    Ok(())
}

/// The chart: for each failure kind (rows), xdplb and HAProxy (columns), the
/// event with the median detection time.
fn draw(rows: &[Row], path: &Path) -> Result<()> {
    let median = |r: &Row| -> Option<Sample> {
        let mut v = r.samples.clone();
        v.sort_by_key(|s| s.detection);
        v.get(v.len() / 2).cloned()
    };
    // Each column (a balancer and its checks) spans its longer event: xdplb's second
    // would vanish beside HAProxy's default checks on one scale.
    let end = |s: &Sample| {
        s.timeline.values().map(Vec::len).max().unwrap_or(0) as f64 * chart::BIN_SECS
            - BEFORE.as_secs_f64()
    };
    let x_max = |system: &str, checks: &str| {
        rows.iter()
            .filter(|r| r.system == system && r.checks == checks && r.timeout == TIMEOUT)
            .filter_map(median)
            .map(|s| end(&s))
            .fold(1.0_f64, f64::max)
    };
    let mut panels = vec![];
    // The rows measured with the same clients (1 s timeout), side by side.
    let rows: Vec<&Row> = rows.iter().filter(|r| r.timeout == TIMEOUT).collect();
    for kind in [Kind::Refused, Kind::Silent] {
        for r in rows.iter().filter(|r| r.kind == kind) {
            let Some(s) = median(r) else { continue };
            panels.push(chart::Panel {
                title: format!("{}, {}: {}", r.system, r.checks_short, kind.name()),
                x: (-BEFORE.as_secs_f64(), x_max(r.system, r.checks)),
                series: s.timeline.clone(),
                markers: vec![
                    chart::Marker {
                        at: 0.0,
                        label: format!("fault on waf{}", kind.waf()),
                        detection: false,
                    },
                    chart::Marker {
                        at: s.detection.as_secs_f64(),
                        label: format!("detected {:.0} ms", ms(s.detection)),
                        detection: true,
                    },
                ],
            });
        }
    }
    let cols = rows.iter().filter(|r| r.kind == Kind::Refused).count();
    chart::write_svg(
        path,
        "A WAF node fails: requests/s per node in 100 ms bins by send time (median event of each row)",
        &panels,
        cols,
    )
}

/// xdplb's defaults, as the report names them.
const DEFAULTS: &str = "defaults: http, 200ms, fall 3, rise 2; refused_is_down, passive";

/// xdplb's health checks without what issue #11 added: a refusal counts
/// towards `fall`, no probes triggered by the traffic.
const CHECKS_ALONE: &str = "refused_is_down: false, passive: false";

fn measure_all(runs: usize) -> Result<(Vec<Row>, Vec<ReserveRow>)> {
    let mut rows = Vec::new();
    let rig = Rig::up(lab::Mode::Dsr, WAFS, &Checks::default())?;
    let xdplb = |checks, checks_short, timeout, kind, samples| Row {
        system: "xdplb (dsr)",
        checks,
        checks_short,
        timeout,
        kind,
        samples,
    };
    {
        let load = HttpLoad::start(NS_CLIENT, web4(), 48, 8.0, TIMEOUT)?;
        for kind in [Kind::Refused, Kind::Silent] {
            let samples = measure(&rig, &rig.lab, (&load, TIMEOUT), kind, runs, "xdplb")?;
            rows.push(xdplb(DEFAULTS, "defaults", TIMEOUT, kind, samples));
        }
    }
    {
        // The same clients with the kernel's default SYN retries: twice the events,
        // the 20 at the default 10.
        let load = HttpLoad::start(NS_CLIENT, web4(), 48, 8.0, TIMEOUT_RETRIES)?;
        let samples =
            measure(&rig, &rig.lab, (&load, TIMEOUT_RETRIES), Kind::Silent, runs * 2, "xdplb")?;
        rows.push(xdplb(DEFAULTS, "defaults", TIMEOUT_RETRIES, Kind::Silent, samples));
    }
    // The reserve event: waf3 becomes a reserve by a reload.
    let text = std::fs::read_to_string(&rig.config)?;
    std::fs::write(&rig.config, with_reserves(&text, &[RESERVE], 1))?;
    match rig.daemon.admin(&Request::Reload)? {
        Response::Ok(_) => {}
        Response::Error(e) | Response::Failing(e) => bail!("reloading with a reserve: {e}"),
    }
    let mut reserve_rows = Vec::new();
    {
        let load = HttpLoad::start(NS_CLIENT, web4(), 48, 8.0, TIMEOUT)?;
        let samples = measure_reserve(&rig, &rig.lab, &load, runs, "xdplb")?;
        reserve_rows.push(ReserveRow { system: "xdplb (dsr)", checks: DEFAULTS, samples });
    }
    {
        // Before #11: the same checks, a refusal one failure among `fall`, no
        // traffic-triggered probes, and no reserve. A reload: the nodes keep their health.
        let checks = Checks { extra: Some(CHECKS_ALONE), ..Checks::default() };
        std::fs::write(&rig.config, config_text(lab::Mode::Dsr, WAFS, &checks, &[]))?;
        match rig.daemon.admin(&Request::Reload)? {
            Response::Ok(_) => {}
            Response::Error(e) | Response::Failing(e) => {
                bail!("reloading xdplb with {CHECKS_ALONE}: {e}")
            }
        }
        let load = HttpLoad::start(NS_CLIENT, web4(), 48, 8.0, TIMEOUT)?;
        for kind in [Kind::Refused, Kind::Silent] {
            let samples =
                measure(&rig, &rig.lab, (&load, TIMEOUT), kind, runs, "xdplb (checks alone)")?;
            rows.push(xdplb(
                "the same checks alone (`refused_is_down: false, passive: false`: before #11)",
                "checks alone",
                TIMEOUT,
                kind,
                samples,
            ));
        }
    }
    let Rig { mut daemon, lab, .. } = rig;
    daemon.stop()?; // --detach-on-exit: the lb namespace is free for HAProxy.
    drop(daemon);
    // HAProxy's defaults take ~18 s per event (detection, then rise 2 x 2 s): half as
    // many events keep `cargo xtask bench` within its time budget.
    let variants = [
        ("defaults: tcp connect, inter 2s, fall 3, rise 2", "2s x 3", "", runs.div_ceil(2).max(3)),
        (
            "as xdplb: inter 200ms, fall 3, rise 2",
            "200ms x 3",
            "  default-server inter 200ms fall 3 rise 2\n  timeout check 150ms\n",
            runs,
        ),
    ];
    for (checks, checks_short, extra, events) in variants {
        {
            let h = Haproxy::start(extra, false)?;
            let load = HttpLoad::start(NS_CLIENT, web4(), 48, 8.0, TIMEOUT)?;
            for kind in [Kind::Refused, Kind::Silent] {
                let samples = measure(&h, &lab, (&load, TIMEOUT), kind, events, "haproxy")?;
                rows.push(Row {
                    system: "HAProxy 2.6 (tcp)",
                    checks,
                    checks_short,
                    timeout: TIMEOUT,
                    kind,
                    samples,
                });
            }
        }
        let h = Haproxy::start(extra, true)?;
        let load = HttpLoad::start(NS_CLIENT, web4(), 48, 8.0, TIMEOUT)?;
        let samples = measure_reserve(&h, &lab, &load, events, "haproxy backup")?;
        reserve_rows.push(ReserveRow { system: "HAProxy 2.6 (tcp)", checks, samples });
    }
    drop(lab);
    Ok((rows, reserve_rows))
}

/// The reserve node: waf1 and waf2 are the primaries.
const RESERVE: usize = 3;
const PRIMARIES: [usize; 2] = [1, 2];

/// One "every primary stopped" event.
#[derive(Clone, Debug)]
pub struct ReserveSample {
    /// From the stop to the balancer reporting both primaries down.
    pub detection: Duration,
    /// From the stop to the start of the first request the reserve answered.
    pub first_on_reserve: Option<Duration>,
    /// Start of the last request that failed.
    pub last_failed: Duration,
    pub failed: usize,
    /// The longest a request sent in the window took to be answered.
    pub slowest: Duration,
}

struct ReserveRow {
    system: &'static str,
    checks: &'static str,
    samples: Vec<ReserveSample>,
}

/// `runs` events: nginx stopped on both primaries, waited for until the balancer
/// marks both down and requests sent before have finished, then started again.
fn measure_reserve(
    b: &dyn Balancer,
    lab: &Lab,
    load: &HttpLoad,
    runs: usize,
    label: &str,
) -> Result<Vec<ReserveSample>> {
    let mut out = Vec::new();
    let on_primaries = || -> Result<bool> {
        Ok(PRIMARIES.iter().all(|k| b.is_up(*k).unwrap_or(false)) && b.is_up(RESERVE)?)
    };
    for run in 0..runs {
        wait(on_primaries, Duration::from_secs(30), "the primaries and the reserve up")?;
        std::thread::sleep(BEFORE);
        let t0 = Instant::now();
        for k in PRIMARIES {
            lab.stop_waf(k)?;
        }
        let detection = wait(
            || Ok(PRIMARIES.iter().all(|k| b.is_down(*k).unwrap_or(false))),
            Duration::from_secs(30),
            "both primaries marked down",
        )?;
        let window = detection + TIMEOUT + Duration::from_millis(300);
        std::thread::sleep(TIMEOUT + Duration::from_millis(300));
        for k in PRIMARIES {
            lab.start_waf(k)?;
        }
        // A request is logged when it ends, after up to a timeout per step
        // (connect, write, each read): wait until every one sent in the window has.
        std::thread::sleep(TIMEOUT * 3);
        let records = load.log.records();
        let after: Vec<&Record> =
            records.iter().filter(|r| r.start >= t0 && r.start < t0 + window).collect();
        let failed: Vec<&&Record> = after.iter().filter(|r| r.outcome.is_err()).collect();
        let last = failed.iter().map(|r| r.start.duration_since(t0)).max().unwrap_or_default();
        let reserve = format!("waf{RESERVE}");
        let first_on_reserve = after
            .iter()
            .filter(|r| r.outcome.as_deref() == Ok(reserve.as_str()))
            .map(|r| r.start.duration_since(t0))
            .min();
        let slowest = after
            .iter()
            .filter(|r| r.outcome.is_ok())
            .map(|r| r.end.duration_since(r.start))
            .max()
            .unwrap_or_default();
        super::progress(format!(
            "{label}, every primary stopped, run {}: detected in {:.0} ms, first request on the reserve sent at {}, last failed request at {:.0} ms, {} failed, slowest answer {:.0} ms",
            run + 1,
            ms(detection),
            first_on_reserve.map_or_else(|| "never".to_owned(), |d| format!("{:.0} ms", ms(d))),
            ms(last),
            failed.len(),
            ms(slowest)
        ));
        out.push(ReserveSample {
            detection,
            first_on_reserve,
            last_failed: last,
            failed: failed.len(),
            slowest,
        });
    }
    wait(on_primaries, Duration::from_secs(30), "the primaries and the reserve up")?;
    Ok(out)
}

fn reserve_report(rows: &[ReserveRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Every primary stopped: the reserve tier takes over\n\n\
         waf1 and waf2 are primaries, waf3 a reserve (xdplb `backup: true`, `min_primaries: 1`; HAProxy \
         `server ... backup`). nginx stops on both primaries at once, same load as above. Counted: the \
         requests sent from the stop until 1.3 s after detection, read once every one of them has ended; \
         'slowest answered request' shows a balancer that holds connections instead of failing them.\n"
    );
    let _ = writeln!(
        s,
        "| balancer | health checks | events | both primaries down after, median (worst) | first new connection on the reserve, median (worst) | no failed connection after, median (worst) | failed connections median (worst) | slowest answered request median (worst) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (d, dw) = stats(r.samples.iter().map(|x| ms(x.detection)));
        let never = r.samples.iter().filter(|x| x.first_on_reserve.is_none()).count();
        let (f1, f1w) = stats(r.samples.iter().filter_map(|x| x.first_on_reserve.map(ms)).chain(
            // An event where the reserve never answered counts as infinitely slow.
            std::iter::repeat_n(f64::INFINITY, never),
        ));
        let (l, lw) = stats(r.samples.iter().map(|x| ms(x.last_failed)));
        let (f, fw) = stats(r.samples.iter().map(|x| x.failed as f64));
        let (sl, slw) = stats(r.samples.iter().map(|x| ms(x.slowest)));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {d:.0} ms ({dw:.0}) | {f1:.0} ms ({f1w:.0}) | {l:.0} ms ({lw:.0}) | {f:.0} ({fw:.0}) | {sl:.0} ms ({slw:.0}) |",
            r.system,
            r.checks,
            r.samples.len()
        );
    }
    let _ = writeln!(
        s,
        "\nReading the failures: until the switch, xdplb passes the stopped primaries' refusals \
         (RST) straight to the clients, so each of the 48 clients fails fast and, in this closed loop, \
         tries again at its next 125 ms slot (several failed attempts per client); HAProxy accepts every \
         client connection and, with no server that answers, holds it until the client gives up after \
         its 1 s timeout (one failure per client, a client blocked for a second). The time until new \
         connections succeed again is the 'first new connection on the reserve' column."
    );
    s
}

fn stats(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn report(rows: &[Row], chart_path: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "![Failover timeline: requests per second per WAF node around a fault, xdplb and HAProxy side by side]({})\n",
        chart_path.display()
    );
    let _ = writeln!(
        s,
        "The chart ([{0}]({0})): one event per panel (the median detection of its row), requests/s per \
         WAF node in 100 ms bins by the time each request was sent, failed requests in red; the dashed line is \
         the fault, the purple one the balancer marking the node down. Each panel ends when the node is \
         repaired (1.3 s after detection).\n",
        chart_path.display()
    );
    let _ = writeln!(
        s,
        "| balancer | health checks | client timeout | failure | events | detection median (worst) | no new connection to the dead node after, median (worst) | failed connections median (worst) | failed in all: to connect / after connecting | rescued by a retransmitted SYN, in all |"
    );
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (d, dw) = stats(r.samples.iter().map(|x| ms(x.detection)));
        let (l, lw) = stats(r.samples.iter().map(|x| ms(x.last_new_connection)));
        let (f, fw) = stats(r.samples.iter().map(|x| x.failed as f64));
        let total = |pick: fn(&Sample) -> usize| r.samples.iter().map(pick).sum::<usize>();
        let _ = writeln!(
            s,
            "| {} | {} | {} s | {} | {} | {d:.0} ms ({dw:.0}) | {l:.0} ms ({lw:.0}) | {f:.0} ({fw:.0}) | {} / {} | {} |",
            r.system,
            r.checks,
            r.timeout.as_secs(),
            r.kind.name(),
            r.samples.len(),
            total(|x| x.failed_to_connect),
            total(|x| x.failed_connected),
            total(|x| x.rescued),
        );
    }
    let _ = writeln!(
        s,
        "\nLoad: 48 client threads × 8 requests/s (384 new connections/s), one HTTP request per new TCP \
         connection, to the VIP of 3 nginx WAF nodes in the lab (dsr for xdplb). Client timeout (connect and each \
         read): 1 s, so a SYN lost to a dead node is not retransmitted in time (Linux resends after 1 s); 3 s, the \
         kernel's default SYN retries at work (resends at 1 s and 3 s). A failure is nginx stopped on waf2 \
         (connections refused) or waf3's traffic dropped by nftables (silence). Detection: from the failure to the \
         balancer reporting the node down (xdplb status / HAProxy `show stat`, polled every 10 ms). 'No new \
         connection after': start of the last request that failed. Failed connections: requests that failed from \
         the fault until the node was repaired, split into connections never established and requests cut after \
         connecting (the node died holding them; no balancer can save those; a client of HAProxy, a proxy, \
         always connects to HAProxy itself, so its failures all come after connecting). Rescued: requests that succeeded \
         after a connect of 0.9 s or more, their first SYN lost to the dead node. xdplb's defaults: http checks \
         every 200 ms (timeout 150 ms), fall 3, rise 2; a refused check is down at once (`refused_is_down`); the \
         data path's SYN and handshake counters, read every 10 ms, make a node that completes no handshake \
         suspect, and it is probed every 10 ms (timeout 40 ms) until rise/fall decides (`passive`). The checks \
         alone: the same settings with both off, as before issue #11 (the same daemon, reloaded)."
    );
    s
}
