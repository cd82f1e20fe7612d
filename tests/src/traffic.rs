//! Client traffic for the lab: many short HTTP connections (each a new flow, so
//! Maglev spreads them), long-lived keep-alive connections, and UDP datagrams from
//! many source ports. Every request is recorded with its start and end time and its
//! outcome (which WAF answered, or how it failed), so tests and the demo compute
//! rates, failures and detection times from the same records.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::lab::in_netns;

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Connection refused (RST to the SYN): the node is up, its server is not.
    Refused,
    /// No answer in time: the node or its link is gone.
    Timeout,
    /// Reset after connecting.
    Reset,
    /// Anything else (garbage, short reply).
    Other,
}

impl Failure {
    fn from_io(e: &std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::ConnectionRefused => Self::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Self::Timeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                Self::Reset
            }
            _ => Self::Other,
        }
    }
}

/// One request: when it started and ended, and who answered.
#[derive(Clone, Debug)]
pub struct Record {
    pub start: Instant,
    pub end: Instant,
    /// The WAF's name (`waf2`) or the failure.
    pub outcome: Result<String, Failure>,
    /// How long the TCP connect took (a retransmitted SYN shows as a second or
    /// more); `None` when it failed, or was not recorded.
    pub connect: Option<Duration>,
}

impl Record {
    /// Whether the request failed after its connection was established (a
    /// failure that no balancer decision can undo once the node held the flow).
    #[must_use]
    pub fn failed_connected(&self) -> bool {
        self.outcome.is_err() && self.connect.is_some()
    }

    /// Whether the connection itself failed (refused, or no SYN answered in time).
    #[must_use]
    pub fn failed_to_connect(&self) -> bool {
        self.outcome.is_err() && self.connect.is_none()
    }
}

/// Records shared between workers and readers.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Record>>>);

impl Log {
    pub fn push(&self, r: Record) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(r);
    }

    #[must_use]
    pub fn records(&self) -> Vec<Record> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Answers per WAF and failures among `records` that started in `[from, to)`.
#[must_use]
pub fn tally(
    records: &[Record],
    from: Instant,
    to: Instant,
) -> (BTreeMap<String, usize>, BTreeMap<Failure, usize>) {
    tally_by(records, |r| r.start >= from && r.start < to)
}

/// Answers per WAF and failures among all `records`.
#[must_use]
pub fn tally_all(records: &[Record]) -> (BTreeMap<String, usize>, BTreeMap<Failure, usize>) {
    tally_by(records, |_| true)
}

/// `n` HTTP requests on new connections from namespace `ns`, from `workers`
/// threads as fast as they are answered; the first `n` by start time.
pub fn requests(
    ns: &str,
    target: SocketAddr,
    n: usize,
    workers: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let load = HttpLoad::start(ns, target, workers, 1.0e6, timeout)?;
    let start = Instant::now();
    while load.log.records().len() < n {
        anyhow::ensure!(
            start.elapsed() < Duration::from_mins(2),
            "{n} requests to {target} take more than 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut records = load.stop();
    records.sort_by_key(|r| r.start);
    records.truncate(n);
    Ok(records)
}

/// As `tally`, for requests that ended in `[from, to)` (what a per-second rate shows).
#[must_use]
pub fn tally_ended(
    records: &[Record],
    from: Instant,
    to: Instant,
) -> (BTreeMap<String, usize>, BTreeMap<Failure, usize>) {
    tally_by(records, |r| r.end >= from && r.end < to)
}

/// As `tally`, for requests wholly inside `[from, to)`: started and ended there.
/// What failed "before" an event must have ended before it: a request in flight
/// when a node is stopped is reset by the stop, not before it.
#[must_use]
pub fn tally_within(
    records: &[Record],
    from: Instant,
    to: Instant,
) -> (BTreeMap<String, usize>, BTreeMap<Failure, usize>) {
    tally_by(records, |r| r.start >= from && r.end < to)
}

fn tally_by(
    records: &[Record],
    pick: impl Fn(&Record) -> bool,
) -> (BTreeMap<String, usize>, BTreeMap<Failure, usize>) {
    let mut ok = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for r in records.iter().filter(|r| pick(r)) {
        match &r.outcome {
            Ok(name) => *ok.entry(name.clone()).or_default() += 1,
            Err(f) => *failed.entry(*f).or_default() += 1,
        }
    }
    (ok, failed)
}

/// One HTTP/1.1 GET on a fresh connection; the body is the WAF's name.
pub fn http_once(target: SocketAddr, timeout: Duration) -> Result<String, Failure> {
    http_timed(target, timeout).1
}

/// `http_once`, recorded: the connect time (`None` if the connect failed) and
/// the outcome.
pub fn http_timed(
    target: SocketAddr,
    timeout: Duration,
) -> (Option<Duration>, Result<String, Failure>) {
    let start = Instant::now();
    let s = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => return (None, Err(Failure::from_io(&e))),
    };
    (Some(start.elapsed()), exchange(s, timeout))
}

fn exchange(mut s: TcpStream, timeout: Duration) -> Result<String, Failure> {
    s.set_read_timeout(Some(timeout)).map_err(|e| Failure::from_io(&e))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| Failure::from_io(&e))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .map_err(|e| Failure::from_io(&e))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| Failure::from_io(&e))?;
    body_name(&text).ok_or(Failure::Other)
}

fn body_name(response: &str) -> Option<String> {
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = response.split_once("\r\n\r\n")?.1.trim();
    (!body.is_empty() && body.len() < 32).then(|| body.to_owned())
}

/// What a bulk HTTP exchange got back.
#[derive(Debug)]
pub struct Bulk {
    pub status: u16,
    /// The answering node, from its `X-Waf` header.
    pub waf: String,
    pub body: Vec<u8>,
}

/// One HTTP/1.1 request on a new connection with `body` sent whole, the answer read
/// to its end. `timeout` bounds the connect and every read and write, so a stalled
/// transfer fails instead of hanging.
pub fn http_bulk(
    target: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Bulk> {
    let mut s = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connecting to {target}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: vip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).context("sending the request head")?;
    s.write_all(body).with_context(|| format!("sending {} bytes of body", body.len()))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .with_context(|| format!("reading the answer ({} bytes so far)", answer.len()))?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end in {} bytes", answer.len()))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let waf = header("X-Waf").unwrap_or_default();
    let body = answer[split + 4..].to_vec();
    if let Some(len) = header("Content-Length").and_then(|l| l.parse::<usize>().ok())
        && len != body.len()
    {
        bail!("{status} from {waf}: Content-Length {len} but {} bytes of body", body.len());
    }
    Ok(Bulk { status, waf, body })
}

/// Steady HTTP load from a namespace: `workers` threads, each sending one request
/// on a new connection every `1 / rate_per_worker` (or as fast as answers come),
/// their turns spread evenly over the period.
pub struct HttpLoad {
    pub log: Log,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpLoad {
    pub fn start(
        ns: &str,
        target: SocketAddr,
        workers: usize,
        rate_per_worker: f64,
        timeout: Duration,
    ) -> Result<Self> {
        let log = Log::default();
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(1.0 / rate_per_worker);
        let mut threads = Vec::new();
        let first = Instant::now();
        for i in 0..workers {
            let (log, stop, ns) = (log.clone(), Arc::clone(&stop), ns.to_owned());
            // Workers take turns through each period, as independent clients would,
            // rather than all sending at once.
            let offset = period * u32::try_from(i)? / u32::try_from(workers)?;
            // Each worker lives in the namespace for its whole life.
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let entered = in_netns(Some(&ns), || {
                    let _ = ready_tx.send(Ok(()));
                    let mut next = first + offset;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let (connect, outcome) = http_timed(target, timeout);
                        log.push(Record { start, end: Instant::now(), outcome, connect });
                        next += period;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        } else {
                            next = Instant::now();
                        }
                    }
                    Ok(())
                });
                if let Err(e) = entered {
                    let _ = ready_tx.send(Err(e));
                }
            }));
            ready_rx.recv().map_err(|_| anyhow!("load worker died"))??;
        }
        Ok(Self { log, stop, threads })
    }

    /// Stops the workers (after their current request) and returns every record.
    #[must_use]
    pub fn stop(mut self) -> Vec<Record> {
        self.halt();
        self.log.records()
    }

    /// Asks it to stop after its current request or pause, without waiting (so
    /// that many stop together; dropping it waits).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HttpLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A keep-alive connection that sends a request every `period` and records each
/// answer: it must keep talking to the same WAF, without a reset, through failovers
/// elsewhere.
pub struct LongLived {
    pub log: Log,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The WAF it reached first.
    pub backend: String,
    /// The client's end of the connection (which balancer carries it, behind ECMP).
    pub local: SocketAddr,
}

impl LongLived {
    pub fn open(ns: &str, target: SocketAddr, period: Duration) -> Result<Self> {
        let log = Log::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let (l, st, ns) = (log.clone(), Arc::clone(&stop), ns.to_owned());
        let thread = std::thread::spawn(move || {
            let result = in_netns(Some(&ns), || {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let local = s.local_addr()?;
                let mut first = Some(first_tx);
                while !st.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let outcome = keepalive_request(&mut s);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(
                            outcome
                                .clone()
                                .map(|b| (b, local))
                                .map_err(|f| anyhow!("first request failed: {f:?}")),
                        );
                    }
                    let failed = outcome.is_err();
                    l.push(Record { start, end: Instant::now(), outcome, connect: None });
                    if failed {
                        break; // a broken connection stays broken
                    }
                    std::thread::sleep(period);
                }
                Ok(())
            });
            if let Err(e) = result {
                eprintln!("long-lived connection: {e:#}");
            }
        });
        let (backend, local) = first_rx
            .recv_timeout(Duration::from_secs(5))
            .context("long-lived connection did not start")??;
        Ok(Self { log, stop, thread: Some(thread), backend, local })
    }

    /// Stops it; returns (answers from its first backend, any other outcome).
    #[must_use]
    pub fn close(mut self) -> (usize, Vec<Record>) {
        self.halt();
        let records = self.log.records();
        let same =
            records.iter().filter(|r| r.outcome.as_deref() == Ok(self.backend.as_str())).count();
        let other = records
            .into_iter()
            .filter(|r| r.outcome.as_deref() != Ok(self.backend.as_str()))
            .collect();
        (same, other)
    }

    /// Asks it to stop after its current request or pause, without waiting (so
    /// that many stop together; dropping it waits).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.halt();
    }
}

fn keepalive_request(s: &mut TcpStream) -> Result<String, Failure> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n").map_err(|e| Failure::from_io(&e))?;
    // Read one response: headers, then Content-Length bytes.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).map_err(|e| Failure::from_io(&e))?;
        if n == 0 {
            return Err(Failure::Reset);
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .ok_or(Failure::Other)?;
            if body.len() >= len {
                return body_name(&text).ok_or(Failure::Other);
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(Failure::Other);
        }
    }
}

/// Sends one datagram from each of `ports` fresh sockets and collects the answering
/// WAF's name per datagram (`Err(Timeout)` when none came back).
pub fn udp_spread(
    ns: &str,
    target: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Result<String, Failure>>> {
    in_netns(Some(ns), move || {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(format!("hello {i}").as_bytes(), target)?;
            let mut buf = [0u8; 64];
            out.push(match s.recv_from(&mut buf) {
                Ok((n, from)) if from.ip() == target.ip() => {
                    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
                }
                Ok(_) => Err(Failure::Other),
                Err(e) => Err(Failure::from_io(&e)),
            });
        }
        Ok(out)
    })
}

/// Fails unless every name in `counts` is within `tolerance` (0.1 = 10%) of an equal share.
#[expect(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
pub fn check_spread(counts: &BTreeMap<String, usize>, nodes: usize, tolerance: f64) -> Result<()> {
    let total: usize = counts.values().sum();
    let share = total as f64 / nodes as f64;
    if counts.len() != nodes {
        bail!("{} of {nodes} nodes answered: {counts:?}", counts.len());
    }
    for (name, n) in counts {
        if (*n as f64 - share).abs() > share * tolerance {
            bail!(
                "{name} got {n} of {total} (share {share:.0} ± {:.0}): {counts:?}",
                share * tolerance
            );
        }
    }
    Ok(())
}
