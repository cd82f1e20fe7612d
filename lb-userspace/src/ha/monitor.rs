//! The health monitor: a thread of its own that judges this balancer's health
//! every [`PERIOD`] (`balancer_health::judge` over the status the core
//! published, the control loop's heartbeat and the kernel's view of our XDP
//! attachment), keeps the verdict for `/healthz` and `xdplb status`, and tells
//! the redundancy engines. It runs outside the control loop because a stalled
//! loop cannot report its own stall, and must still be withdrawn.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::{info, log, warn};
use tokio::sync::watch;

use super::{Announcement, Announcer, Engine};
use crate::{
    controller::{
        balancer_health::{Facts, Health, judge},
        liveness::Heartbeat,
        status::Status,
    },
    metrics::Metrics,
};

/// How often the monitor judges.
pub const PERIOD: Duration = Duration::from_millis(50);

/// A verdict older than this means the monitor itself stalled.
pub const STALE: Duration = Duration::from_secs(1);

/// Whether our program is still the one attached (`AttachCheck::attached`).
pub type Attached = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The monitor's latest verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub at: Instant,
    /// The kernel's view of our attachment, as checked for it.
    pub attached: Result<(), String>,
    pub health: Health,
}

impl Judged {
    /// The verdict as `/healthz` gives it at `now`: `Ok(body)` or `Err(body)`; a
    /// stale verdict fails.
    pub fn healthz(&self, now: Instant) -> Result<String, String> {
        let age = now.saturating_duration_since(self.at);
        if age > STALE {
            return Err(format!(
                "health monitor stalled: last verdict {:.1}s ago\n",
                age.as_secs_f64()
            ));
        }
        if self.health.ok() { Ok(self.health.body()) } else { Err(self.health.body()) }
    }
}

/// What the monitor reads and whom it tells.
pub struct Inputs {
    pub status: watch::Receiver<Arc<Status>>,
    pub heartbeat: Arc<Heartbeat>,
    pub attached: Attached,
    pub metrics: Arc<Metrics>,
    pub engines: Vec<Box<dyn Engine>>,
}

struct State {
    status: watch::Receiver<Arc<Status>>,
    heartbeat: Arc<Heartbeat>,
    attached: Attached,
    metrics: Arc<Metrics>,
    announcer: Announcer,
    stopping: bool,
    healthy: Option<bool>,
}

struct Shared {
    state: Mutex<State>,
    judged: Mutex<Judged>,
    quit: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one step leaves nothing half-done that the next would misread.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Monitor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Judges once (so there is a verdict, and the engines hear from this
    /// balancer, before anything is served), then keeps judging on its thread.
    pub fn spawn(inputs: Inputs) -> std::io::Result<Self> {
        let now = Instant::now();
        let state = State {
            status: inputs.status,
            heartbeat: inputs.heartbeat,
            attached: inputs.attached,
            metrics: inputs.metrics,
            announcer: Announcer::new(inputs.engines),
            stopping: false,
            healthy: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            judged: Mutex::new(Judged { at: now, attached: Ok(()), health: Health::default() }),
            quit: AtomicBool::new(false),
        });
        step(&shared, now);
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("xdplb-health".into()).spawn(move || {
            while !worker.quit.load(Ordering::Acquire) {
                std::thread::sleep(PERIOD);
                step(&worker, Instant::now());
            }
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// The latest verdict.
    #[must_use]
    pub fn judged(&self) -> Judged {
        lock(&self.shared.judged).clone()
    }

    /// A planned stop: fails the health ("stopping") and withdraws from every
    /// engine now, before returning. Nothing brings it back.
    pub fn withdraw(&self) {
        lock(&self.shared.state).stopping = true;
        step(&self.shared, Instant::now());
    }
}

impl Drop for Monitor {
    /// Without a controller nothing follows the backends: withdraw, then stop.
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.withdraw();
    }
}

/// Judges, tells the engines, publishes the verdict.
fn step(shared: &Shared, now: Instant) {
    let mut state = lock(&shared.state);
    let status = Arc::clone(&state.status.borrow());
    let attached = (state.attached)();
    let health = judge(&Facts {
        attached: &attached,
        loop_silent_for: state.heartbeat.silent_for(now),
        status: &status,
        stopping: state.stopping,
    });
    let ok = health.ok();
    if state.healthy != Some(ok) {
        if ok {
            info!("balancer healthy");
        } else {
            warn!("balancer unhealthy: {}", health.failing.join("; "));
        }
        state.healthy = Some(ok);
    }
    let announcement = Announcement::of(&health, &status.config);
    let told = state.announcer.announce(now, &announcement);
    for (level, text) in &told.logs {
        log!(*level, "{text}");
    }
    state.metrics.health(attached.is_ok(), ok);
    let metrics = &state.metrics.balancer;
    metrics.announced(announcement.is_serving() && told.all_ok);
    for engine in &told.errors {
        metrics.engine_error(engine);
    }
    drop(state);
    *lock(&shared.judged) = Judged { at: now, attached, health };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::{controller::status::Starting, testing::value};

    fn status(starting: bool) -> Status {
        let config = crate::config::parse(
            "interface: eth0\nvips:\n  - { name: web, address: 192.0.2.1, port: 80, backends: [{ name: a, address: 10.0.0.1 }] }\n",
            "t.yaml",
        )
        .expect("config");
        Status {
            config,
            vips: vec![],
            last_write: Ok(()),
            starting: starting.then_some(Starting { undecided: 1, unresolved: 0, checks: 1 }),
        }
    }

    /// Counts what it is told: (serving, withdrawn).
    #[derive(Clone, Default)]
    struct Counting(Arc<(AtomicUsize, AtomicUsize)>);

    impl Engine for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn tell(&mut self, a: &Announcement) -> anyhow::Result<()> {
            let counter = if a.is_serving() { &self.0.0 } else { &self.0.1 };
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn the_monitor_announces_once_started_and_withdraws_on_a_planned_stop_and_at_exit() {
        let (tx, rx) = watch::channel(Arc::new(status(true)));
        let heartbeat = Arc::new(Heartbeat::new(Instant::now()));
        let engine = Counting::default();
        let metrics = Arc::new(Metrics::new());
        let monitor = Monitor::spawn(Inputs {
            status: rx,
            heartbeat: Arc::clone(&heartbeat),
            attached: Arc::new(|| Ok(())),
            metrics: Arc::clone(&metrics),
            engines: vec![Box::new(engine.clone())],
        })
        .expect("thread");
        let judged = monitor.judged();
        assert!(!judged.health.ok(), "starting");
        assert_eq!(engine.0.1.load(Ordering::SeqCst), 1, "withdrawn at once");
        let body = judged.healthz(Instant::now()).expect_err("503 while starting");
        assert!(body.starts_with("starting:"), "{body}");

        tx.send_replace(Arc::new(status(false)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !monitor.judged().health.ok() {
            heartbeat.beat(Instant::now());
            assert!(Instant::now() < deadline, "never healthy");
            std::thread::sleep(PERIOD);
        }
        assert!(engine.0.0.load(Ordering::SeqCst) >= 1, "announced");
        assert_eq!(monitor.judged().healthz(Instant::now()), Ok("ok\n".to_owned()));
        assert_eq!(value(&metrics.render(), "xdplb_balancer_announced", &[]), Some(1.0));

        monitor.withdraw();
        assert_eq!(engine.0.1.load(Ordering::SeqCst), 2, "withdrawn at once");
        assert_eq!(monitor.judged().health.failing, ["stopping: withdrawn for a planned stop"]);
        assert_eq!(value(&metrics.render(), "xdplb_healthy", &[]), Some(0.0));
    }

    #[test]
    fn a_monitor_that_goes_away_withdraws() {
        let (_tx, rx) = watch::channel(Arc::new(status(false)));
        let engine = Counting::default();
        let monitor = Monitor::spawn(Inputs {
            status: rx,
            heartbeat: Arc::new(Heartbeat::new(Instant::now())),
            attached: Arc::new(|| Ok(())),
            metrics: Arc::new(Metrics::new()),
            engines: vec![Box::new(engine.clone())],
        })
        .expect("thread");
        assert!(monitor.judged().health.ok());
        assert_eq!(engine.0.1.load(Ordering::SeqCst), 0);
        drop(monitor);
        assert_eq!(engine.0.1.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stale_verdict_fails_healthz() {
        let at = Instant::now();
        let judged = Judged { at, attached: Ok(()), health: Health::default() };
        assert_eq!(judged.healthz(at + Duration::from_millis(900)), Ok("ok\n".to_owned()));
        assert_eq!(
            judged.healthz(at + Duration::from_millis(1500)),
            Err("health monitor stalled: last verdict 1.5s ago\n".to_owned())
        );
    }
}
