//! Long-lived keep-alive connections through a balancer pair, each with the WAF
//! node it reached first and the balancer that carried it when it opened: what
//! the redundancy and peer-sync tests count their losses on. A connection is lost
//! when a request on it fails or another node answers; it stays broken after.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use super::Pair;
use crate::{
    lab::NS_CLIENT,
    traffic::{LongLived, Record},
};

/// Long-lived connections to some VIPs, `per_target` to each.
pub struct Conns {
    /// Each connection, its VIP and the balancer that carried it at the start.
    pub conns: Vec<(LongLived, SocketAddr, usize)>,
}

impl Conns {
    /// Opens `per_target` connections to each of `targets`, each sending a request
    /// every `period`; connections that reached node `avoid` are dropped and others
    /// opened instead.
    pub fn open(
        pair: &Pair,
        targets: &[SocketAddr],
        per_target: usize,
        period: Duration,
        avoid: Option<&str>,
    ) -> Result<Self> {
        let mut conns = Vec::new();
        for &target in targets {
            let mut opened = 0;
            let mut tries = 0;
            while opened < per_target {
                tries += 1;
                ensure!(tries < per_target * 4, "only {opened} connections to {target} opened");
                // One that cannot start (the router's ECMP route being rewritten as
                // a balancer rejoins) is tried again; losses count from here on.
                let c = match LongLived::open(NS_CLIENT, target, period) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("opening a long-lived connection to {target}: {e:#}; again");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if avoid == Some(c.backend.as_str()) {
                    continue;
                }
                let carrier = pair.carrier_of(c.local, target)?;
                conns.push((c, target, carrier));
                opened += 1;
            }
        }
        Ok(Self { conns })
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections per (family, balancer).
    #[must_use]
    pub fn spread(&self) -> BTreeMap<(&'static str, usize), usize> {
        let mut out = BTreeMap::new();
        for (_, target, k) in &self.conns {
            *out.entry((family(*target), *k)).or_default() += 1;
        }
        out
    }

    /// Connections per (family, first node).
    #[must_use]
    pub fn by_node(&self) -> BTreeMap<(&'static str, String), usize> {
        let mut out = BTreeMap::new();
        for (c, target, _) in &self.conns {
            *out.entry((family(*target), c.backend.clone())).or_default() += 1;
        }
        out
    }

    /// Connections that broke or moved to another node, each with what it saw.
    #[must_use]
    pub fn lost(&self) -> Vec<String> {
        self.conns
            .iter()
            .filter_map(|(c, target, k)| {
                let bad = first_bad(c)?;
                Some(format!(
                    "{} -> {target} via balancer {k} to {}: {:?}",
                    c.local, c.backend, bad.outcome
                ))
            })
            .collect()
    }

    /// Lost connections per (family, first node).
    #[must_use]
    pub fn lost_by_node(&self) -> BTreeMap<(&'static str, String), usize> {
        let mut out = BTreeMap::new();
        for (c, target, _) in self.conns.iter().filter(|(c, _, _)| first_bad(c).is_some()) {
            *out.entry((family(*target), c.backend.clone())).or_default() += 1;
        }
        out
    }

    /// Requests answered so far over all connections.
    #[must_use]
    pub fn answered(&self) -> usize {
        self.conns
            .iter()
            .map(|(c, _, _)| c.log.records().iter().filter(|r| r.outcome.is_ok()).count())
            .sum()
    }

    /// Connections that have not yet exchanged a request and its answer (or
    /// failed) after `since`: every connection's state since then is known once
    /// this is 0.
    #[must_use]
    pub fn unsettled(&self, since: Instant) -> usize {
        self.conns
            .iter()
            .filter(|(c, _, _)| {
                first_bad(c).is_none() && !c.log.records().iter().any(|r| r.start >= since)
            })
            .count()
    }

    /// Waits until every connection exchanged a request after `since` (or
    /// failed); how long that took.
    pub fn settle(&self, since: Instant, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let left = self.unsettled(since);
            if left == 0 {
                return Ok(start.elapsed());
            }
            ensure!(
                start.elapsed() < timeout,
                "{left} of {} connections exchanged nothing within {timeout:?}",
                self.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Conns {
    /// Every connection told first, then each waited for: one pause in all, not
    /// one per connection.
    fn drop(&mut self) {
        for (c, _, _) in &self.conns {
            c.signal_stop();
        }
    }
}

fn family(target: SocketAddr) -> &'static str {
    if target.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The first request on `c` that failed or reached another node.
fn first_bad(c: &LongLived) -> Option<Record> {
    c.log.records().into_iter().find(|r| r.outcome.as_deref() != Ok(c.backend.as_str()))
}
