//! `bench sync`: peer sync's cost at a million flows (#15). The kernel's
//! connection table (IPv4 flows: `FLOWS4`, 1,048,576 entries) is filled with 1 M flows as the
//! data path would (each on its ring's pick), then for each ring change: the time
//! to read the table in batches and find the exceptions (what the sync thread
//! does after a ring change, off the control loop), the exceptions found, and the
//! entries and bytes one snapshot of them sends; and the time of the periodic
//! re-check (one lookup per exception). No ring change: no exception, one
//! 80-byte datagram; sync traffic follows the exceptions, not the flows.

use std::{fmt::Write as _, time::Instant};

use anyhow::{Context as _, Result};
use aya::EbpfLoader;
use lb_common::{BackendState, ConnValue, FlowKey, family, proto};
use lb_userspace::{
    desired::{DesiredState, addr_words},
    maps::BpfMaps,
    objects,
    sync::{
        conns::{BpfConns, Cursor},
        exceptions::{self, Exceptions, View},
        install::ConnTable as _,
        wire::{ENTRIES_PER_CHUNK, ENTRY, HEADER, MAC},
    },
    writer::MapWriter,
};

use super::{progress, stats::show};
use crate::balancer::{VIP4, backend, standard_plan, vip};

const FLOWS: u32 = 1_000_000;
const RUNS: usize = 3;
const SEED: [u32; 4] = [0x1234_5678, 0x9abc_def0, 0x0f1e_2d3c, 0x4b5a_6978];

/// One VIP, five nodes; the fifth down while the table fills (it then returns).
fn plan(returned: bool, drained: bool) -> DesiredState {
    let mut p = standard_plan(lb_common::ForwardingMode::Dsr);
    let mut nodes: Vec<_> =
        (1..=5).map(|i| backend(&format!("waf-{i}"), &format!("10.0.0.{}", 10 + i))).collect();
    if !returned {
        nodes[4].state = BackendState::Down;
    }
    if drained {
        nodes[2].state = BackendState::Draining;
    }
    p.vips = vec![vip("web4", VIP4, 443, proto::TCP, nodes)];
    p.config.hash_seed = SEED;
    p
}

fn flow(i: u32) -> FlowKey {
    let (dst, _) = addr_words(VIP4.parse().expect("vip"));
    // 65536 clients x 16 ports, spread over 100.64/10.
    let client = 0x6440_0000 | (i >> 4);
    FlowKey {
        src: [client.to_be(), 0, 0, 0],
        dst,
        ports: [(40_000 + (i & 15) as u16).to_be(), 443u16.to_be()],
        proto: proto::TCP,
        family: family::V4,
        _pad: [0; 2],
    }
}

/// Fills the table with `FLOWS` flows on `view`'s picks, from one thread per
/// CPU (the table keeps an LRU list per CPU, each a share of the entries).
fn fill(handles: Vec<BpfConns>, view: &View) {
    let cpus = handles.len() as u32;
    std::thread::scope(|s| {
        for (cpu, mut conns) in handles.into_iter().enumerate() {
            s.spawn(move || {
                // SAFETY: a cpu_set_t we own, zeroed then set.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
                }
                for i in (cpu as u32..FLOWS).step_by(cpus as usize) {
                    let f = flow(i);
                    let (_, v) = view.vip_of(&f).expect("the VIP");
                    let index = view.pick(v, &f).expect("a pick");
                    let generation = view.backends[&index].generation;
                    conns.insert_new(&f, &ConnValue { backend: index, generation });
                }
            });
        }
    });
}

/// Reads the whole table as the sync thread does, then finds the exceptions:
/// (read ms, find ms, entries read, exceptions).
fn scan(conns: &BpfConns, view: &View) -> Result<(f64, f64, usize, Exceptions)> {
    let t = Instant::now();
    let mut all = Vec::with_capacity(FLOWS as usize);
    let mut cursor = Cursor::default();
    while !cursor.done {
        conns.scan_step(&mut cursor, &mut all)?;
    }
    let read = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let n = all.len();
    let mut set = Exceptions::new();
    exceptions::find(view, all, |_| false, &mut set);
    Ok((read, t.elapsed().as_secs_f64() * 1e3, n, set))
}

/// Datagrams and bytes of one snapshot of `n` entries.
fn snapshot_size(n: usize) -> (usize, usize) {
    let datagrams = n.div_ceil(ENTRIES_PER_CHUNK).max(1);
    (datagrams, n * ENTRY + datagrams * (HEADER + MAC))
}

pub fn run(args: &[String]) -> Result<()> {
    let runs = args.first().and_then(|a| a.parse().ok()).unwrap_or(RUNS);
    let mut ebpf = EbpfLoader::new().load(objects::XDP_LB).context("loading xdp-lb's maps")?;
    let maps = BpfMaps::take_from(&mut ebpf)?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let handles = (0..cpus).map(|_| maps.conns_handle()).collect::<Result<Vec<_>>>()?;
    let conns = maps.conns_handle()?;
    let mut writer = MapWriter::new(maps);
    writer.apply(&plan(false, false))?;
    let before = writer.sync_view(SEED);
    progress(format_args!("filling the connection table with {FLOWS} flows ({cpus} threads)"));
    let t = Instant::now();
    fill(handles, &before);
    progress(format_args!("filled in {:.1} s", t.elapsed().as_secs_f64()));

    let mut out = String::new();
    writeln!(
        out,
        "Method: the kernel's connection table (`FLOWS4`, the IPv4 flows' table of 1,048,576"
    )?;
    writeln!(
        out,
        "entries in sets of four, as loaded by `xdplb run`; read through `sync::conns::BpfConns`, which walks"
    )?;
    writeln!(
        out,
        "`FLOWS4`'s sets, then the empty IPv6 `CONNS`) filled with {FLOWS} TCP flows to one VIP of \
         five nodes (weights equal),"
    )?;
    writeln!(
        out,
        "each on its ring's pick while waf-5 was down. Then per case: the whole table read in"
    )?;
    writeln!(out, "batches (`BPF_MAP_LOOKUP_BATCH`, 4096 per call) and the exceptions found")?;
    writeln!(
        out,
        "(`sync::exceptions::find`), as the sync thread does after a ring change, off the"
    )?;
    writeln!(
        out,
        "control loop; the snapshot that carries them (56 bytes per entry, 23 per datagram, 80"
    )?;
    writeln!(
        out,
        "bytes of header and MAC each); and the periodic re-check (one lookup per exception)."
    )?;
    writeln!(out, "Medians of {runs} runs (min-max).\n")?;
    writeln!(
        out,
        "| case | entries read | exceptions | datagrams | bytes per snapshot | read ms | find ms | re-check ms |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---|---|---|")?;
    let cases: [(&str, bool, bool); 3] = [
        ("no ring change", false, false),
        ("waf-5 returns (ring moves ~1/5)", true, false),
        ("waf-5 returns and waf-3 drains", true, true),
    ];
    for (name, returned, drained) in cases {
        writer.apply(&plan(returned, drained))?;
        let view = writer.sync_view(SEED);
        let (mut read, mut find, mut recheck) = (Vec::new(), Vec::new(), Vec::new());
        let mut found = (0, Exceptions::new());
        for _ in 0..runs {
            let (r, f, n, set) = scan(&conns, &view)?;
            read.push(r);
            find.push(f);
            let mut again = set.clone();
            let t = Instant::now();
            exceptions::recheck(&view, &mut again, |k| conns.get(k));
            recheck.push(t.elapsed().as_secs_f64() * 1e3);
            found = (n, set);
        }
        let (n, set) = found;
        let (datagrams, bytes) = snapshot_size(set.len());
        progress(format_args!("{name}: {n} entries, {} exceptions", set.len()));
        writeln!(
            out,
            "| {name} | {n} | {} | {datagrams} | {bytes} | {} | {} | {} |",
            set.len(),
            show(&read, 1),
            show(&find, 1),
            show(&recheck, 1),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Sync traffic follows the exceptions, not the flows: with no ring change a table of"
    )?;
    writeln!(
        out,
        "a million flows sends one 80-byte datagram per second (the heartbeat snapshot). The"
    )?;
    writeln!(
        out,
        "data path is not changed by sync (`bench xdp` unchanged). A snapshot is paced at 2,000"
    )?;
    writeln!(out, "datagrams/s per peer, so ~200,000 exceptions take ~4.3 s to send.")?;
    print!("{out}");
    Ok(())
}
