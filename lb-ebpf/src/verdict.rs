use aya_ebpf::bindings::xdp_action;
use lb_common::{Counter, CounterSet};

/// What becomes of a packet: the XDP action and, for pass and drop, the reason.
/// Every early exit carries one, so the entry point counts all verdicts in one place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass(Counter),
    Drop(Counter),
    /// Forwarded to a backend.
    Tx,
    /// Forwarded to a backend on a connection-table hit: counted in the backend's
    /// `BackendStats::hits` only (`STATS`' `action_tx` and `conn_hit` include it).
    TxHit,
    /// Answered: the frame was turned into a reply to its sender (counted by reason).
    Reply(Counter),
}

pub const MALFORMED: Verdict = Verdict::Drop(Counter::DropMalformed);

/// A verdict as what it counts: the XDP action, the action's counter and the
/// reason's (indices into `CounterSet::values`, `NONE` for none), packed in one word
/// so every early exit carries one constant to the counting at the end, not two.
#[derive(Clone, Copy)]
pub struct Counted(u32);

/// No counter: past the end of `CounterSet::values`, so its bump is skipped.
const NONE: u32 = 0xff;
const _: () = assert!(Counter::COUNT < NONE);

impl From<Verdict> for Counted {
    #[inline(always)]
    fn from(v: Verdict) -> Self {
        let (action, counter, reason) = match v {
            Verdict::TxHit => (xdp_action::XDP_TX, NONE, NONE),
            Verdict::Pass(r) => (xdp_action::XDP_PASS, Counter::ActionPass as u32, r as u32),
            Verdict::Drop(r) => (xdp_action::XDP_DROP, Counter::ActionDrop as u32, r as u32),
            Verdict::Tx => (xdp_action::XDP_TX, Counter::ActionTx as u32, NONE),
            Verdict::Reply(r) => (xdp_action::XDP_TX, Counter::ActionTx as u32, r as u32),
        };
        Self(action | counter << 8 | reason << 16)
    }
}

impl Counted {
    /// Counts the action and its reason, and returns the XDP action.
    #[inline(always)]
    pub fn record(self, stats: &mut CounterSet) -> u32 {
        bump_index(stats, (self.0 >> 8) & 0xff);
        bump_index(stats, self.0 >> 16);
        self.0 & 0xff
    }
}

/// What a packet counts besides its verdict: its connection event (a SYN, a
/// miss, a hit not forwarded...) and an ICMP error forwarded. Kept until the
/// verdict, so a forwarded table hit, which counts neither, reads no `STATS`.
pub struct Also {
    /// A `Counter` as an index into `CounterSet::values`, or `NONE` (the bump's
    /// bounds check is then the only branch).
    conn: u32,
    pub icmp_forwarded: bool,
}

impl Default for Also {
    fn default() -> Self {
        Self { conn: NONE, icmp_forwarded: false }
    }
}

impl Also {
    #[inline(always)]
    pub fn conn(&mut self, c: Counter) {
        self.conn = c as u32;
    }

    #[inline(always)]
    pub fn record(&self, stats: &mut CounterSet) {
        bump_index(stats, self.conn);
        if self.icmp_forwarded {
            bump(stats, Counter::IcmpForwarded);
        }
    }
}

#[inline(always)]
fn bump(stats: &mut CounterSet, c: Counter) {
    bump_index(stats, c as u32);
}

#[inline(always)]
fn bump_index(stats: &mut CounterSet, i: u32) {
    if let Some(v) = stats.values.get_mut(opaque(i as usize)) {
        *v += 1;
    }
}

/// `i`, tested in the register it indexes with. A run-time index (a reason that
/// came back from a BPF subprogram, say) goes through a register move LLVM cannot
/// see through: else LLVM may test the packed word instead (`w < 24 << 16`) and
/// index with a value shifted out of it, and the verifier, which bounds only the
/// register tested, refuses the program ("invalid access to map value"). A
/// constant needs no test and is left alone.
#[inline(always)]
fn opaque(mut i: usize) -> usize {
    if core::intrinsics::is_val_statically_known(i) {
        return i;
    }
    // SAFETY: a register move of `i` to itself.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) i, options(pure, nomem, nostack)) };
    i
}
