//! `xdplb run` end to end on veth pairs in network namespaces: the daemon health-
//! checks real listeners, publishes metrics and status, and when a backend's check
//! fails the live maps send its flows elsewhere — observed by running frames
//! through the very maps the daemon writes (BPF_PROG_TEST_RUN).
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Mutex, time::Duration};

use aya::programs::Xdp;
use lb_userspace::{admin::Request, loader};
use xdplb_tests::{
    balancer::{XDP_TX, run_program},
    daemon::{Daemon, binary},
    lab::sh::{cmd, ns_sh, quietly, sh},
    listener::Listener,
    packet::{Flow, decode},
    privilege::have_root,
    serial::Serial,
};

const VIP: &str = "10.97.100.1";
const BACKENDS: [(&str, &str); 3] =
    [("b1", "10.97.0.11"), ("b2", "10.97.0.12"), ("b3", "10.97.0.13")];
const PIN: &str = "/sys/fs/bpf/xdplb-test-controller";

/// Namespaces `xct-lb` (10.97.0.1) and `xct-b1..3`, one veth each into bridge
/// `xct-br`; one test at a time has them (the tests run on threads of one process).
struct Net {
    serial: Serial,
}

static NET: Mutex<()> = Mutex::new(());

impl Net {
    fn up() -> Self {
        let serial = Serial::take(&NET, "xdplb-test-controller", Self::down);
        sh(&["ip", "link", "add", "xct-br", "type", "bridge"]).unwrap();
        sh(&["ip", "link", "set", "xct-br", "up"]).unwrap();
        let nodes = [("lb", "10.97.0.1")].into_iter().chain(BACKENDS);
        for (name, addr) in nodes {
            let ns = format!("xct-{name}");
            let host = format!("xct-{name}-h");
            sh(&["ip", "netns", "add", &ns]).unwrap();
            sh(&["ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns])
                .unwrap();
            sh(&["ip", "link", "set", &host, "master", "xct-br", "up"]).unwrap();
            ns_sh(&ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]).unwrap();
            ns_sh(&ns, &["ip", "link", "set", "eth0", "up"]).unwrap();
            ns_sh(&ns, &["ip", "link", "set", "lo", "up"]).unwrap();
        }
        Self { serial }
    }

    /// Writes the daemon's config (VIP `web` over the three backends, `vip_extra`
    /// added to the VIP) and starts it; waits until the three backends are up and the
    /// balancer is healthy.
    fn daemon(&self, vip_extra: &str) -> Daemon {
        let socket = self.serial.dir.join("admin.sock");
        let metrics: SocketAddr = "127.0.0.1:19650".parse().unwrap();
        let config = self.serial.dir.join("xdplb.yaml");
        let backends = BACKENDS.iter().fold(String::new(), |mut s, (n, a)| {
            let _ = writeln!(s, "      - {{ name: {n}, address: {a} }}");
            s
        });
        std::fs::write(
            &config,
            format!(
                "interface: eth0\nxdp_mode: skb\nmetrics_listen: {metrics}\nadmin_socket: {}\npin_path: {PIN}\n\
                 health_check_defaults: {{ kind: tcp, port: 80, interval: 100ms, timeout: 80ms, rise: 2, fall: 3 }}\n\
                 vips:\n  - name: web\n    address: {VIP}\n    port: 80\n    protocol: tcp\n{vip_extra}    backends:\n{backends}",
                socket.display()
            ),
        )
        .unwrap();
        let daemon = Daemon::start("xct-lb", &config, &socket, metrics, &[]).unwrap();
        daemon
            // Healthy too: the balancer's health, judged every 50 ms, may lag the status.
            .wait_until(
                "three backends up and the balancer healthy",
                Duration::from_secs(15),
                |d| d.healthy_status().is_ok_and(|s| backend_lines_in(&s, "up") == 3),
            )
            .unwrap();
        daemon
    }

    fn down() {
        for name in ["lb", "b1", "b2", "b3"] {
            quietly(&mut cmd(&["ip", "netns", "del", &format!("xct-{name}")]));
            quietly(&mut cmd(&["ip", "link", "del", &format!("xct-{name}-h")]));
        }
        quietly(&mut cmd(&["ip", "link", "del", "xct-br"]));
        let _ = loader::remove_pins(std::path::Path::new(PIN));
    }
}

/// A listener on port 80 in backend `name`'s namespace.
fn listen(name: &str, addr: &str) -> Listener {
    Listener::start(&format!("xct-{name}"), format!("{addr}:80").parse().unwrap()).unwrap()
}

fn mac_of(name: &str) -> [u8; 6] {
    let text = ns_sh(&format!("xct-{name}"), &["cat", "/sys/class/net/eth0/address"]).unwrap();
    lb_userspace::mac::parse(text.trim()).unwrap()
}

/// The daemon's live maps under a second `xdp_lb`, and which backend a frame reaches.
struct Live {
    ebpf: aya::Ebpf,
    macs: BTreeMap<[u8; 6], &'static str>,
    /// The balancer's interface: the program forwards only frames addressed to it.
    lb_mac: [u8; 6],
}

impl Live {
    fn load() -> Self {
        let mut ebpf = loader::load_with_pinned_maps(std::path::Path::new(PIN)).unwrap();
        let prog: &mut Xdp = ebpf.program_mut("xdp_lb").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let macs = BACKENDS.iter().map(|(n, _)| (mac_of(n), *n)).collect();
        Self { ebpf, macs, lb_mac: mac_of("lb") }
    }

    /// The backend `flow`'s frame is sent to.
    fn receiver(&self, flow: &Flow) -> &'static str {
        let prog: &Xdp = self.ebpf.program("xdp_lb").unwrap().try_into().unwrap();
        let run = run_program(prog, &flow.frame_to(self.lb_mac));
        assert_eq!(run.action, XDP_TX, "{flow:?}");
        self.macs[&decode(&run.frame).dst_mac]
    }
}

fn backend_lines_in(status: &str, state: &str) -> usize {
    xdplb_tests::rig::rows(status).iter().filter(|r| r.state == state).count()
}

#[test]
fn xdplb_run_reports_status_and_metrics_and_fails_a_dead_backends_flows_over() {
    if !have_root("xdplb run in network namespaces") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let mut listeners: BTreeMap<&str, Listener> =
        BACKENDS.iter().map(|(n, a)| (*n, listen(n, a))).collect();
    let mut daemon = net.daemon("");

    // Operator views.
    let status = daemon.status().unwrap();
    assert!(status.contains("xdp: attached"), "{status}");
    let (code, body) = daemon.http_get("/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = daemon.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    for (b, _) in BACKENDS {
        let line = format!("xdplb_backend_state{{backend=\"{b}\",state=\"up\",vip=\"web\"}} 1");
        assert!(body.contains(&line), "missing {line}");
    }
    for family in ["xdplb_xdp_actions_total", "xdplb_conntrack_total", "xdplb_vip_packets_total"] {
        assert!(body.contains(family), "missing {family}");
    }

    // The same data path, on the daemon's live maps.
    let live = Live::load();
    let receiver = |flow: &Flow| live.receiver(flow);
    let flows: Vec<Flow> = (0..90).map(|i| Flow::tcp("10.97.0.50", 20000 + i, VIP, 80)).collect();
    let before: Vec<&str> = flows.iter().map(&receiver).collect();
    for (b, _) in BACKENDS {
        assert!(before.contains(&b), "{b} got none of 90 flows: {before:?}");
    }

    // b2's check starts failing (connection refused): it must go down, and its flows move.
    drop(listeners.remove("b2"));
    let took = daemon
        .wait_until("b2 down", Duration::from_secs(5), |d| {
            d.status().is_ok_and(|s| {
                s.lines().any(|l| l.trim_start().starts_with("b2") && l.contains(" down "))
            })
        })
        .unwrap();
    eprintln!("b2 marked down {took:?} after its listener closed");
    for (flow, was) in flows.iter().zip(&before) {
        let now = receiver(&flow.ack());
        assert_ne!(now, "b2", "{flow:?} still goes to the dead backend");
        if *was != "b2" {
            assert_eq!(now, *was, "{flow:?} moved off a live backend");
        }
    }
    for i in 0..90 {
        assert_ne!(
            receiver(&Flow::tcp("10.97.0.51", 30000 + i, VIP, 80)),
            "b2",
            "new flow to the dead backend"
        );
    }
    let (_, body) = daemon.http_get("/metrics").unwrap();
    assert!(
        body.contains("xdplb_backend_transitions_total{backend=\"b2\",to=\"down\",vip=\"web\"} 1"),
        "transition not counted"
    );
    assert!(
        body.contains("xdplb_probe_failures_total{reason=\"refused\",target=\"10.97.0.12:80\"}"),
        "failure reason"
    );
    assert!(body.contains("xdplb_map_write_latency_seconds_count"), "map-write latency");

    // Drain over the admin socket, then stop: XDP and pins stay for the next run.
    assert!(matches!(
        daemon.admin(&Request::Drain { vip: "web".into(), backend: "b3".into() }).unwrap(),
        lb_userspace::admin::Response::Ok(_)
    ));
    let log = daemon.stop().unwrap();
    assert!(log.contains("stays attached"), "{log}");
    assert!(std::path::Path::new(PIN).join("link").exists());
    drop(live);
    drop(net);
    assert!(!std::path::Path::new(PIN).exists(), "pins removed by cleanup");
}

#[test]
fn with_down_flows_keep_and_all_down_fail_open_a_failed_node_keeps_its_flows_and_a_dead_pool_still_serves()
 {
    if !have_root("xdplb run in network namespaces") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let mut listeners: BTreeMap<&str, Listener> =
        BACKENDS.iter().map(|(n, a)| (*n, listen(n, a))).collect();
    let daemon = net.daemon("    down_flows: keep\n    all_down: fail_open\n");

    let live = Live::load();
    let receiver = |flow: &Flow| live.receiver(flow);
    let flows: Vec<Flow> = (0..90).map(|i| Flow::tcp("10.97.0.50", 20000 + i, VIP, 80)).collect();
    let before: Vec<&str> = flows.iter().map(&receiver).collect();
    assert!(before.contains(&"b2"), "{before:?}");

    // b2's check fails: it is down, but its established flows stay on it.
    drop(listeners.remove("b2"));
    daemon
        .wait_until("b2 down-keep", Duration::from_secs(5), |d| {
            d.status().is_ok_and(|s| backend_lines_in(&s, "down-keep") == 1)
        })
        .unwrap();
    for (flow, was) in flows.iter().zip(&before) {
        assert_eq!(receiver(&flow.ack()), *was, "{flow:?} moved (down_flows: keep)");
    }
    for i in 0..90 {
        let new = Flow::tcp("10.97.0.51", 30000 + i, VIP, 80);
        assert_ne!(receiver(&new), "b2", "a new flow to the failed node");
    }

    // Every check fails: the VIP fails open to all three instead of dropping.
    listeners.clear();
    daemon
        .wait_until("web fails open", Duration::from_secs(5), |d| {
            d.status()
                .is_ok_and(|s| s.contains("tier fail_open  all_down fail_open  down_flows keep"))
        })
        .unwrap();
    let got: std::collections::BTreeSet<&str> =
        (0..300).map(|i| receiver(&Flow::tcp("10.97.0.52", 40000 + i, VIP, 80))).collect();
    assert_eq!(got.len(), 3, "new flows spread over every node: {got:?}");
    let (_, body) = daemon.http_get("/metrics").unwrap();
    for line in [
        "xdplb_vip_fail_open{vip=\"web\"} 1",
        "xdplb_vip_all_down{vip=\"web\"} 1",
        "xdplb_vip_all_down_total{vip=\"web\"} 1",
    ] {
        assert!(body.contains(line), "missing {line}");
    }
    assert!(
        daemon.log_text().contains("web: no usable backend; failing open"),
        "{}",
        daemon.log_text()
    );
    drop(live);
    drop(daemon);
    drop(net);
}

#[test]
fn a_backends_new_mac_and_the_interfaces_new_mtu_are_picked_up_while_running() {
    if !have_root("xdplb run in network namespaces") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let _listeners: BTreeMap<&str, Listener> =
        BACKENDS.iter().map(|(n, a)| (*n, listen(n, a))).collect();
    let daemon = net.daemon("");
    let mac_in_status = |d: &Daemon, name: &str| -> Option<String> {
        let status = d.status().ok()?;
        xdplb_tests::rig::rows(&status).into_iter().find(|r| r.backend == name).map(|r| r.mac)
    };
    let old = lb_userspace::mac::format(&mac_of("b2"));
    assert_eq!(mac_in_status(&daemon, "b2").as_deref(), Some(old.as_str()));

    // b2 gets another MAC (a replaced NIC, a moved VM), and the balancer's kernel
    // drops its entry (as it does once it cannot reach the old MAC): the daemon
    // notices the entry gone, solicits it, and follows the new MAC.
    ns_sh("xct-b2", &["ip", "link", "set", "eth0", "address", "02:00:00:00:09:02"]).unwrap();
    ns_sh("xct-lb", &["ip", "neigh", "flush", "dev", "eth0"]).unwrap();
    let took = daemon
        .wait_until("b2's new MAC", Duration::from_secs(20), |d| {
            mac_in_status(d, "b2").as_deref() == Some("02:00:00:00:09:02")
        })
        .unwrap();
    eprintln!("new MAC followed after {took:?}");
    let mut ebpf = loader::load_with_pinned_maps(std::path::Path::new(PIN)).unwrap();
    let prog: &mut Xdp = ebpf.program_mut("xdp_lb").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let lb_mac = mac_of("lb");
    let to_b2 = (0..300)
        .map(|i| {
            let flow = Flow::tcp("10.97.0.50", 20000 + i, VIP, 80);
            decode(&run_program(prog, &flow.frame_to(lb_mac)).frame).dst_mac
        })
        .filter(|m| *m == [2, 0, 0, 0, 9, 2])
        .count();
    assert!(to_b2 > 0, "no flow reaches b2's new MAC");

    // The balancer's interface gets a smaller MTU: the data path's config follows.
    ns_sh("xct-lb", &["ip", "link", "set", "eth0", "mtu", "1400"]).unwrap();
    daemon
        .wait_until("the new MTU", Duration::from_secs(10), |d| {
            d.log_text().contains("interface eth0 changed: MTU 1500 -> 1400")
        })
        .unwrap();
    drop(ebpf);
    drop(daemon);
    drop(net);
}

/// The soak's check (`cargo xtask bench soak`), short: reloads that remove and
/// re-add a backend and a flap of another never move an established flow of a
/// live, unchanged node.
#[test]
fn reloads_and_a_flap_move_no_flow_of_a_live_unchanged_node() {
    if !have_root("xdplb run in network namespaces") {
        return;
    }
    binary().expect("the xdplb binary");
    let net = Net::up();
    let mut listeners: BTreeMap<&str, Listener> =
        BACKENDS.iter().map(|(n, a)| (*n, listen(n, a))).collect();
    // b2 flaps on purpose more often than damping allows.
    let daemon = net.daemon("    health_check: { flap_changes: 0 }\n");
    let config = net.serial.dir.join("xdplb.yaml");
    let with_b3 = std::fs::read_to_string(&config).unwrap();
    let without_b3 = with_b3.replace("      - { name: b3, address: 10.97.0.13 }\n", "");
    assert_ne!(with_b3, without_b3);

    let live = Live::load();
    let receiver = |flow: &Flow| live.receiver(flow);
    let flows: Vec<Flow> = (0..300).map(|i| Flow::tcp("10.97.0.50", 20000 + i, VIP, 80)).collect();
    let mut on: Vec<&str> = flows.iter().map(&receiver).collect();
    // After each step, flows of the nodes it left alone must be where they were.
    let mut check = |step: &str, left_alone: &[&str]| {
        for (flow, was) in flows.iter().zip(on.iter_mut()) {
            let now = receiver(&flow.ack());
            if left_alone.contains(was) {
                assert_eq!(now, *was, "{step}: {flow:?} moved off a live, unchanged node");
            }
            *was = now;
        }
    };
    let reload = |d: &Daemon, text: &str| {
        std::fs::write(&config, text).unwrap();
        assert!(matches!(d.admin(&Request::Reload).unwrap(), lb_userspace::admin::Response::Ok(_)));
    };
    let up = |d: &Daemon, n: usize| {
        d.wait_until("backends up", Duration::from_secs(10), |d| {
            d.status().is_ok_and(|s| backend_lines_in(&s, "up") == n)
        })
        .unwrap();
    };
    for round in 0..3 {
        reload(&daemon, &without_b3);
        check(&format!("round {round}: b3 removed"), &["b1", "b2"]);
        reload(&daemon, &with_b3);
        up(&daemon, 3);
        check(&format!("round {round}: b3 added"), &["b1", "b2"]);
        drop(listeners.remove("b2"));
        up(&daemon, 2);
        check(&format!("round {round}: b2 down"), &["b1", "b3"]);
        listeners.insert("b2", listen("b2", "10.97.0.12"));
        up(&daemon, 3);
        check(&format!("round {round}: b2 back"), &["b1", "b3"]);
    }
    assert!(on.contains(&"b1"), "b1 kept some flows throughout: {on:?}");
    drop(live);
    drop(daemon);
    drop(net);
}
