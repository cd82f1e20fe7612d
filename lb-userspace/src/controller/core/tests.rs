//! What the controller decides, event by event, against maps and neighbour
//! tables in memory: no root, no kernel, no clock.

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lb_common::{BackendState, limits::NO_BACKEND};

use super::*;
use crate::{
    config,
    controller::{balancer_health::Health, status::Starting},
    health::Failure,
    neighbours::Tables,
    testing::{FakeMaps, FakeNeighbours},
};

const IFINDEX: u32 = 2;
const MAC_1: Mac = [2, 0, 0, 0, 0, 0x11];
const MAC_2: Mac = [2, 0, 0, 0, 0, 0x12];

/// waf-1 serves two VIPs (one address, one check: one probe target); waf-2 one.
/// The flow-hash seed is set so that no config warning depends on the host's
/// /etc/xdplb/hash-seed.
pub(super) const CONFIG: &str = "
interface: eth0
hash_seed: 000102030405060708090a0b0c0d0e0f
health_check_defaults: { kind: tcp, port: 80, rise: 2, fall: 3 }
vips:
  - name: web
    address: 192.0.2.1
    port: 80
    backends:
      - { name: waf-1, address: 10.0.0.11 }
      - { name: waf-2, address: 10.0.0.12 }
  - name: api
    address: 192.0.2.2
    port: 443
    backends:
      - { name: waf-1, address: 10.0.0.11 }
";

pub(super) type TestCore = Core<FakeMaps>;

pub(super) fn parse(yaml: &str) -> Config {
    config::parse(yaml, "test.yaml").unwrap()
}

pub(super) fn interface() -> Interface {
    Interface { name: "eth0".into(), index: IFINDEX, mac: [2, 0, 0, 0, 0, 1], mtu: 1500 }
}

pub(super) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Neighbour tables in which both WAF nodes resolve.
pub(super) fn resolved() -> FakeNeighbours {
    let mut n = FakeNeighbours::default();
    n.resolve(IFINDEX, ip("10.0.0.11"), MAC_1);
    n.resolve(IFINDEX, ip("10.0.0.12"), MAC_2);
    n
}

pub(super) fn start_with(yaml: &str, neighbours: FakeNeighbours) -> TestCore {
    let tables = Ok(neighbours.tables);
    Core::start(parse(yaml), interface(), FakeMaps::default(), false, tables, Instant::now())
        .unwrap()
}

/// Started on `CONFIG`, every MAC resolved, its start-up outputs taken.
pub(super) fn started() -> TestCore {
    let mut core = start_with(CONFIG, resolved());
    outputs(&mut core);
    core.poll_status();
    core
}

/// `started`, then every backend up, and web/waf-2 drained; outputs taken.
fn up_with_waf2_drained() -> TestCore {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    probes(&mut core, "web", "waf-2", true, 2);
    core.set_drained(Instant::now(), "web", "waf-2", true).unwrap();
    outputs(&mut core);
    core
}

pub(super) fn outputs(core: &mut TestCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

pub(super) fn logs(outputs: &[Output], level: Level) -> Vec<&str> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Log { level: l, text } if *l == level => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

pub(super) fn updates(outputs: &[Output]) -> Vec<&Update> {
    outputs.iter().filter_map(|o| if let Output::Metric(u) = o { Some(u) } else { None }).collect()
}

fn transitions(outputs: &[Output]) -> Vec<(String, String, BackendState)> {
    updates(outputs)
        .into_iter()
        .filter_map(|u| match u {
            Update::Transition { vip, backend, to } => Some((vip.clone(), backend.clone(), *to)),
            _ => None,
        })
        .collect()
}

pub(super) fn written(outputs: &[Output]) -> Vec<(&'static str, Applied)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Written { why, applied, .. } => Some((*why, *applied)),
            _ => None,
        })
        .collect()
}

fn probe_targets(outputs: &[Output]) -> Vec<&BTreeSet<Target>> {
    outputs
        .iter()
        .filter_map(|o| if let Output::ProbeTargets(t) = o { Some(t) } else { None })
        .collect()
}

/// The probe target of `vip`/`backend` in the running config.
pub(super) fn target(core: &TestCore, vip: &str, backend: &str) -> Target {
    core.backends[&(vip.to_owned(), backend.to_owned())].check.clone()
}

pub(super) fn probe(core: &mut TestCore, target: &Target, failure: Option<Failure>) {
    let report = Probed { target: target.clone(), failure, duration: Duration::from_millis(1) };
    core.probed(Instant::now(), &report);
}

/// `n` probe results of `vip`/`backend`'s target: successes, or timeouts (which,
/// unlike refusals, count towards `fall`).
pub(super) fn probes(
    core: &mut TestCore,
    vip: &str,
    backend: &str,
    ok: bool,
    n: usize,
) -> Vec<Output> {
    let t = target(core, vip, backend);
    for _ in 0..n {
        probe(core, &t, if ok { None } else { Some(Failure::Timeout) });
    }
    outputs(core)
}

pub(super) fn state(core: &TestCore, vip: &str, backend: &str) -> BackendState {
    core.observed()[&(vip.to_owned(), backend.to_owned())].state()
}

/// Whether the VIP's ring, as written, sends new flows to the backend.
fn in_ring(core: &TestCore, vip: &str, backend: &str) -> bool {
    let index = core.writer.backend_index(vip, backend).unwrap();
    core.writer.table(vip).unwrap().contains(&index)
}

/// The backend's entry in the maps.
fn entry(core: &TestCore, vip: &str, backend: &str) -> lb_common::Backend {
    let index = core.writer.backend_index(vip, backend).unwrap();
    core.writer.maps().backends[&index]
}

// --- start ---

#[test]
fn a_fresh_start_probes_each_target_once_and_keeps_backends_down_until_they_rise() {
    let mut core = start_with(CONFIG, resolved());
    let out = outputs(&mut core);
    let targets = probe_targets(&out);
    assert_eq!(targets.len(), 1);
    let addresses: Vec<IpAddr> = targets[0].iter().map(|t| t.address).collect();
    assert_eq!(addresses, [ip("10.0.0.11"), ip("10.0.0.12")], "waf-1's two VIPs share one target");
    assert_eq!(written(&out).len(), 1);
    assert_eq!(written(&out)[0].0, "start");
    for (vip, backend) in [("web", "waf-1"), ("web", "waf-2"), ("api", "waf-1")] {
        assert_eq!(state(&core, vip, backend), BackendState::Down);
    }
    assert!(core.writer.table("web").unwrap().iter().all(|s| *s == NO_BACKEND));
    assert_eq!(entry(&core, "web", "waf-1").mac, MAC_1, "MACs are read before the first write");
    assert!(core.poll_status().is_some(), "the first status is published");
}

#[test]
fn a_restart_adopts_the_pinned_state_so_traffic_keeps_flowing() {
    let first = up_with_waf2_drained();
    let pinned = first.writer.maps().clone();

    let mut again = Core::start(
        parse(CONFIG),
        interface(),
        pinned,
        true,
        Ok(Tables::default()),
        Instant::now(),
    )
    .unwrap();
    let out = outputs(&mut again);
    assert_eq!(
        logs(&out, Level::Info),
        ["adopted 3 backends from the pinned maps (0 stale entries will be removed)"]
    );
    assert_eq!(state(&again, "web", "waf-1"), BackendState::Up, "no rise probes needed");
    assert_eq!(state(&again, "api", "waf-1"), BackendState::Up);
    assert_eq!(state(&again, "web", "waf-2"), BackendState::Draining);
    assert!(written(&out)[0].1.is_empty(), "the same state: nothing to write");
    assert!(in_ring(&again, "web", "waf-1") && !in_ring(&again, "web", "waf-2"));
    assert_eq!(entry(&again, "web", "waf-2").mac, MAC_2, "the MAC is adopted too");
}

/// A restarted core on a copy of `first`'s maps (what the pins hold).
fn restarted(first: &TestCore) -> TestCore {
    let pinned = first.writer.maps().clone();
    let mut again = Core::start(
        parse(CONFIG),
        interface(),
        pinned,
        true,
        Ok(resolved().tables),
        Instant::now(),
    )
    .unwrap();
    outputs(&mut again);
    again
}

#[test]
fn a_drain_survives_a_restart_even_when_the_node_was_down_at_the_time() {
    let mut first = started();
    probes(&mut first, "web", "waf-1", true, 2);
    assert_eq!(
        first.set_drained(Instant::now(), "web", "waf-2", true),
        Ok("web/waf-2 is down".into())
    );
    let mut again = restarted(&first);
    assert!(again.observed()[&("web".into(), "waf-2".into())].drained, "the drain was kept");
    probes(&mut again, "web", "waf-2", true, 2);
    assert_eq!(state(&again, "web", "waf-2"), BackendState::Draining);
    assert!(!in_ring(&again, "web", "waf-2"), "a drained node that recovers gets no new flows");
}

#[test]
fn a_restart_reads_health_and_drain_from_the_pins_not_from_the_data_paths_state() {
    // waf-2 is healthy and drained; waf-1 healthy; after a restart both keep
    // exactly that, and an undrain brings waf-2 back without waiting for probes.
    let first = up_with_waf2_drained();
    let mut again = restarted(&first);
    let seen = again.observed();
    assert!(seen[&("web".into(), "waf-2".into())].healthy);
    assert!(seen[&("web".into(), "waf-2".into())].drained);
    assert!(!seen[&("web".into(), "waf-1".into())].drained);
    again.set_drained(Instant::now(), "web", "waf-2", false).unwrap();
    assert!(in_ring(&again, "web", "waf-2"));
}

// --- starting: the balancer's health waits for every backend's ---

fn starting(core: &mut TestCore) -> Option<Starting> {
    core.poll_status().expect("a status was published").starting
}

#[test]
fn a_fresh_start_is_starting_until_every_target_is_decided_once() {
    let mut core = start_with(CONFIG, resolved());
    outputs(&mut core);
    assert_eq!(starting(&mut core), Some(Starting { undecided: 2, unresolved: 0, checks: 2 }));
    // waf-1 rises: decided up, and the status that says so has it in the ring.
    probes(&mut core, "web", "waf-1", true, 2);
    let status = core.poll_status().expect("published");
    assert_eq!(status.starting, Some(Starting { undecided: 1, unresolved: 0, checks: 2 }));
    assert!(status.vips[0].ring.is_some_and(|r| r.members == 1));
    // `fall` failures decide a target that starts down: it is down. One does not.
    probes(&mut core, "web", "waf-2", false, 2);
    assert_eq!(core.poll_status(), None, "two failures of three: undecided");
    probes(&mut core, "web", "waf-2", true, 1);
    probes(&mut core, "web", "waf-2", false, 2);
    assert_eq!(core.poll_status(), None, "a success restarts the run");
    let out = probes(&mut core, "web", "waf-2", false, 1);
    assert_eq!(starting(&mut core), None);
    assert_eq!(logs(&out, Level::Info), ["started: the health of all 2 backend checks is decided"]);
    // Later results and a reload that adds a backend do not start it again.
    probes(&mut core, "web", "waf-2", true, 2);
    let more = CONFIG.replace(
        "      - { name: waf-2, address: 10.0.0.12 }",
        "      - { name: waf-2, address: 10.0.0.12 }\n      - { name: waf-3, address: 10.0.0.13 }",
    );
    core.reload(Instant::now(), Ok(parse(&more))).expect("reload");
    assert_eq!(starting(&mut core), None);
}

#[test]
fn a_start_waits_for_the_next_hop_of_every_healthy_backend() {
    let mut neighbours = FakeNeighbours::default();
    neighbours.resolve(IFINDEX, ip("10.0.0.11"), MAC_1);
    let mut core = start_with(CONFIG, neighbours);
    probes(&mut core, "web", "waf-1", true, 2);
    probes(&mut core, "web", "waf-2", true, 2);
    // Both up, but waf-2 is not in the ring a peer that resolved it builds.
    assert_eq!(starting(&mut core), Some(Starting { undecided: 0, unresolved: 1, checks: 2 }));
    // The watcher's next read has it.
    core.neighbours(Instant::now(), Ok(resolved().tables));
    assert_eq!(starting(&mut core), None);
    assert!(in_ring(&core, "web", "waf-2"));
}

#[test]
fn a_success_that_has_not_yet_risen_decides_nothing() {
    let mut core = start_with(CONFIG, resolved());
    outputs(&mut core);
    core.poll_status();
    probes(&mut core, "web", "waf-1", true, 1);
    assert_eq!(core.poll_status(), None, "one success of two: still undecided");
}

#[test]
fn a_restart_that_adopts_the_pinned_state_is_not_starting() {
    let mut again = restarted(&up_with_waf2_drained());
    assert_eq!(starting(&mut again), None);
}

#[test]
fn a_start_that_waits_too_long_for_a_target_ends_at_a_tick_with_a_warning() {
    let t0 = Instant::now();
    let mut core = Core::start(
        parse(CONFIG),
        interface(),
        FakeMaps::default(),
        false,
        Ok(resolved().tables),
        t0,
    )
    .unwrap();
    outputs(&mut core);
    core.poll_status();
    probes(&mut core, "web", "waf-1", false, 3);
    assert!(core.poll_status().is_some_and(|s| s.starting.is_some()));
    // tcp checks, 200 ms x (3 + 1) + 150 ms, twice, and 2 s: 3.9 s.
    core.tick(t0 + Duration::from_millis(3800));
    assert_eq!(core.poll_status(), None);
    core.tick(t0 + Duration::from_millis(3900));
    let out = outputs(&mut core);
    assert_eq!(starting(&mut core), None);
    let warned = logs(&out, Level::Warn);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].starts_with("started without knowing the health of tcp://10.0.0.12:80"),
        "{warned:?}"
    );
}

// --- health ---

#[test]
fn a_target_rises_after_rise_successes_and_every_backend_it_serves_comes_up() {
    let mut core = started();
    assert!(
        written(&probes(&mut core, "web", "waf-1", true, 1)).is_empty(),
        "one success is not enough"
    );
    let out = probes(&mut core, "web", "waf-1", true, 1);
    assert_eq!(
        transitions(&out),
        [
            ("api".into(), "waf-1".into(), BackendState::Up),
            ("web".into(), "waf-1".into(), BackendState::Up)
        ]
    );
    assert_eq!(
        logs(&out, Level::Info),
        [
            "api/waf-1 is up (tcp://10.0.0.11:80: 2 consecutive successes)",
            "web/waf-1 is up (tcp://10.0.0.11:80: 2 consecutive successes)"
        ]
    );
    let writes = written(&out);
    assert_eq!(writes.len(), 1, "one write for the flip, whatever the number of backends");
    assert_eq!((writes[0].0, writes[0].1.rings_switched), ("health", 2));
    assert!(in_ring(&core, "web", "waf-1") && in_ring(&core, "api", "waf-1"));
    assert!(!in_ring(&core, "web", "waf-2"));
}

#[test]
fn a_target_falls_after_fall_failures_and_its_backends_leave_the_ring() {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    assert!(written(&probes(&mut core, "web", "waf-1", false, 2)).is_empty());
    let out = probes(&mut core, "web", "waf-1", false, 1);
    assert_eq!(
        logs(&out, Level::Warn),
        [
            "api/waf-1 is down (tcp://10.0.0.11:80: 3 consecutive failures, last: timeout)",
            "web/waf-1 is down (tcp://10.0.0.11:80: 3 consecutive failures, last: timeout)"
        ]
    );
    assert_eq!(transitions(&out).len(), 2);
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Down);
    assert!(!in_ring(&core, "web", "waf-1"));
    assert_eq!(entry(&core, "web", "waf-1").state, BackendState::Down as u8);
}

#[test]
fn a_refused_probe_brings_its_target_down_at_once() {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    let t = target(&core, "web", "waf-1");
    probe(&mut core, &t, Some(Failure::Refused));
    let out = outputs(&mut core);
    assert_eq!(
        logs(&out, Level::Warn),
        [
            "api/waf-1 is down (tcp://10.0.0.11:80: connection refused: nothing listens (refused_is_down))",
            "web/waf-1 is down (tcp://10.0.0.11:80: connection refused: nothing listens (refused_is_down))"
        ]
    );
    assert_eq!(written(&out).len(), 1);
    assert!(!in_ring(&core, "web", "waf-1") && !in_ring(&core, "api", "waf-1"));
    // Coming back still takes `rise` successes.
    probes(&mut core, "web", "waf-1", true, 1);
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Down);
    probes(&mut core, "web", "waf-1", true, 1);
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Up);
}

#[test]
fn with_refused_is_down_off_a_refusal_counts_towards_fall_like_any_failure() {
    let mut core =
        start_with(&CONFIG.replace("fall: 3 }", "fall: 3, refused_is_down: false }"), resolved());
    probes(&mut core, "web", "waf-1", true, 2);
    let t = target(&core, "web", "waf-1");
    for _ in 0..2 {
        probe(&mut core, &t, Some(Failure::Refused));
    }
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Up);
    probe(&mut core, &t, Some(Failure::Refused));
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Down);
    assert!(logs(&outputs(&mut core), Level::Warn).contains(
        &"web/waf-1 is down (tcp://10.0.0.11:80: 3 consecutive failures, last: connection refused)"
    ));
}

#[test]
fn only_a_refusal_is_conclusive_not_a_reset_or_a_bad_answer() {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    let t = target(&core, "web", "waf-1");
    for failure in [Failure::Reset, Failure::Status(503)] {
        probe(&mut core, &t, Some(failure));
    }
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Up);
    probe(&mut core, &t, Some(Failure::Protocol("garbage".into())));
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Down);
}

#[test]
fn an_agreeing_result_restarts_the_count() {
    let mut core = started();
    probes(&mut core, "web", "waf-2", true, 1);
    probes(&mut core, "web", "waf-2", false, 1);
    assert!(written(&probes(&mut core, "web", "waf-2", true, 1)).is_empty());
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down);
    probes(&mut core, "web", "waf-2", true, 1);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up);
}

#[test]
fn every_probe_is_counted_and_a_report_from_a_stopped_loop_is_ignored() {
    let mut core = started();
    let out = probes(&mut core, "web", "waf-2", false, 1);
    assert_eq!(
        updates(&out),
        [&Update::Probe {
            target: "10.0.0.12:80".into(),
            kind: "tcp",
            failure: Some("timeout"),
            duration: Duration::from_millis(1)
        }]
    );
    let mut gone = target(&core, "web", "waf-2");
    gone.spec.port = 8080;
    probe(&mut core, &gone, None);
    assert!(outputs(&mut core).is_empty());
}

#[test]
fn results_that_do_not_flip_write_nothing_and_publish_nothing() {
    let mut core = started();
    // Decide both targets first: the start-up's progress is published.
    probes(&mut core, "web", "waf-1", false, 3);
    probes(&mut core, "web", "waf-2", false, 3);
    assert!(core.poll_status().is_some_and(|s| s.starting.is_none()));
    let out = probes(&mut core, "web", "waf-1", false, 5);
    assert!(written(&out).is_empty() && logs(&out, Level::Info).is_empty());
    assert_eq!(core.poll_status(), None);
}

// --- drain ---

#[test]
fn drain_takes_a_healthy_backend_out_of_the_ring_and_keeps_it_reachable() {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-1", true),
        Ok("web/waf-1 is draining".into())
    );
    let out = outputs(&mut core);
    assert_eq!(transitions(&out), [("web".into(), "waf-1".into(), BackendState::Draining)]);
    assert_eq!(logs(&out, Level::Info), ["web/waf-1 drained by operator"]);
    assert_eq!(written(&out)[0].0, "drain");
    assert!(!in_ring(&core, "web", "waf-1"));
    assert_eq!(entry(&core, "web", "waf-1").state, BackendState::Draining as u8);
    assert!(in_ring(&core, "api", "waf-1"), "the same node in another VIP is not drained");

    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-1", false),
        Ok("web/waf-1 is up".into())
    );
    assert_eq!(written(&outputs(&mut core))[0].0, "undrain");
    assert!(in_ring(&core, "web", "waf-1"));
}

#[test]
fn draining_twice_or_an_unknown_backend_changes_nothing() {
    let mut core = started();
    core.set_drained(Instant::now(), "web", "waf-1", true).unwrap();
    outputs(&mut core);
    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-1", true),
        Ok("web/waf-1 already drained".into())
    );
    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-2", false),
        Ok("web/waf-2 already undrained".into())
    );
    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-9", true),
        Err("no backend waf-9 in VIP web (see `xdplb status`)".into())
    );
    assert_eq!(outputs(&mut core), []);
}

#[test]
fn a_drained_backend_that_dies_is_down_and_comes_back_drained() {
    let mut core = started();
    probes(&mut core, "web", "waf-2", true, 2);
    core.set_drained(Instant::now(), "web", "waf-2", true).unwrap();
    outputs(&mut core);
    let out = probes(&mut core, "web", "waf-2", false, 3);
    assert_eq!(
        transitions(&out),
        [("web".into(), "waf-2".into(), BackendState::Down)],
        "its flows must move"
    );
    let out = probes(&mut core, "web", "waf-2", true, 2);
    assert_eq!(transitions(&out), [("web".into(), "waf-2".into(), BackendState::Draining)]);
    assert!(!in_ring(&core, "web", "waf-2"));
}

#[test]
fn draining_a_down_backend_changes_its_flag_not_its_state() {
    let mut core = started();
    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-2", true),
        Ok("web/waf-2 is down".into())
    );
    assert_eq!(transitions(&outputs(&mut core)), []);
    assert!(core.observed()[&("web".into(), "waf-2".into())].drained);
}

// --- reload ---

#[test]
fn a_reload_keeps_health_drain_and_mac_of_unchanged_backends_and_starts_new_ones_down() {
    let mut core = up_with_waf2_drained();
    let with_waf3 = CONFIG.replace(
        "      - { name: waf-2, address: 10.0.0.12 }\n",
        "      - { name: waf-2, address: 10.0.0.12 }\n      - { name: waf-3, address: 10.0.0.13 }\n",
    );
    assert_eq!(
        core.reload(Instant::now(), Ok(parse(&with_waf3))),
        Ok("config reloaded: 2 VIPs (was 2)".into())
    );
    let out = outputs(&mut core);
    assert!(updates(&out).contains(&&Update::Reload { ok: true }));
    assert_eq!(logs(&out, Level::Info), ["config reloaded: 2 VIPs (was 2)"]);
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Up);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Draining);
    assert_eq!(state(&core, "web", "waf-3"), BackendState::Down);
    assert_eq!(entry(&core, "web", "waf-2").mac, MAC_2);
    assert_eq!(probe_targets(&out)[0].len(), 3);
    assert_eq!(transitions(&out), [], "nothing changed state");
}

#[test]
fn a_reload_forgets_the_metric_series_of_what_it_removes() {
    let mut core = started();
    let (web, _api) = CONFIG.split_once("  - name: api").unwrap();
    let only_web_waf1 = web.replace("      - { name: waf-2, address: 10.0.0.12 }\n", "");
    core.reload(Instant::now(), Ok(parse(&only_web_waf1))).unwrap();
    let out = outputs(&mut core);
    let forgotten: Vec<&Update> = updates(&out)
        .into_iter()
        .filter(|u| {
            matches!(
                u,
                Update::ForgetBackend { .. }
                    | Update::ForgetVip { .. }
                    | Update::ForgetTarget { .. }
            )
        })
        .collect();
    assert_eq!(
        forgotten,
        [
            &Update::ForgetBackend { vip: "api".into(), backend: "waf-1".into() },
            &Update::ForgetBackend { vip: "web".into(), backend: "waf-2".into() },
            &Update::ForgetVip { vip: "api".into() },
            &Update::ForgetTarget { target: "10.0.0.12:80".into() },
        ],
        "10.0.0.11:80 is still probed for web"
    );
    assert_eq!(core.writer.vip_index("api"), None);
    assert_eq!(core.writer.maps().vips.len(), 1);
}

#[test]
fn after_a_reload_the_metrics_text_has_no_series_of_what_it_removed() {
    let metrics = crate::metrics::Metrics::new();
    let feed = |core: &mut TestCore| {
        for u in updates(&outputs(core)) {
            metrics.update(u);
        }
    };
    let mut core = started();
    let mut out = probes(&mut core, "api", "waf-1", true, 2);
    out.extend(probes(&mut core, "web", "waf-2", false, 1));
    for u in updates(&out) {
        metrics.update(u);
    }
    let sent = lb_common::Traffic { packets: 5, bytes: 500 };
    metrics.dataplane(
        &lb_common::CounterSet::default(),
        &[("api".into(), sent), ("web".into(), sent)],
        &[("api".into(), "waf-1".into(), sent), ("web".into(), "waf-2".into(), sent)],
    );
    let before = metrics.render();
    assert!(before.contains("vip=\"api\"") && before.contains("10.0.0.12:80"), "{before}");

    let (web, _api) = CONFIG.split_once("  - name: api").unwrap();
    let only_web_waf1 = web.replace("      - { name: waf-2, address: 10.0.0.12 }\n", "");
    core.reload(Instant::now(), Ok(parse(&only_web_waf1))).unwrap();
    feed(&mut core);
    let after = metrics.render();
    for gone in ["vip=\"api\"", "backend=\"waf-2\"", "target=\"10.0.0.12:80\""] {
        let left: Vec<&str> = after.lines().filter(|l| l.contains(gone)).collect();
        assert!(left.is_empty(), "{gone} still exported: {left:?}");
    }
    assert!(after.contains("target=\"10.0.0.11:80\""), "still probed for web");
}

#[test]
fn a_reload_that_retunes_timing_keeps_state_and_one_that_changes_the_probe_keeps_healthy_backends_up()
 {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    let retuned =
        CONFIG.replace("rise: 2, fall: 3", "rise: 5, fall: 1, interval: 100ms, timeout: 50ms");
    core.reload(Instant::now(), Ok(parse(&retuned))).unwrap();
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Up, "inherited from the same probe");
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down);
    let out = probes(&mut core, "web", "waf-1", false, 1);
    assert_eq!(
        state(&core, "web", "waf-1"),
        BackendState::Down,
        "the new fall (1) applies: {out:?}"
    );

    probes(&mut core, "web", "waf-1", true, 5);
    let other_port = CONFIG.replace("port: 80, rise", "port: 8080, rise");
    core.reload(Instant::now(), Ok(parse(&other_port))).unwrap();
    assert_eq!(
        state(&core, "web", "waf-1"),
        BackendState::Up,
        "a reload must not take a working backend out for rise probes"
    );
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down, "a down one stays down");
}

#[test]
fn an_invalid_config_is_refused_and_changes_nothing() {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    let ops = core.writer.maps().ops.len();
    let broken = config::parse("interface: eth0\nvips: [", "test.yaml");
    let err = core.reload(Instant::now(), broken.clone()).unwrap_err();
    let why = broken.unwrap_err().to_string();
    assert_eq!(err, format!("config not reloaded:\n{why}"));
    let out = outputs(&mut core);
    assert_eq!(updates(&out), [&Update::Reload { ok: false }]);
    assert_eq!(
        logs(&out, Level::Error),
        [format!("reload rejected, keeping the running config:\n{why}")]
    );
    assert!(probe_targets(&out).is_empty() && written(&out).is_empty());
    assert_eq!(core.writer.maps().ops.len(), ops, "no map written");
    assert_eq!(core.config(), &parse(CONFIG));
    assert_eq!(state(&core, "web", "waf-1"), BackendState::Up);
}

#[test]
fn a_reload_that_changes_what_needs_a_restart_is_refused() {
    let mut core = started();
    let moved =
        CONFIG.replace("interface: eth0", "interface: eth1\nmetrics_listen: 127.0.0.1:9999");
    let err = core.reload(Instant::now(), Ok(parse(&moved))).unwrap_err();
    assert_eq!(err, "config not reloaded: changing interface, metrics_listen needs a restart");
    let out = outputs(&mut core);
    assert_eq!(updates(&out), [&Update::Reload { ok: false }]);
    assert_eq!(logs(&out, Level::Error), [err.as_str()]);
    assert_eq!(core.config(), &parse(CONFIG));
}

#[test]
fn a_reload_that_resizes_the_connection_table_is_refused() {
    let mut core = started();
    let resized = CONFIG.replace("interface: eth0", "interface: eth0\nconn_table_size: 65536");
    let err = core.reload(Instant::now(), Ok(parse(&resized))).unwrap_err();
    assert_eq!(err, "config not reloaded: changing conn_table_size needs a restart");
    assert_eq!(updates(&outputs(&mut core)), [&Update::Reload { ok: false }]);
    assert_eq!(core.config(), &parse(CONFIG));
    let resized = CONFIG.replace("interface: eth0", "interface: eth0\nconn_table_size_v6: 65536");
    let err = core.reload(Instant::now(), Ok(parse(&resized))).unwrap_err();
    assert_eq!(err, "config not reloaded: changing conn_table_size_v6 needs a restart");
    assert_eq!(core.config(), &parse(CONFIG));
}

// --- neighbours ---

/// The next hops the core asked to resolve, in order.
fn solicited(outputs: &[Output]) -> Vec<IpAddr> {
    outputs
        .iter()
        .filter_map(|o| if let Output::Solicit(h) = o { Some(h.iter().copied()) } else { None })
        .flatten()
        .collect()
}

fn unresolved(outputs: &[Output], backend: &str) -> Vec<bool> {
    updates(outputs)
        .into_iter()
        .filter_map(|u| match u {
            Update::Unresolved { vip, backend: b, unresolved } if vip == "web" && b == backend => {
                Some(*unresolved)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_backend_without_a_mac_stays_out_of_the_ring_is_solicited_and_logged_once() {
    let mut neighbours = FakeNeighbours::default();
    neighbours.resolve(IFINDEX, ip("10.0.0.11"), MAC_1);
    let tables = neighbours.tables.clone();
    let mut core = start_with(CONFIG, neighbours);
    let out = outputs(&mut core);
    assert_eq!(
        logs(&out, Level::Warn),
        ["web/waf-2: no MAC for next hop 10.0.0.12 on eth0 yet; kept out of the ring"]
    );
    assert_eq!(unresolved(&out, "waf-2"), [true]);
    assert_eq!(solicited(&out), [ip("10.0.0.12")]);
    probes(&mut core, "web", "waf-2", true, 2);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up, "healthy...");
    assert!(!in_ring(&core, "web", "waf-2"), "...but unreachable");
    assert_eq!(entry(&core, "web", "waf-2").state, BackendState::Down as u8);
    core.neighbours(Instant::now(), Ok(tables));
    let out = outputs(&mut core);
    assert!(logs(&out, Level::Warn).is_empty(), "logged once per episode");
    assert!(written(&out).is_empty());
    assert_eq!(solicited(&out), [ip("10.0.0.12")], "asked at every read");
}

#[test]
fn a_mac_that_appears_is_written_when_the_watcher_reads_it() {
    let mut neighbours = FakeNeighbours::default();
    neighbours.resolve(IFINDEX, ip("10.0.0.11"), MAC_1);
    let mut core = start_with(CONFIG, neighbours);
    probes(&mut core, "web", "waf-2", true, 2);
    core.neighbours(Instant::now(), Ok(resolved().tables));
    let out = outputs(&mut core);
    assert_eq!(logs(&out, Level::Info), ["web/waf-2: next hop 10.0.0.12 resolved"]);
    assert_eq!(written(&out)[0].0, "neighbours");
    assert!(in_ring(&core, "web", "waf-2"));
    assert_eq!(entry(&core, "web", "waf-2").mac, MAC_2);
}

#[test]
fn a_changed_mac_is_rewritten_at_once() {
    let mut core = started();
    let moved: Mac = [2, 0, 0, 0, 0, 0x99];
    let mut n = resolved();
    n.resolve(IFINDEX, ip("10.0.0.12"), moved);
    core.neighbours(Instant::now(), Ok(n.tables));
    let out = outputs(&mut core);
    assert_eq!(written(&out)[0].0, "neighbours");
    assert_eq!(
        logs(&out, Level::Warn),
        [
            "web/waf-2: next hop 10.0.0.12 changed its MAC from 02:00:00:00:00:12 to 02:00:00:00:00:99"
        ]
    );
    assert_eq!(entry(&core, "web", "waf-2").mac, moved);
}

#[test]
fn a_vanished_mac_is_noticed_at_once_kept_for_the_grace_then_dropped() {
    let mut core = started();
    probes(&mut core, "web", "waf-2", true, 2);
    let t0 = Instant::now();
    let mut gone = resolved();
    gone.forget(ip("10.0.0.12"));
    core.neighbours(t0, Ok(gone.tables.clone()));
    let out = outputs(&mut core);
    assert_eq!(unresolved(&out, "waf-2"), [true], "the metric says so at once");
    assert_eq!(solicited(&out), [ip("10.0.0.12")]);
    assert!(written(&out).is_empty(), "a short gap in the table moves nothing");
    assert!(in_ring(&core, "web", "waf-2"));
    assert!(logs(&out, Level::Warn)[0].starts_with("web/waf-2: next hop 10.0.0.12 is gone from the neighbour table; still sent to 02:00:00:00:00:12"));

    // Back within the grace: nothing moved.
    core.neighbours(t0 + Duration::from_secs(2), Ok(resolved().tables));
    let out = outputs(&mut core);
    assert_eq!(
        logs(&out, Level::Info),
        ["web/waf-2: next hop 10.0.0.12 is back in the neighbour table"]
    );
    assert_eq!(unresolved(&out, "waf-2"), [false]);
    assert!(written(&out).is_empty());

    // Gone for longer than the grace: out of the ring (the tick notices, no read needed).
    core.neighbours(t0 + Duration::from_secs(10), Ok(gone.tables));
    core.tick(t0 + Duration::from_secs(10) + MAC_GRACE);
    let out = outputs(&mut core);
    assert!(
        logs(&out, Level::Warn).iter().any(|l| l.contains("did not resolve again within 5s")),
        "{out:?}"
    );
    assert!(!in_ring(&core, "web", "waf-2"));
    assert_eq!(entry(&core, "web", "waf-2").state, BackendState::Down as u8);
    assert_eq!(core.poll_status().unwrap().vips[0].backends[1].observed.mac, None);
}

#[test]
fn entries_of_another_interface_do_not_resolve() {
    let mut neighbours = FakeNeighbours::default();
    neighbours.resolve(IFINDEX + 1, ip("10.0.0.11"), MAC_1);
    let core = start_with(CONFIG, neighbours);
    assert_eq!(core.backends[&("web".to_owned(), "waf-1".to_owned())].mac, None);
}

#[test]
fn an_unreadable_neighbour_table_changes_nothing() {
    let mut core = started();
    core.neighbours(Instant::now(), Err("netlink: no answer".into()));
    let out = outputs(&mut core);
    assert_eq!(logs(&out, Level::Warn), ["reading the neighbour table: netlink: no answer"]);
    assert!(written(&out).is_empty() && updates(&out).is_empty());
}

#[test]
fn a_new_interface_mac_or_mtu_is_written_into_the_data_paths_config() {
    let mut core = started();
    let changed = Interface { mac: [2, 0, 0, 0, 0, 0x77], mtu: 9000, ..interface() };
    core.interface(Instant::now(), changed);
    let out = outputs(&mut core);
    assert_eq!(
        logs(&out, Level::Warn),
        ["interface eth0 changed: MAC 02:00:00:00:00:01 -> 02:00:00:00:00:77, MTU 1500 -> 9000"]
    );
    assert!(written(&out)[0].1.config_written);
    assert_eq!(core.writer.maps().config.src_mac, [2, 0, 0, 0, 0, 0x77]);
    assert_eq!(core.writer.maps().config.mtu, 9000);
    core.interface(
        Instant::now(),
        Interface { mac: [2, 0, 0, 0, 0, 0x77], mtu: 9000, ..interface() },
    );
    assert!(outputs(&mut core).is_empty(), "the same again changes nothing");
}

#[test]
fn ipip_behind_a_gateway_sends_every_backend_to_the_gateways_mac() {
    let gateway_mac: Mac = [2, 0, 0, 0, 0, 0xfe];
    let ipip = CONFIG.replace(
        "interface: eth0\n",
        "interface: eth0\nforwarding: ipip\ntunnel_source: { ipv4: 10.0.0.2 }\ngateway: 10.0.0.1\n",
    );
    let mut neighbours = FakeNeighbours::default();
    neighbours.resolve(IFINDEX, ip("10.0.0.1"), gateway_mac);
    let core = start_with(&ipip, neighbours);
    assert_eq!(entry(&core, "web", "waf-1").mac, gateway_mac);
    assert_eq!(entry(&core, "web", "waf-2").mac, gateway_mac);
}

// --- status and failures ---

#[test]
fn the_status_is_published_once_per_change() {
    let mut core = started();
    assert_eq!(core.poll_status(), None);
    probes(&mut core, "web", "waf-1", true, 2);
    let status = core.poll_status().expect("a change");
    let (vip, backend, waf1) = status.backends().next().expect("a backend");
    assert_eq!((vip.name.as_str(), backend.name.as_str()), ("web", "waf-1"));
    assert_eq!(waf1.observed.state(), BackendState::Up);
    assert_eq!(waf1.index, core.writer.backend_index("web", "waf-1"));
    assert_eq!(status.vips[0].index, core.writer.vip_index("web"));
    assert_eq!(status.config.origin.file(), "test.yaml");
    assert_eq!(core.poll_status(), None, "once");
    core.tick(Instant::now());
    assert_eq!(core.poll_status(), None, "a tick that finds nothing new publishes nothing");
}

#[test]
fn a_failed_map_write_is_answered_logged_and_shown_in_the_status() {
    let mut core = started();
    probes(&mut core, "web", "waf-1", true, 2);
    probes(&mut core, "web", "waf-2", true, 2);
    core.writer.maps().fail.store(true, Ordering::Relaxed);
    assert_eq!(
        core.set_drained(Instant::now(), "web", "waf-1", true),
        Err("writing the maps failed; see the daemon's log".into())
    );
    let out = outputs(&mut core);
    let errors = logs(&out, Level::Error);
    assert!(
        errors.len() == 1 && errors[0].starts_with("writing the maps failed (drain): injected"),
        "{errors:?}"
    );
    assert!(written(&out).is_empty());
    assert!(core.poll_status().expect("published").last_write.is_err());
    let reload = core.reload(Instant::now(), Ok(parse(CONFIG))).unwrap_err();
    assert!(
        reload.starts_with("config not reloaded: writing the maps failed: injected"),
        "{reload}"
    );
    assert!(updates(&outputs(&mut core)).contains(&&Update::Reload { ok: false }));

    core.writer.maps().fail.store(false, Ordering::Relaxed);
    core.set_drained(Instant::now(), "web", "waf-1", false).unwrap();
    assert_eq!(core.poll_status().expect("published").last_write, Ok(()));
}

// --- the reserve tier ---

/// Two primaries and two reserves, checked per address (one target each).
const TIERED: &str = "
interface: eth0
hash_seed: 000102030405060708090a0b0c0d0e0f
health_check_defaults: { kind: tcp, port: 80, rise: 1, fall: 1 }
vips:
  - name: web
    address: 192.0.2.1
    port: 80
    backends:
      - { name: p1, address: 10.0.0.11 }
      - { name: p2, address: 10.0.0.12 }
      - { name: r1, address: 10.0.0.13, backup: true }
      - { name: r2, address: 10.0.0.14, backup: true }
";

/// Started on `TIERED` with `extra` after `port: 80`, every MAC resolved, every
/// backend up; outputs taken.
pub(super) fn tiered(extra: &str) -> TestCore {
    let mut n = FakeNeighbours::default();
    for last in 11..=14 {
        n.resolve(IFINDEX, ip(&format!("10.0.0.{last}")), [2, 0, 0, 0, 0, last]);
    }
    let yaml = TIERED.replace("    port: 80\n", &format!("    port: 80\n{extra}"));
    let mut core = start_with(&yaml, n);
    for b in ["p1", "p2", "r1", "r2"] {
        probes(&mut core, "web", b, true, 1);
    }
    outputs(&mut core);
    core
}

fn reserve_active(outputs: &[Output]) -> Vec<bool> {
    updates(outputs)
        .into_iter()
        .filter_map(|u| match u {
            Update::ReserveActive { active, .. } => Some(*active),
            _ => None,
        })
        .collect()
}

fn switches(outputs: &[Output]) -> Vec<bool> {
    updates(outputs)
        .into_iter()
        .filter_map(|u| match u {
            Update::TierSwitch { to_reserve, .. } => Some(*to_reserve),
            _ => None,
        })
        .collect()
}

#[test]
fn reserves_wait_outside_the_ring_while_a_primary_is_up() {
    let mut core = tiered("");
    for b in ["p1", "p2"] {
        assert!(in_ring(&core, "web", b), "{b}");
    }
    for b in ["r1", "r2"] {
        assert!(!in_ring(&core, "web", b), "{b}");
        assert_eq!(entry(&core, "web", b).state, BackendState::Draining as u8, "{b} keeps flows");
    }
    let out = probes(&mut core, "web", "p1", false, 1);
    assert!(!in_ring(&core, "web", "r1"), "one primary left is enough with min_primaries 1");
    assert_eq!(reserve_active(&out), [false]);
    assert!(switches(&out).is_empty());
    let status = core.poll_status().unwrap();
    assert!(status.render(&Ok(()), &Health::default(), &NoStats).contains("standby"));
}

#[test]
fn losing_every_primary_switches_the_vip_to_its_reserves_and_back() {
    let mut core = tiered("");
    probes(&mut core, "web", "p1", false, 1);
    let out = probes(&mut core, "web", "p2", false, 1);
    for b in ["r1", "r2"] {
        assert!(in_ring(&core, "web", b), "{b}");
        assert_eq!(entry(&core, "web", b).state, BackendState::Up as u8);
    }
    assert_eq!(reserve_active(&out), [true]);
    assert_eq!(switches(&out), [true]);
    let warn = logs(&out, Level::Warn);
    assert!(
        warn.iter().any(|l| l.starts_with("web: switched to its reserve tier (0 of 2 primaries usable, min_primaries 1): new flows go to r1, r2")),
        "{warn:?}"
    );
    // The reserves' own transitions: draining (standby) -> up.
    let t = transitions(&out);
    assert!(t.contains(&("web".into(), "r1".into(), BackendState::Up)), "{t:?}");

    let out = probes(&mut core, "web", "p2", true, 1);
    assert!(in_ring(&core, "web", "p2"));
    for b in ["r1", "r2"] {
        assert!(!in_ring(&core, "web", b), "{b}");
        assert_eq!(
            entry(&core, "web", b).state,
            BackendState::Draining as u8,
            "{b}: flows established on the reserve stay there"
        );
    }
    assert_eq!(switches(&out), [false]);
    assert!(logs(&out, Level::Info).iter().any(|l| l.starts_with("web: back on its primary tier")));
}

#[test]
fn with_min_primaries_2_one_lost_primary_brings_the_reserves_in_beside_the_other() {
    let mut core = tiered("    min_primaries: 2\n");
    assert!(!in_ring(&core, "web", "r1"));
    let out = probes(&mut core, "web", "p2", false, 1);
    for b in ["p1", "r1", "r2"] {
        assert!(in_ring(&core, "web", b), "{b}");
    }
    assert_eq!(switches(&out), [true]);
    assert!(logs(&out, Level::Warn).iter().any(|l| l.contains("the usable primaries and r1, r2")));
}

#[test]
fn a_reserve_that_dies_while_serving_is_down_and_its_flows_move() {
    let mut core = tiered("");
    probes(&mut core, "web", "p1", false, 1);
    probes(&mut core, "web", "p2", false, 1);
    let out = probes(&mut core, "web", "r1", false, 1);
    assert_eq!(entry(&core, "web", "r1").state, BackendState::Down as u8);
    assert!(in_ring(&core, "web", "r2") && !in_ring(&core, "web", "r1"));
    assert!(switches(&out).is_empty(), "still on the reserves");
}

#[test]
fn a_restart_keeps_standby_reserves_undrained_and_a_drained_serving_reserve_drained() {
    // Standby: the pinned maps hold r1 and r2 as draining; they are not drains.
    let restart = |first: &TestCore| {
        let maps = first.writer.maps().clone();
        Core::start(parse(TIERED), interface(), maps, true, Ok(Tables::default()), Instant::now())
            .unwrap()
    };
    let again = restart(&tiered(""));
    for b in ["r1", "r2"] {
        assert!(!again.backends[&("web".to_owned(), b.to_owned())].drained, "{b}");
    }
    // Serving reserves, r2 drained by hand: the drain survives, r1 keeps serving.
    let mut first = tiered("");
    probes(&mut first, "web", "p1", false, 1);
    probes(&mut first, "web", "p2", false, 1);
    first.set_drained(Instant::now(), "web", "r2", true).unwrap();
    let again = restart(&first);
    assert!(again.backends[&("web".to_owned(), "r2".to_owned())].drained);
    assert!(!again.backends[&("web".to_owned(), "r1".to_owned())].drained);
    assert!(in_ring(&again, "web", "r1") && !in_ring(&again, "web", "r2"));
}

#[test]
fn undraining_a_reserve_answers_standby_while_primaries_serve() {
    let mut core = tiered("");
    core.set_drained(Instant::now(), "web", "r1", true).unwrap();
    let answer = core.set_drained(Instant::now(), "web", "r1", false).unwrap();
    assert_eq!(answer, "web/r1 is standby");
}

#[test]
fn config_warnings_are_logged_at_start_and_on_reload() {
    let mut core = start_with(
        &TIERED.replace("    port: 80\n", "    port: 80\n    min_primaries: 0\n"),
        resolved(),
    );
    let out = outputs(&mut core);
    assert!(
        logs(&out, Level::Warn)
            .iter()
            .any(|l| l.contains("config warning") && l.contains("min_primaries 0")),
        "{:?}",
        logs(&out, Level::Warn)
    );
    core.reload(Instant::now(), Ok(parse(TIERED))).unwrap();
    let out = outputs(&mut core);
    assert!(!logs(&out, Level::Warn).iter().any(|l| l.contains("config warning")));
}

#[test]
fn every_write_exports_each_backends_role() {
    let mut core = tiered("");
    let out = probes(&mut core, "web", "p1", false, 1);
    let roles: Vec<(String, bool)> = updates(&out)
        .into_iter()
        .filter_map(|u| match u {
            Update::Role { backend, reserve, .. } => Some((backend.clone(), *reserve)),
            _ => None,
        })
        .collect();
    assert_eq!(
        roles,
        [("p1".into(), false), ("p2".into(), false), ("r1".into(), true), ("r2".into(), true)]
    );
}

/// Statistics nobody reads.
struct NoStats;

impl crate::stats::Stats for NoStats {
    fn counters(&self) -> Result<lb_common::CounterSet> {
        Ok(lb_common::CounterSet::default())
    }
    fn vip_traffic(&self, _: u32) -> Result<lb_common::Traffic> {
        Ok(lb_common::Traffic::default())
    }
    fn backend_traffic(&self, _: u32) -> Result<lb_common::Traffic> {
        Ok(lb_common::Traffic::default())
    }
    fn conn_table(&self) -> Option<crate::conn_table::Use> {
        None
    }
}

// --- all-down and down-flows policies ---

/// `CONFIG` with `extra` in the VIP `web`, every MAC resolved, both backends up.
fn with_policy(extra: &str) -> TestCore {
    let yaml = CONFIG.replacen("    port: 80\n", &format!("    port: 80\n{extra}"), 1);
    let mut core = start_with(&yaml, resolved());
    probes(&mut core, "web", "waf-1", true, 2);
    probes(&mut core, "web", "waf-2", true, 2);
    outputs(&mut core);
    core
}

fn all_down_updates(out: &[Output]) -> Vec<(bool, bool)> {
    updates(out)
        .into_iter()
        .filter_map(|u| match u {
            Update::AllDown { vip, all_down, failing_open } if vip == "web" => {
                Some((*all_down, *failing_open))
            }
            _ => None,
        })
        .collect()
}

fn episodes(out: &[Output]) -> usize {
    updates(out)
        .iter()
        .filter(|u| matches!(u, Update::AllDownEpisode { vip } if vip == "web"))
        .count()
}

#[test]
fn losing_the_last_backend_with_all_down_drop_is_logged_counted_and_dropped() {
    let mut core = with_policy("");
    probes(&mut core, "web", "waf-1", false, 3);
    let out = probes(&mut core, "web", "waf-2", false, 3);
    assert_eq!(
        logs(&out, Level::Error),
        ["web: no usable backend; new flows are dropped (all_down: drop)"]
    );
    assert_eq!(episodes(&out), 1);
    assert_eq!(all_down_updates(&out), [(true, false)]);
    assert!(core.writer.table("web").unwrap().iter().all(|s| *s == NO_BACKEND));
    let out = probes(&mut core, "web", "waf-2", true, 2);
    assert_eq!(
        logs(&out, Level::Info).last().copied(),
        Some("web: 1 usable backend again; new flows follow its ring")
    );
    assert_eq!((episodes(&out), all_down_updates(&out)), (0, vec![(false, false)]));
}

#[test]
fn all_down_fail_open_sends_new_flows_to_every_reachable_undrained_backend() {
    let mut core = with_policy("    all_down: fail_open\n");
    probes(&mut core, "web", "waf-1", false, 3);
    let out = probes(&mut core, "web", "waf-2", false, 3);
    assert_eq!(
        logs(&out, Level::Error),
        [
            "web: no usable backend; failing open: new flows go to waf-1, waf-2 whatever their health (all_down: fail_open)"
        ]
    );
    assert_eq!(all_down_updates(&out), [(true, true)]);
    assert!(in_ring(&core, "web", "waf-1") && in_ring(&core, "web", "waf-2"));
    assert_eq!(entry(&core, "web", "waf-1").state, BackendState::Up as u8, "flows stay");
    let status = core.poll_status().unwrap();
    let text = status.render(&Ok(()), &Health::default(), &NoStats);
    assert!(text.contains("tier fail_open  all_down fail_open  down_flows move"), "{text}");
    assert!(text.contains("fail-open"), "{text}");
    assert_eq!(
        state(&core, "api", "waf-1"),
        BackendState::Down,
        "api keeps dropping (its default)"
    );
    assert!(!in_ring(&core, "api", "waf-1"));

    // One backend back: the ring is made of usable backends again.
    probes(&mut core, "web", "waf-2", true, 2);
    assert!(in_ring(&core, "web", "waf-2") && !in_ring(&core, "web", "waf-1"));
}

#[test]
fn down_flows_keep_leaves_a_failed_backends_flows_on_it() {
    let mut core = with_policy("    down_flows: keep\n");
    let out = probes(&mut core, "web", "waf-2", false, 3);
    assert_eq!(entry(&core, "web", "waf-2").state, BackendState::Draining as u8);
    assert!(!in_ring(&core, "web", "waf-2"), "no new flows");
    assert!(updates(&out).contains(&&Update::KeepsFlows {
        vip: "web".into(),
        backend: "waf-2".into(),
        keeps: true
    }));
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down, "its health is down");
    let text = core.poll_status().unwrap().render(&Ok(()), &Health::default(), &NoStats);
    let row = text.lines().find(|l| l.trim_start().starts_with("waf-2")).unwrap();
    assert_eq!(row.split_whitespace().nth(4), Some("down-keep"), "{row}");
    // The same node in `api` (default move) is down there: one target, two policies.
    probes(&mut core, "web", "waf-1", false, 3);
    assert_eq!(entry(&core, "api", "waf-1").state, BackendState::Down as u8);
    assert_eq!(entry(&core, "web", "waf-1").state, BackendState::Draining as u8);
}

// --- flap damping ---

/// `CONFIG` with rise 1, fall 1 and damping after 2 changes within 60 s, held 30 s.
fn flappy() -> TestCore {
    let yaml = CONFIG.replace(
        "rise: 2, fall: 3",
        "rise: 1, fall: 1, flap_changes: 2, flap_window: 60s, flap_hold: 30s, refused_is_down: false",
    );
    let mut core = start_with(&yaml, resolved());
    // waf-1's health decided (down), so that the start ends with waf-2's first
    // change, not with a warning at a later tick.
    probes(&mut core, "web", "waf-1", false, 1);
    outputs(&mut core);
    core
}

/// One probe result of `vip`/`backend`'s target at `now`.
fn probe_at(core: &mut TestCore, now: Instant, vip: &str, backend: &str, ok: bool) -> Vec<Output> {
    let report = Probed {
        target: target(core, vip, backend),
        failure: if ok { None } else { Some(Failure::Timeout) },
        duration: Duration::from_millis(1),
    };
    core.probed(now, &report);
    outputs(core)
}

fn held_rows(core: &mut TestCore) -> Vec<String> {
    let text = core
        .poll_status()
        .map(|s| s.render(&Ok(()), &Health::default(), &NoStats))
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.split_whitespace().nth(5) == Some("held"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn a_backend_that_flaps_more_than_flap_changes_times_is_held_down_then_released() {
    let mut core = flappy();
    let t0 = Instant::now();
    probe_at(&mut core, t0, "web", "waf-2", true); // change 1: up
    probe_at(&mut core, t0 + Duration::from_secs(1), "web", "waf-2", false); // 2: down
    let out = probe_at(&mut core, t0 + Duration::from_secs(2), "web", "waf-2", true); // 3: held
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down, "its checks say up, but it flaps");
    assert!(!in_ring(&core, "web", "waf-2"));
    let warn = logs(&out, Level::Warn);
    assert_eq!(
        warn,
        [
            "tcp://10.0.0.12:80 flaps: 3 health changes within 1m; held down for 30s (flap_changes 2), then as its checks say once it stops changing"
        ]
    );
    assert!(
        updates(&out).contains(&&Update::FlapHold { vip: "web".into(), backend: "waf-2".into() })
    );
    assert!(updates(&out).contains(&&Update::FlapHeld {
        vip: "web".into(),
        backend: "waf-2".into(),
        held: true
    }));
    assert_eq!(held_rows(&mut core), ["waf-2"], "status says held");
    assert_eq!(transitions(&out), [], "no state change while held");

    // Steady probes during the hold change nothing; at its end it is up.
    probe_at(&mut core, t0 + Duration::from_secs(10), "web", "waf-2", true);
    core.tick(t0 + Duration::from_secs(31));
    let out = outputs(&mut core);
    assert!(logs(&out, Level::Warn).is_empty() && written(&out).is_empty(), "held until 32 s");
    core.tick(t0 + Duration::from_secs(33));
    assert_eq!(
        state(&core, "web", "waf-2"),
        BackendState::Down,
        "the changes are within 60 s still"
    );
    let out = outputs(&mut core);
    assert!(
        logs(&out, Level::Warn)[0].starts_with("tcp://10.0.0.12:80 kept changing while held"),
        "{out:?}"
    );
    core.tick(t0 + Duration::from_secs(63));
    let out = outputs(&mut core);
    assert_eq!(
        logs(&out, Level::Info),
        [
            "tcp://10.0.0.12:80: flap hold over; up as its checks say",
            "web: 1 usable backend again; new flows follow its ring"
        ]
    );
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up);
    assert!(in_ring(&core, "web", "waf-2"));
    assert_eq!(written(&out)[0].0, "flap hold over");
}

#[test]
fn a_node_that_changes_no_more_than_flap_changes_times_is_never_held() {
    let mut core = flappy();
    let t0 = Instant::now();
    for i in 0..10u64 {
        probe_at(&mut core, t0 + Duration::from_secs(31 * i), "web", "waf-2", i % 2 == 0);
        assert_eq!(state(&core, "web", "waf-2") == BackendState::Up, i % 2 == 0, "change {i}");
    }
}

#[test]
fn flap_changes_0_turns_damping_off() {
    let yaml = CONFIG.replace("rise: 2, fall: 3", "rise: 1, fall: 1, flap_changes: 0");
    let mut core = start_with(&yaml, resolved());
    let t0 = Instant::now();
    for i in 0..20u32 {
        probe_at(&mut core, t0 + Duration::from_millis(100) * i, "web", "waf-2", i % 2 == 0);
    }
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Down, "the last probe failed");
    probe_at(&mut core, t0 + Duration::from_secs(3), "web", "waf-2", true);
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Up);
}

// --- reloads at the limits ---

/// A config of `n` VIPs `vip0..`, each on its own address, with one backend
/// `waf-1` (10.0.0.11, shared) and `extra` more of its own.
fn many_vips(n: usize, extra: usize) -> String {
    let mut yaml =
        String::from("interface: eth0\nhealth_check_defaults: { kind: tcp, port: 80 }\nvips:\n");
    for v in 0..n {
        let _ = write!(
            yaml,
            "  - name: vip{v}\n    address: 192.0.2.{v}\n    port: 80\n    backends:\n      - {{ name: waf-1, address: 10.0.0.11 }}\n"
        );
        for b in 0..extra {
            let _ = writeln!(
                yaml,
                "      - {{ name: n{b}, address: 10.{}.{}.{} }}",
                v + 1,
                b / 200,
                b % 200 + 1
            );
        }
    }
    yaml
}

#[test]
fn a_reload_at_max_vips_that_renames_and_moves_vips_applies_and_failover_still_works() {
    use lb_common::limits::MAX_VIPS;
    let full = many_vips(MAX_VIPS as usize, 0);
    let mut core = start_with(&full, resolved());
    probes(&mut core, "vip0", "waf-1", true, 2);
    outputs(&mut core);
    let changed = full
        .replace("name: vip3\n", "name: renamed\n")
        .replace("address: 192.0.2.7\n", "address: 198.51.100.7\n");
    assert_eq!(
        core.reload(Instant::now(), Ok(parse(&changed))),
        Ok("config reloaded: 32 VIPs (was 32)".into())
    );
    assert_eq!(core.writer.maps().vips.len(), MAX_VIPS as usize);
    assert!(in_ring(&core, "renamed", "waf-1"), "the renamed VIP kept its backend's health");
    outputs(&mut core);
    // Not wedged: the next health change is written.
    let out = probes(&mut core, "vip0", "waf-1", false, 3);
    assert_eq!(written(&out).len(), 1);
    assert!(!in_ring(&core, "renamed", "waf-1") && !in_ring(&core, "vip7", "waf-1"));
    assert_eq!(core.poll_status().unwrap().last_write, Ok(()));
}

#[test]
fn a_reload_that_replaces_backends_at_max_backends_applies() {
    use lb_common::limits::{MAX_BACKENDS, MAX_VIPS};
    let per_vip = (MAX_BACKENDS / MAX_VIPS) as usize - 1;
    let full = many_vips(MAX_VIPS as usize, per_vip);
    let mut core = start_with(&full, resolved());
    let replaced =
        full.replace("{ name: n5, address: 10.3.0.6 }", "{ name: m5, address: 10.3.0.250 }");
    assert_ne!(replaced, full);
    assert_eq!(
        core.reload(Instant::now(), Ok(parse(&replaced))),
        Ok("config reloaded: 32 VIPs (was 32)".into())
    );
    assert!(core.writer.backend_index("vip2", "m5").is_some());
}

#[test]
fn a_reload_whose_map_write_fails_keeps_the_running_config_and_its_state() {
    let mut core = up_with_waf2_drained();
    let with_waf3 = CONFIG.replace(
        "      - { name: waf-2, address: 10.0.0.12 }\n",
        "      - { name: waf-3, address: 10.0.0.13 }\n",
    );
    core.writer.maps().fail.store(true, Ordering::Relaxed);
    let err = core.reload(Instant::now(), Ok(parse(&with_waf3))).unwrap_err();
    assert!(err.starts_with("config not reloaded: writing the maps failed: injected"), "{err}");
    assert!(err.ends_with("; the running config stays"), "{err}");
    let out = outputs(&mut core);
    assert!(updates(&out).contains(&&Update::Reload { ok: false }));
    assert!(
        !updates(&out).iter().any(|u| matches!(u, Update::ForgetBackend { .. })),
        "waf-2's series stay: it is still configured: {out:?}"
    );
    assert!(probe_targets(&out).is_empty(), "probing goes on as before");
    assert_eq!(core.config(), &parse(CONFIG));
    assert_eq!(state(&core, "web", "waf-2"), BackendState::Draining, "drain kept");

    core.writer.maps().fail.store(false, Ordering::Relaxed);
    probes(&mut core, "web", "waf-1", false, 3);
    assert!(!in_ring(&core, "web", "waf-1"), "later changes are written again");
    assert_eq!(core.poll_status().unwrap().last_write, Ok(()));
}

/// `CONFIG` with a `sync:` section (its key in a file of the test's own).
fn with_sync() -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let key = std::env::temp_dir().join(format!("xdplb-core-sync-{}.key", std::process::id()));
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "{CONFIG}sync: {{ listen: \"10.0.0.1:4790\", peers: [\"10.0.0.2:4790\"], key_file: {} }}\n",
        key.display()
    )
}

fn sync_views(outputs: &[Output]) -> Vec<&crate::sync::exceptions::View> {
    outputs
        .iter()
        .filter_map(|o| if let Output::SyncView(v) = o { Some(&**v) } else { None })
        .collect()
}

#[test]
fn with_sync_every_write_that_changes_rings_or_backends_gives_out_the_view() {
    let mut core = start_with(&with_sync(), resolved());
    let views = outputs(&mut core);
    assert_eq!(sync_views(&views).len(), 1, "the first write's");
    let mut out = probes(&mut core, "web", "waf-1", true, 2);
    out.extend(probes(&mut core, "web", "waf-2", true, 2));
    let view = sync_views(&out).last().copied().cloned().expect("the rings changed: a view");
    let waf2 = core.writer.backend_index("web", "waf-2").unwrap();
    let web = view.vips.values().find(|v| v.ring.contains(&waf2)).expect("waf-2 in web's ring");
    assert!(
        web.ring.iter().all(|&i| view.backends.contains_key(&i)),
        "every slot's backend is in the view"
    );
    assert_eq!(view.seed, core.config().hash_seed.seed);
    // A write that changes nothing gives out nothing.
    core.tick(Instant::now());
    assert!(sync_views(&outputs(&mut core)).is_empty());
    // A drain: waf-2 leaves the ring and is draining in the view.
    core.set_drained(Instant::now(), "web", "waf-2", true).unwrap();
    let out = outputs(&mut core);
    let view = sync_views(&out).last().copied().cloned().expect("a view after the drain");
    assert_eq!(view.backends[&waf2].state, BackendState::Draining);
    assert!(view.vips.values().all(|v| !v.ring.contains(&waf2)));
}

#[test]
fn without_sync_no_view_is_given_out() {
    let mut core = start_with(CONFIG, resolved());
    let mut out = probes(&mut core, "web", "waf-1", true, 2);
    core.set_drained(Instant::now(), "web", "waf-1", true).unwrap();
    out.extend(outputs(&mut core));
    assert!(!written(&out).is_empty(), "the maps were written");
    assert!(sync_views(&out).is_empty());
}
