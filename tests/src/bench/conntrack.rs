//! `bench conntrack`: xdplb's forwarding rate as the connection table fills (1 k,
//! 256 k and 1 M concurrent flows), and the memory its maps take at the default sizes.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::MapInfo;
use lb_common::{Counter, ForwardingMode, limits::CONN_TABLE_SIZE};
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
            // Warm up long enough to offer every flow twice (at ~3 Mpps): the table
            // holds this case's flows, not the previous case's, when timing starts.
            pair.send(L4::Tcp, flows, Duration::from_millis(300 + u64::from(flows) / 1500))?;
            let (seen, counted) = (pair.received()?, lb.stats.counters()?);
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
                "run {}/{runs} {name:>5} flows: {:.2} Mpps per CPU-s, {:.1}% table hits",
                r + 1,
                got as f64 / sent.cpu.as_secs_f64() / 1e6,
                100.0 * s.hit.last().copied().unwrap_or(0.0)
            ));
        }
    }
    drop(pair);
    report(&samples, runs, &memory);
    Ok(())
}

fn possible_cpus() -> usize {
    // "0-1" or "0-3,5": count the CPUs in every range.
    std::fs::read_to_string("/sys/devices/system/cpu/possible").ok().map_or(1, |s| {
        s.trim()
            .split(',')
            .map(|r| match r.split_once('-') {
                Some((a, b)) => {
                    b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                }
                None => 1,
            })
            .sum()
    })
}

fn report(samples: &[Samples], runs: usize, memory: &[MapMemory]) {
    let per_cpu = CONN_TABLE_SIZE as usize / possible_cpus();
    println!(
        "Method: the rig of `bench live` (generator pinned to one CPU, `xdp_lb` in dsr mode on \
         `lb0`, TCP ACKs of established flows, 64-byte frames), with the generator stepping over \
         1 k, 256 k or 1 M flows (source port, then source address) in turn. The connection \
         table is the default one ({CONN_TABLE_SIZE} entries, `BPF_F_NO_COMMON_LRU`: one LRU list \
         per CPU, each holding {CONN_TABLE_SIZE} / {} possible CPUs = {per_cpu} entries). One \
         generator CPU is one RSS queue: all its flows live in that CPU's list, so 256 k flows fit \
         and 1 M flows cycle through a list half their size (most packets a miss, an eviction and \
         an insert; the kernel's LRU is approximate, so some still hit): the worst case of LRU \
         pressure, not the steady state of 1 M flows spread over every CPU's list. Rates are frames per CPU-second as in `bench live`; each case warms up by \
         offering every flow twice, then {runs} interleaved runs of {} s. Hits are xdp_lb's own \
         counters (`conn_hit` / (`conn_hit` + `conn_miss`)).\n",
        possible_cpus(),
        RUN.as_secs()
    );
    println!(
        "| flows | Mpps per CPU-second, median (min–max) | × 1 k flows | connection-table hits |"
    );
    println!("|---|---:|---:|---:|");
    for (s, (_, name)) in samples.iter().zip(FLOWS) {
        println!(
            "| {name} | {} | {:.2} | {:.1}% |",
            show(&s.rate.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2),
            ratio(&s.rate, &samples[0].rate),
            100.0 * Summary::of(&s.hit).map_or(f64::NAN, |h| h.median)
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
        out.push(MapMemory {
            name: info.name_as_str().unwrap_or("?").to_owned(),
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
