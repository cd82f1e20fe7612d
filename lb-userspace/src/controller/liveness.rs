//! The balancer's own health, as `/healthz` reports it (VRRP and BGP act on it):
//! our program is attached and the control loop is not stalled. The loop beats a
//! [`Heartbeat`] every tick; the endpoint reads it without waiting for the loop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::loader::AttachCheck;

/// `/healthz` fails when the loop has not ticked for this long.
pub const LOOP_STALL: Duration = Duration::from_secs(5);

/// When the loop last ticked, shared with the endpoints.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last: AtomicU64,
}

impl Heartbeat {
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self { epoch: now, last: AtomicU64::new(0) }
    }

    pub fn beat(&self, now: Instant) {
        self.last.store(millis(now.saturating_duration_since(self.epoch)), Ordering::Release);
    }

    /// Time since the last beat.
    #[must_use]
    pub fn silent_for(&self, now: Instant) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        now.saturating_duration_since(self.epoch).saturating_sub(last)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The verdict: Ok, or why this balancer cannot forward.
pub fn verdict(silent_for: Duration, attached: Result<(), String>) -> Result<(), String> {
    if silent_for > LOOP_STALL {
        return Err(format!("control loop stalled for {silent_for:?}"));
    }
    attached
}

/// What `/healthz` checks.
#[derive(Clone, Debug)]
pub struct Liveness {
    pub heartbeat: Arc<Heartbeat>,
    pub attachment: AttachCheck,
}

impl Liveness {
    pub fn check(&self, now: Instant) -> Result<(), String> {
        verdict(self.heartbeat.silent_for(now), self.attachment.attached())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beating_loop_is_healthy_and_a_silent_one_stalled() {
        let start = Instant::now();
        let heartbeat = Heartbeat::new(start);
        heartbeat.beat(start + Duration::from_secs(10));
        let at = |s| heartbeat.silent_for(start + Duration::from_secs(s));
        assert_eq!(at(12), Duration::from_secs(2));
        assert_eq!(verdict(at(12), Ok(())), Ok(()));
        assert_eq!(verdict(at(15), Ok(())), Ok(()), "5 s is not yet a stall");
        assert_eq!(verdict(at(16), Ok(())), Err("control loop stalled for 6s".to_owned()));
    }

    #[test]
    fn a_detached_program_fails_a_live_loop() {
        let detached = Err("XDP link pin missing: gone".to_owned());
        assert_eq!(verdict(Duration::ZERO, detached.clone()), detached);
    }
}
