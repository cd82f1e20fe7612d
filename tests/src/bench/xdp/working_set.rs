//! `bench xdp`, a pass of the second method of its own: table hits over a working
//! set. The other cases hit one flow, whose set line and page translation stay in
//! the CPU's caches; in service (and in `bench live`, 4096 flows) a hit finds its
//! flow's line in L2 or further and its page's translation often missed. Here
//! each case cycles through 1, 4096 or 65536 established flows of its own, in
//! tables as the controller sizes them by default, so what a hit pays for memory
//! is resolved to about a nanosecond, where `bench live` reads it to ±15. What
//! lies between two packets of a flow decides it: nothing but the flow's own
//! working set (the cases run by themselves, a lower bound), or other flows and
//! programs (the cases interleaved; `bench live`'s kernel path between packets,
//! where 4096 flows cost 25-50 ns a frame more than one).

use anyhow::{Result, ensure};
use lb_common::{Counter, limits::CONN_TABLE_SIZE};

use super::{
    INSTANCES, MODES, Object, Reference, fastest_slowest, instance_rows, report_objects,
    timed::{self, Case, Program, Replay},
    timed_balancers, timed_harness, timed_tools, trimmed, with_slower,
};
use crate::{
    balancer::{Balancer, VIP4, XDP_TX},
    packet::Flow,
};

/// Flows each case cycles through, and whether each timed test run comes right
/// after untimed ones through all of them (`Replay::warmed`) or finds them as the
/// other cases' runs left them (gone cold). First each of one flow (the other
/// passes' hit) and `bench live`'s 4096 by itself, its samples back to back: the
/// least a hit over 4096 flows pays, nothing between a flow's packets but the
/// others' (interleaved with the other cases, even right after a warm-up through
/// its flows, it read 38-60 ns where alone it read 19-32: the other balancers'
/// flows took the caches, as the kernel's path between packets does in `bench
/// live`). Then 65536 (a set line each: 4 MiB, past this CPU's L2 and its TLB's
/// reach) and 4096 gone cold, interleaved.
const ALONE: &[(u32, bool)] = &[(1, false), (4096, false)];
const TOGETHER: &[(u32, bool)] = &[(65536, true), (4096, false)];

/// The passes, `samples` samples each, and their table.
pub fn run(samples: usize, objects: &[Object], refs: &[Reference]) -> Result<()> {
    let mut dispatcher = timed::Dispatcher::new()?;
    let mut tools = timed_tools(&mut dispatcher, refs)?;
    let harness = timed_harness(&tools.ebpf, refs)?;
    let mut lbs = timed_balancers(objects, CONN_TABLE_SIZE);
    let mut scripts: Vec<_> = lbs.iter_mut().map(Balancer::load_timed).collect();
    for lb in &mut lbs {
        lb.attach_timed(&dispatcher.interface()?)?;
    }
    let before: Vec<_> = lbs.iter().map(Balancer::counters).collect();
    let mut timed: Vec<_> = lbs.iter().map(Balancer::timed_program).zip(&mut scripts).collect();
    let (mut cases, mut m, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    let alone = kinds_of(ALONE, false);
    for case in cases_of(&alone, objects.len(), refs) {
        let one = std::slice::from_ref(&case);
        m.extend(timed::measure(one, &mut timed, &[], &harness, &mut tools.script, samples)?);
        cases.push(case);
    }
    let together = kinds_of(TOGETHER, true);
    let pass = cases_of(&together, objects.len(), refs);
    m.extend(timed::measure(&pass, &mut timed, &[], &harness, &mut tools.script, samples)?);
    cases.extend(pass);
    kinds.extend(alone.into_iter().chain(together));
    // Every timed run must have been a hit: misses past the lead's first packets of
    // each flow would be inserts, timed as hits.
    let most = ALONE.iter().chain(TOGETHER).map(|&(w, _)| u64::from(w)).max();
    let seeded = most.unwrap_or(0) * 2;
    for (lb, before) in lbs.iter().zip(&before) {
        let after = lb.counters();
        let missed = after.get(Counter::ConnMiss) - before.get(Counter::ConnMiss);
        ensure!(
            missed <= seeded,
            "{missed} table misses, where the leads insert {seeded} flows: the working set \
             did not stay in the table"
        );
    }
    let rows = instance_rows(&cases, objects.len(), MODES.len() * INSTANCES);
    if objects.len() > 1 {
        report_objects(&cases, &m, &rows, objects, samples);
        return Ok(());
    }
    let net = |i: usize| trimmed(&m[i].net);
    let whos: Vec<&str> =
        MODES.iter().map(|(mode, _)| *mode).chain(Reference::names(refs)).collect();
    print!("| case |");
    for who in &whos {
        print!(" {who} net ns |");
    }
    println!();
    println!("|---|{}", "---:|".repeat(whos.len()));
    for (kind, _) in &kinds {
        print!("| {kind} |");
        for who in &whos {
            let name = format!("{kind}, {who}");
            let cell = rows
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, at)| fastest_slowest(&at[0], net))
                .map_or("–".into(), |(f, s)| with_slower(net(f), net(s), 1));
            print!(" {cell} |");
        }
        println!();
    }
    println!();
    println!(
        "Passes of their own, {samples} samples per case of {} runs each, each followed by \
         its harness on the same script (as above). Each case cycles through its flows, a \
         source port (and address) each: the first is the one-flow hit's, and an untimed lead \
         sends each once, so each of xdp_lb's timed runs is a table hit (checked: the \
         balancers counted no miss past the leads' first packets). One flow and 4096 flows in \
         turn: each case by itself, its samples back to back, nothing between a flow's \
         packets but its working set's: the least a hit over them pays (interleaved with the \
         other cases, even right after untimed runs through its flows, a hit over 4096 read \
         38-60 ns where alone it reads 19-32: the other balancers' flows took the caches, as \
         the kernel's path between packets does in `bench live`, where 4096 flows cost 25-50 \
         ns a frame more than one, session 17). 65536 flows in turn (each \
         timed test run right after untimed ones through all of them) and 4096 flows gone \
         cold (each last touched a sample ago, 65536-flow runs in between: a connection's \
         lines between its bursts, or a huge table's): one pass, the cases in a new order \
         each sample. xdp_lb's tables as the controller sizes them by default \
         (`conn_table_size: {CONN_TABLE_SIZE}`), its IPv4 table 32 MiB of sets in 4 KiB \
         pages, each flow's set on a line (and most on a page) of its own; the balancer \
         loaded {INSTANCES} times per mode, the faster instance's figure, the slower's in \
         brackets (a reference's two loads likewise).",
        timed::REPEAT
    );
    Ok(())
}

/// Every kind for every balancer (each object's, each loaded `INSTANCES` times per
/// mode) and every reference.
fn cases_of(kinds: &[(String, Replay)], objects: usize, refs: &[Reference]) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |who: &str, prog: Program, tunnels: bool| {
        for (name, replay) in kinds {
            cases.push(Case {
                name: format!("{name}, {who}"),
                prog,
                replay: replay.clone(),
                want: XDP_TX,
                per_unit: 1,
                pushes: tunnels,
            });
        }
    };
    for (m, (mode, _)) in MODES.iter().enumerate() {
        for i in 0..objects * INSTANCES {
            add(mode, Program::Lb(i * MODES.len() + m), *mode == "ipip");
        }
    }
    for (i, r) in refs.iter().enumerate() {
        add(r.name, Program::Pinned(i), true);
    }
    cases
}

/// A pass's kinds: a table-hit ACK and datagram over each of its working sets,
/// `warm` or not (`together`: with other cases' runs in between; alone, a case's
/// runs are back to back, and its flows as warm as its own runs leave them).
fn kinds_of(working_sets: &[(u32, bool)], together: bool) -> Vec<(String, Replay)> {
    let ack4 = Flow::tcp("198.51.100.7", 40001, VIP4, 80).ack().payload(0);
    let udp4 = Flow::udp("198.51.100.7", 40001, VIP4, 53).payload(18);
    let mut kinds = Vec::new();
    for (what, flow) in [("TCP ACK v4 (table hit)", &ack4), ("UDP v4 (table hit)", &udp4)] {
        for &(flows, warm) in working_sets {
            let (over, replay) = match (flows, warm, together) {
                (1, ..) => ("one flow".to_owned(), Replay::same(flow.frame())),
                (_, true, _) => (
                    format!("{flows} flows in turn"),
                    Replay::cycling(flow.frame(), flows).warmed(),
                ),
                (_, false, false) => {
                    (format!("{flows} flows in turn"), Replay::cycling(flow.frame(), flows))
                }
                (_, false, true) => {
                    (format!("{flows} flows, each gone cold"), Replay::cycling(flow.frame(), flows))
                }
            };
            kinds.push((format!("{what}, {over}"), replay));
        }
    }
    kinds
}
