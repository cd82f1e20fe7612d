//! `cargo xtask`: the developer tasks of xdplb. Every task that builds runs
//! `setup` first, so a fresh machine needs no manual step.

mod bench;
mod cmd;
mod lab;
mod lint;
mod setup;
mod skips;

use std::process::Command;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    cmd::{run, step},
    setup::{Extras, ensure_cargo_deb, setup},
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for xdplb",
    long_about = "Developer tasks for xdplb.\n\n\
        Fresh machine? `cargo xtask test` installs what is missing (nightly rust-src,\n\
        bpf-linker built against nightly's LLVM, lab packages) and runs every test.",
    after_help = "Examples:\n  cargo xtask setup           # toolchain and cargo-deb\n  cargo xtask package         # target/debian/xdplb_*.deb\n  cargo xtask demo            # failover, live, in the network-namespace lab (needs root)\n  cargo xtask test            # unit, packet and namespace tests (needs root)\n  cargo xtask bench xdp       # ns/packet through BPF_PROG_TEST_RUN -> BENCHMARKS.md"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites: nightly rust-src, bpf-linker (and LLVM dev files),
    /// cargo-deb, and with --lab / --bench the Debian packages the lab, the tests and
    /// the benchmarks use.
    Setup {
        /// Also nginx, ethtool, nftables, bpftool, curl, prometheus, lintian, keepalived,
        /// bird2 (lab, end-to-end, monitoring, package and redundancy tests).
        #[arg(long)]
        lab: bool,
        /// Also haproxy and wrk (benchmarks against peers); implies --lab.
        #[arg(long)]
        bench: bool,
    },
    /// Build the Debian package target/debian/xdplb_VERSION_ARCH.deb (cargo-deb): the
    /// binary with its XDP programs, the systemd units, /etc/xdplb/xdplb.yaml, the
    /// Prometheus rules and Grafana dashboard. Install it with
    /// `apt install ./target/debian/xdplb_*.deb`.
    Package,
    /// Build the `xdplb` binary (and the XDP programs it embeds).
    Build {
        /// Optimised build, as deployed.
        #[arg(long)]
        release: bool,
    },
    /// The failover demo: builds, brings the lab up, runs xdplb with HTTP load, kills and
    /// revives WAF nodes and prints what happens once a second (needs root; < 60 s).
    Demo {
        /// Forwarding mode of the balancer.
        #[arg(long, value_enum, default_value_t = lab::Mode::Dsr)]
        mode: lab::Mode,
        /// Also draw the run as a timeline chart (SVG): requests/s per node, events marked.
        #[arg(long, value_name = "FILE")]
        chart: Option<std::path::PathBuf>,
        /// The reserve tier: waf3 and waf4 are reserves (`backup: true`); both primaries
        /// stop and the reserves take over, then the primaries return.
        #[arg(long)]
        reserve: bool,
        /// A pair of balancers instead of one: vrrp (keepalived) or bgp (BIRD, ECMP on a
        /// router); a balancer's host dies, comes back, and one is stopped for maintenance,
        /// with a column per balancer.
        #[arg(long, value_enum)]
        ha: Option<lab::Ha>,
    },
    /// Run every test: format and clippy checks, unit tests, packet-level and
    /// namespace tests (root), then a million fuzzed frames through each XDP program.
    /// A test that cannot run here (not root, a tool missing) is skipped and counted:
    /// the run fails when any was, unless --allow-skips; under CI=true it fails at once.
    Test {
        /// Pass even when tests were skipped (they are still listed).
        #[arg(long)]
        allow_skips: bool,
    },
    /// Check formatting (cargo fmt) and lints (clippy, warnings as errors), as `test` does first.
    Lint,
    /// The network-namespace lab: client, lb, waf1..N on a bridge, nginx on each
    /// WAF node (needs root). `cargo xtask lab up --help` for options.
    Lab {
        #[command(subcommand)]
        action: lab::LabAction,
    },
    /// Run benchmarks and write their tables into BENCHMARKS.md.
    ///
    /// A/B of xdp-lb objects (no rebuild of the bench between them): build each tree's
    /// object with `cargo xtask build-ebpf --out FILE`, then
    /// `cargo xtask bench xdp --object A=FILE --object B=FILE [--samples N]`: the second
    /// method's cases, and its table hits over working sets of 1 to 65536 flows, for
    /// every object, interleaved in one run, each case's net ns per object and the
    /// ratio to the first; printed, not written into BENCHMARKS.md.
    /// `cargo xtask bench live --object A=FILE --object B=FILE [--samples RUNS]`: each
    /// object's live packet rate (dsr, ipip; UDP, TCP) against the floor's in the same
    /// run (nftables left out), × floor and the ns per frame it adds, printed;
    /// `--object A=FILE@N` sizes A's connection tables as `conn_table_size: N`.
    /// LIVE_BENCH_ONLY=dsr,udp (words: dsr, ipip, udp, tcp) keeps those modes and
    /// protocols; `target/release/bench live RUNS --flows N` sets the flows cycled
    /// (default 4096).
    Bench {
        /// Which: xdp, live, http, maglev, conntrack, synflood, failover, soak, sync (see
        /// BENCHMARKS.md), or failover:balancers (the balancer-pair rows of failover alone).
        /// Default: all but soak (ten minutes; `cargo xtask bench soak`).
        which: Vec<String>,
        /// `NAME=FILE`: an xdp-lb object to compare (bench xdp or live only; repeat it;
        /// the first is the base of the ratios). `FILE` `main` names the object the bench
        /// embeds. bench live takes `NAME=FILE@N` too: that object's connection tables
        /// as `conn_table_size: N` sizes them.
        #[arg(long = "object", value_name = "NAME=FILE")]
        objects: Vec<String>,
        /// With --object: samples per case: bench xdp's second-method test runs (default
        /// 300), bench live's runs of 2 s (default 6).
        #[arg(long, requires = "objects")]
        samples: Option<usize>,
        /// `NAME=PIN`: an XDP program loaded, configured and pinned outside this
        /// repository (Katran's balancer, for issue #13), timed by both of bench xdp's
        /// methods beside xdp_lb on the same frames (first: SYN v4 and v6, a TCP and a UDP
        /// table hit, non-VIP; second: its cases and a whole new connection, the program
        /// run through a tail call behind the frame restore) with the targets judged
        /// against it; repeat a NAME with a second load (the faster is kept). With bench
        /// live: its packet rate against the floor beside xdp_lb's (configure it for
        /// bench live's VIP, 198.19.100.1 TCP 80 and UDP 53; loads measured in turn).
        /// Printed, not written into BENCHMARKS.md.
        #[arg(long = "reference", value_name = "NAME=PIN", conflicts_with = "objects")]
        references: Vec<String>,
        /// With --object or --reference (bench xdp): xdp_lb's connection tables as the
        /// controller sizes them from `conn_table_size: N`. Default: the test fixtures'
        /// 8192, which the second method's stream of new flows keeps full, so every
        /// inserting ACK evicts; the controller's default, 1048576, stays unfilled by it,
        /// as Katran's default table of 8 M does.
        #[arg(long = "conn-table", value_name = "N")]
        conn_table: Option<u32>,
    },
    /// Build this tree's XDP objects (lb-ebpf) as lb-userspace's build.rs does, and copy
    /// xdp-lb to FILE: a scratch object for `cargo xtask bench xdp|live --object NAME=FILE`.
    /// The command it runs (from the tree's root):
    /// `CARGO_ENCODED_RUSTFLAGS=$'--cfg=bpf_target_arch="x86_64"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf'
    /// rustup run nightly cargo build --package lb-ebpf --bins --release
    /// --target bpfel-unknown-none -Z build-std=core --target-dir target/ebpf`,
    /// leaving target/ebpf/bpfel-unknown-none/release/xdp-lb.
    BuildEbpf {
        /// Where to copy xdp-lb.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup { lab, bench } => {
            setup(if bench {
                Extras::Bench
            } else if lab {
                Extras::Lab
            } else {
                Extras::Build
            })?;
            ensure_cargo_deb()
        }
        Task::Package => {
            setup(Extras::Build)?;
            ensure_cargo_deb()?;
            package()
        }
        Task::Build { release } => {
            setup(Extras::Build)?;
            step("building xdplb");
            let mut c = Command::new("cargo");
            c.args(["build", "--package", "lb-userspace"]);
            if release {
                c.arg("--release");
            }
            run(&mut c)
        }
        Task::Test { allow_skips } => test(allow_skips),
        Task::Lint => {
            setup(Extras::Build)?;
            lint::lint()
        }
        Task::Demo { mode, chart, reserve, ha } => {
            setup(Extras::Lab)?;
            step("building xdplb and the demo (release)");
            run(Command::new("cargo").args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "lb-userspace",
                "-p",
                "xdplb-tests",
                "--bin",
                "xdplb",
                "--bin",
                "demo",
            ]))?;
            let mut demo = Command::new("target/release/demo");
            demo.arg(mode.as_str());
            if reserve {
                demo.arg("--reserve");
            }
            if let Some(chart) = chart {
                demo.arg("--chart").arg(chart);
            }
            if let Some(ha) = ha {
                demo.arg("--ha").arg(ha.as_str());
            }
            run(&mut demo)
        }
        Task::Lab { action } => {
            setup(Extras::Lab)?;
            lab::run_lab(&action)
        }
        Task::Bench { which, objects, samples, references, conn_table } => {
            anyhow::ensure!(
                conn_table.is_none() || !(references.is_empty() && objects.is_empty()),
                "--conn-table goes with --object or --reference (cargo xtask bench xdp): \
                 BENCHMARKS.md's bench xdp section is measured on the fixtures' table"
            );
            setup(Extras::Bench)?;
            if !references.is_empty() {
                bench::against_references(&which, &references, conn_table)
            } else if objects.is_empty() {
                bench::run(&which)
            } else {
                bench::compare_objects(&which, &objects, samples, conn_table)
            }
        }
        Task::BuildEbpf { out } => {
            setup(Extras::Build)?;
            bench::build_ebpf(&out)
        }
    }
}

/// `cargo deb` for the `xdplb` package (a release build of lb-userspace).
fn package() -> Result<()> {
    step("building the Debian package (cargo deb: release build of xdplb)");
    run(Command::new("cargo").args(["deb", "--package", "lb-userspace", "--quiet"]))?;
    step("package in target/debian/: install it with `apt install ./target/debian/xdplb_*.deb`");
    Ok(())
}

fn test(allow_skips: bool) -> Result<()> {
    // Every test process appends the tests it skips here (lb_userspace::skip).
    let skip_log =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xdplb-test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    // SAFETY: set before any thread is started; the tests we run inherit it.
    unsafe { std::env::set_var("XDPLB_SKIP_LOG", &skip_log) };
    let result = run_tests();
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let verdict = skips::verdict(&skipped, allow_skips);
    eprintln!("{}", verdict.summary);
    result?;
    verdict.outcome?;
    step("all tests passed");
    Ok(())
}

fn run_tests() -> Result<()> {
    setup(Extras::Lab)?;
    ensure_cargo_deb()?;
    lint::lint()?;
    step(
        "unit tests (config, Maglev, health checks, map writer, deployment kit with promtool, xtask)",
    );
    run(Command::new("cargo").args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "xdplb-tests",
        "--exclude",
        "lb-ebpf",
    ]))?;
    // lb-ebpf's bins are BPF programs; its library (wire headers, checksums) builds here too.
    step("unit tests of the XDP programs' shared code (lb-ebpf's library)");
    run(Command::new("cargo").args(["test", "--package", "lb-ebpf", "--lib"]))?;
    step("building the xdplb binary the namespace tests run");
    run(Command::new("cargo").args(["build", "--package", "lb-userspace", "--bin", "xdplb"]))?;
    // tests/tests/package.rs installs it and runs it as the unit would.
    package()?;
    step(
        "packet-level, namespace, balancer-pair (keepalived, BIRD), monitoring and package tests \
         (xdplb-tests; need root)",
    );
    run(Command::new("cargo").args(["test", "--no-fail-fast", "--package", "xdplb-tests"]))?;
    fuzz()
}

/// A million frames through each XDP program, judged frame by frame; the run
/// prints how many and which invariants. Built optimised: the judging, not the
/// kernel, is what a debug build makes slow.
fn fuzz() -> Result<()> {
    step(format!("fuzz: {FUZZ_FRAMES} frames through xdp-lb and through xdp-decap (need root)"));
    run(Command::new("cargo")
        .args([
            "test",
            "--release",
            "--package",
            "xdplb-tests",
            "--test",
            "fuzz",
            "--",
            "--nocapture",
        ])
        .env("FUZZ_FRAMES", FUZZ_FRAMES.to_string()))
}

/// Frames per program in `cargo xtask test`'s fuzz run.
const FUZZ_FRAMES: u64 = 1_000_000;
