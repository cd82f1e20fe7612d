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

impl Verdict {
    /// Counts the action and its reason, and returns the XDP action.
    #[inline(always)]
    pub fn record(self, stats: &mut CounterSet) -> u32 {
        let (action, counter, reason) = match self {
            Self::TxHit => return xdp_action::XDP_TX,
            Self::Pass(r) => (xdp_action::XDP_PASS, Counter::ActionPass, Some(r)),
            Self::Drop(r) => (xdp_action::XDP_DROP, Counter::ActionDrop, Some(r)),
            Self::Tx => (xdp_action::XDP_TX, Counter::ActionTx, None),
            Self::Reply(r) => (xdp_action::XDP_TX, Counter::ActionTx, Some(r)),
        };
        bump(stats, counter);
        if let Some(r) = reason {
            bump(stats, r);
        }
        action
    }
}

/// What a packet counts besides its verdict: its connection event (a SYN, a
/// miss, a hit not forwarded...) and an ICMP error forwarded. Kept until the
/// verdict, so a forwarded table hit, which counts neither, reads no `STATS`.
pub struct Also {
    /// A `Counter` as an index into `CounterSet::values`; none when past its end
    /// (the bump's bounds check is then the only branch).
    conn: usize,
    pub icmp_forwarded: bool,
}

impl Default for Also {
    fn default() -> Self {
        Self { conn: usize::MAX, icmp_forwarded: false }
    }
}

impl Also {
    #[inline(always)]
    pub fn conn(&mut self, c: Counter) {
        self.conn = c as usize;
    }

    #[inline(always)]
    pub fn record(&self, stats: &mut CounterSet) {
        if let Some(v) = stats.values.get_mut(self.conn) {
            *v += 1;
        }
        if self.icmp_forwarded {
            bump(stats, Counter::IcmpForwarded);
        }
    }
}

#[inline(always)]
fn bump(stats: &mut CounterSet, c: Counter) {
    if let Some(v) = stats.values.get_mut(c as usize) {
        *v += 1;
    }
}
