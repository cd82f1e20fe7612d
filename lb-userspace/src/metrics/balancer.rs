//! Metrics of the balancer in a pair, beside those of its backends (its own health
//! is `xdplb_healthy` in the registry): whether it tells the redundancy engines to
//! send traffic here, and each VIP's ring as balancers compare it.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::registry::{counter_vec, gauge_vec};

pub struct BalancerMetrics {
    announced: IntGauge,
    engine_errors: IntCounterVec,
    ring_info: IntGaugeVec,
    ring_backends: IntGaugeVec,
    /// The digest each VIP's `ring_info` series carries now.
    digests: Mutex<BTreeMap<String, String>>,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge");
    registry.register(Box::new(metric.clone())).expect("unique gauge");
    metric
}

impl BalancerMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            announced: gauge(
                r,
                "xdplb_balancer_announced",
                "1 while the redundancy engines (track file, VIP routes) are told to send traffic here.",
            ),
            engine_errors: counter_vec(
                r,
                "xdplb_balancer_engine_errors_total",
                "Failures to tell a redundancy engine (track_file, route_table) the announcement.",
                &["engine"],
            ),
            ring_info: gauge_vec(
                r,
                "xdplb_vip_ring_info",
                "1 for the digest of the ring a VIP uses; balancers with the same config and health have the same.",
                &["vip", "digest"],
            ),
            ring_backends: gauge_vec(
                r,
                "xdplb_vip_ring_backends",
                "Backends with slots in the ring a VIP uses (0: its packets are dropped).",
                &["vip"],
            ),
            digests: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the engines were told (successfully) to send traffic here.
    pub fn announced(&self, announced: bool) {
        self.announced.set(i64::from(announced));
    }

    pub fn engine_error(&self, engine: &str) {
        self.engine_errors.with_label_values(&[engine]).inc();
    }

    /// The rings of every VIP of the running config: (VIP, digest, backends);
    /// series of VIPs not listed go.
    pub fn rings(&self, rings: &[(String, String, usize)]) {
        let mut digests = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
        let listed: BTreeMap<&str, (&str, usize)> =
            rings.iter().map(|(v, d, n)| (v.as_str(), (d.as_str(), *n))).collect();
        digests.retain(|vip, digest| {
            let keep = listed.get(vip.as_str()).is_some_and(|(d, _)| d == digest);
            if !keep {
                let _ = self.ring_info.remove_label_values(&[vip, digest]);
                if !listed.contains_key(vip.as_str()) {
                    let _ = self.ring_backends.remove_label_values(&[vip]);
                }
            }
            keep
        });
        for (vip, (digest, members)) in listed {
            self.ring_info.with_label_values(&[vip, digest]).set(1);
            self.ring_backends
                .with_label_values(&[vip])
                .set(i64::try_from(members).unwrap_or(i64::MAX));
            digests.insert(vip.to_owned(), digest.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{metrics::Metrics, testing::value};

    #[test]
    fn one_ring_series_per_vip_follows_its_digest() {
        let m = Metrics::new();
        let ring = |v: &str, d: &str, n| (v.to_owned(), d.to_owned(), n);
        m.balancer.rings(&[ring("web", "aaaa", 3), ring("dns", "bbbb", 0)]);
        m.balancer.rings(&[ring("web", "cccc", 2)]);
        let text = m.render();
        assert_eq!(
            value(&text, "xdplb_vip_ring_info", &[("vip", "web"), ("digest", "cccc")]),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "xdplb_vip_ring_info", &[("vip", "web"), ("digest", "aaaa")]),
            None
        );
        assert_eq!(
            value(&text, "xdplb_vip_ring_info", &[("vip", "dns"), ("digest", "bbbb")]),
            None
        );
        assert_eq!(value(&text, "xdplb_vip_ring_backends", &[("vip", "web")]), Some(2.0));
        assert_eq!(value(&text, "xdplb_vip_ring_backends", &[("vip", "dns")]), None);
    }
}
