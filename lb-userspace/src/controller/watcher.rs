//! The watcher: a thread of its own that re-reads the kernel's neighbour tables
//! and the balancer's interface (netlink dumps and ioctls, which block for up to
//! their timeouts) and hands the loop what changed, so the loop never waits on
//! the kernel. It also sends the solicitations the core asks for.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::debug;
use tokio::sync::mpsc as tokio_mpsc;

use crate::{
    interface::{self, Interface},
    neighbours::{NeighbourSource, Tables},
};

/// How soon after soliciting next hops the tables are read again.
const AFTER_SOLICIT: Duration = Duration::from_millis(50);

/// What the watcher saw change since it last said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Tables(Result<Tables, String>),
    Interface(Result<Interface, String>),
}

/// The loop's handle on the watcher thread; dropping it stops the thread.
pub struct Watcher {
    /// Dropping it ends the thread at its next wake-up (not joined: a netlink
    /// read in progress may take its full timeout).
    solicit: mpsc::Sender<BTreeSet<IpAddr>>,
    _thread: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `interface` (as read at start) and the tables read by
    /// `source` every `every`; changes go to `changes`. `first` is the tables the
    /// core started with (only differences are sent).
    pub fn spawn<S: NeighbourSource + Send + 'static>(
        interface: Interface,
        mut source: S,
        first: Result<Tables, String>,
        every: Duration,
        changes: tokio_mpsc::Sender<Change>,
    ) -> std::io::Result<Self> {
        let (solicit, requests) = mpsc::channel::<BTreeSet<IpAddr>>();
        let thread = std::thread::Builder::new().name("xdplb-watcher".into()).spawn(move || {
            let mut seen_tables = first;
            let mut seen_interface: Result<Interface, String> = Ok(interface.clone());
            let mut current = interface;
            let mut next = Instant::now() + every;
            loop {
                match requests.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(hops) => {
                        for hop in hops {
                            source.solicit(&current, hop);
                        }
                        // Resolution takes milliseconds on a LAN: look again soon
                        // rather than at the next regular read.
                        next = next.min(Instant::now() + AFTER_SOLICIT);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                next = Instant::now() + every;
                let read = interface::read(&current.name).map_err(|e| format!("{e:#}"));
                if read != seen_interface {
                    if let Ok(i) = &read {
                        current = i.clone();
                    }
                    seen_interface.clone_from(&read);
                    if changes.blocking_send(Change::Interface(read)).is_err() {
                        return;
                    }
                }
                let tables = source.tables().map_err(|e| format!("{e:#}"));
                if tables != seen_tables {
                    seen_tables.clone_from(&tables);
                    if changes.blocking_send(Change::Tables(tables)).is_err() {
                        return;
                    }
                }
            }
        })?;
        Ok(Self { solicit, _thread: thread })
    }

    /// Asks for `hops` to be resolved (best effort: the next tables tell).
    pub fn solicit(&self, hops: BTreeSet<IpAddr>) {
        if self.solicit.send(hops).is_err() {
            debug!("the watcher has stopped; solicitation dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{mac::Mac, testing::FakeNeighbours};

    /// Tables shared with the test, and the solicitations made.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<FakeNeighbours>>);

    impl NeighbourSource for Shared {
        fn tables(&mut self) -> anyhow::Result<Tables> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tables()
        }
        fn solicit(&mut self, interface: &Interface, hop: IpAddr) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .solicit(interface, hop);
        }
    }

    fn lo() -> Interface {
        interface::read("lo").expect("lo")
    }

    #[tokio::test]
    async fn the_watcher_sends_only_what_changed_and_solicits_off_the_loop() {
        let shared = Shared::default();
        let (tx, mut rx) = tokio_mpsc::channel(16);
        let w = Watcher::spawn(
            lo(),
            shared.clone(),
            Ok(Tables::default()),
            Duration::from_millis(20),
            tx,
        )
        .expect("spawn");
        // Nothing changed: nothing is sent.
        let quiet = tokio::time::timeout(Duration::from_millis(150), rx.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        let mac: Mac = [2, 0, 0, 0, 0, 7];
        let hop: IpAddr = "10.9.9.9".parse().expect("ip");
        shared.0.lock().expect("lock").resolve(1, hop, mac);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a change");
        let Some(Change::Tables(Ok(tables))) = got else { panic!("{got:?}") };
        assert_eq!(tables.mac(1, hop), Some(mac));
        w.solicit(BTreeSet::from([hop]));
        let start = Instant::now();
        while shared.0.lock().expect("lock").solicited.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "not solicited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(shared.0.lock().expect("lock").solicited, [hop]);
    }
}
