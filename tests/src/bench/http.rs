//! `bench http`: HTTP through the lab with wrk, straight to one WAF node (the
//! reference), through xdplb (dsr, ipip) and through HAProxy in TCP mode (the
//! user-space peer): requests/s, latency, and the balancer's CPU per 100k requests.

use std::{
    fmt::Write as _,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};

use super::{
    progress,
    stats::{Summary, show},
};
use crate::{
    lab::{self, LAB_DIR, LB4, Mode, NS_CLIENT, NS_LB, PIN_DIR, VIP4, sh::ns_sh},
    rig::{Checks, Rig},
};

const RUNS: usize = 3;
const DURATION: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(3);
const CONNECTIONS: u32 = 32;
const THREADS: u32 = 2;
/// HAProxy's frontend address in the lb namespace (xdplb holds the VIP there; this
/// address is not a VIP, so `xdp_lb` passes its packets to the kernel).
const HAPROXY_VIP: &str = "10.99.100.2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Direct(Mode),
    Xdplb(Mode),
    Haproxy,
}

impl Case {
    fn label(self) -> String {
        match self {
            Self::Direct(m) => format!("reference: direct to waf1, no balancer ({m} lab)"),
            Self::Xdplb(m) => format!("xdplb, {m}"),
            Self::Haproxy => "peer: HAProxy, mode tcp, roundrobin (dsr lab)".to_owned(),
        }
    }

    fn url(self) -> String {
        match self {
            Self::Direct(_) => format!("http://{}/", lab::waf4(1)),
            Self::Xdplb(_) => format!("http://{VIP4}/"),
            Self::Haproxy => format!("http://{HAPROXY_VIP}/"),
        }
    }
}

/// wrk's connection handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conns {
    /// Keep-alive: 32 connections carry every request.
    KeepAlive,
    /// `Connection: close`: every request on a new connection (a new flow).
    PerRequest,
}

impl Conns {
    fn label(self) -> &'static str {
        match self {
            Self::KeepAlive => "keep-alive connections",
            Self::PerRequest => "a new connection per request",
        }
    }
}

/// One wrk run and what the machine spent on it.
#[derive(Clone, Debug, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
    errors: u64,
    /// Machine-wide softirq seconds, net of the idle rate.
    softirq: f64,
    /// CPU seconds of the balancer's own processes (HAProxy, or `xdplb run`).
    process: f64,
    /// Seconds inside `xdp_lb` (kernel BPF statistics).
    program: f64,
}

impl Sample {
    fn per_100k(&self, secs: f64) -> f64 {
        secs / self.requests * 1e5
    }
}

struct Results {
    case: Case,
    conns: Conns,
    samples: Vec<Sample>,
}

pub fn run(args: &[String]) -> Result<()> {
    let runs: usize = args.first().map_or(Ok(RUNS), |s| s.parse()).context("runs")?;
    ensure!(runs > 0, "runs must be > 0");
    ensure!(
        which("wrk") && which("haproxy"),
        "wrk and haproxy are needed: `cargo xtask setup --bench`"
    );
    // Kernel BPF run-time statistics, on while this fd is open.
    let _stats = enable_bpf_stats()?;
    let haproxy = Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?;
    let haproxy =
        haproxy.lines().next().and_then(|l| l.split_whitespace().nth(2)).unwrap_or("?").to_owned();
    let mut results = Vec::new();
    let mut idle = Vec::new();
    for (mode, cases) in [
        (Mode::Dsr, vec![Case::Direct(Mode::Dsr), Case::Xdplb(Mode::Dsr), Case::Haproxy]),
        (Mode::Ipip, vec![Case::Direct(Mode::Ipip), Case::Xdplb(Mode::Ipip)]),
    ] {
        let (r, i) = lab_phase(mode, &cases, runs)?;
        results.extend(r);
        idle.push((mode, i));
    }
    report(&results, &idle, runs, &haproxy);
    Ok(())
}

/// One lab (xdplb running in `mode`), its cases interleaved run by run.
fn lab_phase(mode: Mode, cases: &[Case], runs: usize) -> Result<(Vec<Results>, f64)> {
    progress(format_args!("{mode} lab: waiting for the lab lock, then building it"));
    let rig = Rig::up(mode, 3, &Checks::default())?;
    progress(format_args!("{mode} lab: up, every backend up in xdplb"));
    // Load-generator hygiene for `Connection: close` (wrk closes first, so its side
    // keeps TIME_WAIT): every ephemeral port, and TIME_WAIT reuse for new connects.
    ns_sh(
        NS_CLIENT,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"],
    )?;
    let haproxy = if cases.contains(&Case::Haproxy) { Some(Haproxy::start()?) } else { None };
    let xdplb_pid =
        process_with_arg("xdplb", &rig.config.to_string_lossy()).context("the xdplb process")?;
    let prog_id = FdLink::from(PinnedLink::from_pin(Path::new(PIN_DIR).join("xdplb/link"))?)
        .info()?
        .program_id();
    // Every case answers before timing starts.
    for case in cases {
        let url = case.url();
        ns_sh(NS_CLIENT, &["curl", "-sS", "-m", "2", "-o", "/dev/null", &url])
            .with_context(|| url.clone())?;
    }
    progress(format_args!("{mode} lab: {} s idle baseline", IDLE.as_secs()));
    let before = CpuStat::read()?;
    std::thread::sleep(IDLE);
    let idle_rate = (CpuStat::read()?.softirq - before.softirq) / IDLE.as_secs_f64();
    let mut results: Vec<Results> = [Conns::KeepAlive, Conns::PerRequest]
        .iter()
        .flat_map(|&conns| cases.iter().map(move |&case| Results { case, conns, samples: vec![] }))
        .collect();
    for r in 0..runs {
        for res in &mut results {
            let lb_pid = match res.case {
                Case::Haproxy => haproxy.as_ref().map(|h| h.pid),
                Case::Xdplb(_) => Some(xdplb_pid),
                Case::Direct(_) => None,
            };
            let s = measure(res.case, res.conns, lb_pid, prog_id, idle_rate)?;
            progress(format_args!(
                "run {}/{runs} {:<55} {:<30} {:>8.0} req/s, p99 {:.2} ms",
                r + 1,
                res.case.label(),
                res.conns.label(),
                s.rps,
                s.p99_ms
            ));
            res.samples.push(s);
        }
    }
    drop(haproxy);
    drop(rig);
    Ok((results, idle_rate))
}

fn measure(
    case: Case,
    conns: Conns,
    lb_pid: Option<i32>,
    prog_id: u32,
    idle_rate: f64,
) -> Result<Sample> {
    let softirq = CpuStat::read()?.softirq;
    let process = lb_pid.map(process_cpu).transpose()?.unwrap_or(0.0);
    let program = program_time(prog_id)?;
    let start = Instant::now();
    let mut s = wrk(&case.url(), conns)?;
    let elapsed = start.elapsed().as_secs_f64();
    s.softirq = CpuStat::read()?.softirq - softirq - idle_rate * elapsed;
    s.process = lb_pid.map(process_cpu).transpose()?.unwrap_or(0.0) - process;
    s.program = if matches!(case, Case::Xdplb(_)) { program_time(prog_id)? - program } else { 0.0 };
    Ok(s)
}

fn wrk(url: &str, conns: Conns) -> Result<Sample> {
    let (t, c, d) =
        (THREADS.to_string(), CONNECTIONS.to_string(), format!("{}s", DURATION.as_secs()));
    let mut args = vec!["wrk", "-t", &t, "-c", &c, "-d", &d, "--latency", "--timeout", "2s"];
    if conns == Conns::PerRequest {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = ns_sh(NS_CLIENT, &args)?;
    parse_wrk(&out).with_context(|| format!("reading wrk's output:\n{out}"))
}

/// Requests/s, p50/p99 latency, request count and errors from wrk's report.
fn parse_wrk(out: &str) -> Result<Sample> {
    let mut s = Sample::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => s.p50_ms = millis(v)?,
            ["99%", v] => s.p99_ms = millis(v)?,
            ["Requests/sec:", v] => s.rps = v.parse()?,
            [n, "requests", "in", ..] => s.requests = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                s.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => s.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    ensure!(s.requests > 0.0 && s.rps > 0.0, "no requests counted");
    Ok(s)
}

fn millis(v: &str) -> Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).context("no unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => bail!("unknown unit in {v:?}"),
    })
}

/// The machine's softirq time so far, in seconds (all CPUs, from /proc/stat).
struct CpuStat {
    softirq: f64,
}

impl CpuStat {
    fn read() -> Result<Self> {
        let text = fs::read_to_string("/proc/stat")?;
        let cpu =
            text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
        // cpu user nice system idle iowait irq softirq steal ...
        let ticks: u64 = cpu.split_whitespace().nth(7).context("no softirq field")?.parse()?;
        Ok(Self { softirq: ticks as f64 / clock_ticks() })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (every thread), in seconds.
fn process_cpu(pid: i32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let (u, s): (u64, u64) =
        (f.get(11).context("utime")?.parse()?, f.get(12).context("stime")?.parse()?);
    Ok((u + s) as f64 / clock_ticks())
}

/// The pid of a process named `comm` whose command line holds `arg`.
fn process_with_arg(comm: &str, arg: &str) -> Option<i32> {
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
                && fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
}

/// Seconds the kernel has spent running program `id` (while BPF statistics are on).
fn program_time(id: u32) -> Result<f64> {
    for p in loaded_programs() {
        let p = p?;
        if p.id() == id {
            return Ok(p.run_time().as_secs_f64());
        }
    }
    bail!("program {id} is gone")
}

/// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): the kernel times every BPF program run
/// until the returned fd closes.
fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr = [0u32; 1]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), size_of_val(&attr))
    };
    ensure!(fd >= 0, "BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// HAProxy in the lb namespace, listening on [`HAPROXY_VIP`] (on the lb's `lo`; the
/// client routes it via the lb) and forwarding to the three WAF nodes.
struct Haproxy {
    child: Child,
    pid: i32,
}

impl Haproxy {
    fn start() -> Result<Self> {
        ns_sh(NS_LB, &["ip", "addr", "add", &format!("{HAPROXY_VIP}/32"), "dev", "lo"])?;
        ns_sh(
            NS_CLIENT,
            &["ip", "route", "add", &format!("{HAPROXY_VIP}/32"), "via", &LB4.to_string()],
        )?;
        let dir = Path::new(LAB_DIR).join("haproxy");
        fs::create_dir_all(&dir)?;
        let cfg = dir.join("haproxy.cfg");
        let mut text = format!(
            "# Generated by `bench http`: TCP mode, round robin, default timeouts and checks.\n\
             global\n    pidfile {}/haproxy.pid\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend vip\n    bind {HAPROXY_VIP}:80\n    default_backend wafs\n\
             backend wafs\n    balance roundrobin\n",
            dir.display()
        );
        for k in 1..=3 {
            writeln!(text, "    server waf{k} {}:80 check", lab::waf4(k))?;
        }
        fs::write(&cfg, text)?;
        let log = fs::File::create(dir.join("haproxy.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", NS_LB, "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        // `ip netns exec` execs haproxy in place: the child's pid is haproxy's.
        let pid = i32::try_from(child.id())?;
        let h = Self { child, pid };
        let url = format!("http://{HAPROXY_VIP}/");
        let end = Instant::now() + Duration::from_secs(10);
        while ns_sh(NS_CLIENT, &["curl", "-sS", "-m", "1", "-o", "/dev/null", &url]).is_err() {
            ensure!(
                Instant::now() < end,
                "haproxy does not answer {url}: {}",
                fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(results: &[Results], idle: &[(Mode, f64)], runs: usize, haproxy: &str) {
    let idle_text: Vec<String> =
        idle.iter().map(|(m, r)| format!("{r:.3} s/s in the {m} lab")).collect();
    println!(
        "Method: the lab (`client`, `lb`, `waf1..3` with nginx, one bridge) with `xdplb run` \
         balancing the VIP, and wrk {THREADS} threads × {CONNECTIONS} connections × {} s from the \
         client namespace, `--latency`, once with keep-alive connections and once with \
         `Connection: close` (a new TCP connection, so a new flow and a SYN through the balancer, \
         per request; the client gets every ephemeral port and `tcp_tw_reuse`, as load generators \
         do). Rows: straight to waf1 (the reference, no balancer); the VIP through xdplb \
         (dsr, then ipip in a second lab, each with its own reference row); HAProxy 2.6 in the lb \
         namespace (version {haproxy}), `mode tcp`, `balance roundrobin`, the three WAF nodes \
         with default `check`s, default everything else (it listens on {HAPROXY_VIP} on the lb's `lo`, which the client \
         routes via the lb, so it runs in the dsr lab beside xdplb: `xdp_lb` passes its packets \
         to the kernel after a VIP-filter lookup). Cases are interleaved run by run, {runs} runs \
         each; req/s, p50 and p99 are medians (min–max for req/s) over runs. The WAF nodes, the \
         client and the balancer share this machine's CPUs, so req/s says as much about wrk and \
         nginx as about the balancer; and the reference loads one nginx (one worker) where the \
         balancers spread over three, which is why balanced new-connection rows can beat it.\n",
        DURATION.as_secs()
    );
    println!(
        "CPU per 100k requests, and how it is attributed: *softirq* is the machine's softirq time \
         from /proc/stat over the run minus the idle rate measured before the runs \
         ({}); the kernel samples it at each tick (no IRQ time accounting in this kernel), and it \
         holds every namespace's packet processing, not the balancer's alone. *process* is the \
         CPU time (utime + stime) of the balancer's own processes: HAProxy, or xdplb's controller \
         (health checks). *xdp_lb* is the time the kernel measured inside the `xdp_lb` program \
         (BPF run-time statistics, on during this benchmark). **LB CPU** is, for xdplb, the \
         controller's process time plus the softirq time above the reference row of the same \
         lab (the XDP program, the veths' NAPI and the extra bridge hop the lab adds: an upper \
         bound); for HAProxy, its process time only (its user time, its system calls, and the \
         softirq work that ran in its context; the softirq work that ran elsewhere is not added, \
         so this is closer to a lower bound). Both choices lean against xdplb.\n",
        idle_text.join(", ")
    );
    for conns in [Conns::KeepAlive, Conns::PerRequest] {
        println!("**{}**\n", capitalise(conns.label()));
        println!(
            "| case | req/s, median (min–max) | × reference | p50 ms | p99 ms | softirq s/100k req | process s/100k req | xdp_lb s/100k req | **LB CPU s/100k req** | errors |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for res in results.iter().filter(|r| r.conns == conns) {
            let reference = reference(results, res);
            let col =
                |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { res.samples.iter().map(f).collect() };
            let med = |v: Vec<f64>| Summary::of(&v).map_or(f64::NAN, |s| s.median);
            let rps = col(&|s| s.rps);
            let ref_rps =
                reference.map_or(f64::NAN, |r| med(r.samples.iter().map(|s| s.rps).collect()));
            let lb = lb_cpu(res, reference);
            let vs_reference = if reference.is_some() { med(rps.clone()) / ref_rps } else { 1.0 };
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {} | {} | {} |",
                res.case.label(),
                show(&rps, 0),
                vs_reference,
                med(col(&|s| s.p50_ms)),
                med(col(&|s| s.p99_ms)),
                med(col(&|s| s.per_100k(s.softirq))),
                med(col(&|s| s.per_100k(s.process))),
                if matches!(res.case, Case::Xdplb(_)) {
                    format!("{:.4}", med(col(&|s| s.per_100k(s.program))))
                } else {
                    "–".into()
                },
                lb.map_or_else(|| "–".to_owned(), |v| format!("**{v:.3}**")),
                res.samples.iter().map(|s| s.errors).sum::<u64>()
            );
        }
        println!();
    }
    println!(
        "Target (issue #5): xdplb's CPU per 100k requests ≤ 1/10 of HAProxy's, judged on the LB CPU \
         column (the upper bound for xdplb).\n"
    );
    for conns in [Conns::KeepAlive, Conns::PerRequest] {
        let find = |c: Case| results.iter().find(|r| r.case == c && r.conns == conns);
        let Some(h) = find(Case::Haproxy).and_then(|h| lb_cpu(h, None)) else { continue };
        for mode in [Mode::Dsr, Mode::Ipip] {
            let Some(x) = find(Case::Xdplb(mode)) else { continue };
            let Some(v) = lb_cpu(x, reference(results, x)) else { continue };
            let r = v / h;
            let program =
                Summary::of(&x.samples.iter().map(|s| s.per_100k(s.program)).collect::<Vec<_>>())
                    .map_or(f64::NAN, |p| p.median);
            println!(
                "- {}, xdplb {mode}: {v:.3} vs HAProxy {h:.3} s/100k = {r:.3} of HAProxy's ({}); \
                 counting only the time inside `xdp_lb` (the lower bound): {:.3} of HAProxy's.",
                conns.label(),
                if r <= 0.1 { "met" } else { "**missed**" },
                program / h
            );
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// The reference row of the same lab and connection handling.
fn reference<'a>(results: &'a [Results], res: &Results) -> Option<&'a Results> {
    let mode = match res.case {
        Case::Xdplb(m) => m,
        Case::Haproxy => Mode::Dsr,
        Case::Direct(_) => return None,
    };
    results.iter().find(|r| r.case == Case::Direct(mode) && r.conns == res.conns)
}

/// The balancer's attributed CPU seconds per 100k requests (median), as the notes define it.
fn lb_cpu(res: &Results, reference: Option<&Results>) -> Option<f64> {
    let med = |v: Vec<f64>| Summary::of(&v).map(|s| s.median);
    match res.case {
        Case::Direct(_) => None,
        Case::Haproxy => med(res.samples.iter().map(|s| s.per_100k(s.process)).collect()),
        Case::Xdplb(_) => {
            let base = med(reference?.samples.iter().map(|s| s.per_100k(s.softirq)).collect())?;
            med(res
                .samples
                .iter()
                .map(|s| s.per_100k(s.process) + s.per_100k(s.softirq) - base)
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://10.99.0.11/\n  2 threads and 32 connections\n  Latency Distribution\n     50%  410.00us\n     75%  1.00ms\n     99%    2.50ms\n  123456 requests in 10.00s, 20.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\nRequests/sec:  12345.60\nTransfer/sec:      2.00MB\n";
        let s = parse_wrk(out).unwrap();
        assert_eq!(
            (s.p50_ms, s.p99_ms, s.requests, s.rps, s.errors),
            (0.41, 2.5, 123_456.0, 12_345.6, 5)
        );
    }
}
