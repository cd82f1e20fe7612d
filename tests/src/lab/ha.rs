//! Balancer redundancy in the lab: a second balancer namespace (`lb2`) beside `lb`,
//! and the engines that move traffic between them, run with the configs shipped in
//! `deploy/` (their example addresses replaced by the lab's):
//!
//! - VRRP: keepalived in each balancer; the client routes the VIPs to a floating
//!   next hop ([`FLOAT4`], [`FLOAT6`]) that the master holds.
//! - BGP: BIRD in each balancer and in a `router` namespace, with BFD; the router
//!   holds one ECMP route per VIP with a next hop per announcing balancer and
//!   hashes the 5-tuple (`fib_multipath_hash_policy=1`, IPv4 and IPv6); the client
//!   routes the VIPs to the router.
//!
//! ```text
//!   client ---(VIPs via FLOAT or router)---+
//!   router (BGP)                            |  xlb-br0: one segment; WAF nodes answer
//!   lb (10.99.0.2)   lb2 (10.99.0.3)        |  the client directly (dsr / ipip)
//!   waf1 .. wafN ---------------------------+
//! ```
//!
//! xdplb itself is not started here (the lab leaves the balancers' `eth0` free):
//! [`balancer_config`] writes each balancer's config, and `pair.rs` runs them.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    Lab, NS_CLIENT, NS_IF, Node, VIP4, VIP6,
    sh::{in_ns, ns_sh, output, quietly, sh},
    step, wait_for,
};

/// How the balancers share the VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redundancy {
    /// Active/standby: keepalived moves a floating next hop.
    Vrrp,
    /// Active/active: BIRD announces the VIPs to a router that spreads flows (ECMP).
    Bgp,
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vrrp => "vrrp",
            Self::Bgp => "bgp",
        })
    }
}

impl FromStr for Redundancy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vrrp" => Ok(Self::Vrrp),
            "bgp" => Ok(Self::Bgp),
            _ => bail!("unknown redundancy {s:?} (vrrp or bgp)"),
        }
    }
}

/// Balancers of a lab with redundancy: `lb` and `lb2`.
pub const BALANCERS: usize = 2;
/// The VRRP floating next hop (the master holds it).
pub const FLOAT4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 8);
pub const FLOAT6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 8);
/// The kernel routing table xdplb keeps the VIP routes in (`ha.route_table`).
pub const ROUTE_TABLE: u32 = 100;
/// The prefixes the lab's VIPs are in, which the router accepts from the balancers.
pub const VIP_NET4: &str = "10.99.100.0/24";
pub const VIP_NET6: &str = "fd99:100::/64";

/// The shipped configs the lab runs.
const KEEPALIVED_CONF: &str = include_str!("../../../deploy/keepalived/keepalived.conf");
const BIRD_BALANCER_CONF: &str = include_str!("../../../deploy/bird/bird-balancer.conf");
const BIRD_ROUTER_CONF: &str = include_str!("../../../deploy/bird/bird-router.conf");

/// Balancer `k` (1-based): `lb`, then `lb2`...
#[must_use]
pub fn balancer(k: usize) -> Node {
    if k <= 1 { Node::Lb } else { Node::Peer(k) }
}

/// The track file xdplb on balancer `k` writes and its keepalived reads.
#[must_use]
pub fn track_file(k: usize) -> PathBuf {
    balancer(k).dir().join("vrrp.track")
}

/// `text` with every whole occurrence of `from` (not inside a longer address or
/// number) replaced by `to`.
fn replace_token(text: &str, from: &str, to: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == ':';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        // An address followed by `/len` is still the address.
        if before.is_some_and(token) || after.is_some_and(|c| token(c) && c != '.') {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// `text` with each `(from, to)` replaced; each `from` must occur.
fn substitute(text: &str, what: &str, pairs: &[(&str, String)]) -> Result<String> {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        ensure!(out.contains(from), "{what}: the shipped config no longer holds `{from}`");
        out = replace_token(&out, from, to);
    }
    Ok(out)
}

/// The shipped keepalived.conf for balancer `k`.
pub fn keepalived_conf(k: usize) -> Result<String> {
    let node = balancer(k);
    let text = substitute(
        KEEPALIVED_CONF,
        "keepalived.conf",
        &[
            ("xdplb-a", node.ns()),
            ("192.0.2.254/24", format!("{FLOAT4}/{}", super::PREFIX4)),
            ("2001:db8::254/64", format!("{FLOAT6}/{}", super::PREFIX6)),
            ("/run/xdplb/vrrp.track", track_file(k).display().to_string()),
            ("priority 150", format!("priority {}", 200 - 50 * k)),
        ],
    )?;
    ensure!(text.contains(&format!("interface {NS_IF}")), "keepalived.conf: not on {NS_IF}");
    Ok(text)
}

/// The shipped bird-balancer.conf for balancer `k`.
pub fn bird_balancer_conf(k: usize) -> Result<String> {
    let node = balancer(k);
    let text = substitute(
        BIRD_BALANCER_CONF,
        "bird-balancer.conf",
        &[
            ("192.0.2.11", node.v4().to_string()),
            ("192.0.2.1", Node::Router.v4().to_string()),
            ("2001:db8::1", Node::Router.v6().to_string()),
            ("kernel table 100", format!("kernel table {ROUTE_TABLE}")),
        ],
    )?;
    Ok(local_log(&text, &node))
}

/// The shipped bird-router.conf for the lab's router and balancers.
pub fn bird_router_conf() -> Result<String> {
    let text = substitute(
        BIRD_ROUTER_CONF,
        "bird-router.conf",
        &[
            ("192.0.2.11", balancer(1).v4().to_string()),
            ("2001:db8::11", balancer(1).v6().to_string()),
            ("192.0.2.12", balancer(2).v4().to_string()),
            ("2001:db8::12", balancer(2).v6().to_string()),
            ("192.0.2.1", Node::Router.v4().to_string()),
            ("203.0.113.0/24", VIP_NET4.to_owned()),
            ("2001:db8:100::/64", VIP_NET6.to_owned()),
        ],
    )?;
    Ok(local_log(&text, &Node::Router))
}

/// BIRD logs into the node's lab directory rather than syslog.
fn local_log(text: &str, node: &Node) -> String {
    text.replace(
        "log syslog all;",
        &format!("log \"{}\" all;", node.dir().join("bird.log").display()),
    )
}

fn pid_file(node: Node, name: &str) -> PathBuf {
    node.dir().join(format!("{name}.pid"))
}

fn ctl_socket(node: Node) -> PathBuf {
    node.dir().join("bird.ctl")
}

impl Lab {
    /// The balancers: `lb`, and `lb2` in a lab with redundancy.
    #[must_use]
    pub fn balancers(&self) -> Vec<Node> {
        let n = if self.config.ha.is_some() { BALANCERS } else { 1 };
        (1..=n).map(balancer).collect()
    }

    /// Where the client sends VIP traffic: the lb, the floating next hop, or the router.
    #[must_use]
    pub fn vip_next_hops(&self) -> (IpAddr, IpAddr) {
        match self.config.ha {
            None => (Node::Lb.v4().into(), Node::Lb.v6().into()),
            Some(Redundancy::Vrrp) => (FLOAT4.into(), FLOAT6.into()),
            Some(Redundancy::Bgp) => (Node::Router.v4().into(), Node::Router.v6().into()),
        }
    }

    /// The router's part (BGP): forwarding, 5-tuple ECMP hashing, no redirects (the
    /// client and the balancers share its segment, as on a one-armed router).
    pub(super) fn build_router() -> Result<()> {
        step("router: forwarding, fib_multipath_hash_policy=1 (IPv4 and IPv6), no redirects");
        ns_sh(
            &Node::Router.ns(),
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ],
        )?;
        ns_sh(
            NS_CLIENT,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.accept_redirects=0",
                "net.ipv4.conf.eth0.accept_redirects=0",
                "net.ipv6.conf.all.accept_redirects=0",
                "net.ipv6.conf.eth0.accept_redirects=0",
            ],
        )?;
        Ok(())
    }

    /// Starts every engine of the lab's redundancy: keepalived on each balancer, or
    /// BIRD on the router and each balancer.
    pub(super) fn start_engines(&self) -> Result<()> {
        if self.config.ha == Some(Redundancy::Bgp) {
            start_bird(Node::Router)?;
        }
        for k in 1..=self.balancers().len() {
            self.start_engine(k)?;
        }
        Ok(())
    }

    /// Starts balancer `k`'s engine (keepalived or BIRD) if it is not running.
    pub fn start_engine(&self, k: usize) -> Result<()> {
        match self.config.ha {
            None => Ok(()),
            Some(Redundancy::Vrrp) => start_keepalived(k),
            Some(Redundancy::Bgp) => start_bird(balancer(k)),
        }
    }

    /// `birdc` on `node`'s BIRD: its answer.
    pub fn birdc(&self, node: Node, command: &[&str]) -> Result<String> {
        let ctl = ctl_socket(node).to_string_lossy().into_owned();
        let mut args = vec!["birdc", "-s", &ctl];
        args.extend(command);
        sh(&args)
    }

    /// The balancer that holds the VRRP floating address, if one does. A dead
    /// host ([`Lab::kill_balancer`]) is none: a keepalived killed before it saw its
    /// link go down leaves the address behind, on a host nothing reaches.
    #[must_use]
    pub fn vrrp_master(&self) -> Option<usize> {
        (1..=self.balancers().len()).filter(|&k| link_up(k)).find(|&k| {
            ns_sh(&balancer(k).ns(), &["ip", "-4", "-o", "addr", "show", "dev", NS_IF])
                .is_ok_and(|a| a.contains(&format!(" {FLOAT4}/")))
        })
    }

    /// The balancers the router sends `vip` to (its ECMP next hops), by number.
    pub fn bgp_next_hops(&self, vip: IpAddr) -> Result<Vec<usize>> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let text = ns_sh(&Node::Router.ns(), &["ip", family, "route", "show", &vip.to_string()])?;
        Ok((1..=self.balancers().len())
            .filter(|&k| {
                let node = balancer(k);
                let hop = if vip.is_ipv4() { node.v4().to_string() } else { node.v6().to_string() };
                text.split_whitespace().any(|w| w == hop)
            })
            .collect())
    }

    /// The balancer the router sends a TCP flow from the client's `sport` to `vip`
    /// port `dport` to, as the kernel hashes it now (`ip route get ... iif`).
    pub fn bgp_balancer_of(&self, vip: IpAddr, sport: u16, dport: u16) -> Result<usize> {
        let (family, from) = if vip.is_ipv4() {
            ("-4", super::CLIENT4.to_string())
        } else {
            ("-6", super::CLIENT6.to_string())
        };
        let (sport, dport) = (sport.to_string(), dport.to_string());
        let text = ns_sh(
            &Node::Router.ns(),
            &[
                "ip",
                family,
                "route",
                "get",
                &vip.to_string(),
                "from",
                &from,
                "iif",
                NS_IF,
                "ipproto",
                "tcp",
                "sport",
                &sport,
                "dport",
                &dport,
            ],
        )?;
        let mut words = text.split_whitespace();
        let via = words.by_ref().find(|w| *w == "via").and_then(|_| words.next());
        (1..=self.balancers().len())
            .find(|&k| {
                let n = balancer(k);
                via == Some(&n.v4().to_string()) || via == Some(&n.v6().to_string())
            })
            .with_context(|| format!("the router sends the flow to no balancer: {text}"))
    }

    /// Waits until the engines carry the VIPs: a VRRP master, or every balancer in
    /// the router's ECMP route of both VIPs (`want` balancers, by number).
    pub fn wait_engines(&self, want: &[usize], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        wait_for(timeout, || match self.config.ha {
            None => Ok(()),
            Some(Redundancy::Vrrp) => {
                let master = self.vrrp_master();
                ensure!(
                    master.is_some_and(|m| want.contains(&m)),
                    "no VRRP master among {want:?} (master: {master:?})"
                );
                Ok(())
            }
            Some(Redundancy::Bgp) => {
                for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
                    let hops = self.bgp_next_hops(vip)?;
                    ensure!(hops == want, "the router sends {vip} to {hops:?}, not {want:?}");
                }
                Ok(())
            }
        })?;
        Ok(start.elapsed())
    }

    /// Balancer `k`'s host dies: its link goes down (the peer and the router see
    /// nothing more from it) and every process in its namespace is killed (xdplb,
    /// keepalived or BIRD). Its pinned XDP program and maps stay, as on a host that
    /// reboots into them.
    pub fn kill_balancer(&self, k: usize) -> Result<()> {
        let node = balancer(k);
        sh(&["ip", "link", "set", &node.veth(), "down"])?;
        let pids = super::namespace_pids(&node.ns())?;
        for &pid in &pids {
            // SAFETY: processes of this lab namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &pids {
            ensure!(super::nginx::wait_gone(pid, Duration::from_secs(5)), "pid {pid} survives");
        }
        Ok(())
    }

    /// Undoes [`Lab::kill_balancer`]'s link cut and starts its engine again (xdplb
    /// is the caller's).
    pub fn revive_balancer(&self, k: usize) -> Result<()> {
        sh(&["ip", "link", "set", &balancer(k).veth(), "up"])?;
        self.start_engine(k)
    }

    /// The engines' state in a few words, for `lab status`.
    #[must_use]
    pub fn engines_status(&self) -> String {
        match self.config.ha {
            None => String::new(),
            Some(Redundancy::Vrrp) => format!(
                "VRRP: master {}; floating next hop {FLOAT4} / {FLOAT6}",
                self.vrrp_master().map_or("none".to_owned(), |k| balancer(k).ns())
            ),
            Some(Redundancy::Bgp) => {
                let hops = |vip: IpAddr| {
                    self.bgp_next_hops(vip).map_or_else(
                        |e| format!("? ({e})"),
                        |h| {
                            format!("{:?}", h.iter().map(|k| balancer(*k).ns()).collect::<Vec<_>>())
                        },
                    )
                };
                format!(
                    "BGP: the router sends {VIP4} to {} and {VIP6} to {}",
                    hops(VIP4.into()),
                    hops(VIP6.into())
                )
            }
        }
    }
}

/// Whether balancer `k`'s link to the bridge is up (administratively: what
/// [`Lab::kill_balancer`] takes down).
fn link_up(k: usize) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{}/flags", balancer(k).veth()))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0) // IFF_UP
}

/// Starts keepalived on balancer `k` with the shipped config, if it is not running.
fn start_keepalived(k: usize) -> Result<()> {
    let node = balancer(k);
    let pid = pid_file(node, "keepalived");
    if read_pid(&pid).is_some_and(alive) {
        return Ok(());
    }
    let conf = node.dir().join("keepalived.conf");
    std::fs::create_dir_all(node.dir())?;
    std::fs::write(&conf, keepalived_conf(k)?)?;
    let vrrp_pid = pid_file(node, "keepalived-vrrp");
    let log = node.dir().join("keepalived.log");
    step(format!("{}: keepalived (VRRP only) with deploy/keepalived/keepalived.conf", node.ns()));
    // -P VRRP only; own pid files, so instances in other namespaces do not collide;
    // -n -l -D -G: in the foreground (of a detached shell), logging with details to
    // the console, i.e. into the node's log file, not to syslog.
    let line = format!(
        "setsid keepalived -P -n -l -D -G -f {} -p {} -r {} >>{} 2>&1 </dev/null &",
        conf.display(),
        pid.display(),
        vrrp_pid.display(),
        log.display()
    );
    let out = output(&mut in_ns(&node.ns(), &["sh", "-c", &line]))?;
    ensure!(
        out.status.success(),
        "keepalived in {}: {}",
        node.ns(),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(5), || {
        ensure!(read_pid(&pid).is_some_and(alive), "keepalived in {} did not start", node.ns());
        Ok(())
    })
}

/// Starts BIRD on `node` (the router or a balancer) with the shipped config, if it
/// is not running.
fn start_bird(node: Node) -> Result<()> {
    let pid = pid_file(node, "bird");
    if read_pid(&pid).is_some_and(alive) {
        return Ok(());
    }
    let conf = node.dir().join("bird.conf");
    std::fs::create_dir_all(node.dir())?;
    let (text, shipped) = if node == Node::Router {
        (bird_router_conf()?, "bird-router.conf")
    } else {
        let k = if node == Node::Lb {
            1
        } else if let Node::Peer(k) = node {
            k
        } else {
            0
        };
        (bird_balancer_conf(k)?, "bird-balancer.conf")
    };
    std::fs::write(&conf, text)?;
    step(format!("{}: BIRD with deploy/bird/{shipped}", node.ns()));
    let ctl = ctl_socket(node);
    let _ = std::fs::remove_file(&ctl);
    // One control socket per instance (-s), or the second refuses to start.
    ns_sh(
        &node.ns(),
        &[
            "bird",
            "-c",
            &conf.to_string_lossy(),
            "-s",
            &ctl.to_string_lossy(),
            "-P",
            &pid.to_string_lossy(),
        ],
    )?;
    Ok(())
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    super::nginx::alive(pid)
}

/// True when `keepalived`, `bird` and `birdc` are installed.
#[must_use]
pub fn engines_installed() -> bool {
    ["keepalived", "bird", "birdc"]
        .iter()
        .all(|p| quietly(std::process::Command::new("sh").args(["-c", &format!("command -v {p}")])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_whole() {
        let text = "neighbor 192.0.2.1 as 1; neighbor 192.0.2.11 as 2; net 192.0.2.1/32;";
        assert_eq!(
            replace_token(text, "192.0.2.1", "10.0.0.1"),
            "neighbor 10.0.0.1 as 1; neighbor 192.0.2.11 as 2; net 10.0.0.1/32;"
        );
    }

    #[test]
    fn the_shipped_configs_take_the_lab_addresses() {
        let ka = keepalived_conf(2).expect("keepalived");
        assert!(ka.contains("10.99.0.8/24 dev eth0") && ka.contains("fd99::8/64 dev eth0"), "{ka}");
        assert!(ka.contains("priority 100") && ka.contains("router_id lb2"), "{ka}");
        let lb = bird_balancer_conf(2).expect("balancer");
        assert!(
            lb.contains("router id 10.99.0.3;") && lb.contains("neighbor 10.99.0.1 as"),
            "{lb}"
        );
        assert!(lb.contains("neighbor fd99::1 as"), "{lb}");
        let router = bird_router_conf().expect("router");
        for want in [
            "neighbor 10.99.0.2 as",
            "neighbor fd99::3 as",
            "10.99.100.0/24{32,32}",
            "router id 10.99.0.1;",
        ] {
            assert!(router.contains(want), "{want}: {router}");
        }
    }
}
