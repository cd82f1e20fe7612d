//! Flap damping: a target whose health changed more than `limit` times within
//! `window` is held down for `hold`, whatever its probes say, so a node that keeps
//! dying and recovering stops pulling new flows in and pushing them out again
//! (each of its recoveries moves flows onto it, each death moves them off). The
//! probes go on meanwhile; when the hold ends, the node takes the state they say,
//! unless it went on changing: more than `limit` changes within the window at
//! that moment hold it again.
//!
//! Counted are changes of the health the data path sees (a hold's own end, when it
//! brings the node up, is one), so the figures match the transitions an operator
//! sees. No clock of its own: every call takes `now`.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Flap-damping settings of a health check (`flap_changes`, `flap_window`, `flap_hold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Damping {
    /// More changes than this within `window` hold the target down; 0 never does.
    pub limit: u32,
    pub window: Duration,
    pub hold: Duration,
}

/// A target's recent changes and its hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flaps {
    settings: Damping,
    /// When its health changed, oldest first, within the window.
    changes: VecDeque<Instant>,
    /// Held down until then.
    held_until: Option<Instant>,
}

impl Flaps {
    #[must_use]
    pub fn new(settings: Damping) -> Self {
        Self { settings, changes: VecDeque::new(), held_until: None }
    }

    /// Keeps the history, takes new settings (a reload that retunes them).
    #[must_use]
    pub fn with_settings(self, settings: Damping) -> Self {
        Self { settings, ..self }
    }

    /// Held down now.
    #[must_use]
    pub fn is_held(&self) -> bool {
        self.held_until.is_some()
    }

    /// When the hold ends, if held.
    #[must_use]
    pub fn held_until(&self) -> Option<Instant> {
        self.held_until
    }

    /// Changes within the window, as of the last call.
    #[must_use]
    pub fn recent(&self) -> usize {
        self.changes.len()
    }

    /// Records a change of the target's health at `now`. True when it starts a
    /// hold (more than `limit` changes within the window); a change while held
    /// extends nothing by itself (see `expire`).
    pub fn record(&mut self, now: Instant) -> bool {
        self.changes.push_back(now);
        self.forget_before(now);
        if self.is_held() || !self.over_limit() {
            return false;
        }
        self.held_until = Some(now + self.settings.hold);
        true
    }

    /// At `now`: `Some(true)` when a hold ended, `Some(false)` when it ended but
    /// the target kept changing meanwhile, so it is held again for `hold`; `None`
    /// when nothing happened.
    pub fn expire(&mut self, now: Instant) -> Option<bool> {
        let until = self.held_until?;
        if now < until {
            return None;
        }
        self.forget_before(now);
        if self.over_limit() {
            self.held_until = Some(now + self.settings.hold);
            return Some(false);
        }
        self.held_until = None;
        Some(true)
    }

    fn over_limit(&self) -> bool {
        self.settings.limit > 0 && self.changes.len() > self.settings.limit as usize
    }

    fn forget_before(&mut self, now: Instant) {
        while self.changes.front().is_some_and(|t| now.duration_since(*t) > self.settings.window) {
            self.changes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Damping =
        Damping { limit: 4, window: Duration::from_mins(1), hold: Duration::from_secs(30) };

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_change_beyond_the_limit_within_the_window_holds_the_target_for_the_hold_time() {
        let t0 = Instant::now();
        let mut f = Flaps::new(SETTINGS);
        for s in 0..4 {
            assert!(!f.record(at(t0, s)), "change {} is within the limit", s + 1);
        }
        assert!(f.record(at(t0, 4)), "the fifth change in 60 s holds it");
        assert_eq!(f.held_until(), Some(at(t0, 34)));
        assert!(!f.record(at(t0, 5)), "already held");
        assert_eq!(f.expire(at(t0, 33)), None);
    }

    #[test]
    fn changes_spread_wider_than_the_window_never_hold() {
        let t0 = Instant::now();
        let mut f = Flaps::new(SETTINGS);
        for s in 0..100 {
            assert!(!f.record(at(t0, s * 16)), "one change every 16 s: at most 4 per minute");
        }
        assert_eq!(f.recent(), 4);
    }

    #[test]
    fn the_hold_ends_when_the_target_calmed_down_and_is_renewed_while_it_flaps() {
        let t0 = Instant::now();
        let mut f = Flaps::new(SETTINGS);
        for s in 0..5 {
            f.record(at(t0, s));
        }
        // Still flapping during the hold: at its end, more than 4 changes in 60 s.
        for s in 10..15 {
            f.record(at(t0, s));
        }
        assert_eq!(f.expire(at(t0, 34)), Some(false), "held again");
        assert_eq!(f.held_until(), Some(at(t0, 64)));
        // Quiet since: by 76 s the changes of 10..15 s have left the window.
        assert_eq!(f.expire(at(t0, 64)), Some(false), "10..15 s are still within 60 s");
        assert_eq!(f.expire(at(t0, 94)), Some(true));
        assert!(!f.is_held());
    }

    #[test]
    fn a_limit_of_zero_never_holds() {
        let t0 = Instant::now();
        let mut f = Flaps::new(Damping { limit: 0, ..SETTINGS });
        assert!((0..1000).all(|i| !f.record(at(t0, i / 100))));
    }
}
