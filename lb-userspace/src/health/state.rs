//! Rise/fall hysteresis: a backend flips only after `rise` consecutive successes
//! (when down) or `fall` consecutive failures (when up), so one lost probe does
//! not move traffic and a flapping node does not keep moving it.

use super::Failure;

/// A flip of the up/down state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Down to up, after `rise` consecutive successes.
    Up,
    /// Up to down, after `fall` consecutive failures.
    Down,
}

impl Transition {
    #[must_use]
    pub fn is_up(self) -> bool {
        self == Self::Up
    }
}

/// The up/down state of one target and the run of results against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    /// Consecutive results that contradict `up`; reset by any result that agrees.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    /// Thresholds of 0 are treated as 1: a flip needs at least one result.
    #[must_use]
    pub fn new(initially_up: bool, rise: u32, fall: u32) -> Self {
        Self { up: initially_up, streak: 0, rise: rise.max(1), fall: fall.max(1) }
    }

    #[must_use]
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results so far against the current state.
    #[must_use]
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Consecutive successes that bring it up (at least 1).
    #[must_use]
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// Consecutive failures that bring it down (at least 1).
    #[must_use]
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// The run length that the next flip needs.
    #[must_use]
    pub fn threshold(&self) -> u32 {
        self.threshold_to(!self.up)
    }

    /// The run of results a flip to `up` (or down) needs: `rise` or `fall`.
    #[must_use]
    pub fn threshold_to(&self, up: bool) -> u32 {
        if up { self.rise } else { self.fall }
    }

    /// Records one probe result; `Some` only when the state flips.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        if self.streak < self.threshold() {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

impl Hysteresis {
    /// Records a failure that is conclusive on its own (a refused probe, when the
    /// check says so): an up target goes down at once; a down one stays down and,
    /// as after any failure, needs `rise` successes from here.
    pub fn fail_at_once(&mut self) -> Option<Transition> {
        self.streak = 0;
        if !self.up {
            return None;
        }
        self.up = false;
        Some(Transition::Down)
    }
}

/// Why `health` just flipped, for the log: "3 consecutive failures, last:
/// connection refused", "2 consecutive successes".
#[must_use]
pub fn reason(flip: Transition, health: &Hysteresis, failure: Option<&Failure>) -> String {
    match flip {
        Transition::Up => {
            let n = health.rise();
            format!("{n} consecutive {}", if n == 1 { "success" } else { "successes" })
        }
        Transition::Down => {
            let n = health.fall();
            let last = failure.map_or_else(String::new, |f| format!(", last: {f}"));
            format!("{n} consecutive {}{last}", if n == 1 { "failure" } else { "failures" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(h: &mut Hysteresis, results: &[bool]) -> Vec<Option<Transition>> {
        results.iter().map(|&ok| h.observe(ok)).collect()
    }

    #[test]
    fn down_target_comes_up_after_exactly_rise_successes() {
        let mut h = Hysteresis::new(false, 3, 2);
        assert_eq!(feed(&mut h, &[true, true]), [None, None]);
        assert!(!h.is_up());
        assert_eq!(h.observe(true), Some(Transition::Up));
        assert!(h.is_up());
        assert_eq!(h.observe(true), None, "no second flip while staying up");
    }

    #[test]
    fn up_target_goes_down_after_exactly_fall_failures() {
        let mut h = Hysteresis::new(true, 2, 3);
        assert_eq!(feed(&mut h, &[false, false]), [None, None]);
        assert!(h.is_up());
        assert_eq!(h.observe(false), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.observe(false), None);
    }

    #[test]
    fn an_agreeing_result_restarts_the_count() {
        let mut h = Hysteresis::new(true, 2, 3);
        assert_eq!(feed(&mut h, &[false, false, true, false, false]), [None; 5]);
        assert_eq!(h.streak(), 2);
        assert_eq!(h.observe(false), Some(Transition::Down));
    }

    #[test]
    fn alternating_results_never_flip_when_rise_and_fall_are_at_least_two() {
        for initially_up in [false, true] {
            let mut h = Hysteresis::new(initially_up, 2, 2);
            for i in 0..1000 {
                assert_eq!(h.observe(i % 2 == 0), None);
            }
            assert_eq!(h.is_up(), initially_up);
        }
    }

    #[test]
    fn initial_state_is_reported_before_any_probe() {
        assert!(Hysteresis::new(true, 2, 3).is_up());
        assert!(!Hysteresis::new(false, 2, 3).is_up());
    }

    #[test]
    fn initially_up_target_needs_fall_failures_and_initially_down_needs_rise_successes() {
        let mut up = Hysteresis::new(true, 5, 1);
        assert_eq!(up.observe(false), Some(Transition::Down));
        let mut down = Hysteresis::new(false, 1, 5);
        assert_eq!(down.observe(true), Some(Transition::Up));
        // Results agreeing with the initial state never flip.
        let mut steady = Hysteresis::new(false, 1, 1);
        assert_eq!(feed(&mut steady, &[false, false, false]), [None; 3]);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut h = Hysteresis::new(false, 0, 0);
        assert_eq!(h.observe(true), Some(Transition::Up));
        assert_eq!(h.observe(false), Some(Transition::Down));
    }

    #[test]
    fn full_cycle_flips_both_ways() {
        let mut h = Hysteresis::new(false, 2, 3);
        let flips: Vec<_> = [true, true, false, false, false, true, true]
            .into_iter()
            .filter_map(|ok| h.observe(ok))
            .collect();
        assert_eq!(flips, [Transition::Up, Transition::Down, Transition::Up]);
    }

    #[test]
    fn a_conclusive_failure_brings_an_up_target_down_at_once() {
        let mut h = Hysteresis::new(true, 2, 3);
        assert_eq!(h.fail_at_once(), Some(Transition::Down));
        assert!(!h.is_up());
        // Down already: no flip, and the successes towards rise start again.
        assert_eq!(h.observe(true), None);
        assert_eq!(h.fail_at_once(), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(Transition::Up));
    }

    #[test]
    fn a_conclusive_failure_after_ordinary_ones_flips_once() {
        let mut h = Hysteresis::new(true, 2, 3);
        assert_eq!(feed(&mut h, &[false, false]), [None, None]);
        assert_eq!(h.fail_at_once(), Some(Transition::Down));
        assert_eq!(h.streak(), 0);
        assert_eq!(h.observe(false), None);
    }

    #[test]
    fn the_reason_counts_the_run_and_names_the_last_failure() {
        let mut h = Hysteresis::new(false, 2, 3);
        let up = feed(&mut h, &[true, true])[1].expect("flip");
        assert_eq!(reason(up, &h, None), "2 consecutive successes");
        let down = feed(&mut h, &[false, false, false])[2].expect("flip");
        assert_eq!(
            reason(down, &h, Some(&Failure::Status(503))),
            "3 consecutive failures, last: status 503"
        );
        let mut single = Hysteresis::new(true, 1, 1);
        let down = single.observe(false).expect("flip");
        assert_eq!(
            reason(down, &single, Some(&Failure::Refused)),
            "1 consecutive failure, last: connection refused"
        );
        let up = single.observe(true).expect("flip");
        assert_eq!(reason(up, &single, None), "1 consecutive success");
    }
}
