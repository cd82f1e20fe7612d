//! Runs one probe loop per distinct [`Target`] on tokio and reports every probe
//! result as a [`Probed`]. What the results mean (rise, fall, which backends are
//! up) is the controller's to decide; this module only probes.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use log::debug;
use tokio::{
    runtime::Handle,
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until},
};

use super::{Failure, Target, probe};

/// Below this, a (misconfigured) interval would make a loop spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// One finished probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probed {
    pub target: Target,
    /// Why it failed; `None` when it succeeded.
    pub failure: Option<Failure>,
    pub duration: Duration,
}

impl Probed {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Owns the probe loops. Dropping it stops them all.
pub struct HealthRunner {
    reports: mpsc::Sender<Probed>,
    runtime: Handle,
    loops: BTreeMap<Target, ProbeLoop>,
}

/// Aborts its task when dropped.
struct ProbeLoop(JoinHandle<()>);

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HealthRunner {
    /// Loops run on the tokio runtime this is called from (it panics outside
    /// one), so `set_targets` may then be called from any thread.
    ///
    /// A full `reports` channel delays the loops rather than losing a result;
    /// once its receiver is dropped the loops stop probing.
    #[must_use]
    pub fn new(reports: mpsc::Sender<Probed>) -> Self {
        Self { reports, runtime: Handle::current(), loops: BTreeMap::new() }
    }

    /// Makes `targets` the set being probed (duplicates collapse). Loops of
    /// targets already probed keep running undisturbed; loops of targets not
    /// listed stop; new targets get a loop.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = Target>) {
        let mut old = std::mem::take(&mut self.loops);
        for target in targets {
            if self.loops.contains_key(&target) {
                continue;
            }
            let probe_loop = old.remove(&target).unwrap_or_else(|| {
                debug!("health: probing {target}");
                let task = self.runtime.spawn(probe_loop(
                    target.clone(),
                    self.reports.clone(),
                    XorShift::seeded(&target),
                ));
                ProbeLoop(task)
            });
            self.loops.insert(target, probe_loop);
        }
        for target in old.keys() {
            debug!("health: stopped probing {target}");
        }
    }

    /// Probes `target` once, now, bounded by `timeout` instead of its own, and
    /// reports it like the loops do (the fast probes of a suspect backend). It runs
    /// beside the target's loop, not in it: a suspicion does not wait for the loop's
    /// turn. A runner dropped meanwhile loses the report; the probe ends by its timeout.
    pub fn probe_once(&self, target: Target, timeout: Duration) {
        let reports = self.reports.clone();
        self.runtime.spawn(async move {
            let mut spec = target.spec.clone();
            spec.timeout = timeout;
            let started = Instant::now();
            let failure = probe(target.address, &spec).await.err();
            let duration = started.elapsed();
            if let Some(failure) = &failure {
                debug!("health: {target}: fast probe failed: {failure}");
            }
            let _ = reports.send(Probed { target, failure, duration }).await;
        });
    }

    /// The targets being probed, in order.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.loops.keys()
    }

    /// Number of probe loops.
    #[must_use]
    pub fn len(&self) -> usize {
        self.loops.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.loops.is_empty()
    }
}

async fn probe_loop(target: Target, reports: mpsc::Sender<Probed>, mut rng: XorShift) {
    let interval = target.spec.interval.max(MIN_INTERVAL);
    // Targets added together (start-up, reload) would otherwise probe in lockstep.
    sleep(rng.below(interval)).await;
    loop {
        let started = Instant::now();
        let failure = probe(target.address, &target.spec).await.err();
        let duration = started.elapsed();
        if let Some(failure) = &failure {
            debug!("health: {target}: probe failed: {failure}");
        }
        if reports.send(Probed { target: target.clone(), failure, duration }).await.is_err() {
            debug!("health: {target}: report receiver gone, stopping");
            return;
        }
        sleep_until(started + rng.jitter(interval)).await;
    }
}

/// Jitter only needs to differ between loops, not be unpredictable.
struct XorShift(crate::xorshift::XorShift);

impl XorShift {
    fn seeded(target: &Target) -> Self {
        // A counter too, in case two loops start within the clock's resolution.
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let mut hasher = DefaultHasher::new();
        target.hash(&mut hasher);
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().hash(&mut hasher);
        STARTED.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
        Self(crate::xorshift::XorShift::new(hasher.finish()))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-high rather than modulo.
    fn below_u64(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..d`.
    fn below(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.below_u64(nanos(d)))
    }

    /// `d` ± 10%, uniform.
    fn jitter(&mut self, d: Duration) -> Duration {
        let d = nanos(d);
        let spread = d / 10;
        let offset = self.below_u64(2 * spread + 1);
        Duration::from_nanos((d - spread).saturating_add(offset))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tokio::net::TcpListener;

    use super::super::{
        CheckKind,
        test_server::{Reply, TestServer, spec},
    };
    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// Only reached when an expected report never comes.
    const PATIENCE: Duration = Duration::from_secs(5);

    fn target(server: &TestServer) -> Target {
        Target { address: LOCALHOST, spec: spec(CheckKind::Http, server.port()) }
    }

    fn runner() -> (HealthRunner, mpsc::Receiver<Probed>) {
        let (tx, rx) = mpsc::channel(1024);
        (HealthRunner::new(tx), rx)
    }

    async fn next_report(rx: &mut mpsc::Receiver<Probed>) -> Probed {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("no report in time")
            .expect("channel closed")
    }

    /// The results of the next `n` probes of `of`.
    async fn results(
        rx: &mut mpsc::Receiver<Probed>,
        of: &Target,
        n: usize,
    ) -> Vec<Option<Failure>> {
        let mut out = Vec::new();
        while out.len() < n {
            let report = next_report(rx).await;
            if &report.target == of {
                assert_eq!(report.ok(), report.failure.is_none());
                out.push(report.failure);
            }
        }
        out
    }

    #[tokio::test]
    async fn every_probe_is_reported_with_its_result_as_the_backend_answers() {
        let server = TestServer::http(Reply::Status(200)).await;
        let t = target(&server);
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        assert_eq!(results(&mut rx, &t, 2).await, [None, None]);

        server.set_reply(Reply::Status(503));
        // A probe already answered before the switch may still succeed.
        let deadline = Instant::now() + PATIENCE;
        while results(&mut rx, &t, 1).await != [Some(Failure::Status(503))] {
            assert!(Instant::now() < deadline, "no failure reported after the switch");
        }
        assert_eq!(
            results(&mut rx, &t, 2).await,
            [Some(Failure::Status(503)), Some(Failure::Status(503))]
        );
    }

    #[tokio::test]
    async fn reports_carry_the_failure_class_and_the_probe_duration() {
        let closed = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let t = Target { address: LOCALHOST, spec: spec(CheckKind::Tcp, port) };
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        let report = next_report(&mut rx).await;
        assert_eq!(report.target, t);
        assert!(!report.ok());
        assert_eq!(report.failure.as_ref().map(Failure::label), Some("refused"));
        assert!(report.duration < PATIENCE);
    }

    #[tokio::test]
    async fn backends_with_the_same_address_and_spec_share_one_probe_loop() {
        let server = TestServer::http(Reply::Status(200)).await;
        let t = target(&server);
        let (mut runner, mut rx) = runner();
        let started = Instant::now();
        runner.set_targets([t.clone(), t.clone()]);
        assert_eq!(runner.len(), 1);
        sleep(Duration::from_millis(400)).await;
        runner.set_targets([]);
        let window = started.elapsed();
        sleep(Duration::from_millis(100)).await; // let a connect in flight land

        // One loop starts probes at least 45 ms apart (50 ms - 10%); two would make twice as many.
        let one_loop_max = 2 + window.as_millis() / 45;
        let connections = server.connections();
        assert!(
            connections >= 1 && connections as u128 <= one_loop_max,
            "{connections} connections in {window:?}"
        );
        let mut reports: u128 = 0;
        while let Ok(report) = rx.try_recv() {
            assert_eq!(report.target, t);
            reports += 1;
        }
        assert!(reports >= 1 && reports <= one_loop_max, "{reports} reports in {window:?}");
    }

    #[tokio::test]
    async fn distinct_specs_on_one_address_get_their_own_loops() {
        let a = TestServer::http(Reply::Status(200)).await;
        let b = TestServer::http(Reply::Status(200)).await;
        let (mut runner, _rx) = runner();
        let mut other_path = target(&a);
        other_path.spec.path = "/other".into();
        runner.set_targets([target(&a), target(&b), other_path]);
        assert_eq!(runner.len(), 3);
    }

    #[tokio::test]
    async fn new_targets_keep_the_loops_they_share_with_the_old_and_stop_the_rest() {
        let (a, b, c) = (
            TestServer::http(Reply::Status(200)).await,
            TestServer::http(Reply::Status(200)).await,
            TestServer::http(Reply::Status(200)).await,
        );
        let (ta, tb, tc) = (target(&a), target(&b), target(&c));
        let (mut runner, mut rx) = runner();
        runner.set_targets([ta.clone(), tb.clone()]);
        results(&mut rx, &ta, 1).await;

        runner.set_targets([ta.clone(), tc.clone()]);
        let mut want = vec![&ta, &tc];
        want.sort();
        assert_eq!(runner.targets().collect::<Vec<_>>(), want);

        // `c` is probed; `a` keeps being probed.
        results(&mut rx, &tc, 1).await;
        let a_connections = a.connections();
        let deadline = Instant::now() + PATIENCE;
        while a.connections() == a_connections {
            assert!(Instant::now() < deadline, "a is no longer probed");
            sleep(Duration::from_millis(10)).await;
        }

        sleep(Duration::from_millis(100)).await;
        let b_connections = b.connections();
        sleep(Duration::from_millis(200)).await;
        assert_eq!(b.connections(), b_connections, "removed target still probed");
    }

    #[tokio::test]
    async fn dropping_the_runner_stops_probing() {
        let server = TestServer::http(Reply::Status(200)).await;
        let t = target(&server);
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        next_report(&mut rx).await;
        drop(runner);
        sleep(Duration::from_millis(100)).await;
        let connections = server.connections();
        sleep(Duration::from_millis(200)).await;
        assert_eq!(server.connections(), connections);
    }

    #[tokio::test]
    async fn a_one_off_probe_reports_at_once_with_its_own_timeout() {
        // A listener that never accepts, its backlog full: connects hang.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(LOCALHOST, 0)).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        while let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr))
                .await
        {
            fillers.push(stream);
        }
        // Its loop would wait 10 s for a probe to time out; the one-off waits 50 ms.
        let mut t = Target { address: LOCALHOST, spec: spec(CheckKind::Tcp, addr.port()) };
        t.spec.timeout = Duration::from_secs(10);
        let (runner, mut rx) = runner();
        let started = Instant::now();
        runner.probe_once(t.clone(), Duration::from_millis(50));
        let report = next_report(&mut rx).await;
        assert_eq!(report.target, t, "reported as the target, not as a spec with another timeout");
        assert_eq!(report.failure, Some(Failure::Timeout));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(runner.is_empty(), "no loop was started");
    }

    #[test]
    fn first_delay_is_within_one_interval_and_later_ones_within_ten_percent() {
        let t = Target { address: LOCALHOST, spec: spec(CheckKind::Tcp, 80) };
        let mut rng = XorShift::seeded(&t);
        let interval = Duration::from_millis(50);
        let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            assert!(rng.below(interval) < interval);
            let next = rng.jitter(interval);
            (low, high) = (low.min(next), high.max(next));
        }
        assert!(
            low >= Duration::from_millis(45) && high <= Duration::from_millis(55),
            "{low:?}..{high:?}"
        );
        // Spread over the range, not stuck at one value.
        assert!(
            low < Duration::from_millis(46) && high > Duration::from_millis(54),
            "{low:?}..{high:?}"
        );
    }

    #[test]
    fn generators_for_different_targets_differ() {
        let mut a =
            XorShift::seeded(&Target { address: LOCALHOST, spec: spec(CheckKind::Tcp, 80) });
        let mut b =
            XorShift::seeded(&Target { address: LOCALHOST, spec: spec(CheckKind::Tcp, 81) });
        assert_ne!(
            (0..4).map(|_| a.next()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next()).collect::<Vec<_>>()
        );
    }
}
