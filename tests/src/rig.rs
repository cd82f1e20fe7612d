//! The lab with `xdplb run` balancing it: what the demo, the end-to-end tests and
//! the failover benchmark start from. VIPs: `web4`/`web6` (HTTP, port 80) and
//! `udp4`/`udp6` (port 5353), each over every WAF node, checked over HTTP.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_userspace::admin::Response;

use crate::{
    daemon::Daemon,
    lab::{self, LabConfig, LabGuard, Mode, NS_LB, PIN_DIR, VIP4, VIP6, in_netns},
    traffic::http_once,
};

/// Health-check settings written into `health_check_defaults`; `None` keeps
/// xdplb's built-in default.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    pub interval: Option<&'static str>,
    pub timeout: Option<&'static str>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// Further `health_check_defaults` keys, as written (e.g. `passive: false`).
    pub extra: Option<&'static str>,
}

pub struct Rig {
    pub daemon: Daemon,
    pub lab: LabGuard,
    pub config: PathBuf,
}

pub const METRICS: &str = "127.0.0.1:9650";
/// The lab's flow-hash seed.
pub const LAB_SEED: &str = "6c61622d736565642d6e6f742d707562";

#[must_use]
pub fn web4() -> SocketAddr {
    SocketAddr::new(VIP4.into(), lab::HTTP_PORT)
}

#[must_use]
pub fn web6() -> SocketAddr {
    SocketAddr::new(VIP6.into(), lab::HTTP_PORT)
}

#[must_use]
pub fn udp4() -> SocketAddr {
    SocketAddr::new(VIP4.into(), lab::UDP_PORT)
}

#[must_use]
pub fn udp6() -> SocketAddr {
    SocketAddr::new(VIP6.into(), lab::UDP_PORT)
}

fn dir() -> PathBuf {
    Path::new(lab::LAB_DIR).join("xdplb")
}

/// The xdplb config for a lab of `wafs` nodes in `mode`.
#[must_use]
pub fn config_text(mode: Mode, wafs: usize, checks: &Checks, weights: &[u32]) -> String {
    let d = dir();
    let mut s = String::new();
    let _ = writeln!(s, "interface: {}\nxdp_mode: driver\nforwarding: {mode}", lab::NS_IF);
    let _ = writeln!(s, "tunnel_source: {{ ipv4: {}, ipv6: \"{}\" }}", lab::LB4, lab::LB6);
    let _ = writeln!(s, "metrics_listen: {METRICS}\nadmin_socket: {}/admin.sock", d.display());
    let _ = writeln!(s, "pin_path: {PIN_DIR}/xdplb");
    // The lab's balancers share this seed (as a balancer group must).
    let _ = writeln!(s, "hash_seed: \"{LAB_SEED}\"");
    // The suites and benchmarks fail the same nodes on purpose, many times a
    // minute: flap damping would hold them down and measure itself instead.
    let mut hc = String::from("kind: http, port: 80, path: /healthz, flap_changes: 0");
    for (k, v) in [("interval", checks.interval), ("timeout", checks.timeout)] {
        if let Some(v) = v {
            let _ = write!(hc, ", {k}: {v}");
        }
    }
    for (k, v) in [("rise", checks.rise), ("fall", checks.fall)] {
        if let Some(v) = v {
            let _ = write!(hc, ", {k}: {v}");
        }
    }
    if let Some(extra) = checks.extra {
        let _ = write!(hc, ", {extra}");
    }
    let _ = writeln!(s, "health_check_defaults: {{ {hc} }}\nvips:");
    let vips: [(&str, IpAddr, u16, &str); 4] = [
        ("web4", VIP4.into(), lab::HTTP_PORT, "tcp"),
        ("web6", VIP6.into(), lab::HTTP_PORT, "tcp"),
        ("udp4", VIP4.into(), lab::UDP_PORT, "udp"),
        ("udp6", VIP6.into(), lab::UDP_PORT, "udp"),
    ];
    for (name, addr, port, proto) in vips {
        let _ = writeln!(
            s,
            "  - name: {name}\n    address: \"{addr}\"\n    port: {port}\n    protocol: {proto}\n    backends:"
        );
        for k in 1..=wafs {
            let a: IpAddr = if addr.is_ipv4() { lab::waf4(k).into() } else { lab::waf6(k).into() };
            let w = weights.get(k - 1).copied().unwrap_or(100);
            let _ = writeln!(s, "      - {{ name: waf{k}, address: \"{a}\", weight: {w} }}");
        }
    }
    s
}

/// `text` (from [`config_text`]) with WAF nodes `reserves` as reserves
/// (`backup: true`) in every VIP, and `min_primaries` set on every VIP.
#[must_use]
pub fn with_reserves(text: &str, reserves: &[usize], min_primaries: u32) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let reserve = reserves.iter().any(|k| line.contains(&format!("- {{ name: waf{k},")));
        if reserve {
            let _ = writeln!(
                out,
                "{}, backup: true }}",
                line.trim_end().trim_end_matches('}').trim_end()
            );
        } else if line.trim_start() == "backends:" {
            let _ = writeln!(out, "    min_primaries: {min_primaries}\n{line}");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

impl Rig {
    /// Lab up, xdplb started in the lb namespace, every backend up.
    pub fn up(mode: Mode, wafs: usize, checks: &Checks) -> Result<Self> {
        Self::up_with(mode, wafs, &config_text(mode, wafs, checks, &[]))
    }

    /// As [`Rig::up`] with the config `text` (four VIPs over `wafs` nodes, as
    /// [`config_text`] writes them); waits until every backend's health is up.
    pub fn up_with(mode: Mode, wafs: usize, text: &str) -> Result<Self> {
        let lab = LabGuard::up(&LabConfig { mode, wafs, ha: None })?;
        std::fs::create_dir_all(dir())?;
        let config = dir().join("xdplb.yaml");
        std::fs::write(&config, text)?;
        let daemon = Daemon::start(
            NS_LB,
            &config,
            &dir().join("admin.sock"),
            METRICS.parse()?,
            &["--detach-on-exit"],
        )?;
        let rig = Self { daemon, lab, config };
        rig.daemon
            .wait_until(&format!("{} backends healthy", wafs * 4), Duration::from_secs(20), |d| {
                d.status()
                    .is_ok_and(|s| rows(&s).iter().filter(|r| r.health == "up").count() >= wafs * 4)
            })
            .context("waiting for backends")?;
        Ok(rig)
    }

    /// Waits until `count` (VIP, backend) lines of `xdplb status` show `state`.
    pub fn wait_all(&self, count: usize, state: &str, timeout: Duration) -> Result<Duration> {
        self.daemon
            .wait_until(&format!("{count} backends {state}"), timeout, |d| {
                d.status().is_ok_and(|s| {
                    states(&s).iter().filter(|(_, _, st)| st == state).count() >= count
                })
            })
            .context("waiting for backends")
    }

    /// The state of backend `waf` in VIP `vip` (`up`, `down`, `draining`).
    pub fn state(&self, vip: &str, waf: &str) -> Result<String> {
        let s = self.daemon.status()?;
        states(&s)
            .into_iter()
            .find(|(v, b, _)| v == vip && b == waf)
            .map(|(_, _, st)| st)
            .with_context(|| format!("{vip}/{waf} not in status:\n{s}"))
    }
}

/// Polls `check` every 20 ms until it holds; the time it took.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = std::time::Instant::now();
    loop {
        let last = check();
        if matches!(last, Ok(true)) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("not within {timeout:?} (last check: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of an admin answer, or an error with the daemon's.
pub fn expect_ok(resp: Response) -> Result<String> {
    match resp {
        Response::Ok(m) => Ok(m),
        Response::Error(e) | Response::Failing(e) => anyhow::bail!("xdplb answered an error: {e}"),
    }
}

/// One direct request from the client to every node, IPv4 and IPv6, until each
/// answers. Right after the lab comes up, the first connection through the VIP
/// to a node over IPv6 often needs a SYN retransmission (~1 s, seen in both
/// modes), and never once the client and the node have talked directly or after
/// half a second of waiting: neighbour discovery between the two settling, not
/// the balancer. Settled before anything is measured.
pub fn warm_neighbours(wafs: usize, timeout: Duration) -> Result<()> {
    in_netns(Some(lab::NS_CLIENT), || {
        for k in 1..=wafs {
            for addr in [IpAddr::from(lab::waf4(k)), IpAddr::from(lab::waf6(k))] {
                let target = SocketAddr::new(addr, lab::HTTP_PORT);
                let start = std::time::Instant::now();
                while http_once(target, Duration::from_secs(3)).is_err() {
                    anyhow::ensure!(
                        start.elapsed() < timeout,
                        "waf{k} does not answer {target} directly"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    })
}

/// One backend line of `xdplb status`, its cells found by the header's column
/// names (so a column added to the table does not shift the others).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub vip: String,
    pub backend: String,
    /// `primary` or `reserve`.
    pub role: String,
    /// `up`, `down`, `draining`, `standby`, `down-keep` or `fail-open`.
    pub state: String,
    /// `up`, `down` or `held` (flap damping).
    pub health: String,
    pub drained: bool,
    /// The next hop's MAC, or `unresolved`.
    pub mac: String,
}

/// Every backend line of `xdplb status`.
#[must_use]
pub fn rows(status: &str) -> Vec<Row> {
    let mut vip = String::new();
    let mut header: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for line in status.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["VIP", name, ..] => (*name).clone_into(&mut vip),
            ["BACKEND", ..] => header.clone_from(&words),
            cells if !header.is_empty() && cells.len() == header.len() => {
                let cell = |name: &str| {
                    header.iter().position(|h| *h == name).map_or("", |i| cells[i]).to_owned()
                };
                out.push(Row {
                    vip: vip.clone(),
                    backend: cell("BACKEND"),
                    role: cell("ROLE"),
                    state: cell("STATE"),
                    health: cell("HEALTH"),
                    drained: cell("DRAINED") == "yes",
                    mac: cell("MAC"),
                });
            }
            _ => {}
        }
    }
    out
}

/// (VIP, backend, state) for every backend line of `xdplb status`.
#[must_use]
pub fn states(status: &str) -> Vec<(String, String, String)> {
    rows(status).into_iter().map(|r| (r.vip, r.backend, r.state)).collect()
}
