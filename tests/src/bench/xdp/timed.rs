//! `bench xdp`, second method: many runs per timed section. Each case's program
//! runs behind the frame restore of `lb_ebpf::timed` (`xdp_lb_timed`), `REPEAT`
//! times per `BPF_PROG_TEST_RUN`, and the same restore in front of an empty
//! program (`xdp_tx_timed`) with the same script is timed right after it: the
//! difference is the case's own cost, resolved to about a nanosecond where one
//! run per timed section sees the kernel clock's ~10 ns steps.

use anyhow::{Context as _, Result, ensure};
use aya::{
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::bench::{FRAME_MAX, Script};

/// Runs per timed section.
pub const REPEAT: u32 = 1000;

/// Flows a case has to itself (`Replay::first_run`): enough for 16 000 samples
/// of `REPEAT` new flows, and few enough that 256 cases fit in the source
/// address's low 16 bits (`Script::per_flow`).
const CASE_FLOWS: u64 = 1 << 24;

/// Which frames a case replays.
#[derive(Clone, Debug)]
pub struct Replay {
    /// `frames[0]` for the first `first` packets of a flow, then `frames[1]`.
    pub frames: [Vec<u8>; 2],
    /// Packets per flow (0: one flow throughout, the frames as given).
    pub per_flow: u32,
    pub first: u32,
    /// A flow's packets past its first `first` are the flow's `lag` flows back
    /// (`Script::lag`).
    pub lag: u32,
    /// Flows cycled through (`Script::wrap`; 0: a new flow each time).
    pub wrap: u32,
    /// A cycling case's every timed test run comes right after untimed ones through
    /// all its flows (`Replay::warmed`).
    pub warm: bool,
}

impl Replay {
    /// One frame, the same flow every run.
    #[must_use]
    pub fn same(frame: Vec<u8>) -> Self {
        Self { frames: [frame.clone(), frame], per_flow: 0, first: 1, lag: 0, wrap: 0, warm: false }
    }

    /// One frame, a new flow every run (source port and address stepped).
    #[must_use]
    pub fn new_flows(frame: Vec<u8>) -> Self {
        Self { frames: [frame.clone(), frame], per_flow: 1, first: 1, lag: 0, wrap: 0, warm: false }
    }

    /// One frame, `flows` flows in turn (the first is the frame's own): once the
    /// untimed lead has sent each, every run is a table hit over a working set.
    /// `flows` is a power of two, so every case's flows start at the frame's own.
    #[must_use]
    pub fn cycling(frame: Vec<u8>, flows: u32) -> Self {
        assert!(flows.is_power_of_two() && u64::from(flows) <= CASE_FLOWS, "{flows} flows");
        Self { wrap: flows, ..Self::new_flows(frame) }
    }

    /// These cycling flows, each timed test run right after untimed ones through all
    /// of them: their lines as warm as a steady stream over them leaves them (`bench
    /// live`'s), where without it each was last touched samples ago, other cases' runs
    /// in between (a hit on a line gone cold).
    #[must_use]
    pub fn warmed(self) -> Self {
        Self { warm: true, ..self }
    }

    /// Untimed test runs right before each timed one (`warmed`).
    #[must_use]
    pub fn warm_runs(&self) -> usize {
        if self.warm { self.lead() } else { 0 }
    }

    /// Flows of `per_flow` packets: `first` of `a`, the rest `b`.
    #[must_use]
    pub fn flows(a: Vec<u8>, b: Vec<u8>, per_flow: u32, first: u32) -> Self {
        Self { frames: [a, b], per_flow, first, lag: 0, wrap: 0, warm: false }
    }

    /// These flows, each one's packets past its first `first` sent `lag` flows
    /// later: a handshake's ACK a round trip after its SYN, other connections' SYNs
    /// and hits in between.
    #[must_use]
    pub fn lagging(self, lag: u32) -> Self {
        Self { lag, ..self }
    }

    /// Case `case`'s first run in sample `sample`: a flow is never sent twice,
    /// in one case's samples (each starts where the last ended) or by two cases
    /// (each has `CASE_FLOWS` flows of its own). Two cases of one balancer share its
    /// tables: another case's entry for a flow would make a connection's SYN a
    /// retransmission, or its ACK a table hit.
    #[must_use]
    pub fn first_run(&self, case: usize, sample: usize) -> u64 {
        let own = u64::from(self.per_flow) * CASE_FLOWS * case as u64;
        own + sample as u64 * u64::from(REPEAT)
    }

    /// Untimed samples a case runs before its first timed one: enough that every
    /// later packet of a lagging case (`lag`) is of a flow whose first packets it
    /// has sent, so each ACK of a lagging connection follows its own SYN; and that a
    /// cycling case (`wrap`) has sent each of its flows once.
    #[must_use]
    pub fn lead(&self) -> usize {
        let runs = u64::from(self.lag.max(self.wrap)) * u64::from(self.per_flow);
        runs.div_ceil(u64::from(REPEAT)) as usize
    }

    /// The script, starting at run `seq` (`first_run`).
    fn script(&self, seq: u64) -> Result<Script> {
        let mut s = Script {
            per_flow: self.per_flow,
            first: self.first,
            lag: self.lag,
            wrap: u64::from(self.wrap),
            seq,
            ..Script::default()
        };
        for (i, f) in self.frames.iter().enumerate() {
            ensure!(
                f.len() <= FRAME_MAX,
                "a replayed frame is {} bytes (at most {FRAME_MAX})",
                f.len()
            );
            s.frames[i][..f.len()].copy_from_slice(f);
            s.lens[i] = f.len() as u32;
        }
        // Ethernet without a tag; the source port follows the IP header.
        let (l3, v6) = (14, self.frames[0][12..14] == [0x86, 0xdd]);
        s.addr_off = if v6 { l3 + 8 + 14 } else { l3 + 12 + 2 };
        s.port_off = if v6 { l3 + 40 } else { l3 + 20 };
        Ok(s)
    }
}

/// Keeps the timed programs in the kernel's XDP dispatcher for the whole run.
/// BPF_PROG_TEST_RUN with `repeat > 1` adds its program to the dispatcher and takes
/// it out again, each change a `synchronize_rcu`: outside the timed section, but
/// 20-50 ms per test run on this VM (a run of many objects took minutes per 100
/// samples). An attached program stays in the dispatcher, and adding it again costs
/// nothing; so every program is attached (generic mode) to an interface of its
/// own, in a network namespace private to this process (gone when it exits).
pub struct Dispatcher {
    next: usize,
}

impl Dispatcher {
    /// Moves this process into a new network namespace.
    pub fn new() -> Result<Self> {
        // SAFETY: unshare(2) with a flag constant; it changes only this thread's
        // namespace, and the bench is single-threaded here.
        ensure!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        Ok(Self { next: 0 })
    }

    /// A new interface's name (a veth: this VM's kernel has no dummy), for one
    /// program to attach to.
    pub fn interface(&mut self) -> Result<String> {
        let name = format!("xdpbench{}", self.next);
        self.next += 1;
        let status = std::process::Command::new("ip")
            .args(["link", "add", &name, "type", "veth"])
            .status()
            .context("ip link add")?;
        ensure!(status.success(), "ip link add {name} type veth: {status}");
        Ok(name)
    }
}

/// A program behind the restore, with the map its script goes in.
pub struct Timed<'a> {
    pub prog: &'a Xdp,
    pub script: &'a mut Array<MapData, Script>,
    /// For `xdp_tail_timed`: the slot of `BENCH_TAIL` it hands the runs to.
    pub tail: u32,
}

impl Timed<'_> {
    /// Runs `replay` from run `seq` on, `REPEAT` times; the action of the last run
    /// and the kernel's mean ns per run.
    pub fn run(&mut self, replay: &Replay, seq: u64) -> Result<(u32, u32)> {
        let script = Script { tail: self.tail, ..replay.script(seq)? };
        self.script.set(0, script, 0).context("writing BENCH_SCRIPT")?;
        let mut out = vec![0u8; 2048];
        let r = self.prog.test_run(TestRunOptions {
            data_in: Some(&replay.frames[0]),
            data_out: Some(&mut out),
            repeat: REPEAT,
            ..TestRunOptions::new()
        })?;
        Ok((r.return_value, u32::try_from(r.duration.as_nanos()).unwrap_or(u32::MAX)))
    }
}

/// The program a case of the second method runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Reference program `i` of `xdp-tools` (the floor, the ipip floor): one
    /// instance, the same for every object of an A/B.
    Tool(usize),
    /// Balancer `i`.
    Lb(usize),
    /// Program `i` pinned outside this repository (`bench xdp --reference`), behind
    /// `xdp_tail_timed` (`Harness::tail`).
    Pinned(usize),
}

/// `BENCH_TAIL`'s slots: the harness's empty programs, then the pinned ones.
pub const TAIL_TX: u32 = 0;
pub const TAIL_TX_PUSHED: u32 = 1;
pub const TAIL_PINNED: u32 = 2;

/// One case of the second method.
pub struct Case {
    pub name: String,
    pub prog: Program,
    pub replay: Replay,
    pub want: u32,
    /// Packets in one unit of the case (12 for a whole connection), to scale its cost.
    pub per_unit: u32,
    /// Its program pushes a header on every run (ipip forwarding, the ipip floor): timed against the
    /// harness that also pays the restore's move of the head back.
    pub pushes: bool,
}

/// The empty programs behind the restore that a case's runs are paired with.
pub struct Harness<'a> {
    pub plain: &'a Xdp,
    /// For a case that `pushes`.
    pub pushed: &'a Xdp,
    /// For a pinned program's case: `xdp_tail_timed`, its program array filled (slot
    /// `TAIL_PINNED + i` runs pinned program `i`), in front of an empty program.
    pub tail: Option<&'a Xdp>,
}

/// Per case: ns per run, and net of the harness (the difference of each pair).
pub struct Measured {
    pub runs: Vec<f64>,
    pub net: Vec<f64>,
}

/// Times every case `samples` times, interleaved, each right before its harness.
pub fn measure(
    cases: &[Case],
    lbs: &mut [(&Xdp, &mut Array<MapData, Script>)],
    tools: &[&Xdp],
    harness: &Harness,
    tools_script: &mut Array<MapData, Script>,
    samples: usize,
) -> Result<Vec<Measured>> {
    let mut out: Vec<Measured> =
        cases.iter().map(|_| Measured { runs: Vec::new(), net: Vec::new() }).collect();
    // Past 256 cases the flows of one would be another's again (`CASE_FLOWS`).
    ensure!(
        cases.len() as u64 * CASE_FLOWS <= 1 << 32,
        "{} cases: at most {} (fewer objects or references)",
        cases.len(),
        (1u64 << 32) / CASE_FLOWS
    );
    // Untimed: the lagging cases' first SYNs (`Replay::lead`).
    for (c, case) in cases.iter().enumerate() {
        for s in 0..case.replay.lead() {
            run_case(case, case.replay.first_run(c, s), lbs, tools, harness, tools_script)?;
        }
    }
    // Each sample takes the cases in a new order: the first case after another
    // balancer's runs pays for the switch (~20 ns a run on an ipip hit), and a fixed
    // order would charge it to the same case, the first object's, every time.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let mut rng = lb_userspace::xorshift::XorShift::new(0x5eed);
    for s in 0..samples {
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for &c in &order {
            let (case, m) = (&cases[c], &mut out[c]);
            let seq = case.replay.first_run(c, case.replay.lead() + s);
            for back in (1..=case.replay.warm_runs() as u64).rev() {
                run_case(case, seq - back * u64::from(REPEAT), lbs, tools, harness, tools_script)?;
            }
            let ns = run_case(case, seq, lbs, tools, harness, tools_script)?;
            let (prog, tail) = match (harness.tail, case.prog) {
                (Some(t), Program::Pinned(_)) => {
                    (t, if case.pushes { TAIL_TX_PUSHED } else { TAIL_TX })
                }
                _ => (if case.pushes { harness.pushed } else { harness.plain }, 0),
            };
            let (_, base) = Timed { prog, script: tools_script, tail }.run(&case.replay, seq)?;
            m.runs.push(f64::from(ns));
            m.net.push(f64::from(ns) - f64::from(base));
        }
        if s % 50 == 0 {
            super::super::progress(format!("timed: sample {s}/{samples}"));
        }
    }
    Ok(out)
}

/// Runs `case` from run `seq` (`Timed::run`), checks its action, and returns the
/// kernel's mean ns per run.
fn run_case(
    case: &Case,
    seq: u64,
    lbs: &mut [(&Xdp, &mut Array<MapData, Script>)],
    tools: &[&Xdp],
    harness: &Harness,
    tools_script: &mut Array<MapData, Script>,
) -> Result<u32> {
    let (action, ns) = match case.prog {
        Program::Lb(i) => {
            let (prog, script) = &mut lbs[i];
            Timed { prog, script, tail: 0 }.run(&case.replay, seq)?
        }
        Program::Tool(i) => {
            Timed { prog: tools[i], script: tools_script, tail: 0 }.run(&case.replay, seq)?
        }
        Program::Pinned(i) => {
            let prog = harness.tail.context("a pinned case, no xdp_tail_timed")?;
            let tail = TAIL_PINNED + u32::try_from(i)?;
            Timed { prog, script: tools_script, tail }.run(&case.replay, seq)?
        }
    };
    ensure!(action == case.want, "{}: action {action}, want {}", case.name, case.want);
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The flows (as the restore numbers them: their low 32 bits step the source
    /// port and address) that `replay`, as case `case`, sends in `samples` samples.
    fn flows_sent(replay: &Replay, case: usize, samples: usize) -> HashSet<u32> {
        let script = replay.script(replay.first_run(case, 0)).unwrap();
        (0..samples)
            .flat_map(|s| {
                let first = replay.first_run(case, s);
                (first..first + u64::from(REPEAT)).map(|seq| script.run(seq).1 as u32)
            })
            .collect()
    }

    #[test]
    fn every_ack_of_a_lagging_connection_that_is_timed_follows_its_own_syn() {
        let frame = vec![0; 60];
        let lagging = Replay::flows(frame.clone(), frame, 12, 1).lagging(1000);
        let (case, samples) = (3, 20);
        let script = lagging.script(0).unwrap();
        let runs = |s: usize| {
            let first = lagging.first_run(case, s);
            first..first + u64::from(REPEAT)
        };
        let mut opened = HashSet::new();
        for seq in (0..lagging.lead()).flat_map(runs) {
            if let (0, flow) = script.run(seq) {
                opened.insert(flow);
            }
        }
        let mut acks = 0;
        for seq in (lagging.lead()..lagging.lead() + samples).flat_map(runs) {
            match script.run(seq) {
                (0, flow) => assert!(opened.insert(flow), "flow {flow} opened twice"),
                (_, flow) => {
                    assert!(opened.contains(&flow), "run {seq}: an ACK of flow {flow}, no SYN");
                    acks += 1;
                }
            }
        }
        assert_eq!(acks, samples * REPEAT as usize * 11 / 12);
    }

    #[test]
    fn a_cycling_case_sends_each_of_its_flows_in_its_lead_and_only_those_after() {
        let cycling = Replay::cycling(vec![0; 60], 4096);
        assert_eq!(cycling.lead(), 5, "4096 flows take 5 test runs of 1000");
        for case in [0, 7] {
            let lead = flows_sent(&cycling, case, cycling.lead());
            assert_eq!(lead, (0..4096).collect(), "case {case}: from the frame's own flow on");
            let script = cycling.script(0).unwrap();
            let first = cycling.first_run(case, cycling.lead());
            let timed = (first..first + 20 * u64::from(REPEAT)).map(|seq| script.run(seq).1 as u32);
            assert!(
                timed.clone().all(|f| lead.contains(&f)),
                "case {case}: a flow outside the lead's"
            );
        }
    }

    #[test]
    fn no_two_cases_of_a_balancer_send_the_same_flow() {
        let frame = vec![0; 60];
        let connection = Replay::flows(frame.clone(), frame.clone(), 12, 1);
        let cases = [
            Replay::new_flows(frame.clone()),
            connection.clone(),
            connection.lagging(1000),
            Replay::new_flows(frame),
        ];
        let samples = 300;
        let sent: Vec<_> =
            cases.iter().enumerate().map(|(c, r)| flows_sent(r, c, samples)).collect();
        // Every run of a new-flow case is a flow of its own; a connection is 12 runs.
        assert_eq!(sent[0].len(), samples * REPEAT as usize);
        assert!(sent[1].len() >= samples * REPEAT as usize / 12);
        for (a, b) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)] {
            let shared = sent[a].intersection(&sent[b]).count();
            assert_eq!(shared, 0, "cases {a} and {b} send {shared} flows both");
        }
    }
}
