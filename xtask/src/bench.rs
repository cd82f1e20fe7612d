//! `cargo xtask bench`: runs the benchmark binaries and splices their Markdown into
//! BENCHMARKS.md, each table between markers so a rerun replaces it in place.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cmd::{output, run as run_cmd, step};

const FILE: &str = "BENCHMARKS.md";

/// Every benchmark, in the order `cargo xtask bench` runs them: its name (the
/// subcommand of the `bench` binary, `tests/src/bench/NAME.rs`, and the marker in
/// BENCHMARKS.md) and the heading it gets when its section is new. The one list:
/// a new benchmark is a line here and a module there.
const BENCHES: &[(&str, &str)] = &[
    ("xdp", "XDP cost per packet"),
    ("live", "Live packet rate: xdplb against the floor and nftables DNAT"),
    ("http", "HTTP through the balancer: xdplb against HAProxy"),
    ("maglev", "Maglev table: build time, disruption, balance"),
    ("conntrack", "Connection table under pressure, and map memory"),
    ("synflood", "SYN flood: established flows kept under a spoofed flood, by table size"),
    ("failover", "Failover: a dead WAF node stops getting new connections — xdplb against HAProxy"),
    ("soak", "Soak: ten minutes of 1 M flows, flapping backends and reloads"),
    ("sync", "Peer sync: exceptions and bytes per ring change at 1 M flows"),
];

/// Run only when named (`cargo xtask bench soak`), not by a bare `cargo xtask bench`:
/// the soak takes ten minutes and the whole machine.
const OPT_IN: &[&str] = &["soak"];

/// Parts of a section that can be rerun alone, only when named: the name, the
/// benchmark and the argument that runs the part alone, and the heading the part's
/// Markdown starts with. A part is the end of its benchmark's section, from that
/// heading on, and a rerun replaces just that.
const PARTS: &[(&str, &str, &str, &str)] =
    &[("failover:balancers", "failover", "--balancers-only", "### Balancer failover")];

pub fn run(which: &[String]) -> Result<()> {
    let names: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
    let which: Vec<&str> = if which.is_empty() {
        names.iter().copied().filter(|n| !OPT_IN.contains(n)).collect()
    } else {
        which.iter().map(String::as_str).collect()
    };
    for w in &which {
        if !names.contains(w) && !PARTS.iter().any(|p| p.0 == *w) {
            let parts: Vec<&str> = PARTS.iter().map(|p| p.0).collect();
            bail!("unknown benchmark `{w}`; known: {}, {}", names.join(", "), parts.join(", "));
        }
    }
    let machine = machine()?;
    step("building the benchmarks and the xdplb binary they run (release)");
    run_cmd(&mut cargo_release("build", &["lb-userspace", "xdplb-tests"], &["xdplb", "bench"]))?;
    let started = Instant::now();
    let mut took = Vec::new();
    for w in which {
        step(format!("benchmark {w}"));
        let part = PARTS.iter().find(|p| p.0 == w);
        let t = Instant::now();
        let mut bench = cargo_release("run", &["xdplb-tests"], &["bench"]);
        bench.args(["--", part.map_or(w, |p| p.1)]).args(part.map(|p| p.2));
        let body = output(bench.stderr(std::process::Stdio::inherit()))?;
        let secs = t.elapsed().as_secs();
        let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
        if let Some(&(_, of, _, heading)) = part {
            let body = body.trim();
            let (head, rest) = body.split_once('\n').unwrap_or((body, ""));
            let text = format!(
                "{head}\n\nMeasured {} on {machine}; this part took {secs} s.\n\
                 Command: `cargo xtask bench {w}`\n{rest}",
                date.trim()
            );
            splice_part(Path::new(FILE), of, heading, &text)?;
            eprintln!("    wrote the `{w}` part of the `{of}` section of {FILE} ({secs} s)");
            took.push(format!("{w} {secs} s"));
            continue;
        }
        let mut section = String::new();
        writeln!(section, "Measured {} on {machine}; this section took {secs} s.", date.trim())?;
        writeln!(section, "Command: `cargo xtask bench {w}`\n")?;
        section.push_str(&body);
        let title = BENCHES.iter().find(|(n, _)| *n == w).map_or(w, |(_, t)| *t);
        splice(Path::new(FILE), w, &format!("## {title} (`cargo xtask bench {w}`)"), &section)?;
        eprintln!("    wrote the `{w}` section of {FILE} ({secs} s)");
        took.push(format!("{w} {secs} s"));
    }
    step(format!("benchmarks done in {} s: {}", started.elapsed().as_secs(), took.join(", ")));
    Ok(())
}

/// `bench xdp|live --object NAME=FILE ...`: the objects side by side (bench xdp's
/// second method, or bench live's rates against the floor), printed (an A/B for
/// development, not a BENCHMARKS.md section).
pub fn compare_objects(
    which: &[String],
    objects: &[String],
    samples: Option<usize>,
    conn_table: Option<u32>,
) -> Result<()> {
    ensure!(
        conn_table.is_none() || matches!(which, [w] if w == "xdp"),
        "--conn-table is for `cargo xtask bench xdp` alone"
    );
    let (bench_args, default) = match which {
        [w] if w == "xdp" => (["xdp", "0"].as_slice(), 300),
        [w] if w == "live" => (["live"].as_slice(), 6),
        _ => bail!("--object is for `cargo xtask bench xdp` or `cargo xtask bench live` alone"),
    };
    step("building the bench (release)");
    run_cmd(&mut cargo_release("build", &["xdplb-tests"], &["bench"]))?;
    let mut bench = Command::new("target/release/bench");
    bench.args(bench_args).arg(samples.unwrap_or(default).to_string());
    for o in objects {
        bench.args(["--object", o]);
    }
    bench.args(conn_table_args(conn_table));
    step(format!("bench {}, objects {}", bench_args[0], objects.join(" ")));
    run_cmd(&mut bench)
}

/// `bench xdp|live --reference NAME=PIN ...`: xdp_lb and the pinned programs side
/// by side (bench xdp: by both methods; bench live: packet rates against the floor),
/// printed, not a BENCHMARKS.md section: the programs are loaded outside this
/// repository.
pub fn against_references(
    which: &[String],
    references: &[String],
    conn_table: Option<u32>,
) -> Result<()> {
    let (bench_args, what) = match which {
        [w] if w == "xdp" => (["xdp", "100000", "300"].as_slice(), "bench xdp, both methods"),
        [w] if w == "live" => {
            ensure!(conn_table.is_none(), "--conn-table is for `cargo xtask bench xdp` alone");
            (["live"].as_slice(), "bench live")
        }
        _ => bail!("--reference is for `cargo xtask bench xdp` or `cargo xtask bench live` alone"),
    };
    step("building the bench (release)");
    run_cmd(&mut cargo_release("build", &["xdplb-tests"], &["bench"]))?;
    let mut bench = Command::new("target/release/bench");
    bench.args(bench_args);
    for r in references {
        bench.args(["--reference", r]);
    }
    bench.args(conn_table_args(conn_table));
    step(format!("{what}, beside {}", references.join(" ")));
    run_cmd(&mut bench)
}

/// The bench's `--conn-table N`, if asked for.
fn conn_table_args(conn_table: Option<u32>) -> Vec<String> {
    conn_table.map(|n| vec!["--conn-table".to_owned(), n.to_string()]).unwrap_or_default()
}

/// Where [`build_ebpf`] builds: apart from lb-userspace's own (its OUT_DIR).
const EBPF_TARGET_DIR: &str = "target/ebpf";

/// Builds this tree's lb-ebpf as aya-build does in lb-userspace's build.rs (nightly,
/// bpfel, build-std=core, BTF) and copies xdp-lb to `out`.
pub fn build_ebpf(out: &Path) -> Result<()> {
    step(format!("building lb-ebpf (bpfel, release) into {EBPF_TARGET_DIR}"));
    let arch = format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH);
    let flags = [arch.as_str(), "-Cdebuginfo=2", "-Clink-arg=--btf"];
    run_cmd(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "build", "--package", "lb-ebpf", "--bins"])
            .args(["--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--target-dir", EBPF_TARGET_DIR])
            .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    let built = Path::new(EBPF_TARGET_DIR).join("bpfel-unknown-none/release/xdp-lb");
    std::fs::copy(&built, out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    step(format!("xdp-lb of this tree in {}", out.display()));
    Ok(())
}

fn machine() -> Result<String> {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = output(Command::new("uname").arg("-r"))?;
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Ok(format!("{cpus} cores ({model}), Linux {}", kernel.trim()))
}

/// `cargo VERB --release --quiet` for `bins` of `packages`.
fn cargo_release(verb: &str, packages: &[&str], bins: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args([verb, "--release", "--quiet"]);
    for p in packages {
        c.args(["--package", p]);
    }
    for b in bins {
        c.args(["--bin", b]);
    }
    c
}

/// Replaces the end of section `name`, from the line starting with `heading` to
/// its closing marker, with `body`; the section and the part must be there (a
/// whole run of the benchmark writes them).
fn splice_part(path: &Path, name: &str, heading: &str, body: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        bail!("no `{name}` section in {}: run `cargo xtask bench {name}` first", path.display());
    };
    let Some(h) = text[a..b].find(&format!("\n{heading}")).map(|h| a + h + 1) else {
        bail!("no `{heading}` part in the `{name}` section: run `cargo xtask bench {name}`");
    };
    let new = format!("{}{}\n\n{}", &text[..h], body.trim(), &text[b..]);
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`,
/// appending `heading` and the pair when absent.
fn splice(path: &Path, name: &str, heading: &str, body: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let block = format!("{open}\n{body}\n{close}");
    let new = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + close.len()..]),
        _ => format!("{}\n\n{heading}\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_its_own_section() {
        let dir = std::env::temp_dir().join(format!("xtask-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("B.md");
        std::fs::write(&f, "# B\nintro\n").unwrap();
        splice(&f, "a", "## A", "one").unwrap();
        splice(&f, "b", "## B", "two").unwrap();
        splice(&f, "a", "## A", "three").unwrap();
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(
            t.contains("intro") && t.contains("three") && t.contains("two") && !t.contains("one"),
            "{t}"
        );
        assert!(t.find("three").unwrap() < t.find("two").unwrap(), "a stays before b: {t}");
        assert_eq!(t.matches("## A").count(), 1, "the heading is added once: {t}");
    }

    #[test]
    fn a_part_replaces_only_the_end_of_its_section() {
        let dir = std::env::temp_dir().join(format!("xtask-part-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("B.md");
        std::fs::write(&f, "# B\n").unwrap();
        splice(&f, "a", "## A", "rows\n\n### Part\n\nold part\n").unwrap();
        splice(&f, "b", "## B", "other").unwrap();
        splice_part(&f, "a", "### Part", "### Part\n\nnew part\n").unwrap();
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(t.contains("rows\n\n### Part\n\nnew part\n\n<!-- /bench:a -->"), "{t}");
        assert!(!t.contains("old part") && t.contains("other"), "{t}");
        let err = splice_part(&f, "b", "### Part", "x").unwrap_err().to_string();
        assert!(err.contains("no `### Part` part"), "{err}");
        let err = splice_part(&f, "c", "### Part", "x").unwrap_err().to_string();
        assert!(err.contains("cargo xtask bench c"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
