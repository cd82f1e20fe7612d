//! The IPv4 connection table (`FLOWS4`): an array of 128-byte sets of four ways
//! (two cache lines side by side), shared by every CPU, each way one flow's entry
//! under its 16-byte key (`FlowKey4::words`). A packet reads the set its key
//! hashes to (`hash::flow_set`): a table hit, a miss and an insert each touch that
//! set alone, where the kernel's LRU hash read a bucket and an element and wrote
//! a free node.
//!
//! A TCP handshake in flight is a way of the same set (`State::Pending`, its SYN's
//! backend): the handshake's ACK finds it in the set it reads anyway and
//! completes it in place. A SYN never takes an established flow's way, so spoofed
//! SYNs cannot evict established flows; a SYN that finds no room waits in the SYN
//! array instead (`SYNS`). An established entry takes, in turn, its own way, an
//! empty one, a pending one, and then the one used longest ago (`FlowWay::clock`,
//! the controller's clock when a packet last used it): a least-recently-used
//! table within each set. A flow picked up mid-stream (`State::Picked`: a packet
//! that completes no handshake here, which a forged source can send) takes the
//! same ways but the last: of the flows, only another picked one, so forged
//! mid-flow packets cannot evict a flow that completed its handshake either.
//!
//! No locks: every CPU and the controller write ways in place, word by word
//! (`store`). A way's `meta` carries a seal of its key and entry, so a reader that
//! meets a way half written (two writers at once, or a write under its read) takes
//! it for empty, never for another flow's entry.

use crate::{ConnValue, FlowKey4};

/// Ways in a set: four 32-byte ways, two lines. Four, not two in one line: the
/// flows that hash to one set beyond its ways evict each other, and with two ways
/// a table half full of flows would have held ~10% fewer than it was given
/// (Poisson, one set a flow); with four, ~4%, and an active flow is evicted only
/// when four flows used since share its set.
pub const WAYS: usize = 4;

/// One way: a flow's entry, or empty (a zero key word, which no flow has: a
/// flow's first word holds its VIP address, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowWay {
    /// The flow's `FlowKey4::words`.
    pub key: [u64; 2],
    pub conn: ConnValue,
    /// The clock when a packet last used the way (high half), and its seal (low
    /// half: `seal`).
    pub meta: u64,
}

/// One set of `FLOWS4`: two cache lines (the map is mmapable, so its values are
/// page-aligned and each set is two lines of its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: [FlowWay; WAYS],
}

/// What a whole way holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A flow that completed its handshake here, or that the controller put in (a
    /// peer's, through sync): its packets go to `conn`'s backend.
    Established,
    /// A TCP SYN's backend, until the handshake's next packet makes it established.
    Pending,
    /// A flow that entered without a handshake seen here: UDP, or a TCP packet
    /// mid-flow (a flow from before an unpinned restart, or that another balancer
    /// carried). Served as an established one; it gives way to any flow.
    Picked,
}

/// The state bits of a sealed way whose packets are served: established or
/// picked (`established_bits & SERVED_MASK == established's`; pending's differ).
pub const SERVED_MASK: u32 = !2;

/// The low half of a whole way's `meta`: 24 bits of a mix of its key and entry,
/// then its state (1 established, 2 pending, 3 picked). A way half written by one
/// writer and half by another (or read half written) fails it with odds of
/// 1 - 2^-24; a reader compares it in one go with what the key it looks for and
/// the entry it read would give (masked with `SERVED_MASK` for either served state).
#[inline(always)]
#[must_use]
pub const fn seal(key: [u64; 2], conn: ConnValue, state: State) -> u32 {
    mix(key, conn) | state.bits()
}

/// The seal's 24 bits of key and entry, shifted in place.
#[inline(always)]
const fn mix(key: [u64; 2], conn: ConnValue) -> u32 {
    let c = conn.backend as u64 | (conn.generation as u64) << 32;
    let h = (key[0] ^ key[1].rotate_left(29) ^ c).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 40) as u32) << 8
}

impl State {
    const fn bits(self) -> u32 {
        match self {
            Self::Established => 1,
            Self::Pending => 2,
            Self::Picked => 3,
        }
    }

    /// Whether the way's packets go to its entry: established or picked.
    #[must_use]
    pub const fn served(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

impl FlowWay {
    /// A way holding `conn` for the flow `key` in `state`, last used at `clock`.
    #[inline(always)]
    #[must_use]
    pub const fn new(key: [u64; 2], conn: ConnValue, state: State, clock: u32) -> Self {
        Self { key, conn, meta: (clock as u64) << 32 | seal(key, conn, state) as u64 }
    }

    /// What the way holds, if it is whole: a key, and a seal that agrees with its
    /// key and entry.
    #[inline(always)]
    #[must_use]
    pub const fn state(&self) -> Option<State> {
        let low = self.meta as u32;
        if self.key[0] == 0 || low & !0xff != mix(self.key, self.conn) {
            return None;
        }
        match low & 0xff {
            1 => Some(State::Established),
            2 => Some(State::Pending),
            3 => Some(State::Picked),
            _ => None,
        }
    }

    /// The controller's clock (`flow::conn_epoch`'s high half) when a packet last
    /// used the way.
    #[inline(always)]
    #[must_use]
    pub const fn clock(&self) -> u32 {
        (self.meta >> 32) as u32
    }

    /// `meta` with the state `state` and the clock `clock` (the seal's mix stays:
    /// the key and entry are the same).
    #[inline(always)]
    #[must_use]
    pub const fn meta_as(&self, state: State, clock: u32) -> u64 {
        (clock as u64) << 32 | (self.meta as u32 & !0xff | state.bits()) as u64
    }
}

impl FlowSet {
    /// The way whose key is `key`, whole or not (a reader then checks
    /// `FlowWay::state`; a writer overwrites it).
    #[inline(always)]
    #[must_use]
    pub fn position(&self, key: [u64; 2]) -> Option<usize> {
        self.ways.iter().position(|w| w.key == key)
    }

    /// What each way holds, its seal checked once for all the choices below.
    #[inline(always)]
    fn states(&self) -> [Option<State>; WAYS] {
        self.ways.each_ref().map(FlowWay::state)
    }

    /// The first way that holds nothing whole (empty, or half written).
    #[inline(always)]
    fn free(states: [Option<State>; WAYS]) -> Option<usize> {
        states.iter().position(Option::is_none)
    }

    /// Of the ways whose state `of` takes, the one used longest ago (the last on
    /// a tie).
    #[inline(always)]
    fn oldest(&self, states: [Option<State>; WAYS], of: impl Fn(State) -> bool) -> Option<usize> {
        let mut oldest: Option<(usize, u32)> = None;
        for (i, (w, s)) in self.ways.iter().zip(states).enumerate() {
            if s.is_some_and(&of) && oldest.is_none_or(|(_, c)| w.clock() <= c) {
                oldest = Some((i, w.clock()));
            }
        }
        oldest.map(|(i, _)| i)
    }

    /// Where an established entry of the flow `key` goes: its own way, else an
    /// empty (or half-written) one, else the pending one waiting longest, else the
    /// flow (established or picked) used longest ago. Never none: an established
    /// flow always enters.
    #[inline(always)]
    #[must_use]
    pub fn way_for_established(&self, key: [u64; 2]) -> usize {
        self.position(key).unwrap_or_else(|| {
            let states = self.states();
            Self::free(states)
                .or_else(|| self.oldest(states, |s| s == State::Pending))
                .or_else(|| self.oldest(states, State::served))
                .unwrap_or(WAYS - 1)
        })
    }

    /// Where a flow picked up mid-stream goes: as an established one, but of the
    /// flows only the picked one used longest ago. None when every other way holds
    /// an established flow: forged mid-flow packets never evict one (the packet
    /// still goes where the ring says).
    #[inline(always)]
    #[must_use]
    pub fn way_for_picked(&self, key: [u64; 2]) -> Option<usize> {
        self.position(key).or_else(|| {
            let states = self.states();
            Self::free(states)
                .or_else(|| self.oldest(states, |s| s == State::Pending))
                .or_else(|| self.oldest(states, |s| s == State::Picked))
        })
    }

    /// Where a SYN of the flow `key` waits: its own way (a retransmission, or an
    /// earlier connection on the same 5-tuple, which the new one replaces), else
    /// an empty (or half-written) one, else the pending one waiting longest. None
    /// when every way holds a flow (established or picked): a SYN never evicts one.
    #[inline(always)]
    #[must_use]
    pub fn way_for_pending(&self, key: [u64; 2]) -> Option<usize> {
        self.position(key).or_else(|| {
            let states = self.states();
            Self::free(states).or_else(|| self.oldest(states, |s| s == State::Pending))
        })
    }
}

/// Writes `new` over `way` word by word, in an order that lets no reader take it
/// for another flow's entry: the key's first word cleared (the way reads empty),
/// the entry and meta, then the key, its first word last. Volatile: shared with
/// other CPUs and the controller, the compiler must neither drop nor reorder.
///
/// # Safety
/// `way` must be valid for writes and 8-byte aligned (a map value or its mmap).
#[inline(always)]
pub unsafe fn store(way: *mut FlowWay, new: &FlowWay) {
    unsafe {
        core::ptr::write_volatile(&raw mut (*way).key[0], 0);
        core::ptr::write_volatile(&raw mut (*way).conn, new.conn);
        core::ptr::write_volatile(&raw mut (*way).meta, new.meta);
        core::ptr::write_volatile(&raw mut (*way).key[1], new.key[1]);
        core::ptr::write_volatile(&raw mut (*way).key[0], new.key[0]);
    }
}

/// Reads `way` word by word (see `store`).
///
/// # Safety
/// `way` must be valid for reads and 8-byte aligned.
#[inline(always)]
#[must_use]
pub unsafe fn load(way: *const FlowWay) -> FlowWay {
    unsafe {
        FlowWay {
            key: [
                core::ptr::read_volatile(&raw const (*way).key[0]),
                core::ptr::read_volatile(&raw const (*way).key[1]),
            ],
            conn: core::ptr::read_volatile(&raw const (*way).conn),
            meta: core::ptr::read_volatile(&raw const (*way).meta),
        }
    }
}

/// Sets of `FLOWS4` for a table of `entries` flows: a power of two, at least 1.
#[must_use]
pub const fn sets_for(entries: u32) -> u32 {
    let sets = entries.div_ceil(WAYS as u32);
    if sets <= 1 { 1 } else { sets.next_power_of_two() }
}

impl FlowKey4 {
    /// The key whose `words` are `words`.
    #[must_use]
    pub const fn from_words(words: [u64; 2]) -> Self {
        Self {
            src: words[0] as u32,
            dst: (words[0] >> 32) as u32,
            ports: [words[1] as u16, (words[1] >> 16) as u16],
            proto: (words[1] >> 32) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u64; 2] = [0x0a00_0001_c633_6407, 0x0006_5000_9c40];
    const TO_1: ConnValue = ConnValue { backend: 1, generation: 7 };
    const TO_2: ConnValue = ConnValue { backend: 2, generation: 7 };

    /// Another flow than A, the `n`th.
    const fn other(n: u64) -> [u64; 2] {
        [0x0a00_0001_c633_6500 + n, 0x0006_5000_9c40]
    }
    fn est(key: [u64; 2], clock: u32) -> FlowWay {
        FlowWay::new(key, TO_1, State::Established, clock)
    }
    fn pend(key: [u64; 2], clock: u32) -> FlowWay {
        FlowWay::new(key, TO_2, State::Pending, clock)
    }
    fn picked(key: [u64; 2], clock: u32) -> FlowWay {
        FlowWay::new(key, TO_1, State::Picked, clock)
    }
    /// A set of established flows used at `clocks`, one a way.
    fn used_at(clocks: [u32; WAYS]) -> FlowSet {
        FlowSet { ways: core::array::from_fn(|i| est(other(i as u64), clocks[i])) }
    }

    #[test]
    fn a_set_is_two_cache_lines_and_a_key_round_trips_through_its_words() {
        assert_eq!(size_of::<FlowSet>(), 128);
        let k = FlowKey4 { src: 0x0764_33c6, dst: 0x0100_000a, ports: [0x409c, 0x5000], proto: 6 };
        assert_eq!(FlowKey4::from_words(k.words()), k);
    }

    #[test]
    fn a_way_is_whole_only_when_its_seal_agrees_with_its_key_and_entry() {
        assert_eq!(est(A, 5).state(), Some(State::Established));
        assert_eq!(pend(A, 5).state(), Some(State::Pending));
        assert_eq!(picked(A, 5).state(), Some(State::Picked));
        assert_eq!(FlowWay::default().state(), None, "empty");
        let unknown = FlowWay { meta: est(A, 5).meta | 0xff, ..est(A, 5) };
        assert_eq!(unknown.state(), None, "no such state");
        // Half of one writer's way, half of another's.
        let torn = FlowWay { conn: TO_2, ..est(A, 5) };
        assert_eq!(torn.state(), None);
        let torn = FlowWay { key: other(1), ..est(A, 5) };
        assert_eq!(torn.state(), None);
        // Completing a handshake or a clock step rewrites the meta alone.
        let w = pend(A, 5);
        let done = FlowWay { meta: w.meta_as(State::Established, 9), ..w };
        assert_eq!((done.state(), done.clock(), done.conn), (Some(State::Established), 9, TO_2));
    }

    #[test]
    fn an_established_flow_takes_its_own_way_then_an_empty_then_a_pending_then_the_least_recent() {
        let mut s = used_at([1, 1, 1, 1]);
        s.ways[2] = est(A, 1);
        assert_eq!(s.way_for_established(A), 2, "its own");
        let mut s = used_at([1, 1, 1, 1]);
        s.ways[3] = FlowWay::default();
        assert_eq!(s.way_for_established(A), 3, "empty");
        let mut s = used_at([1, 1, 1, 1]);
        s.ways[1].conn = TO_2;
        assert_eq!(s.way_for_established(A), 1, "half-written");
        let mut s = used_at([9, 9, 9, 9]);
        s.ways[2] = pend(other(7), 9);
        assert_eq!(s.way_for_established(A), 2, "pending");
        assert_eq!(used_at([5, 3, 9, 4]).way_for_established(A), 1, "least recent");
        assert_eq!(used_at([3, 9, 3, 9]).way_for_established(A), 2, "a tie: the later way");
    }

    #[test]
    fn the_data_paths_one_masked_compare_serves_established_and_picked_ways_alone() {
        let served = seal(A, TO_1, State::Established);
        for (state, serves) in
            [(State::Established, true), (State::Picked, true), (State::Pending, false)]
        {
            assert_eq!(seal(A, TO_1, state) & SERVED_MASK == served, serves, "{state:?}");
            assert_eq!(state.served(), serves, "{state:?}");
        }
    }

    #[test]
    fn a_picked_flow_takes_an_empty_way_a_pending_one_or_the_oldest_picked_never_an_established_one()
     {
        assert_eq!(used_at([1, 2, 3, 4]).way_for_picked(A), None, "every way established");
        let mut s = used_at([1, 2, 3, 4]);
        s.ways[2] = picked(other(8), 9);
        s.ways[3] = picked(other(9), 7);
        assert_eq!(s.way_for_picked(A), Some(3), "the picked one used longest ago");
        s.ways[1] = pend(other(7), 9);
        assert_eq!(s.way_for_picked(A), Some(1), "a pending one before any flow");
        s.ways[0] = FlowWay::default();
        assert_eq!(s.way_for_picked(A), Some(0), "an empty one first");
        // Its own way: a flow whose entry names a dead backend is picked up again.
        let mut s = used_at([1, 2, 3, 4]);
        s.ways[1] = est(A, 1);
        assert_eq!(s.way_for_picked(A), Some(1));
    }

    #[test]
    fn an_established_flow_takes_the_flow_used_longest_ago_picked_or_not() {
        let mut s = used_at([5, 3, 9, 4]);
        s.ways[3] = picked(other(8), 6);
        assert_eq!(s.way_for_established(A), 1, "an established one, older");
        s.ways[0] = picked(other(9), 2);
        assert_eq!(s.way_for_established(A), 0, "a picked one, older");
    }

    #[test]
    fn a_syn_never_takes_an_established_flows_way() {
        assert_eq!(used_at([1, 2, 3, 4]).way_for_pending(A), None);
        let mut s = used_at([1, 2, 3, 4]);
        s.ways[3] = pend(other(8), 2);
        s.ways[1] = pend(other(9), 1);
        assert_eq!(s.way_for_pending(A), Some(1), "the pending one waiting longest");
        s.ways[2] = FlowWay::default();
        assert_eq!(s.way_for_pending(A), Some(2), "an empty one first");
        let mut s = used_at([1, 2, 3, 4]);
        s.ways[0] = picked(other(8), 0);
        assert_eq!(s.way_for_pending(A), None, "nor a picked flow's");
        // Its own way, established or not: a new connection on the 5-tuple
        // replaces the old one's entry; a retransmission its own pending one.
        let mut s = used_at([1, 2, 3, 4]);
        s.ways[3] = est(A, 1);
        assert_eq!(s.way_for_pending(A), Some(3));
        s.ways[3] = pend(A, 1);
        assert_eq!(s.way_for_pending(A), Some(3));
    }

    #[test]
    fn a_stored_way_reads_back_whole() {
        let mut s = used_at([1, 1, 1, 1]);
        let new = pend(A, 3);
        unsafe { store(&raw mut s.ways[1], &new) };
        assert_eq!(unsafe { load(&raw const s.ways[1]) }, new);
        assert_eq!(s.ways[0], est(other(0), 1), "the other ways untouched");
    }

    #[test]
    fn sets_are_a_power_of_two_holding_the_entries_asked_for() {
        assert_eq!(sets_for(1 << 20), 1 << 18);
        assert_eq!(sets_for(8192), 2048);
        assert_eq!(sets_for(1000), 256);
        assert_eq!(sets_for(1025), 512);
        assert_eq!(sets_for(1), 1);
        assert_eq!(sets_for(0), 1);
    }
}
