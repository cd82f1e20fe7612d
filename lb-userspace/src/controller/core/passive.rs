//! The core's side of the passive signal: which backends' data-path counters to
//! read, what a sample of them means (`suspicion.rs` holds the rule), and the fast
//! probes a suspicion triggers until rise/fall decides. The traffic never changes a
//! backend's state here; only probe results do, through `Core::probed`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use lb_common::BackendState;
use log::Level;

use super::{Core, Output};
use crate::{
    config::Protocol,
    controller::{
        planner::Key,
        suspicion::{Handshakes, Suspect, Watch},
    },
    health::{Probed, Target},
    maps::Maps,
    metrics::Update,
};

/// How a suspicion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The probes brought the backend down.
    Down,
    /// A probe started after the suspicion succeeded.
    Refuted,
    /// Neither within the time the regular checks need to decide alone.
    Expired,
}

impl Outcome {
    /// The metrics' `outcome` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Refuted => "refuted",
            Self::Expired => "expired",
        }
    }
}

/// A target being probed fast because backends it serves are suspect.
#[derive(Clone, Debug)]
struct Episode {
    since: Instant,
    next_probe: Instant,
    /// The suspect backends.
    suspects: BTreeSet<Key>,
}

/// The passive signal's state: one watch per watched backend, one episode per
/// target under suspicion.
#[derive(Clone, Debug, Default)]
pub(super) struct Passive {
    /// The backends watched, by index (`Core::watched`).
    watched: BTreeMap<u32, Key>,
    watches: BTreeMap<Key, Watch>,
    episodes: BTreeMap<Target, Episode>,
}

impl<M: Maps> Core<M> {
    /// The backends whose counters the loop should read and pass to
    /// [`Core::sampled`], by their index in the maps: the backends of TCP VIPs
    /// that the plan puts in a ring (up, with a next hop; a reserve only while its
    /// tier is called), whose check has `passive` on.
    #[must_use]
    pub fn watched(&self) -> Vec<u32> {
        self.passive.watched.keys().copied().collect()
    }

    /// The watched backends' counters, read at `now`: raises suspicions, and sends
    /// the fast probes that are due.
    pub fn sampled(&mut self, now: Instant, samples: &[(u32, Handshakes)]) {
        let passive = &mut self.passive;
        let mut raised = Vec::new();
        for (index, counts) in samples {
            let Some(key) = passive.watched.get(index) else { continue };
            let watch = passive.watches.entry(key.clone()).or_default();
            if let Some(suspect) = watch.observe(now, *counts) {
                raised.push((key.clone(), suspect));
            }
        }
        for (key, suspect) in raised {
            self.raise(now, key, suspect);
        }
        self.expire(now);
        self.send_due_probes(now);
    }

    /// Recomputes the watched backends after a write (a state, a next hop, an
    /// index or the config changed); a backend no longer watched forgets its
    /// counters, so it starts afresh when it is watched again.
    pub(super) fn rewatch(&mut self) {
        let mut watched = BTreeMap::new();
        for v in self.config.vips.iter().filter(|v| v.protocol == Protocol::Tcp) {
            for b in &v.backends {
                let key = (v.name.clone(), b.name.clone());
                let Some(tracked) = self.backends.get(&key) else { continue };
                if !tracked.check.spec.passive
                    || tracked.mac.is_none()
                    || self.planned.get(&key) != Some(&BackendState::Up)
                {
                    continue;
                }
                if let Some(index) = self.writer.backend_index(&v.name, &b.name) {
                    watched.insert(index, key);
                }
            }
        }
        let keys: BTreeSet<&Key> = watched.values().collect();
        self.passive.watches.retain(|key, _| keys.contains(key));
        self.passive.watched = watched;
    }

    fn raise(&mut self, now: Instant, key: Key, suspect: Suspect) {
        let Some(target) = self.backends.get(&key).map(|t| t.check.clone()) else { return };
        let (vip, backend) = &key;
        self.outputs.push_back(Output::Metric(Update::Suspicion {
            vip: vip.clone(),
            backend: backend.clone(),
        }));
        let retransmits = match suspect.syn_retransmits {
            0 => String::new(),
            n => format!(" ({n} retransmitted)"),
        };
        self.outputs.push_back(Output::Log {
            level: Level::Info,
            text: format!(
                "{vip}/{backend} is suspect: {} SYNs{retransmits} and no handshake completed \
                 in {} ms (window {} ms); probing {target} now and every {} ms",
                suspect.syns,
                suspect.waited.as_millis(),
                suspect.window.as_millis(),
                target.spec.fast_interval.as_millis()
            ),
        });
        self.passive
            .episodes
            .entry(target)
            .or_insert(Episode { since: now, next_probe: now, suspects: BTreeSet::new() })
            .suspects
            .insert(key);
    }

    /// Sends a fast probe to every target under suspicion whose turn has come.
    fn send_due_probes(&mut self, now: Instant) {
        for (target, episode) in &mut self.passive.episodes {
            let interval = target.spec.fast_interval;
            // Samples come at their own pace; a quarter interval of slack keeps
            // probes from slipping a whole sample when one comes a little early.
            if episode.next_probe > now + interval / 4 {
                continue;
            }
            episode.next_probe = now + interval;
            self.outputs.push_back(Output::Metric(Update::TriggeredProbe {
                target: target.endpoint().to_string(),
            }));
            self.outputs.push_back(Output::Probe {
                target: target.clone(),
                timeout: target.spec.fast_timeout,
            });
        }
    }

    /// Ends the episodes that outlived what the regular checks need to decide
    /// alone (`fall` intervals and a timeout), and those of targets no longer probed.
    fn expire(&mut self, now: Instant) {
        let stale: Vec<(Target, Outcome)> = self
            .passive
            .episodes
            .iter()
            .filter_map(|(target, episode)| {
                if !self.checks.contains_key(target) {
                    return Some((target.clone(), Outcome::Expired));
                }
                let spec = &target.spec;
                let budget = spec.interval * spec.fall + spec.timeout;
                (now.duration_since(episode.since) > budget)
                    .then(|| (target.clone(), Outcome::Expired))
            })
            .collect();
        for (target, outcome) in stale {
            self.settle(now, &target, outcome);
        }
    }

    /// After a probe result of `report.target` (whose health is now `up`): ends its
    /// episode when the result decides it.
    pub(super) fn settle_suspicion(&mut self, now: Instant, report: &Probed, up: bool) {
        let Some(episode) = self.passive.episodes.get(&report.target) else { return };
        let started = now.checked_sub(report.duration).unwrap_or(now);
        let outcome = if !up {
            Outcome::Down
        } else if report.ok() && started >= episode.since {
            // A probe started before the suspicion says nothing about it.
            Outcome::Refuted
        } else {
            return;
        };
        self.settle(now, &report.target, outcome);
    }

    fn settle(&mut self, now: Instant, target: &Target, outcome: Outcome) {
        let Some(episode) = self.passive.episodes.remove(target) else { return };
        let took = now.duration_since(episode.since);
        self.outputs
            .push_back(Output::Metric(Update::SuspicionDecided { outcome: outcome.label(), took }));
        let mut windows = Vec::new();
        for key in &episode.suspects {
            let Some(watch) = self.passive.watches.get_mut(key) else { continue };
            if outcome == Outcome::Down {
                watch.decided();
            } else {
                // Undecided counts as refuted: no evidence of a death, so no
                // more probing than after an answer.
                watch.refuted();
                windows.push(watch.window());
            }
        }
        let text = match outcome {
            Outcome::Down => format!("{target}: suspicion confirmed in {} ms", took.as_millis()),
            Outcome::Refuted => format!(
                "{target}: suspicion refuted in {} ms (a probe succeeded); next window {} ms",
                took.as_millis(),
                windows.iter().max().copied().unwrap_or_default().as_millis()
            ),
            Outcome::Expired => {
                format!(
                    "{target}: suspicion undecided after {} ms; regular checks go on",
                    took.as_millis()
                )
            }
        };
        self.outputs.push_back(Output::Log { level: Level::Info, text });
    }

    /// Whether `target` is being probed fast (for tests and status).
    #[must_use]
    pub fn is_suspected(&self, target: &Target) -> bool {
        self.passive.episodes.contains_key(target)
    }
}
