//! A pair of balancers in the lab (`lab/ha.rs`), each running `xdplb run` with
//! the same config (only host-local paths differ: admin socket, pins, track file,
//! and the tunnel source in ipip mode) and telling its engine (keepalived or BIRD)
//! whether to send it traffic. What the redundancy end-to-end tests, the demo and
//! the balancer rows of the failover benchmark start from; the topology for peer
//! sync builds on it too.

mod conns;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{SocketAddr, SocketAddrV4},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    daemon::{self, Daemon},
    lab::{
        LabConfig, LabGuard, Mode, Node, PIN_DIR, Redundancy,
        ha::{self, BALANCERS, ROUTE_TABLE, balancer},
        sh,
    },
    rig::{self, Checks, METRICS},
};

pub use conns::Conns;

/// The UDP port each balancer receives its peers' sync messages on.
pub const SYNC_PORT: u16 = 4790;

/// One balancer of the pair.
pub struct Member {
    /// Its number: 1 for `lb`, 2 for `lb2`.
    pub k: usize,
    pub node: Node,
    pub config: PathBuf,
    /// `None` while its xdplb is stopped or its host is dead.
    pub daemon: Option<Daemon>,
}

pub struct Pair {
    /// Declared before the lab: daemons stop before the lab goes.
    pub members: Vec<Member>,
    pub lab: LabGuard,
    pub ha: Redundancy,
    /// The shared config (as `rig::config_text` writes it) each member's is made from.
    text: String,
}

/// The config of balancer `k`: `text` (as `rig::config_text` writes it) with this
/// host's admin socket, pin directory and tunnel source, its engine under `ha:`,
/// and with `sync_key` (a key file) a `sync:` section: listening on its own lab
/// address, the other balancers its peers.
#[must_use]
pub fn balancer_config(text: &str, ha: Redundancy, k: usize, sync_key: Option<&Path>) -> String {
    let node = balancer(k);
    let dir = node.dir();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("admin_socket:") {
            let _ = writeln!(out, "admin_socket: {}", dir.join("admin.sock").display());
        } else if line.starts_with("pin_path:") {
            let _ = writeln!(out, "pin_path: {PIN_DIR}/{}-xdplb", node.ns());
            let engine = match ha {
                Redundancy::Vrrp => {
                    format!("track_file: {}", ha::track_file(k).display())
                }
                Redundancy::Bgp => format!("route_table: {ROUTE_TABLE}"),
            };
            let _ = writeln!(out, "ha: {{ {engine} }}");
            if let Some(key) = sync_key {
                out.push_str(&sync_section(k, key));
            }
        } else if line.starts_with("tunnel_source:") {
            let _ =
                writeln!(out, "tunnel_source: {{ ipv4: {}, ipv6: \"{}\" }}", node.v4(), node.v6());
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Where balancer `k` receives its peers' sync messages (`sync.listen`).
#[must_use]
pub fn sync_address(k: usize) -> SocketAddrV4 {
    SocketAddrV4::new(balancer(k).v4(), SYNC_PORT)
}

/// Balancer `k`'s `sync:` section.
fn sync_section(k: usize, key: &Path) -> String {
    let peers: Vec<String> =
        (1..=BALANCERS).filter(|&p| p != k).map(|p| format!("\"{}\"", sync_address(p))).collect();
    format!(
        "sync:\n  listen: \"{}\"\n  peers: [ {} ]\n  key_file: {}\n",
        sync_address(k),
        peers.join(", "),
        key.display()
    )
}

/// Writes a new sync key to `path`: 32 random bytes as 64 hex characters, mode
/// 0600 (the format `xdplb gen-sync-key` writes).
pub fn write_sync_key(path: &Path) -> Result<()> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let hex = bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{hex}")?;
    Ok(())
}

/// Writes each balancer's config into its lab directory (for `lab up --ha`, so an
/// operator can start them by hand); the paths, by balancer.
pub fn write_configs(
    mode: Mode,
    ha: Redundancy,
    wafs: usize,
    checks: &Checks,
) -> Result<Vec<PathBuf>> {
    write_pair_configs(&rig::config_text(mode, wafs, checks, &[]), ha, None)
}

/// Writes each balancer's config made from `text` (see [`balancer_config`]); the
/// paths, by balancer.
fn write_pair_configs(text: &str, ha: Redundancy, sync_key: Option<&Path>) -> Result<Vec<PathBuf>> {
    (1..=BALANCERS)
        .map(|k| {
            let dir = balancer(k).dir();
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("xdplb.yaml");
            std::fs::write(&path, balancer_config(text, ha, k, sync_key))?;
            Ok(path)
        })
        .collect()
}

/// Ring digest of each VIP in an `xdplb status` text.
#[must_use]
pub fn ring_digests(status: &str) -> BTreeMap<String, String> {
    status
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let name = w.first().filter(|f| **f == "VIP").and(w.get(1))?;
            let ring = w.iter().position(|x| *x == "ring")?;
            Some(((*name).to_owned(), (*w.get(ring + 1)?).to_owned()))
        })
        .collect()
}

const WAIT: Duration = Duration::from_secs(30);

impl Pair {
    /// The lab with `ha`, xdplb on both balancers, every backend up on both, both
    /// healthy, and the engine carrying the VIPs through both (BGP) or one (VRRP).
    pub fn up(mode: Mode, ha: Redundancy, wafs: usize, checks: &Checks) -> Result<Self> {
        Self::up_with(mode, ha, wafs, &rig::config_text(mode, wafs, checks, &[]), None)
    }

    /// As [`Pair::up`] with the config `text` (as `rig::config_text` writes it for
    /// `wafs` nodes) and, with `sync_key`, peer sync between the balancers.
    pub fn up_with(
        mode: Mode,
        ha: Redundancy,
        wafs: usize,
        text: &str,
        sync_key: Option<&Path>,
    ) -> Result<Self> {
        let lab = LabGuard::up(&LabConfig { mode, wafs, ha: Some(ha) })?;
        let t = Instant::now();
        let configs = write_pair_configs(text, ha, sync_key)?;
        let members = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| Member { k: i + 1, node: balancer(i + 1), config, daemon: None })
            .collect();
        let mut pair = Self { members, lab, ha, text: text.to_owned() };
        for k in 1..=BALANCERS {
            pair.start(k)?;
        }
        for k in 1..=BALANCERS {
            pair.wait_healthy(k, wafs * 4)?;
        }
        let healthy = t.elapsed();
        let all: Vec<usize> = (1..=BALANCERS).collect();
        pair.lab.wait_engines(&all, WAIT).context("the engines carrying the VIPs")?;
        eprintln!(
            "==> pair up: both balancers healthy {:.1} s after the lab, carrying the VIPs {:.1} s after",
            healthy.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        Ok(pair)
    }

    /// Rewrites both balancers' configs with or without peer sync; each xdplb
    /// reads it when it next starts.
    pub fn set_sync(&mut self, sync_key: Option<&Path>) -> Result<()> {
        let paths = write_pair_configs(&self.text, self.ha, sync_key)?;
        for (m, path) in self.members.iter_mut().zip(paths) {
            m.config = path;
        }
        Ok(())
    }

    fn member(&self, k: usize) -> Result<&Member> {
        self.members.get(k.wrapping_sub(1)).with_context(|| format!("no balancer {k}"))
    }

    /// Balancer `k`'s running xdplb.
    pub fn daemon(&self, k: usize) -> Result<&Daemon> {
        self.member(k)?
            .daemon
            .as_ref()
            .with_context(|| format!("xdplb on balancer {k} is not running"))
    }

    /// Starts xdplb on balancer `k` (adopting its pinned maps, if any).
    pub fn start(&mut self, k: usize) -> Result<()> {
        let m =
            self.members.get_mut(k.wrapping_sub(1)).with_context(|| format!("no balancer {k}"))?;
        ensure!(m.daemon.is_none(), "xdplb already runs on balancer {k}");
        let socket = m.node.dir().join("admin.sock");
        m.daemon = Some(Daemon::start(&m.node.ns(), &m.config, &socket, METRICS.parse()?, &[])?);
        Ok(())
    }

    /// Waits until balancer `k` shows `count` backends up and says it is healthy.
    pub fn wait_healthy(&self, k: usize, count: usize) -> Result<Duration> {
        let d = self.daemon(k)?;
        d.wait_until(&format!("balancer {k}: {count} backends up and healthy"), WAIT, |d| {
            d.healthy_status().is_ok_and(|s| {
                rig::states(&s).iter().filter(|(_, _, st)| st == "up").count() >= count
            })
        })
    }

    /// Detaches balancer `k`'s XDP program and removes its pinned maps (`xdplb
    /// detach`), while its xdplb is stopped: the next start begins with an empty
    /// connection table.
    pub fn forget(&self, k: usize) -> Result<()> {
        let m = self.member(k)?;
        ensure!(m.daemon.is_none(), "xdplb still runs on balancer {k}");
        let bin = daemon::binary()?;
        // From here: `ip netns exec` would remount /sys, and bpffs with it.
        sh::sh(&[&bin.to_string_lossy(), "detach", "--config", &m.config.to_string_lossy()])?;
        let pins = Path::new(PIN_DIR).join(format!("{}-xdplb", m.node.ns()));
        ensure!(!pins.exists(), "{} survives `xdplb detach`", pins.display());
        Ok(())
    }

    /// A planned stop of balancer `k`'s xdplb (SIGTERM: withdraw, wait, exit); its
    /// log.
    pub fn stop(&mut self, k: usize) -> Result<String> {
        let m =
            self.members.get_mut(k.wrapping_sub(1)).with_context(|| format!("no balancer {k}"))?;
        let mut d =
            m.daemon.take().with_context(|| format!("xdplb on balancer {k} is not running"))?;
        d.stop()
    }

    /// Balancer `k`'s host dies (link down, every process killed).
    pub fn kill(&mut self, k: usize) -> Result<()> {
        self.lab.kill_balancer(k)?;
        let m =
            self.members.get_mut(k.wrapping_sub(1)).with_context(|| format!("no balancer {k}"))?;
        // Reaps the killed process.
        if let Some(mut d) = m.daemon.take() {
            let _ = d.stop();
        }
        Ok(())
    }

    /// Balancer `k`'s host comes back: link, engine, xdplb (adopting its pins).
    pub fn revive(&mut self, k: usize) -> Result<()> {
        self.lab.revive_balancer(k)?;
        self.start(k)
    }

    /// The lines of balancer `k`'s xdplb log (of its last start, running or
    /// killed since) that name a backend: its health, suspicions and next hops,
    /// what explains a ring that moved under established flows.
    pub fn backend_log(&self, k: usize) -> Result<Vec<String>> {
        let log = self.member(k)?.config.with_extension("log");
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        Ok(text.lines().filter(|l| l.contains("/waf")).map(str::to_owned).collect())
    }

    /// Each VIP's ring digest on balancer `k`.
    pub fn digests(&self, k: usize) -> Result<BTreeMap<String, String>> {
        let digests = ring_digests(&self.daemon(k)?.status()?);
        ensure!(!digests.is_empty(), "balancer {k} shows no ring digest");
        Ok(digests)
    }

    /// Packets balancer `k` forwarded to VIPs so far (all VIPs).
    pub fn vip_packets(&self, k: usize) -> Result<u64> {
        let (code, body) = self.daemon(k)?.http_get("/metrics")?;
        ensure!(code == 200, "/metrics of balancer {k} answered {code}");
        Ok(body
            .lines()
            .filter(|l| l.starts_with("xdplb_vip_packets_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// The balancers that carry new flows now: the VRRP master, or every next hop
    /// of the router's route to `vip`.
    pub fn carriers(&self, vip: std::net::IpAddr) -> Result<Vec<usize>> {
        match self.ha {
            Redundancy::Vrrp => Ok(self.lab.vrrp_master().into_iter().collect()),
            Redundancy::Bgp => self.lab.bgp_next_hops(vip),
        }
    }

    /// The balancer that carries the client's TCP connection from `local` to `vip`.
    pub fn carrier_of(&self, local: SocketAddr, vip: SocketAddr) -> Result<usize> {
        match self.ha {
            Redundancy::Vrrp => self.lab.vrrp_master().context("no VRRP master"),
            Redundancy::Bgp => self.lab.bgp_balancer_of(vip.ip(), local.port(), vip.port()),
        }
    }

    /// Waits until the engine carries the VIPs through exactly `want`.
    pub fn wait_carriers(&self, want: &[usize], timeout: Duration) -> Result<Duration> {
        self.lab.wait_engines(want, timeout)
    }

    /// Polls `check` every 10 ms until it holds; how long it took.
    pub fn wait(
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        while !check() {
            if start.elapsed() > timeout {
                bail!("not within {timeout:?}: {what}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(start.elapsed())
    }
}

/// The lab's node of balancer `k`, for callers that only know the number.
#[must_use]
pub fn node(k: usize) -> Node {
    balancer(k)
}

/// True when the pair can be built here: keepalived and BIRD installed.
#[must_use]
pub fn available() -> bool {
    ha::engines_installed()
}
