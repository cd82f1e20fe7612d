//! Which connection-table entries are exceptions: entries whose backend is not
//! what the VIP's ring picks for the flow now (the ring moved under an
//! established flow, or its backend drains or waits outside the ring). Only
//! these need to reach a peer: every other flow lands on the same backend through
//! any balancer with the same config.
//!
//! Pure: a [`View`] of the rings and backends as the writer wrote them, and
//! entries in; no map is read here. The pick is the data path's own
//! (`lb_common::hash::flow_hash` modulo `RING_SIZE`, the VIP found by exact port
//! then the port-0 wildcard), never a second copy of it.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use lb_common::{
    BackendState, ConnValue, FlowKey, VipKey,
    hash::{Seed, flow_hash},
    limits::RING_SIZE,
};

/// A backend as a peer names it: its VIP's key and its address, never a
/// backend-table index (each balancer allocates its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub vip: VipKey,
    pub backend: IpAddr,
}

/// One VIP as the data path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewVip {
    /// The ring in use: `RING_SIZE` backend-table indices (or `NO_BACKEND`).
    pub ring: Arc<[u32]>,
}

/// One backend-table entry as the data path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewBackend {
    pub vip: VipKey,
    pub address: IpAddr,
    pub generation: u32,
    pub state: BackendState,
}

/// The rings and backends the exception rule reads, as written to the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub seed: Seed,
    pub vips: HashMap<VipKey, ViewVip>,
    pub backends: HashMap<u32, ViewBackend>,
}

impl View {
    /// The VIP the data path finds for `flow`: its port, else the port-0 wildcard.
    #[must_use]
    pub fn vip_of(&self, flow: &FlowKey) -> Option<(VipKey, &ViewVip)> {
        let exact =
            VipKey { addr: flow.dst, port: flow.ports[1], proto: flow.proto, family: flow.family };
        let wildcard = VipKey { port: 0, ..exact };
        [exact, wildcard].into_iter().find_map(|k| self.vips.get(&k).map(|v| (k, v)))
    }

    /// The backend index the ring picks for `flow` of `vip`.
    #[must_use]
    pub fn pick(&self, vip: &ViewVip, flow: &FlowKey) -> Option<u32> {
        vip.ring.get((flow_hash(flow, &self.seed) % RING_SIZE) as usize).copied()
    }

    /// The identity of `conn`'s backend if the entry is an exception: it names a
    /// live entry of the flow's VIP (the data path would use it) that the ring
    /// does not pick. An entry the data path would re-hash anyway (its backend is
    /// down or its slot was given to another backend since) is none.
    #[must_use]
    pub fn exception(&self, flow: &FlowKey, conn: &ConnValue) -> Option<Identity> {
        let b = self.backends.get(&conn.backend)?;
        if b.generation != conn.generation || b.state == BackendState::Down {
            return None;
        }
        let (key, vip) = self.vip_of(flow)?;
        if b.vip != key || self.pick(vip, flow) == Some(conn.backend) {
            return None;
        }
        Some(Identity { vip: key, backend: b.address })
    }

    /// The entry a peer's exception becomes here: this balancer's index and
    /// current generation of the backend with that identity, if it has one that
    /// is not down.
    #[must_use]
    pub fn local(&self, id: &Identity) -> Option<ConnValue> {
        self.backends
            .iter()
            .filter(|(_, b)| b.vip == id.vip && b.address == id.backend)
            .find(|(_, b)| b.state != BackendState::Down)
            .map(|(index, b)| ConnValue { backend: *index, generation: b.generation })
    }
}

/// This balancer's exceptions: flow -> (the entry it has, its backend's identity).
pub type Exceptions = HashMap<FlowKey, (ConnValue, Identity)>;

/// Adds the exceptions among `entries` (a connection table read) to `into`,
/// leaving out flows `skip` names (peers' entries installed here: they are the
/// peers' to send, and sending them back would keep them alive forever).
pub fn find(
    view: &View,
    entries: impl IntoIterator<Item = (FlowKey, ConnValue)>,
    skip: impl Fn(&FlowKey) -> bool,
    into: &mut Exceptions,
) {
    for (flow, conn) in entries {
        if let Some(id) = view.exception(&flow, &conn)
            && !skip(&flow)
        {
            into.insert(flow, (conn, id));
        }
    }
}

/// Keeps `set` current without reading the whole table: each exception is looked
/// up again (`lookup`: its entry now) and stays while its entry is there and still
/// an exception. Cost: one lookup per exception. True when the set changed.
pub fn recheck(
    view: &View,
    set: &mut Exceptions,
    lookup: impl Fn(&FlowKey) -> Option<ConnValue>,
) -> bool {
    let before = set.len();
    let mut changed = false;
    set.retain(|flow, (conn, id)| {
        let Some(now) = lookup(flow) else { return false };
        match view.exception(flow, &now) {
            Some(new_id) => {
                changed |= now != *conn || new_id != *id;
                (*conn, *id) = (now, new_id);
                true
            }
            None => false,
        }
    });
    changed || set.len() != before
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::{family, proto};

    use super::*;
    use crate::{
        desired::addr_words,
        maglev::{self, Member},
    };

    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    fn vip_key() -> VipKey {
        let (addr, family) = addr_words(VIP.into());
        VipKey { addr, port: 443u16.to_be(), proto: proto::TCP, family }
    }

    fn backend(i: u32) -> ViewBackend {
        ViewBackend {
            vip: vip_key(),
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8)),
            generation: 1,
            state: BackendState::Up,
        }
    }

    /// Backends 0..4 (index = i), the ring built from those in `ring`.
    fn view(ring: &[u32]) -> View {
        let ids: Vec<String> = (0..4).map(|i| format!("waf-{i}/10.0.0.{}", 10 + i)).collect();
        let members: Vec<Member<'_>> =
            ring.iter().map(|&i| Member { id: &ids[i as usize], weight: 1, value: i }).collect();
        let mut v = View { seed: [1, 2, 3, 4], ..View::default() };
        v.vips.insert(vip_key(), ViewVip { ring: maglev::build(&members, RING_SIZE).into() });
        for i in 0..4 {
            v.backends.insert(i, backend(i));
        }
        v
    }

    fn flow(port: u16) -> FlowKey {
        let (dst, _) = addr_words(VIP.into());
        FlowKey {
            src: [u32::from_ne_bytes([192, 0, 2, 7]), 0, 0, 0],
            dst,
            ports: [port.to_be(), 443u16.to_be()],
            proto: proto::TCP,
            family: family::V4,
            _pad: [0; 2],
        }
    }

    /// A table as the data path fills it under `v`: each flow on its ring pick.
    fn table(v: &View, n: u16) -> Vec<(FlowKey, ConnValue)> {
        (1..=n)
            .map(|p| {
                let f = flow(p);
                let (_, vip) = v.vip_of(&f).unwrap();
                (f, ConnValue { backend: v.pick(vip, &f).unwrap(), generation: 1 })
            })
            .collect()
    }

    fn exceptions(v: &View, entries: &[(FlowKey, ConnValue)]) -> Exceptions {
        let mut set = Exceptions::new();
        find(v, entries.iter().copied(), |_| false, &mut set);
        set
    }

    #[test]
    fn a_table_that_follows_the_ring_has_no_exception() {
        let v = view(&[0, 1, 2]);
        assert!(exceptions(&v, &table(&v, 2000)).is_empty());
    }

    #[test]
    fn flows_whose_slots_moved_to_a_returning_backend_are_exceptions() {
        let before = view(&[0, 1, 2]);
        let entries = table(&before, 2000);
        let after = view(&[0, 1, 2, 3]); // backend 3 came back
        let set = exceptions(&after, &entries);
        // Exactly the flows the new ring sends elsewhere, named by identity.
        let moved: Vec<&FlowKey> = entries
            .iter()
            .filter(|(f, c)| after.pick(after.vip_of(f).unwrap().1, f) != Some(c.backend))
            .map(|(f, _)| f)
            .collect();
        assert_eq!(set.len(), moved.len());
        assert!((350..650).contains(&set.len()), "about 1/4 of 2000: {}", set.len());
        for f in moved {
            let (conn, id) = set[f];
            assert_eq!(id, Identity { vip: vip_key(), backend: backend(conn.backend).address });
        }
    }

    #[test]
    fn every_flow_of_a_draining_backend_is_an_exception() {
        let before = view(&[0, 1, 2]);
        let entries = table(&before, 2000);
        let mut after = view(&[0, 2]);
        after.backends.get_mut(&1).unwrap().state = BackendState::Draining;
        let set = exceptions(&after, &entries);
        let on_1 = entries.iter().filter(|(_, c)| c.backend == 1).count();
        assert!(on_1 > 0);
        assert_eq!(set.values().filter(|(c, _)| c.backend == 1).count(), on_1);
    }

    #[test]
    fn entries_the_data_path_would_rehash_are_not_exceptions() {
        let before = view(&[0, 1, 2]);
        let entries = table(&before, 2000);
        // Backend 1 down: out of the ring and its flows move at once.
        let mut down = view(&[0, 2]);
        down.backends.get_mut(&1).unwrap().state = BackendState::Down;
        assert!(exceptions(&down, &entries).values().all(|(c, _)| c.backend != 1));
        // Slot 1 given to another backend: the old entries' generation is stale.
        let mut reused = view(&[0, 2]);
        reused.backends.get_mut(&1).unwrap().generation = 2;
        assert!(exceptions(&reused, &entries).values().all(|(c, _)| c.backend != 1));
        // A flow to no VIP.
        let mut stray = entries[0];
        stray.0.ports[1] = 80u16.to_be();
        assert!(exceptions(&before, &[stray]).is_empty());
    }

    #[test]
    fn recheck_drops_exceptions_that_ended_or_that_the_ring_agrees_with_again() {
        let before = view(&[0, 1, 2]);
        let entries = table(&before, 2000);
        let after = view(&[0, 1, 2, 3]);
        let mut set = exceptions(&after, &entries);
        let n = set.len();
        let table: HashMap<FlowKey, ConnValue> = entries.iter().copied().collect();
        assert!(!recheck(&after, &mut set, |f| table.get(f).copied()), "nothing changed");
        assert_eq!(set.len(), n);
        // One entry left the table (LRU): it is no exception any more.
        let gone = *set.keys().next().unwrap();
        assert!(recheck(&after, &mut set, |f| (*f != gone).then(|| table[f])));
        assert_eq!(set.len(), n - 1);
        // Backend 3 failed again: the ring is the old one, every exception ends.
        assert!(recheck(&before, &mut set, |f| table.get(f).copied()));
        assert!(set.is_empty());
    }

    #[test]
    fn peers_entries_are_left_out_and_mapped_by_identity_to_local_indices() {
        let before = view(&[0, 1, 2]);
        let entries = table(&before, 500);
        let after = view(&[0, 1, 2, 3]);
        let mut set = Exceptions::new();
        let peer: FlowKey = exceptions(&after, &entries).into_keys().next().unwrap();
        find(&after, entries.iter().copied(), |f| *f == peer, &mut set);
        assert!(!set.contains_key(&peer));
        // Another balancer allocated other indices and generations.
        let mut here = View::default();
        for (i, b) in [(7, backend(2)), (9, backend(1))] {
            here.backends.insert(i, ViewBackend { generation: 5, ..b });
        }
        let id = Identity { vip: vip_key(), backend: backend(1).address };
        assert_eq!(here.local(&id), Some(ConnValue { backend: 9, generation: 5 }));
        here.backends.get_mut(&9).unwrap().state = BackendState::Down;
        assert_eq!(here.local(&id), None, "a backend down here gets nothing");
        let other_vip = Identity { vip: VipKey { port: 80, ..vip_key() }, ..id };
        assert_eq!(here.local(&other_vip), None);
    }
}
