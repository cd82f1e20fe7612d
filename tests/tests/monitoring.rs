//! The Prometheus/Grafana kit against the real thing: Debian's `prometheus` scrapes
//! `xdplb run` in the lab with the rules of deploy/prometheus/rules loaded, while
//! the lab provokes what every alert is about (nodes down, a VIP without a usable
//! node, an unresolved next hop, a flapping node, drops, a refused reload, slow
//! checks, a balancer that cannot be scraped, one whose program is not attached, a
//! VIP served by its reserve, a peer balancer that has withdrawn and disagrees on a
//! ring, peer sync with a peer silent since its one snapshot, one never heard and
//! unreachable, rejected datagrams and refused entries). Then every alert must be pending or firing, and every rule's and every
//! dashboard query must be valid and return series through Prometheus's HTTP API.
//! New rule files and panels are picked up without touching this file.

#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]
#![allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_userspace::{
    admin::{Request, Response},
    config::seed,
    sync::{peers::Sender, wire::mac_key},
};
use serde_json::Value;
use xdplb_tests::{
    balancer::sync_entry,
    daemon::Daemon,
    lab::{self, LabConfig, LabGuard, Mode, NS_CLIENT, NS_LB, VIP4, in_netns},
    packet::Flow,
    privilege::have_root,
    rig::{self, Checks, states, web4},
    traffic::http_once,
};

/// Prometheus listens here, inside the lb namespace.
const PROM: &str = "127.0.0.1:9091";
/// A second target of the `xdplb` job where nothing listens: a balancer that is down.
const DEAD_TARGET: &str = "127.0.0.1:9";
/// A third target of the job: a peer balancer that has withdrawn and whose ring of
/// web4 differs (XdplbBalancerWithdrawn, XdplbBalancerRingsDiffer), served as fixed
/// text by `peer_balancer`.
const PEER_TARGET: &str = "127.0.0.1:19660";
const DEAD_PORT: u16 = 9999;
/// A VIP whose primary is never usable: its reserve serves (XdplbVipServedByReserves).
const RESERVE_PORT: u16 = 9998;
/// Peer sync on loopback in the lb namespace: xdplb listens on `SYNC_LISTEN`; the
/// test is the peer `SYNC_PEER` (one snapshot, then silence: XdplbSyncPeerLagging);
/// `SYNC_UNREACHABLE` is never heard and cannot be sent to from a loopback address
/// (XdplbSyncPeerNeverHeard, XdplbSyncSendDropped).
const SYNC_LISTEN: &str = "127.0.0.1:4790";
const SYNC_PEER: &str = "127.0.0.1:4791";
const SYNC_UNREACHABLE: &str = "192.0.2.1:4790";
const SYNC_KEY: [u8; 32] = [0x5a; 32];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn rule_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy().join("prometheus/rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    v.sort();
    v
}

/// `(kind, name, expr)` of every rule; kind is `alert` or `record`.
fn rules() -> Vec<(String, String, String)> {
    let mut out = vec![];
    for f in rule_files() {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for g in doc["groups"].as_sequence().unwrap() {
            for r in g["rules"].as_sequence().unwrap() {
                for kind in ["alert", "record"] {
                    if let Some(name) = r[kind].as_str() {
                        out.push((
                            kind.to_owned(),
                            name.to_owned(),
                            r["expr"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Every query of the dashboard, with Grafana's variables as "all" and the rate
/// interval a Grafana would pick for a 1 s scrape: `(where, expr)`.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/xdplb-dashboard.json")).unwrap(),
    )
    .unwrap();
    let subst = |e: &str| {
        e.replace("$__rate_interval", "30s")
            .replace("$__interval", "5s")
            .replace("$instance", ".*")
            .replace("$vip", ".*")
    };
    let mut out = vec![];
    let mut panels: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
    // Panels inside collapsed rows.
    let nested: Vec<&Value> =
        panels.iter().filter_map(|p| p["panels"].as_array()).flatten().collect();
    panels.extend(nested);
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel \"{}\"", p["title"].as_str().unwrap()),
                subst(t["expr"].as_str().unwrap()),
            ));
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        if let Some(e) = a["expr"].as_str() {
            out.push((format!("annotation \"{}\"", a["name"].as_str().unwrap()), subst(e)));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        // label_values(EXPR, label): EXPR must return series that carry the label.
        if let Some(q) = v["query"]["query"].as_str().and_then(|q| q.strip_prefix("label_values("))
        {
            let (expr, _label) = q.trim_end_matches(')').rsplit_once(',').unwrap();
            out.push((format!("variable ${}", v["name"].as_str().unwrap()), subst(expr)));
        }
    }
    out
}

/// Serves [`PEER_TARGET`]'s metrics in the lb namespace until the test ends: a
/// balancer that has withdrawn, and whose ring of web4 is not the real xdplb's.
fn peer_balancer() {
    let listener = in_netns(Some(NS_LB), || Ok(std::net::TcpListener::bind(PEER_TARGET)?)).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let body = "xdplb_balancer_announced 0\n\
                    xdplb_vip_ring_info{vip=\"web4\",digest=\"0000000000000000\"} 1\n";
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// As the peer `SYNC_PEER`: one genuine snapshot whose entry names a backend xdplb
/// does not have (refused: XdplbSyncEntriesRefused), and datagrams of no peer and
/// of no sense (rejected: XdplbSyncMessagesRejected).
fn sync_peer_once() {
    let flow = Flow::tcp("10.99.1.2", 40_000, &VIP4.to_string(), lab::HTTP_PORT);
    let unknown = sync_entry(&flow, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 251)));
    let mut peer = Sender::new(0x5eed);
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let datagrams: Vec<Vec<u8>> = peer
        .snapshot(&[unknown])
        .iter()
        .map(|(h, e)| peer.seal(&mac_key(&SYNC_KEY), h, e, u64::try_from(now_ms).unwrap()))
        .collect();
    let to: SocketAddr = SYNC_LISTEN.parse().unwrap();
    in_netns(Some(NS_LB), move || {
        let s = UdpSocket::bind(SYNC_PEER)?;
        for d in &datagrams {
            s.send_to(d, to)?;
        }
        s.send_to(b"XLBS but not much more", to)?;
        UdpSocket::bind("127.0.0.1:0")?.send_to(&datagrams[0], to)?;
        Ok(())
    })
    .unwrap();
}

/// Debian's prometheus in the lb namespace, stopped on drop.
struct Prometheus(Child);

impl Prometheus {
    fn start(dir: &Path) -> Self {
        let files: Vec<String> =
            rule_files().iter().map(|f| format!("  - {}\n", f.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\
             scrape_configs:\n  - job_name: xdplb\n    static_configs:\n      - targets: [\"{}\", \"{DEAD_TARGET}\", \"{PEER_TARGET}\"]\n",
            files.concat(),
            rig::METRICS
        );
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={PROM}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        lab::exec_in_netns(&mut c, NS_LB).unwrap();
        Self(c.spawn().expect("starting prometheus"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(i32::try_from(self.0.id()).unwrap_or(0), libc::SIGTERM) };
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET (or POST with `query`) on Prometheus's HTTP API from the lb namespace; the
/// parsed `data`, or the API's error.
fn api(lab: &lab::Lab, path: &str, query: Option<&str>) -> Result<Value, String> {
    let url = format!("http://{PROM}{path}");
    let mut args = vec!["curl", "-sS", "-m", "5"];
    let form;
    if let Some(q) = query {
        form = format!("query={q}");
        args.extend(["--data-urlencode", &form]);
    }
    args.push(&url);
    let out = lab.exec(NS_LB, &args).map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if body["status"] == "success" {
        Ok(body["data"].clone())
    } else {
        Err(format!("{}: {}", body["errorType"], body["error"]))
    }
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool, String>) {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match f() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = e,
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what} {last}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn state(d: &Daemon, vip: &str, backend: &str) -> Option<String> {
    let s = d.status().ok()?;
    states(&s).into_iter().find(|(v, b, _)| v == vip && b == backend).map(|(_, _, st)| st)
}

#[test]
fn prometheus_evaluates_every_rule_and_dashboard_query_against_xdplb_and_every_alert_fires() {
    if !have_root("the monitoring test (lab, prometheus)") {
        return;
    }
    if Command::new("prometheus").arg("--version").output().is_err() {
        // Fails under CI=true; counted by `cargo xtask test` otherwise.
        lb_userspace::skip::skip(
            "monitoring",
            "prometheus not installed (cargo xtask setup --lab)",
        );
        return;
    }
    let t0 = Instant::now();
    let lab = LabGuard::up(&LabConfig { mode: Mode::Dsr, wafs: 3, ha: None }).unwrap();
    let dir = Path::new(lab::LAB_DIR).join("monitoring");
    std::fs::create_dir_all(&dir).unwrap();
    // The rig's VIPs, checked every 100 ms (fall 1, rise 1: a fast flapper), plus a
    // VIP with no usable node: waf1 on a closed port, and a node that does not exist
    // (its next hop never resolves, its checks time out after 150 ms: slow checks).
    let checks = Checks {
        interval: Some("100ms"),
        timeout: Some("80ms"),
        rise: Some(1),
        fall: Some(1),
        ..Checks::default()
    };
    let mut text = rig::config_text(Mode::Dsr, 3, &checks, &[]).replace(
        &format!("admin_socket: {}/xdplb/admin.sock", lab::LAB_DIR),
        &format!("admin_socket: {}/admin.sock", dir.display()),
    );
    let _ = write!(
        text,
        "  - name: dead\n    address: \"{VIP4}\"\n    port: {DEAD_PORT}\n    protocol: udp\n    backends:\n\
         \x20     - {{ name: waf1, address: \"{}\" }}\n      - {{ name: ghost, address: \"10.99.0.250\" }}\n\
         \x20   health_check: {{ kind: tcp, port: 81, interval: 200ms, timeout: 150ms }}\n",
        lab::waf4(1)
    );
    // A VIP served by its reserve: its only primary never resolves, its reserve is up.
    let _ = write!(
        text,
        "  - name: standby\n    address: \"{VIP4}\"\n    port: {RESERVE_PORT}\n    protocol: udp\n    backends:\n\
         \x20     - {{ name: ghost, address: \"10.99.0.250\" }}\n      - {{ name: waf3, address: \"{}\", backup: true }}\n",
        lab::waf4(3)
    );
    let key_file = dir.join("sync-key");
    std::fs::write(&key_file, seed::hex(SYNC_KEY.into_iter())).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = write!(
        text,
        "sync:\n  listen: \"{SYNC_LISTEN}\"\n  peers: [ \"{SYNC_PEER}\", \"{SYNC_UNREACHABLE}\" ]\n  \
         key_file: {}\n",
        key_file.display()
    );
    let config = dir.join("xdplb.yaml");
    std::fs::write(&config, &text).unwrap();
    let daemon = Daemon::start(
        NS_LB,
        &config,
        &dir.join("admin.sock"),
        rig::METRICS.parse().unwrap(),
        &["--detach-on-exit"],
    )
    .unwrap();
    daemon
        .wait_until("the rig's 12 backends up", Duration::from_secs(20), |d| {
            d.status().is_ok_and(|s| {
                let rig_vip = |v: &str| ["web4", "web6", "udp4", "udp6"].contains(&v);
                states(&s).iter().filter(|(v, _, st)| rig_vip(v) && st == "up").count() == 12
            })
        })
        .unwrap();
    peer_balancer();
    let _prometheus = Prometheus::start(&dir.join("prometheus"));
    wait("prometheus to scrape xdplb", Duration::from_secs(30), || {
        // xdplb's own target: the fake peer is up at once, and drops sent before
        // xdplb's first scrape would start its series above zero (no rate, no alert).
        let up = format!("up{{job=\"xdplb\",instance=\"{}\"}} == 1", rig::METRICS);
        let r = api(&lab, "/api/v1/query", Some(&up))?;
        Ok(r["result"].as_array().is_some_and(|a| !a.is_empty()))
    });

    // Peer sync: after the first scrape, so the counters' rates start from zero.
    sync_peer_once();

    // Traffic through the VIP, so the traffic panels have something to show.
    let ok = in_netns(Some(NS_CLIENT), || {
        Ok((0..100).filter(|_| http_once(web4(), Duration::from_secs(1)).is_ok()).count())
    })
    .unwrap();
    assert!(ok >= 95, "{ok} of 100 requests answered");
    // Drops: datagrams to the VIP without a usable node.
    in_netns(Some(NS_CLIENT), || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3000 {
            let _ = s.send_to(b"x", (VIP4, DEAD_PORT));
        }
        Ok(())
    })
    .unwrap();
    // A flapping node: down and up six times, each state held across a scrape.
    for _ in 0..6 {
        lab.stop_waf(2).unwrap();
        daemon
            .wait_until("waf2 down", Duration::from_secs(5), |d| {
                state(d, "web4", "waf2").as_deref() == Some("down")
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        lab.start_waf(2).unwrap();
        daemon
            .wait_until("waf2 up", Duration::from_secs(5), |d| {
                state(d, "web4", "waf2").as_deref() == Some("up")
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
    }
    // A refused reload.
    std::fs::write(&config, text.replace("weight: 100", "weight: 0")).unwrap();
    match daemon.admin(&Request::Reload).unwrap() {
        Response::Error(e) => assert!(e.contains("weight"), "{e}"),
        Response::Ok(o) | Response::Failing(o) => {
            panic!("a config with weight 0 was accepted: {o}")
        }
    }
    // A balancer that cannot vouch for its program any more: its link pin removed
    // (as a careless `rm` would; the link lives on in xdplb's fd until it exits)
    // makes /healthz fail.
    std::fs::remove_file(Path::new(lab::PIN_DIR).join("xdplb/link")).unwrap();
    // The health monitor judges every 50 ms.
    wait("/healthz to fail", Duration::from_secs(2), || {
        Ok(daemon.http_get("/healthz").map_err(|e| e.to_string())?.0 == 503)
    });

    // Every alert becomes active (pending or firing).
    let all = rules();
    let alerts: BTreeSet<String> =
        all.iter().filter(|(k, _, _)| k == "alert").map(|(_, n, _)| n.clone()).collect();
    let mut active = BTreeSet::new();
    wait("every alert to be pending or firing", Duration::from_mins(1), || {
        let data = api(&lab, "/api/v1/alerts", None)?;
        active = data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = alerts.difference(&active).collect();
        if missing.is_empty() { Ok(true) } else { Err(format!("(not active: {missing:?})")) }
    });

    // Every rule loaded and evaluated without error.
    let groups = api(&lab, "/api/v1/rules", None).unwrap();
    let mut loaded = 0;
    for g in groups["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(
                r["health"], "ok",
                "rule {} in {}: {}",
                r["name"], g["file"], r["lastError"]
            );
            loaded += 1;
        }
    }
    assert_eq!(loaded, all.len(), "prometheus loaded {loaded} rules, the files hold {}", all.len());

    // Every rule's and every dashboard query: valid, and returning series.
    let mut queries: Vec<(String, String)> =
        all.iter().map(|(k, n, e)| (format!("{k} {n}"), e.clone())).collect();
    queries.extend(dashboard_queries());
    let mut failures = vec![];
    for (what, expr) in &queries {
        match api(&lab, "/api/v1/query", Some(expr)) {
            Ok(r) if r["result"].as_array().is_some_and(|a| !a.is_empty()) => {}
            Ok(r) => failures.push(format!("{what}: no series for `{expr}` ({r})")),
            Err(e) => failures.push(format!("{what}: `{expr}`: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
    eprintln!(
        "monitoring: {} rules loaded, {} alerts active, {} rule and dashboard queries returned series ({:.0} s)",
        loaded,
        active.len(),
        queries.len(),
        t0.elapsed().as_secs_f64()
    );
}
