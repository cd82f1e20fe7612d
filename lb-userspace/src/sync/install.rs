//! Peers' exceptions into this balancer's connection table. A peer names each
//! backend by identity (VIP and address); here it becomes this balancer's index
//! and current generation (a later reuse of the slot bumps the generation, and
//! the data path then re-hashes the entry, as for any entry). An entry the local
//! table already has is never overridden: the local data path decided it.
//! What a peer's complete snapshot no longer lists is removed, if the entry is
//! still the one installed.

use std::{collections::HashMap, hash::BuildHasher};

use lb_common::{ConnValue, FlowKey};

use super::{exceptions::View, wire::Entry};

/// The connection table as sync uses it (the kernel's `FLOWS4` and `CONNS`, or a
/// fake).
pub trait ConnTable {
    fn get(&self, flow: &FlowKey) -> Option<ConnValue>;
    /// Inserts unless the flow has an entry (`BPF_NOEXIST`); false when it had one.
    fn insert_new(&mut self, flow: &FlowKey, conn: &ConnValue) -> bool;
    /// Takes the flow out: its next packet finds no entry, on every CPU.
    fn remove(&mut self, flow: &FlowKey);
}

impl<S: BuildHasher> ConnTable for HashMap<FlowKey, ConnValue, S> {
    fn get(&self, flow: &FlowKey) -> Option<ConnValue> {
        HashMap::get(self, flow).copied()
    }
    fn insert_new(&mut self, flow: &FlowKey, conn: &ConnValue) -> bool {
        if self.contains_key(flow) {
            return false;
        }
        self.insert(*flow, *conn);
        true
    }
    fn remove(&mut self, flow: &FlowKey) {
        HashMap::remove(self, flow);
    }
}

/// What one complete snapshot changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installs {
    pub installed: usize,
    pub removed: usize,
    /// Entries naming a backend this balancer does not have (or has down).
    pub unknown_backend: usize,
    /// Flows the local table already held.
    pub present: usize,
    /// Entries over the per-peer cap.
    pub cap: usize,
}

/// Makes `installed` (what this peer's entries put in `table`) follow its
/// complete `snapshot`, holding at most `cap` entries for it.
pub fn apply<S: BuildHasher>(
    view: &View,
    table: &mut impl ConnTable,
    installed: &mut HashMap<FlowKey, ConnValue, S>,
    snapshot: &[Entry],
    cap: usize,
) -> Installs {
    let mut out = Installs::default();
    let listed: std::collections::HashSet<&FlowKey> = snapshot.iter().map(|e| &e.flow).collect();
    installed.retain(|flow, conn| {
        if listed.contains(flow) {
            return true;
        }
        // Withdrawn: gone from the peer's table, or no exception there any more.
        if table.get(flow) == Some(*conn) {
            table.remove(flow);
            out.removed += 1;
        }
        false
    });
    for e in snapshot {
        if installed.contains_key(&e.flow) {
            continue;
        }
        if installed.len() >= cap {
            out.cap += 1;
            continue;
        }
        let Some(conn) = view.local(&e.id) else {
            out.unknown_backend += 1;
            continue;
        };
        if table.insert_new(&e.flow, &conn) {
            installed.insert(e.flow, conn);
            out.installed += 1;
        } else {
            out.present += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use lb_common::BackendState;

    use super::*;
    use crate::sync::{exceptions::ViewBackend, wire::tests::entry_v};

    /// This balancer: the backend of `entry_v` at index 5, generation 3.
    fn here() -> View {
        let id = entry_v(1, false).id;
        let mut v = View::default();
        let b = ViewBackend {
            vip: id.vip,
            address: id.backend,
            generation: 3,
            state: BackendState::Up,
        };
        v.backends.insert(5, b);
        v.backends.insert(6, ViewBackend { vip: entry_v(2, false).id.vip, ..b });
        v
    }

    #[test]
    fn entries_go_in_under_the_local_index_and_generation_and_never_override() {
        let view = here();
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let mine = ConnValue { backend: 1, generation: 1 };
        table.insert(entry_v(3, false).flow, mine);
        let mut installed = HashMap::new();
        let snapshot = [entry_v(1, false), entry_v(2, false), entry_v(3, false)];
        let out = apply(&view, &mut table, &mut installed, &snapshot, 100);
        assert_eq!(out, Installs { installed: 2, present: 1, ..Installs::default() });
        assert_eq!(table[&entry_v(1, false).flow], ConnValue { backend: 5, generation: 3 });
        assert_eq!(table[&entry_v(2, false).flow], ConnValue { backend: 6, generation: 3 });
        assert_eq!(table[&entry_v(3, false).flow], mine, "the local entry stays");
        // The same snapshot again changes nothing.
        assert_eq!(apply(&view, &mut table, &mut installed, &snapshot, 100).installed, 0);
    }

    #[test]
    fn withdrawn_entries_go_unless_the_data_path_rewrote_them() {
        let view = here();
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let mut installed = HashMap::new();
        let (a, b) = (entry_v(1, false), entry_v(3, false));
        apply(&view, &mut table, &mut installed, &[a, b], 100);
        // The data path re-hashed b's flow meanwhile: that entry is its own now.
        let rehashed = ConnValue { backend: 9, generation: 1 };
        table.insert(b.flow, rehashed);
        let out = apply(&view, &mut table, &mut installed, &[], 100);
        assert_eq!(out.removed, 1);
        assert!(!table.contains_key(&a.flow));
        assert_eq!(table[&b.flow], rehashed);
        assert!(installed.is_empty());
    }

    #[test]
    fn unknown_backends_and_entries_over_the_cap_are_refused_and_counted() {
        let view = here();
        let mut table: HashMap<FlowKey, ConnValue> = HashMap::new();
        let mut installed = HashMap::new();
        let mut stranger = entry_v(1, false);
        stranger.id.backend = IpAddr::from([10, 9, 9, 9]);
        let v6 = entry_v(5, true); // no IPv6 VIP here
        let out = apply(&view, &mut table, &mut installed, &[stranger, v6], 100);
        assert_eq!(out, Installs { unknown_backend: 2, ..Installs::default() });
        assert!(table.is_empty());
        let many: Vec<Entry> = (1..=10).map(|i| entry_v(i, false)).collect();
        let out = apply(&view, &mut table, &mut installed, &many, 4);
        assert_eq!((out.installed, out.cap), (4, 6));
        assert_eq!(table.len(), 4);
    }
}
