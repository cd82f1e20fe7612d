//! The controller's decisions, with no I/O and no clock of its own (the
//! quinn-proto shape): events go in — probe results, operator commands, reloads
//! of an already-parsed config, ticks — each with the time it happened; decisions
//! come out — the desired state, written through the [`Maps`] trait; log lines,
//! metric updates and the probe targets as [`Output`]s; and the [`Status`],
//! published after every change. The loop in `mod.rs` carries them out.
//!
//! Health lives here, once: one [`Hysteresis`] per probe target, shared by the
//! backends probed alike; the probe loops only report results.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_common::{BackendState, LbConfig};
use log::Level;

use super::{
    planner::{Key, Observed, Tier, check_target, lb_config, plan, seen},
    status::{BackendStatus, RingStatus, Starting, Status, VipStatus},
};
use crate::{
    config::{Config, ConfigErrors, Forwarding},
    health::{Failure, Flaps, Hysteresis, Probed, Target, state},
    interface::Interface,
    mac::Mac,
    maps::Maps,
    metrics::Update,
    neighbours::{Tables, next_hop},
    writer::{Adopted, Applied, MapWriter},
};

/// Whether a key differs between two configs.
type Differs = fn(&Config, &Config) -> bool;

/// How long a next hop's MAC that vanished from the neighbour table is still
/// used while it is solicited: the kernel drops stale entries it does not use
/// itself (our traffic bypasses it), and re-resolving one takes milliseconds; a
/// node that does not answer ARP or neighbour discovery within this leaves the ring.
pub const MAC_GRACE: Duration = Duration::from_secs(5);

/// Config keys a reload cannot change: they are bound or attached at start.
const NEEDS_RESTART: [(&str, Differs); 9] = [
    ("interface", |a, b| a.interface != b.interface),
    ("xdp_mode", |a, b| a.xdp_mode != b.xdp_mode),
    ("pin_path", |a, b| a.pin_path != b.pin_path),
    // The pinned table keeps its size: a new one means `xdplb detach` (flows lost).
    ("conn_table_size", |a, b| a.conn_table_size != b.conn_table_size),
    // Named when it changed on its own (its default follows conn_table_size).
    ("conn_table_size_v6", |a, b| {
        a.conn_table_size_v6 != b.conn_table_size_v6 && a.conn_table_size == b.conn_table_size
    }),
    ("metrics_listen", |a, b| a.metrics_listen != b.metrics_listen),
    ("admin_socket", |a, b| a.admin_socket != b.admin_socket),
    ("admin_group", |a, b| a.admin_group != b.admin_group),
    // The socket is bound at start; peers and key follow a reload.
    ("sync.listen", |a, b| a.sync.as_ref().map(|s| s.listen) != b.sync.as_ref().map(|s| s.listen)),
];

/// A decision for the loop to carry out, in the order made.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Log {
        level: Level,
        text: String,
    },
    Metric(Update),
    /// Probe exactly these targets from now on.
    ProbeTargets(BTreeSet<Target>),
    /// Ask the kernel to resolve these next hops (on the balancer's interface).
    Solicit(BTreeSet<std::net::IpAddr>),
    /// Probe `target` once, now, bounded by `timeout`, and report it like the
    /// others (a fast probe of a suspect backend).
    Probe {
        target: Target,
        timeout: Duration,
    },
    /// The maps now say what the core decided for `why`; `since` is when the
    /// event that caused it arrived (the map-write latency starts there).
    Written {
        why: &'static str,
        since: Instant,
        applied: Applied,
    },
    /// With `sync:`: the rings and backends as now written, after a write that
    /// changed them. Peer sync finds its exceptions again against it.
    SyncView(Arc<crate::sync::exceptions::View>),
}

impl Output {
    fn log(level: Level, text: impl Into<String>) -> Self {
        Self::Log { level, text: text.into() }
    }
}

/// What the core knows of one (VIP, backend) besides its config.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tracked {
    /// The probe target whose health is this backend's.
    check: Target,
    /// Drained by an operator: no new flows, existing ones stay.
    drained: bool,
    /// Next-hop MAC; `None` keeps the backend out of the ring.
    mac: Option<Mac>,
    /// Its missing MAC was logged (once per episode).
    unresolved_logged: bool,
    /// When its MAC vanished from the neighbour table (still used until `MAC_GRACE`).
    missing_since: Option<Instant>,
}

/// The health of one probe target: its rise/fall state, and its flap damping.
#[derive(Clone, Debug)]
struct Health {
    flips: Hysteresis,
    flaps: Flaps,
}

impl Health {
    fn new(up: bool, spec: &crate::health::CheckSpec, flaps: Option<Flaps>) -> Self {
        let flaps =
            flaps.map_or_else(|| Flaps::new(spec.damping), |f| f.with_settings(spec.damping));
        Self { flips: Hysteresis::new(up, spec.rise, spec.fall), flaps }
    }

    /// Up as the data path should see it: its checks say so and no flap hold.
    fn is_up(&self) -> bool {
        self.flips.is_up() && !self.flaps.is_held()
    }
}

/// The controller core, generic over the maps it writes and where it reads
/// next-hop MACs, so that tests run it against fakes.
pub struct Core<M: Maps> {
    config: Config,
    interface: Interface,
    writer: MapWriter<M>,
    /// The neighbour tables as last read (by the loop's watcher, off the loop).
    tables: Tables,
    /// Health of each probe target.
    checks: BTreeMap<Target, Health>,
    /// Every (VIP, backend) of the config.
    backends: BTreeMap<Key, Tracked>,
    /// The last map write: `Err` says why it failed.
    last_write: Result<(), String>,
    /// Until the health of every probe target is decided once, the balancer is
    /// starting: per target, the run of probe results that agree with its state
    /// ([`DECIDED`] once the run was as long as a flip to that state needs, or it
    /// flipped). `None` once started.
    decided: Option<BTreeMap<Target, u32>>,
    /// Starting ends by then even if some target never reported.
    settle_by: Instant,
    outputs: VecDeque<Output>,
    /// The state last planned for each (VIP, backend), to count transitions.
    planned: BTreeMap<Key, BackendState>,
    /// Whether each VIP's reserves were in its ring at the last plan.
    reserve_active: BTreeMap<String, bool>,
    /// Whether each VIP had no usable backend at the last plan; a VIP is only in
    /// here once it had a usable backend (before, it was starting).
    all_down: BTreeMap<String, bool>,
    /// The status last published, and whether the loop has yet to take it.
    published: Option<Arc<Status>>,
    unpublished: bool,
    /// Suspicions raised by the data path's counters, and their fast probes.
    passive: passive::Passive,
    /// The last `Output::SyncView` given out.
    sync_view: Option<Arc<crate::sync::exceptions::View>>,
}

impl<M: Maps> Core<M> {
    /// Starts on `maps`. With `adopt`, the maps hold a previous controller's
    /// state (pinned maps after a restart): its backends keep their slots, rings,
    /// state and MAC, so traffic keeps flowing while health is re-learned.
    /// Then reads the neighbour tables and writes the first state.
    pub fn start(
        config: Config,
        interface: Interface,
        maps: M,
        adopt: bool,
        tables: Result<Tables, String>,
        now: Instant,
    ) -> Result<Self> {
        let mut outputs = VecDeque::new();
        let (writer, adopted) = if adopt {
            let skeleton =
                plan(&config, lb_config(&config, interface.mac, interface.mtu), &BTreeMap::new());
            let (writer, adopted) = MapWriter::adopt(maps, &skeleton)?;
            outputs.push_back(Output::log(
                Level::Info,
                format!(
                    "adopted {} backends from the pinned maps ({} stale entries will be removed)",
                    adopted.entries.len(),
                    adopted.orphans
                ),
            ));
            (writer, adopted)
        } else {
            (MapWriter::new(maps), Adopted::default())
        };
        let seed = adopted_seed(&config, &adopted);
        let settle_by = now + settle_limit(&config);
        let mut core = Self {
            config,
            interface,
            writer,
            tables: Tables::default(),
            checks: BTreeMap::new(),
            backends: BTreeMap::new(),
            last_write: Ok(()),
            // Adopted maps carry the previous controller's decisions: no start-up.
            decided: (!adopt).then(BTreeMap::new),
            settle_by,
            outputs,
            planned: BTreeMap::new(),
            reserve_active: BTreeMap::new(),
            all_down: BTreeMap::new(),
            published: None,
            unpublished: false,
            passive: passive::Passive::default(),
            sync_view: None,
        };
        core.follow_config(&seed, None);
        core.warn_config();
        core.read_tables(now, tables);
        core.write(now, "start");
        Ok(core)
    }

    /// The running config.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The next decision to carry out, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The status, once after each change. Take it before the outputs of the same
    /// change: a scrape then already reads the new status when the series of a
    /// removed backend are forgotten, and cannot bring them back.
    pub fn poll_status(&mut self) -> Option<Arc<Status>> {
        if std::mem::take(&mut self.unpublished) { self.published.clone() } else { None }
    }

    /// A probe finished: counts it, and on a rise/fall flip changes every backend
    /// probed by that target and writes the maps. Reports of a target no longer
    /// probed (its loop stopped after they were sent) are ignored.
    pub fn probed(&mut self, now: Instant, report: &Probed) {
        let Some(Health { flips: health, .. }) = self.checks.get_mut(&report.target) else {
            return;
        };
        let target = &report.target;
        self.outputs.push_back(Output::Metric(Update::Probe {
            target: target.endpoint().to_string(),
            kind: target.spec.kind.name(),
            failure: report.failure.as_ref().map(Failure::label),
            duration: report.duration,
        }));
        let conclusive = target.spec.refused_is_down && report.failure == Some(Failure::Refused);
        let flip = if conclusive { health.fail_at_once() } else { health.observe(report.ok()) };
        let up = health.is_up();
        let agrees = report.ok() == up;
        let needed = health.threshold_to(up);
        if let Some(flip) = flip {
            let reason = if conclusive {
                "connection refused: nothing listens (refused_is_down)".to_owned()
            } else {
                state::reason(flip, health, report.failure.as_ref())
            };
            self.flipped(now, target, flip.is_up(), &reason);
        }
        self.settle_suspicion(now, report, up);
        // After the write: a start that ends here publishes the ring it decided.
        // A refusal is as conclusive for the start as for the health.
        self.decide(target, flip.is_some() || conclusive, agrees, needed);
    }

    /// `target`'s health flipped (to `up`): every backend it serves changes state.
    fn flipped(&mut self, now: Instant, target: &Target, up: bool, reason: &str) {
        self.outputs.push_back(Output::log(
            Level::Debug,
            format!("health: {target} is {}: {reason}", if up { "up" } else { "down" }),
        ));
        let Some(Health { flaps, .. }) = self.checks.get_mut(target) else { return };
        let newly_held = flaps.record(now);
        let held = flaps.is_held();
        let recent = flaps.recent();
        if newly_held {
            let d = target.spec.damping;
            self.outputs.push_back(Output::log(
                Level::Warn,
                format!(
                    "{target} flaps: {} health changes within {}; held down for {} \
                     (flap_changes {}), then as its checks say once it stops changing",
                    recent,
                    crate::config::format_duration(d.window),
                    crate::config::format_duration(d.hold),
                    d.limit
                ),
            ));
            self.count_holds(target);
        }
        let observed = self.observed();
        for ((vip, backend), tracked) in &self.backends {
            if tracked.check != *target {
                continue;
            }
            let held = if held && up { ", held down: flapping" } else { "" };
            self.outputs.push_back(Output::log(
                if up { Level::Info } else { Level::Warn },
                format!(
                    "{vip}/{backend} is {} ({target}: {reason}{held})",
                    self.condition(&observed, vip, backend)
                ),
            ));
        }
        self.write(now, "health");
    }

    /// Counts a flap hold of every backend probed by `target`.
    fn count_holds(&mut self, target: &Target) {
        for ((vip, backend), tracked) in &self.backends {
            if tracked.check == *target {
                self.outputs.push_back(Output::Metric(Update::FlapHold {
                    vip: vip.clone(),
                    backend: backend.clone(),
                }));
            }
        }
    }

    /// Ends the flap holds that are due (or renews those of targets still
    /// changing); true when one ended.
    fn expire_holds(&mut self, now: Instant) -> bool {
        let mut ended = false;
        let mut renewed = Vec::new();
        for (target, health) in &mut self.checks {
            match health.flaps.expire(now) {
                Some(true) => {
                    ended = true;
                    self.outputs.push_back(Output::log(
                        Level::Info,
                        format!(
                            "{target}: flap hold over; {} as its checks say",
                            if health.flips.is_up() { "up" } else { "down" }
                        ),
                    ));
                }
                Some(false) => {
                    self.outputs.push_back(Output::log(
                        Level::Warn,
                        format!(
                            "{target} kept changing while held ({} changes within {}): held for {} more",
                            health.flaps.recent(),
                            crate::config::format_duration(target.spec.damping.window),
                            crate::config::format_duration(target.spec.damping.hold)
                        ),
                    ));
                    renewed.push(target.clone());
                }
                None => {}
            }
        }
        for target in renewed {
            self.count_holds(&target);
        }
        ended
    }

    /// `xdplb drain` (`drained`) or `undrain`: the answer for the operator.
    pub fn set_drained(
        &mut self,
        now: Instant,
        vip: &str,
        backend: &str,
        drained: bool,
    ) -> Result<String, String> {
        let key = (vip.to_owned(), backend.to_owned());
        let verb = if drained { "drained" } else { "undrained" };
        let Some(tracked) = self.backends.get_mut(&key) else {
            return Err(format!("no backend {backend} in VIP {vip} (see `xdplb status`)"));
        };
        if tracked.drained == drained {
            return Ok(format!("{vip}/{backend} already {verb}"));
        }
        tracked.drained = drained;
        self.outputs
            .push_back(Output::log(Level::Info, format!("{vip}/{backend} {verb} by operator")));
        if self.write(now, if drained { "drain" } else { "undrain" }) {
            Ok(format!("{vip}/{backend} is {}", self.condition(&self.observed(), vip, backend)))
        } else {
            Err("writing the maps failed; see the daemon's log".into())
        }
    }

    /// A reload with the config as read and parsed again: an invalid one, or one
    /// that changes what only a restart can, changes nothing; a valid one applies
    /// the difference (unchanged backends keep health, drain, MAC and flows). The
    /// answer for the operator.
    pub fn reload(
        &mut self,
        now: Instant,
        parsed: Result<Config, ConfigErrors>,
    ) -> Result<String, String> {
        let new = match parsed {
            Ok(config) => config,
            Err(e) => {
                self.outputs.push_back(Output::Metric(Update::Reload { ok: false }));
                self.outputs.push_back(Output::log(
                    Level::Error,
                    format!("reload rejected, keeping the running config:\n{e}"),
                ));
                return Err(format!("config not reloaded:\n{e}"));
            }
        };
        let needs_restart: Vec<&str> = NEEDS_RESTART
            .iter()
            .filter(|(_, changed)| changed(&self.config, &new))
            .map(|(key, _)| *key)
            .collect();
        if !needs_restart.is_empty() {
            self.outputs.push_back(Output::Metric(Update::Reload { ok: false }));
            let msg = format!(
                "config not reloaded: changing {} needs a restart",
                needs_restart.join(", ")
            );
            self.outputs.push_back(Output::log(Level::Error, msg.clone()));
            return Err(msg);
        }
        if new.hash_seed != self.config.hash_seed {
            let msg = format!("flow hash seed now {}: new flows hash differently", new.hash_seed);
            self.outputs.push_back(Output::log(Level::Info, msg));
        }
        let seed = self.observed();
        // The whole plan against the maps' capacity before anything changes.
        if let Err(e) = MapWriter::<M>::check(&plan(&new, self.lb_config(), &seed)) {
            self.outputs.push_back(Output::Metric(Update::Reload { ok: false }));
            let msg = format!("config not reloaded: {e:#}; the running config stays");
            self.outputs.push_back(Output::log(Level::Error, msg.clone()));
            return Err(msg);
        }
        let kept = self.outputs.len();
        let saved = (
            self.backends.clone(),
            self.checks.clone(),
            self.planned.clone(),
            self.reserve_active.clone(),
            self.all_down.clone(),
        );
        let old = std::mem::replace(&mut self.config, new);
        self.follow_config(&seed, Some(&old));
        self.warn_config();
        self.refresh_neighbours(now);
        match self.try_write(now, "reload") {
            Ok(()) => {
                self.outputs.push_back(Output::Metric(Update::Reload { ok: true }));
                let msg = format!(
                    "config reloaded: {} VIPs (was {})",
                    self.config.vips.len(),
                    old.vips.len()
                );
                self.outputs.push_back(Output::log(Level::Info, msg.clone()));
                Ok(msg)
            }
            Err(e) => {
                // Back to the running config: none of the new config's decisions
                // (forgotten series, probe targets) go out, and the maps are
                // written for the running config again (what the failed write
                // changed is undone where the maps allow).
                self.outputs.truncate(kept);
                self.config = old;
                (self.backends, self.checks, self.planned, self.reserve_active, self.all_down) =
                    saved;
                self.outputs.push_back(Output::Metric(Update::Reload { ok: false }));
                let msg = format!(
                    "config not reloaded: writing the maps failed: {e}; the running config stays"
                );
                self.outputs.push_back(Output::log(Level::Error, msg.clone()));
                self.write(now, "reload reverted");
                Err(msg)
            }
        }
    }

    /// The loop's periodic tick: re-reads next-hop MACs, writes when one appeared
    /// or changed; ends a start-up that waited too long for some probe target.
    pub fn tick(&mut self, now: Instant) {
        if self.expire_holds(now) {
            self.write(now, "flap hold over");
        }
        if self.decided.is_some() && now >= self.settle_by {
            let mut waiting: Vec<String> =
                self.undecided().map(|t| format!("the health of {t}")).collect();
            let starting =
                self.starting().unwrap_or(Starting { undecided: 0, unresolved: 0, checks: 0 });
            if starting.unresolved > 0 {
                waiting.push(format!("the next hop of {} healthy backends", starting.unresolved));
            }
            self.outputs.push_back(Output::log(
                Level::Warn,
                format!(
                    "started without knowing {} within {:?}",
                    waiting.join(", "),
                    settle_limit(&self.config)
                ),
            ));
            self.decided = None;
            self.publish();
        }
        // A MAC whose grace ran out leaves the ring (no table read here).
        if self.refresh_neighbours(now) {
            self.write(now, "neighbours");
            self.check_started();
        }
    }

    /// The neighbour tables as the loop's watcher read them (off the loop): MACs
    /// that appeared, changed or vanished are written. A start waiting for a next
    /// hop may end here.
    pub fn neighbours(&mut self, now: Instant, read: Result<Tables, String>) {
        if self.read_tables(now, read) {
            self.write(now, "neighbours");
            self.check_started();
        }
    }

    /// The balancer's interface as re-read by the watcher: a new MAC or MTU is
    /// written into the data path's config (its source MAC, its MTU for ipip).
    pub fn interface(&mut self, now: Instant, interface: Interface) {
        if interface == self.interface {
            return;
        }
        let old = std::mem::replace(&mut self.interface, interface);
        let new = &self.interface;
        let mut what = Vec::new();
        if old.mac != new.mac {
            what.push(format!(
                "MAC {} -> {}",
                crate::mac::format(&old.mac),
                crate::mac::format(&new.mac)
            ));
        }
        if old.mtu != new.mtu {
            what.push(format!("MTU {} -> {}", old.mtu, new.mtu));
        }
        if old.index != new.index {
            what.push(format!(
                "index {} -> {} (recreated: XDP is no longer attached to it)",
                old.index, new.index
            ));
        }
        self.outputs.push_back(Output::log(
            Level::Warn,
            format!("interface {} changed: {}", new.name, what.join(", ")),
        ));
        self.refresh_neighbours(now);
        self.write(now, "interface");
        self.check_started();
    }

    /// Takes a read of the neighbour tables; true when a MAC changed.
    fn read_tables(&mut self, now: Instant, read: Result<Tables, String>) -> bool {
        match read {
            Ok(tables) => {
                self.tables = tables;
                self.refresh_neighbours(now)
            }
            Err(e) => {
                self.outputs.push_back(Output::log(
                    Level::Warn,
                    format!("reading the neighbour table: {e}"),
                ));
                false
            }
        }
    }

    /// While starting, counts a probe result of `target`: a flip decides it; so
    /// does a run of `needed` results that agree with its state (one result does
    /// not: a first probe may fail on a cold neighbour cache).
    fn decide(&mut self, target: &Target, flipped: bool, agrees: bool, needed: u32) {
        let Some(decided) = &mut self.decided else { return };
        let run = decided.entry(target.clone()).or_default();
        if *run == DECIDED {
            return;
        }
        *run = match (flipped, agrees) {
            (true, _) => DECIDED,
            (false, true) if *run + 1 >= needed => DECIDED,
            (false, true) => *run + 1,
            (false, false) => 0,
        };
        if *run == DECIDED {
            self.check_started();
        }
    }

    /// While starting: once the health of every target is decided and every
    /// healthy backend's next hop resolved (so that the ring is what a peer with
    /// the same view builds), the balancer has started. Publishes the progress.
    fn check_started(&mut self) {
        let Some(starting) = self.starting() else { return };
        if starting.undecided == 0 && starting.unresolved == 0 {
            self.decided = None;
            self.outputs.push_back(Output::log(
                Level::Info,
                format!(
                    "started: the health of all {} backend checks is decided",
                    self.checks.len()
                ),
            ));
        }
        self.publish();
    }

    /// While starting, the probe targets whose health is not decided yet.
    fn undecided(&self) -> impl Iterator<Item = &Target> {
        let decided = self.decided.as_ref();
        self.checks.keys().filter(move |t| decided.is_some_and(|d| d.get(*t) != Some(&DECIDED)))
    }

    /// How far the start is, while starting.
    fn starting(&self) -> Option<Starting> {
        self.decided.as_ref()?;
        let unresolved = self
            .backends
            .values()
            .filter(|t| t.mac.is_none() && observed(t, &self.checks).healthy)
            .count();
        Some(Starting {
            undecided: self.undecided().count(),
            unresolved,
            checks: self.checks.len(),
        })
    }

    /// Makes the tracked backends and the probe targets follow the config. A
    /// backend keeps what `prior` says of it; a target already probed keeps its
    /// health; a new one inherits the health of a removed target with the same
    /// probe (a reload that only retunes timing), or else starts up if a backend it
    /// now serves was healthy (a reload or an adoption must not take a working
    /// backend out for `rise` probes), or else at its `initial_state`. Metric
    /// series of what left the config (`old`) go.
    fn follow_config(&mut self, prior: &BTreeMap<Key, Observed>, old: Option<&Config>) {
        let before = std::mem::take(&mut self.backends);
        let mut served_healthy: BTreeMap<Target, bool> = BTreeMap::new();
        for v in &self.config.vips {
            for b in &v.backends {
                let key = (v.name.clone(), b.name.clone());
                let seen = prior.get(&key).copied().unwrap_or_default();
                let check = check_target(v, b);
                *served_healthy.entry(check.clone()).or_default() |= seen.healthy;
                let unresolved_logged = before.get(&key).is_some_and(|t| t.unresolved_logged);
                let missing_since = before.get(&key).and_then(|t| t.missing_since);
                let tracked = Tracked {
                    check,
                    drained: seen.drained,
                    mac: seen.mac,
                    unresolved_logged,
                    missing_since,
                };
                self.backends.insert(key, tracked);
            }
        }
        let mut previous = std::mem::take(&mut self.checks);
        for target in served_healthy.keys() {
            if let Some(kept) = previous.remove(target) {
                self.checks.insert(target.clone(), kept);
            }
        }
        for (target, healthy) in served_healthy {
            if self.checks.contains_key(&target) {
                continue;
            }
            let inherited = previous.iter().find(|(old, _)| old.same_probe(&target));
            let up =
                inherited.map_or(healthy || target.spec.initially_up, |(_, h)| h.flips.is_up());
            // A retuned check keeps its flap history (and hold) too.
            let flaps = inherited.map(|(_, h)| h.flaps.clone());
            let health = Health::new(up, &target.spec, flaps);
            self.checks.insert(target, health);
        }
        for (vip, backend) in before.keys().filter(|key| !self.backends.contains_key(*key)) {
            self.outputs.push_back(Output::Metric(Update::ForgetBackend {
                vip: vip.clone(),
                backend: backend.clone(),
            }));
        }
        if let Some(old) = old {
            for v in old.vips.iter().filter(|v| !self.config.vips.iter().any(|n| n.name == v.name))
            {
                self.outputs.push_back(Output::Metric(Update::ForgetVip { vip: v.name.clone() }));
            }
        }
        let probed: BTreeSet<String> =
            self.checks.keys().map(|t| t.endpoint().to_string()).collect();
        let unprobed: BTreeSet<String> = previous
            .keys()
            .map(|t| t.endpoint().to_string())
            .filter(|e| !probed.contains(e))
            .collect();
        for target in unprobed {
            self.outputs.push_back(Output::Metric(Update::ForgetTarget { target }));
        }
        self.outputs.push_back(Output::ProbeTargets(self.checks.keys().cloned().collect()));
    }

    /// Follows next-hop MACs in the last tables read, asks for the missing ones to
    /// be resolved (`Output::Solicit`), and says whether a MAC the data path uses
    /// changed. A MAC that vanishes from the table (the kernel dropped the entry,
    /// or could not resolve it again) is still used for `MAC_GRACE`, while it is
    /// solicited, then dropped: the backend leaves the ring until it resolves.
    /// `xdplb_backend_unresolved` says at once that the table lacks it.
    fn refresh_neighbours(&mut self, now: Instant) -> bool {
        let gateway = self.config.gateway.filter(|_| self.config.forwarding == Forwarding::Ipip);
        let mut changed = false;
        let mut solicit = BTreeSet::new();
        for v in &self.config.vips {
            for b in &v.backends {
                let Some(tracked) = self.backends.get_mut(&(v.name.clone(), b.name.clone())) else {
                    continue;
                };
                let hop = next_hop(b.address, gateway);
                let found = self.tables.mac(self.interface.index, hop);
                let who = format!("{}/{}: next hop {hop}", v.name, b.name);
                match (found, tracked.mac) {
                    (Some(mac), _) => {
                        if tracked.missing_since.take().is_some() && tracked.mac == Some(mac) {
                            self.outputs.push_back(Output::log(
                                Level::Info,
                                format!("{who} is back in the neighbour table"),
                            ));
                        }
                        if tracked.mac != Some(mac) {
                            let text = match tracked.mac {
                                Some(old) => format!(
                                    "{who} changed its MAC from {} to {}",
                                    crate::mac::format(&old),
                                    crate::mac::format(&mac)
                                ),
                                None => format!("{who} resolved"),
                            };
                            let level =
                                if tracked.mac.is_some() { Level::Warn } else { Level::Info };
                            if tracked.mac.is_some() || tracked.unresolved_logged {
                                self.outputs.push_back(Output::log(level, text));
                            }
                            tracked.unresolved_logged = false;
                            tracked.missing_since = None;
                            tracked.mac = Some(mac);
                            changed = true;
                        }
                    }
                    (None, Some(mac)) => {
                        solicit.insert(hop);
                        let since = *tracked.missing_since.get_or_insert_with(|| {
                            self.outputs.push_back(Output::log(
                                Level::Warn,
                                format!(
                                    "{who} is gone from the neighbour table; still sent to {} for {:?} while it is solicited",
                                    crate::mac::format(&mac),
                                    MAC_GRACE
                                ),
                            ));
                            now
                        });
                        if now.saturating_duration_since(since) >= MAC_GRACE {
                            tracked.mac = None;
                            tracked.missing_since = None;
                            tracked.unresolved_logged = true;
                            changed = true;
                            self.outputs.push_back(Output::log(
                                Level::Warn,
                                format!("{who} did not resolve again within {MAC_GRACE:?}; kept out of the ring until it does"),
                            ));
                        }
                    }
                    (None, None) => {
                        solicit.insert(hop);
                        if !tracked.unresolved_logged {
                            tracked.unresolved_logged = true;
                            self.outputs.push_back(Output::log(
                                Level::Warn,
                                format!(
                                    "{}/{}: no MAC for next hop {hop} on {} yet; kept out of the ring",
                                    v.name, b.name, self.interface.name
                                ),
                            ));
                        }
                    }
                }
                self.outputs.push_back(Output::Metric(Update::Unresolved {
                    vip: v.name.clone(),
                    backend: b.name.clone(),
                    unresolved: found.is_none(),
                }));
            }
        }
        if !solicit.is_empty() {
            self.outputs.push_back(Output::Solicit(solicit));
        }
        changed
    }

    /// Writes the desired state; `why` names the change. Publishes the status.
    /// A failure is logged.
    fn write(&mut self, now: Instant, why: &'static str) -> bool {
        match self.try_write(now, why) {
            Ok(()) => true,
            Err(e) => {
                self.outputs.push_back(Output::log(
                    Level::Error,
                    format!("writing the maps failed ({why}): {e}"),
                ));
                false
            }
        }
    }

    /// Writes the desired state and publishes the status; `Err` says why the
    /// write failed.
    fn try_write(&mut self, now: Instant, why: &'static str) -> Result<(), String> {
        let observed = self.observed();
        let desired = plan(&self.config, self.lb_config(), &observed);
        let planned: BTreeMap<Key, BackendState> = desired
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| ((v.name.clone(), b.name.clone()), b.state)))
            .collect();
        for (key, to) in &planned {
            if self.planned.get(key).is_some_and(|was| was != to) {
                let (vip, backend) = key.clone();
                self.outputs.push_back(Output::Metric(Update::Transition {
                    vip,
                    backend,
                    to: *to,
                }));
            }
        }
        self.planned = planned;
        self.follow_tiers(&observed);
        self.follow_policies(&observed);
        let written = match self.writer.apply(&desired) {
            Ok(applied) => {
                self.outputs.push_back(Output::Written { why, since: now, applied });
                self.follow_sync_view();
                for v in &self.config.vips {
                    for b in &v.backends {
                        let key = (v.name.clone(), b.name.clone());
                        let state = self.planned.get(&key).copied().unwrap_or(BackendState::Down);
                        let (vip, backend) = key;
                        self.outputs.push_back(Output::Metric(Update::Role {
                            vip: vip.clone(),
                            backend: backend.clone(),
                            reserve: b.backup,
                        }));
                        self.outputs.push_back(Output::Metric(Update::BackendState {
                            vip,
                            backend,
                            state,
                        }));
                    }
                }
                Ok(())
            }
            Err(e) => Err(format!("{e:#}")),
        };
        self.rewatch();
        self.last_write.clone_from(&written);
        self.publish();
        written
    }

    /// With `sync:`, gives out the rings and backends as written when they
    /// changed (a ring switched, a backend's state or generation moved).
    fn follow_sync_view(&mut self) {
        if self.config.sync.is_none() {
            return;
        }
        let view = self.writer.sync_view(self.config.hash_seed.seed);
        if self.sync_view.as_deref() != Some(&view) {
            let view = Arc::new(view);
            self.sync_view = Some(Arc::clone(&view));
            self.outputs.push_back(Output::SyncView(view));
        }
    }

    /// Publishes the status if it changed.
    fn publish(&mut self) {
        let status = Arc::new(self.status(&self.observed()));
        if self.published.as_deref() != Some(&status) {
            self.published = Some(status);
            self.unpublished = true;
        }
    }

    /// Logs and counts each VIP whose reserves entered or left its ring, and
    /// sets every VIP's reserve-tier gauge. A VIP seen for the first time (start,
    /// reload) that starts on its reserves is logged but not counted as a switch.
    fn follow_tiers(&mut self, observed: &BTreeMap<Key, Observed>) {
        let mut now_active = BTreeMap::new();
        for v in &self.config.vips {
            let tier = Tier::of(v, |b| seen(observed, v, b));
            let active = tier.reserve_active();
            now_active.insert(v.name.clone(), active);
            self.outputs
                .push_back(Output::Metric(Update::ReserveActive { vip: v.name.clone(), active }));
            let before = self.reserve_active.get(&v.name).copied();
            if before == Some(active) || (before.is_none() && !active) {
                continue;
            }
            let usable = format!(
                "{} of {} primaries usable, min_primaries {}",
                tier.usable_primaries, tier.primaries, tier.min_primaries
            );
            let text = if active {
                let serving: Vec<&str> = v
                    .backends
                    .iter()
                    .filter(|b| {
                        b.backup && tier.state(b, &seen(observed, v, b)) == BackendState::Up
                    })
                    .filter(|b| seen(observed, v, b).mac.is_some())
                    .map(|b| b.name.as_str())
                    .collect();
                let verb = if before.is_some() { "switched to" } else { "starts on" };
                format!(
                    "{}: {verb} its reserve tier ({usable}): new flows go to {}{}",
                    v.name,
                    if tier.usable_primaries > 0 { "the usable primaries and " } else { "" },
                    serving.join(", ")
                )
            } else {
                format!(
                    "{}: back on its primary tier ({usable}): new flows go to the primaries; \
                     flows established on reserves stay there until they end",
                    v.name
                )
            };
            self.outputs
                .push_back(Output::log(if active { Level::Warn } else { Level::Info }, text));
            if before.is_some() {
                self.outputs.push_back(Output::Metric(Update::TierSwitch {
                    vip: v.name.clone(),
                    to_reserve: active,
                }));
            }
        }
        self.reserve_active = now_active;
    }

    /// Sets each VIP's all-down and fail-open gauges and each backend's
    /// keeps-its-flows gauge; logs and counts each VIP that lost its last usable
    /// backend, and logs each that got one back. A VIP that never had a usable
    /// backend since it was configured (every backend starts down until its
    /// checks rise) is starting, not all down: no episode, no log.
    fn follow_policies(&mut self, observed: &BTreeMap<Key, Observed>) {
        let mut now = BTreeMap::new();
        for v in &self.config.vips {
            let tier = Tier::of(v, |b| seen(observed, v, b));
            let down = tier.all_down();
            let before = self.all_down.get(&v.name).copied();
            if before.is_some() || !down {
                now.insert(v.name.clone(), down);
            }
            self.outputs.push_back(Output::Metric(Update::AllDown {
                vip: v.name.clone(),
                all_down: down,
                failing_open: tier.failing_open(),
            }));
            for b in &v.backends {
                self.outputs.push_back(Output::Metric(Update::KeepsFlows {
                    vip: v.name.clone(),
                    backend: b.name.clone(),
                    keeps: tier.keeps_flows(&seen(observed, v, b)),
                }));
                self.outputs.push_back(Output::Metric(Update::FlapHeld {
                    vip: v.name.clone(),
                    backend: b.name.clone(),
                    held: self.held(&v.name, &b.name),
                }));
            }
            if before == Some(down) || before.is_none() {
                continue;
            }
            if down {
                self.outputs
                    .push_back(Output::Metric(Update::AllDownEpisode { vip: v.name.clone() }));
                let what = if tier.failing_open() {
                    let to: Vec<&str> = v
                        .backends
                        .iter()
                        .filter(|b| tier.failed_open(&seen(observed, v, b)))
                        .map(|b| b.name.as_str())
                        .collect();
                    format!(
                        "failing open: new flows go to {} whatever their health (all_down: fail_open)",
                        to.join(", ")
                    )
                } else if tier.all_down == crate::config::AllDown::FailOpen {
                    "new flows are dropped: no backend is reachable to fail open to".to_owned()
                } else {
                    "new flows are dropped (all_down: drop)".to_owned()
                };
                self.outputs.push_back(Output::log(
                    Level::Error,
                    format!("{}: no usable backend; {what}", v.name),
                ));
            } else {
                let usable = tier.usable_primaries + tier.usable_reserves;
                self.outputs.push_back(Output::log(
                    Level::Info,
                    format!(
                        "{}: {usable} usable backend{} again; new flows follow its ring",
                        v.name,
                        if usable == 1 { "" } else { "s" }
                    ),
                ));
            }
        }
        self.all_down = now;
    }

    /// Logs what `config::warnings` finds in the running config.
    fn warn_config(&mut self) {
        for w in crate::config::warnings(&self.config) {
            self.outputs.push_back(Output::log(Level::Warn, format!("config warning: {w}")));
        }
    }

    /// The condition of a backend as status and logs name it: up, down,
    /// draining, or standby (a reserve waiting outside the ring).
    fn condition(
        &self,
        observed: &BTreeMap<Key, Observed>,
        vip: &str,
        backend: &str,
    ) -> &'static str {
        let Some(v) = self.config.vips.iter().find(|v| v.name == vip) else { return "down" };
        let Some(b) = v.backends.iter().find(|b| b.name == backend) else { return "down" };
        Tier::of(v, |b| seen(observed, v, b)).condition(b, &seen(observed, v, b))
    }

    /// Whether the target of `vip`/`backend` is held down by flap damping.
    fn held(&self, vip: &str, backend: &str) -> bool {
        let Some(tracked) = self.backends.get(&(vip.to_owned(), backend.to_owned())) else {
            return false;
        };
        self.checks.get(&tracked.check).is_some_and(|h| h.flaps.is_held())
    }

    fn lb_config(&self) -> LbConfig {
        lb_config(&self.config, self.interface.mac, self.interface.mtu)
    }

    /// What is observed of every backend now.
    fn observed(&self) -> BTreeMap<Key, Observed> {
        self.backends
            .iter()
            .map(|(key, tracked)| (key.clone(), observed(tracked, &self.checks)))
            .collect()
    }

    fn status(&self, observed: &BTreeMap<Key, Observed>) -> Status {
        let mut vips = Vec::with_capacity(self.config.vips.len());
        for v in &self.config.vips {
            let backends = v.backends.iter().map(|b| BackendStatus {
                observed: seen(observed, v, b),
                index: self.writer.backend_index(&v.name, &b.name),
                held: self.held(&v.name, &b.name),
            });
            let ring = self.writer.ring(&v.name);
            vips.push(VipStatus {
                index: self.writer.vip_index(&v.name),
                tier: Tier::of(v, |b| seen(observed, v, b)),
                backends: backends.collect(),
                ring: ring.map(|r| RingStatus { members: r.members, digest: r.digest }),
            });
        }
        let starting = self.starting();
        Status { config: self.config.clone(), vips, last_write: self.last_write.clone(), starting }
    }
}

/// What a restarted controller takes over from the pinned maps: the previous
/// controller's view of each backend (health and drain, pinned in
/// `BACKEND_FLAGS`), or, for maps pinned before that existed, a guess from the
/// data path's state: a backend whose entry is not down was healthy; a draining
/// one was drained by an operator — unless it is a reserve waiting outside the
/// ring (the data path holds those as draining too), which is what a draining
/// reserve of a VIP whose tier was not calling its reserves must be.
fn adopted_seed(config: &Config, adopted: &Adopted) -> BTreeMap<Key, Observed> {
    let pinned = |key: &Key, entry: &lb_common::Backend| {
        let mac = (entry.mac != [0; 6]).then_some(entry.mac);
        Observed::from_flags(*adopted.flags.get(key)?, mac)
    };
    let mut seed: BTreeMap<Key, Observed> = adopted
        .entries
        .iter()
        .filter(|(key, entry)| pinned(key, entry).is_none())
        .map(|(key, entry)| {
            let state = BackendState::from_u8(entry.state);
            let seen = Observed {
                healthy: state != BackendState::Down,
                drained: state == BackendState::Draining,
                mac: (entry.mac != [0; 6]).then_some(entry.mac),
            };
            (key.clone(), seen)
        })
        .collect();
    for v in &config.vips {
        let reserves: Vec<Key> = v
            .backends
            .iter()
            .filter(|b| b.backup)
            .map(|b| (v.name.clone(), b.name.clone()))
            .filter(|key| seed.get(key).is_some_and(|s| s.drained))
            .collect();
        for key in &reserves {
            if let Some(s) = seed.get_mut(key) {
                s.drained = false;
            }
        }
        if Tier::of(v, |b| seen(&seed, v, b)).reserves_called() {
            // The tier was serving: a draining reserve was drained by hand.
            for key in &reserves {
                if let Some(s) = seed.get_mut(key) {
                    s.drained = true;
                }
            }
        }
    }
    for (key, entry) in &adopted.entries {
        if let Some(seen) = pinned(key, entry) {
            seed.insert(key.clone(), seen);
        }
    }
    seed
}

/// A target whose health is decided, in `Core::decided`.
const DECIDED: u32 = u32::MAX;

/// How long a start may wait for every probe target's first decision: twice
/// the slowest target's `max(rise, fall) + 1` probes and a timeout, and 2 s.
fn settle_limit(config: &Config) -> Duration {
    let slowest = config
        .vips
        .iter()
        .map(|v| {
            let c = &v.health_check;
            c.interval * (c.rise.max(c.fall) + 1) + c.timeout
        })
        .max()
        .unwrap_or_default();
    slowest * 2 + Duration::from_secs(2)
}

/// A backend as observed: its target's health, its drain flag and MAC.
fn observed(tracked: &Tracked, checks: &BTreeMap<Target, Health>) -> Observed {
    Observed {
        healthy: checks.get(&tracked.check).is_some_and(Health::is_up),
        drained: tracked.drained,
        mac: tracked.mac,
    }
}

mod passive;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_passive;
