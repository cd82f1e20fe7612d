//! The network-namespace lab itself: what `cargo xtask lab up` promises before any
//! balancer runs in it. Needs root; skipped otherwise (failed under CI=true).
//! The tests share names (namespaces, bridge, pins), so they take turns: a
//! static lock here, and `LabGuard`'s lock file across processes.
#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use etherparse::PacketBuilder;
use xdplb_tests::{
    lab::{
        self, BRIDGE, CLIENT4, CLIENT6, LAB_DIR, LINK_PREFIX, Lab, LabConfig, LabGuard, Mode,
        NS_CLIENT, NS_IF, NS_LB, Node, PIN_DIR, UDP_PORT, VIP4, VIP6, in_netns, waf_ns, waf4, waf6,
    },
    privilege::have_root,
};

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    // A failed test must not fail the others through poisoning.
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

const T: Duration = Duration::from_secs(2);

fn lab_with(mode: Mode, wafs: usize) -> LabGuard {
    LabGuard::up(&LabConfig { mode, wafs, ha: None }).expect("lab up")
}

/// One datagram from a socket in `ns` to `to`, the reply and who sent it.
fn udp_ask(ns: &str, to: SocketAddr) -> Result<(String, SocketAddr)> {
    in_netns(Some(ns), || {
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let s = UdpSocket::bind(any)?;
        s.set_read_timeout(Some(T))?;
        s.send_to(b"who?", to)?;
        let mut buf = [0u8; 64];
        let (n, from) =
            s.recv_from(&mut buf).with_context(|| format!("no UDP answer from {to} in {ns}"))?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}

/// XDP program name on `ifname` in `ns`, per bpftool's view of `ip -d link`.
fn xdp_prog(ns: Option<&str>, ifname: &str) -> Option<String> {
    let mut c = match ns {
        Some(ns) => lab::sh::in_ns(ns, &["ip", "-d", "-o", "link", "show", "dev", ifname]),
        None => lab::sh::cmd(&["ip", "-d", "-o", "link", "show", "dev", ifname]),
    };
    let text = lab::sh::run(&mut c).expect("ip link show");
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| w.starts_with("prog/xdp"))?;
    assert_eq!(words.get(at + 1), Some(&"id"), "{text}");
    let id = words[at + 2];
    let prog = lab::sh::sh(&["bpftool", "prog", "show", "id", id]).expect("bpftool prog show");
    let w: Vec<&str> = prog.split_whitespace().collect();
    let name = w.iter().position(|x| *x == "name").map(|i| w[i + 1].to_owned());
    name.or_else(|| Some(format!("id {id}")))
}

#[test]
fn lab_up_gives_a_client_that_reaches_every_waf_directly() {
    if !have_root("lab_up_gives_a_client_that_reaches_every_waf_directly") {
        return;
    }
    let _turn = turn();
    let lab = lab_with(Mode::Dsr, 3);
    for k in lab.wafs() {
        let name = waf_ns(k);
        for url in [format!("http://{}/", waf4(k)), format!("http://[{}]/", waf6(k))] {
            assert_eq!(lab.curl(NS_CLIENT, &url, T).expect("curl"), format!("{name}\n"), "{url}");
        }
        assert_eq!(
            lab.curl(NS_LB, &format!("http://{}/healthz", waf4(k)), T).expect("healthz"),
            "ok\n"
        );
        // UDP: the responder answers from the address the datagram was sent to...
        for addr in [IpAddr::from(waf4(k)), waf6(k).into()] {
            let to = SocketAddr::new(addr, UDP_PORT);
            let (reply, from) = udp_ask(NS_CLIENT, to).expect("udp");
            assert_eq!((reply.as_str(), from), (format!("{name}\n").as_str(), to));
        }
        // ...which for the VIP (held on lo, as DSR needs) is the VIP.
        for vip in [IpAddr::from(VIP4), VIP6.into()] {
            let to = SocketAddr::new(vip, UDP_PORT);
            assert_eq!(udp_ask(&name, to).expect("udp to the VIP"), (format!("{name}\n"), to));
        }
        assert_eq!(
            lab.curl(&name, &format!("http://{VIP4}/"), T).expect("VIP on lo"),
            format!("{name}\n")
        );
    }
    // The client sends the VIPs to the lb (its MAC), the lb does not own them.
    let routes = lab.exec_ok(NS_CLIENT, &["ip", "route", "get", &VIP4.to_string()]).expect("route");
    assert!(routes.contains(&format!("via {}", lab::LB4)), "{routes}");
    let lb_addrs = lab.exec_ok(NS_LB, &["ip", "addr"]).expect("ip addr");
    assert!(
        !lb_addrs.contains(&VIP4.to_string()) && !lb_addrs.contains(&VIP6.to_string()),
        "{lb_addrs}"
    );
    // The frames the lb will XDP_TX land on a veth that runs XDP; its own eth0 is free.
    assert_eq!(xdp_prog(None, &Node::Lb.veth()).as_deref(), Some("xdp_pass"));
    assert_eq!(xdp_prog(Some(NS_LB), NS_IF), None);
    assert_eq!(xdp_prog(Some(NS_CLIENT), NS_IF).as_deref(), Some("xdp_pass"));
    let status = lab.status();
    assert!(status.contains("dsr mode, 3 WAF nodes"), "{status}");
    assert_eq!(status.matches("/healthz from lb: ok").count(), 3, "{status}");
}

/// Sends `inner` (an IP packet) from namespace `ns` to `outer_dst` inside an outer
/// IPv4 (IPIP) or IPv6 (IP6IP6) header, as xdp-lb does in ipip mode from the lb.
fn send_encapsulated(ns: &str, outer_dst: IpAddr, inner: &[u8]) -> Result<()> {
    in_netns(Some(ns), || {
        let (family, proto) = match outer_dst {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_IPIP),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_IPV6),
        };
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero sockaddrs are valid; each is passed with its own size.
        let rc = unsafe {
            match outer_dst {
                IpAddr::V4(a) => {
                    let mut sa: libc::sockaddr_in = std::mem::zeroed();
                    sa.sin_family = libc::AF_INET as libc::sa_family_t;
                    sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                    libc::sendto(
                        fd.as_raw_fd(),
                        inner.as_ptr().cast(),
                        inner.len(),
                        0,
                        (&raw const sa).cast(),
                        size_of_val(&sa) as u32,
                    )
                }
                IpAddr::V6(a) => {
                    let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sa.sin6_addr.s6_addr = a.octets();
                    libc::sendto(
                        fd.as_raw_fd(),
                        inner.as_ptr().cast(),
                        inner.len(),
                        0,
                        (&raw const sa).cast(),
                        size_of_val(&sa) as u32,
                    )
                }
            }
        };
        ensure!(rc >= 0, "sendto {outer_dst}: {}", std::io::Error::last_os_error());
        Ok(())
    })
}

#[test]
fn lab_ipip_mode_attaches_decap_on_every_waf() {
    if !have_root("lab_ipip_mode_attaches_decap_on_every_waf") {
        return;
    }
    let _turn = turn();
    let lab = lab_with(Mode::Ipip, 2);
    for k in lab.wafs() {
        let ns = waf_ns(k);
        assert_eq!(xdp_prog(Some(&ns), NS_IF).as_deref(), Some("xdp_decap"), "{ns}");
        // Plain traffic still passes.
        assert_eq!(
            lab.curl(NS_CLIENT, &format!("http://{}/", waf4(k)), T).expect("curl"),
            format!("{ns}\n")
        );
        // An encapsulated datagram from the client to the VIP, sent by the lb to the
        // node's own address, is decapsulated and answered to the client from the VIP.
        for (vip, client, outer) in [
            (IpAddr::from(VIP4), IpAddr::from(CLIENT4), IpAddr::from(waf4(k))),
            (VIP6.into(), CLIENT6.into(), waf6(k).into()),
        ] {
            let client_sock = in_netns(Some(NS_CLIENT), || {
                let s = UdpSocket::bind(SocketAddr::new(client, 0))?;
                s.set_read_timeout(Some(T))?;
                Ok(s)
            })
            .expect("client socket");
            let port = client_sock.local_addr().expect("port").port();
            let builder = match (client, vip) {
                (IpAddr::V4(c), IpAddr::V4(v)) => PacketBuilder::ipv4(c.octets(), v.octets(), 64),
                (IpAddr::V6(c), IpAddr::V6(v)) => PacketBuilder::ipv6(c.octets(), v.octets(), 64),
                _ => unreachable!(),
            };
            let mut inner = vec![];
            builder.udp(port, UDP_PORT).write(&mut inner, b"who?").expect("inner packet");
            // UDP may lose the first datagram while neighbour discovery completes: retry.
            let mut buf = [0u8; 64];
            let mut got = None;
            for _ in 0..5 {
                send_encapsulated(NS_LB, outer, &inner).expect("send");
                if let Ok(r) = client_sock.recv_from(&mut buf) {
                    got = Some(r);
                    break;
                }
            }
            let (n, from) = got.unwrap_or_else(|| panic!("{ns} via {outer}: no answer to 5 tries"));
            assert_eq!(
                (&buf[..n], from),
                (format!("{ns}\n").as_bytes(), SocketAddr::new(vip, UDP_PORT))
            );
            // The same datagram tunnelled by the client itself (a host that is not a
            // balancer, forging a client address) is dropped by xdp_decap.
            send_encapsulated(NS_CLIENT, outer, &inner).expect("send");
            client_sock.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
            assert!(
                client_sock.recv_from(&mut buf).is_err(),
                "{ns}: a tunnel packet from the client was decapsulated"
            );
        }
    }
    assert_eq!(xdp_prog(None, &Node::Lb.veth()).as_deref(), Some("xdp_pass"));
    assert!(lab.status().contains("xdp_decap"), "{}", lab.status());
}

fn leftovers() -> Vec<String> {
    let mut found = vec![];
    let netns = lab::sh::sh(&["ip", "netns", "list"]).expect("ip netns list");
    found.extend(
        netns
            .lines()
            .filter(|l| lab::is_lab_ns(l.split_whitespace().next().unwrap_or("")))
            .map(|l| format!("netns {l}")),
    );
    let links = lab::sh::sh(&["ip", "-o", "link", "show"]).expect("ip link");
    found.extend(
        links
            .lines()
            .filter(|l| l.contains(&format!(": {LINK_PREFIX}")))
            .map(|l| format!("link {l}")),
    );
    for dir in [PIN_DIR, LAB_DIR] {
        if std::path::Path::new(dir).exists() {
            found.push(format!("dir {dir}"));
        }
    }
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = entry.file_name();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Killed daemons are init's children: a zombie until init reaps it is gone enough.
        let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
        if !zombie && comm.starts_with("xlb-udp-")
            || String::from_utf8_lossy(&cmdline).contains(LAB_DIR)
        {
            found.push(format!("process {} {comm}", pid.to_string_lossy()));
        }
    }
    found
}

#[test]
fn lab_down_removes_every_namespace_link_and_pin() {
    if !have_root("lab_down_removes_every_namespace_link_and_pin") {
        return;
    }
    let _turn = turn();
    // Other processes' labs wait too (the `lab` binary below takes no lock itself).
    let _lock = lab::lock().expect("lab lock");
    // Built by the `lab` binary, which exits: what it made must persist...
    let bin = env!("CARGO_BIN_EXE_lab");
    for _ in 0..2 {
        // ...and `up` twice leaves one lab.
        let out = Command::new(bin).args(["up", "--wafs", "2"]).output().expect("lab up");
        assert!(out.status.success(), "lab up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lab = Lab::current().expect("state").expect("a lab");
    assert_eq!(*lab.config(), LabConfig { mode: Mode::Dsr, wafs: 2, ha: None });
    let netns = lab::sh::sh(&["ip", "netns", "list"]).expect("ip netns");
    let ours = netns
        .lines()
        .filter(|l| lab::is_lab_ns(l.split_whitespace().next().unwrap_or_default()))
        .count();
    assert_eq!(ours, 4, "client, lb, waf1, waf2:\n{netns}");
    for k in lab.wafs() {
        assert_eq!(
            xdp_prog(Some(&waf_ns(k)), NS_IF).as_deref(),
            Some("xdp_pass"),
            "link gone with its process"
        );
        assert_eq!(
            lab.curl(NS_CLIENT, &format!("http://{}/", waf4(k)), T).expect("curl"),
            format!("waf{k}\n")
        );
        let (reply, _) =
            udp_ask(NS_CLIENT, SocketAddr::new(waf4(k).into(), UDP_PORT)).expect("udp");
        assert_eq!(reply, format!("waf{k}\n"));
    }
    let pins = std::fs::read_dir(PIN_DIR).expect("pins").count();
    assert_eq!(pins, 4, "xlb-lb, client, waf1, waf2");
    assert!(leftovers().iter().any(|l| l.starts_with("process")));
    // As after a crash: nothing of that process is left but the lab itself.
    Lab::down().expect("down");
    assert_eq!(leftovers(), Vec::<String>::new());
    assert!(lab::sh::sh(&["ip", "link", "show", BRIDGE]).is_err());
    Lab::down().expect("down again is a no-op");
    let out = Command::new(bin).arg("status").output().expect("lab status");
    assert!(String::from_utf8_lossy(&out.stdout).contains("down"), "{out:?}");
}

/// How a TCP connect from the lb to `addr:80` ends.
fn connect_from_lb(addr: IpAddr) -> Result<ErrorKind> {
    in_netns(Some(NS_LB), || {
        match TcpStream::connect_timeout(&SocketAddr::new(addr, 80), Duration::from_secs(1)) {
            Ok(_) => bail!("connected"),
            Err(e) => Ok(e.kind()),
        }
    })
}

#[test]
fn cut_link_makes_a_waf_silent_not_refusing() {
    if !have_root("cut_link_makes_a_waf_silent_not_refusing") {
        return;
    }
    let _turn = turn();
    let lab = lab_with(Mode::Dsr, 2);
    lab.cut_link(1).expect("cut");
    assert!(lab.is_cut(1));
    for addr in [IpAddr::from(waf4(1)), waf6(1).into()] {
        assert_eq!(connect_from_lb(addr).expect("connect"), ErrorKind::TimedOut, "{addr}");
    }
    let out = lab
        .exec(NS_CLIENT, &["curl", "-sS", "-m", "1", &format!("http://{}/", waf4(1))])
        .expect("curl");
    assert_eq!(out.status.code(), Some(28), "curl times out: {out:?}");
    assert!(udp_ask(NS_CLIENT, SocketAddr::new(waf4(1).into(), UDP_PORT)).is_err());
    assert!(lab.status().contains("LINK CUT"));
    // The other node is untouched; the cut one comes back.
    assert_eq!(lab.curl(NS_CLIENT, &format!("http://{}/", waf4(2)), T).expect("waf2"), "waf2\n");
    lab.restore_link(1).expect("restore");
    lab.restore_link(1).expect("restore twice");
    assert_eq!(
        lab.curl(NS_CLIENT, &format!("http://{}/", waf4(1)), T).expect("waf1 back"),
        "waf1\n"
    );

    // A stopped node, by contrast, refuses at once.
    lab.stop_waf(2).expect("stop");
    for addr in [IpAddr::from(waf4(2)), waf6(2).into()] {
        assert_eq!(connect_from_lb(addr).expect("connect"), ErrorKind::ConnectionRefused, "{addr}");
    }
    assert!(lab.status().contains("nginx: DOWN"));
    lab.start_waf(2).expect("start");
    assert_eq!(
        lab.curl(NS_CLIENT, &format!("http://[{}]/", waf6(2)), T).expect("waf2 back"),
        "waf2\n"
    );
    let (reply, _) =
        udp_ask(NS_CLIENT, SocketAddr::new(waf4(2).into(), UDP_PORT)).expect("udp back");
    assert_eq!(reply, "waf2\n");
}
