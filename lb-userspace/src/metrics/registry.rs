//! The registry: every metric of the controller and the data path, updated by
//! [`Update`]s (which the controller core decides) and by the data-path totals
//! read at scrape time.
//!
//! Every `Metrics` owns its registry (not the process-global default), so tests
//! and several instances never see each other's series.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use lb_common::{BackendState, Counter, CounterSet, Traffic};
use log::warn;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::balancer::BalancerMetrics;

/// Probe durations: a LAN TCP connect takes ~0.1 ms, a slow TLS handshake up to a
/// second (longer ones land in +Inf, and the timeout shows as a failure anyway).
const PROBE_BUCKETS: &[f64] =
    &[0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// State change to maps written: a slot update takes microseconds, a full ring
/// rebuild milliseconds; anything near a second breaks the failover budget.
const MAP_WRITE_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Suspicion to decision: a refused node is confirmed in a millisecond, a silent
/// one after `fall` fast timeouts (~100 ms by default); a refuted suspicion ends
/// with the first probe's answer.
const DECISION_BUCKETS: &[f64] =
    &[0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];

/// Where a data-path counter is exported, derived from its name so a counter
/// added to `lb_common` shows up without touching this file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// `action_X` -> `xdplb_xdp_actions_total{action="X"}`.
    Action(&'static str),
    /// `pass_X` -> `xdplb_xdp_pass_total{reason="X"}`.
    Pass(&'static str),
    /// `drop_X` -> `xdplb_xdp_drop_total{reason="X"}`.
    Drop(&'static str),
    /// `conn_X` -> `xdplb_conntrack_total{event="X"}`.
    Conntrack(&'static str),
    /// Anything else, e.g. `icmp_forwarded` -> `xdplb_icmp_forwarded_total`.
    Own(&'static str),
}

fn family(counter: Counter) -> Family {
    let name = counter.name();
    if let Some(rest) = name.strip_prefix("action_") {
        Family::Action(rest)
    } else if let Some(rest) = name.strip_prefix("pass_") {
        Family::Pass(rest)
    } else if let Some(rest) = name.strip_prefix("drop_") {
        Family::Drop(rest)
    } else if let Some(rest) = name.strip_prefix("conn_") {
        Family::Conntrack(rest)
    } else {
        Family::Own(name)
    }
}

/// Values of the `role` label of `xdplb_backend_role` (and of `to` in
/// `xdplb_vip_tier_switches_total`).
const ROLES: [&str; 2] = ["primary", "reserve"];

/// Last values read from the kernel, to turn absolute totals into increments.
#[derive(Default)]
struct Seen {
    counters: Vec<u64>,
    vips: HashMap<String, Traffic>,
    backends: HashMap<(String, String), Traffic>,
    /// Failure reasons seen per probe target, so `forget_target` can find its series.
    reasons: HashMap<String, BTreeSet<String>>,
}

/// Adds to `counter` what the kernel counted since `last`; a value that went down
/// means the map was recreated, so all of it is new.
fn advance(counter: &IntCounter, last: &mut u64, now: u64) {
    counter.inc_by(now.checked_sub(*last).unwrap_or(now));
    *last = now;
}

/// One change to the controller's metrics, as the controller core decides it.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// A health probe finished. `target` like "10.0.0.11:80", `kind` "tcp"|"http"|"https".
    Probe {
        target: String,
        kind: &'static str,
        /// The failure class (`Failure::label`); `None` when the probe succeeded.
        failure: Option<&'static str>,
        duration: Duration,
    },
    /// Current state of a (VIP, backend).
    BackendState { vip: String, backend: String, state: BackendState },
    /// A (VIP, backend) changed state.
    Transition { vip: String, backend: String, to: BackendState },
    /// Whether a (VIP, backend) is a reserve (`backup: true`) or a primary.
    Role { vip: String, backend: String, reserve: bool },
    /// Whether a VIP's reserves are in its ring now.
    ReserveActive { vip: String, active: bool },
    /// A VIP's reserves entered (`to_reserve`) or left its ring.
    TierSwitch { vip: String, to_reserve: bool },
    /// Whether a VIP has no usable backend, and whether it fails open meanwhile
    /// (`all_down: fail_open`).
    AllDown { vip: String, all_down: bool, failing_open: bool },
    /// A VIP lost its last usable backend (one more episode).
    AllDownEpisode { vip: String },
    /// Whether a (VIP, backend) whose check failed keeps its established flows
    /// (`down_flows: keep`).
    KeepsFlows { vip: String, backend: String, keeps: bool },
    /// Whether a (VIP, backend) is held down by flap damping.
    FlapHeld { vip: String, backend: String, held: bool },
    /// A flap hold of a (VIP, backend) started (or was renewed).
    FlapHold { vip: String, backend: String },
    /// A configuration reload finished.
    Reload { ok: bool },
    /// Whether the next-hop MAC of a (VIP, backend) is unknown.
    Unresolved { vip: String, backend: String, unresolved: bool },
    /// A (VIP, backend) left the config: remove its series.
    ForgetBackend { vip: String, backend: String },
    /// A VIP left the config: remove its series.
    ForgetVip { vip: String },
    /// No backend is probed at this target any more: remove its series.
    ForgetTarget { target: String },
    /// The data path's counters made a (VIP, backend) suspect.
    Suspicion { vip: String, backend: String },
    /// A probe sent at once because of a suspicion (`target` as in `Probe`).
    TriggeredProbe { target: String },
    /// A suspicion ended: `outcome` "down", "refuted" or "expired", `took` since it
    /// was raised.
    SuspicionDecided { outcome: &'static str, took: Duration },
}

/// The families of the per-VIP policies (`all_down`, `down_flows`).
struct PolicyFamilies {
    all_down: IntGaugeVec,
    all_down_total: IntCounterVec,
    fail_open: IntGaugeVec,
    keeps_flows: IntGaugeVec,
    flap_held: IntGaugeVec,
    flap_holds: IntCounterVec,
}

impl PolicyFamilies {
    fn new(r: &Registry) -> Self {
        Self {
            all_down: gauge_vec(
                r,
                "xdplb_vip_all_down",
                "1 while no backend of a VIP is usable (healthy, undrained, next hop known).",
                &["vip"],
            ),
            all_down_total: counter_vec(
                r,
                "xdplb_vip_all_down_total",
                "Times a VIP lost its last usable backend.",
                &["vip"],
            ),
            fail_open: gauge_vec(
                r,
                "xdplb_vip_fail_open",
                "1 while a VIP with no usable backend sends new flows to every reachable, \
                 undrained backend (all_down: fail_open).",
                &["vip"],
            ),
            keeps_flows: gauge_vec(
                r,
                "xdplb_backend_down_keeping_flows",
                "1 while a (VIP, backend) whose check failed keeps its established flows \
                 (down_flows: keep).",
                &["vip", "backend"],
            ),
            flap_held: gauge_vec(
                r,
                "xdplb_backend_flap_held",
                "1 while a (VIP, backend) is held down by flap damping (flap_changes, \
                 flap_window, flap_hold).",
                &["vip", "backend"],
            ),
            flap_holds: counter_vec(
                r,
                "xdplb_backend_flap_holds_total",
                "Flap holds of a (VIP, backend), renewals included.",
                &["vip", "backend"],
            ),
        }
    }
}

/// The controller's and the data path's metrics, in one registry.
pub struct Metrics {
    registry: Registry,
    probe_duration: HistogramVec,
    target_probe_duration: HistogramVec,
    probe_failures: IntCounterVec,
    probes: IntCounterVec,
    backend_state: IntGaugeVec,
    transitions: IntCounterVec,
    map_write: HistogramVec,
    reloads: IntCounterVec,
    last_reload_ok: IntGauge,
    unresolved: IntGaugeVec,
    role: IntGaugeVec,
    reserve_active: IntGaugeVec,
    tier_switches: IntCounterVec,
    healthy: IntGauge,
    xdp_attached: IntGauge,
    policy: PolicyFamilies,
    suspicions: IntCounterVec,
    triggered_probes: IntCounterVec,
    suspicion_decision: HistogramVec,
    vip_packets: IntCounterVec,
    vip_bytes: IntCounterVec,
    backend_packets: IntCounterVec,
    backend_bytes: IntCounterVec,
    /// One handle per `Counter`, in `Counter::ALL` order.
    dataplane_counters: Vec<IntCounter>,
    conntrack: ConntrackGauges,
    seen: Mutex<Seen>,
    /// The balancer's own health and rings.
    pub balancer: BalancerMetrics,
    /// Peer sync (`crate::sync`).
    pub sync: super::sync::SyncMetrics,
}

// Metric definitions are constants of this file: a failure to register one is a
// programming error that the unit tests catch, hence `expect`.
pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(metric.clone())).expect("unique counter");
    metric
}

pub(super) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(metric.clone())).expect("unique gauge");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, initial: i64) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid gauge");
    metric.set(initial);
    registry.register(Box::new(metric.clone())).expect("unique gauge");
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid histogram");
    registry.register(Box::new(metric.clone())).expect("unique histogram");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let r = Registry::new();
        let probe_duration = histogram_vec(
            &r,
            "xdplb_probe_duration_seconds",
            "Duration of finished health probes.",
            &["kind"],
            PROBE_BUCKETS,
        );
        let target_probe_duration = histogram_vec(
            &r,
            "xdplb_target_probe_duration_seconds",
            "Duration of finished health probes per target (address:port of a backend's check).",
            &["target"],
            PROBE_BUCKETS,
        );
        let probe_failures = counter_vec(
            &r,
            "xdplb_probe_failures_total",
            "Failed health probes by reason.",
            &["target", "reason"],
        );
        let probes =
            counter_vec(&r, "xdplb_probes_total", "Finished health probes.", &["target", "result"]);
        let backend_state = gauge_vec(
            &r,
            "xdplb_backend_state",
            "Current state of a (VIP, backend), one-hot over up, down, draining.",
            &["vip", "backend", "state"],
        );
        let transitions = counter_vec(
            &r,
            "xdplb_backend_transitions_total",
            "State changes of a (VIP, backend), by new state.",
            &["vip", "backend", "to"],
        );
        let map_write = histogram_vec(
            &r,
            "xdplb_map_write_latency_seconds",
            "Time from a state change (health, drain, reload) to the BPF maps written.",
            &[],
            MAP_WRITE_BUCKETS,
        );
        let reloads =
            counter_vec(&r, "xdplb_config_reloads_total", "Configuration reloads.", &["result"]);
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        let (last_reload_ok, healthy, xdp_attached) = Self::state_gauges(&r);
        let unresolved = gauge_vec(
            &r,
            "xdplb_backend_unresolved",
            "1 while the next-hop MAC of a (VIP, backend) is unknown.",
            &["vip", "backend"],
        );
        let (role, reserve_active, tier_switches) = Self::tier_families(&r);
        let policy = PolicyFamilies::new(&r);
        let [vip_packets, vip_bytes, backend_packets, backend_bytes] = Self::traffic_families(&r);
        let (suspicions, triggered_probes, suspicion_decision) = Self::passive_families(&r);
        let dataplane_counters = Self::dataplane_families(&r);
        let conntrack = ConntrackGauges::new(&r);
        Self {
            balancer: BalancerMetrics::new(&r),
            sync: super::sync::SyncMetrics::new(&r),
            registry: r,
            probe_duration,
            target_probe_duration,
            probe_failures,
            probes,
            backend_state,
            transitions,
            map_write,
            reloads,
            last_reload_ok,
            unresolved,
            role,
            reserve_active,
            tier_switches,
            healthy,
            xdp_attached,
            policy,
            suspicions,
            triggered_probes,
            suspicion_decision,
            vip_packets,
            vip_bytes,
            backend_packets,
            backend_bytes,
            seen: Mutex::new(Seen {
                counters: vec![0; dataplane_counters.len()],
                ..Seen::default()
            }),
            dataplane_counters,
            conntrack,
        }
    }

    /// Packets and bytes per VIP and per (VIP, backend).
    fn traffic_families(r: &Registry) -> [IntCounterVec; 4] {
        [
            counter_vec(r, "xdplb_vip_packets_total", "Packets forwarded per VIP.", &["vip"]),
            counter_vec(r, "xdplb_vip_bytes_total", "Bytes forwarded per VIP.", &["vip"]),
            counter_vec(
                r,
                "xdplb_backend_packets_total",
                "Packets forwarded per (VIP, backend).",
                &["vip", "backend"],
            ),
            counter_vec(
                r,
                "xdplb_backend_bytes_total",
                "Bytes forwarded per (VIP, backend).",
                &["vip", "backend"],
            ),
        ]
    }

    /// The reserve tier's families: each backend's role, and per VIP whether its
    /// reserves serve and how often they entered or left its ring.
    fn tier_families(r: &Registry) -> (IntGaugeVec, IntGaugeVec, IntCounterVec) {
        let role = gauge_vec(
            r,
            "xdplb_backend_role",
            "Role of a (VIP, backend), one-hot over primary, reserve (backup: true).",
            &["vip", "backend", "role"],
        );
        let reserve_active = gauge_vec(
            r,
            "xdplb_vip_reserve_active",
            "1 while a VIP's reserves are in its ring (fewer than min_primaries primaries usable).",
            &["vip"],
        );
        let tier_switches = counter_vec(
            r,
            "xdplb_vip_tier_switches_total",
            "Times a VIP's reserves entered (to=reserve) or left (to=primary) its ring.",
            &["vip", "to"],
        );
        (role, reserve_active, tier_switches)
    }

    /// The last reload's outcome and the balancer's own health (what `/healthz`
    /// says), as gauges.
    fn state_gauges(r: &Registry) -> (IntGauge, IntGauge, IntGauge) {
        let last_reload_ok = gauge(
            r,
            "xdplb_config_last_reload_successful",
            "1 unless the last configuration reload was refused (the previous config stays).",
            1,
        );
        // Set at every scrape; 0 until the first says otherwise.
        let healthy = gauge(
            r,
            "xdplb_healthy",
            "1 while /healthz answers 200: this balancer can forward (see /healthz for why not).",
            0,
        );
        let xdp_attached = gauge(
            r,
            "xdplb_program_attached",
            "1 while our XDP program is the one the pinned link runs on the configured interface.",
            0,
        );
        (last_reload_ok, healthy, xdp_attached)
    }

    /// Registers the families of the passive signal: suspicions, the probes they
    /// triggered, and how long they took to decide.
    fn passive_families(r: &Registry) -> (IntCounterVec, IntCounterVec, HistogramVec) {
        let suspicions = counter_vec(
            r,
            "xdplb_suspicions_total",
            "Times a (VIP, backend) received SYNs but completed no handshake for longer than its \
             window, and was probed at once.",
            &["vip", "backend"],
        );
        let triggered_probes = counter_vec(
            r,
            "xdplb_triggered_probes_total",
            "Probes sent at once because a backend checked at this target was suspect.",
            &["target"],
        );
        let suspicion_decision = histogram_vec(
            r,
            "xdplb_suspicion_decision_seconds",
            "Time from a suspicion to its end: down (the probes brought the backend down), \
             refuted (a probe succeeded) or expired.",
            &["outcome"],
            DECISION_BUCKETS,
        );
        (suspicions, triggered_probes, suspicion_decision)
    }

    /// Registers the families of the global data-path counters and returns one
    /// handle per `Counter`; every series exists (at 0) from the start.
    fn dataplane_families(r: &Registry) -> Vec<IntCounter> {
        let actions = counter_vec(r, "xdplb_xdp_actions_total", "XDP verdicts.", &["action"]);
        let pass = counter_vec(
            r,
            "xdplb_xdp_pass_total",
            "Packets passed to the kernel, by reason.",
            &["reason"],
        );
        let drop =
            counter_vec(r, "xdplb_xdp_drop_total", "Packets dropped, by reason.", &["reason"]);
        let conntrack =
            counter_vec(r, "xdplb_conntrack_total", "Connection-table events.", &["event"]);
        Counter::ALL
            .iter()
            .map(|&c| match family(c) {
                Family::Action(label) => actions.with_label_values(&[label]),
                Family::Pass(label) => pass.with_label_values(&[label]),
                Family::Drop(label) => drop.with_label_values(&[label]),
                Family::Conntrack(label) => conntrack.with_label_values(&[label]),
                Family::Own(name) => {
                    let metric = IntCounter::new(
                        format!("xdplb_{name}_total"),
                        format!("Data-path counter {name}."),
                    )
                    .expect("valid counter");
                    r.register(Box::new(metric.clone())).expect("unique counter");
                    metric
                }
            })
            .collect()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // The guarded maps stay consistent even if a holder panicked.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one update.
    pub fn update(&self, update: &Update) {
        match update {
            Update::Probe { target, kind, failure, duration } => {
                self.probe(target, kind, failure.is_none(), *failure, *duration);
            }
            Update::BackendState { vip, backend, state } => {
                self.backend_state(vip, backend, *state);
            }
            Update::Transition { vip, backend, to } => self.transition(vip, backend, *to),
            Update::Role { vip, backend, reserve } => self.role(vip, backend, *reserve),
            Update::ReserveActive { vip, active } => {
                self.reserve_active.with_label_values(&[vip]).set(i64::from(*active));
            }
            Update::TierSwitch { vip, to_reserve } => {
                let to = if *to_reserve { "reserve" } else { "primary" };
                self.tier_switches.with_label_values(&[vip, to]).inc();
            }
            Update::AllDown { vip, all_down, failing_open } => {
                self.policy.all_down.with_label_values(&[vip]).set(i64::from(*all_down));
                self.policy.fail_open.with_label_values(&[vip]).set(i64::from(*failing_open));
            }
            Update::AllDownEpisode { vip } => {
                self.policy.all_down_total.with_label_values(&[vip]).inc();
            }
            Update::KeepsFlows { vip, backend, keeps } => {
                self.policy.keeps_flows.with_label_values(&[vip, backend]).set(i64::from(*keeps));
            }
            Update::FlapHeld { vip, backend, held } => {
                self.policy.flap_held.with_label_values(&[vip, backend]).set(i64::from(*held));
            }
            Update::FlapHold { vip, backend } => {
                self.policy.flap_holds.with_label_values(&[vip, backend]).inc();
            }
            Update::Reload { ok } => self.reload(*ok),
            Update::Unresolved { vip, backend, unresolved } => {
                self.unresolved(vip, backend, *unresolved);
            }
            Update::ForgetBackend { vip, backend } => self.forget_backend(vip, backend),
            Update::ForgetVip { vip } => self.forget_vip(vip),
            Update::ForgetTarget { target } => self.forget_target(target),
            Update::Suspicion { vip, backend } => {
                self.suspicions.with_label_values(&[vip, backend]).inc();
            }
            Update::TriggeredProbe { target } => {
                self.triggered_probes.with_label_values(&[target]).inc();
            }
            Update::SuspicionDecided { outcome, took } => {
                self.suspicion_decision.with_label_values(&[outcome]).observe(took.as_secs_f64());
            }
        }
    }

    /// A health probe finished. `target` like "10.0.0.11:80", `kind` "tcp"|"http"|"https".
    pub fn probe(
        &self,
        target: &str,
        kind: &str,
        ok: bool,
        failure: Option<&str>,
        duration: Duration,
    ) {
        self.probe_duration.with_label_values(&[kind]).observe(duration.as_secs_f64());
        self.target_probe_duration.with_label_values(&[target]).observe(duration.as_secs_f64());
        self.probes.with_label_values(&[target, if ok { "ok" } else { "failed" }]).inc();
        if !ok {
            let reason = failure.unwrap_or("unknown");
            self.probe_failures.with_label_values(&[target, reason]).inc();
            self.seen().reasons.entry(target.to_owned()).or_default().insert(reason.to_owned());
        }
    }

    /// Removes the probe series of a target no backend uses any more.
    pub fn forget_target(&self, target: &str) {
        for result in ["ok", "failed"] {
            let _ = self.probes.remove_label_values(&[target, result]);
        }
        let _ = self.target_probe_duration.remove_label_values(&[target]);
        let _ = self.triggered_probes.remove_label_values(&[target]);
        for reason in self.seen().reasons.remove(target).unwrap_or_default() {
            let _ = self.probe_failures.remove_label_values(&[target, reason.as_str()]);
        }
    }

    /// Current state of a (VIP, backend): exported as
    /// `xdplb_backend_state{vip,backend,state="up|down|draining"}` one-hot 0/1.
    pub fn backend_state(&self, vip: &str, backend: &str, state: BackendState) {
        for s in BackendState::ALL {
            self.backend_state
                .with_label_values(&[vip, backend, s.name()])
                .set(i64::from(s == state));
        }
    }

    /// Removes every series of a (VIP, backend) that left the config (state,
    /// transitions, unresolved, traffic).
    pub fn forget_backend(&self, vip: &str, backend: &str) {
        // Removing a series that was never created is not an error here.
        for s in BackendState::ALL {
            let _ = self.backend_state.remove_label_values(&[vip, backend, s.name()]);
            let _ = self.transitions.remove_label_values(&[vip, backend, s.name()]);
        }
        let _ = self.unresolved.remove_label_values(&[vip, backend]);
        for role in ROLES {
            let _ = self.role.remove_label_values(&[vip, backend, role]);
        }
        let _ = self.suspicions.remove_label_values(&[vip, backend]);
        let _ = self.backend_packets.remove_label_values(&[vip, backend]);
        let _ = self.backend_bytes.remove_label_values(&[vip, backend]);
        let _ = self.policy.keeps_flows.remove_label_values(&[vip, backend]);
        let _ = self.policy.flap_held.remove_label_values(&[vip, backend]);
        let _ = self.policy.flap_holds.remove_label_values(&[vip, backend]);
        self.seen().backends.remove(&(vip.to_owned(), backend.to_owned()));
    }

    /// Removes the traffic series of a VIP that left the config (its backends go
    /// through `forget_backend`).
    pub fn forget_vip(&self, vip: &str) {
        let _ = self.vip_packets.remove_label_values(&[vip]);
        let _ = self.vip_bytes.remove_label_values(&[vip]);
        let _ = self.reserve_active.remove_label_values(&[vip]);
        let _ = self.policy.all_down.remove_label_values(&[vip]);
        let _ = self.policy.all_down_total.remove_label_values(&[vip]);
        let _ = self.policy.fail_open.remove_label_values(&[vip]);
        for to in ROLES {
            let _ = self.tier_switches.remove_label_values(&[vip, to]);
        }
        self.seen().vips.remove(vip);
    }

    /// The role of a (VIP, backend): `xdplb_backend_role{vip,backend,role="primary|reserve"}` one-hot.
    pub fn role(&self, vip: &str, backend: &str, reserve: bool) {
        for (role, is) in ROLES.iter().zip([!reserve, reserve]) {
            self.role.with_label_values(&[vip, backend, role]).set(i64::from(is));
        }
    }

    /// A (VIP, backend) changed state: `xdplb_backend_transitions_total{vip,backend,to}`.
    pub fn transition(&self, vip: &str, backend: &str, to: BackendState) {
        self.transitions.with_label_values(&[vip, backend, to.name()]).inc();
    }

    /// Time from a state change (health flip, drain command, reload) to the maps written.
    pub fn map_write(&self, latency: Duration) {
        self.map_write.with_label_values::<&str>(&[]).observe(latency.as_secs_f64());
    }

    /// A configuration reload finished: `xdplb_config_reloads_total{result="ok|failed"}`.
    pub fn reload(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    /// The balancer's own health as `/healthz` judges it, at scrape time:
    /// `xdplb_program_attached` and `xdplb_healthy` (attached and the loop alive).
    pub fn health(&self, attached: bool, healthy: bool) {
        self.xdp_attached.set(i64::from(attached));
        self.healthy.set(i64::from(healthy));
    }

    /// A backend whose next-hop MAC is unresolved: `xdplb_backend_unresolved{vip,backend}` 0/1.
    pub fn unresolved(&self, vip: &str, backend: &str, unresolved: bool) {
        self.unresolved.with_label_values(&[vip, backend]).set(i64::from(unresolved));
    }

    /// Data-path totals read from the BPF maps (already summed over CPUs) at
    /// scrape time. The kernel's counters are monotonic; each call adds the
    /// difference since the previous one (or the whole value if it went down, as
    /// when the maps were recreated).
    pub fn dataplane(
        &self,
        counters: &CounterSet,
        vips: &[(String, Traffic)],
        backends: &[(String, String, Traffic)],
    ) {
        // One lock for the whole update: concurrent scrapes must not add a delta twice.
        let mut seen = self.seen();
        let seen = &mut *seen;
        for ((&c, metric), last) in
            Counter::ALL.iter().zip(&self.dataplane_counters).zip(&mut seen.counters)
        {
            advance(metric, last, counters.get(c));
        }
        for (vip, now) in vips {
            let last = seen.vips.entry(vip.clone()).or_default();
            advance(&self.vip_packets.with_label_values(&[vip]), &mut last.packets, now.packets);
            advance(&self.vip_bytes.with_label_values(&[vip]), &mut last.bytes, now.bytes);
        }
        for (vip, backend, now) in backends {
            let last = seen.backends.entry((vip.clone(), backend.clone())).or_default();
            let labels = [vip.as_str(), backend.as_str()];
            advance(
                &self.backend_packets.with_label_values(&labels),
                &mut last.packets,
                now.packets,
            );
            advance(&self.backend_bytes.with_label_values(&labels), &mut last.bytes, now.bytes);
        }
    }

    /// The connection table's last count and size: `xdplb_conntrack_entries`,
    /// `xdplb_conntrack_capacity` (both tables), and each family's.
    pub fn conn_table(&self, table: &crate::conn_table::Use) {
        self.conntrack.set(table);
    }

    /// Text exposition format (version 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        match TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => {
                warn!("metrics: encoding failed: {e}");
                format!("# encoding failed: {e}\n")
            }
        }
    }
}

/// The connection table's gauges: both tables' totals (the contract's two) and each
/// family's table, set at scrape time from `conn_table`'s last count.
struct ConntrackGauges {
    entries: IntGauge,
    capacity: IntGauge,
    family_entries: IntGaugeVec,
    family_capacity: IntGaugeVec,
}

impl ConntrackGauges {
    fn new(r: &Registry) -> Self {
        let entries = gauge(
            r,
            "xdplb_conntrack_entries",
            "Entries in the connection table (IPv4 and IPv6 flows) at its last count (every 10 s, \
             off the control loop).",
            0,
        );
        let capacity = gauge(
            r,
            "xdplb_conntrack_capacity",
            "Entries the connection table holds: conn_table_size IPv4 flows and a quarter of \
             that IPv6 flows (each rounded up to a multiple of the CPUs); each CPU's LRU lists \
             hold a CPUs'th of each.",
            0,
        );
        let labels = &["family"];
        let family_entries = gauge_vec(
            r,
            "xdplb_conntrack_family_entries",
            "Entries of one family's connection table at its last count (family: ipv4, the \
             table of sets FLOWS4; ipv6, the LRU hash CONNS).",
            labels,
        );
        let family_capacity = gauge_vec(
            r,
            "xdplb_conntrack_family_capacity",
            "Entries one family's connection table holds (ipv4: conn_table_size; ipv6: a \
             quarter of it; each rounded up to a multiple of the CPUs). A full ipv4 table shows \
             here while the totals still have room in the other.",
            labels,
        );
        Self { entries, capacity, family_entries, family_capacity }
    }

    /// Sets every gauge from the last count.
    fn set(&self, table: &crate::conn_table::Use) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.entries.set(n(table.entries()));
        self.capacity.set(n(table.size.entries()));
        for (family, entries, capacity) in
            [("ipv4", table.v4, table.size.v4), ("ipv6", table.v6, table.size.v6)]
        {
            self.family_entries.with_label_values(&[family]).set(n(entries));
            self.family_capacity.with_label_values(&[family]).set(i64::from(capacity));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{parse_samples, value};

    fn traffic(packets: u64, bytes: u64) -> Traffic {
        Traffic { packets, bytes }
    }

    fn counters(f: impl Fn(usize) -> u64) -> CounterSet {
        let mut set = CounterSet::default();
        for (i, v) in set.values.iter_mut().enumerate() {
            *v = f(i);
        }
        set
    }

    #[test]
    fn every_data_path_counter_is_exported_with_its_own_value() {
        let m = Metrics::new();
        // Distinct values, so each counter's sample can be found by value alone.
        let value_of = |i: usize| 1_000_003 + u32::try_from(i).expect("few counters") * 1_000;
        m.dataplane(&counters(|i| u64::from(value_of(i))), &[], &[]);
        let samples = parse_samples(&m.render());
        for (i, c) in Counter::ALL.iter().enumerate() {
            let v = f64::from(value_of(i));
            let hits: Vec<_> = samples.iter().filter(|(_, _, x)| (*x - v).abs() < 0.5).collect();
            assert_eq!(hits.len(), 1, "{} should appear exactly once, found {hits:?}", c.name());
            assert!(
                hits[0].0.starts_with("xdplb_") && hits[0].0.ends_with("_total"),
                "{}: {hits:?}",
                c.name()
            );
        }
    }

    #[test]
    fn every_data_path_counter_exists_at_zero_before_the_first_read() {
        let samples = parse_samples(&Metrics::new().render());
        let data_path = samples
            .iter()
            .filter(|(n, _, _)| {
                ["xdplb_xdp_", "xdplb_conntrack_total"].iter().any(|p| n.starts_with(p))
                    || ["xdplb_icmp_forwarded_total", "xdplb_icmp_too_big_sent_total"]
                        .contains(&n.as_str())
            })
            .count();
        assert_eq!(data_path, Counter::ALL.len());
    }

    #[test]
    fn counter_names_map_to_families_by_prefix() {
        assert_eq!(family(Counter::ActionPass), Family::Action("pass"));
        assert_eq!(family(Counter::PassNotVip), Family::Pass("not_vip"));
        assert_eq!(family(Counter::DropFragment), Family::Drop("fragment"));
        assert_eq!(family(Counter::ConnRehash), Family::Conntrack("rehash"));
        assert_eq!(family(Counter::IcmpForwarded), Family::Own("icmp_forwarded"));

        let m = Metrics::new();
        m.dataplane(&counters(|i| i as u64 + 1), &[], &[]);
        let text = m.render();
        let at = |c: Counter| Some(f64::from(c as u32 + 1));
        assert_eq!(
            value(&text, "xdplb_xdp_actions_total", &[("action", "aborted")]),
            at(Counter::ActionAborted)
        );
        assert_eq!(
            value(&text, "xdplb_xdp_pass_total", &[("reason", "not_ip")]),
            at(Counter::PassNotIp)
        );
        assert_eq!(
            value(&text, "xdplb_xdp_drop_total", &[("reason", "no_backend")]),
            at(Counter::DropNoBackend)
        );
        assert_eq!(
            value(&text, "xdplb_conntrack_total", &[("event", "syn")]),
            at(Counter::ConnSyn)
        );
        assert_eq!(value(&text, "xdplb_icmp_forwarded_total", &[]), at(Counter::IcmpForwarded));
    }

    #[test]
    fn data_path_counters_add_the_difference_since_the_last_read() {
        let m = Metrics::new();
        let pass = |text: &str| value(text, "xdplb_xdp_actions_total", &[("action", "pass")]);
        m.dataplane(&counters(|_| 10), &[], &[]);
        assert_eq!(pass(&m.render()), Some(10.0));
        m.dataplane(&counters(|_| 25), &[], &[]);
        assert_eq!(pass(&m.render()), Some(25.0));
        m.dataplane(&counters(|_| 25), &[], &[]);
        assert_eq!(pass(&m.render()), Some(25.0));
    }

    #[test]
    fn a_data_path_value_that_went_down_adds_the_new_value() {
        let m = Metrics::new();
        let vip = |t: Traffic| vec![("web".to_owned(), t)];
        m.dataplane(&counters(|_| 100), &vip(traffic(100, 6_400)), &[]);
        // The maps were recreated: the kernel starts again from 0 and has counted 7.
        m.dataplane(&counters(|_| 7), &vip(traffic(7, 448)), &[]);
        let text = m.render();
        assert_eq!(value(&text, "xdplb_conntrack_total", &[("event", "hit")]), Some(107.0));
        assert_eq!(value(&text, "xdplb_vip_packets_total", &[("vip", "web")]), Some(107.0));
        assert_eq!(value(&text, "xdplb_vip_bytes_total", &[("vip", "web")]), Some(6_848.0));
    }

    #[test]
    fn vip_and_backend_traffic_are_counters_per_label_set() {
        let m = Metrics::new();
        let backends = |a: u64, b: u64| {
            vec![
                ("web".to_owned(), "waf1".to_owned(), traffic(a, a * 100)),
                ("web".to_owned(), "waf2".to_owned(), traffic(b, b * 100)),
            ]
        };
        m.dataplane(
            &CounterSet::default(),
            &[("web".to_owned(), traffic(3, 300))],
            &backends(1, 2),
        );
        m.dataplane(
            &CounterSet::default(),
            &[("web".to_owned(), traffic(8, 800))],
            &backends(5, 3),
        );
        let text = m.render();
        assert!(text.contains("# TYPE xdplb_backend_packets_total counter"));
        assert_eq!(value(&text, "xdplb_vip_packets_total", &[("vip", "web")]), Some(8.0));
        assert_eq!(value(&text, "xdplb_vip_bytes_total", &[("vip", "web")]), Some(800.0));
        let waf = |name, backend| value(&text, name, &[("vip", "web"), ("backend", backend)]);
        assert_eq!(waf("xdplb_backend_packets_total", "waf1"), Some(5.0));
        assert_eq!(waf("xdplb_backend_packets_total", "waf2"), Some(3.0));
        assert_eq!(waf("xdplb_backend_bytes_total", "waf2"), Some(300.0));
    }

    #[test]
    fn backend_state_is_one_hot_over_up_down_draining() {
        let m = Metrics::new();
        m.backend_state("web", "waf1", BackendState::Up);
        m.backend_state("web", "waf1", BackendState::Draining);
        let text = m.render();
        let state = |s| {
            value(
                &text,
                "xdplb_backend_state",
                &[("vip", "web"), ("backend", "waf1"), ("state", s)],
            )
        };
        assert_eq!(
            (state("up"), state("down"), state("draining")),
            (Some(0.0), Some(0.0), Some(1.0))
        );
    }

    #[test]
    fn transitions_count_per_target_state() {
        let m = Metrics::new();
        m.transition("web", "waf1", BackendState::Down);
        m.transition("web", "waf1", BackendState::Up);
        m.transition("web", "waf1", BackendState::Down);
        let text = m.render();
        let to = |s| {
            value(
                &text,
                "xdplb_backend_transitions_total",
                &[("vip", "web"), ("backend", "waf1"), ("to", s)],
            )
        };
        assert_eq!((to("down"), to("up"), to("draining")), (Some(2.0), Some(1.0), None));
    }

    #[test]
    fn forget_backend_removes_its_state_transition_unresolved_and_traffic_series() {
        let m = Metrics::new();
        for b in ["waf1", "waf2"] {
            m.backend_state("web", b, BackendState::Up);
            m.transition("web", b, BackendState::Up);
            m.unresolved("web", b, false);
        }
        let both = vec![
            ("web".to_owned(), "waf1".to_owned(), traffic(4, 40)),
            ("web".to_owned(), "waf2".to_owned(), traffic(4, 40)),
        ];
        m.dataplane(&CounterSet::default(), &[], &both);
        m.forget_backend("web", "waf1");
        let text = m.render();
        let gone: Vec<_> = parse_samples(&text)
            .into_iter()
            .filter(|(_, l, _)| l.get("backend").is_some_and(|b| b == "waf1"))
            .collect();
        assert!(gone.is_empty(), "left behind: {gone:?}");
        assert_eq!(
            value(&text, "xdplb_backend_packets_total", &[("vip", "web"), ("backend", "waf2")]),
            Some(4.0)
        );

        // Back in the config later: its counter starts from what the kernel reports.
        m.dataplane(&CounterSet::default(), &[], &both[..1]);
        let text = m.render();
        assert_eq!(
            value(&text, "xdplb_backend_packets_total", &[("vip", "web"), ("backend", "waf1")]),
            Some(4.0)
        );
    }

    #[test]
    fn forget_vip_removes_its_traffic_series() {
        let m = Metrics::new();
        m.dataplane(
            &CounterSet::default(),
            &[("web".to_owned(), traffic(1, 1)), ("dns".to_owned(), traffic(1, 1))],
            &[],
        );
        m.forget_vip("web");
        let text = m.render();
        assert_eq!(value(&text, "xdplb_vip_packets_total", &[("vip", "web")]), None);
        assert_eq!(value(&text, "xdplb_vip_packets_total", &[("vip", "dns")]), Some(1.0));
    }

    #[test]
    fn probe_duration_is_kept_per_target_too_and_forgotten_with_it() {
        let m = Metrics::new();
        m.probe("10.0.0.11:80", "http", true, None, Duration::from_micros(300));
        m.probe("10.0.0.12:80", "http", false, Some("timeout"), Duration::from_millis(150));
        let text = m.render();
        let bucket = |t, le| {
            value(&text, "xdplb_target_probe_duration_seconds_bucket", &[("target", t), ("le", le)])
        };
        assert_eq!(bucket("10.0.0.11:80", "0.0005"), Some(1.0));
        assert_eq!(bucket("10.0.0.12:80", "0.1"), Some(0.0));
        assert_eq!(bucket("10.0.0.12:80", "0.25"), Some(1.0));
        m.forget_target("10.0.0.12:80");
        let text = m.render();
        assert!(!text.contains("10.0.0.12:80"), "{text}");
        assert!(
            text.contains("xdplb_target_probe_duration_seconds_count{target=\"10.0.0.11:80\"} 1")
        );
    }

    #[test]
    fn the_last_reload_and_the_balancers_health_are_gauges() {
        let m = Metrics::new();
        let v = |name| value(&m.render(), name, &[]);
        assert_eq!(
            v("xdplb_config_last_reload_successful"),
            Some(1.0),
            "no reload yet: nothing failed"
        );
        // Unknown until a scrape sets them: not healthy.
        assert_eq!(v("xdplb_healthy"), Some(0.0));
        m.reload(false);
        assert_eq!(v("xdplb_config_last_reload_successful"), Some(0.0));
        m.reload(true);
        assert_eq!(v("xdplb_config_last_reload_successful"), Some(1.0));
        m.health(true, true);
        assert_eq!((v("xdplb_program_attached"), v("xdplb_healthy")), (Some(1.0), Some(1.0)));
        // Attached, but the loop stalled.
        m.health(true, false);
        assert_eq!((v("xdplb_program_attached"), v("xdplb_healthy")), (Some(1.0), Some(0.0)));
        m.health(false, false);
        assert_eq!(v("xdplb_program_attached"), Some(0.0));
    }

    #[test]
    fn probe_records_duration_by_kind_result_by_target_and_failure_reason() {
        let m = Metrics::new();
        m.probe("10.0.0.11:80", "http", true, None, Duration::from_micros(300));
        m.probe("10.0.0.11:80", "http", false, Some("timeout"), Duration::from_secs(2));
        m.probe("10.0.0.11:80", "http", false, None, Duration::from_millis(3));
        let text = m.render();
        let target = ("target", "10.0.0.11:80");
        assert_eq!(value(&text, "xdplb_probes_total", &[target, ("result", "ok")]), Some(1.0));
        assert_eq!(value(&text, "xdplb_probes_total", &[target, ("result", "failed")]), Some(2.0));
        assert_eq!(
            value(&text, "xdplb_probe_failures_total", &[target, ("reason", "timeout")]),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "xdplb_probe_failures_total", &[target, ("reason", "unknown")]),
            Some(1.0)
        );
        let bucket = |le| {
            value(&text, "xdplb_probe_duration_seconds_bucket", &[("kind", "http"), ("le", le)])
        };
        assert_eq!(bucket("0.0001"), Some(0.0));
        assert_eq!(bucket("0.0005"), Some(1.0));
        assert_eq!(bucket("1"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));

        m.forget_target("10.0.0.11:80");
        let text = m.render();
        assert!(!text.contains("10.0.0.11:80"), "{text}");
    }

    #[test]
    fn suspicions_triggered_probes_and_decision_times_are_counted_and_forgotten_with_their_owner() {
        let m = Metrics::new();
        let suspicion = Update::Suspicion { vip: "web".into(), backend: "waf1".into() };
        m.update(&suspicion);
        m.update(&suspicion);
        for _ in 0..3 {
            m.update(&Update::TriggeredProbe { target: "10.0.0.11:80".into() });
        }
        m.update(&Update::SuspicionDecided { outcome: "down", took: Duration::from_millis(90) });
        m.update(&Update::SuspicionDecided { outcome: "refuted", took: Duration::from_millis(1) });
        let text = m.render();
        let labels = [("vip", "web"), ("backend", "waf1")];
        assert_eq!(value(&text, "xdplb_suspicions_total", &labels), Some(2.0));
        assert_eq!(
            value(&text, "xdplb_triggered_probes_total", &[("target", "10.0.0.11:80")]),
            Some(3.0)
        );
        let bucket = |outcome, le| {
            value(
                &text,
                "xdplb_suspicion_decision_seconds_bucket",
                &[("outcome", outcome), ("le", le)],
            )
        };
        assert_eq!((bucket("down", "0.075"), bucket("down", "0.1")), (Some(0.0), Some(1.0)));
        assert_eq!(bucket("refuted", "0.001"), Some(1.0));

        m.forget_backend("web", "waf1");
        m.forget_target("10.0.0.11:80");
        let text = m.render();
        assert_eq!(value(&text, "xdplb_suspicions_total", &labels), None);
        assert_eq!(
            value(&text, "xdplb_triggered_probes_total", &[("target", "10.0.0.11:80")]),
            None
        );
    }

    #[test]
    fn map_write_latency_buckets_span_10_microseconds_to_1_second() {
        let m = Metrics::new();
        m.map_write(Duration::from_micros(5));
        m.map_write(Duration::from_micros(400));
        let text = m.render();
        let bucket = |le| value(&text, "xdplb_map_write_latency_seconds_bucket", &[("le", le)]);
        assert_eq!(bucket("0.00001"), Some(1.0));
        assert_eq!(bucket("0.0005"), Some(2.0));
        assert_eq!(bucket("1"), Some(2.0));
        assert_eq!(value(&text, "xdplb_map_write_latency_seconds_count", &[]), Some(2.0));
    }

    #[test]
    fn reloads_count_ok_and_failed_both_exported_from_the_start() {
        let m = Metrics::new();
        assert_eq!(
            value(&m.render(), "xdplb_config_reloads_total", &[("result", "failed")]),
            Some(0.0)
        );
        m.reload(true);
        m.reload(false);
        m.reload(true);
        let text = m.render();
        assert_eq!(value(&text, "xdplb_config_reloads_total", &[("result", "ok")]), Some(2.0));
        assert_eq!(value(&text, "xdplb_config_reloads_total", &[("result", "failed")]), Some(1.0));
    }

    #[test]
    fn unresolved_is_a_0_or_1_gauge() {
        let m = Metrics::new();
        m.unresolved("web", "waf1", true);
        let labels = [("vip", "web"), ("backend", "waf1")];
        assert_eq!(value(&m.render(), "xdplb_backend_unresolved", &labels), Some(1.0));
        m.unresolved("web", "waf1", false);
        assert_eq!(value(&m.render(), "xdplb_backend_unresolved", &labels), Some(0.0));
    }

    #[test]
    fn role_is_one_hot_and_the_reserve_tier_is_a_gauge_and_a_switch_counter_per_vip() {
        let m = Metrics::new();
        m.update(&Update::Role { vip: "web".into(), backend: "r1".into(), reserve: true });
        m.update(&Update::Role { vip: "web".into(), backend: "p1".into(), reserve: false });
        m.update(&Update::ReserveActive { vip: "web".into(), active: true });
        m.update(&Update::TierSwitch { vip: "web".into(), to_reserve: true });
        m.update(&Update::TierSwitch { vip: "web".into(), to_reserve: false });
        m.update(&Update::TierSwitch { vip: "web".into(), to_reserve: true });
        let text = m.render();
        let role = |b, r| {
            value(&text, "xdplb_backend_role", &[("vip", "web"), ("backend", b), ("role", r)])
        };
        assert_eq!((role("r1", "reserve"), role("r1", "primary")), (Some(1.0), Some(0.0)));
        assert_eq!((role("p1", "reserve"), role("p1", "primary")), (Some(0.0), Some(1.0)));
        assert_eq!(value(&text, "xdplb_vip_reserve_active", &[("vip", "web")]), Some(1.0));
        let switches =
            |to| value(&text, "xdplb_vip_tier_switches_total", &[("vip", "web"), ("to", to)]);
        assert_eq!((switches("reserve"), switches("primary")), (Some(2.0), Some(1.0)));

        m.forget_backend("web", "r1");
        m.forget_vip("web");
        let text = m.render();
        assert_eq!(role("p1", "primary").map(|_| ()), Some(()));
        let left: Vec<_> = parse_samples(&text)
            .into_iter()
            .filter(|(n, l, _)| {
                l.get("backend").is_some_and(|b| b == "r1")
                    || (n.starts_with("xdplb_vip_") && l.get("vip").is_some_and(|v| v == "web"))
            })
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn each_metrics_has_its_own_registry() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.reload(true);
        assert_eq!(
            value(&b.render(), "xdplb_config_reloads_total", &[("result", "ok")]),
            Some(0.0)
        );
    }

    #[test]
    fn every_metric_name_is_prefixed_xdplb() {
        let m = Metrics::new();
        m.probe("t", "tcp", false, Some("refused"), Duration::ZERO);
        m.backend_state("v", "b", BackendState::Up);
        m.transition("v", "b", BackendState::Up);
        m.map_write(Duration::ZERO);
        m.unresolved("v", "b", true);
        m.dataplane(
            &CounterSet::default(),
            &[("v".to_owned(), traffic(1, 1))],
            &[("v".to_owned(), "b".to_owned(), traffic(1, 1))],
        );
        for (name, _, _) in parse_samples(&m.render()) {
            assert!(name.starts_with("xdplb_"), "{name}");
        }
    }
}
