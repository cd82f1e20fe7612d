//! A loaded `xdp-lb` with its maps under the controller's writer, driven frame by
//! frame through BPF_PROG_TEST_RUN.

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    BackendState, Counter, CounterSet, FlowKey, ForwardingMode, LbConfig, Traffic, VipKey,
    bench::Script, family, hash::flow_hash, limits::RING_SIZE, map_names, proto,
};
use lb_userspace::{
    desired::{DesiredBackend, DesiredState, DesiredVip, addr_words},
    maps::BpfMaps,
    objects,
    stats::{BpfStats, HandshakeCounters as _, Stats as _},
    sync::{exceptions::Identity, wire::Entry},
    writer::{Applied, MapWriter},
};

use crate::packet::{Decoded, Flow, L4, LB_MAC, Outer, decode};

/// XDP actions, as the programs return them (the kernel's `enum xdp_action`).
pub use aya_ebpf_bindings::bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX};

pub const MTU: u32 = 1500;
const TIMED: &str = "xdp_lb_timed";
/// The fixtures' flow-hash seed (any but the public one).
pub const SEED: lb_common::hash::Seed = [0x1234_5678, 0x9abc_def0, 0x0fed_cba9, 0x8765_4321];
pub const TUNNEL_V4: &str = "10.0.0.2";
pub const TUNNEL_V6: &str = "fd00::2";

/// Output of one run.
#[derive(Debug, Clone)]
pub struct Run {
    pub action: u32,
    pub frame: Vec<u8>,
}

impl Run {
    #[must_use]
    pub fn decoded(&self) -> Decoded {
        decode(&self.frame)
    }
}

pub struct Balancer {
    ebpf: Ebpf,
    pub writer: MapWriter<BpfMaps>,
    pub stats: BpfStats,
    pub plan: DesiredState,
}

/// MAC of a test backend: derived from its address so tests can tell who got a frame.
#[must_use]
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let last = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [0x02, 0, 0, 0, 0x01, last]
}

#[must_use]
pub fn backend(name: &str, addr: &str) -> DesiredBackend {
    let address: IpAddr = addr.parse().expect("backend address");
    DesiredBackend {
        name: name.to_owned(),
        address,
        mac: Some(backend_mac(address)),
        weight: 100,
        state: BackendState::Up,
        flags: 0,
    }
}

#[must_use]
pub fn vip(name: &str, addr: &str, port: u16, l4: u8, backends: Vec<DesiredBackend>) -> DesiredVip {
    DesiredVip {
        name: name.to_owned(),
        address: addr.parse().expect("vip address"),
        port,
        proto: l4,
        backends,
    }
}

pub const VIP4: &str = "203.0.113.10";
pub const VIP6: &str = "2001:db8::10";
pub const WILDCARD_VIP4: &str = "203.0.113.20";
pub const MIXED_VIP4: &str = "203.0.113.30";
pub const MIXED_VIP6: &str = "2001:db8::30";

fn wafs4() -> Vec<DesiredBackend> {
    vec![
        backend("waf-1", "10.0.0.11"),
        backend("waf-2", "10.0.0.12"),
        backend("waf-3", "10.0.0.13"),
    ]
}

fn wafs6() -> Vec<DesiredBackend> {
    vec![backend("waf-1", "fd00::11"), backend("waf-2", "fd00::12"), backend("waf-3", "fd00::13")]
}

/// The fixtures' balancer: TCP and UDP VIPs on v4 and v6 with three backends each,
/// a wildcard-port VIP, and two VIPs whose backend is of the other family.
#[must_use]
pub fn standard_plan(mode: ForwardingMode) -> DesiredState {
    let v4: std::net::Ipv4Addr = TUNNEL_V4.parse().expect("v4");
    let (v6, _) = addr_words(TUNNEL_V6.parse().expect("v6"));
    DesiredState {
        config: LbConfig {
            mode: mode as u32,
            mtu: MTU,
            src_mac: LB_MAC,
            _pad: [0; 2],
            tunnel_src_v4: u32::from_ne_bytes(v4.octets()),
            tunnel_src_v6: v6,
            hash_seed: SEED,
            accept_macs: lb_common::config::accept_macs(LB_MAC, &[]),
            // The IPv4 table's own: stamped by `BpfMaps` (`flows4::Index`).
            flow_sets_mask: 0,
            flow_seed: [0; 4],
        },
        vips: vec![
            vip("web4", VIP4, 80, proto::TCP, wafs4()),
            vip("dns4", VIP4, 53, proto::UDP, wafs4()),
            vip("web6", VIP6, 80, proto::TCP, wafs6()),
            vip("dns6", VIP6, 53, proto::UDP, wafs6()),
            vip("any4", WILDCARD_VIP4, 0, proto::TCP, wafs4()),
            vip("mixed4", MIXED_VIP4, 80, proto::TCP, vec![backend("v6-node", "fd00::21")]),
            vip("mixed6", MIXED_VIP6, 80, proto::TCP, vec![backend("v4-node", "10.0.0.31")]),
        ],
    }
}

/// The fixtures' `conn_table_size`: a small table (tests use few flows), which a
/// benchmark's stream of new flows keeps full, so every insert evicts.
pub const FIXTURE_CONNS: u32 = 8192;

impl Balancer {
    /// Loads `xdp-lb` (a small connection table: tests use few flows) with no state.
    #[must_use]
    pub fn empty() -> Self {
        Self::empty_of(objects::XDP_LB)
    }

    /// [`Balancer::empty`] of another xdp-lb object (a scratch build, for an A/B
    /// benchmark); its maps must be the ones this tree's lb-common describes.
    #[must_use]
    pub fn empty_of(object: &[u8]) -> Self {
        Self::empty_sized(object, FIXTURE_CONNS)
    }

    /// [`Balancer::empty_of`] with the connection tables the controller sizes from
    /// `conn_table_size: conns` (a benchmark's choice; tests take the fixtures').
    #[must_use]
    pub fn empty_sized(object: &[u8], conns: u32) -> Self {
        let mut loader = EbpfLoader::new();
        for (name, entries) in lb_userspace::conn_table::Configured::of(conns).max_entries() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(object).expect("loading the xdp-lb object");
        let prog: &mut Xdp =
            ebpf.program_mut("xdp_lb").expect("xdp_lb program").try_into().expect("an XDP program");
        prog.load().expect("the verifier accepts xdp_lb");
        let maps = BpfMaps::take_from(&mut ebpf).expect("xdp-lb maps");
        let stats = BpfStats::take_from(&mut ebpf).expect("xdp-lb statistics maps");
        Self { ebpf, writer: MapWriter::new(maps), stats, plan: DesiredState::default() }
    }

    /// The standard plan, applied.
    #[must_use]
    pub fn new(mode: ForwardingMode) -> Self {
        Self::new_of(objects::XDP_LB, mode)
    }

    /// [`Balancer::new`] of another xdp-lb object (see [`Balancer::empty_of`]).
    #[must_use]
    pub fn new_of(object: &[u8], mode: ForwardingMode) -> Self {
        Self::new_sized(object, mode, FIXTURE_CONNS)
    }

    /// [`Balancer::new_of`] with the connection tables of [`Balancer::empty_sized`].
    #[must_use]
    pub fn new_sized(object: &[u8], mode: ForwardingMode, conns: u32) -> Self {
        let mut b = Self::empty_sized(object, conns);
        b.plan = standard_plan(mode);
        b.apply();
        b
    }

    pub fn apply(&mut self) -> Applied {
        self.writer.apply(&self.plan).expect("applying the plan")
    }

    /// Sets a backend's state in every VIP it serves, and applies.
    pub fn set_state(&mut self, vip_name: &str, backend_name: &str, state: BackendState) {
        let v = self.plan.vips.iter_mut().find(|v| v.name == vip_name).expect("vip");
        v.backends.iter_mut().find(|b| b.name == backend_name).expect("backend").state = state;
        self.apply();
    }

    /// A handle of the map `name` the loaded program uses.
    #[must_use]
    pub fn map(&self, name: &str) -> MapData {
        let ids = self.program().info().expect("program info").map_ids().expect("map ids");
        let id = ids
            .unwrap_or_default()
            .into_iter()
            .find(|id| {
                aya::maps::MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(name))
            })
            .unwrap_or_else(|| panic!("xdp_lb uses no map {name}"));
        MapData::from_id(id).expect("opening the map")
    }

    /// A mapping of the IPv4 connection table (`FLOWS4`).
    #[must_use]
    pub fn flows4(&self) -> lb_userspace::flows4::Flows4 {
        self.writer.maps().flows4().expect("mapping FLOWS4")
    }

    #[must_use]
    pub fn program(&self) -> &Xdp {
        self.ebpf.program("xdp_lb").expect("xdp_lb").try_into().expect("xdp")
    }

    /// Loads `xdp_lb_timed` (`xdp_lb` behind the benchmarks' frame restore,
    /// `lb_ebpf::timed`; see [`Balancer::timed_program`]) and returns the map of
    /// the script it replays.
    pub fn load_timed(&mut self) -> Array<MapData, Script> {
        let prog: &mut Xdp =
            self.ebpf.program_mut(TIMED).expect(TIMED).try_into().expect("an XDP program");
        prog.load().expect("the verifier accepts xdp_lb_timed");
        let map = self.ebpf.take_map(map_names::BENCH_SCRIPT).expect("BENCH_SCRIPT");
        Array::try_from(map).expect("an array")
    }

    /// Attaches `xdp_lb_timed` to `interface` in generic mode (see
    /// `bench::xdp::timed::Dispatcher`: it keeps the program in the XDP dispatcher).
    pub fn attach_timed(&mut self, interface: &str) -> anyhow::Result<()> {
        let prog: &mut Xdp = self.ebpf.program_mut(TIMED).expect(TIMED).try_into()?;
        prog.attach(interface, aya::programs::XdpMode::Skb)?;
        Ok(())
    }

    /// `xdp_lb_timed`, once [`Balancer::load_timed`] loaded it.
    #[must_use]
    pub fn timed_program(&self) -> &Xdp {
        self.ebpf.program(TIMED).expect(TIMED).try_into().expect("xdp")
    }

    /// One frame through the program.
    #[must_use]
    pub fn run(&self, frame: &[u8]) -> Run {
        run_program(self.program(), frame)
    }

    #[must_use]
    pub fn counters(&self) -> CounterSet {
        self.stats.counters().expect("reading counters")
    }

    /// Runs a frame and returns the counters it moved (name -> delta), zero ones left out.
    #[must_use]
    pub fn run_counted(&self, frame: &[u8]) -> (Run, BTreeMap<&'static str, u64>) {
        let before = self.counters();
        let run = self.run(frame);
        (run, deltas(&before, &self.counters()))
    }

    #[must_use]
    pub fn vip_traffic(&self, vip_name: &str) -> Traffic {
        let i = self.writer.vip_index(vip_name).expect("vip index");
        self.stats.vip_traffic(i).expect("vip traffic")
    }

    #[must_use]
    pub fn backend_traffic(&self, vip_name: &str, backend_name: &str) -> Traffic {
        let i = self.writer.backend_index(vip_name, backend_name).expect("backend index");
        self.stats.backend_traffic(i).expect("backend traffic")
    }

    #[must_use]
    pub fn handshakes(&self, vip_name: &str, backend_name: &str) -> lb_common::Handshakes {
        let i = self.writer.backend_index(vip_name, backend_name).expect("backend index");
        self.stats.handshakes(i).expect("backend handshakes")
    }

    /// Which backend a forwarded frame was sent to: by outer destination (ipip)
    /// or destination MAC (dsr).
    #[must_use]
    pub fn receiver(&self, run: &Run) -> String {
        assert_eq!(run.action, XDP_TX, "frame was not forwarded");
        let d = run.decoded();
        let by = |pred: &dyn Fn(&DesiredBackend) -> bool| {
            self.plan
                .vips
                .iter()
                .flat_map(|v| &v.backends)
                .find(|b| pred(b))
                .map(|b| b.name.clone())
                .expect("frame went to no known backend")
        };
        match d.outer {
            Some(Outer::V4(h)) => by(&|b| b.address == IpAddr::from(h.destination)),
            Some(Outer::V6(h)) => by(&|b| b.address == IpAddr::from(h.destination)),
            None => by(&|b| b.mac == Some(d.dst_mac)),
        }
    }

    /// The backend the ring of `vip_name` gives `flow`, computed in userspace from the
    /// written table and the shared flow hash (what a miss or a SYN must pick).
    #[must_use]
    pub fn predict(&self, vip_name: &str, flow: &Flow) -> String {
        let table = self.writer.table(vip_name).expect("vip table");
        let index =
            table[(flow_hash(&flow_key(flow), &self.plan.config.hash_seed) % RING_SIZE) as usize];
        let v = self.plan.vips.iter().find(|v| v.name == vip_name).expect("vip");
        v.backends
            .iter()
            .find(|b| self.writer.backend_index(vip_name, &b.name) == Some(index))
            .map(|b| b.name.clone())
            .expect("ring slot names a backend of this vip")
    }

    #[must_use]
    pub fn conn(&self, flow: &Flow) -> Option<lb_common::ConnValue> {
        self.writer.maps().conn(&flow_key(flow)).expect("reading conns")
    }
}

/// Runs `frame` through an XDP program once.
#[must_use]
pub fn run_program(prog: &Xdp, frame: &[u8]) -> Run {
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    Run { action: r.return_value, frame: out }
}

/// The connection-table key of a client flow.
#[must_use]
pub fn flow_key(flow: &Flow) -> FlowKey {
    let (src, fam) = addr_words(flow.src);
    let (dst, _) = addr_words(flow.dst);
    FlowKey {
        src,
        dst,
        ports: [flow.sport.to_be(), flow.dport.to_be()],
        proto: if matches!(flow.l4, L4::Udp) { proto::UDP } else { proto::TCP },
        family: if fam == family::V4 { family::V4 } else { family::V6 },
        _pad: [0; 2],
    }
}

/// A peer-sync exception as a peer sends it: `flow` (to a VIP on the flow's own
/// port) held by `backend`.
#[must_use]
pub fn sync_entry(flow: &Flow, backend: IpAddr) -> Entry {
    let key = flow_key(flow);
    let vip = VipKey { addr: key.dst, port: key.ports[1], proto: key.proto, family: key.family };
    Entry { flow: key, id: Identity { vip, backend } }
}

#[must_use]
pub fn deltas(before: &CounterSet, after: &CounterSet) -> BTreeMap<&'static str, u64> {
    Counter::ALL
        .iter()
        .filter_map(|&c| {
            let d = after.get(c) - before.get(c);
            (d != 0).then_some((c.name(), d))
        })
        .collect()
}

/// Expected counter deltas, for comparing with `run_counted`.
#[must_use]
pub fn counts(list: &[(Counter, u64)]) -> BTreeMap<&'static str, u64> {
    list.iter().map(|(c, n)| (c.name(), *n)).collect()
}
