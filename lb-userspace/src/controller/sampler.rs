//! The loop's side of the passive signal: every [`SAMPLE`], read the SYN and
//! handshake counters of the backends the core watches and hand them to
//! [`Core::sampled`]. A read that fails is logged once (and once when reads work
//! again); the core then sees no sample, which is no suspicion.

use std::{sync::Arc, time::Duration, time::Instant};

use log::{info, warn};

use super::Core;
use crate::{maps::Maps, stats::HandshakeCounters};

/// How often the counters are read: a third of the suspicion rule's shortest
/// window (`suspicion::MIN_WINDOW`), so a dead node is suspect within 30-40 ms of
/// its first unanswered SYN. A read is one map lookup per watched backend.
pub const SAMPLE: Duration = Duration::from_millis(10);

pub struct Sampler {
    source: Arc<dyn HandshakeCounters + Send + Sync>,
    /// The last read failed (logged once).
    failing: bool,
}

impl Sampler {
    #[must_use]
    pub fn new(source: Arc<dyn HandshakeCounters + Send + Sync>) -> Self {
        Self { source, failing: false }
    }

    /// Reads the watched backends' counters and passes them to the core.
    pub fn sample<M: Maps>(&mut self, core: &mut Core<M>) {
        let watched = core.watched();
        if watched.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut samples = Vec::with_capacity(watched.len());
        for index in watched {
            match self.source.handshakes(index) {
                Ok(counts) => samples.push((index, counts)),
                Err(e) => {
                    if !self.failing {
                        warn!(
                            "passive signal: reading backend {index}'s counters: {e:#}; retrying"
                        );
                    }
                    self.failing = true;
                    return;
                }
            }
        }
        if std::mem::take(&mut self.failing) {
            info!("passive signal: reading the data path's counters again");
        }
        core.sampled(now, &samples);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{
            Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    use anyhow::{Result, bail};

    use super::*;
    use crate::{
        config,
        controller::{Output, suspicion::Handshakes},
        health::Probed,
        interface::Interface,
        testing::{FakeMaps, FakeNeighbours},
    };

    /// Counters the test sets, per backend index, and a switch that fails reads.
    #[derive(Default)]
    struct FakeCounters {
        counts: Mutex<BTreeMap<u32, Handshakes>>,
        fail: AtomicBool,
    }

    impl HandshakeCounters for FakeCounters {
        fn handshakes(&self, index: u32) -> Result<Handshakes> {
            if self.fail.load(Ordering::Relaxed) {
                bail!("injected read failure");
            }
            Ok(self.counts.lock().unwrap().get(&index).copied().unwrap_or_default())
        }
    }

    const CONFIG: &str = "
interface: eth0
health_check_defaults: { kind: tcp, port: 80, rise: 1, fall: 3 }
vips:
  - { name: web, address: 192.0.2.1, port: 80, backends: [{ name: a, address: 10.0.0.11 }] }
";

    fn core() -> Core<FakeMaps> {
        let mut n = FakeNeighbours::default();
        n.resolve(2, "10.0.0.11".parse().unwrap(), [2, 0, 0, 0, 0, 0x11]);
        let n = Ok(n.tables);
        let interface =
            Interface { name: "eth0".into(), index: 2, mac: [2, 0, 0, 0, 0, 1], mtu: 1500 };
        let cfg = config::parse(CONFIG, "t.yaml").unwrap();
        let mut core =
            Core::start(cfg, interface, FakeMaps::default(), false, n, Instant::now()).unwrap();
        let target = std::iter::from_fn(|| core.poll_output())
            .find_map(|o| match o {
                Output::ProbeTargets(targets) => targets.into_iter().next(),
                _ => None,
            })
            .unwrap();
        core.probed(Instant::now(), &Probed { target, failure: None, duration: Duration::ZERO });
        while core.poll_output().is_some() {}
        core
    }

    fn probes_sent(core: &mut Core<FakeMaps>) -> usize {
        std::iter::from_fn(|| core.poll_output())
            .filter(|o| matches!(o, Output::Probe { .. }))
            .count()
    }

    #[test]
    fn counters_read_for_the_watched_backends_reach_the_core() {
        let mut core = core();
        let index = core.watched()[0];
        let source = Arc::new(FakeCounters::default());
        let mut sampler = Sampler::new(source.clone());
        sampler.sample(&mut core);
        // SYNs and no handshake for longer than the window, in real time.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            source.counts.lock().unwrap().entry(index).or_default().syns += 5;
            sampler.sample(&mut core);
            if probes_sent(&mut core) > 0 {
                return;
            }
            std::thread::sleep(SAMPLE);
        }
        panic!("no probe after 500 ms of SYNs without a handshake");
    }

    #[test]
    fn a_failing_read_gives_the_core_nothing_and_reads_resume() {
        let mut core = core();
        let index = core.watched()[0];
        let source = Arc::new(FakeCounters::default());
        let mut sampler = Sampler::new(source.clone());
        sampler.sample(&mut core);
        source.fail.store(true, Ordering::Relaxed);
        for _ in 0..10 {
            source.counts.lock().unwrap().entry(index).or_default().syns += 5;
            sampler.sample(&mut core);
            std::thread::sleep(SAMPLE);
        }
        assert!(sampler.failing);
        assert_eq!(probes_sent(&mut core), 0);
        source.fail.store(false, Ordering::Relaxed);
        sampler.sample(&mut core);
        assert!(!sampler.failing);
    }
}
