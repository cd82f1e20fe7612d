//! The passive signal: when a backend that is up keeps receiving SYNs but
//! completes no handshake, it is *suspect*, and the controller probes it at once
//! (the core's `sampled`). This file is the rule alone, a pure function of the
//! data path's counters sampled over time.
//!
//! # The rule
//!
//! A backend is suspect when at least [`MIN_SYNS`] SYNs were forwarded to it since
//! the last sample that showed a completed handshake, and the oldest of them has
//! waited at least its *window*:
//!
//! - the window is how long this backend's handshakes take to complete when all is
//!   well, learned from the counters the way TCP learns its retransmission timeout
//!   (RFC 6298: smoothed wait + 4 × its mean deviation), and never less than
//!   [`MIN_WINDOW`];
//! - each suspicion that a probe refutes doubles the window, up to [`MAX_WINDOW`];
//!   a completed handshake brings it back.
//!
//! Why: a handshake completes one client round trip after its SYN, so a live
//! backend serving real clients completes some of any three SYNs within a few
//! round trips; a dead one (refusing, or silent) completes none. 30 ms is three
//! samples of the counters (so one late sample is no suspicion), well above a
//! round trip inside a data centre (< 1 ms), and short enough that a refused node
//! is confirmed down ~45 ms after it died. Clients far away (a round trip above
//! 30 ms) at low rates would make short windows misfire: the learned wait stretches
//! the window for them. Three SYNs, not one: a lone SYN may be a scanner, a client
//! that gave up, or a forged source. A false suspicion costs one probe, never a
//! down: only probes decide, so SYNs with forged sources (which never complete) can
//! cause probes but not take a healthy node out, and the doubling bounds those
//! probes to about one per [`MAX_WINDOW`] while nothing but forged SYNs arrive.
//!
//! # The probes a suspicion triggers
//!
//! The suspect backend is probed at once, then every `fast_interval` (10 ms, one
//! probe per sample of the counters), each probe bounded by `fast_timeout` (40 ms),
//! until `fall` consecutive failures take it down or a probe started after the
//! suspicion succeeds; a refusal decides at once (`refused_is_down`). 40 ms is more
//! than the slowest probe measured in the lab under 10 000 forged SYN/s (all under
//! 25 ms, 99% under 10 ms) and a hundred LAN round trips. So a silent node is down
//! about 60 ms after its suspicion (three probes 10 ms apart, each given 40 ms),
//! about 110 ms after it died. The price: a node that completes no handshake for
//! 30 ms and then answers nothing for 60 ms is taken out, and its established flows
//! move, where the regular checks alone need `fall` × `interval` (600 ms) of
//! silence. For nodes that pause that long in normal operation (a long garbage
//! collection), raise `fast_timeout` or `fast_interval`, or set `passive: false`.

use std::time::{Duration, Instant};

/// A backend's data-path counters (`lb_common::Handshakes`: SYNs forwarded,
/// handshakes completed, SYNs retransmitted), cumulative since the maps were
/// created or the slot was reused, summed over CPUs.
pub use lb_common::Handshakes;

/// SYNs without a completed handshake that make a backend suspect.
pub const MIN_SYNS: u64 = 3;
/// The shortest window.
pub const MIN_WINDOW: Duration = Duration::from_millis(30);
/// The learned wait never stretches the window beyond this: a client retransmits
/// its SYN after 1 s, and a window that long says nothing useful.
pub const MAX_LEARNED: Duration = Duration::from_secs(1);
/// The longest window, after refuted suspicions in a row.
pub const MAX_WINDOW: Duration = Duration::from_secs(10);

/// A suspicion, as raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suspect {
    /// SYNs forwarded since the last completed handshake.
    pub syns: u64,
    /// Of those, retransmitted SYNs (clients that got no answer).
    pub syn_retransmits: u64,
    /// How long the oldest of them has waited.
    pub waited: Duration,
    /// The window it exceeded.
    pub window: Duration,
}

/// The rule's state for one backend.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    last: Option<Handshakes>,
    /// SYNs (and retransmitted SYNs) since the last completed handshake, and when
    /// the first of them was seen.
    pending: u64,
    pending_retransmits: u64,
    pending_since: Option<Instant>,
    /// How long SYNs waited for a completion, smoothed, and its mean deviation.
    smoothed: Option<Duration>,
    deviation: Duration,
    /// Suspicions refuted in a row.
    refuted: u32,
    /// A suspicion is being probed: no other until it is decided.
    suspected: bool,
}

impl Watch {
    /// Takes the counters read at `now`; `Some` when the backend becomes suspect.
    pub fn observe(&mut self, now: Instant, counts: Handshakes) -> Option<Suspect> {
        let last = self.last.replace(counts)?;
        let (Some(syns), Some(completed), Some(retransmits)) = (
            counts.syns.checked_sub(last.syns),
            counts.completed.checked_sub(last.completed),
            counts.syn_retransmits.checked_sub(last.syn_retransmits),
        ) else {
            // Counters went back: the maps were recreated. Start over from here.
            self.clear_pending();
            return None;
        };
        if completed > 0 {
            let waited = self.pending_since.map_or(Duration::ZERO, |since| now - since);
            self.learn(waited);
            self.clear_pending();
            self.refuted = 0;
            // SYNs of this same sample may still be waiting; counting them from the
            // next sample on only delays a suspicion by one sample.
            return None;
        }
        if syns > 0 {
            self.pending += syns;
            self.pending_retransmits += retransmits;
            self.pending_since.get_or_insert(now);
        }
        let since = self.pending_since?;
        let waited = now - since;
        let window = self.window();
        if self.suspected || self.pending < MIN_SYNS || waited < window {
            return None;
        }
        self.suspected = true;
        Some(Suspect {
            syns: self.pending,
            syn_retransmits: self.pending_retransmits,
            waited,
            window,
        })
    }

    /// A probe answered while this backend was suspect: the next suspicion needs
    /// SYNs from now on, and twice the window.
    pub fn refuted(&mut self) {
        self.suspected = false;
        self.refuted = self.refuted.saturating_add(1);
        self.clear_pending();
    }

    /// The probes decided (the backend is down) or gave up: start afresh.
    pub fn decided(&mut self) {
        self.suspected = false;
        self.refuted = 0;
        self.clear_pending();
    }

    #[must_use]
    pub fn is_suspected(&self) -> bool {
        self.suspected
    }

    /// How long the oldest unanswered SYN may wait before the backend is suspect.
    #[must_use]
    pub fn window(&self) -> Duration {
        let learned = self.smoothed.map_or(Duration::ZERO, |s| s + 4 * self.deviation);
        let base = learned.clamp(MIN_WINDOW, MAX_LEARNED);
        // 2^10 x 30 ms is past MAX_WINDOW already.
        base.saturating_mul(1 << self.refuted.min(10)).min(MAX_WINDOW)
    }

    fn clear_pending(&mut self) {
        self.pending = 0;
        self.pending_retransmits = 0;
        self.pending_since = None;
    }

    /// RFC 6298's estimator, fed with how long the oldest SYN waited before a
    /// completion was seen.
    fn learn(&mut self, waited: Duration) {
        match self.smoothed {
            None => {
                self.smoothed = Some(waited);
                self.deviation = waited / 2;
            }
            Some(smoothed) => {
                self.deviation = (self.deviation * 3 + smoothed.abs_diff(waited)) / 4;
                self.smoothed = Some((smoothed * 7 + waited) / 8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Duration = Duration::from_millis(10);

    /// A backend's counters sampled every 10 ms, driven by what happens between samples.
    struct Feed {
        watch: Watch,
        now: Instant,
        counts: Handshakes,
    }

    impl Feed {
        fn new() -> Self {
            let mut feed = Self {
                watch: Watch::default(),
                now: Instant::now(),
                counts: Handshakes::default(),
            };
            assert_eq!(
                feed.watch.observe(feed.now, feed.counts),
                None,
                "the first sample is a baseline"
            );
            feed
        }

        /// One sample period in which `syns` SYNs arrived and `completed` handshakes completed.
        fn sample(&mut self, syns: u64, completed: u64) -> Option<Suspect> {
            self.now += SAMPLE;
            self.counts.syns += syns;
            self.counts.completed += completed;
            self.watch.observe(self.now, self.counts)
        }

        /// `n` samples of the same traffic; the suspicions raised, by sample number.
        fn samples(&mut self, n: usize, syns: u64, completed: u64) -> Vec<(usize, Suspect)> {
            (1..=n).filter_map(|i| self.sample(syns, completed).map(|s| (i, s))).collect()
        }
    }

    #[test]
    fn a_backend_completing_its_handshakes_is_never_suspect() {
        let mut feed = Feed::new();
        assert_eq!(feed.samples(1000, 2, 2), []);
        // Handshakes lagging their SYNs by a sample.
        for _ in 0..100 {
            assert_eq!(feed.sample(3, 0), None);
            assert_eq!(feed.sample(3, 3), None);
        }
    }

    #[test]
    fn a_node_that_stops_completing_handshakes_is_suspect_once_the_oldest_syn_waited_the_window() {
        let mut feed = Feed::new();
        feed.samples(100, 2, 2);
        // It dies: SYNs keep coming, nothing completes. First seen at sample 1;
        // waited 30 ms at sample 4.
        let raised = feed.samples(10, 2, 0);
        assert_eq!(
            raised,
            [(
                4,
                Suspect {
                    syns: 8,
                    syn_retransmits: 0,
                    waited: Duration::from_millis(30),
                    window: MIN_WINDOW
                }
            )],
            "once, while it is being probed"
        );
        assert!(feed.watch.is_suspected());
    }

    #[test]
    fn fewer_than_three_syns_are_no_suspicion_however_long_they_wait() {
        let mut feed = Feed::new();
        feed.sample(2, 0);
        assert_eq!(feed.samples(100, 0, 0), []);
        assert_eq!(feed.sample(1, 0).map(|s| s.syns), Some(3), "the third SYN tips it");
    }

    #[test]
    fn one_completed_handshake_clears_what_was_pending() {
        let mut feed = Feed::new();
        feed.samples(1, 2, 0);
        // Waited one sample: the window stays 30 ms (10 ms + 4 x 5 ms, at least 30).
        feed.sample(0, 1);
        assert_eq!(feed.watch.window(), MIN_WINDOW);
        assert_eq!(feed.samples(3, 2, 0), [], "the wait starts again from the next SYN");
        assert_eq!(feed.samples(1, 2, 0).len(), 1);
    }

    #[test]
    fn the_window_learns_how_long_handshakes_take_and_ignores_one_slow_client() {
        let mut feed = Feed::new();
        // Far clients: each handshake completes 80 ms after its SYN, a SYN every 110 ms.
        for _ in 0..50 {
            assert_eq!(feed.sample(1, 0), None);
            assert_eq!(feed.samples(7, 0, 0), []);
            assert_eq!(feed.sample(0, 1), None);
            feed.samples(2, 0, 0);
        }
        let window = feed.watch.window();
        assert!(
            window >= Duration::from_millis(80) && window <= Duration::from_millis(130),
            "{window:?}"
        );
        // Three SYNs waiting 80 ms are normal for these clients...
        feed.sample(3, 0);
        assert_eq!(feed.samples(7, 0, 0), []);
        feed.sample(0, 1);
        // ...but 150 ms without a completion is not.
        feed.sample(3, 0);
        assert_eq!(feed.samples(15, 0, 0).len(), 1);
    }

    #[test]
    fn the_learned_window_has_a_floor_and_a_ceiling() {
        let mut feed = Feed::new();
        feed.samples(100, 5, 5);
        assert_eq!(feed.watch.window(), MIN_WINDOW);
        let mut slow = Feed::new();
        for _ in 0..20 {
            slow.sample(1, 0);
            slow.samples(300, 0, 0);
            slow.sample(0, 1);
        }
        assert_eq!(slow.watch.window(), MAX_LEARNED);
    }

    #[test]
    fn refuted_suspicions_double_the_window_until_a_handshake_completes() {
        let mut feed = Feed::new();
        feed.samples(10, 1, 1);
        // Forged SYNs only: a suspicion, refuted by a probe, again and again.
        let mut gaps = Vec::new();
        for _ in 0..12 {
            let raised = feed.samples(2000, 1, 0);
            let (at, suspect) = raised[0];
            gaps.push((at, suspect.window.as_millis()));
            feed.watch.refuted();
        }
        let windows: Vec<u128> = gaps.iter().map(|g| g.1).collect();
        assert_eq!(windows, [30, 60, 120, 240, 480, 960, 1920, 3840, 7680, 10_000, 10_000, 10_000]);
        // A real client's handshake brings the shortest window back.
        feed.sample(0, 1);
        assert_eq!(feed.watch.window(), MIN_WINDOW);
    }

    #[test]
    fn after_a_decision_the_next_suspicion_needs_new_syns() {
        let mut feed = Feed::new();
        assert_eq!(feed.samples(5, 1, 0).len(), 1);
        feed.watch.decided();
        assert!(!feed.watch.is_suspected());
        assert_eq!(feed.watch.window(), MIN_WINDOW);
        assert_eq!(feed.samples(3, 0, 0), []);
        assert_eq!(feed.samples(5, 1, 0).len(), 1);
    }

    #[test]
    fn retransmitted_syns_are_reported_with_the_suspicion() {
        let mut feed = Feed::new();
        feed.sample(2, 0);
        feed.now += SAMPLE;
        feed.counts.syns += 2;
        feed.counts.syn_retransmits += 2;
        assert_eq!(feed.watch.observe(feed.now, feed.counts), None);
        let raised = feed.samples(5, 0, 0);
        assert_eq!(raised.len(), 1);
        assert_eq!((raised[0].1.syns, raised[0].1.syn_retransmits), (4, 2));
    }

    #[test]
    fn counters_that_go_back_start_the_watch_over() {
        let mut feed = Feed::new();
        feed.samples(2, 2, 0);
        feed.counts = Handshakes::default();
        assert_eq!(feed.sample(0, 0), None);
        assert_eq!(feed.samples(2, 1, 0), [], "pending SYNs from before are gone");
        assert_eq!(feed.samples(3, 1, 0).len(), 1);
    }
}
