//! `bench soak`: the control plane under a long, busy life. `xdplb run` (release
//! build) balances one VIP over eight backends in network namespaces, health
//! checking real listeners, while for ten minutes (by default):
//! - one million concurrent TCP flows run through the daemon's live maps (frames
//!   through BPF_PROG_TEST_RUN on a second instance of `xdp_lb` sharing the pinned
//!   maps, one worker per CPU, so each CPU's share of the LRU connection table
//!   holds its share of the flows), every flow once per pass, and every pass 1% of
//!   them replaced by new ones (SYN, then ACK);
//! - backends flap: every 15 s one of b1..b4 stops listening for 8 s (each node once
//!   a minute: two changes a minute, under the flap-damping default);
//! - the config is reloaded every 5 s, alternating with and without a ninth backend
//!   (the ring changes at every reload);
//! - the daemon's RSS, threads and open files, and the maps' use (connection-table
//!   entries, live backend entries) are sampled every 30 s.
//!
//! Every flow's backend is remembered; a flow found on another backend counts as
//! moved, and is a violation unless its backend was disturbed (down, or removed by
//! a reload) at some status sample since the flow was last seen, or the connection
//! table no longer held the flow when its packet came (the kernel's LRU evicted it:
//! the table's size, not the controller; counted and reported on their own).
//!
//! The writer must not wedge: every reload is answered `ok`, and every flapped node
//! is seen down in `xdplb status` while it is stopped. The daemon's RSS must stay
//! within 10% from two minutes on, its threads, files and metric series constant.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{Backend, Counter, FlowKey4, map_names};
use lb_userspace::{admin::Request, flows4::Flows4, loader, pins, stats::Stats as _};

use super::progress;
use crate::{
    balancer::{XDP_TX, flow_key},
    daemon::{Daemon, binary},
    lab::sh::{cmd, ns_sh, quietly, sh},
    listener::Listener,
    packet::Flow,
    rig::rows,
};

const FLOWS: usize = 1_000_000;
/// Flows replaced by new ones at every pass.
const CHURN: usize = FLOWS / 100;
const DURATION: Duration = Duration::from_mins(10);
const FLAP_EVERY: Duration = Duration::from_secs(15);
const FLAP_FOR: Duration = Duration::from_secs(8);
const RELOAD_EVERY: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// RSS growth between the first sample after warm-up and the last that still
/// counts as flat (allocator noise, a few more metric series).
const FLAT: f64 = 0.10;

const VIP: &str = "10.96.100.1";
const PIN: &str = "/sys/fs/bpf/xdplb-soak";
/// b1..b8 always configured; b9 only in every other reload's config.
const NODES: usize = 9;
const FLAPPING: usize = 4;
const METRICS: &str = "127.0.0.1:19660";

fn addr(node: usize) -> String {
    format!("10.96.0.{}", 11 + node)
}

fn name(node: usize) -> String {
    format!("b{}", node + 1)
}

/// Namespaces `xsk-lb` (10.96.0.1) and `xsk-b1..9` on bridge `xsk-br`.
struct Pool {
    dir: PathBuf,
    listeners: Vec<Option<Listener>>,
}

impl Pool {
    fn up() -> Result<Self> {
        Self::down();
        let dir = std::env::temp_dir().join("xdplb-soak");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        sh(&["ip", "link", "add", "xsk-br", "type", "bridge"])?;
        sh(&["ip", "link", "set", "xsk-br", "up"])?;
        let nodes = [("lb".to_owned(), "10.96.0.1".to_owned())]
            .into_iter()
            .chain((0..NODES).map(|n| (name(n), addr(n))));
        for (n, a) in nodes {
            let (ns, host) = (format!("xsk-{n}"), format!("xsk-{n}-h"));
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &host, "master", "xsk-br", "up"])?;
            ns_sh(&ns, &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
            ns_sh(&ns, &["ip", "link", "set", "eth0", "up"])?;
            ns_sh(&ns, &["ip", "link", "set", "lo", "up"])?;
        }
        let listeners = (0..NODES).map(|n| listen(n).map(Some)).collect::<Result<_>>()?;
        Ok(Self { dir, listeners })
    }

    fn down() {
        for n in ["lb".to_owned()].into_iter().chain((0..NODES).map(name)) {
            quietly(&mut cmd(&["ip", "netns", "del", &format!("xsk-{n}")]));
            quietly(&mut cmd(&["ip", "link", "del", &format!("xsk-{n}-h")]));
        }
        quietly(&mut cmd(&["ip", "link", "del", "xsk-br"]));
        let _ = loader::remove_pins(Path::new(PIN));
    }

    /// The config, with or without b9.
    fn config(&self, with_b9: bool) -> String {
        let mut s = format!(
            "interface: eth0\nxdp_mode: skb\nmetrics_listen: {METRICS}\nadmin_socket: {}\n\
             pin_path: {PIN}\nhash_seed: 000102030405060708090a0b0c0d0e0f\n\
             health_check_defaults: {{ kind: tcp, port: 80, interval: 200ms, timeout: 150ms, rise: 2, fall: 3 }}\n\
             vips:\n  - name: web\n    address: {VIP}\n    port: 80\n    backends:\n",
            self.socket().display()
        );
        for n in 0..if with_b9 { NODES } else { NODES - 1 } {
            let _ = writeln!(s, "      - {{ name: {}, address: {} }}", name(n), addr(n));
        }
        s
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("xdplb.yaml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.listeners.clear();
        Self::down();
    }
}

/// A listener on port 80 in node `node`'s namespace.
fn listen(node: usize) -> Result<Listener> {
    Listener::start(&format!("xsk-{}", name(node)), format!("{}:80", addr(node)).parse()?)
}

/// One pass for a worker: churn the slots `churn` (of all flows), then send every
/// flow of its share once.
struct Pass {
    number: u32,
    churn: std::ops::Range<usize>,
    /// The last pass at which each node was seen disturbed.
    disturbed: Arc<Vec<u32>>,
}

/// What a worker saw in one pass.
#[derive(Clone, Debug, Default)]
struct Tally {
    checked: u64,
    new_flows: u64,
    /// Flows found on another backend than before, whose backend was disturbed.
    moved_from_disturbed: u64,
    /// Flows found on another backend while theirs was live and unchanged.
    moved_from_live: u64,
    /// Established flows the connection table had lost when their packet came.
    evicted: u64,
    /// ...of which found on another backend (re-hashed onto a ring that changed).
    moved_after_eviction: u64,
    dropped: u64,
    unknown: u64,
    /// A few of `moved_from_live`, for the report.
    examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, o: &Self) {
        self.checked += o.checked;
        self.new_flows += o.new_flows;
        self.moved_from_disturbed += o.moved_from_disturbed;
        self.moved_from_live += o.moved_from_live;
        self.evicted += o.evicted;
        self.moved_after_eviction += o.moved_after_eviction;
        self.dropped += o.dropped;
        self.unknown += o.unknown;
        for e in &o.examples {
            if self.examples.len() < 5 {
                self.examples.push(e.clone());
            }
        }
    }
}

/// A frame template and where a flow's source address and port go in it.
struct Frames {
    flow: Flow,
    syn: Vec<u8>,
    ack: Vec<u8>,
}

const SRC_AT: usize = 14 + 12;
const SPORT_AT: usize = 14 + 20;

impl Frames {
    /// Frames addressed to the balancer's interface (it forwards only those).
    fn new() -> Result<Self> {
        let text = ns_sh("xsk-lb", &["cat", "/sys/class/net/eth0/address"])?;
        let lb =
            lb_userspace::mac::parse(text.trim()).ok_or_else(|| anyhow!("lb's MAC {text:?}"))?;
        let flow = Flow::tcp("100.64.0.1", 10_000, VIP, 80);
        Ok(Self { syn: flow.syn().frame_to(lb), ack: flow.ack().frame_to(lb), flow })
    }

    fn addresses(id: u64) -> (u32, u16) {
        let src = 0x6440_0000u32 + u32::try_from(id / 50_000).unwrap_or(u32::MAX);
        (src, 10_000 + u16::try_from(id % 50_000).unwrap_or(0))
    }

    /// Flow `id`'s connection-table key (in `FLOWS4`).
    fn key(&self, id: u64) -> FlowKey4 {
        let (src, sport) = Self::addresses(id);
        FlowKey4::of(&flow_key(&Flow {
            src: std::net::Ipv4Addr::from(src).into(),
            sport,
            ..self.flow
        }))
    }

    /// Flow `id`'s frame into `out` (checksums are left stale: the data path does
    /// not check them).
    fn write(&self, id: u64, syn: bool, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(if syn { &self.syn } else { &self.ack });
        let (src, sport) = Self::addresses(id);
        out[SRC_AT..SRC_AT + 4].copy_from_slice(&src.to_be_bytes());
        out[SPORT_AT..SPORT_AT + 2].copy_from_slice(&sport.to_be_bytes());
    }
}

/// One worker: a CPU, its share of the flows (slot k with k % workers == cpu),
/// and its own instance of xdp_lb on the daemon's pinned maps.
fn worker(
    cpu: usize,
    workers: usize,
    macs: &BTreeMap<[u8; 6], u8>,
    passes: mpsc::Receiver<Pass>,
    results: &mpsc::Sender<Result<Tally>>,
) -> Result<()> {
    pin_to_cpu(cpu)?;
    let mut ebpf = loader::load_with_pinned_maps(Path::new(PIN))?;
    let prog: &mut Xdp =
        ebpf.program_mut("xdp_lb").ok_or_else(|| anyhow!("no xdp_lb"))?.try_into()?;
    prog.load()?;
    let conns = conn_table()?;
    let slots: Vec<usize> = (cpu..FLOWS).step_by(workers).collect();
    let mut generation = vec![0u32; slots.len()];
    // The backend each flow was last seen on (u8::MAX: none yet), and when.
    let mut node = vec![u8::MAX; slots.len()];
    let mut seen = vec![0u32; slots.len()];
    let frames = Frames::new()?;
    let (mut frame, mut out) = (Vec::with_capacity(256), vec![0u8; 512]);
    let run = |frame: &[u8], out: &mut Vec<u8>| -> Result<(u32, u32)> {
        out.resize(512, 0);
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ..TestRunOptions::new()
        })?;
        Ok((r.return_value, r.data_size_out))
    };
    for pass in passes {
        let mut t = Tally::default();
        let result = (|| -> Result<()> {
            for (i, &k) in slots.iter().enumerate() {
                let fresh = pass.churn.contains(&k) || pass.number == 0;
                if fresh && pass.number > 0 {
                    generation[i] += 1;
                }
                let id = k as u64 + u64::from(generation[i]) * FLOWS as u64;
                if fresh {
                    node[i] = u8::MAX;
                    t.new_flows += 1;
                    frames.write(id, true, &mut frame);
                    run(&frame, &mut out)?;
                }
                // Whether the table still holds an established flow (a lookup
                // does not touch the LRU's reference bit).
                let lost = !fresh && conns.established(&frames.key(id)).is_none();
                t.evicted += u64::from(lost);
                frames.write(id, false, &mut frame);
                let (action, len) = run(&frame, &mut out)?;
                t.checked += 1;
                if action != XDP_TX || len < 6 {
                    t.dropped += 1;
                    continue;
                }
                let mac: [u8; 6] = out[..6].try_into()?;
                let Some(&now) = macs.get(&mac) else {
                    t.unknown += 1;
                    continue;
                };
                let was = node[i];
                if was != u8::MAX && was != now {
                    if pass.disturbed[usize::from(was)] >= seen[i] {
                        t.moved_from_disturbed += 1;
                    } else if lost {
                        t.moved_after_eviction += 1;
                    } else {
                        t.moved_from_live += 1;
                        if t.examples.len() < 5 {
                            t.examples.push(format!(
                                "flow {id} from {} to {} at pass {} (seen there at pass {})",
                                name(usize::from(was)),
                                name(usize::from(now)),
                                pass.number,
                                seen[i]
                            ));
                        }
                    }
                }
                node[i] = now;
                seen[i] = pass.number;
            }
            Ok(())
        })();
        if results.send(result.map(|()| t)).is_err() {
            break;
        }
    }
    Ok(())
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity(0) touch
    // only it and this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            bail!("pinning a worker to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A field of /proc/PID/status, in its first unit (kB for memory).
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// One sample of the daemon and the maps.
struct Sample {
    at: Duration,
    rss_kib: u64,
    threads: u64,
    fds: usize,
    /// Lines of /metrics that are series (not comments).
    series: usize,
    conns: usize,
    /// BACKENDS slots ever written (a freed slot is rewritten as down, not cleared).
    backend_slots: usize,
    live_backends: usize,
    passes: u32,
    /// Whether b9 was configured (its series come and go with it).
    with_b9: bool,
}

/// Each backend's state changes so far (`xdplb_backend_transitions_total`),
/// "b1" -> count: a change between two scrapes, however short (a probe timing
/// out on a busy machine), disturbs the backend even if no status sample saw it.
fn transitions(daemon: &Daemon) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok((_, text)) = daemon.http_get("/metrics") else { return out };
    for line in text.lines().filter(|l| l.starts_with("xdplb_backend_transitions_total{")) {
        let backend = line.split("backend=\"").nth(1).and_then(|r| r.split('"').next());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(b), Some(v)) = (backend, value) {
            *out.entry(b.to_owned()).or_default() += v;
        }
    }
    out
}

/// The IPv4 connection table (the soak's flows are IPv4).
fn conn_table() -> Result<Flows4> {
    Flows4::pinned(Path::new(PIN))
}

/// Established entries in the pinned connection table (reads it whole).
fn conn_entries() -> Result<usize> {
    Ok(usize::try_from(conn_table()?.count().established)?)
}

fn backend_slots() -> Result<usize> {
    let data = MapData::from_pin(pins::map_path(Path::new(PIN), map_names::BACKENDS))?;
    let backends: Array<MapData, Backend> = Array::try_from(aya::maps::Map::Array(data))?;
    Ok(backends.iter().filter(|b| b.as_ref().is_ok_and(|b| b.family != 0)).count())
}

/// The worker threads, one per CPU, and their channels.
struct Workers {
    to: Vec<mpsc::Sender<Pass>>,
    results: mpsc::Receiver<Result<Tally>>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    fn spawn(count: usize, macs: &BTreeMap<[u8; 6], u8>) -> Self {
        let (results_tx, results) = mpsc::channel();
        let (mut to, mut handles) = (Vec::new(), Vec::new());
        for cpu in 0..count {
            let (tx, rx) = mpsc::channel::<Pass>();
            let (macs, results_tx) = (macs.clone(), results_tx.clone());
            handles.push(std::thread::spawn(move || {
                if let Err(e) = worker(cpu, count, &macs, rx, &results_tx) {
                    let _ = results_tx.send(Err(e));
                }
            }));
            to.push(tx);
        }
        Self { to, results, handles }
    }

    /// Pass `number` over every flow, churning its share first.
    fn pass(&self, number: u32, disturbed: &[u32]) -> Result<Tally> {
        let shared = Arc::new(disturbed.to_vec());
        let churn = if number == 0 {
            0..0
        } else {
            let from = (number as usize * CHURN) % FLOWS;
            from..(from + CHURN).min(FLOWS)
        };
        for tx in &self.to {
            tx.send(Pass { number, churn: churn.clone(), disturbed: Arc::clone(&shared) })
                .map_err(|_| anyhow!("a worker stopped"))?;
        }
        let mut this = Tally::default();
        for _ in 0..self.to.len() {
            this.add(&self.results.recv().map_err(|_| anyhow!("a worker stopped"))??);
        }
        Ok(this)
    }

    fn finish(self) {
        drop(self.to);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// What the soak does to the daemon and what it saw of it.
struct Soak {
    pool: Pool,
    daemon: Daemon,
    pid: u32,
    pass: u32,
    /// The last pass at which each node was seen disturbed.
    disturbed: Vec<u32>,
    /// `transitions` at the last look.
    changes: BTreeMap<String, f64>,
    /// State changes of b5..b8, which are never stopped (probes failing under load).
    unplanned: f64,
    /// The node stopped now, and since when.
    down: Option<(usize, Instant)>,
    flapper: usize,
    flaps: usize,
    /// Flaps whose node `xdplb status` showed down while it was stopped.
    flaps_seen: usize,
    seen_this_flap: bool,
    with_b9: bool,
    reloads: usize,
    reload_failures: usize,
    total: Tally,
    samples: Vec<Sample>,
}

impl Soak {
    fn start() -> Result<Self> {
        let pool = Pool::up()?;
        std::fs::write(pool.config_path(), pool.config(false))?;
        let daemon =
            Daemon::start("xsk-lb", &pool.config_path(), &pool.socket(), METRICS.parse()?, &[])?;
        daemon.wait_until("eight backends up", Duration::from_secs(30), |d| {
            d.status().is_ok_and(|s| {
                rows(&s).iter().filter(|r| r.state == "up" && r.mac != "unresolved").count()
                    == NODES - 1
            })
        })?;
        let pid = daemon.pid().ok_or_else(|| anyhow!("no daemon pid"))?;
        let changes = transitions(&daemon);
        Ok(Self {
            pool,
            daemon,
            pid,
            pass: 0,
            disturbed: vec![0; NODES],
            changes,
            unplanned: 0.0,
            down: None,
            flapper: 0,
            flaps: 0,
            flaps_seen: 0,
            seen_this_flap: false,
            with_b9: false,
            reloads: 0,
            reload_failures: 0,
            total: Tally::default(),
            samples: Vec::new(),
        })
    }

    fn macs() -> Result<BTreeMap<[u8; 6], u8>> {
        (0..NODES)
            .map(|n| {
                let text =
                    ns_sh(&format!("xsk-{}", name(n)), &["cat", "/sys/class/net/eth0/address"])?;
                let mac = lb_userspace::mac::parse(text.trim())
                    .ok_or_else(|| anyhow!("{}'s MAC {text:?}", name(n)))?;
                Ok((mac, u8::try_from(n)?))
            })
            .collect()
    }

    /// Marks every node not live in `xdplb status`, or whose state changed since
    /// the last look (`xdplb_backend_transitions_total`: a change between two
    /// looks, however short), disturbed at this pass.
    fn look(&mut self) {
        let stopped = self.down.map(|(n, _)| n);
        if let Ok(status) = self.daemon.status() {
            let rows = rows(&status);
            for (n, at) in self.disturbed.iter_mut().enumerate() {
                let live = rows
                    .iter()
                    .any(|r| r.backend == name(n) && r.state == "up" && r.health == "up");
                if !live {
                    *at = self.pass;
                    self.seen_this_flap |= stopped == Some(n);
                }
            }
        }
        let now = transitions(&self.daemon);
        for (n, at) in self.disturbed.iter_mut().enumerate() {
            let (a, b) = (self.changes.get(&name(n)), now.get(&name(n)));
            if a != b {
                *at = self.pass;
                if (FLAPPING..NODES - 1).contains(&n) {
                    self.unplanned += b.unwrap_or(&0.0) - a.unwrap_or(&0.0);
                }
            }
        }
        self.changes = now;
    }

    /// Brings the stopped node back after FLAP_FOR; stops the next one every FLAP_EVERY.
    fn flap(&mut self, now: Instant, next: &mut Instant) -> Result<()> {
        if let Some((n, since)) = self.down
            && now >= since + FLAP_FOR
        {
            self.look(); // the last look before it comes back
            self.flaps_seen += usize::from(self.seen_this_flap);
            self.pool.listeners[n] = Some(listen(n)?);
            self.down = None;
        }
        if now >= *next && self.down.is_none() {
            let n = self.flapper % FLAPPING;
            self.flapper += 1;
            self.pool.listeners[n] = None;
            self.disturbed[n] = self.pass;
            self.down = Some((n, now));
            self.seen_this_flap = false;
            self.flaps += 1;
            *next = now + FLAP_EVERY;
        }
        Ok(())
    }

    /// Reloads with b9 if it was not configured, without it if it was.
    fn reload(&mut self) -> Result<()> {
        self.with_b9 = !self.with_b9;
        if !self.with_b9 {
            self.disturbed[NODES - 1] = self.pass;
        }
        std::fs::write(self.pool.config_path(), self.pool.config(self.with_b9))?;
        match self.daemon.admin(&Request::Reload)? {
            lb_userspace::admin::Response::Ok(_) => self.reloads += 1,
            lb_userspace::admin::Response::Error(e) | lb_userspace::admin::Response::Failing(e) => {
                self.reload_failures += 1;
                progress(format_args!("reload failed: {e}"));
            }
        }
        Ok(())
    }

    fn sample(&mut self, at: Duration) -> Result<()> {
        let pid = self.pid;
        let sample = Sample {
            at,
            rss_kib: proc_status(pid, "VmRSS:"),
            threads: proc_status(pid, "Threads:"),
            fds: open_files(pid),
            series: self.daemon.http_get("/metrics").map_or(0, |(_, text)| {
                text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
            }),
            conns: conn_entries()?,
            backend_slots: backend_slots()?,
            live_backends: rows(&self.daemon.status().unwrap_or_default())
                .iter()
                .filter(|r| r.state == "up")
                .count(),
            passes: self.pass + 1,
            with_b9: self.with_b9,
        };
        let t = &self.total;
        progress(format_args!(
            "{:>4} s: RSS {} KiB, {} threads, {} fds, {} series, {} conn entries, {} backend slots, {} backends up, pass {}, {} flows checked, {} moved off failed nodes, {} evicted ({} of them moved), {} moved off live ones",
            sample.at.as_secs(),
            sample.rss_kib,
            sample.threads,
            sample.fds,
            sample.series,
            sample.conns,
            sample.backend_slots,
            sample.live_backends,
            sample.passes,
            t.checked,
            t.moved_from_disturbed,
            t.evicted,
            t.moved_after_eviction,
            t.moved_from_live
        ));
        self.samples.push(sample);
        Ok(())
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let duration = args
        .first()
        .map_or(Ok(DURATION), |s| s.parse().map(Duration::from_secs))
        .context("seconds")?;
    let daemon_binary = binary().context("the xdplb binary")?;
    progress(format_args!(
        "soak for {duration:?} with {} ({FLOWS} flows)",
        daemon_binary.display()
    ));
    let mut soak = Soak::start()?;
    let workers = Workers::spawn(
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        &Soak::macs()?,
    );
    let stats_maps = lb_userspace::stats::BpfStats::take_from(&mut loader::load_with_pinned_maps(
        Path::new(PIN),
    )?)?;
    let counters_before = stats_maps.counters()?;

    let start = Instant::now();
    let (mut next_flap, mut next_reload, mut next_sample) =
        (start + FLAP_EVERY, start + RELOAD_EVERY, start);
    while start.elapsed() < duration {
        let now = Instant::now();
        soak.flap(now, &mut next_flap)?;
        if now >= next_reload {
            soak.reload()?;
            next_reload = now + RELOAD_EVERY;
        }
        soak.look();
        let this = workers.pass(soak.pass, &soak.disturbed)?;
        // Disturbances seen right after the pass count for it too.
        soak.look();
        soak.total.add(&this);
        if this.moved_from_live > 0 {
            progress(format_args!(
                "pass {}: {} flows moved off a live node: {:?}",
                soak.pass, this.moved_from_live, this.examples
            ));
        }
        if Instant::now() >= next_sample {
            soak.sample(start.elapsed())?;
            next_sample += SAMPLE_EVERY;
        }
        soak.pass += 1;
    }
    if soak.down.is_some() && !soak.seen_this_flap {
        soak.flaps -= 1; // cut short by the end: not judged
    } else if soak.down.is_some() {
        soak.flaps_seen += 1;
    }
    let workers_count = workers.to.len();
    workers.finish();
    let counters = stats_maps.counters()?;
    let d = |c: Counter| counters.get(c) - counters_before.get(c);
    let log = soak.daemon.log_text();
    ensure!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    let report = Report {
        duration: start.elapsed(),
        passes: soak.pass,
        workers: workers_count,
        flaps: soak.flaps,
        flaps_seen: soak.flaps_seen,
        unplanned: soak.unplanned,
        reloads: soak.reloads,
        reload_failures: soak.reload_failures,
        total: soak.total,
        samples: soak.samples,
        conn_misses: d(Counter::ConnMiss),
        conn_rehash: d(Counter::ConnRehash),
        load: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    };
    drop(soak.daemon);
    drop(soak.pool);
    // A failed requirement is stated in the report (BENCHMARKS.md keeps the
    // figures of a miss too), not turned into an error that would lose them.
    print!("{}", report.markdown());
    match report.failures().as_slice() {
        [] => progress(format_args!("soak passed")),
        f => progress(format_args!("soak FAILED: {}", f.join("; "))),
    }
    Ok(())
}

struct Report {
    duration: Duration,
    passes: u32,
    workers: usize,
    flaps: usize,
    flaps_seen: usize,
    unplanned: f64,
    reloads: usize,
    reload_failures: usize,
    total: Tally,
    samples: Vec<Sample>,
    conn_misses: u64,
    conn_rehash: u64,
    /// /proc/loadavg's first three fields at the end.
    load: String,
}

impl Report {
    /// Samples from two minutes on (start-up and the first passes excluded).
    fn warm(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|x| x.at >= Duration::from_mins(2)).collect()
    }

    /// RSS growth over the warm samples, if there are two.
    fn growth(&self) -> Option<(f64, &Sample, &Sample)> {
        let warm = self.warm();
        let (a, b) = (*warm.first()?, *warm.last()?);
        (warm.len() >= 2 && a.rss_kib > 0)
            .then(|| (b.rss_kib as f64 / a.rss_kib as f64 - 1.0, a, b))
    }

    /// What the soak requires, and what of it failed.
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.total.moved_from_live > 0 {
            f.push(format!("{} flows moved off live, unchanged nodes", self.total.moved_from_live));
        }
        if self.reload_failures > 0 {
            f.push(format!("{} reloads refused", self.reload_failures));
        }
        if self.flaps_seen < self.flaps {
            f.push(format!(
                "{} of {} stopped nodes never seen down (a wedged writer or loop?)",
                self.flaps - self.flaps_seen,
                self.flaps
            ));
        }
        if let Some((g, _, _)) = self.growth()
            && g.abs() > FLAT
        {
            f.push(format!("RSS grew {:+.1}%", g * 100.0));
        }
        let warm = self.warm();
        // Probes and reloads open sockets and threads for a moment: a sample may
        // catch one; growth beyond that is a leak.
        if let (Some(a), Some(b)) = (warm.first(), warm.last()) {
            if b.threads > a.threads + 2 {
                f.push(format!("threads from {} to {}", a.threads, b.threads));
            }
            if b.fds > a.fds + 2 {
                f.push(format!("open files from {} to {}", a.fds, b.fds));
            }
        }
        if let Some(x) = warm.iter().find(|x| x.backend_slots > NODES) {
            f.push(format!("{} backend slots written for {NODES} backends", x.backend_slots));
        }
        for with_b9 in [false, true] {
            let series = warm.iter().filter(|x| x.with_b9 == with_b9).map(|x| x.series);
            if let (Some(min), Some(max)) = (series.clone().min(), series.max())
                && min != max
            {
                f.push(format!("metric series from {min} to {max} (b9 configured: {with_b9})"));
            }
        }
        f
    }

    /// The samples, one row each.
    fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| t (s) | RSS (MiB) | threads | open files | metric series | conn-table entries | backend slots written | backends up | passes |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in &self.samples {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                x.at.as_secs(),
                x.rss_kib as f64 / 1024.0,
                x.threads,
                x.fds,
                x.series,
                x.conns,
                x.backend_slots,
                x.live_backends,
                x.passes
            );
        }
        s
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let t = &self.total;
        let _ = writeln!(
            s,
            "`xdplb run` (release) balancing one VIP over 8 backends (TCP checks every 200 ms, \
             rise 2, fall 3, default flap damping and policies) in network namespaces for {} s: \
             {FLOWS} concurrent TCP flows through its live maps (BPF_PROG_TEST_RUN on a second \
             `xdp_lb` sharing the pinned maps, {} workers, one per CPU), every flow once per pass \
             and {CHURN} replaced per pass (SYN, then ACK; a pass took {:.1} s on average); one \
             of b1..b4 stopped for at least {} s every {} s or at the next pass ({} flaps, {} \
             seen down in `xdplb status`); a reload every {} s or at the next pass, alternating \
             with and without a ninth backend ({} reloads answered ok, one every {:.1} s on \
             average; {} refused). Load average at the end: {} (the machine is shared).\n",
            self.duration.as_secs(),
            self.workers,
            self.duration.as_secs_f64() / f64::from(self.passes.max(1)),
            FLAP_FOR.as_secs(),
            FLAP_EVERY.as_secs(),
            self.flaps,
            self.flaps_seen,
            RELOAD_EVERY.as_secs(),
            self.reloads,
            self.duration.as_secs_f64() / self.reloads.max(1) as f64,
            self.reload_failures,
            self.load
        );
        s.push_str(&self.table());
        let verdict = match self.growth() {
            Some((growth, a, b)) => format!(
                "RSS from {:.1} MiB at {} s to {:.1} MiB at {} s: {:+.1}% ({}; flat means within {:.0}%)",
                a.rss_kib as f64 / 1024.0,
                a.at.as_secs(),
                b.rss_kib as f64 / 1024.0,
                b.at.as_secs(),
                growth * 100.0,
                if growth.abs() <= FLAT { "flat" } else { "NOT flat" },
                FLAT * 100.0
            ),
            None => "too short for a memory verdict (samples from 120 s on)".to_owned(),
        };
        let _ = writeln!(s, "\n- {verdict}.");
        let _ = writeln!(
            s,
            "- {} passes, {} flow packets checked ({} new flows): **{} moved off a live, unchanged \
             node while the table held them**; {} moved off a node that failed or was removed \
             (expected); {} dropped; {} to an unknown MAC. State changes of b5..b8, which were \
             never stopped: {}.",
            self.passes,
            t.checked,
            t.new_flows,
            t.moved_from_live,
            t.moved_from_disturbed,
            t.dropped,
            t.unknown,
            self.unplanned
        );
        let _ = writeln!(
            s,
            "- Connection table: {} established flows ({:.0} per pass; a pass inserts \
             {CHURN} new ones) were no longer in it when their packet came: the \
             kernel's LRU is approximate and, with {FLOWS} live flows plus the churned ones' \
             stale entries in {} entries, evicts live flows too; {} of those were re-hashed onto \
             another backend because the ring had changed since their SYN. Data-path counters: {} table misses on non-SYN packets, {} \
             re-hashes of entries whose backend was down or replaced.",
            t.evicted,
            t.evicted as f64 / f64::from(self.passes.max(1)),
            lb_common::limits::CONN_TABLE_SIZE,
            t.moved_after_eviction,
            self.conn_misses,
            self.conn_rehash
        );
        for e in &t.examples {
            let _ = writeln!(s, "  - e.g. {e}");
        }
        let _ = match self.failures().as_slice() {
            [] => writeln!(
                s,
                "- **Verdict: passed**: no flow of a live, unchanged node moved while the table \
                 held it, every reload was answered ok, every stopped node was seen down, RSS \
                 flat, threads, open files, backend slots and metric series steady."
            ),
            f => writeln!(s, "- **Verdict: FAILED**: {}.", f.join("; ")),
        };
        s
    }
}
