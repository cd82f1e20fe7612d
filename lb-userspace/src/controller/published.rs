//! What the endpoints read: the status the core last published, the data path's
//! statistics and the health monitor's latest verdict — never the core, so a
//! scrape or a status request never waits for the loop, and the loop never
//! waits for them.

use std::{sync::Arc, time::Instant};

use lb_common::Traffic;
use tokio::sync::watch;

use super::status::Status;
use crate::{
    ha::Judged,
    metrics::{Metrics, Scrape},
    stats::Stats,
};

/// The health monitor's latest verdict (`ha::Monitor::judged`).
pub type Verdict = Arc<dyn Fn() -> Judged + Send + Sync>;

/// The read side of a running controller, shared by the admin socket (`status`)
/// and the metrics endpoint (`/metrics`, `/healthz`).
pub struct Published<S> {
    status: watch::Receiver<Arc<Status>>,
    counters: Arc<S>,
    metrics: Arc<Metrics>,
    verdict: Verdict,
    /// Peer sync's state, with `sync:` (the `peers:` section of the status).
    peers: Option<Arc<crate::sync::service::Shared>>,
}

impl<S> Clone for Published<S> {
    fn clone(&self) -> Self {
        Self {
            status: self.status.clone(),
            counters: Arc::clone(&self.counters),
            metrics: Arc::clone(&self.metrics),
            verdict: Arc::clone(&self.verdict),
            peers: self.peers.clone(),
        }
    }
}

impl<S: Stats> Published<S> {
    #[must_use]
    pub fn new(
        status: watch::Receiver<Arc<Status>>,
        counters: Arc<S>,
        metrics: Arc<Metrics>,
        verdict: Verdict,
    ) -> Self {
        Self { status, counters, metrics, verdict, peers: None }
    }

    /// Shows peer sync's peers in the status.
    #[must_use]
    pub fn with_peers(self, peers: Option<Arc<crate::sync::service::Shared>>) -> Self {
        Self { peers, ..self }
    }

    /// The status as published last.
    fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status.borrow())
    }

    /// The `xdplb status` text (reads the data path's counters), and whether this
    /// balancer is healthy.
    #[must_use]
    pub fn status_text(&self) -> (String, bool) {
        let judged = (self.verdict)();
        let verdict = judged.healthz(Instant::now());
        let mut health = judged.health;
        if let Err(stale) = &verdict
            && health.ok()
        {
            health.failing.push(stale.trim_end().to_owned());
        }
        let mut text = self.status().render(&judged.attached, &health, &*self.counters);
        if let Some(peers) = &self.peers {
            text.push_str(&peers.render(Instant::now()));
        }
        (text, verdict.is_ok())
    }

    /// The data path's counters into the metrics, for the VIPs and backends of
    /// the published status; then the metrics text.
    fn scrape(&self) -> String {
        let status = self.status();
        if let Ok(counters) = self.counters.counters() {
            let (names, indices): (Vec<String>, Vec<u32>) =
                status.vips().filter_map(|(v, vs)| Some((v.name.clone(), vs.index?))).unzip();
            let traffic = self.counters.vips_traffic(&indices).unwrap_or_default();
            let vips: Vec<(String, Traffic)> = names.into_iter().zip(traffic).collect();
            let backends: Vec<(String, String, Traffic)> = status
                .backends()
                .filter_map(|(v, b, bs)| {
                    let traffic = self.counters.backend_traffic(bs.index?).ok()?;
                    Some((v.name.clone(), b.name.clone(), traffic))
                })
                .collect();
            self.metrics.dataplane(&counters, &vips, &backends);
        }
        if let Some(table) = self.counters.conn_table() {
            self.metrics.conn_table(&table);
        }
        let judged = (self.verdict)();
        let healthy = judged.healthz(Instant::now()).is_ok();
        self.metrics.health(judged.attached.is_ok(), healthy);
        let rings: Vec<(String, String, usize)> = status
            .vips()
            .filter_map(|(v, vs)| Some((v.name.clone(), vs.ring?.hex(), vs.ring?.members)))
            .collect();
        self.metrics.balancer.rings(&rings);
        self.metrics.render()
    }
}

impl<S: Stats + Send + Sync + 'static> Scrape for Published<S> {
    fn metrics(&self) -> String {
        self.scrape()
    }

    fn health(&self) -> Result<String, String> {
        (self.verdict)().healthz(Instant::now())
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
            balancer_health::Health,
            planner::Observed,
            status::{BackendStatus, RingStatus, VipStatus},
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
        fn conn_table(&self) -> Option<crate::conn_table::Use> {
            Some(crate::conn_table::Use {
                size: crate::conn_table::Size::new(crate::conn_table::Configured::of(8000), 3),
                v4: 70,
                v6: 7,
                counted: Instant::now(),
                error: None,
            })
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
                ring: Some(RingStatus { members: 2, digest: 0xabc }),
            }],
            last_write: Ok(()),
            starting: None,
        }
    }

    fn judged(at: Instant, attached: Result<(), String>) -> Judged {
        let failing = attached.clone().err().into_iter().collect();
        Judged { at, attached, health: Health { failing, warnings: vec![] } }
    }

    fn published(first: Status, verdict: Judged) -> (Published<Sent>, watch::Sender<Arc<Status>>) {
        let (tx, rx) = watch::channel(Arc::new(first));
        let p = Published::new(
            rx,
            Arc::new(Sent),
            Arc::new(Metrics::new()),
            Arc::new(move || verdict.clone()),
        );
        (p, tx)
    }

    #[test]
    fn a_scrape_counts_the_traffic_of_the_backends_the_status_lists() {
        let (p, tx) =
            published(status(&[("waf1", 3), ("waf2", 7)]), judged(Instant::now(), Ok(())));
        let text = p.metrics();
        let packets = |text: &str, b| {
            value(text, "xdplb_backend_packets_total", &[("vip", "web"), ("backend", b)])
        };
        assert_eq!((packets(&text, "waf1"), packets(&text, "waf2")), (Some(4.0), Some(8.0)));
        assert_eq!(value(&text, "xdplb_vip_packets_total", &[("vip", "web")]), Some(1.0));
        let ring = [("vip", "web"), ("digest", "0000000000000abc")];
        assert_eq!(value(&text, "xdplb_vip_ring_info", &ring), Some(1.0));

        // waf2 leaves the config: the new status goes out, then its series are forgotten;
        // later scrapes read the new status and never bring them back.
        tx.send_replace(Arc::new(status(&[("waf1", 3)])));
        p.metrics.update(&Update::ForgetBackend { vip: "web".into(), backend: "waf2".into() });
        let text = p.metrics();
        assert_eq!((packets(&text, "waf1"), packets(&text, "waf2")), (Some(4.0), None));
    }

    #[test]
    fn a_scrape_exports_the_connection_tables_last_count_and_size() {
        let (p, _) = published(status(&[("waf1", 1)]), judged(Instant::now(), Ok(())));
        let text = p.metrics();
        assert_eq!(value(&text, "xdplb_conntrack_entries", &[]), Some(77.0));
        assert_eq!(
            value(&text, "xdplb_conntrack_capacity", &[]),
            Some(8192.0 + 2001.0),
            "both tables (IPv4: whole sets; IPv6: a quarter of conn_table_size) as sized"
        );
        // Each family's table on its own: a full IPv4 table shows though the totals have room.
        let family = |name, f| value(&text, name, &[("family", f)]);
        assert_eq!(family("xdplb_conntrack_family_entries", "ipv4"), Some(70.0));
        assert_eq!(family("xdplb_conntrack_family_entries", "ipv6"), Some(7.0));
        assert_eq!(family("xdplb_conntrack_family_capacity", "ipv4"), Some(8192.0));
        assert_eq!(family("xdplb_conntrack_family_capacity", "ipv6"), Some(2001.0));
    }

    #[test]
    fn a_scrape_exports_what_healthz_would_answer() {
        let (p, _) = published(status(&[("waf1", 1)]), judged(Instant::now(), Ok(())));
        let text = p.metrics();
        assert_eq!(value(&text, "xdplb_healthy", &[]), Some(1.0));
        assert_eq!(value(&text, "xdplb_program_attached", &[]), Some(1.0));
        let (p, _) = published(
            status(&[("waf1", 1)]),
            judged(Instant::now(), Err("XDP link pin missing".into())),
        );
        let text = p.metrics();
        assert_eq!(value(&text, "xdplb_healthy", &[]), Some(0.0));
        assert_eq!(value(&text, "xdplb_program_attached", &[]), Some(0.0));
    }

    #[test]
    fn status_text_is_rendered_from_the_published_status_and_says_whether_it_fails() {
        let (p, tx) = published(
            status(&[("waf1", 3)]),
            judged(Instant::now(), Err("XDP link pin missing".into())),
        );
        let (text, healthy) = p.status_text();
        assert!(!healthy);
        assert!(text.contains("xdp: NOT attached: XDP link pin missing"), "{text}");
        assert!(text.contains("health: FAILING: XDP link pin missing"), "{text}");
        assert!(text.contains("waf1"));
        tx.send_replace(Arc::new(status(&[("waf9", 3)])));
        let (text, _) = p.status_text();
        assert!(text.contains("waf9") && !text.contains("waf1"), "{text}");
        let (p, _) = published(status(&[("waf1", 3)]), judged(Instant::now(), Ok(())));
        assert!(p.status_text().1);
    }

    #[test]
    fn health_is_the_monitors_fresh_verdict() {
        let (p, _) = published(status(&[("waf1", 1)]), judged(Instant::now(), Ok(())));
        assert_eq!(p.health(), Ok("ok\n".to_owned()));
        let gone = "interface eth0 is gone or was recreated";
        let (p, _) = published(status(&[("waf1", 1)]), judged(Instant::now(), Err(gone.into())));
        assert_eq!(p.health(), Err(format!("{gone}\n")));
        let old = Instant::now().checked_sub(Duration::from_secs(5)).expect("uptime");
        let (p, _) = published(status(&[("waf1", 1)]), judged(old, Ok(())));
        let stale = p.health().expect_err("a stalled monitor fails");
        assert!(stale.starts_with("health monitor stalled"), "{stale}");
        let (text, healthy) = p.status_text();
        assert!(!healthy && text.contains("health: FAILING: health monitor stalled"), "{text}");
    }
}
