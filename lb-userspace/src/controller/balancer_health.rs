//! The balancer's own health: whether this host can forward, the one signal VRRP
//! and BGP act on (`ha/` carries it to them), and what `/healthz` and `xdplb
//! status` report. A pure judgement over facts gathered elsewhere: the kernel's
//! view of our attachment, the status the core published, the loop's heartbeat.
//!
//! It fails when this balancer cannot forward what it is sent: our program is not
//! attached to the configured interface in the configured mode, or that interface
//! is down; the last map write failed (the data path may not say what the
//! controller decided); the control loop stalls (nothing follows backend
//! failures any more); the balancer is starting and has not yet decided the
//! health of every backend (announcing it then would send flows to a ring that
//! may still be empty); or it is stopping (a planned stop withdraws first).
//!
//! It does **not** fail when a VIP has no usable backend, even every VIP: that is
//! reported as a warning. A balancer cannot tell its own fault from a pool-wide
//! one, and a pool-wide outage is seen by every balancer at once: failing then
//! would withdraw every balancer together and turn an outage of the backends into
//! an outage of the VIP addresses themselves, which keeps failing after the
//! backends recover until routers and VRRP converge again, and takes away
//! whatever a per-VIP all-down policy could still do. Per-host faults that do cut
//! a balancer off its backends (a dead link, a dead NIC) fail it through the
//! interface checks above.

use std::{fmt::Write as _, time::Duration};

use super::{planner::Serving, status::Status};

/// The control loop beats every [`HEARTBEAT`](super::HEARTBEAT); silence this long
/// is a stall.
pub const LOOP_STALL: Duration = Duration::from_secs(2);

/// What the judgement reads.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The kernel's view of our attachment (`AttachCheck::attached`).
    pub attached: &'a Result<(), String>,
    /// How long the control loop has been silent.
    pub loop_silent_for: Duration,
    /// What the core published last.
    pub status: &'a Status,
    /// A planned stop has begun.
    pub stopping: bool,
}

/// The verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Why this balancer cannot forward; empty when it can.
    pub failing: Vec<String>,
    /// What an operator should know that does not fail it.
    pub warnings: Vec<String>,
}

impl Health {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.failing.is_empty()
    }

    /// The `/healthz` body: `ok`, or every reason, one per line; then the warnings.
    #[must_use]
    pub fn body(&self) -> String {
        let mut s = String::new();
        if self.ok() {
            s.push_str("ok\n");
        }
        for reason in &self.failing {
            let _ = writeln!(s, "{reason}");
        }
        for warning in &self.warnings {
            let _ = writeln!(s, "warning: {warning}");
        }
        s
    }

    /// The `health:` line of `xdplb status` (warnings follow on their own lines).
    #[must_use]
    pub fn line(&self) -> String {
        if self.ok() {
            "health: ok".to_owned()
        } else {
            format!("health: FAILING: {}", self.failing.join("; "))
        }
    }
}

/// Judges this balancer's health from `facts`.
#[must_use]
pub fn judge(facts: &Facts<'_>) -> Health {
    let mut health = Health::default();
    let status = facts.status;
    if facts.stopping {
        health.failing.push("stopping: withdrawn for a planned stop".to_owned());
    }
    if let Err(e) = facts.attached {
        health.failing.push(e.clone());
    }
    if let Err(e) = &status.last_write {
        health.failing.push(format!("the last map write failed: {e}"));
    }
    if facts.loop_silent_for > LOOP_STALL {
        health
            .failing
            .push(format!("control loop stalled for {:.1}s", facts.loop_silent_for.as_secs_f64()));
    }
    if let Some(starting) = &status.starting {
        let mut waiting = Vec::new();
        if starting.undecided > 0 {
            waiting.push(format!(
                "the health of {} of {} backend checks is not decided yet",
                starting.undecided, starting.checks
            ));
        }
        if starting.unresolved > 0 {
            waiting
                .push(format!("{} healthy backends have no next-hop MAC yet", starting.unresolved));
        }
        health.failing.push(format!("starting: {}", waiting.join(", ")));
    }
    let empty: Vec<&str> = status
        .vips()
        .filter(|(_, vs)| vs.ring.is_some_and(|r| r.members == 0))
        .map(|(v, _)| v.name.as_str())
        .collect();
    if !empty.is_empty() {
        health.warnings.push(format!(
            "no usable backend for VIP {}: its packets are dropped here as on every balancer \
             that sees the same; this balancer stays announced",
            empty.join(", ")
        ));
    }
    let open: Vec<&str> = status
        .vips()
        .filter(|(_, vs)| vs.tier.serving() == Serving::FailOpen)
        .map(|(v, _)| v.name.as_str())
        .collect();
    if !open.is_empty() {
        health.warnings.push(format!(
            "no usable backend for VIP {}: all_down fail_open sends its new flows to every \
             reachable backend, as on every balancer that sees the same; this balancer stays \
             announced",
            open.join(", ")
        ));
    }
    health
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            planner::Tier,
            status::{RingStatus, Starting, VipStatus},
        },
        *,
    };

    fn status(members: &[usize]) -> Status {
        let mut yaml = String::from("interface: eth0\nvips:\n");
        for i in 0..members.len() {
            let _ = writeln!(
                yaml,
                "  - {{ name: v{i}, address: 192.0.2.{}, port: 80, backends: [{{ name: a, address: 10.0.0.1 }}] }}",
                i + 1
            );
        }
        let config = crate::config::parse(&yaml, "t.yaml").expect("config");
        let vips = members
            .iter()
            .map(|&m| VipStatus {
                index: Some(0),
                tier: Tier::default(),
                backends: vec![],
                ring: Some(RingStatus { members: m, digest: 7 }),
            })
            .collect();
        Status { config, vips, last_write: Ok(()), starting: None }
    }

    fn judged(
        status: &Status,
        attached: &Result<(), String>,
        silent: u64,
        stopping: bool,
    ) -> Health {
        judge(&Facts { attached, loop_silent_for: Duration::from_millis(silent), status, stopping })
    }

    #[test]
    fn an_attached_balancer_with_a_live_loop_is_healthy() {
        let h = judged(&status(&[3, 1]), &Ok(()), 100, false);
        assert_eq!(h, Health::default());
        assert_eq!(h.body(), "ok\n");
        assert_eq!(h.line(), "health: ok");
    }

    #[test]
    fn each_reason_it_cannot_forward_fails_it_and_is_named() {
        let s = status(&[3]);
        let detached =
            judged(&s, &Err("no XDP program runs on eth0 in driver mode".into()), 0, false);
        assert_eq!(detached.failing, ["no XDP program runs on eth0 in driver mode"]);
        assert_eq!(detached.body(), "no XDP program runs on eth0 in driver mode\n");
        let stalled = judged(&s, &Ok(()), 2_500, false);
        assert_eq!(stalled.failing, ["control loop stalled for 2.5s"]);
        assert!(judged(&s, &Ok(()), 2_000, false).ok(), "2 s is not yet a stall");
        let failed = Status { last_write: Err("map full".into()), ..s.clone() };
        assert_eq!(
            judged(&failed, &Ok(()), 0, false).failing,
            ["the last map write failed: map full"]
        );
        let starting = Status {
            starting: Some(Starting { undecided: 2, unresolved: 0, checks: 6 }),
            ..s.clone()
        };
        assert_eq!(
            judged(&starting, &Ok(()), 0, false).failing,
            ["starting: the health of 2 of 6 backend checks is not decided yet"]
        );
        let resolving = Status {
            starting: Some(Starting { undecided: 0, unresolved: 1, checks: 6 }),
            ..s.clone()
        };
        assert_eq!(
            judged(&resolving, &Ok(()), 0, false).failing,
            ["starting: 1 healthy backends have no next-hop MAC yet"]
        );
        let stopping = judged(&s, &Ok(()), 0, true);
        assert_eq!(stopping.failing, ["stopping: withdrawn for a planned stop"]);
        let all = judged(&failed, &Err("interface eth0 is down".into()), 9_000, true);
        assert_eq!(all.failing.len(), 4, "{all:?}");
        assert_eq!(
            all.line(),
            "health: FAILING: stopping: withdrawn for a planned stop; interface eth0 is down; \
             the last map write failed: map full; control loop stalled for 9.0s"
        );
    }

    #[test]
    fn vips_without_a_usable_backend_warn_but_never_fail_the_balancer() {
        // Every balancer sees a pool-wide outage: failing would withdraw them all.
        let h = judged(&status(&[0, 2, 0]), &Ok(()), 0, false);
        assert!(h.ok());
        assert_eq!(h.warnings.len(), 1);
        assert!(h.warnings[0].starts_with("no usable backend for VIP v0, v2:"), "{h:?}");
        assert!(h.body().starts_with("ok\nwarning: no usable backend for VIP v0, v2"));
        let none_written = Status {
            vips: vec![VipStatus {
                index: None,
                tier: Tier::default(),
                backends: vec![],
                ring: None,
            }],
            ..status(&[0])
        };
        assert!(
            judged(&none_written, &Ok(()), 0, false).warnings.is_empty(),
            "no ring yet: unknown"
        );
        // all_down: fail_open puts the reachable backends in the ring: a warning
        // of its own, still healthy.
        let mut failing_open = status(&[1]);
        failing_open.vips[0].tier = Tier {
            primaries: 1,
            reachable: 1,
            all_down: crate::config::AllDown::FailOpen,
            ..Tier::default()
        };
        let h = judged(&failing_open, &Ok(()), 0, false);
        assert!(h.ok());
        assert_eq!(h.warnings.len(), 1, "{h:?}");
        assert!(h.warnings[0].contains("VIP v0: all_down fail_open sends"), "{h:?}");
    }
}
