//! The network-namespace lab: real TCP/HTTP/UDP traffic from a client, through
//! the XDP balancer, to nginx "WAF" nodes, on one machine.
//!
//! ```text
//!   client (10.99.0.10)   lb (10.99.0.2)   waf1 (10.99.0.11) .. wafN
//!        eth0                 eth0              eth0
//!         |                    |                 |
//!   xlb-client              xlb-lb            xlb-waf1 ...     (root namespace)
//!         +---------------- xlb-br0 (bridge) ----+
//! ```
//!
//! The client routes the VIPs ([`VIP4`], [`VIP6`]) to the lb; the lb's `eth0` is
//! left free for `xdplb run`; WAF nodes hold the VIPs on `lo` and answer the
//! client directly (DSR), in IPIP mode after `xdp_decap` on their `eth0`.
//! Everything the lab makes is named here, so [`Lab::down`] can remove it after a
//! crash too. Used by `cargo xtask lab`, the demo and the end-to-end tests.

pub mod ha;
mod netns;
mod nginx;
pub mod sh;
mod status;
mod udp;

use std::{
    fmt::{self, Write as _},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Output,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_userspace::loader::ensure_bpffs;

use self::sh::{cmd, in_ns, ns_sh, output, quietly, sh};
use self::status::status_report;
pub use self::{
    ha::Redundancy,
    netns::{XdpProg, exec_in_netns, in_netns, ns_path},
    status::status,
};

/// The IPv4 VIP the client sends to.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 99, 100, 1);
/// The IPv6 VIP the client sends to.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0x100, 0, 0, 0, 0, 0, 1);
/// The lab's IPv4 subnet (prefix [`PREFIX4`]) and IPv6 subnet (prefix [`PREFIX6`]).
pub const NET4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 0);
pub const NET6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0);
pub const PREFIX4: u8 = 24;
pub const PREFIX6: u8 = 64;
/// nginx's port on every WAF node.
pub const HTTP_PORT: u16 = 80;
/// The UDP responder's port on every WAF node.
pub const UDP_PORT: u16 = 5353;

/// Bulk transfers (served by nginx on every WAF node): a file of [`BULK_BYTES`] of
/// [`bulk_content`] to download, and a directory that stores PUT bodies.
pub const BULK_BYTES: usize = 1 << 20;
pub const FILES_DIR: &str = "/files/";
pub const BULK_FILE: &str = "/files/bulk.bin";
pub const UPLOAD_DIR: &str = "/upload/";

/// The bytes of a bulk transfer: not compressible, not periodic at any segment size.
#[must_use]
pub fn bulk_content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            // xorshift64*: a different byte everywhere, the same on every node.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Where WAF node `k` stores a PUT of `name` under [`UPLOAD_DIR`].
#[must_use]
pub fn uploaded(k: usize, name: &str) -> PathBuf {
    Node::Waf(k).dir().join("www").join(UPLOAD_DIR.trim_matches('/')).join(name)
}

/// The MSS WAF nodes advertise with [`Lab::clamp_mss`] (`xdplb backend-setup`
/// computes it): a 1500-byte MTU less the tunnel's outer header and the inner IP
/// and TCP headers (IPIP 20 + 20 + 20; IP6IP6 40 + 40 + 20).
pub const ADVMSS4: u16 = 1500 - 60;
pub const ADVMSS6: u16 = 1500 - 100;

/// The bridge in the root namespace.
pub const BRIDGE: &str = "xlb-br0";
/// Prefix of every link the lab makes in the root namespace.
pub const LINK_PREFIX: &str = "xlb-";
/// The interface inside every lab namespace.
pub const NS_IF: &str = "eth0";
/// Per-node nginx configs, pids, logs; the lab's state file.
pub const LAB_DIR: &str = "/run/xdplb-lab";
/// Pinned XDP links (host bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/xdplb-lab";
/// Held while a [`LabGuard`] lives: one lab user at a time, across processes.
pub const LOCK_FILE: &str = "/run/xdplb-lab.lock";
/// WAF nodes are numbered `1..=MAX_WAFS` (addresses .11 to .(10 + `MAX_WAFS`)).
pub const MAX_WAFS: usize = 200;

/// How the lb forwards to the WAF nodes; decides what the nodes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Direct server return: frames arrive with the VIP as destination.
    #[default]
    Dsr,
    /// IPIP / IP6IP6: frames arrive encapsulated; nodes run `xdp_decap`.
    Ipip,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dsr => "dsr",
            Self::Ipip => "ipip",
        })
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dsr" => Ok(Self::Dsr),
            "ipip" => Ok(Self::Ipip),
            _ => bail!("unknown mode {s:?} (dsr or ipip)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabConfig {
    pub mode: Mode,
    /// WAF nodes, 1..=[`MAX_WAFS`].
    pub wafs: usize,
    /// A pair of balancers and the engine that moves traffic between them (see
    /// `lab/ha.rs`); `None`: the one balancer `lb`.
    pub ha: Option<Redundancy>,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self { mode: Mode::Dsr, wafs: 3, ha: None }
    }
}

/// A machine of the lab: its namespace, link names and addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Client,
    Lb,
    /// WAF node k, 1-based.
    Waf(usize),
    /// Balancer k >= 2 of a lab with redundancy (`lb` is the first).
    Peer(usize),
    /// The router in front of the balancers (BGP).
    Router,
}

impl Node {
    /// The last octet of its addresses (hex-looking decimal in IPv6: waf1 = .11 / `::11`).
    fn host(self) -> u8 {
        match self {
            Self::Client => 10,
            Self::Lb => 2,
            Self::Waf(k) => u8::try_from(10 + k).unwrap_or(u8::MAX),
            Self::Peer(k) => u8::try_from(1 + k).unwrap_or(u8::MAX),
            Self::Router => 1,
        }
    }

    /// Its namespace: `client`, `lb`, `lb2`, `router`, `waf1`...
    #[must_use]
    pub fn ns(self) -> String {
        match self {
            Self::Client => "client".to_owned(),
            Self::Lb => "lb".to_owned(),
            Self::Waf(k) => format!("waf{k}"),
            Self::Peer(k) => format!("lb{k}"),
            Self::Router => "router".to_owned(),
        }
    }

    /// The root-namespace end of its veth, on the bridge: `xlb-client`, `xlb-lb`, `xlb-waf1`...
    #[must_use]
    pub fn veth(self) -> String {
        format!("{LINK_PREFIX}{}", self.ns())
    }

    #[must_use]
    pub fn v4(self) -> Ipv4Addr {
        let o = NET4.octets();
        Ipv4Addr::new(o[0], o[1], o[2], self.host())
    }

    #[must_use]
    pub fn v6(self) -> Ipv6Addr {
        // The decimal host number read as hex, so waf1 is fd99::11 as it is 10.99.0.11.
        let h = self.host();
        let group = u16::from(h / 100) * 0x100 + u16::from(h / 10 % 10) * 0x10 + u16::from(h % 10);
        let s = NET6.segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, group)
    }

    /// The MAC of its `eth0`, fixed so configs can name it: 02:99:00:00:00:<v4 host>.
    #[must_use]
    pub fn mac(self) -> [u8; 6] {
        [0x02, 0x99, 0, 0, 0, self.host()]
    }

    #[must_use]
    pub fn mac_string(self) -> String {
        lb_userspace::mac::format(&self.mac())
    }

    /// Its own lab directory (nginx, udp responder).
    #[must_use]
    pub fn dir(self) -> PathBuf {
        Path::new(LAB_DIR).join(self.ns())
    }
}

/// The namespace of the client.
pub const NS_CLIENT: &str = "client";
/// The namespace of the balancer.
pub const NS_LB: &str = "lb";
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0x10);
pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2);

/// Namespace of WAF node `k` (1-based).
#[must_use]
pub fn waf_ns(k: usize) -> String {
    Node::Waf(k).ns()
}

/// IPv4 address of WAF node `k`: 10.99.0.(10 + k).
#[must_use]
pub fn waf4(k: usize) -> Ipv4Addr {
    Node::Waf(k).v4()
}

/// IPv6 address of WAF node `k`: `fd99::(10 + k)`.
#[must_use]
pub fn waf6(k: usize) -> Ipv6Addr {
    Node::Waf(k).v6()
}

/// True for the namespace names the lab owns: `client`, `lb`, `lb<N>`, `router`,
/// `waf<N>`.
#[must_use]
pub fn is_lab_ns(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == NS_CLIENT || name == NS_LB || name == "router" || numbered("waf") || numbered("lb")
}

/// Prints a progress line.
fn step(msg: impl fmt::Display) {
    eprintln!("==> {msg}");
}

/// A built lab. Dropping it leaves the lab in place (see [`LabGuard`]).
#[derive(Debug, Clone)]
pub struct Lab {
    config: LabConfig,
}

impl Lab {
    /// Builds the lab, removing any previous one first.
    pub fn up(config: &LabConfig) -> Result<Self> {
        ensure!(
            (1..=MAX_WAFS).contains(&config.wafs),
            "a lab has 1 to {MAX_WAFS} WAF nodes, not {}",
            config.wafs
        );
        ensure_root()?;
        Self::down()?;
        let lab = Self { config: *config };
        if let Err(e) = lab.build() {
            // Leave nothing half-built behind; the build error is the one that matters.
            if let Err(d) = Self::down() {
                eprintln!("(cleaning up after the failure also failed: {d:#})");
            }
            return Err(e.context("building the lab"));
        }
        let ha = config.ha.map_or_else(String::new, |h| {
            format!(
                ", balancers {} with {h}",
                lab.balancers().iter().map(|b| b.ns()).collect::<Vec<_>>().join(" and ")
            )
        });
        step(format!(
            "lab up: {} mode, {} WAF nodes, VIPs {VIP4} and {VIP6}{ha}",
            config.mode, config.wafs
        ));
        Ok(lab)
    }

    /// The lab as `lab up` left it, if there is one.
    pub fn current() -> Result<Option<Self>> {
        let path = state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut config = LabConfig::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("mode", v)) => config.mode = v.parse()?,
                Some(("wafs", v)) => {
                    config.wafs =
                        v.parse().with_context(|| format!("wafs={v:?} in {}", path.display()))?;
                }
                Some(("ha", v)) => config.ha = Some(v.parse()?),
                _ => {}
            }
        }
        Ok(Some(Self { config }))
    }

    #[must_use]
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    #[must_use]
    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// WAF node numbers, 1..=N.
    pub fn wafs(&self) -> impl Iterator<Item = usize> + use<> {
        1..=self.config.wafs
    }

    /// Every node: client, the router (BGP), the balancers, waf1..N.
    #[must_use]
    pub fn nodes(&self) -> Vec<Node> {
        let router = (self.config.ha == Some(Redundancy::Bgp)).then_some(Node::Router);
        [Node::Client]
            .into_iter()
            .chain(router)
            .chain(self.balancers())
            .chain(self.wafs().map(Node::Waf))
            .collect()
    }

    fn build(&self) -> Result<()> {
        // bpffs is not mounted at boot here: mount it if need be.
        ensure_bpffs(Path::new(PIN_DIR))?;
        std::fs::create_dir_all(LAB_DIR).with_context(|| format!("creating {LAB_DIR}"))?;
        step(format!("bridge {BRIDGE}"));
        // No multicast snooping (IPv6 neighbour discovery floods, no querier needed);
        // no bridge-netfilter: host firewall rules must not see lab frames.
        sh(&["ip", "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0"])?;
        if Path::new("/proc/sys/net/bridge").exists() {
            sh(&[
                "ip",
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "nf_call_iptables",
                "0",
                "nf_call_ip6tables",
                "0",
                "nf_call_arptables",
                "0",
            ])?;
        }
        sh(&["ip", "link", "set", BRIDGE, "up"])?;
        for node in self.nodes() {
            step(format!(
                "namespace {}: {} {} {}",
                node.ns(),
                node.v4(),
                node.v6(),
                node.mac_string()
            ));
            add_node(node)?;
        }
        let (hop4, hop6) = self.vip_next_hops();
        let via = match self.config.ha {
            None => "the lb",
            Some(Redundancy::Vrrp) => "the VRRP floating next hop",
            Some(Redundancy::Bgp) => "the router",
        };
        step(format!("client routes {VIP4} and {VIP6} via {via} ({hop4}, {hop6})"));
        ns_sh(NS_CLIENT, &["ip", "route", "add", &format!("{VIP4}/32"), "via", &hop4.to_string()])?;
        ns_sh(
            NS_CLIENT,
            &["ip", "-6", "route", "add", &format!("{VIP6}/128"), "via", &hop6.to_string()],
        )?;
        if self.config.ha == Some(Redundancy::Bgp) {
            Self::build_router()?;
        }
        for k in self.wafs() {
            self.add_waf(k)?;
        }
        step("XDP pass-through on the veths that receive forwarded frames");
        for balancer in self.balancers() {
            attach(None, &balancer.veth(), &XdpProg::Pass, "root")?;
        }
        attach(Some(NS_CLIENT), NS_IF, &XdpProg::Pass, NS_CLIENT)?;
        if self.config.mode == Mode::Dsr {
            for k in self.wafs() {
                let ns = waf_ns(k);
                attach(Some(&ns), NS_IF, &XdpProg::Pass, &ns)?;
            }
        }
        // In ipip mode backend-setup attaches xdp-decap, which also makes the veth
        // accept forwarded frames. No MSS clamp at first: the end-to-end tests show
        // path-MTU discovery alone at work, then the clamp (`clamp_mss`).
        self.write_backend_config()?;
        for k in self.wafs() {
            self.prepare_waf(k, false)?;
        }
        let ha = self.config.ha.map_or_else(String::new, |h| format!("ha={h}\n"));
        std::fs::write(
            state_file(),
            format!("mode={}\nwafs={}\n{ha}", self.config.mode, self.config.wafs),
        )?;
        if self.config.ha.is_some() {
            self.start_engines()?;
        }
        step("checking every WAF node answers /healthz from the lb");
        for k in self.wafs() {
            let url = format!("http://{}/healthz", waf4(k));
            wait_for(Duration::from_secs(5), || {
                let body = ns_sh(NS_LB, &["curl", "-sS", "-m", "1", &url])?;
                ensure!(body == "ok\n", "{url} answered {body:?}");
                Ok(())
            })
            .with_context(|| format!("waf{k} does not answer {url}"))?;
        }
        Ok(())
    }

    fn add_waf(&self, k: usize) -> Result<()> {
        let node = Node::Waf(k);
        let ns = node.ns();
        step(format!("{ns}: nginx on :{HTTP_PORT}, udp responder on :{UDP_PORT}"));
        nginx::write_config(&ns, &node.dir(), HTTP_PORT)?;
        self.start_waf(k)
    }

    /// Prepares WAF node `k` as an operator would, with `xdplb backend-setup --apply`
    /// (VIPs on lo, ARP and reverse-path sysctls; in ipip mode xdp-decap pinned under
    /// [`PIN_DIR`], and the MSS clamp when `mss_clamp`), then `--check` must find
    /// everything in place: so every lab run tests the command. Runs in the node's
    /// network namespace only, so the pins land on the host's bpffs.
    fn prepare_waf(&self, k: usize, mss_clamp: bool) -> Result<()> {
        self.check_waf(k)?;
        let xdplb = crate::daemon::binary()?;
        let ns = waf_ns(k);
        let pin = Path::new(PIN_DIR).join(format!("{ns}-{NS_IF}"));
        step(format!(
            "{ns}: xdplb backend-setup --apply{}",
            if mss_clamp { "" } else { " --no-mss-clamp" }
        ));
        for flag in ["--apply", "--check"] {
            let mut c = std::process::Command::new(&xdplb);
            c.args(["backend-setup", "--config"]).arg(backend_config()).arg(flag);
            c.arg("--pin-path").arg(&pin);
            if !mss_clamp {
                c.arg("--no-mss-clamp");
            }
            // The other balancers of a pair: their tunnel packets are decapsulated too.
            for peer in self.balancers().into_iter().skip(1) {
                c.arg("--balancer").arg(peer.v4().to_string());
                c.arg("--balancer").arg(peer.v6().to_string());
            }
            let line = sh::show(&c);
            let out = in_netns(Some(&ns), || output(&mut c))?;
            ensure!(
                out.status.success(),
                "`{line}` in {ns} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The balancer config the WAF nodes are prepared from: the lab's VIPs with every
    /// node as a backend, in the lab's mode (what an operator copies to the nodes).
    fn write_backend_config(&self) -> Result<PathBuf> {
        let mut text = format!("interface: {NS_IF}\nforwarding: {}\n", self.config.mode);
        if self.config.mode == Mode::Ipip {
            let _ = writeln!(text, "tunnel_source: {{ ipv4: {LB4}, ipv6: \"{LB6}\" }}");
        }
        text.push_str("vips:\n");
        for (name, vip, v6) in [("lab4", VIP4.to_string(), false), ("lab6", VIP6.to_string(), true)]
        {
            let _ = write!(
                text,
                "  - name: {name}\n    address: \"{vip}\"\n    port: 0\n    backends:\n"
            );
            for k in self.wafs() {
                let addr = if v6 { waf6(k).to_string() } else { waf4(k).to_string() };
                let _ = writeln!(text, "      - {{ name: waf{k}, address: \"{addr}\" }}");
            }
        }
        let path = backend_config();
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Removes everything a lab may have left: processes in the lab namespaces,
    /// UDP responders, root-side links, namespaces, the bridge, pins and the lab
    /// directory. Idempotent; works after a crash.
    pub fn down() -> Result<()> {
        ensure_root()?;
        let namespaces = lab_namespaces()?;
        let mut pids = udp_responders();
        for ns in &namespaces {
            pids.extend(namespace_pids(ns)?);
        }
        pids.sort_unstable();
        pids.dedup();
        if !namespaces.is_empty() || !pids.is_empty() {
            step(format!("lab down: {} namespaces, {} processes", namespaces.len(), pids.len()));
        }
        for &pid in &pids {
            // SAFETY: these run in a lab namespace or carry the responders' name.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &pids {
            if !nginx::wait_gone(pid, Duration::from_secs(5)) {
                bail!("process {pid} of the lab survives SIGKILL");
            }
        }
        // Root-side veths first: deleting one end removes the pair at once, where a
        // namespace's devices go away asynchronously after `ip netns del`.
        let mut links = root_links()?;
        links.sort_by_key(|l| l == BRIDGE);
        for link in &links {
            sh(&["ip", "link", "del", link])?;
        }
        for ns in &namespaces {
            sh(&["ip", "netns", "del", ns])?;
        }
        for dir in [PIN_DIR, LAB_DIR] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {dir}"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Stops WAF node `k`'s services (nginx and the UDP responder): connections
    /// to it are refused (RST), UDP gets port-unreachable.
    pub fn stop_waf(&self, k: usize) -> Result<()> {
        self.check_waf(k)?;
        nginx::stop(&Node::Waf(k).dir())?;
        self.stop_udp(k)
    }

    /// Starts WAF node `k`'s nginx and UDP responder (if not running); both
    /// accept when this returns.
    pub fn start_waf(&self, k: usize) -> Result<()> {
        self.check_waf(k)?;
        let node = Node::Waf(k);
        let dir = node.dir();
        if nginx::running(&dir).is_none() {
            nginx::start(&node.ns(), &dir)?;
        }
        self.start_udp(k)
    }

    /// Starts only node `k`'s UDP responder.
    pub fn start_udp(&self, k: usize) -> Result<()> {
        self.check_waf(k)?;
        let node = Node::Waf(k);
        let pid_file = node.dir().join("udp.pid");
        if read_pid(&pid_file).is_some_and(nginx::alive) {
            return Ok(());
        }
        udp::start(&node.ns(), &node.ns(), UDP_PORT, &pid_file)?;
        Ok(())
    }

    /// Stops only node `k`'s UDP responder.
    pub fn stop_udp(&self, k: usize) -> Result<()> {
        self.check_waf(k)?;
        let pid_file = Node::Waf(k).dir().join("udp.pid");
        if let Some(pid) = read_pid(&pid_file).filter(|&p| udp_responders().contains(&p)) {
            // SAFETY: a pid that carries the responders' name.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            ensure!(
                nginx::wait_gone(pid, Duration::from_secs(5)),
                "udp responder {pid} survives SIGKILL"
            );
        }
        Ok(())
    }

    /// Makes node `k` silent without it knowing: every IP packet in or out of its
    /// eth0 is dropped (nftables, before conntrack), so connections and probes to
    /// it time out instead of being reset or refused. ARP still works, so the
    /// failure looks like a hung host, not a missing one.
    pub fn cut_link(&self, k: usize) -> Result<()> {
        self.check_waf(k)?;
        let ns = waf_ns(k);
        self.restore_link(k)?;
        let rules = format!(
            "table inet {CUT_TABLE} {{\n\
             \tchain in {{ type filter hook prerouting priority -400; policy accept; iifname \"{NS_IF}\" drop; }}\n\
             \tchain out {{ type filter hook output priority -400; policy accept; oifname \"{NS_IF}\" drop; }}\n\
             }}\n"
        );
        let mut c = in_ns(&ns, &["nft", "-f", "-"]);
        run_with_stdin(&mut c, &rules)
    }

    /// Undoes [`Lab::cut_link`] (nothing if the link is not cut).
    pub fn restore_link(&self, k: usize) -> Result<()> {
        self.check_waf(k)?;
        let ns = waf_ns(k);
        if quietly(&mut in_ns(&ns, &["nft", "list", "table", "inet", CUT_TABLE])) {
            ns_sh(&ns, &["nft", "delete", "table", "inet", CUT_TABLE])?;
        }
        Ok(())
    }

    /// True while node `k`'s link is cut.
    #[must_use]
    pub fn is_cut(&self, k: usize) -> bool {
        quietly(&mut in_ns(&waf_ns(k), &["nft", "list", "table", "inet", CUT_TABLE]))
    }

    /// The operator's lever against full-size segments in ipip mode, on WAF node
    /// `k`: `xdplb backend-setup --apply` clamps the MSS its VIPs advertise to what
    /// leaves room for the balancer's outer header ([`ADVMSS4`], [`ADVMSS6`]), so
    /// clients never send a segment too big for the tunnel. `false` removes the
    /// clamp (`--no-mss-clamp`).
    pub fn clamp_mss(&self, k: usize, on: bool) -> Result<()> {
        self.prepare_waf(k, on)?;
        let table = self.exec(&waf_ns(k), &["nft", "list", "table", "inet", "xdplb_backend"])?;
        let text = String::from_utf8_lossy(&table.stdout);
        if on {
            let want = format!("mss4 {ADVMSS4} mss6 {ADVMSS6}");
            ensure!(text.contains(&want), "waf{k}: the MSS table lacks `{want}`:\n{text}");
        } else {
            ensure!(!table.status.success(), "waf{k}: the MSS table is still there:\n{text}");
        }
        Ok(())
    }

    /// Makes the client forget the path MTUs it learned (route exceptions), so the
    /// next full-size segment to a VIP is sent at the link's MTU again.
    pub fn forget_path_mtu(&self) -> Result<()> {
        ns_sh(NS_CLIENT, &["ip", "route", "flush", "cache"])?;
        ns_sh(NS_CLIENT, &["ip", "-6", "route", "flush", "cache"])?;
        for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
            if let Some(mtu) = self.path_mtu(vip)? {
                bail!("the client still remembers a path MTU of {mtu} to {vip}");
            }
        }
        Ok(())
    }

    /// The path MTU the client learned towards `dst` (from ICMP), if any.
    pub fn path_mtu(&self, dst: IpAddr) -> Result<Option<u32>> {
        let route = ns_sh(NS_CLIENT, &["ip", "route", "get", &dst.to_string()])?;
        let mut words = route.split_whitespace();
        Ok(words.by_ref().find(|w| *w == "mtu").and_then(|_| words.next()?.parse().ok()))
    }

    /// Runs `args` in namespace `ns` (`ip netns exec`) and returns its output,
    /// whatever its exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        output(&mut in_ns(ns, args))
    }

    /// Runs `args` in namespace `ns`; its stdout, or an error with its stderr.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        ns_sh(ns, args)
    }

    /// `curl` from namespace `ns`: the body, or an error naming curl's complaint.
    pub fn curl(&self, ns: &str, url: &str, timeout: Duration) -> Result<String> {
        let secs = format!("{:.3}", timeout.as_secs_f64());
        ns_sh(ns, &["curl", "-sS", "-g", "-m", &secs, url])
    }

    /// What is there: namespaces, addresses, XDP per interface, services per WAF
    /// node and a /healthz probe of each from the lb.
    #[must_use]
    pub fn status(&self) -> String {
        status_report(Some(self))
    }

    fn check_waf(&self, k: usize) -> Result<()> {
        ensure!(
            (1..=self.config.wafs).contains(&k),
            "no waf{k}: the lab has waf1..waf{}",
            self.config.wafs
        );
        Ok(())
    }
}

/// The nftables table `cut_link` adds in a WAF namespace.
const CUT_TABLE: &str = "xlb_cut";

/// A [`Lab`] that is torn down when dropped (tests), holding [`LOCK_FILE`]
/// meanwhile so that labs in other threads or processes wait their turn.
pub struct LabGuard {
    lab: Lab,
    _lock: File,
}

/// Waits for [`LOCK_FILE`] and holds it until the returned file closes: for a test
/// that drives the lab through the `lab` binary rather than a [`LabGuard`].
pub fn lock() -> Result<File> {
    lock_file(LOCK_FILE)
}

/// Waits for an exclusive `flock` on `path` (created if missing) and holds it until
/// the returned file closes.
pub fn lock_file(path: &str) -> Result<File> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    // SAFETY: flock on an open file; released when the file closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {path}: {}", io::Error::last_os_error());
    }
    Ok(lock)
}

impl LabGuard {
    /// Waits for the lab lock, then builds the lab.
    pub fn up(config: &LabConfig) -> Result<Self> {
        let lock = lock()?;
        Ok(Self { lab: Lab::up(config)?, _lock: lock })
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down() {
            eprintln!("lab down failed: {e:#}");
        }
    }
}

/// The config `write_backend_config` writes.
fn backend_config() -> PathBuf {
    Path::new(LAB_DIR).join("backends.yaml")
}

fn state_file() -> PathBuf {
    Path::new(LAB_DIR).join("lab.env")
}

fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the lab needs root (network namespaces, XDP)");
    Ok(())
}

/// Offloads off on both ends of every veth, so the lab's wire carries what a real
/// one does: no TX checksum offload (`XDP_TX`'d frames would keep partial
/// checksums); no TSO/GSO (a sender would hand 64 KiB super-frames along, which no
/// NIC puts on a wire and which a driver-mode XDP program without multi-buffer
/// support drops); no GRO (the bridge side would merge segments into super-frames
/// again; the XDP program on a receiving veth admits `XDP_TX`'d frames without it).
const WIRE_OFFLOADS_OFF: &[&str] = &["tx", "off", "tso", "off", "gso", "off", "gro", "off"];

/// A namespace joined to the bridge: veth pair, addresses, fixed MAC, and a wire
/// without offloads ([`WIRE_OFFLOADS_OFF`]).
fn add_node(node: Node) -> Result<()> {
    let (ns, veth) = (node.ns(), node.veth());
    sh(&["ip", "netns", "add", &ns])?;
    // No duplicate address detection, link-local included: while an address is
    // tentative, first IPv6 contacts stall for a SYN retry (~1 s).
    for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
        ns_sh(&ns, &["sysctl", "-qw", &format!("{key}=0")])?;
    }
    sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", NS_IF, "netns", &ns])?;
    sh(&["ip", "link", "set", &veth, "master", BRIDGE, "up"])?;
    sh(&[&["ethtool", "-K", &veth][..], WIRE_OFFLOADS_OFF].concat())?;
    ns_sh(&ns, &["ip", "link", "set", "lo", "up"])?;
    ns_sh(&ns, &["ip", "link", "set", NS_IF, "address", &node.mac_string()])?;
    ns_sh(&ns, &["ip", "addr", "add", &format!("{}/{PREFIX4}", node.v4()), "dev", NS_IF])?;
    ns_sh(
        &ns,
        &["ip", "-6", "addr", "add", &format!("{}/{PREFIX6}", node.v6()), "dev", NS_IF, "nodad"],
    )?;
    ns_sh(&ns, &["ip", "link", "set", NS_IF, "up"])?;
    ns_sh(&ns, &[&["ethtool", "-K", NS_IF][..], WIRE_OFFLOADS_OFF].concat())?;
    Ok(())
}

fn attach(ns: Option<&str>, ifname: &str, prog: &XdpProg, pin_owner: &str) -> Result<()> {
    let pin = Path::new(PIN_DIR).join(format!("{pin_owner}-{ifname}"));
    eprintln!(
        "    {} on {ifname} ({}), pinned at {}",
        prog.name(),
        ns.unwrap_or("root"),
        pin.display()
    );
    netns::attach_pinned(ns, ifname, prog, &pin)
}

/// Retries `f` until it succeeds or `timeout` passes; the last error otherwise.
fn wait_for(timeout: Duration, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn run_with_stdin(c: &mut std::process::Command, input: &str) -> Result<()> {
    use std::{io::Write as _, process::Stdio};
    let line = sh::show(c);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`{line}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The processes in network namespace `ns` (this process left out).
fn namespace_pids(ns: &str) -> Result<Vec<i32>> {
    let out = output(&mut cmd(&["ip", "netns", "pids", ns]))?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p != me)
        .collect())
}

/// Lab namespaces that exist now.
fn lab_namespaces() -> Result<Vec<String>> {
    let list = sh(&["ip", "netns", "list"])?;
    // Lines look like "waf1 (id: 3)" or "waf1".
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_lab_ns(n))
        .map(str::to_owned)
        .collect())
}

/// Links of the lab in the root namespace (`xlb-*`).
fn root_links() -> Result<Vec<String>> {
    let list = sh(&["ip", "-o", "link", "show"])?;
    // "12: xlb-lb@if2: <...>": the name is the second field, before any '@'.
    Ok(list
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.starts_with(LINK_PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Pids of UDP responders (found by process name, so also after a crash).
fn udp_responders() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with(udp::COMM_PREFIX))
        })
        .collect()
}
