//! The packet-rate rig of `bench live` and `bench conntrack`: two namespaces of
//! their own (never the lab's), one veth pair, and a traffic generator driven by
//! BPF_PROG_TEST_RUN in live-frames mode.
//!
//! ```text
//!   xbench-gen                                  xbench-dut
//!   gen0 [xdp_count: counts, drops]  <------>  lb0 [program under test]
//!     ^ xdp_gen frames (test run, ingress gen0, XDP_TX = out of gen0)
//! ```
//!
//! The generator's frames leave gen0 and arrive on lb0, where the program under
//! test forwards them back out of lb0 (XDP_TX, or the kernel's forwarding for the
//! nftables peer) to gen0, whose `xdp_count` counts and drops them. Every frame is
//! handled on the generator's CPU: the test run flushes each batch of 64 and the
//! veths' NAPI polls run when it re-enables bottom halves, so one pinned CPU does
//! generator + forwarder + sink, for every case alike.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLink},
};
use lb_common::{
    BackendState, ForwardingMode, LbConfig, Traffic,
    generator::{FRAME_LEN, GenConfig},
    map_names, proto,
};
use lb_userspace::{
    desired::{DesiredBackend, DesiredState, DesiredVip, addr_words},
    interface, mac,
    maps::BpfMaps,
    objects,
    stats::BpfStats,
    writer::MapWriter,
};

use crate::{
    lab::{
        in_netns,
        sh::{cmd, ns_sh, quietly, sh},
    },
    packet::{CLIENT_MAC, Flow, LB_MAC},
};

pub const NS_GEN: &str = "xbench-gen";
pub const NS_DUT: &str = "xbench-dut";
pub const GEN_IF: &str = "gen0";
pub const DUT_IF: &str = "lb0";
/// gen0 carries the fixtures' client MAC, lb0 the balancer's: generated frames are
/// addressed to lb0, so the kernel peer accepts them too.
pub const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
pub const DUT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The VIP (RFC 2544 benchmarking range, like every address here).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 1);
/// Flow 0's source; flow `i` adds `i / ports` to the address's low half and `i % ports` to the port.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_PORT: u16 = 10_000;
pub const BACKENDS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(198, 19, 1, 11), Ipv4Addr::new(198, 19, 1, 12), Ipv4Addr::new(198, 19, 1, 13)];
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
/// Frames per test-run syscall, and frames per batch (the kernel's flush unit).
const CHUNK: u32 = 1 << 18;
const BATCH: u32 = 64;

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP ACKs (established flows: the connection-table hit).
    Tcp,
    /// UDP datagrams.
    Udp,
    /// TCP SYNs (new connections: the ring and the SYN array; `Tcp` after them
    /// completes the handshakes).
    Syn,
}

impl L4 {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Syn => "TCP SYN",
        }
    }
}

/// The frame of flow 0 (64 bytes on the wire with the FCS).
#[must_use]
pub fn template(l4: L4) -> [u8; FRAME_LEN] {
    template_from(l4, CLIENT)
}

/// [`template`] from `source` (and [`CLIENT_PORT`]).
#[must_use]
pub fn template_from(l4: L4, source: Ipv4Addr) -> [u8; FRAME_LEN] {
    let (src, dst) = (source.to_string(), VIP.to_string());
    let mut f = match l4 {
        L4::Tcp => Flow::tcp(&src, CLIENT_PORT, &dst, TCP_PORT).ack().payload(0).frame(),
        L4::Udp => Flow::udp(&src, CLIENT_PORT, &dst, UDP_PORT).payload(18).frame(),
        L4::Syn => Flow::tcp(&src, CLIENT_PORT, &dst, TCP_PORT).syn().payload(0).frame(),
    };
    // Ethernet padding: the IP total length still says 40 (TCP) or 46 (UDP) bytes.
    f.resize(FRAME_LEN, 0);
    f.try_into().expect("a 60-byte frame")
}

/// Source ports per source address for `flows` flows (addresses then step in the
/// low half of the address; flows beyond 2^14 use several addresses).
#[must_use]
pub fn ports_for(flows: u32) -> u32 {
    flows.clamp(1, 1 << 14)
}

/// Frames counted by the sink and time spent sending them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the generator sent (test-run repeats).
    pub frames: u64,
    /// Wall-clock time of the sending loop.
    pub wall: Duration,
    /// CPU time spent on it: the generator thread's (which includes the NAPI polls
    /// run when it re-enables bottom halves) plus the pinned CPU's ksoftirqd (polls
    /// the kernel deferred). Time lost to other processes is in `wall` only.
    pub cpu: Duration,
}

/// The namespaces, the veth pair, the generator and the sink. Dropping it removes
/// both namespaces (and with them the veths and every attachment).
pub struct Pair {
    tools: Ebpf,
    gen_ifindex: u32,
    cpu: usize,
    _sink: XdpLink,
    /// [`LOCK_FILE`], held while the namespaces live (dropped after them: fields
    /// drop after `Drop::drop` removed the namespaces).
    _lock: std::fs::File,
}

/// Held while a [`Pair`] lives: the namespaces have fixed names, so a second bench
/// (another helper's `bench live` or `bench conntrack`) waits instead of removing
/// them under the first.
pub const LOCK_FILE: &str = "/run/xdplb-xbench.lock";

impl Pair {
    /// Builds the rig (removing a leftover one first). The generator runs pinned to
    /// the last CPU.
    pub fn up() -> Result<Self> {
        let lock = crate::lab::lock_file(LOCK_FILE)?;
        remove()?;
        let built = build();
        if let Err(e) = built {
            let _ = remove();
            return Err(e.context("building the xbench namespaces"));
        }
        let mut tools = Ebpf::load(objects::XDP_TOOLS).context("loading xdp-tools")?;
        for name in ["xdp_gen", "xdp_count", "xdp_mac_swap", "xdp_ipip_floor", "xdp_pass"] {
            let p: &mut Xdp =
                tools.program_mut(name).with_context(|| format!("no {name}"))?.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let sink: &mut Xdp = tools.program_mut("xdp_count").context("xdp_count")?.try_into()?;
        let sink = attach(sink, NS_GEN, GEN_IF)?;
        let gen_ifindex = in_netns(Some(NS_GEN), || {
            interface::index(GEN_IF).with_context(|| format!("no interface {GEN_IF}"))
        })?;
        let cpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1;
        Ok(Self { tools, gen_ifindex, cpu, _sink: sink, _lock: lock })
    }

    /// A tools program (`xdp_mac_swap`, `xdp_ipip_floor`, `xdp_pass`) attached to lb0
    /// until the link drops.
    pub fn attach_tool(&mut self, name: &str) -> Result<XdpLink> {
        let p: &mut Xdp =
            self.tools.program_mut(name).with_context(|| format!("no {name}"))?.try_into()?;
        attach(p, NS_DUT, DUT_IF)
    }

    /// Frames `xdp_count` on gen0 has received so far.
    pub fn received(&self) -> Result<u64> {
        let map: PerCpuArray<_, Traffic> = PerCpuArray::try_from(
            self.tools.map(map_names::SINK_STATS).context(map_names::SINK_STATS)?,
        )?;
        Ok(map.get(&0, 0)?.iter().map(|t| t.packets).sum())
    }

    /// Sends `l4` frames over `flows` flows for about `duration`, from the
    /// generator's pinned CPU; returns what it sent.
    pub fn send(&mut self, l4: L4, flows: u32, duration: Duration) -> Result<Sent> {
        self.send_from(l4, CLIENT, flows, duration)
    }

    /// [`Pair::send`] with flow 0 from `source`: flow `i` adds `i / ports` to its
    /// address, which stays in `source`'s /16 (the generator steps the low half).
    pub fn send_from(
        &mut self,
        l4: L4,
        source: Ipv4Addr,
        flows: u32,
        duration: Duration,
    ) -> Result<Sent> {
        let frame = template_from(l4, source);
        let ports = ports_for(flows);
        let low = u32::from(source) & 0xffff;
        ensure!(
            u32::from(CLIENT_PORT) + ports <= 65_536 && low + flows.div_ceil(ports) <= 0xffff,
            "{flows} flows from {source} do not fit the generator's port and address ranges"
        );
        let config = GenConfig::new(&frame, flows, ports, l4 != L4::Udp);
        let mut map: Array<_, GenConfig> = Array::try_from(
            self.tools.map_mut(map_names::GEN_CONFIG).context(map_names::GEN_CONFIG)?,
        )?;
        map.set(0, config, 0).context("writing GEN_CONFIG")?;
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: Vec<u8> = [0, frame.len() as u32, 0, self.gen_ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let program: &Xdp = self.tools.program("xdp_gen").context("xdp_gen")?.try_into()?;
        let cpu = self.cpu;
        let ksoftirqd = ksoftirqd(cpu)?;
        in_netns(Some(NS_GEN), || {
            pin_to_cpu(cpu)?;
            let deferred = runtime(ksoftirqd)?;
            let own = thread_cpu();
            let start = Instant::now();
            let mut frames = 0u64;
            while start.elapsed() < duration {
                program
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&md),
                        repeat: CHUNK,
                        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..TestRunOptions::new()
                    })
                    .context("BPF_PROG_TEST_RUN (live frames)")?;
                frames += u64::from(CHUNK);
            }
            let wall = start.elapsed();
            let cpu =
                thread_cpu().saturating_sub(own) + runtime(ksoftirqd)?.saturating_sub(deferred);
            Ok(Sent { frames, wall, cpu })
        })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Err(e) = remove() {
            eprintln!("removing the xbench namespaces failed: {e:#}");
        }
    }
}

/// `xdp_lb` with its maps under the controller's writer, as `xdplb run` loads it
/// (default map sizes: a 2^20-entry connection table), for the VIP below.
pub struct Lb {
    ebpf: Ebpf,
    pub writer: MapWriter<BpfMaps>,
    pub stats: BpfStats,
}

impl Lb {
    pub fn new(mode: ForwardingMode) -> Result<Self> {
        Self::new_of(objects::XDP_LB, mode, None)
    }

    /// [`Lb::new`] of another xdp-lb object (`bench live --object`): its maps must be
    /// the ones this tree's lb-common describes, as the writer fills them.
    pub fn new_of(object: &[u8], mode: ForwardingMode, conns: Option<u32>) -> Result<Self> {
        let mut loader = aya::EbpfLoader::new();
        if let Some(conns) = conns {
            for (name, entries) in lb_userspace::conn_table::Configured::of(conns).max_entries() {
                loader.map_max_entries(name, entries);
            }
        }
        let mut ebpf = loader.load(object).context("loading xdp-lb")?;
        let p: &mut Xdp = ebpf.program_mut("xdp_lb").context("xdp_lb")?.try_into()?;
        p.load().context("loading xdp_lb")?;
        let maps = BpfMaps::take_from(&mut ebpf)?;
        let stats = BpfStats::take_from(&mut ebpf)?;
        let mut writer = MapWriter::new(maps);
        writer.apply(&plan(mode)).context("writing the plan")?;
        Ok(Self { ebpf, writer, stats })
    }

    /// Attaches `xdp_lb` to lb0 until the link drops.
    pub fn attach(&mut self) -> Result<XdpLink> {
        let p: &mut Xdp = self.ebpf.program_mut("xdp_lb").context("xdp_lb")?.try_into()?;
        attach(p, NS_DUT, DUT_IF)
    }

    /// The `xdp_lb` program.
    pub fn program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program("xdp_lb").context("xdp_lb")?.try_into()?)
    }
}

/// One TCP and one UDP VIP over three backends whose next hop is gen0.
fn plan(mode: ForwardingMode) -> DesiredState {
    let backends: Vec<DesiredBackend> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, a)| DesiredBackend {
            name: format!("b{}", i + 1),
            address: (*a).into(),
            mac: Some(CLIENT_MAC),
            weight: 100,
            state: BackendState::Up,
            flags: 0,
        })
        .collect();
    let vip = |name: &str, port, l4| DesiredVip {
        name: name.to_owned(),
        address: VIP.into(),
        port,
        proto: l4,
        backends: backends.clone(),
    };
    let (v6, _) = addr_words(std::net::Ipv6Addr::new(0xfd00, 0xbe, 0, 0, 0, 0, 0, 1).into());
    DesiredState {
        config: LbConfig {
            mode: mode as u32,
            mtu: 1500,
            src_mac: LB_MAC,
            _pad: [0; 2],
            tunnel_src_v4: u32::from_ne_bytes(DUT_ADDR.octets()),
            tunnel_src_v6: v6,
            hash_seed: crate::balancer::SEED,
            accept_macs: lb_common::config::accept_macs(LB_MAC, &[]),
            // The IPv4 table's own: stamped by `BpfMaps` (`flows4::Index`).
            flow_sets_mask: 0,
            flow_seed: [0; 4],
        },
        vips: vec![vip("tcp", TCP_PORT, proto::TCP), vip("udp", UDP_PORT, proto::UDP)],
    }
}

/// Attaches `p` (a program loaded elsewhere: a pinned one) to lb0 until the link drops.
pub fn attach_dut(p: &mut Xdp) -> Result<XdpLink> {
    attach(p, NS_DUT, DUT_IF)
}

/// Attaches `p` in driver mode to `ifname` in namespace `ns`; the returned link
/// detaches it when dropped.
fn attach(p: &mut Xdp, ns: &str, ifname: &str) -> Result<XdpLink> {
    in_netns(Some(ns), || {
        let id = p
            .attach(ifname, XdpMode::Driver)
            .with_context(|| format!("attaching to {ifname} in {ns}"))?;
        Ok(p.take_link(id)?)
    })
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity(0) touch
    // only it and this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(anyhow!(
                "pinning the generator to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut t) };
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// The pid of `ksoftirqd/<cpu>`.
fn ksoftirqd(cpu: usize) -> Result<i32> {
    let want = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == want)
        })
        .with_context(|| format!("no {want} thread"))
}

/// Time a task has run (the first field of /proc/PID/schedstat, in ns).
fn runtime(pid: i32) -> Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = s.split_whitespace().next().context("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

/// Namespaces, veths (no TX checksum offload: forwarded frames must carry full
/// checksums), addresses, and the dut's kernel forwarding with the nftables DNAT
/// the kernel peer uses (XDP cases forward before the stack and never meet it).
fn build() -> Result<()> {
    for ns in [NS_GEN, NS_DUT] {
        sh(&["ip", "netns", "add", ns])?;
        ns_sh(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    ns_sh(
        NS_GEN,
        &["ip", "link", "add", GEN_IF, "type", "veth", "peer", "name", DUT_IF, "netns", NS_DUT],
    )?;
    for (ns, ifname, m, a) in
        [(NS_GEN, GEN_IF, CLIENT_MAC, GEN_ADDR), (NS_DUT, DUT_IF, LB_MAC, DUT_ADDR)]
    {
        ns_sh(ns, &["ip", "link", "set", ifname, "address", &mac::format(&m)])?;
        ns_sh(ns, &["ip", "addr", "add", &format!("{a}/24"), "dev", ifname])?;
        ns_sh(ns, &["ip", "link", "set", ifname, "up"])?;
        ns_sh(ns, &["ethtool", "-K", ifname, "tx", "off"])?;
    }
    let gen_addr = GEN_ADDR.to_string();
    ns_sh(
        NS_DUT,
        &[
            "ip",
            "neigh",
            "replace",
            &gen_addr,
            "lladdr",
            &mac::format(&CLIENT_MAC),
            "dev",
            DUT_IF,
            "nud",
            "permanent",
        ],
    )?;
    ns_sh(NS_DUT, &["ip", "route", "add", "198.18.0.0/15", "via", &gen_addr])?;
    ns_sh(NS_DUT, &["ip", "route", "add", "198.19.1.0/24", "via", &gen_addr])?;
    ns_sh(
        NS_DUT,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            &format!("net.ipv4.conf.{DUT_IF}.rp_filter=0"),
            "net.ipv4.conf.all.send_redirects=0",
            &format!("net.ipv4.conf.{DUT_IF}.send_redirects=0"),
        ],
    )?;
    let [b1, b2, b3] = BACKENDS;
    let rules = format!(
        "table ip xbench {{\n\
         \tchain pre {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {VIP} meta l4proto {{ tcp, udp }} dnat to jhash ip saddr . th sport mod 3 map {{ 0 : {b1}, 1 : {b2}, 2 : {b3} }}\n\
         \t}}\n\
         }}\n"
    );
    let mut c = crate::lab::sh::in_ns(NS_DUT, &["nft", "-f", "-"]);
    run_with_stdin(&mut c, &rules)
}

/// The kernel's connection-tracking entries in the dut namespace.
pub fn conntrack_count() -> Result<u64> {
    let s = ns_sh(NS_DUT, &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
    Ok(s.trim().parse()?)
}

fn run_with_stdin(c: &mut std::process::Command, input: &str) -> Result<()> {
    use std::{io::Write as _, process::Stdio};
    let line = crate::lab::sh::show(c);
    let mut child =
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes both namespaces if present (their veths and attachments go with them).
pub fn remove() -> Result<()> {
    for ns in [NS_GEN, NS_DUT] {
        if std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
            ensure!(quietly(&mut cmd(&["ip", "netns", "del", ns])), "cannot delete namespace {ns}");
        }
    }
    Ok(())
}
