//! The sync thread: the shell around the pure parts (`exceptions`, `peers`,
//! `install`, `wire`). It owns the UDP socket and a handle of its own on the
//! connection table, so nothing it does — reading a million entries after a ring
//! change, a peer that is down, a full socket buffer — can stall the control
//! loop or the data path: the loop only hands it views and configs over a
//! channel, and every send is non-blocking (a datagram that would block is
//! dropped and counted; the next snapshot carries the state).

use std::{
    collections::VecDeque,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{self, Receiver as Rx, SyncSender, TryRecvError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use ring::hmac;

use super::{
    conns::{BpfConns, Cursor},
    exceptions::{self, Exceptions, View},
    install::ConnTable,
    peers::{Receiver, Sender, canonical},
    wire::{self, Entry, Header, MAX_DATAGRAM},
};
use crate::{config::SyncConf, metrics::Metrics};

/// A complete snapshot goes to every peer this often even when nothing changed,
/// so a restarted peer catches up and the peer's lag stays measurable.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The exception set is re-checked (one table lookup per exception) this often,
/// or less often when a re-check takes over a tenth of that.
pub const RECHECK: Duration = Duration::from_secs(1);
/// A second full scan this long after a ring change catches entries a
/// handshake in flight wrote after the first one (its SYN went by the old ring).
pub const RESCAN: Duration = Duration::from_secs(1);
/// Datagrams per second to one peer (about 2.7 MB/s, 46,000 entries/s), with
/// bursts of `BURST`: a large exception set is spread out, never a flood.
pub const RATE: f64 = 2000.0;
pub const BURST: f64 = 256.0;
/// Batches of the table read per turn of the thread (`conns::BATCH` each).
const SCAN_STEPS_PER_TURN: usize = 4;

enum Control {
    View(Arc<View>),
    Configure(SyncConf),
    Stop,
}

/// What `xdplb status` shows of one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerLine {
    pub addr: String,
    pub last_heard: Option<Instant>,
    pub received: u64,
    pub installed: usize,
    pub sent: u64,
}

/// What the endpoints read of sync.
#[derive(Debug, Default)]
pub struct Shared {
    lines: Mutex<(usize, Vec<PeerLine>)>,
}

impl Shared {
    /// The `peers:` section of `xdplb status`.
    #[must_use]
    pub fn render(&self, now: Instant) -> String {
        use std::fmt::Write as _;
        let (local, lines) = self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut out = format!("peers: ({local} local exceptions)\n");
        let _ = writeln!(
            out,
            "  {:<28} {:>12} {:>10} {:>10} {:>10}",
            "PEER", "LAST HEARD", "RECEIVED", "INSTALLED", "SENT"
        );
        for p in lines {
            let heard = p.last_heard.map_or_else(
                || "never".to_owned(),
                |t| format!("{:.1}s ago", now.duration_since(t).as_secs_f64()),
            );
            let _ = writeln!(
                out,
                "  {:<28} {:>12} {:>10} {:>10} {:>10}",
                p.addr, heard, p.received, p.installed, p.sent
            );
        }
        out
    }
}

/// The running sync thread.
pub struct Service {
    tx: SyncSender<Control>,
    pub shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    /// Binds `conf.listen` and starts the thread.
    pub fn spawn(conf: &SyncConf, conns: BpfConns, metrics: Arc<Metrics>) -> Result<Self> {
        let socket = UdpSocket::bind(conf.listen)
            .with_context(|| format!("sync.listen {}: binding the UDP socket", conf.listen))?;
        socket.set_nonblocking(true).context("sync socket: non-blocking")?;
        let mut epoch = [0u8; 8];
        crate::config::seed::random(&mut epoch)?;
        let (tx, rx) = mpsc::sync_channel(64);
        let shared = Arc::new(Shared::default());
        let mut worker = Worker {
            socket,
            key: wire::mac_key(&conf.key.0),
            receiver: Receiver::new(&conf.key.0, &conf.peers, conf.max_entries_per_peer),
            sender: Sender::new(u64::from_ne_bytes(epoch)),
            peers: Vec::new(),
            conns,
            view: Arc::new(View::default()),
            local: Exceptions::new(),
            scan: None,
            rescan_at: None,
            next_recheck: Instant::now() + RECHECK,
            next_snapshot: Instant::now(),
            dirty: true,
            metrics,
            shared: Arc::clone(&shared),
        };
        worker.set_peers(&conf.peers);
        info!(
            "sync: listening on {} (udp), peers {}, key fingerprint {:08x}",
            conf.listen,
            conf.peers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            conf.key.fingerprint()
        );
        let thread = std::thread::Builder::new()
            .name("xdplb-sync".into())
            .spawn(move || worker.run(&rx))
            .context("starting the sync thread")?;
        Ok(Self { tx, shared, thread: Some(thread) })
    }

    /// The rings and backends changed: find the exceptions again.
    pub fn view(&self, view: Arc<View>) {
        // Never blocks the loop: a full channel means the thread is behind, and a
        // later view replaces this one anyway.
        if self.tx.try_send(Control::View(view)).is_err() {
            warn!("sync: thread behind; a ring change is taken with the next one");
        }
    }

    /// A reload: new peers or key.
    pub fn configure(&self, conf: &SyncConf) {
        let _ = self.tx.try_send(Control::Configure(conf.clone()));
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.tx.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What is sent to one peer.
struct PeerTx {
    addr: SocketAddr,
    /// Where datagrams go (IPv4 peers as mapped addresses on an IPv6 socket).
    dest: SocketAddr,
    label: String,
    queue: VecDeque<(Header, Vec<Entry>)>,
    tokens: f64,
    refilled: Instant,
    sent: u64,
}

/// A full read of the table in progress.
struct Scan {
    cursor: Cursor,
    found: Exceptions,
    started: Instant,
    /// Follow it with a second scan (`RESCAN`).
    rescan: bool,
}

struct Worker {
    socket: UdpSocket,
    key: hmac::Key,
    receiver: Receiver,
    sender: Sender,
    peers: Vec<PeerTx>,
    conns: BpfConns,
    view: Arc<View>,
    local: Exceptions,
    scan: Option<Scan>,
    rescan_at: Option<Instant>,
    next_recheck: Instant,
    next_snapshot: Instant,
    /// The local set changed since the last snapshot.
    dirty: bool,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Worker {
    fn run(mut self, rx: &Rx<Control>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Control::View(v)) => {
                        self.view = v;
                        self.start_scan(true);
                    }
                    Ok(Control::Configure(c)) => self.configure(&c),
                    Ok(Control::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            self.scan_some(now);
            if self.rescan_at.is_some_and(|at| now >= at) && self.scan.is_none() {
                self.rescan_at = None;
                self.start_scan(false);
            }
            self.receive(&mut buf, now);
            if now >= self.next_recheck {
                let t = Instant::now();
                let conns = &self.conns;
                self.dirty |= exceptions::recheck(&self.view, &mut self.local, |f| conns.get(f));
                // At most a tenth of the thread's time, however many exceptions.
                self.next_recheck = now + RECHECK.max(t.elapsed() * 10);
                self.publish(now);
            }
            self.snapshot(now);
            let busy = self.send(now);
            let wait = if self.scan.is_some() || busy { 0 } else { 20 };
            let mut fd =
                libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd we own, for the duration of the call.
            unsafe { libc::poll(&raw mut fd, 1, wait) };
        }
    }

    fn set_peers(&mut self, peers: &[SocketAddr]) {
        let v6 = self.socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let old = std::mem::take(&mut self.peers);
        for &addr in peers {
            let addr = canonical(addr);
            let dest = match addr.ip() {
                IpAddr::V4(a) if v6 => SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), addr.port()),
                _ => addr,
            };
            let kept = old.iter().find(|p| p.addr == addr).map_or(0, |p| p.sent);
            self.peers.push(PeerTx {
                addr,
                dest,
                label: addr.to_string(),
                queue: VecDeque::new(),
                tokens: BURST,
                refilled: Instant::now(),
                sent: kept,
            });
        }
        for p in old.iter().filter(|p| !self.peers.iter().any(|n| n.addr == p.addr)) {
            self.metrics.sync.lag(&p.label, None);
        }
    }

    fn configure(&mut self, conf: &SyncConf) {
        self.key = wire::mac_key(&conf.key.0);
        let released = self.receiver.configure(&conf.key.0, &conf.peers, conf.max_entries_per_peer);
        self.set_peers(&conf.peers);
        self.release(released);
        self.dirty = true;
        info!(
            "sync: peers now {}",
            conf.peers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
    }

    /// Entries no peer owns any more (it restarted, or left the config): they
    /// stay in the table (flows it carried may run here now) and become this
    /// balancer's, while they are exceptions here.
    fn release(&mut self, released: Vec<(lb_common::FlowKey, lb_common::ConnValue)>) {
        if released.is_empty() {
            return;
        }
        exceptions::find(&self.view, released, |_| false, &mut self.local);
        self.dirty = true;
    }

    fn start_scan(&mut self, rescan: bool) {
        self.scan = Some(Scan {
            cursor: Cursor::default(),
            found: Exceptions::new(),
            started: Instant::now(),
            rescan,
        });
    }

    /// A bounded part of a full scan; at its end the set is replaced.
    fn scan_some(&mut self, now: Instant) {
        let Some(scan) = &mut self.scan else { return };
        let mut batch = Vec::with_capacity(super::conns::BATCH);
        for _ in 0..SCAN_STEPS_PER_TURN {
            batch.clear();
            if let Err(e) = self.conns.scan_step(&mut scan.cursor, &mut batch) {
                warn!("sync: {e:#}; the exceptions are found again at the next ring change");
                scan.cursor.done = true;
            }
            let receiver = &self.receiver;
            exceptions::find(
                &self.view,
                batch.drain(..),
                |f| receiver.is_installed(f),
                &mut scan.found,
            );
            if scan.cursor.done {
                break;
            }
        }
        if !scan.cursor.done {
            return;
        }
        let Some(scan) = self.scan.take() else { return };
        let took = now.saturating_duration_since(scan.started);
        self.metrics.sync.scanned(took.as_secs_f64());
        if scan.found.len() != self.local.len()
            || scan.found.keys().any(|k| !self.local.contains_key(k))
        {
            self.dirty = true;
        }
        log::debug!("sync: {} exceptions found in {took:?}", scan.found.len());
        self.local = scan.found;
        if scan.rescan {
            self.rescan_at = Some(now + RESCAN);
        }
        self.publish(now);
    }

    fn receive(&mut self, buf: &mut [u8], now: Instant) {
        for _ in 0..256 {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("sync: receiving: {e}");
                    return;
                }
            };
            let got = self.receiver.datagram(
                from,
                &buf[..n],
                now,
                wall_ms(),
                &self.view,
                &mut self.conns,
            );
            match got {
                Err(reject) => self.metrics.sync.rejected(reject.name()),
                Ok(r) => {
                    let label = r.peer.map(|p| p.to_string()).unwrap_or_default();
                    self.metrics.sync.received(&label, r.entries);
                    if let Some(i) = r.installs {
                        self.metrics.sync.refused("cap", i.cap);
                        self.metrics.sync.refused("unknown_backend", i.unknown_backend);
                        self.metrics.sync.refused("present", i.present);
                        if i.installed + i.removed > 0 {
                            log::debug!(
                                "sync: from {label}: {} installed, {} withdrawn",
                                i.installed,
                                i.removed
                            );
                        }
                        // A flow a peer now owns is not ours to send.
                        let before = self.local.len();
                        let receiver = &self.receiver;
                        self.local.retain(|f, _| !receiver.is_installed(f));
                        self.dirty |= self.local.len() != before;
                        self.publish(now);
                    }
                    self.release(r.released);
                }
            }
        }
    }

    /// Queues a snapshot for every peer: at once when the set changed (replacing
    /// one still queued), else every `PERIOD` once the last one went out.
    fn snapshot(&mut self, now: Instant) {
        let idle = self.peers.iter().all(|p| p.queue.is_empty());
        if !(self.dirty || (now >= self.next_snapshot && idle)) {
            return;
        }
        self.dirty = false;
        self.next_snapshot = now + PERIOD;
        let entries: Vec<Entry> =
            self.local.iter().map(|(flow, (_, id))| Entry { flow: *flow, id: *id }).collect();
        let chunks = self.sender.snapshot(&entries);
        for p in &mut self.peers {
            p.queue = chunks.iter().cloned().collect();
        }
    }

    /// Sends what the rate allows; true while something is left to send now.
    fn send(&mut self, now: Instant) -> bool {
        let mut busy = false;
        let at = wall_ms();
        for p in &mut self.peers {
            p.tokens = (p.tokens + now.duration_since(p.refilled).as_secs_f64() * RATE).min(BURST);
            p.refilled = now;
            while p.tokens >= 1.0 {
                let Some((h, entries)) = p.queue.pop_front() else { break };
                p.tokens -= 1.0;
                let bytes = self.sender.seal(&self.key, &h, &entries, at);
                match self.socket.send_to(&bytes, p.dest) {
                    Ok(_) => {
                        p.sent += entries.len() as u64;
                        self.metrics.sync.sent(&p.label, entries.len(), bytes.len());
                    }
                    Err(_) => self.metrics.sync.send_dropped(&p.label),
                }
            }
            busy |= !p.queue.is_empty() && p.tokens >= 1.0;
        }
        busy
    }

    /// Gauges and the status lines.
    fn publish(&self, now: Instant) {
        self.metrics.sync.exceptions(self.local.len(), self.receiver.installed());
        let mut lines = Vec::new();
        for p in &self.peers {
            let rx = self.receiver.peers.get(&p.addr);
            let lag = rx.and_then(|r| r.last_complete).map(|t| now.duration_since(t).as_secs_f64());
            self.metrics.sync.lag(&p.label, lag);
            lines.push(PeerLine {
                addr: p.label.clone(),
                last_heard: rx.and_then(|r| r.last_heard),
                received: rx.map_or(0, |r| r.received),
                installed: rx.map_or(0, |r| r.installed.len()),
                sent: p.sent,
            });
        }
        *self.shared.lines.lock().unwrap_or_else(PoisonError::into_inner) =
            (self.local.len(), lines);
    }
}
