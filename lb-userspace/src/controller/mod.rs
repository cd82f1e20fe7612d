//! `xdplb run`: the control loop. Health events, operator commands, reloads and
//! neighbour-table refreshes change the runtime state of backends; every change is
//! turned into the desired data plane and handed to the one map writer.
//!
//! Failover path: `health/runner.rs` (probe, rise/fall) -> [`Core::on_health`] ->
//! `backends.rs` (state -> plan) -> `writer.rs` (rings and entries) -> `maps.rs`.

pub mod backends;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode as AyaXdpMode;
use lb_common::BackendState;
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use self::backends::{Key, Runtime, lb_config, plan, target};
use crate::{
    admin::{self, Request, Response},
    config::{self, Config, XdpMode},
    health::{HealthEvent, HealthRunner, Target},
    interface::{self, Interface},
    loader::{self, Attachment},
    mac,
    maps::BpfMaps,
    metrics::{self, Metrics},
    neighbours::{self, NeighbourSource as _},
    writer::MapWriter,
};

/// How often next-hop MACs are re-read from the neighbour table.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
/// /healthz fails when the loop has not ticked for this long.
const LOOP_STALL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// On exit, detach XDP and remove the pins (default: leave both, so traffic
    /// keeps flowing and the next `xdplb run` adopts them).
    pub detach_on_exit: bool,
}

/// Everything the loop owns; shared with the metrics endpoint behind a mutex.
pub struct Core {
    config: Config,
    path: PathBuf,
    writer: MapWriter<BpfMaps>,
    runtime: BTreeMap<Key, Runtime>,
    health: HealthRunner,
    metrics: Arc<Metrics>,
    interface: Interface,
    attachment: Attachment,
    /// The probe loop each backend follows (as registered with the runner).
    targets: BTreeMap<Key, Target>,
    last_tick: Instant,
    /// Backends whose unresolved MAC was already logged (log once per episode).
    unresolved_logged: BTreeSet<Key>,
}

type AdminRx = mpsc::Receiver<(Request, oneshot::Sender<Response>)>;

pub async fn run(path: &Path, options: RunOptions) -> Result<()> {
    let (core, health_rx, admin_listener, metrics_listener) = start(path).await?;
    let admin_rx = spawn_admin(admin_listener);
    let scrape: Arc<dyn metrics::Scrape> = Arc::new(Scraper(Arc::clone(&core)));
    let metrics_task = tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, scrape).await {
            error!("metrics endpoint stopped: {e:#}");
        }
    });
    event_loop(&core, health_rx, admin_rx).await?;
    // The metrics endpoint holds the core; stop it so we own the core again.
    metrics_task.abort();
    let _ = metrics_task.await;
    let Ok(core) = Arc::try_unwrap(core) else {
        bail!("internal error: the control state is still shared at exit");
    };
    shutdown(core.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner), &options)
}

/// Loads the config, attaches (or adopts) the data path, binds the endpoints and
/// writes the first state.
async fn start(
    path: &Path,
) -> Result<(
    Arc<Mutex<Core>>,
    mpsc::Receiver<HealthEvent>,
    tokio::net::UnixListener,
    tokio::net::TcpListener,
)> {
    let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    config::check_interfaces(&config, config::interface_exists)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let interface = interface::read(&config.interface)?;
    let mode = match config.xdp_mode {
        XdpMode::Driver => AyaXdpMode::Driver,
        XdpMode::Skb => AyaXdpMode::Skb,
    };
    let loaded = loader::load_and_attach(&config.pin_path, &config.interface, mode)?;
    info!(
        "xdp_lb attached to {} ({:?} mode){}",
        config.interface,
        config.xdp_mode,
        if loaded.adopted { ", adopting the pinned maps of a previous run" } else { "" }
    );
    let admin_listener = admin::bind(&config.admin_socket)?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("metrics_listen {}", config.metrics_listen))?;

    let (health_tx, health_rx) = mpsc::channel(4096);
    let lb = lb_config(&config, interface.mac, interface.mtu);
    let skeleton = plan(&config, lb, &BTreeMap::new());
    let (writer, adopted) = if loaded.adopted {
        MapWriter::adopt(loaded.maps, &skeleton)?
    } else {
        (MapWriter::new(loaded.maps), crate::writer::Adopted::default())
    };
    if loaded.adopted {
        info!(
            "adopted {} backends from the pinned maps ({} stale entries will be removed)",
            adopted.entries.len(),
            adopted.orphans
        );
    }
    // Adopted backends start in their adopted state, so traffic keeps flowing while
    // health is re-learned.
    let runtime = adopted
        .entries
        .iter()
        .map(|(key, entry)| {
            let state = BackendState::from_u8(entry.state);
            let rt = Runtime {
                healthy: state != BackendState::Down,
                drained: state == BackendState::Draining,
                mac: (entry.mac != [0; 6]).then_some(entry.mac),
            };
            (key.clone(), rt)
        })
        .collect();
    let core = Arc::new(Mutex::new(Core {
        config,
        path: path.to_owned(),
        writer,
        runtime,
        health: HealthRunner::new(health_tx),
        metrics: Arc::new(Metrics::new()),
        interface,
        attachment: loaded.attachment,
        targets: BTreeMap::new(),
        last_tick: Instant::now(),
        unresolved_logged: BTreeSet::new(),
    }));
    {
        let mut c = lock(&core);
        c.set_targets();
        c.refresh_neighbours();
        c.apply("start");
    }
    Ok((core, health_rx, admin_listener, metrics_listener))
}

/// Serves the admin socket; requests reach the loop through the returned channel.
fn spawn_admin(listener: tokio::net::UnixListener) -> AdminRx {
    let (admin_tx, admin_rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(16);
    tokio::spawn(admin::serve(listener, move |req| {
        let tx = admin_tx.clone();
        async move {
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send((req, reply_tx)).await.is_err() {
                return Response::Error("xdplb is shutting down".into());
            }
            reply_rx.await.unwrap_or_else(|_| Response::Error("xdplb is shutting down".into()))
        }
    }));
    admin_rx
}

async fn event_loop(
    core: &Arc<Mutex<Core>>,
    mut health_rx: mpsc::Receiver<HealthEvent>,
    mut admin_rx: AdminRx,
) -> Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(NEIGHBOUR_REFRESH);
    info!("running; metrics on http://{}/metrics", lock(core).config.metrics_listen);
    loop {
        tokio::select! {
            Some(ev) = health_rx.recv() => lock(core).on_health(ev),
            Some((req, reply)) = admin_rx.recv() => {
                let resp = lock(core).on_admin(req);
                let _ = reply.send(resp);
            }
            _ = hup.recv() => { let _ = lock(core).reload(); }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => {
                let mut c = lock(core);
                c.last_tick = Instant::now();
                c.refresh_neighbours();
            }
        }
    }
}

fn shutdown(core: Core, options: &RunOptions) -> Result<()> {
    let _ = std::fs::remove_file(&core.config.admin_socket);
    let Core { attachment, config, .. } = core;
    if options.detach_on_exit {
        attachment.detach()?;
        info!("detached xdp_lb from {} and removed the pins", config.interface);
    } else {
        info!(
            "exiting; xdp_lb stays attached to {} with the last state (pins in {}; `xdplb detach` removes them)",
            config.interface,
            config.pin_path.display()
        );
    }
    Ok(())
}

fn lock(core: &Mutex<Core>) -> std::sync::MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
    /// Starts, keeps or stops probe loops to match the config. Targets whose
    /// backends are currently healthy start up (a reload or an adoption must not
    /// take a working backend out for `rise` probes).
    fn set_targets(&mut self) {
        // One loop per distinct check; it starts up if any backend it serves is up now.
        let mut up: BTreeMap<Target, bool> = BTreeMap::new();
        for v in &self.config.vips {
            for b in &v.backends {
                let healthy =
                    self.runtime.get(&(v.name.clone(), b.name.clone())).is_some_and(|r| r.healthy);
                *up.entry(target(v, b)).or_default() |= healthy;
            }
        }
        let mut targets = BTreeMap::new();
        for v in &self.config.vips {
            for b in &v.backends {
                let mut t = target(v, b);
                t.spec.initially_up |= up[&t];
                targets.insert((v.name.clone(), b.name.clone()), t);
            }
        }
        self.health.set_targets(targets.values().cloned().collect::<BTreeSet<_>>());
        // Runtime follows the config: every backend takes its loop's state, removed ones go.
        let mut runtime = BTreeMap::new();
        for (key, t) in &targets {
            let mut rt = self.runtime.remove(key).unwrap_or_default();
            rt.healthy = self.health.state(t).unwrap_or(rt.healthy);
            runtime.insert(key.clone(), rt);
        }
        for (vip, backend) in self.runtime.keys() {
            self.metrics.forget_backend(vip, backend);
        }
        self.runtime = runtime;
        self.targets = targets;
    }

    fn lb(&self) -> lb_common::LbConfig {
        lb_config(&self.config, self.interface.mac, self.interface.mtu)
    }

    /// Writes the desired data plane; `why` names the change for the log.
    fn apply(&mut self, why: &str) -> bool {
        let started = Instant::now();
        let desired = plan(&self.config, self.lb(), &self.runtime);
        match self.writer.apply(&desired) {
            Ok(applied) => {
                self.metrics.map_write(started.elapsed());
                if !applied.is_empty() {
                    info!(
                        "maps written ({why}) in {:?}: {} backend entries, {} rings switched ({} slots moved)",
                        started.elapsed(),
                        applied.backends_written,
                        applied.rings_switched,
                        applied.slots_moved
                    );
                }
                for ((vip, backend), rt) in &self.runtime {
                    self.metrics.backend_state(vip, backend, rt.state());
                }
                true
            }
            Err(e) => {
                error!("writing the maps failed ({why}): {e:#}");
                false
            }
        }
    }

    fn on_health(&mut self, ev: HealthEvent) {
        match ev {
            HealthEvent::Probe { target, ok, failure, duration } => {
                let kind = format!("{:?}", target.spec.kind).to_lowercase();
                let label = std::net::SocketAddr::new(target.address, target.spec.port).to_string();
                self.metrics.probe(
                    &label,
                    &kind,
                    ok,
                    failure.as_ref().map(crate::health::Failure::label),
                    duration,
                );
            }
            HealthEvent::Changed { target, up, reason } => {
                let mut changed = Vec::new();
                for (key, t) in &self.targets {
                    if *t != target {
                        continue;
                    }
                    if let Some(rt) = self.runtime.get_mut(key) {
                        let before = rt.state();
                        rt.healthy = up;
                        if rt.state() != before {
                            changed.push((key.clone(), rt.state()));
                        }
                    }
                }
                if changed.is_empty() {
                    return;
                }
                for ((vip, backend), state) in &changed {
                    self.metrics.transition(vip, backend, *state);
                    if up {
                        info!("{vip}/{backend} is {} ({target}: {reason})", state.name());
                    } else {
                        warn!("{vip}/{backend} is {} ({target}: {reason})", state.name());
                    }
                }
                self.apply("health");
            }
        }
    }

    fn on_admin(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::Ok(self.status()),
            Request::Drain { vip, backend } => self.set_drained(&vip, &backend, true),
            Request::Undrain { vip, backend } => self.set_drained(&vip, &backend, false),
            Request::Reload => match self.reload() {
                Ok(msg) => Response::Ok(msg),
                Err(e) => Response::Error(e),
            },
        }
    }

    fn set_drained(&mut self, vip: &str, backend: &str, drained: bool) -> Response {
        let key = (vip.to_owned(), backend.to_owned());
        let Some(rt) = self.runtime.get_mut(&key) else {
            return Response::Error(format!(
                "no backend {backend} in VIP {vip} (see `xdplb status`)"
            ));
        };
        if rt.drained == drained {
            return Response::Ok(format!(
                "{vip}/{backend} already {}",
                if drained { "drained" } else { "undrained" }
            ));
        }
        let before = rt.state();
        rt.drained = drained;
        let after = rt.state();
        if before != after {
            self.metrics.transition(vip, backend, after);
        }
        info!("{vip}/{backend} {} by operator", if drained { "drained" } else { "undrained" });
        if self.apply(if drained { "drain" } else { "undrain" }) {
            Response::Ok(format!("{vip}/{backend} is {}", after.name()))
        } else {
            Response::Error("writing the maps failed; see the daemon's log".into())
        }
    }

    /// Re-reads the config file. An invalid file changes nothing; a valid one applies
    /// the difference (unchanged backends keep health, drain state and flows).
    fn reload(&mut self) -> Result<String, String> {
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload(false);
                error!("reload rejected, keeping the running config:\n{e}");
                return Err(format!("config not reloaded:\n{e}"));
            }
        };
        let fixed = [
            ("interface", new.interface != self.config.interface),
            ("xdp_mode", new.xdp_mode != self.config.xdp_mode),
            ("pin_path", new.pin_path != self.config.pin_path),
            ("metrics_listen", new.metrics_listen != self.config.metrics_listen),
            ("admin_socket", new.admin_socket != self.config.admin_socket),
        ];
        let needs_restart: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
        if !needs_restart.is_empty() {
            self.metrics.reload(false);
            let msg = format!(
                "config not reloaded: changing {} needs a restart",
                needs_restart.join(", ")
            );
            error!("{msg}");
            return Err(msg);
        }
        let vips_before = self.config.vips.len();
        self.config = new;
        self.set_targets();
        self.refresh_neighbours();
        if self.apply("reload") {
            self.metrics.reload(true);
            let msg =
                format!("config reloaded: {} VIPs (was {vips_before})", self.config.vips.len());
            info!("{msg}");
            Ok(msg)
        } else {
            self.metrics.reload(false);
            Err("config reloaded but writing the maps failed; see the daemon's log".into())
        }
    }

    /// Re-reads next-hop MACs (one neighbour-table dump per family, whatever the
    /// number of backends); applies when one appeared or changed.
    fn refresh_neighbours(&mut self) {
        let tables = match neighbours::Kernel.tables() {
            Ok(tables) => tables,
            Err(e) => {
                warn!("reading the neighbour table: {e:#}");
                return;
            }
        };
        let mut changed = false;
        let gateway =
            self.config.gateway.filter(|_| self.config.forwarding == config::Forwarding::Ipip);
        for v in &self.config.vips {
            for b in &v.backends {
                let key = (v.name.clone(), b.name.clone());
                let hop = neighbours::next_hop(b.address, gateway);
                let found = tables.mac(self.interface.index, hop);
                let Some(rt) = self.runtime.get_mut(&key) else { continue };
                if found.is_none() {
                    neighbours::Kernel.solicit(&self.interface, hop);
                    // Keep a known MAC through a short neighbour-table gap.
                    if rt.mac.is_none() && self.unresolved_logged.insert(key.clone()) {
                        warn!(
                            "{}/{}: no MAC for next hop {hop} on {} yet; kept out of the ring",
                            v.name, b.name, self.interface.name
                        );
                    }
                } else if found != rt.mac {
                    if rt.mac.is_none() && self.unresolved_logged.remove(&key) {
                        info!("{}/{}: next hop {hop} resolved", v.name, b.name);
                    }
                    rt.mac = found;
                    changed = true;
                }
                self.metrics.unresolved(&v.name, &b.name, rt.mac.is_none());
            }
        }
        if changed {
            self.apply("neighbours");
        }
    }

    fn status(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "xdplb {} on {} (xdp {:?}, {:?}), config {}",
            env!("CARGO_PKG_VERSION"),
            c.interface,
            c.xdp_mode,
            c.forwarding,
            self.path.display()
        );
        let _ = writeln!(
            s,
            "xdp: {}",
            match self.attachment.check_attached() {
                Ok(()) => "attached".to_owned(),
                Err(e) => format!("NOT attached: {e}"),
            }
        );
        for v in &c.vips {
            let t =
                self.writer.vip_index(&v.name).and_then(|i| self.writer.maps().vip_traffic(i).ok());
            let port = if v.port == 0 { "*".to_owned() } else { v.port.to_string() };
            let _ = writeln!(
                s,
                "\nVIP {} {}:{}/{}  packets {}  bytes {}",
                v.name,
                v.address,
                port,
                v.protocol.name(),
                t.map_or(0, |t| t.packets),
                t.map_or(0, |t| t.bytes)
            );
            let _ = writeln!(
                s,
                "  {:<16} {:<40} {:>6}  {:<9} {:<7} {:<7} {:<17} {:>10}",
                "BACKEND", "ADDRESS", "WEIGHT", "STATE", "HEALTH", "DRAINED", "MAC", "PACKETS"
            );
            for b in &v.backends {
                let rt = self
                    .runtime
                    .get(&(v.name.clone(), b.name.clone()))
                    .cloned()
                    .unwrap_or_default();
                let packets = self
                    .writer
                    .backend_index(&v.name, &b.name)
                    .and_then(|i| self.writer.maps().backend_traffic(i).ok())
                    .map_or(0, |t| t.packets);
                let mac = rt.mac.map_or_else(|| "unresolved".to_owned(), |m| mac::format(&m));
                let _ = writeln!(
                    s,
                    "  {:<16} {:<40} {:>6}  {:<9} {:<7} {:<7} {:<17} {:>10}",
                    b.name,
                    b.address,
                    b.weight,
                    rt.state().name(),
                    if rt.healthy { "up" } else { "down" },
                    if rt.drained { "yes" } else { "no" },
                    mac,
                    packets
                );
            }
        }
        s
    }

    /// Data-path counters into the metrics, then the text.
    fn scrape(&self) -> String {
        let maps = self.writer.maps();
        if let Ok(counters) = maps.counters() {
            let vips: Vec<(String, lb_common::Traffic)> = self
                .config
                .vips
                .iter()
                .filter_map(|v| {
                    let i = self.writer.vip_index(&v.name)?;
                    Some((v.name.clone(), maps.vip_traffic(i).ok()?))
                })
                .collect();
            let backends: Vec<(String, String, lb_common::Traffic)> = self
                .config
                .vips
                .iter()
                .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
                .filter_map(|(v, b)| {
                    let i = self.writer.backend_index(&v.name, &b.name)?;
                    Some((v.name.clone(), b.name.clone(), maps.backend_traffic(i).ok()?))
                })
                .collect();
            self.metrics.dataplane(&counters, &vips, &backends);
        }
        self.metrics.render()
    }

    fn health(&self) -> Result<(), String> {
        if self.last_tick.elapsed() > LOOP_STALL {
            return Err(format!("control loop stalled for {:?}", self.last_tick.elapsed()));
        }
        self.attachment.check_attached()
    }
}

struct Scraper(Arc<Mutex<Core>>);

impl metrics::Scrape for Scraper {
    fn metrics(&self) -> String {
        lock(&self.0).scrape()
    }

    fn health(&self) -> Result<(), String> {
        lock(&self.0).health()
    }
}
