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

#[inline(always)]
pub fn bump(stats: &mut CounterSet, c: Counter) {
    if let Some(v) = stats.values.get_mut(c as usize) {
        *v += 1;
    }
}
