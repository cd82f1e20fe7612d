//! What this balancer knows of each peer, without sockets or clocks of its own:
//! the replay guard on what it receives, the snapshot being reassembled, and the
//! entries installed from it ([`Receiver`]); the epoch, sequence and snapshot
//! numbering of what it sends ([`Sender`]).
//!
//! Replay rule: a datagram is accepted once. Each sender draws a random epoch at
//! start and numbers its datagrams; within an epoch a sequence number is taken
//! once (a 64-wide window admits reordering); a new epoch is taken only with a
//! sender time later than everything accepted from that peer, so an old epoch's
//! datagrams cannot be replayed after it; and the sender's time must be within
//! [`WINDOW_MS`] of ours, so a captured datagram is useless to a receiver that
//! restarted and forgot the epoch.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use lb_common::{ConnValue, FlowKey};
use ring::hmac;

use super::{
    exceptions::View,
    install::{self, ConnTable, Installs},
    wire::{self, ENTRIES_PER_CHUNK, Entry, Header, Reject},
};

/// How far a sender's clock may be from ours (balancers run NTP; this is
/// generous so a skewed clock does not silently stop sync, and tight enough
/// that a recorded datagram expires within minutes).
pub const WINDOW_MS: u64 = 120_000;

/// The replay guard and reassembly of one peer.
#[derive(Debug, Default)]
pub struct PeerRx {
    epoch: Option<u64>,
    /// Highest sequence accepted in `epoch`, and which of the 64 below it were.
    top: u64,
    seen: u64,
    /// Latest sender time accepted.
    last_time_ms: u64,
    assembly: Option<Assembly>,
    /// Entries installed from this peer (flow -> the entry written).
    pub installed: HashMap<FlowKey, ConnValue>,
    pub last_heard: Option<Instant>,
    /// When the newest complete snapshot arrived (the lag).
    pub last_complete: Option<Instant>,
    pub received: u64,
}

#[derive(Debug)]
struct Assembly {
    snapshot: u32,
    got: Vec<bool>,
    left: usize,
    entries: Vec<Entry>,
    over_cap: usize,
}

/// What an accepted datagram completed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The peer restarted (a new epoch after an earlier one).
    pub new_epoch: bool,
    /// A whole snapshot: its entries (at most the cap) and how many were over.
    pub complete: Option<(Vec<Entry>, usize)>,
}

impl PeerRx {
    /// Checks `h` against the replay rule and takes its chunk.
    pub fn accept(
        &mut self,
        h: &Header,
        entries: Vec<Entry>,
        now_ms: u64,
        cap: usize,
    ) -> Result<Accepted, Reject> {
        if now_ms.abs_diff(h.time_ms) > WINDOW_MS {
            return Err(Reject::Expired);
        }
        let mut out = Accepted::default();
        if self.epoch == Some(h.epoch) {
            self.take_seq(h.seq)?;
        } else {
            if self.epoch.is_some() && h.time_ms <= self.last_time_ms {
                return Err(Reject::Replay);
            }
            out.new_epoch = self.epoch.is_some();
            self.epoch = Some(h.epoch);
            (self.top, self.seen, self.assembly) = (h.seq, 0, None);
        }
        self.last_time_ms = self.last_time_ms.max(h.time_ms);
        out.complete = self.take_chunk(h, entries, cap);
        Ok(out)
    }

    fn take_seq(&mut self, seq: u64) -> Result<(), Reject> {
        if seq > self.top {
            let d = seq - self.top;
            self.seen = if d >= 64 { 0 } else { (self.seen << d) | (1 << (d - 1)) };
            self.top = seq;
            return Ok(());
        }
        let d = self.top - seq;
        if d == 0 || d > 64 || self.seen & (1 << (d - 1)) != 0 {
            return Err(Reject::Replay);
        }
        self.seen |= 1 << (d - 1);
        Ok(())
    }

    fn take_chunk(
        &mut self,
        h: &Header,
        entries: Vec<Entry>,
        cap: usize,
    ) -> Option<(Vec<Entry>, usize)> {
        let newer = |a: &Assembly| h.snapshot.wrapping_sub(a.snapshot).cast_signed() > 0;
        match &self.assembly {
            Some(a) if a.snapshot == h.snapshot && a.got.len() == usize::from(h.chunks) => {}
            // A chunk of an older snapshot than the one being assembled: superseded.
            Some(a) if !newer(a) => return None,
            _ => {
                self.assembly = Some(Assembly {
                    snapshot: h.snapshot,
                    got: vec![false; usize::from(h.chunks)],
                    left: usize::from(h.chunks),
                    entries: Vec::with_capacity((h.total as usize).min(cap)),
                    over_cap: 0,
                });
            }
        }
        let a = self.assembly.as_mut()?;
        let slot = a.got.get_mut(usize::from(h.chunk))?;
        if std::mem::replace(slot, true) {
            return None;
        }
        a.left -= 1;
        let room = cap.saturating_sub(a.entries.len());
        a.over_cap += entries.len().saturating_sub(room);
        a.entries.extend(entries.into_iter().take(room));
        if a.left > 0 {
            return None;
        }
        let a = self.assembly.take()?;
        Some((a.entries, a.over_cap))
    }
}

/// What one received datagram did.
#[derive(Debug, Default)]
pub struct Received {
    pub peer: Option<SocketAddr>,
    pub entries: usize,
    /// A complete snapshot was applied.
    pub installs: Option<Installs>,
    /// The peer restarted: entries installed from its previous run, left in the
    /// table (flows it carried may run here now) and no longer the peer's.
    pub released: Vec<(FlowKey, ConnValue)>,
}

/// The receiving side: peers by address, the key, the cap per peer.
pub struct Receiver {
    key: hmac::Key,
    pub peers: HashMap<SocketAddr, PeerRx>,
    cap: usize,
}

impl Receiver {
    #[must_use]
    pub fn new(secret: &[u8; 32], peers: &[SocketAddr], cap: usize) -> Self {
        let mut r = Self { key: wire::mac_key(secret), peers: HashMap::new(), cap };
        r.configure(secret, peers, cap);
        r
    }

    /// A reload: the key, the peers (a removed peer's entries are released) and
    /// the cap per peer (from each peer's next complete snapshot on: a lower one
    /// withdraws what that snapshot holds past it, as if the peer had not sent it).
    pub fn configure(
        &mut self,
        secret: &[u8; 32],
        peers: &[SocketAddr],
        cap: usize,
    ) -> Vec<(FlowKey, ConnValue)> {
        self.key = wire::mac_key(secret);
        self.cap = cap;
        let mut released = Vec::new();
        self.peers.retain(|a, p| {
            let keep = peers.contains(a);
            if !keep {
                released.extend(p.installed.drain());
            }
            keep
        });
        for p in peers {
            self.peers.entry(canonical(*p)).or_default();
        }
        released
    }

    /// Whether `flow` was installed from a peer (so it is not ours to send).
    #[must_use]
    pub fn is_installed(&self, flow: &FlowKey) -> bool {
        self.peers.values().any(|p| p.installed.contains_key(flow))
    }

    #[must_use]
    pub fn installed(&self) -> usize {
        self.peers.values().map(|p| p.installed.len()).sum()
    }

    /// One datagram from `from`: checked, then its chunk taken; a completed
    /// snapshot is applied to `table`. A rejected datagram changes nothing.
    pub fn datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
        now_ms: u64,
        view: &View,
        table: &mut impl ConnTable,
    ) -> Result<Received, Reject> {
        let from = canonical(from);
        let peer = self.peers.get_mut(&from).ok_or(Reject::UnknownPeer)?;
        let (h, entries) = wire::decode(&self.key, bytes)?;
        let n = entries.len();
        let accepted = peer.accept(&h, entries, now_ms, self.cap)?;
        let mut out = Received { peer: Some(from), entries: n, ..Received::default() };
        peer.last_heard = Some(now);
        peer.received += n as u64;
        if accepted.new_epoch {
            out.released = peer.installed.drain().collect();
        }
        if let Some((snapshot, over)) = accepted.complete {
            let mut installs =
                install::apply(view, table, &mut peer.installed, &snapshot, self.cap);
            installs.cap += over;
            peer.last_complete = Some(now);
            out.installs = Some(installs);
        }
        Ok(out)
    }
}

/// An address as a peer's datagrams arrive from it: IPv4-mapped IPv6 (a
/// dual-stack socket) as plain IPv4.
#[must_use]
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The sending side's numbering.
#[derive(Debug)]
pub struct Sender {
    epoch: u64,
    seq: u64,
    snapshot: u32,
}

impl Sender {
    #[must_use]
    pub fn new(epoch: u64) -> Self {
        Self { epoch, seq: 0, snapshot: 0 }
    }

    /// A new snapshot of `entries` in chunks (an empty one is one empty chunk, the
    /// heartbeat); sequence and time are given at send time ([`Sender::seal`]).
    pub fn snapshot(&mut self, entries: &[Entry]) -> Vec<(Header, Vec<Entry>)> {
        self.snapshot = self.snapshot.wrapping_add(1);
        let chunks: Vec<&[Entry]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(ENTRIES_PER_CHUNK).collect()
        };
        let n = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        chunks
            .into_iter()
            .take(usize::from(n))
            .enumerate()
            .map(|(i, c)| {
                let h = Header {
                    epoch: self.epoch,
                    snapshot: self.snapshot,
                    chunk: i as u16,
                    chunks: n,
                    total: entries.len() as u32,
                    ..Header::default()
                };
                (h, c.to_vec())
            })
            .collect()
    }

    /// The datagram for a chunk, numbered and timed now.
    pub fn seal(&mut self, key: &hmac::Key, h: &Header, entries: &[Entry], now_ms: u64) -> Vec<u8> {
        self.seq += 1;
        wire::encode(key, &Header { seq: self.seq, time_ms: now_ms, ..*h }, entries)
    }
}

#[cfg(test)]
mod tests {
    use lb_common::BackendState;

    use super::*;
    use crate::sync::{exceptions::ViewBackend, wire::tests::entry_v};

    const KEY: [u8; 32] = [7; 32];
    const T: u64 = 1_800_000_000_000;

    fn peer() -> SocketAddr {
        "10.0.0.2:4790".parse().unwrap()
    }

    fn view() -> View {
        let id = entry_v(1, false).id;
        let mut v = View::default();
        for (i, e) in [(5, entry_v(1, false)), (6, entry_v(2, false))] {
            let b = ViewBackend {
                vip: e.id.vip,
                address: id.backend,
                generation: 3,
                state: BackendState::Up,
            };
            v.backends.insert(i, b);
        }
        v
    }

    /// A sender's datagrams for a snapshot of `entries`.
    fn datagrams(s: &mut Sender, entries: &[Entry], at: u64) -> Vec<Vec<u8>> {
        let key = wire::mac_key(&KEY);
        s.snapshot(entries).iter().map(|(h, e)| s.seal(&key, h, e, at)).collect()
    }

    #[test]
    fn a_snapshot_in_chunks_installs_once_complete_and_a_later_one_withdraws() {
        let mut r = Receiver::new(&KEY, &[peer()], 1000);
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let entries: Vec<Entry> = (1..=50).map(|i| entry_v(i, false)).collect();
        let mut s = Sender::new(42);
        let dgrams = datagrams(&mut s, &entries, T);
        assert_eq!(dgrams.len(), 3, "23 + 23 + 4");
        let now = Instant::now();
        for (i, d) in dgrams.iter().enumerate() {
            let got = r.datagram(peer(), d, now, T, &view(), &mut table).unwrap();
            assert_eq!(got.installs.is_some(), i == 2, "complete with the last chunk");
        }
        assert_eq!(table.len(), 50);
        assert_eq!(r.installed(), 50);
        // The next snapshot lists only the first ten.
        for d in datagrams(&mut s, &entries[..10], T + 1) {
            r.datagram(peer(), &d, now, T + 1, &view(), &mut table).unwrap();
        }
        assert_eq!(table.len(), 10);
        // An empty snapshot (the heartbeat) withdraws everything.
        for d in datagrams(&mut s, &[], T + 2) {
            r.datagram(peer(), &d, now, T + 2, &view(), &mut table).unwrap();
        }
        assert!(table.is_empty());
    }

    #[test]
    fn replayed_forged_unknown_and_expired_datagrams_change_nothing() {
        let mut r = Receiver::new(&KEY, &[peer()], 1000);
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let now = Instant::now();
        let mut s = Sender::new(42);
        let first = datagrams(&mut s, &[entry_v(1, false)], T);
        let feed = |r: &mut Receiver,
                    from: SocketAddr,
                    d: &[u8],
                    at: u64,
                    table: &mut HashMap<FlowKey, ConnValue>| {
            r.datagram(from, d, now, at, &view(), table).map(|_| ())
        };
        // Each of these before the genuine datagram: none installs anything.
        let stranger: SocketAddr = "10.0.0.66:4790".parse().unwrap();
        assert_eq!(feed(&mut r, stranger, &first[0], T, &mut table), Err(Reject::UnknownPeer));
        let mut forged = Sender::new(43);
        let other_key = wire::mac_key(&[8; 32]);
        let (h, e) = forged.snapshot(&[entry_v(2, false)]).remove(0);
        let bad = forged.seal(&other_key, &h, &e, T);
        assert_eq!(feed(&mut r, peer(), &bad, T, &mut table), Err(Reject::BadMac));
        assert_eq!(feed(&mut r, peer(), &first[0][..40], T, &mut table), Err(Reject::Malformed));
        assert_eq!(
            feed(&mut r, peer(), &first[0], T + WINDOW_MS + 1, &mut table),
            Err(Reject::Expired)
        );
        assert!(table.is_empty());
        // The genuine one installs; the same bytes again are a replay.
        assert_eq!(feed(&mut r, peer(), &first[0], T, &mut table), Ok(()));
        assert_eq!(table.len(), 1);
        assert_eq!(feed(&mut r, peer(), &first[0], T, &mut table), Err(Reject::Replay));
        // The peer restarts (new epoch, later time) with an empty table: its old
        // entries are released, not removed; the old epoch cannot be replayed.
        let mut restarted = Sender::new(99);
        let fresh = datagrams(&mut restarted, &[], T + 5);
        let got = r.datagram(peer(), &fresh[0], now, T + 5, &view(), &mut table).unwrap();
        assert_eq!(got.released.len(), 1);
        assert_eq!(table.len(), 1, "left for the flows it may carry here");
        let old = datagrams(&mut s, &[], T + 1);
        assert_eq!(feed(&mut r, peer(), &old[0], T + 5, &mut table), Err(Reject::Replay));
    }

    #[test]
    fn a_peer_removed_by_a_reload_releases_its_entries_and_is_unknown_after() {
        let mut r = Receiver::new(&KEY, &[peer()], 1000);
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let mut s = Sender::new(42);
        for d in datagrams(&mut s, &[entry_v(1, false)], T) {
            r.datagram(peer(), &d, Instant::now(), T, &view(), &mut table).unwrap();
        }
        let other: SocketAddr = "[fd00::2]:4790".parse().unwrap();
        let released = r.configure(&KEY, &[other], 1000);
        assert_eq!(released.len(), 1);
        assert_eq!((r.installed(), table.len()), (0, 1), "left in the table, no longer the peer's");
        let d = datagrams(&mut s, &[], T + 1).remove(0);
        let got = r.datagram(peer(), &d, Instant::now(), T + 1, &view(), &mut table);
        assert_eq!(got.err(), Some(Reject::UnknownPeer));
        // A mapped IPv4 source is the IPv4 peer (a dual-stack socket).
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:4790".parse().unwrap();
        assert_eq!(canonical(mapped), peer());
    }

    #[test]
    fn reordered_datagrams_are_taken_once_each() {
        let mut rx = PeerRx::default();
        let h =
            |seq| Header { epoch: 1, seq, time_ms: T, snapshot: 1, chunk: 0, chunks: 1, total: 0 };
        for seq in [1, 3, 2, 70] {
            assert!(rx.accept(&h(seq), vec![], T, 10).is_ok(), "seq {seq}");
        }
        for seq in [2, 3, 70, 5] {
            assert_eq!(rx.accept(&h(seq), vec![], T, 10), Err(Reject::Replay), "seq {seq}");
        }
        assert!(rx.accept(&h(69), vec![], T, 10).is_ok(), "within the window, unseen");
    }

    #[test]
    fn a_snapshot_over_the_cap_is_cut_and_counted() {
        let mut r = Receiver::new(&KEY, &[peer()], 30);
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let entries: Vec<Entry> = (1..=50).map(|i| entry_v(i, false)).collect();
        let mut s = Sender::new(1);
        let mut installs = None;
        for d in datagrams(&mut s, &entries, T) {
            installs =
                r.datagram(peer(), &d, Instant::now(), T, &view(), &mut table).unwrap().installs;
        }
        let installs = installs.unwrap();
        assert_eq!((installs.installed, installs.cap), (30, 20));
        assert_eq!(table.len(), 30);
    }

    #[test]
    fn the_cap_follows_a_reload_from_the_next_snapshot_on() {
        let mut r = Receiver::new(&KEY, &[peer()], 30);
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let mut s = Sender::new(1);
        let mut send = |r: &mut Receiver, table: &mut HashMap<FlowKey, ConnValue>, n, at| {
            let entries: Vec<Entry> = (1..=n).map(|i| entry_v(i, false)).collect();
            let mut installs = None;
            for d in datagrams(&mut s, &entries, at) {
                installs =
                    r.datagram(peer(), &d, Instant::now(), at, &view(), table).unwrap().installs;
            }
            installs.unwrap()
        };
        assert_eq!(send(&mut r, &mut table, 50, T).cap, 20);
        assert!(r.configure(&KEY, &[peer()], 60).is_empty());
        let raised = send(&mut r, &mut table, 50, T + 1);
        assert_eq!((raised.installed, raised.cap, r.installed()), (20, 0, 50));
        assert!(r.configure(&KEY, &[peer()], 10).is_empty());
        let lowered = send(&mut r, &mut table, 55, T + 2);
        assert_eq!((lowered.installed, lowered.removed, lowered.cap), (0, 40, 45));
        assert_eq!((r.installed(), table.len()), (10, 10));
    }
}
