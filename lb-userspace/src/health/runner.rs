//! Runs one probe loop per distinct [`Target`] on tokio and reports every probe
//! and every up/down flip as a [`HealthEvent`].
//!
//! The initial state of a target (`spec.initially_up`) is not announced: read it
//! with [`HealthRunner::state`] after [`HealthRunner::set_targets`]. `Changed` is
//! sent only on a flip, so a consumer can log and count every `Changed` it gets.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use log::debug;
use tokio::{
    runtime::Handle,
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until},
};

use super::{CheckKind, CheckSpec, Failure, Hysteresis, Transition, probe};

/// Below this, a (misconfigured) interval would make a loop spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// What one probe loop checks. Backends that share an address and a spec share
/// one `Target`, and so one loop and one state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub address: IpAddr,
    pub spec: CheckSpec,
}

impl Target {
    /// Same address and same request, whatever the timing and thresholds: the
    /// state of one is evidence for the other.
    #[must_use]
    pub fn same_probe(&self, other: &Self) -> bool {
        let (a, b) = (&self.spec, &other.spec);
        self.address == other.address
            && a.kind == b.kind
            && a.port == b.port
            && a.path == b.path
            && a.host == b.host
            && a.expect_status == b.expect_status
            && a.tls_verify == b.tls_verify
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = SocketAddr::new(self.address, self.spec.port);
        match self.spec.kind {
            CheckKind::Tcp => write!(f, "tcp://{endpoint}"),
            CheckKind::Http => write!(f, "http://{endpoint}{}", self.spec.path),
            CheckKind::Https => write!(f, "https://{endpoint}{}", self.spec.path),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    /// After every probe.
    Probe { target: Target, ok: bool, failure: Option<Failure>, duration: Duration },
    /// After the probe that flipped the state (sent right after its `Probe`).
    Changed { target: Target, up: bool, reason: String },
}

/// Owns the probe loops. Dropping it stops them all.
pub struct HealthRunner {
    events: mpsc::Sender<HealthEvent>,
    runtime: Handle,
    loops: BTreeMap<Target, ProbeLoop>,
}

struct ProbeLoop {
    up: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthRunner {
    /// Loops run on the tokio runtime this is called from (it panics outside
    /// one), so `set_targets` may then be called from any thread.
    ///
    /// A full `events` channel delays the loops rather than losing a `Changed`;
    /// once its receiver is dropped the loops stop probing.
    #[must_use]
    pub fn new(events: mpsc::Sender<HealthEvent>) -> Self {
        Self { events, runtime: Handle::current(), loops: BTreeMap::new() }
    }

    /// Makes `targets` the set being checked (duplicates collapse). Loops of
    /// targets already checked keep running with their state; loops of targets
    /// not listed stop; new targets start at `spec.initially_up`, except that a
    /// target replacing one with the [`Target::same_probe`] (only timing or
    /// thresholds changed) starts at that one's state, so a reload that tunes
    /// intervals does not take every backend down for `rise` probes.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = Target>) {
        let wanted: BTreeSet<Target> = targets.into_iter().collect();
        let mut removed = Vec::new();
        for (target, probe_loop) in std::mem::take(&mut self.loops) {
            if wanted.contains(&target) {
                self.loops.insert(target, probe_loop);
            } else {
                removed.push((target, probe_loop));
            }
        }
        for target in wanted {
            if self.loops.contains_key(&target) {
                continue;
            }
            let inherited = removed
                .iter()
                .find(|(old, _)| old.same_probe(&target))
                .map(|(_, old)| old.up.load(Ordering::Acquire));
            let up = inherited.unwrap_or(target.spec.initially_up);
            debug!("health: checking {target} (starts {})", if up { "up" } else { "down" });
            let health = Hysteresis::new(up, target.spec.rise, target.spec.fall);
            let up = Arc::new(AtomicBool::new(up));
            let task = self.runtime.spawn(probe_loop(
                target.clone(),
                health,
                up.clone(),
                self.events.clone(),
                XorShift::seeded(&target),
            ));
            self.loops.insert(target, ProbeLoop { up, task });
        }
        for (target, _stopped) in removed {
            debug!("health: stopped checking {target}");
        }
    }

    /// Current state of a checked target; `None` if it is not checked. Before its
    /// first flip this is its initial state (see [`HealthRunner::set_targets`]).
    #[must_use]
    pub fn state(&self, target: &Target) -> Option<bool> {
        self.loops.get(target).map(|l| l.up.load(Ordering::Acquire))
    }

    /// The targets being checked, in order.
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

async fn probe_loop(
    target: Target,
    mut health: Hysteresis,
    up: Arc<AtomicBool>,
    events: mpsc::Sender<HealthEvent>,
    mut rng: XorShift,
) {
    let interval = target.spec.interval.max(MIN_INTERVAL);
    // Targets added together (start-up, reload) would otherwise probe in lockstep.
    sleep(rng.below(interval)).await;
    loop {
        let started = Instant::now();
        let result = probe(target.address, &target.spec).await;
        let duration = started.elapsed();
        let failure = result.err();
        if let Some(failure) = &failure {
            debug!("health: {target}: probe failed: {failure}");
        }
        let changed = health.observe(failure.is_none()).map(|flip| {
            up.store(flip.is_up(), Ordering::Release);
            let reason = reason(flip, &health, failure.as_ref());
            // The controller logs the flip with the backends it affects.
            debug!("health: {target} is {}: {reason}", if flip.is_up() { "up" } else { "down" });
            HealthEvent::Changed { target: target.clone(), up: flip.is_up(), reason }
        });
        let ok = failure.is_none();
        let probed = HealthEvent::Probe { target: target.clone(), ok, failure, duration };
        if events.send(probed).await.is_err() {
            debug!("health: {target}: event receiver gone, stopping");
            return;
        }
        if let Some(changed) = changed
            && events.send(changed).await.is_err()
        {
            return;
        }
        sleep_until(started + rng.jitter(interval)).await;
    }
}

/// "3 consecutive failures, last: connection refused", "2 consecutive successes".
fn reason(flip: Transition, health: &Hysteresis, failure: Option<&Failure>) -> String {
    match flip {
        Transition::Up => {
            let n = health.rise();
            format!("{n} consecutive {}", if n == 1 { "success" } else { "successes" })
        }
        Transition::Down => {
            let n = health.fall();
            let last = failure.map_or_else(String::new, |f| format!(", last: {f}"));
            format!("{n} consecutive {}{last}", if n == 1 { "failure" } else { "failures" })
        }
    }
}

/// xorshift64*: jitter only needs to differ between loops, not be unpredictable.
struct XorShift(u64);

impl XorShift {
    fn seeded(target: &Target) -> Self {
        // A counter too, in case two loops start within the clock's resolution.
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let mut hasher = DefaultHasher::new();
        target.hash(&mut hasher);
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().hash(&mut hasher);
        STARTED.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
        // Zero is xorshift's one fixed point.
        Self(hasher.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
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
    use std::net::Ipv4Addr;

    use tokio::net::TcpListener;

    use super::super::test_server::{Reply, TestServer, spec};
    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// Only reached when an expected event never comes.
    const PATIENCE: Duration = Duration::from_secs(5);

    fn target(server: &TestServer) -> Target {
        Target { address: LOCALHOST, spec: spec(CheckKind::Http, server.port()) }
    }

    fn runner() -> (HealthRunner, mpsc::Receiver<HealthEvent>) {
        let (tx, rx) = mpsc::channel(1024);
        (HealthRunner::new(tx), rx)
    }

    async fn next_event(rx: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("no event in time")
            .expect("channel closed")
    }

    /// Probe results for `of` up to its next `Changed`, and that change.
    async fn until_changed(
        rx: &mut mpsc::Receiver<HealthEvent>,
        of: &Target,
    ) -> (Vec<Option<Failure>>, bool, String) {
        let mut probes = Vec::new();
        loop {
            match next_event(rx).await {
                HealthEvent::Probe { target, ok, failure, .. } if &target == of => {
                    assert_eq!(ok, failure.is_none());
                    probes.push(failure);
                }
                HealthEvent::Changed { target, up, reason } if &target == of => {
                    return (probes, up, reason);
                }
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn changed_is_sent_after_rise_successes_and_after_fall_failures_only() {
        let server = TestServer::http(Reply::Status(200)).await;
        let t = target(&server); // rise 2, fall 3, starts down
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        assert_eq!(runner.state(&t), Some(false), "initial state, announced by no event");

        let (probes, up, reason) = until_changed(&mut rx, &t).await;
        assert_eq!(probes, [None, None]);
        assert!(up);
        assert_eq!(reason, "2 consecutive successes");
        assert_eq!(runner.state(&t), Some(true));

        server.set_reply(Reply::Status(503));
        let (probes, up, reason) = until_changed(&mut rx, &t).await;
        // A probe already answered before the switch may still succeed; then exactly `fall` failures.
        let (before, failures) = probes.split_at(probes.len() - 3);
        assert!(before.iter().all(Option::is_none), "{probes:?}");
        assert!(failures.iter().all(|f| f == &Some(Failure::Status(503))), "{probes:?}");
        assert!(!up);
        assert_eq!(reason, "3 consecutive failures, last: status 503");
        assert_eq!(runner.state(&t), Some(false));

        server.set_reply(Reply::Status(200));
        let (probes, up, _) = until_changed(&mut rx, &t).await;
        assert!(up);
        assert_eq!(probes.iter().rev().take_while(|f| f.is_none()).count(), 2, "{probes:?}");
    }

    #[tokio::test]
    async fn probe_events_carry_the_failure_class_and_a_single_failure_reads_singular() {
        let closed = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut spec = spec(CheckKind::Tcp, port);
        (spec.initially_up, spec.fall) = (true, 1);
        let t = Target { address: LOCALHOST, spec };
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        let HealthEvent::Probe { ok, failure, duration, .. } = next_event(&mut rx).await else {
            panic!("first event must be the probe")
        };
        assert!(!ok);
        assert_eq!(failure.map(|f| f.label()), Some("refused"));
        assert!(duration < PATIENCE);
        let HealthEvent::Changed { up, reason, .. } = next_event(&mut rx).await else {
            panic!("expected a change")
        };
        assert!(!up);
        assert_eq!(reason, "1 consecutive failure, last: connection refused");
    }

    #[tokio::test]
    async fn backends_with_the_same_address_and_spec_share_one_probe_loop() {
        let server = TestServer::http(Reply::Status(200)).await;
        let mut t = target(&server);
        t.spec.rise = 1;
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
        let mut changes = 0;
        while let Ok(event) = rx.try_recv() {
            changes += usize::from(matches!(event, HealthEvent::Changed { .. }));
        }
        assert_eq!(changes, 1, "one loop, one state, one flip");
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
    async fn reload_keeps_unchanged_targets_running_with_their_state_and_stops_removed_ones() {
        let (a, b, c) = (
            TestServer::http(Reply::Status(200)).await,
            TestServer::http(Reply::Status(200)).await,
            TestServer::http(Reply::Status(200)).await,
        );
        let (ta, tb, tc) = (target(&a), target(&b), target(&c));
        let (mut runner, mut rx) = runner();
        runner.set_targets([ta.clone(), tb.clone()]);
        until_changed(&mut rx, &ta).await;
        assert_eq!(runner.state(&ta), Some(true));

        runner.set_targets([ta.clone(), tc.clone()]);
        assert_eq!(runner.state(&ta), Some(true), "kept, not restarted from initially_up");
        assert_eq!(runner.state(&tb), None);
        assert_eq!(runner.state(&tc), Some(false));
        assert_eq!(runner.targets().collect::<Vec<_>>().len(), 2);

        // `c` comes up on its own; `a` never flips again and keeps being probed.
        let a_connections = a.connections();
        loop {
            match next_event(&mut rx).await {
                HealthEvent::Changed { target, .. } if target == tc => break,
                HealthEvent::Changed { target, .. } => {
                    assert_ne!(target, ta, "a flipped after reload");
                }
                HealthEvent::Probe { .. } => {}
            }
        }
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
    async fn a_reload_that_only_retunes_timing_inherits_the_state_of_the_same_probe() {
        let server = TestServer::http(Reply::Status(200)).await;
        let t = target(&server);
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        until_changed(&mut rx, &t).await;

        let mut retuned = t.clone();
        (retuned.spec.interval, retuned.spec.rise) = (Duration::from_millis(60), 5);
        let mut other_path = t.clone();
        other_path.spec.path = "/other".into();
        runner.set_targets([retuned.clone(), other_path.clone()]);
        assert_eq!(runner.state(&t), None);
        assert_eq!(runner.state(&retuned), Some(true));
        assert_eq!(
            runner.state(&other_path),
            Some(false),
            "a different request starts from initially_up"
        );
    }

    #[tokio::test]
    async fn dropping_the_runner_stops_probing() {
        let server = TestServer::http(Reply::Status(200)).await;
        let t = target(&server);
        let (mut runner, mut rx) = runner();
        runner.set_targets([t.clone()]);
        next_event(&mut rx).await;
        drop(runner);
        sleep(Duration::from_millis(100)).await;
        let connections = server.connections();
        sleep(Duration::from_millis(200)).await;
        assert_eq!(server.connections(), connections);
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

    #[test]
    fn targets_display_as_urls() {
        let mut t = Target { address: "::1".parse().unwrap(), spec: spec(CheckKind::Https, 8443) };
        assert_eq!(t.to_string(), "https://[::1]:8443/healthz");
        t.spec.kind = CheckKind::Tcp;
        assert_eq!(t.to_string(), "tcp://[::1]:8443");
    }
}
