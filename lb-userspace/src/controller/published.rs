//! What the endpoints read: the status the core last published, the data path's
//! statistics and the loop's heartbeat — never the core, so a scrape or a status
//! request never waits for the loop, and the loop never waits for them.

use std::{sync::Arc, time::Instant};

use lb_common::Traffic;
use tokio::sync::watch;

use super::{
    liveness::{Heartbeat, verdict},
    status::Status,
};
use crate::{
    metrics::{Metrics, Scrape},
    stats::Stats,
};

/// Whether our program is still the one attached (`AttachCheck::attached`).
pub type Attached = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The read side of a running controller, shared by the admin socket (`status`)
/// and the metrics endpoint (`/metrics`, `/healthz`).
pub struct Published<S> {
    status: watch::Receiver<Arc<Status>>,
    counters: Arc<S>,
    metrics: Arc<Metrics>,
    heartbeat: Arc<Heartbeat>,
    attached: Attached,
}

impl<S> Clone for Published<S> {
    fn clone(&self) -> Self {
        Self {
            status: self.status.clone(),
            counters: Arc::clone(&self.counters),
            metrics: Arc::clone(&self.metrics),
            heartbeat: Arc::clone(&self.heartbeat),
            attached: Arc::clone(&self.attached),
        }
    }
}

impl<S: Stats> Published<S> {
    #[must_use]
    pub fn new(
        status: watch::Receiver<Arc<Status>>,
        counters: Arc<S>,
        metrics: Arc<Metrics>,
        heartbeat: Arc<Heartbeat>,
        attached: Attached,
    ) -> Self {
        Self { status, counters, metrics, heartbeat, attached }
    }

    /// The status as published last.
    fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status.borrow())
    }

    /// The `xdplb status` text (reads the data path's counters).
    #[must_use]
    pub fn status_text(&self) -> String {
        self.status().render(&(self.attached)(), &*self.counters)
    }

    /// The data path's counters into the metrics, for the VIPs and backends of
    /// the published status; then the metrics text.
    fn scrape(&self) -> String {
        let status = self.status();
        if let Ok(counters) = self.counters.counters() {
            let vips: Vec<(String, Traffic)> = status
                .vips()
                .filter_map(|(v, vs)| {
                    Some((v.name.clone(), self.counters.vip_traffic(vs.index?).ok()?))
                })
                .collect();
            let backends: Vec<(String, String, Traffic)> = status
                .backends()
                .filter_map(|(v, b, bs)| {
                    let traffic = self.counters.backend_traffic(bs.index?).ok()?;
                    Some((v.name.clone(), b.name.clone(), traffic))
                })
                .collect();
            self.metrics.dataplane(&counters, &vips, &backends);
        }
        let attached = (self.attached)();
        let ok = attached.is_ok();
        let healthy = verdict(self.heartbeat.silent_for(Instant::now()), attached).is_ok();
        self.metrics.health(ok, healthy);
        self.metrics.render()
    }
}

impl<S: Stats + Send + Sync + 'static> Scrape for Published<S> {
    fn metrics(&self) -> String {
        self.scrape()
    }

    fn health(&self) -> Result<(), String> {
        verdict(self.heartbeat.silent_for(Instant::now()), (self.attached)())
    }
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, time::Duration};

    use anyhow::Result;
    use lb_common::CounterSet;

    use super::*;
    use crate::{
        controller::{
            planner::Observed,
            status::{BackendStatus, VipStatus},
        },
        metrics::Update,
        testing::value,
    };

    /// Every VIP and backend has sent `index + 1` packets.
    struct Sent;

    impl Stats for Sent {
        fn counters(&self) -> Result<CounterSet> {
            Ok(CounterSet::default())
        }
        fn vip_traffic(&self, index: u32) -> Result<Traffic> {
            Ok(Traffic { packets: u64::from(index) + 1, bytes: 0 })
        }
        fn backend_traffic(&self, index: u32) -> Result<Traffic> {
            self.vip_traffic(index)
        }
    }

    /// VIP `web` (statistics slot 0) with these backends and slots.
    fn status(backends: &[(&str, u32)]) -> Status {
        let mut yaml = String::from(
            "interface: eth0\nvips:\n  - name: web\n    address: 192.0.2.1\n    port: 80\n    backends:\n",
        );
        for (i, (name, _)) in backends.iter().enumerate() {
            let _ = writeln!(yaml, "      - {{ name: {name}, address: 10.0.0.{} }}", i + 1);
        }
        let config = crate::config::parse(&yaml, "t.yaml").unwrap();
        let backends = backends.iter().map(|(_, index)| BackendStatus {
            observed: Observed::default(),
            index: Some(*index),
            held: false,
        });
        Status {
            config,
            vips: vec![VipStatus {
                index: Some(0),
                tier: crate::controller::planner::Tier::default(),
                backends: backends.collect(),
            }],
            last_write: Ok(()),
        }
    }

    fn published(
        first: Status,
        attached: Result<(), String>,
    ) -> (Published<Sent>, watch::Sender<Arc<Status>>, Arc<Heartbeat>) {
        let (tx, rx) = watch::channel(Arc::new(first));
        let heartbeat = Arc::new(Heartbeat::new(Instant::now()));
        let attached: Attached = Arc::new(move || attached.clone());
        let p = Published::new(
            rx,
            Arc::new(Sent),
            Arc::new(Metrics::new()),
            Arc::clone(&heartbeat),
            attached,
        );
        (p, tx, heartbeat)
    }

    #[test]
    fn a_scrape_counts_the_traffic_of_the_backends_the_status_lists() {
        let (p, tx, _) = published(status(&[("waf1", 3), ("waf2", 7)]), Ok(()));
        let text = p.metrics();
        let packets = |text: &str, b| {
            value(text, "xdplb_backend_packets_total", &[("vip", "web"), ("backend", b)])
        };
        assert_eq!((packets(&text, "waf1"), packets(&text, "waf2")), (Some(4.0), Some(8.0)));
        assert_eq!(value(&text, "xdplb_vip_packets_total", &[("vip", "web")]), Some(1.0));

        // waf2 leaves the config: the new status goes out, then its series are forgotten;
        // later scrapes read the new status and never bring them back.
        tx.send_replace(Arc::new(status(&[("waf1", 3)])));
        p.metrics.update(&Update::ForgetBackend { vip: "web".into(), backend: "waf2".into() });
        let text = p.metrics();
        assert_eq!((packets(&text, "waf1"), packets(&text, "waf2")), (Some(4.0), None));
    }

    #[test]
    fn a_scrape_exports_what_healthz_would_answer() {
        let (p, _, heartbeat) = published(status(&[("waf1", 1)]), Ok(()));
        heartbeat.beat(Instant::now());
        let text = p.metrics();
        assert_eq!(value(&text, "xdplb_healthy", &[]), Some(1.0));
        assert_eq!(value(&text, "xdplb_program_attached", &[]), Some(1.0));
        let (p, _, _) = published(status(&[("waf1", 1)]), Err("XDP link pin missing".into()));
        let text = p.metrics();
        assert_eq!(value(&text, "xdplb_healthy", &[]), Some(0.0));
        assert_eq!(value(&text, "xdplb_program_attached", &[]), Some(0.0));
    }

    #[test]
    fn status_text_is_rendered_from_the_published_status() {
        let (p, tx, _) = published(status(&[("waf1", 3)]), Err("XDP link pin missing".into()));
        assert!(p.status_text().contains("xdp: NOT attached: XDP link pin missing"));
        assert!(p.status_text().contains("waf1"));
        tx.send_replace(Arc::new(status(&[("waf9", 3)])));
        let text = p.status_text();
        assert!(text.contains("waf9") && !text.contains("waf1"), "{text}");
    }

    #[test]
    fn health_needs_a_beating_loop_and_an_attached_program() {
        let (p, _, heartbeat) = published(status(&[("waf1", 1)]), Ok(()));
        heartbeat.beat(Instant::now());
        assert_eq!(p.health(), Ok(()));
        let (p, _, _) = published(
            status(&[("waf1", 1)]),
            Err("interface eth0 is gone or was recreated".into()),
        );
        assert_eq!(p.health(), Err("interface eth0 is gone or was recreated".into()));
        let stalled =
            Heartbeat::new(Instant::now().checked_sub(Duration::from_mins(1)).expect("uptime"));
        assert!(verdict(stalled.silent_for(Instant::now()), Ok(())).is_err());
    }
}
