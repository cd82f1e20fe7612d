//! Metrics of peer sync (`crate::sync`): exceptions held, entries sent and
//! received per peer, messages refused by reason, and how old each peer's newest
//! complete state is. Names are a contract (`xdplb_sync_*`, issue #15).

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::registry::{counter_vec, gauge_vec};

/// Why a received datagram changed nothing (the `reason` label).
pub const REJECT_REASONS: &[&str] =
    &["malformed", "oversized", "version", "unknown_peer", "bad_mac", "replay", "expired"];

/// Why a peer's entry was not installed (the `reason` label).
pub const REFUSE_REASONS: &[&str] = &["cap", "unknown_backend", "present"];

pub struct SyncMetrics {
    exceptions: IntGaugeVec,
    entries_sent: IntCounterVec,
    entries_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    send_dropped: IntCounterVec,
    rejected: IntCounterVec,
    refused: IntCounterVec,
    lag: GaugeVec,
    scan: Histogram,
}

impl SyncMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        let rejected = counter_vec(
            r,
            "xdplb_sync_messages_rejected_total",
            "Sync datagrams that changed nothing, by reason (forged, replayed, malformed, from an unknown peer...).",
            &["reason"],
        );
        for reason in REJECT_REASONS {
            rejected.with_label_values(&[reason]);
        }
        let refused = counter_vec(
            r,
            "xdplb_sync_entries_refused_total",
            "Peers' exceptions not installed: over the per-peer cap, naming a backend this balancer does not have, or a flow the local table already holds.",
            &["reason"],
        );
        for reason in REFUSE_REASONS {
            refused.with_label_values(&[reason]);
        }
        let lag = GaugeVec::new(
            Opts::new(
                "xdplb_sync_lag_seconds",
                "Age of the newest complete state received from a peer (absent until one arrived).",
            ),
            &["peer"],
        )
        .expect("valid gauge");
        r.register(Box::new(lag.clone())).expect("unique gauge");
        let scan = Histogram::with_opts(
            HistogramOpts::new(
                "xdplb_sync_scan_seconds",
                "Time to read the connection table and find the exceptions after a ring change (off the control loop).",
            )
            .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid histogram");
        r.register(Box::new(scan.clone())).expect("unique histogram");
        Self {
            exceptions: gauge_vec(
                r,
                "xdplb_sync_exceptions",
                "Connection-table entries whose backend the ring does not give their flow: this balancer's own (origin=local), and peers' installed here (origin=peer).",
                &["origin"],
            ),
            entries_sent: counter_vec(
                r,
                "xdplb_sync_entries_sent_total",
                "Exception entries sent to a peer (snapshots are re-sent periodically).",
                &["peer"],
            ),
            entries_received: counter_vec(
                r,
                "xdplb_sync_entries_received_total",
                "Exception entries received from a peer in authenticated datagrams.",
                &["peer"],
            ),
            bytes_sent: counter_vec(
                r,
                "xdplb_sync_bytes_sent_total",
                "UDP payload bytes sent to a peer.",
                &["peer"],
            ),
            send_dropped: counter_vec(
                r,
                "xdplb_sync_send_dropped_total",
                "Datagrams to a peer not sent: the socket would block or failed (the next snapshot carries the state).",
                &["peer"],
            ),
            rejected,
            refused,
            lag,
            scan,
        }
    }

    /// This balancer's own exceptions (`local`) and peers' installed here (`peer`).
    pub fn exceptions(&self, local: usize, peer: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.exceptions.with_label_values(&["local"]).set(n(local));
        self.exceptions.with_label_values(&["peer"]).set(n(peer));
    }

    pub fn sent(&self, peer: &str, entries: usize, bytes: usize) {
        self.entries_sent.with_label_values(&[peer]).inc_by(entries as u64);
        self.bytes_sent.with_label_values(&[peer]).inc_by(bytes as u64);
    }

    pub fn send_dropped(&self, peer: &str) {
        self.send_dropped.with_label_values(&[peer]).inc();
    }

    pub fn received(&self, peer: &str, entries: usize) {
        self.entries_received.with_label_values(&[peer]).inc_by(entries as u64);
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn refused(&self, reason: &str, n: usize) {
        if n > 0 {
            self.refused.with_label_values(&[reason]).inc_by(n as u64);
        }
    }

    /// Seconds since `peer`'s newest complete state; `None` removes the series.
    pub fn lag(&self, peer: &str, seconds: Option<f64>) {
        match seconds {
            Some(s) => self.lag.with_label_values(&[peer]).set(s),
            None => {
                let _ = self.lag.remove_label_values(&[peer]);
            }
        }
    }

    pub fn scanned(&self, seconds: f64) {
        self.scan.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use crate::{metrics::Metrics, testing::value};

    #[test]
    fn the_contract_names_carry_what_sync_reports() {
        let m = Metrics::new();
        let text = m.render();
        assert_eq!(
            value(&text, "xdplb_sync_messages_rejected_total", &[("reason", "bad_mac")]),
            Some(0.0),
            "every reason is there from the start"
        );
        m.sync.exceptions(3, 2);
        m.sync.sent("10.0.0.2:4790", 3, 200);
        m.sync.received("10.0.0.2:4790", 2);
        m.sync.rejected("replay");
        m.sync.lag("10.0.0.2:4790", Some(0.5));
        let text = m.render();
        assert_eq!(value(&text, "xdplb_sync_exceptions", &[("origin", "local")]), Some(3.0));
        assert_eq!(value(&text, "xdplb_sync_exceptions", &[("origin", "peer")]), Some(2.0));
        let peer = [("peer", "10.0.0.2:4790")];
        assert_eq!(value(&text, "xdplb_sync_entries_sent_total", &peer), Some(3.0));
        assert_eq!(value(&text, "xdplb_sync_entries_received_total", &peer), Some(2.0));
        assert_eq!(value(&text, "xdplb_sync_lag_seconds", &peer), Some(0.5));
        assert_eq!(
            value(&text, "xdplb_sync_messages_rejected_total", &[("reason", "replay")]),
            Some(1.0)
        );
        m.sync.lag("10.0.0.2:4790", None);
        assert_eq!(value(&m.render(), "xdplb_sync_lag_seconds", &peer), None);
    }
}
