//! The balancer's own health, as `/healthz`, `xdplb status` and the redundancy
//! engines see it, with `xdplb run` in network namespaces: healthy while its
//! program runs on a live interface; failing with the reason when the link loses
//! its carrier or the program is detached behind its back; withdrawn at once by a
//! planned stop, which keeps forwarding for `ha.withdraw_wait`; and a second
//! `xdplb run` on the same pins refuses without touching the running one.
#![allow(clippy::unwrap_used, reason = "test")]

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xdplb_tests::{
    daemon::{Daemon, binary},
    lab::{
        exec_in_netns, in_netns,
        sh::{cmd, ns_sh, quietly, sh},
    },
    privilege::have_root,
};

const PIN: &str = "/sys/fs/bpf/xdplb-test-health";
const TABLE: &str = "100";
const LB: &str = "xbh-lb";
const NODE: &str = "xbh-b1";
const VIP4: &str = "10.96.100.1";
const VIP6: &str = "fd96:100::1";

/// `xbh-lb` (10.96.0.1) and `xbh-b1` (10.96.0.11) joined by one veth pair.
struct Net {
    dir: PathBuf,
}

impl Net {
    fn up() -> Self {
        Self::down();
        let dir = std::env::temp_dir().join("xdplb-test-health");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for ns in [LB, NODE] {
            sh(&["ip", "netns", "add", ns]).unwrap();
            // No duplicate address detection: tentative addresses stall first contacts.
            for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
                ns_sh(ns, &["sysctl", "-qw", &format!("{key}=0")]).unwrap();
            }
            ns_sh(ns, &["ip", "link", "set", "lo", "up"]).unwrap();
        }
        sh(&[
            "ip", "link", "add", "xbh-a", "netns", LB, "type", "veth", "peer", "xbh-b", "netns",
            NODE,
        ])
        .unwrap();
        for (ns, link, v4, v6) in [
            (LB, "xbh-a", "10.96.0.1/24", "fd96::1/64"),
            (NODE, "xbh-b", "10.96.0.11/24", "fd96::11/64"),
        ] {
            ns_sh(ns, &["ip", "link", "set", link, "name", "eth0"]).unwrap();
            ns_sh(ns, &["ip", "addr", "add", v4, "dev", "eth0"]).unwrap();
            ns_sh(ns, &["ip", "-6", "addr", "add", v6, "dev", "eth0", "nodad"]).unwrap();
            ns_sh(ns, &["ip", "link", "set", "eth0", "up"]).unwrap();
        }
        Self { dir }
    }

    fn down() {
        for ns in [LB, NODE] {
            quietly(&mut cmd(&["ip", "netns", "del", ns]));
        }
        if Path::new(PIN).exists() {
            let _ = lb_userspace::loader::remove_pins(Path::new(PIN));
        }
    }

    fn config(&self, name: &str, metrics: SocketAddr) -> PathBuf {
        let path = self.dir.join(format!("{name}.yaml"));
        let text = format!(
            "interface: eth0\nxdp_mode: skb\nmetrics_listen: {metrics}\nadmin_socket: {}\npin_path: {PIN}\n\
             ha: {{ track_file: {}, route_table: {TABLE}, withdraw_wait: 1500ms }}\n\
             health_check_defaults: {{ kind: tcp, port: 80, interval: 100ms, timeout: 80ms, rise: 2, fall: 3 }}\n\
             vips:\n\
             \x20 - {{ name: web4, address: {VIP4}, port: 80, backends: [{{ name: b1, address: 10.96.0.11 }}] }}\n\
             \x20 - {{ name: web6, address: \"{VIP6}\", port: 80, backends: [{{ name: b1, address: \"fd96::11\" }}] }}\n",
            self.dir.join(format!("{name}.sock")).display(),
            self.track_file().display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn track_file(&self) -> PathBuf {
        self.dir.join("vrrp.track")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Self::down();
    }
}

/// TCP listeners on port 80 of the node, IPv4 and IPv6: its health checks pass.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start() -> Self {
        let listeners: Vec<TcpListener> = ["10.96.0.11:80", "[fd96::11]:80"]
            .iter()
            .map(|a| {
                let sa: SocketAddr = a.parse().unwrap();
                let l = in_netns(Some(NODE), move || Ok(TcpListener::bind(sa)?)).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for l in &listeners {
                    if let Ok((s, _)) = l.accept() {
                        drop(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // Settle neighbour discovery before xdplb probes: right after a link comes
        // up, a first IPv6 contact can stall for a SYN retransmission (see e2e.rs,
        // warm_neighbours), and the start would decide the node down.
        for target in ["10.96.0.11:80", "[fd96::11]:80"] {
            let target: SocketAddr = target.parse().unwrap();
            in_netns(Some(LB), move || {
                Ok(std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?)
            })
            .unwrap();
        }
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Our routes in the lb's table: `ip route show table 100` destinations.
fn routes() -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        // The kernel drops a table with its last route: "table does not exist" is an
        // empty table (seen once when the dump raced the withdrawal).
        let text = match ns_sh(LB, &["ip", family, "route", "show", "table", TABLE]) {
            Ok(text) => text,
            Err(e) if format!("{e:#}").contains("FIB table does not exist") => String::new(),
            Err(e) => panic!("{e:#}"),
        };
        out.extend(
            text.lines().map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
        );
    }
    out.sort();
    out
}

fn announced(net: &Net) -> bool {
    std::fs::read_to_string(net.track_file()).is_ok_and(|t| t == "0\n")
        && routes() == [format!("blackhole {VIP4}"), format!("blackhole {VIP6}")]
}

fn withdrawn(net: &Net) -> bool {
    std::fs::read_to_string(net.track_file()).is_ok_and(|t| t == "1\n") && routes().is_empty()
}

fn wait(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// `xdplb status --socket` from the command line: (exit ok, stdout).
fn status_cli(socket: &Path) -> (bool, String) {
    let out =
        Command::new(binary().unwrap()).args(["status", "--socket"]).arg(socket).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The XDP program running on the lb's eth0 in skb mode, per the kernel.
fn running_program() -> Option<u32> {
    let text = ns_sh(LB, &["ip", "-d", "link", "show", "eth0"]).unwrap();
    let at = text.find("prog/xdp id ")?;
    text[at + 12..].split_whitespace().next()?.parse().ok()
}

#[test]
fn the_balancer_reports_why_it_cannot_forward_and_withdraws_from_the_engines() {
    if !have_root("xdplb run in network namespaces") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let _listener = Listener::start();
    let metrics: SocketAddr = "127.0.0.1:19651".parse().unwrap();
    let config = net.config("lb", metrics);
    let socket = net.dir.join("lb.sock");
    let mut daemon = Daemon::start(LB, &config, &socket, metrics, &["--detach-on-exit"]).unwrap();
    let took = wait("announced", Duration::from_secs(15), || announced(&net));
    eprintln!("healthy and announced {took:?} after the start");
    let (code, body) = daemon.http_get("/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (ok, text) = status_cli(&socket);
    assert!(ok, "{text}");
    assert!(text.contains("\nhealth: ok\n"), "{text}");
    assert!(text.contains(" ring ") && text.contains("(1 backend)"), "{text}");
    let (_, metrics_text) = daemon.http_get("/metrics").unwrap();
    assert!(metrics_text.contains("xdplb_healthy 1"), "{metrics_text}");
    assert!(metrics_text.contains("xdplb_balancer_announced 1"));
    assert!(metrics_text.contains("xdplb_vip_ring_info{digest=\""));
    let ours = running_program().expect("our program on eth0");

    // A second xdplb on the same pins and interface refuses before it touches the link.
    let second_config = net.config("second", "127.0.0.1:19652".parse().unwrap());
    let mut second = Command::new(binary().unwrap());
    second.args(["run", "--config"]).arg(&second_config);
    exec_in_netns(&mut second, LB).unwrap();
    let second = second.output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains(&format!("another xdplb is running with pin_path {PIN}")), "{err}");
    assert_eq!(running_program(), Some(ours), "the running program was not replaced");
    assert_eq!(daemon.http_get("/healthz").unwrap().0, 200, "the running one stays healthy");
    assert!(announced(&net));

    // The link loses its carrier: failing, withdrawn, and back when it returns.
    ns_sh(NODE, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let took = wait("withdrawn after the carrier loss", Duration::from_secs(5), || withdrawn(&net));
    eprintln!("carrier lost: withdrawn after {took:?}");
    let (code, body) = daemon.http_get("/healthz").unwrap();
    // The node's checks fail too by now on a slow machine: a warning line may follow.
    assert_eq!((code, body.lines().next()), (503, Some("interface eth0 has no carrier")), "{body}");
    let (ok, text) = status_cli(&socket);
    assert!(!ok, "xdplb status exits 1 while failing: {text}");
    assert!(text.contains("health: FAILING: interface eth0 has no carrier"), "{text}");
    ns_sh(NODE, &["ip", "link", "set", "eth0", "up"]).unwrap();
    wait("announced after the carrier returned", Duration::from_secs(10), || announced(&net));

    // Someone detaches our program: the kernel's view is what counts.
    let links = sh(&["bpftool", "-j", "link", "show"]).unwrap();
    // [{"id":785,"type":"xdp","prog_id":3632},...]
    let link_id = links
        .split('{')
        .find(|l| l.contains("\"type\":\"xdp\"") && l.contains(&format!("\"prog_id\":{ours}}}")))
        .and_then(|l| l.strip_prefix("\"id\":")?.split(',').next())
        .unwrap_or_else(|| panic!("no XDP link of program {ours} in:\n{links}"))
        .to_owned();
    sh(&["bpftool", "link", "detach", "id", &link_id]).unwrap();
    wait("withdrawn after the detach", Duration::from_secs(5), || withdrawn(&net));
    let (code, body) = daemon.http_get("/healthz").unwrap();
    assert_eq!(code, 503);
    let first = body.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("no XDP program runs on eth0 in skb mode (ours is {ours})"),
        "{body}"
    );
    daemon.stop().unwrap();
    drop(daemon);

    // A fresh daemon; a planned stop withdraws at once and forwards on meanwhile.
    Net::down();
    let net = Net::up();
    let _listener = Listener::start();
    let config = net.config("lb", metrics);
    let mut daemon = Daemon::start(LB, &config, &socket, metrics, &["--detach-on-exit"]).unwrap();
    wait("announced", Duration::from_secs(15), || announced(&net));
    let pid = i32::try_from(daemon.pid().unwrap()).unwrap();
    let t_term = Instant::now();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let took = wait("withdrawn by the planned stop", Duration::from_secs(2), || withdrawn(&net));
    let (code, body) = daemon.http_get("/healthz").unwrap();
    assert_eq!((code, body.as_str()), (503, "stopping: withdrawn for a planned stop\n"));
    assert!(running_program().is_some(), "still forwarding while the routers converge");
    let exited = wait("the exit after the withdraw wait", Duration::from_secs(10), || {
        daemon.exited().unwrap()
    });
    let lived = t_term.elapsed();
    eprintln!("planned stop: withdrawn after {took:?}, exited after {lived:?}");
    assert!(
        lived >= Duration::from_millis(1500),
        "exited {lived:?} after SIGTERM, before the wait"
    );
    let _ = exited;
    let log = daemon.stop().unwrap();
    assert!(log.contains("planned stop: withdrawn"), "{log}");
    assert!(withdrawn(&net), "still withdrawn after the exit");
}
