//! Balancer redundancy: this balancer's health, judged continuously on a thread
//! of its own ([`monitor`]), and carried to the engines that move traffic
//! between balancers — a keepalived `track_file` for a VRRP pair
//! ([`track_file`]), host routes to the VIPs in a kernel routing table that BIRD
//! exports over BGP for ECMP ([`routes`]). A planned stop withdraws first, keeps
//! forwarding while the routers converge, then exits.
//!
//! The health itself is judged by `controller/balancer_health.rs`; here is only
//! what is told to whom ([`Announcement`]) and the telling ([`Announcer`]).

pub mod monitor;
pub mod routes;
pub mod track_file;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use log::Level;

pub use self::{
    monitor::{Judged, Monitor},
    routes::RouteTable,
    track_file::TrackFile,
};
use crate::{config::Config, controller::balancer_health::Health};

/// What this balancer tells the engines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// Send traffic for these VIP addresses here.
    Serving(BTreeSet<IpAddr>),
    /// Send nothing here.
    Withdrawn,
}

impl Announcement {
    /// Serving every VIP address of `config` while `health` is ok, else withdrawn.
    /// Every VIP, whatever its backends: see `balancer_health` for why a VIP
    /// without a usable backend is not withdrawn alone.
    #[must_use]
    pub fn of(health: &Health, config: &Config) -> Self {
        if health.ok() {
            Self::Serving(config.vips.iter().map(|v| v.address).collect())
        } else {
            Self::Withdrawn
        }
    }

    #[must_use]
    pub fn is_serving(&self) -> bool {
        matches!(self, Self::Serving(_))
    }
}

/// A redundancy engine xdplb tells whether to send traffic here.
pub trait Engine: Send {
    /// Its config key, for logs and metrics.
    fn name(&self) -> &'static str;
    /// Makes the engine say `announcement`. Idempotent: also repairs what
    /// someone else changed since.
    fn tell(&mut self, announcement: &Announcement) -> anyhow::Result<()>;
}

/// The engines the config names.
#[must_use]
pub fn engines(config: &Config) -> Vec<Box<dyn Engine>> {
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    if let Some(path) = &config.ha.track_file {
        engines.push(Box::new(TrackFile::new(path.clone())));
    }
    if let Some(table) = config.ha.route_table {
        engines.push(Box::new(RouteTable::kernel(table)));
    }
    engines
}

/// Tells the engines again this often even without a change, repairing what
/// someone else changed (a deleted route, an edited track file) and retrying
/// what failed.
pub const REPAIR: Duration = Duration::from_secs(1);

/// Tells every engine the announcement when it changes, and again every
/// [`REPAIR`]; reports failures once per episode.
pub struct Announcer {
    engines: Vec<Box<dyn Engine>>,
    told: Option<(Announcement, Instant)>,
    /// Engines whose last telling failed, with the error logged.
    failing: BTreeMap<&'static str, String>,
}

/// What one [`Announcer::announce`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Told {
    /// Every engine now says what it was told.
    pub all_ok: bool,
    /// Engines that failed this time.
    pub errors: Vec<&'static str>,
    /// Log lines: changes, failures and recoveries.
    pub logs: Vec<(Level, String)>,
}

impl Announcer {
    #[must_use]
    pub fn new(engines: Vec<Box<dyn Engine>>) -> Self {
        Self { engines, told: None, failing: BTreeMap::new() }
    }

    /// What the engines were last told.
    #[must_use]
    pub fn told(&self) -> Option<&Announcement> {
        self.told.as_ref().map(|(a, _)| a)
    }

    /// Tells the engines `announcement` if it differs from what they were told, if
    /// the last telling failed, or if [`REPAIR`] has passed since.
    pub fn announce(&mut self, now: Instant, announcement: &Announcement) -> Told {
        let mut done = Told { all_ok: self.failing.is_empty(), ..Told::default() };
        let due = match &self.told {
            None => true,
            Some((told, at)) => {
                told != announcement
                    || !self.failing.is_empty()
                    || now.saturating_duration_since(*at) >= REPAIR
            }
        };
        if !due {
            return done;
        }
        let changed = self.told().is_some_and(|t| t != announcement);
        if changed && !self.engines.is_empty() {
            done.logs.push((
                if announcement.is_serving() { Level::Info } else { Level::Warn },
                match announcement {
                    Announcement::Serving(vips) => format!(
                        "announcing: the redundancy engines send traffic for {} VIP addresses here",
                        vips.len()
                    ),
                    Announcement::Withdrawn => {
                        "withdrawn: the redundancy engines send no traffic here".to_owned()
                    }
                },
            ));
        }
        for engine in &mut self.engines {
            let name = engine.name();
            match engine.tell(announcement) {
                Ok(()) => {
                    if self.failing.remove(name).is_some() {
                        done.logs.push((Level::Info, format!("ha.{name}: working again")));
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    done.errors.push(name);
                    if self.failing.get(name) != Some(&text) {
                        done.logs.push((Level::Error, format!("ha.{name}: {text}")));
                    }
                    self.failing.insert(name, text);
                }
            }
        }
        done.all_ok = self.failing.is_empty();
        self.told = Some((announcement.clone(), now));
        done
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records what it is told; fails while `fail` is set.
    #[derive(Clone, Default)]
    struct Fake {
        told: Arc<Mutex<Vec<Announcement>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl Engine for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn tell(&mut self, announcement: &Announcement) -> anyhow::Result<()> {
            self.told
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(announcement.clone());
            if *self.fail.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
                anyhow::bail!("no such file");
            }
            Ok(())
        }
    }

    fn serving() -> Announcement {
        Announcement::Serving(["192.0.2.1".parse().expect("ip")].into())
    }

    #[test]
    fn an_announcement_is_told_on_change_and_again_every_repair_period() {
        let fake = Fake::default();
        let mut a = Announcer::new(vec![Box::new(fake.clone())]);
        let t0 = Instant::now();
        assert!(a.announce(t0, &Announcement::Withdrawn).all_ok);
        a.announce(t0 + Duration::from_millis(50), &Announcement::Withdrawn);
        let told = a.announce(t0 + Duration::from_millis(100), &serving());
        assert_eq!(told.logs.len(), 1, "{told:?}");
        assert!(told.logs[0].1.starts_with("announcing"), "{told:?}");
        a.announce(t0 + Duration::from_millis(150), &serving());
        a.announce(t0 + Duration::from_millis(1100), &serving());
        let seen = fake.told.lock().expect("lock").clone();
        assert_eq!(seen, [Announcement::Withdrawn, serving(), serving()], "first, change, repair");
    }

    #[test]
    fn a_failing_engine_is_logged_once_and_retried_every_step_until_it_works() {
        let fake = Fake::default();
        *fake.fail.lock().expect("lock") = true;
        let mut a = Announcer::new(vec![Box::new(fake.clone())]);
        let t0 = Instant::now();
        let first = a.announce(t0, &serving());
        assert!(!first.all_ok);
        assert_eq!(first.errors, ["fake"]);
        assert_eq!(first.logs, [(Level::Error, "ha.fake: no such file".to_owned())]);
        let again = a.announce(t0 + Duration::from_millis(50), &serving());
        assert_eq!((again.errors.len(), again.logs.len()), (1, 0), "retried, not logged again");
        *fake.fail.lock().expect("lock") = false;
        let fixed = a.announce(t0 + Duration::from_millis(100), &serving());
        assert!(fixed.all_ok);
        assert_eq!(fixed.logs, [(Level::Info, "ha.fake: working again".to_owned())]);
        assert_eq!(fake.told.lock().expect("lock").len(), 3);
    }

    #[test]
    fn serving_lists_every_vip_address_once_and_only_while_healthy() {
        let config = crate::config::parse(
            "interface: eth0\nvips:\n  - { name: a, address: 192.0.2.1, port: 80, backends: [{ name: x, address: 10.0.0.1 }] }\n  - { name: b, address: 192.0.2.1, port: 53, protocol: udp, backends: [{ name: x, address: 10.0.0.1 }] }\n  - { name: c, address: \"2001:db8::1\", port: 80, backends: [{ name: y, address: \"fd00::1\" }] }\n",
            "t.yaml",
        )
        .expect("config");
        let ok = Health::default();
        let want: BTreeSet<IpAddr> =
            ["192.0.2.1".parse().expect("ip"), "2001:db8::1".parse().expect("ip")].into();
        assert_eq!(Announcement::of(&ok, &config), Announcement::Serving(want));
        let failing =
            Health { failing: vec!["interface eth0 is down".into()], ..Health::default() };
        assert_eq!(Announcement::of(&failing, &config), Announcement::Withdrawn);
    }
}
