//! `xdplb run`: the loop, and nothing else. It owns the [`Core`] and feeds it what
//! happens — probe results, operator commands, reloads, ticks — then carries out
//! what the core decided: log lines, metric updates, probe targets, the status
//! it publishes for the endpoints.
//!
//! Failover path: `health/runner.rs` (probe) -> [`Core::probed`] (rise/fall,
//! backend state; `sampler.rs` feeds [`Core::sampled`] the data path's counters,
//! whose suspicions trigger probes) -> `planner.rs` (desired state) -> `writer.rs` (rings and
//! entries) -> `maps.rs`.

pub mod balancer_health;
mod core;
pub mod liveness;
pub mod planner;
mod published;
mod sampler;
pub mod status;
pub mod suspicion;
mod watcher;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::XdpMode as AyaXdpMode;
use log::{error, info, warn};
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};

pub use self::{
    core::{Core, Output},
    published::{Published, Verdict},
};
use self::{
    liveness::Heartbeat,
    sampler::{SAMPLE, Sampler},
    status::Status,
    watcher::{Change, Watcher},
};
use crate::{
    access::{self, Access},
    admin::{self, Request, Response},
    config::{self, Config, XdpMode},
    ha::{self, Monitor, monitor::Inputs as MonitorInputs},
    health::{HealthRunner, Probed},
    interface,
    loader::{self, Attachment},
    maps::Maps,
    metrics::{self, Metrics},
    neighbours::{Kernel, NeighbourSource},
    stats::{BpfStats, HandshakeCounters},
    sync,
};

/// How often the loop ticks: next-hop MACs are re-read.
const TICK: Duration = Duration::from_secs(1);
/// How often the loop beats its heartbeat (`balancer_health::LOOP_STALL` judges it).
pub const HEARTBEAT: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// On exit, detach XDP and remove the pins (default: leave both, so traffic
    /// keeps flowing and the next `xdplb run` adopts them).
    pub detach_on_exit: bool,
}

/// Requests the loop answers, with where to send the answer.
type AdminRx = mpsc::Receiver<(Request, oneshot::Sender<Response>)>;

/// The signals the daemon answers, SIGHUP (reload), SIGTERM and SIGINT (stop).
/// One that arrives while it is still starting must neither kill it with the
/// default action (a `systemctl reload` right after a start) nor interrupt the
/// kernel's verifier, which gives up on a pending signal: `main` holds them back
/// from its first line ([`hold_signals`]), `install` catches them, and the loop
/// lets them through when it starts ([`Signals::listen`]) and answers them.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

/// The signals `hold_signals` holds back.
const HELD: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT];

impl Signals {
    fn install() -> Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Lets held signals through (to this thread, the loop's); pending ones
    /// are answered at the loop's first turn.
    fn listen(self) -> Result<Self> {
        set_mask(libc::SIG_UNBLOCK)?;
        Ok(self)
    }
}

/// Blocks SIGHUP, SIGTERM and SIGINT in the calling thread and in the threads it
/// starts later (the runtime's): one that arrives stays pending until the
/// daemon's loop listens. `main` calls this first of all.
pub fn hold_signals() -> Result<()> {
    set_mask(libc::SIG_BLOCK)
}

/// Undoes `hold_signals` in the calling thread (for the commands that are not
/// `xdplb run`: Ctrl-C must stop them as usual).
pub fn release_signals() -> Result<()> {
    set_mask(libc::SIG_UNBLOCK)
}

fn set_mask(how: libc::c_int) -> Result<()> {
    // SAFETY: a sigset_t we own, filled by sigemptyset/sigaddset before use.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for s in HELD {
            libc::sigaddset(&raw mut set, s);
        }
        libc::pthread_sigmask(how, &raw const set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("pthread_sigmask");
    }
    Ok(())
}

pub async fn run(path: &Path, options: RunOptions) -> Result<()> {
    let signals = Signals::install()?;
    let config = config::load(path).map_err(|e| anyhow!("{e}"))?;
    info!("flow hash seed: {}", config.hash_seed);
    config::check_interfaces(&config, config::interface_exists).map_err(|e| anyhow!("{e}"))?;
    let interface = interface::read(&config.interface)?;
    let mode = match config.xdp_mode {
        XdpMode::Driver => AyaXdpMode::Driver,
        XdpMode::Skb => AyaXdpMode::Skb,
    };
    let loaded =
        loader::load_and_attach(&config.pin_path, &config.interface, mode, config.conn_tables())?;
    info!(
        "xdp_lb attached to {} ({:?} mode){}",
        config.interface,
        config.xdp_mode,
        if loaded.adopted { ", adopting the pinned maps of a previous run" } else { "" }
    );
    let access = Access {
        status_group: match &config.admin_group {
            None => None,
            Some(name) => Some(
                access::group_id(name)
                    .map_err(|e| anyhow!("{}", config.origin.error("admin_group", e)))?,
            ),
        },
        ..Access::owner_only()
    };
    let admin_listener = admin::bind(&config.admin_socket, &access)?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("metrics_listen {}", config.metrics_listen))?;

    let now = Instant::now();
    // The first tables are read here, before the loop runs; later ones by the watcher.
    let tables = Kernel.tables().map_err(|e| format!("{e:#}"));
    let (changes_tx, changes) = mpsc::channel(16);
    let watcher = Watcher::spawn(interface.clone(), Kernel, tables.clone(), TICK, changes_tx)
        .context("starting the neighbour watcher")?;
    let engines = ha::engines(&config);
    // Peer sync reads and writes the connection table through a handle of its own.
    let conns = config.sync.as_ref().map(|_| loaded.maps.conns_handle()).transpose()?;
    let clock = tokio::spawn(crate::clock::keep_time(loaded.maps.conn_epoch()?));
    let sync_conf = config.sync.clone();
    let mut core = Core::start(config, interface, loaded.maps, loaded.adopted, tables, now)?;
    let first = core.poll_status().ok_or_else(|| anyhow!("internal error: no status at start"))?;
    let (status_tx, status_rx) = watch::channel(first);
    let (reports_tx, reports) = mpsc::channel(4096);
    let metrics = Arc::new(Metrics::new());
    let sync = match (&sync_conf, conns) {
        (Some(conf), Some(conns)) => Some(
            sync::Service::spawn(conf, conns, Arc::clone(&metrics))
                .context("starting peer sync")?,
        ),
        _ => None,
    };
    let peers = sync.as_ref().map(|s| Arc::clone(&s.shared));
    let mut effects = Effects {
        watcher,
        runner: HealthRunner::new(reports_tx),
        metrics: Arc::clone(&metrics),
        status: status_tx,
        sync,
        sync_conf,
    };
    effects.carry_out(&mut core);

    let heartbeat = Arc::new(Heartbeat::new(now));
    let check = loaded.attachment.check().clone();
    let stats = Arc::new(loaded.stats);
    let sampler = Sampler::new(Arc::clone(&stats) as Arc<dyn HandshakeCounters + Send + Sync>);
    let monitor = Arc::new(
        Monitor::spawn(MonitorInputs {
            status: status_rx.clone(),
            heartbeat: Arc::clone(&heartbeat),
            attached: Arc::new(move || check.attached()),
            metrics: Arc::clone(&metrics),
            engines,
        })
        .context("starting the health monitor thread")?,
    );
    let verdict = Arc::clone(&monitor);
    let published = Published::new(status_rx, stats, metrics, Arc::new(move || verdict.judged()))
        .with_peers(peers);
    let (admin_rx, admin_task) = spawn_admin(admin_listener, access, published.clone());
    let scrape: Arc<dyn metrics::Scrape> = Arc::new(published);
    let metrics_task = tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, scrape).await {
            error!("metrics endpoint stopped: {e:#}");
        }
    });
    let inputs = Inputs { reports, admin: admin_rx, changes, signals };
    let ended =
        event_loop(&mut core, &mut effects, sampler, inputs, &heartbeat, &monitor, path).await;
    // The sampler (dropped with the loop) and the endpoints hold the statistics
    // maps, and the monitor: close them before detaching; the monitor withdraws
    // as it goes.
    for task in [admin_task, metrics_task, clock] {
        task.abort();
        let _ = task.await;
    }
    drop(monitor);
    ended?;
    shutdown(core.config(), loaded.attachment, &options)
}

/// Serves the admin socket. `status` is answered from what is published; the
/// other requests reach the loop through the returned channel.
fn spawn_admin(
    listener: tokio::net::UnixListener,
    access: Access,
    published: Published<BpfStats>,
) -> (AdminRx, JoinHandle<()>) {
    let (admin_tx, admin_rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(16);
    let gone = || Response::Error("xdplb is shutting down".into());
    let serve = admin::serve(listener, access, move |request| {
        let (tx, published) = (admin_tx.clone(), published.clone());
        async move {
            if request == Request::Status {
                // Reads the data path's counters: off the async workers.
                return tokio::task::spawn_blocking(move || match published.status_text() {
                    (text, true) => Response::Ok(text),
                    (text, false) => Response::Failing(text),
                })
                .await
                .unwrap_or_else(|e| Response::Error(format!("status failed: {e}")));
            }
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send((request, reply_tx)).await.is_err() {
                return gone();
            }
            reply_rx.await.unwrap_or_else(|_| gone())
        }
    });
    let task = tokio::spawn(async move {
        if let Err(e) = serve.await {
            error!("admin socket stopped: {e:#}");
        }
    });
    (admin_rx, task)
}

/// What the loop listens to besides its tick.
struct Inputs {
    /// Probe results from the health runner.
    reports: mpsc::Receiver<Probed>,
    /// Operator commands from the admin socket.
    admin: AdminRx,
    /// What the watcher saw change (neighbour tables, the interface).
    changes: mpsc::Receiver<Change>,
    signals: Signals,
}

async fn event_loop<M: Maps>(
    core: &mut Core<M>,
    effects: &mut Effects,
    mut sampler: Sampler,
    inputs: Inputs,
    heartbeat: &Heartbeat,
    monitor: &Monitor,
    path: &Path,
) -> Result<()> {
    let Inputs { mut reports, mut admin, mut changes, signals } = inputs;
    let Signals { mut hup, mut term, mut int } = signals.listen()?;
    let mut tick = tokio::time::interval(TICK);
    let mut sample = tokio::time::interval(SAMPLE);
    // A late sample is taken late, not twice: the rule reads times, not counts of samples.
    sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(HEARTBEAT);
    // A planned stop in progress: when the wait after withdrawing ends.
    let mut stop_at: Option<tokio::time::Instant> = None;
    info!("running; metrics on http://{}/metrics", core.config().metrics_listen);
    loop {
        let stopping = stop_at.is_some();
        let stop = async move {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(report) = reports.recv() => core.probed(Instant::now(), &report),
            Some((request, reply)) = admin.recv() => {
                let response = answer(core, path, request);
                // Published before the answer: a `status` right after sees the change.
                effects.carry_out(core);
                let _ = reply.send(response);
            }
            Some(change) = changes.recv() => match change {
                Change::Tables(tables) => core.neighbours(Instant::now(), tables),
                Change::Interface(Ok(interface)) => core.interface(Instant::now(), interface),
                Change::Interface(Err(e)) => warn!("re-reading the interface: {e}"),
            },
            _ = hup.recv() => { let _ = reload(core, path); }
            // A second signal while withdrawn stops at once.
            _ = term.recv() => {
                if stopping {
                    return Ok(());
                }
                stop_at = Some(planned_stop(core.config(), monitor));
            }
            _ = int.recv() => {
                if stopping {
                    return Ok(());
                }
                stop_at = Some(planned_stop(core.config(), monitor));
            }
            () = stop => {
                info!("stopping after the withdraw wait");
                return Ok(());
            }
            _ = beat.tick() => heartbeat.beat(Instant::now()),
            _ = tick.tick() => core.tick(Instant::now()),
            _ = sample.tick() => sampler.sample(core),
        }
        if matches!(stop_at, Some(at) if at <= tokio::time::Instant::now()) {
            return Ok(());
        }
        effects.carry_out(core);
    }
}

/// A planned stop (SIGTERM, SIGINT): withdraws from the redundancy engines and
/// fails `/healthz` now; keeps forwarding and following the backends for
/// `ha.withdraw_wait` while the routers converge. When to stop.
fn planned_stop(config: &Config, monitor: &Monitor) -> tokio::time::Instant {
    monitor.withdraw();
    let wait = config.ha.withdraw_wait;
    if !wait.is_zero() {
        info!(
            "planned stop: withdrawn; forwarding {wait:?} more while the routers converge \
             (a second signal stops at once)"
        );
    }
    tokio::time::Instant::now() + wait
}

/// What the loop answers an operator's command.
fn answer<M: Maps>(core: &mut Core<M>, path: &Path, request: Request) -> Response {
    let now = Instant::now();
    let answer = match request {
        Request::Drain { vip, backend } => core.set_drained(now, &vip, &backend, true),
        Request::Undrain { vip, backend } => core.set_drained(now, &vip, &backend, false),
        Request::Reload => reload(core, path),
        Request::Status => Err("status is answered by the admin socket, not the loop".into()),
    };
    answer.map_or_else(Response::Error, Response::Ok)
}

/// Re-reads the config file and hands it to the core, valid or not.
fn reload<M: Maps>(core: &mut Core<M>, path: &Path) -> Result<String, String> {
    let parsed = config::load(path);
    core.reload(Instant::now(), parsed)
}

/// Carries out the core's decisions.
struct Effects {
    watcher: Watcher,
    runner: HealthRunner,
    metrics: Arc<Metrics>,
    status: watch::Sender<Arc<Status>>,
    /// Peer sync's thread, with `sync:`.
    sync: Option<sync::Service>,
    /// The `sync:` section it was last given (a reload may change peers and key).
    sync_conf: Option<config::SyncConf>,
}

impl Effects {
    fn carry_out<M: Maps>(&mut self, core: &mut Core<M>) {
        if let Some(status) = core.poll_status() {
            self.status.send_replace(status);
        }
        if let Some(service) = &self.sync
            && core.config().sync != self.sync_conf
        {
            self.sync_conf.clone_from(&core.config().sync);
            if let Some(conf) = &self.sync_conf {
                service.configure(conf);
            }
        }
        while let Some(output) = core.poll_output() {
            match output {
                Output::Log { level, text } => log::log!(level, "{text}"),
                Output::Metric(update) => self.metrics.update(&update),
                Output::ProbeTargets(targets) => self.runner.set_targets(targets),
                Output::Solicit(hops) => self.watcher.solicit(hops),
                Output::Probe { target, timeout } => self.runner.probe_once(target, timeout),
                Output::SyncView(view) => {
                    if let Some(service) = &self.sync {
                        service.view(view);
                    }
                }
                Output::Written { why, since, applied } => {
                    let took = since.elapsed();
                    self.metrics.map_write(took);
                    if !applied.is_empty() {
                        info!(
                            "maps written ({why}) in {took:?}: {} backend entries, \
                             {} rings switched ({} slots moved)",
                            applied.backends_written, applied.rings_switched, applied.slots_moved
                        );
                    }
                }
            }
        }
    }
}

fn shutdown(config: &Config, attachment: Attachment, options: &RunOptions) -> Result<()> {
    let _ = std::fs::remove_file(&config.admin_socket);
    if options.detach_on_exit {
        attachment.detach()?;
        info!("detached xdp_lb from {} and removed the pins", config.interface);
    } else {
        info!(
            "exiting; xdp_lb stays attached to {} with the last state \
             (pins in {}; `xdplb detach` removes them)",
            config.interface,
            config.pin_path.display()
        );
    }
    Ok(())
}
