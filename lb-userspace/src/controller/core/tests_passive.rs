//! The passive signal in the core, against a fake clock and counters set by the
//! test: which backends are watched, when a suspicion triggers probes, how probe
//! results end it, and that the traffic alone never takes a backend down.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::BackendState;
use log::Level;

use super::tests::{
    CONFIG, TestCore, logs, outputs, parse, probes, resolved, start_with, started, state, target,
    tiered, updates,
};
use super::*;
use crate::{controller::suspicion::Handshakes, health::Failure};

const FAST_TIMEOUT: Duration = Duration::from_millis(40);

/// The data path as the test drives it: cumulative counters per backend index,
/// sampled every 10 ms of a fake clock, as the loop does.
struct DataPath {
    t0: Instant,
    now: Instant,
    counts: BTreeMap<u32, Handshakes>,
}

impl DataPath {
    fn new() -> Self {
        let t0 = Instant::now();
        Self { t0, now: t0, counts: BTreeMap::new() }
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    /// 10 ms pass, in which each backend in `to` got `syns` SYNs and `completed`
    /// handshakes; then the core samples every backend it watches.
    fn sample(
        &mut self,
        core: &mut TestCore,
        to: &[u32],
        syns: u64,
        completed: u64,
    ) -> Vec<Output> {
        self.now += Duration::from_millis(10);
        for index in to {
            let c = self.counts.entry(*index).or_default();
            c.syns += syns;
            c.completed += completed;
        }
        let samples: Vec<(u32, Handshakes)> = core
            .watched()
            .into_iter()
            .map(|i| (i, self.counts.get(&i).copied().unwrap_or_default()))
            .collect();
        core.sampled(self.now, &samples);
        outputs(core)
    }

    /// `n` samples of the same traffic; every output, with the time it came at.
    fn samples(
        &mut self,
        core: &mut TestCore,
        n: usize,
        to: &[u32],
        syns: u64,
        completed: u64,
    ) -> Vec<(u128, Output)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let got = self.sample(core, to, syns, completed);
            out.extend(got.into_iter().map(|o| (self.ms(), o)));
        }
        out
    }

    /// A probe result of `t` arriving now, the probe having taken `took`.
    fn report(
        &self,
        core: &mut TestCore,
        t: &Target,
        failure: Option<Failure>,
        took: Duration,
    ) -> Vec<Output> {
        core.probed(self.now, &Probed { target: t.clone(), failure, duration: took });
        outputs(core)
    }
}

/// Every backend up; outputs taken.
fn all_up() -> TestCore {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    probes(&mut core, "web", "waf-2", true, 2);
    core
}

fn index(core: &TestCore, vip: &str, backend: &str) -> u32 {
    core.writer.backend_index(vip, backend).unwrap()
}

/// The fast probes among `outputs`: (when, target address, timeout).
fn fast_probes(outputs: &[(u128, Output)]) -> Vec<(u128, String, Duration)> {
    outputs
        .iter()
        .filter_map(|(at, o)| match o {
            Output::Probe { target, timeout } => Some((*at, target.address.to_string(), *timeout)),
            _ => None,
        })
        .collect()
}

fn untimed(outputs: &[(u128, Output)]) -> Vec<Output> {
    outputs.iter().map(|(_, o)| o.clone()).collect()
}

fn decided(outputs: &[Output]) -> Vec<(&'static str, Duration)> {
    updates(outputs)
        .into_iter()
        .filter_map(|u| match u {
            Update::SuspicionDecided { outcome, took } => Some((*outcome, *took)),
            _ => None,
        })
        .collect()
}

/// `core` with web/waf-2 suspect since `at` ms (it got SYNs and completed none);
/// the outputs up to then.
fn waf2_suspect(core: &mut TestCore, dp: &mut DataPath) -> Vec<(u128, Output)> {
    let waf2 = index(core, "web", "waf-2");
    dp.samples(core, 1, &[waf2], 0, 0);
    dp.samples(core, 20, &[waf2], 2, 2);
    dp.samples(core, 4, &[waf2], 2, 0)
}

#[test]
fn up_backends_of_tcp_vips_whose_check_is_passive_are_watched() {
    let core = all_up();
    let mut want: Vec<u32> = [("web", "waf-1"), ("web", "waf-2"), ("api", "waf-1")]
        .map(|(v, b)| index(&core, v, b))
        .into();
    want.sort_unstable();
    assert_eq!(core.watched(), want);

    // Down (never risen), drained, or passive off: not watched.
    let mut core = started();
    probes(&mut core, "web", "waf-2", true, 2);
    assert_eq!(core.watched(), [index(&core, "web", "waf-2")]);
    core.set_drained(Instant::now(), "web", "waf-2", true).unwrap();
    assert!(core.watched().is_empty());
    let mut off = start_with(&CONFIG.replace("fall: 3 }", "fall: 3, passive: false }"), resolved());
    probes(&mut off, "web", "waf-1", true, 2);
    assert!(off.watched().is_empty());
    // UDP VIPs have no handshakes.
    let udp = CONFIG.replace("port: 443\n", "port: 443\n    protocol: udp\n");
    let mut udp = start_with(&udp, resolved());
    probes(&mut udp, "web", "waf-1", true, 2);
    assert_eq!(udp.watched(), [index(&udp, "web", "waf-1")]);
}

#[test]
fn standby_reserves_are_watched_only_once_their_tier_is_called() {
    let mut core = tiered("");
    let index = |core: &TestCore, b| index(core, "web", b);
    assert_eq!(core.watched(), [index(&core, "p1"), index(&core, "p2")]);
    probes(&mut core, "web", "p1", false, 1);
    probes(&mut core, "web", "p2", false, 1);
    assert_eq!(core.watched(), [index(&core, "r1"), index(&core, "r2")]);
}

#[test]
fn a_backend_completing_no_handshake_is_probed_at_once_then_every_fast_interval() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    let out = waf2_suspect(&mut core, &mut dp);
    // SYNs from 220 ms on; the first seen waited 30 ms at 250 ms.
    assert_eq!(fast_probes(&out), [(250, "10.0.0.12".into(), FAST_TIMEOUT)]);
    let out = untimed(&out);
    assert_eq!(
        logs(&out, Level::Info),
        ["web/waf-2 is suspect: 8 SYNs and no handshake completed in 30 ms (window 30 ms); \
          probing tcp://10.0.0.12:80 now and every 10 ms"]
    );
    assert!(
        updates(&out).contains(&&Update::Suspicion { vip: "web".into(), backend: "waf-2".into() })
    );
    assert!(updates(&out).contains(&&Update::TriggeredProbe { target: "10.0.0.12:80".into() }));
    assert!(core.is_suspected(&target(&core, "web", "waf-2")));

    // No answer yet: a probe every 10 ms, and the backend stays up.
    let waf2 = index(&core, "web", "waf-2");
    let more = dp.samples(&mut core, 3, &[waf2], 2, 0);
    let at: Vec<u128> = fast_probes(&more).into_iter().map(|p| p.0).collect();
    assert_eq!(at, [260, 270, 280]);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up);
    assert!(logs(&untimed(&more), Level::Info).is_empty(), "one log line per suspicion");
}

#[test]
fn fall_fast_timeouts_take_it_down_and_the_time_from_suspicion_is_reported() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    waf2_suspect(&mut core, &mut dp);
    let t = target(&core, "web", "waf-2");
    let waf2 = index(&core, "web", "waf-2");
    // The three probes sent at 250, 260 and 270 ms time out 40 ms later each.
    dp.samples(&mut core, 4, &[waf2], 2, 0);
    assert!(decided(&dp.report(&mut core, &t, Some(Failure::Timeout), FAST_TIMEOUT)).is_empty());
    dp.samples(&mut core, 1, &[waf2], 2, 0);
    assert!(decided(&dp.report(&mut core, &t, Some(Failure::Timeout), FAST_TIMEOUT)).is_empty());
    dp.samples(&mut core, 1, &[waf2], 2, 0);
    let out = dp.report(&mut core, &t, Some(Failure::Timeout), FAST_TIMEOUT);
    assert_eq!(dp.ms(), 310);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down);
    assert_eq!(decided(&out), [("down", Duration::from_millis(60))]);
    assert_eq!(
        logs(&out, Level::Warn),
        ["web/waf-2 is down (tcp://10.0.0.12:80: 3 consecutive failures, last: timeout)"]
    );
    assert!(logs(&out, Level::Info).contains(&"tcp://10.0.0.12:80: suspicion confirmed in 60 ms"));
    // Out of the ring: no longer watched, no more fast probes.
    assert!(!core.watched().contains(&waf2));
    assert_eq!(fast_probes(&dp.samples(&mut core, 10, &[waf2], 2, 0)), []);
    assert!(!core.is_suspected(&t));
}

#[test]
fn a_refusal_while_suspect_takes_it_down_at_once() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    waf2_suspect(&mut core, &mut dp);
    let t = target(&core, "web", "waf-2");
    let out = dp.report(&mut core, &t, Some(Failure::Refused), Duration::from_micros(200));
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down);
    assert_eq!(decided(&out), [("down", Duration::ZERO)]);
}

#[test]
fn a_probe_answered_after_the_suspicion_refutes_it_and_the_next_needs_twice_the_window() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    waf2_suspect(&mut core, &mut dp);
    let t = target(&core, "web", "waf-2");
    let waf2 = index(&core, "web", "waf-2");
    dp.samples(&mut core, 1, &[waf2], 2, 0);
    let out = dp.report(&mut core, &t, None, Duration::from_millis(1));
    assert_eq!(decided(&out), [("refuted", Duration::from_millis(10))]);
    assert!(logs(&out, Level::Info).contains(
        &"tcp://10.0.0.12:80: suspicion refuted in 10 ms (a probe succeeded); next window 60 ms"
    ));
    assert!(!core.is_suspected(&t));
    // Still no handshakes (forged SYNs, say): the next suspicion 60 ms after the next SYN.
    let out = dp.samples(&mut core, 7, &[waf2], 2, 0);
    assert_eq!(fast_probes(&out), [(330, "10.0.0.12".into(), FAST_TIMEOUT)]);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up);
}

#[test]
fn a_success_of_a_probe_sent_before_the_suspicion_refutes_nothing() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    waf2_suspect(&mut core, &mut dp);
    let t = target(&core, "web", "waf-2");
    // A regular probe that started 20 ms before the suspicion (250 ms) reports at 260.
    dp.samples(&mut core, 1, &[], 0, 0);
    let out = dp.report(&mut core, &t, None, Duration::from_millis(30));
    assert_eq!(decided(&out), []);
    assert!(core.is_suspected(&t));
}

#[test]
fn spoofed_syns_alone_never_take_a_backend_down() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    let all = core.watched();
    dp.samples(&mut core, 1, &all, 0, 0);
    // A minute of SYNs that never complete, to every backend; every fast probe is
    // answered 1 ms later, as a healthy node answers.
    let mut probes_sent = 0;
    for _ in 0..6000 {
        let out = dp.sample(&mut core, &all, 30, 0);
        for o in &out {
            if let Output::Probe { target, .. } = o {
                probes_sent += 1;
                dp.report(&mut core, target, None, Duration::ZERO);
            }
        }
    }
    for (vip, backend) in [("web", "waf-1"), ("web", "waf-2"), ("api", "waf-1")] {
        assert_eq!(state(&core, vip, backend), BackendState::Up, "{vip}/{backend}");
    }
    // The doubling window bounds the probes: per target, 30 ms, 60 ms, ... 10 s.
    assert!((10..=2 * 16).contains(&probes_sent), "{probes_sent} probes in a minute");
}

#[test]
fn backends_sharing_a_target_share_one_episode_of_fast_probes() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    let both = [index(&core, "web", "waf-1"), index(&core, "api", "waf-1")];
    dp.samples(&mut core, 1, &both, 0, 0);
    let out = dp.samples(&mut core, 8, &both, 2, 0);
    assert_eq!(logs(&untimed(&out), Level::Info).len(), 2, "each suspect backend is logged");
    let sent: Vec<u128> = fast_probes(&out).into_iter().map(|p| p.0).collect();
    assert_eq!(sent, [50, 60, 70, 80, 90], "one probe per interval for the target they share");
    let t = target(&core, "web", "waf-1");
    let out = dp.report(&mut core, &t, None, Duration::from_millis(1));
    assert_eq!(decided(&out).len(), 1);
}

#[test]
fn an_episode_without_an_answer_expires_once_the_regular_checks_would_have_decided() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    waf2_suspect(&mut core, &mut dp);
    let waf2 = index(&core, "web", "waf-2");
    // fall 3 x interval 200 ms + timeout 150 ms = 750 ms after the suspicion at 250 ms.
    let out = dp.samples(&mut core, 80, &[waf2], 2, 0);
    let ends: Vec<u128> = out
        .iter()
        .filter(|(_, o)| matches!(o, Output::Metric(Update::SuspicionDecided { .. })))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(ends, [1010]);
    assert_eq!(decided(&untimed(&out)), [("expired", Duration::from_millis(760))]);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up);
}

#[test]
fn a_reload_that_stops_probing_a_suspect_target_ends_its_episode() {
    let mut core = all_up();
    let mut dp = DataPath::new();
    waf2_suspect(&mut core, &mut dp);
    let t = target(&core, "web", "waf-2");
    let without_waf2 = CONFIG.replace("      - { name: waf-2, address: 10.0.0.12 }\n", "");
    core.reload(dp.now, Ok(parse(&without_waf2))).unwrap();
    outputs(&mut core);
    let out = dp.samples(&mut core, 1, &[], 0, 0);
    assert_eq!(decided(&untimed(&out)).len(), 1);
    assert_eq!(fast_probes(&out), []);
    assert!(!core.is_suspected(&t));
}
