//! `bench conntrack`: xdplb's forwarding rate as the connection table fills (1 k,
//! 256 k and 1 M concurrent flows), and the memory its maps take at the default sizes.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::MapInfo;
use lb_common::{Counter, ForwardingMode, limits::CONN_TABLE_SIZE, map_names};
use lb_userspace::stats::Stats as _;

use super::{
    progress,
    stats::{Summary, ratio, show},
    veth::{L4, Lb, Pair},
};

const FLOWS: [(u32, &str); 3] = [(1_000, "1 k"), (1 << 18, "256 k"), (1_000_000, "1 M")];
const RUNS: usize = 5;
const RUN: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Samples {
    rate: Vec<f64>,
    hit: Vec<f64>,
    /// Table entries after each warm-up, and its handshakes completed.
    entries: Vec<f64>,
    handshakes: Vec<f64>,
}

pub fn run(args: &[String]) -> Result<()> {
    let runs: usize = args.first().map_or(Ok(RUNS), |s| s.parse()).context("runs")?;
    ensure!(runs > 0, "runs must be > 0");
    let mut pair = Pair::up()?;
    let mut lb = Lb::new(ForwardingMode::Dsr)?;
    let memory = map_memory(&lb)?;
    let _link = lb.attach()?;
    let mut samples: Vec<Samples> = FLOWS.iter().map(|_| Samples::default()).collect();
    for r in 0..runs {
        for (i, &(flows, name)) in FLOWS.iter().enumerate() {
            // Warm up with real handshakes, long enough to offer every flow twice (at
            // ~3 Mpps): SYNs (the SYN array, not the table), then ACKs (the handshake's
            // ACK puts the flow in the table), so the table holds this case's flows,
            // not the previous case's, when timing starts.
            let warm = Duration::from_millis(300 + u64::from(flows) / 1500);
            let before = lb.stats.counters()?;
            pair.send(L4::Syn, flows, warm)?;
            pair.send(L4::Tcp, flows, warm)?;
            let (seen, counted) = (pair.received()?, lb.stats.counters()?);
            samples[i].handshakes.push(
                (counted.get(Counter::ConnHandshake) - before.get(Counter::ConnHandshake)) as f64,
            );
            samples[i].entries.push(table_entries(&lb)? as f64);
            let sent = pair.send(L4::Tcp, flows, RUN)?;
            let got = pair.received()? - seen;
            let after = lb.stats.counters()?;
            let d = |c: Counter| (after.get(c) - counted.get(c)) as f64;
            let s = &mut samples[i];
            s.rate.push(got as f64 / sent.cpu.as_secs_f64());
            s.hit.push(d(Counter::ConnHit) / (d(Counter::ConnHit) + d(Counter::ConnMiss)).max(1.0));
            // Rates count arrived frames; a few percent lost on a busy 2-core host is
            // noise, more means forwarding is broken.
            ensure!(
                got >= sent.frames * 90 / 100,
                "{name} flows: only {got} of {} frames arrived",
                sent.frames
            );
            progress(format_args!(
                "run {}/{runs} {name:>5} flows: {:.2} Mpps per CPU-s, {:.1}% table hits, {} \
                 entries after the warm-up's {} handshakes",
                r + 1,
                got as f64 / sent.cpu.as_secs_f64() / 1e6,
                100.0 * s.hit.last().copied().unwrap_or(0.0),
                s.entries.last().copied().unwrap_or(0.0),
                s.handshakes.last().copied().unwrap_or(0.0),
            ));
        }
    }
    drop(pair);
    report(&samples, runs, &memory);
    Ok(())
}

/// Established entries in `xdp_lb`'s IPv4 connection table now (the flows are
/// IPv4; as `xdplb status` counts them).
fn table_entries(lb: &Lb) -> Result<u64> {
    Ok(lb.writer.maps().flows4()?.count().established)
}

fn report(samples: &[Samples], runs: usize, memory: &[MapMemory]) {
    let sets = lb_common::flow_table::sets_for(CONN_TABLE_SIZE);
    println!(
        "Method: the rig of `bench live` (generator pinned to one CPU, `xdp_lb` in dsr mode on \
         `lb0`, 64-byte frames), with the generator stepping over 1 k, 256 k or 1 M flows (source \
         port, then source address) in turn. Each case first opens its flows with real \
         handshakes: SYNs over every flow (a SYN goes to the ring's pick and waits as a pending \
         way of its flow's set, or, that set full of established flows, in the SYN array, \
         {syn_slots} slots, direct-mapped: it takes no established entry), then ACKs over every \
         flow (the handshake's ACK makes the flow established where its SYN went; an ACK whose \
         SYN is no longer pending is a mid-flow pickup, hashed to the ring, and enters the table \
         too, unless every other way of its set holds an established flow); then TCP ACKs of \
         the established flows are timed. The IPv4 connection table is the default one \
         ({CONN_TABLE_SIZE} entries: {sets} sets of four ways, shared by every CPU). An \
         established flow whose set is full takes the way used longest ago by the controller's \
         clock (a pickup only a pickup's), which no controller steps here: within a set every way ties on age, so 1 M flows \
         in 1 M entries (a set's share of them overflowing its four ways) evict each other as \
         they come, the worst case for the table, not the steady state. Rates are frames per \
         CPU-second as in `bench live`; each case warms up by offering every flow twice (SYNs, \
         then ACKs), then {runs} interleaved runs of {} s. Hits are xdp_lb's own counters \
         (`conn_hit` / (`conn_hit` + `conn_miss`)); handshakes are its `conn_handshake` count \
         during the warm-up; entries are the table's established ways, counted after the \
         warm-up as `xdplb status` counts them (`lb_userspace::flows4`). Both are the first \
         run's: the table starts empty and each case's flows include the smaller case's (later \
         runs find the larger cases' flows still there).\n",
        RUN.as_secs(),
        syn_slots = lb_common::limits::SYN_SLOTS,
    );
    println!(
        "| flows | Mpps per CPU-second, median (min–max) | × 1 k flows | connection-table hits | \
         handshakes completed in the first warm-up | table entries after it |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |h| h.median);
    let first = |v: &[f64]| v.first().copied().unwrap_or(f64::NAN);
    for (s, (_, name)) in samples.iter().zip(FLOWS) {
        println!(
            "| {name} | {} | {:.2} | {:.1}% | {:.0} | {:.0} |",
            show(&s.rate.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2),
            ratio(&s.rate, &samples[0].rate),
            100.0 * median(&s.hit),
            first(&s.handshakes),
            first(&s.entries),
        );
    }
    println!();
    println!(
        "Memory of `xdp_lb`'s maps at the default sizes, as the kernel charges it (`memlock` in \
         /proc/PID/fdinfo of each map; per-CPU maps count every possible CPU):\n"
    );
    println!("| map | type | key B | value B | max entries | memory |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut total = 0;
    for m in memory {
        total += m.memlock;
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            m.name,
            m.kind,
            m.key,
            m.value,
            m.entries,
            mib(m.memlock)
        );
    }
    println!("| **total** | | | | | **{}** |", mib(total));
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

struct MapMemory {
    name: String,
    kind: String,
    key: u64,
    value: u64,
    entries: u64,
    memlock: u64,
}

/// Every map `xdp_lb` uses, with the kernel's figures from fdinfo.
/// Key and value sizes of `xdp_lb`'s map `name` from the lb-common types it is
/// declared with (none for the program's own per-packet scratch).
fn layout(name: &str) -> Option<(usize, usize, &'static str)> {
    use lb_common::{
        Backend, BackendStats, ConnValue, CounterSet, FlowKey, FlowSet, LbConfig, RingSlot,
        SynSlot, Traffic, VipKey, VipMeta, bench::Script, vip::VipAddrKey,
    };
    let index = size_of::<u32>();
    Some(match name {
        map_names::CONFIG => (index, size_of::<LbConfig>(), "u32 / LbConfig"),
        map_names::VIPS => (size_of::<VipKey>(), size_of::<VipMeta>(), "VipKey / VipMeta"),
        map_names::VIP_ADDRS => (size_of::<VipAddrKey>(), size_of::<u32>(), "VipAddrKey / u32"),
        map_names::VIP_FILTER | map_names::TOO_BIG_RATE => (index, size_of::<u64>(), "u32 / u64"),
        map_names::RINGS => (index, size_of::<RingSlot>(), "u32 / RingSlot"),
        map_names::BACKENDS => (index, size_of::<Backend>(), "u32 / Backend"),
        map_names::FLOWS4 => (index, size_of::<FlowSet>(), "u32 / FlowSet"),
        map_names::CONNS => (size_of::<FlowKey>(), size_of::<ConnValue>(), "FlowKey / ConnValue"),
        map_names::SYNS => (index, size_of::<SynSlot>(), "u32 / SynSlot"),
        map_names::STATS => (index, size_of::<CounterSet>(), "u32 / CounterSet"),
        map_names::VIP_STATS => (index, size_of::<Traffic>(), "u32 / Traffic"),
        map_names::BACKEND_STATS => (index, size_of::<BackendStats>(), "u32 / BackendStats"),
        map_names::BENCH_SCRIPT => (index, size_of::<Script>(), "u32 / bench::Script"),
        _ => return None,
    })
}

fn map_memory(lb: &Lb) -> Result<Vec<MapMemory>> {
    let ids =
        lb.program()?.info()?.map_ids()?.context("the kernel does not list a program's maps")?;
    let mut out = Vec::new();
    for id in ids {
        let info = MapInfo::from_id(id)?;
        let fd = info.fd()?;
        let text =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
        let field = |k: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0)
        };
        let name = info.name_as_str().unwrap_or("?").to_owned();
        // The table shows the sizes lb-common defines, checked against the kernel's.
        if let Some((key, value, types)) = layout(&name) {
            ensure!(
                (field("key_size"), field("value_size")) == (key as u64, value as u64),
                "{name}: the kernel says key {} B, value {} B; lb-common's {types} are {key} B, {value} B",
                field("key_size"),
                field("value_size")
            );
        }
        out.push(MapMemory {
            name,
            kind: info.map_type().map_or_else(|_| "?".to_owned(), |t| format!("{t:?}")),
            key: field("key_size"),
            value: field("value_size"),
            entries: field("max_entries"),
            memlock: field("memlock"),
        });
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    progress(format_args!("{} maps", out.len()));
    Ok(out)
}
