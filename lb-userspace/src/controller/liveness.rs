//! The control loop's heartbeat: the loop beats it every
//! [`HEARTBEAT`](super::HEARTBEAT); the health monitor reads how long it has been
//! silent without waiting for the loop (`balancer_health` judges a stall).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// When the loop last beat, shared with the health monitor.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_measured_from_the_last_beat() {
        let start = Instant::now();
        let heartbeat = Heartbeat::new(start);
        assert_eq!(heartbeat.silent_for(start + Duration::from_secs(3)), Duration::from_secs(3));
        heartbeat.beat(start + Duration::from_secs(10));
        assert_eq!(heartbeat.silent_for(start + Duration::from_secs(12)), Duration::from_secs(2));
        assert_eq!(heartbeat.silent_for(start + Duration::from_secs(9)), Duration::ZERO);
    }
}
