//! Restarts and upgrades of `xdplb run`, in a network namespace of its own: a
//! restart whose config names another interface or XDP mode than the pinned
//! link's moves the program; pins of another layout or size, or a partial set,
//! are refused with what to do; a SIGHUP during start-up does not kill the
//! daemon; `--detach-on-exit` detaches while metrics connections are open.
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::EbpfLoader;
use lb_common::map_names;
use lb_userspace::{
    admin::{Request, Response},
    loader, netlink, objects, pins,
};
use xdplb_tests::{
    daemon::{Daemon, binary},
    lab::{
        in_netns,
        sh::{cmd, ns_sh, quietly, sh},
    },
    privilege::have_root,
    serial::Serial,
};

const NS: &str = "xrs-lb";
const PIN: &str = "/sys/fs/bpf/xdplb-test-restart";
const METRICS: &str = "127.0.0.1:19651";

/// Namespace `xrs-lb` with `eth0` and `eth1` (veth peers of `xrs-h0`/`xrs-h1`);
/// one test at a time has it (the tests of this file run on threads of one process).
struct Net {
    serial: Serial,
}

static NET: Mutex<()> = Mutex::new(());

impl Net {
    fn up() -> Self {
        let serial = Serial::take(&NET, "xdplb-test-restart", Self::down);
        sh(&["ip", "netns", "add", NS]).unwrap();
        for (i, inner) in ["eth0", "eth1"].iter().enumerate() {
            let host = format!("xrs-h{i}");
            sh(&["ip", "link", "add", &host, "type", "veth", "peer", "name", inner, "netns", NS])
                .unwrap();
            sh(&["ip", "link", "set", &host, "up"]).unwrap();
            ns_sh(NS, &["ip", "addr", "add", &format!("10.98.{i}.1/24"), "dev", inner]).unwrap();
            ns_sh(NS, &["ip", "link", "set", inner, "up"]).unwrap();
        }
        ns_sh(NS, &["ip", "link", "set", "lo", "up"]).unwrap();
        Self { serial }
    }

    fn down() {
        quietly(&mut cmd(&["ip", "netns", "del", NS]));
        for host in ["xrs-h0", "xrs-h1"] {
            quietly(&mut cmd(&["ip", "link", "del", host]));
        }
        let _ = loader::remove_pins(Path::new(PIN));
    }

    /// Writes the config (interface, xdp_mode) and returns its path.
    fn config(&self, interface: &str, mode: &str) -> PathBuf {
        let path = self.serial.dir.join("xdplb.yaml");
        std::fs::write(
            &path,
            format!(
                "interface: {interface}\nxdp_mode: {mode}\nmetrics_listen: {METRICS}\n\
                 admin_socket: {}\npin_path: {PIN}\n\
                 health_check_defaults: {{ kind: tcp, port: 80, interval: 100ms, timeout: 80ms }}\n\
                 vips:\n  - name: web\n    address: 10.98.100.1\n    port: 80\n    backends:\n\
                 \x20     - {{ name: b1, address: 10.98.0.11 }}\n",
                self.socket().display()
            ),
        )
        .unwrap();
        path
    }

    fn socket(&self) -> PathBuf {
        self.serial.dir.join("admin.sock")
    }

    fn start(&self, config: &Path, extra: &[&str]) -> Daemon {
        Daemon::start(NS, config, &self.socket(), METRICS.parse().unwrap(), extra).unwrap()
    }
}

/// Which interfaces of the namespace run XDP, and in which mode.
fn xdp_in_ns() -> Vec<(String, &'static str)> {
    let attached = in_netns(Some(NS), netlink::xdp_attached).unwrap();
    attached
        .into_iter()
        .map(|a| (a.name, if a.driver.is_some() { "driver" } else { "skb" }))
        .collect()
}

fn running(d: &Daemon) {
    d.wait_until("status says attached", Duration::from_secs(15), |d| {
        d.status().is_ok_and(|s| s.contains("xdp: attached"))
    })
    .unwrap();
}

#[test]
fn a_restart_with_another_interface_or_mode_moves_the_program_there() {
    if !have_root("xdplb run in a network namespace") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let mut d = net.start(&net.config("eth0", "skb"), &[]);
    running(&d);
    d.stop().unwrap();
    assert_eq!(xdp_in_ns(), [("eth0".to_owned(), "skb")], "stays attached after the run");

    let mut d = net.start(&net.config("eth1", "skb"), &[]);
    running(&d);
    assert_eq!(xdp_in_ns(), [("eth1".to_owned(), "skb")], "moved to eth1, gone from eth0");
    let log = d.stop().unwrap();
    assert!(log.contains("moved from eth0 to eth1"), "{log}");

    let mut d = net.start(&net.config("eth1", "driver"), &[]);
    running(&d);
    assert_eq!(xdp_in_ns(), [("eth1".to_owned(), "driver")], "re-attached in driver mode");
    let log = d.stop().unwrap();
    assert!(log.contains("re-attached to eth1 in Driver mode (was Skb)"), "{log}");
    drop(net);
}

/// Pins as an xdplb would leave them, but with a connection table of 8192
/// entries (another size than this build's).
fn pin_maps_with_a_small_connection_table() {
    let dir = pins::maps_dir(Path::new(PIN));
    loader::ensure_bpffs(&dir).unwrap();
    let paths: Vec<(&str, PathBuf)> = pins::OBJECT_MAPS.iter().map(|m| (*m, dir.join(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, entries) in lb_userspace::conn_table::Configured::of(8192).max_entries() {
        loader.map_max_entries(name, entries);
    }
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    drop(loader.load(objects::XDP_LB).unwrap());
}

#[test]
fn pins_of_another_size_or_a_partial_set_are_refused_with_what_to_do() {
    if !have_root("xdplb run in a network namespace") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    pin_maps_with_a_small_connection_table();
    let mut d = net.start(&net.config("eth0", "skb"), &[]);
    let (code, log) = d.wait_exit(Duration::from_secs(15)).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("/maps/FLOWS4 holds 8192 entries, conn_table_size asks for 1048576"),
        "{log}"
    );
    assert!(log.contains(&format!("xdplb detach --pin-path {PIN}")), "{log}");
    assert!(xdp_in_ns().is_empty(), "nothing attached");
    assert!(pins::map_path(Path::new(PIN), map_names::CONNS).exists(), "the pins are left alone");

    // The config that sized them adopts them; status shows the size, use and
    // each CPU's share of the IPv6 LRU; a reload that resizes the table is refused.
    let sized = net.config("eth0", "skb");
    let text = std::fs::read_to_string(&sized).unwrap();
    std::fs::write(&sized, format!("conn_table_size: 8192\n{text}")).unwrap();
    let mut d = net.start(&sized, &[]);
    running(&d);
    let status = d.status().unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let line = status.lines().find(|l| l.starts_with("connection table: ")).unwrap_or_default();
    assert!(
        line.starts_with("connection table: 0 of 10240 entries in use (0.0%, counted"),
        "{status}"
    );
    assert!(
        line.contains("IPv4 0 of 8192 (sets of 4, shared by all CPUs), IPv6 0 of 2048;"),
        "{status}"
    );
    let share = format!("; LRU per CPU: {} IPv6 entries on each of {cpus} CPUs", 2048 / cpus);
    assert!(line.ends_with(&share), "{status}");
    let metric = |name| d.metric(name, &[]).unwrap();
    assert!((metric("xdplb_conntrack_capacity") - 10240.0).abs() < 0.5);
    assert!(metric("xdplb_conntrack_entries").abs() < 0.5);
    let family = |f| d.metric("xdplb_conntrack_family_capacity", &[("family", f)]).unwrap();
    assert!((family("ipv4") - 8192.0).abs() < 0.5 && (family("ipv6") - 2048.0).abs() < 0.5);
    std::fs::write(&sized, format!("conn_table_size: 16384\n{text}")).unwrap();
    let answer = d.admin(&Request::Reload).unwrap();
    assert_eq!(
        answer,
        Response::Error("config not reloaded: changing conn_table_size needs a restart".into())
    );
    d.stop().unwrap();
    // The IPv6 table has a size of its own: another one is refused naming its key.
    std::fs::write(&sized, format!("conn_table_size: 8192\nconn_table_size_v6: 4096\n{text}"))
        .unwrap();
    let mut d = net.start(&sized, &[]);
    let (code, log) = d.wait_exit(Duration::from_secs(15)).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(
            "/maps/CONNS holds 2048 entries, conn_table_size_v6 (default: a quarter of \
             conn_table_size) asks for 4096"
        ),
        "{log}"
    );

    // A complete set from a run, then one map lost: refused, not mixed with a fresh one.
    loader::remove_pins(Path::new(PIN)).unwrap();
    let mut d = net.start(&net.config("eth0", "skb"), &[]);
    running(&d);
    d.stop().unwrap();
    std::fs::remove_file(pins::map_path(Path::new(PIN), map_names::RINGS)).unwrap();
    let mut d = net.start(&net.config("eth0", "skb"), &[]);
    let (code, log) = d.wait_exit(Duration::from_secs(15)).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("holds only part of a balancer's pinned maps (missing: RINGS"), "{log}");
    drop(net);
}

#[test]
fn a_sighup_during_start_up_does_not_kill_the_daemon() {
    if !have_root("xdplb run in a network namespace") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let mut d = net.start(&net.config("eth0", "skb"), &[]);
    // The process must have reached its own code (a signal before `main` runs
    // meets the default action whatever a program does): its SIGHUP shows as
    // blocked or caught, or 100 ms have passed, whichever is first.
    let status = format!("/proc/{}/status", d.pid().unwrap());
    let hangup_bit = 1u64 << (libc::SIGHUP - 1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let mask = |field: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        if (mask("SigBlk:") | mask("SigCgt:")) & hangup_bit != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // HUP every few milliseconds until the admin socket answers: several land
    // while the maps are loaded and the program attached.
    let mut sent = 0;
    while d.status().is_err() && start.elapsed() < Duration::from_secs(15) {
        d.signal(libc::SIGHUP)
            .unwrap_or_else(|e| panic!("after {sent} HUPs: {e}\n{}", d.log_text()));
        sent += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(sent > 1, "no HUP landed during start-up");
    running(&d);
    d.wait_until("the HUP answered with a reload", Duration::from_secs(10), |d| {
        d.log_text().contains("config reloaded")
    })
    .unwrap();
    d.stop().unwrap();
    drop(net);
}

#[test]
fn detach_on_exit_detaches_while_metrics_connections_are_open() {
    if !have_root("xdplb run in a network namespace") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let mut d = net.start(&net.config("eth0", "skb"), &["--detach-on-exit"]);
    running(&d);
    let addr: SocketAddr = METRICS.parse().unwrap();
    // Three open connections: one idle, one with half a request, one reading a scrape.
    let open = in_netns(Some(NS), move || {
        let idle = TcpStream::connect(addr)?;
        let mut half = TcpStream::connect(addr)?;
        half.write_all(b"GET /metrics HTTP/1.1\r\n")?;
        let mut full = TcpStream::connect(addr)?;
        full.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        Ok(vec![idle, half, full])
    })
    .unwrap();
    let log = d.stop().unwrap();
    assert!(log.contains("detached xdp_lb from eth0 and removed the pins"), "{log}");
    assert!(xdp_in_ns().is_empty(), "XDP detached");
    assert!(!Path::new(PIN).exists(), "pins removed");
    drop(open);
    drop(net);
}

#[test]
fn xdplb_detach_says_what_it_found_and_removed() {
    if !have_root("xdplb run in a network namespace") {
        return;
    }
    let bin = binary().expect("the xdplb binary");
    let net = Net::up();
    let detach = |netns: bool| {
        let mut c = if netns {
            cmd(&["ip", "netns", "exec", NS, &bin.to_string_lossy()])
        } else {
            cmd(&[&bin.to_string_lossy()])
        };
        let out = c.args(["detach", "--pin-path", PIN]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = detach(false);
    assert!(said.starts_with(&format!("nothing pinned in {PIN}: nothing removed")), "{said}");

    // A stopped daemon leaves its pins (and XDP attached through the link pin).
    let mut d = net.start(&net.config("eth0", "skb"), &[]);
    running(&d);
    d.stop().unwrap();
    assert!(Path::new(PIN).exists(), "pins left by the daemon");
    // `ip netns exec` remounts /sys: the host's pins are out of sight there.
    let said = detach(true);
    assert!(said.starts_with(&format!("nothing pinned in {PIN}: nothing removed")), "{said}");
    assert!(said.contains("ip netns exec"), "{said}");
    assert!(Path::new(PIN).exists(), "the pins are still there");
    assert_eq!(xdp_in_ns().len(), 1, "still attached");

    let said = detach(false);
    assert_eq!(
        said.trim_end(),
        format!("removed the pins in {PIN} (XDP detaches once no xdplb runs)")
    );
    assert!(!Path::new(PIN).exists(), "pins removed");
    assert!(xdp_in_ns().is_empty(), "XDP detached");
    drop(net);
}
