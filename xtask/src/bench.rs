//! `cargo xtask bench`: runs the benchmark binaries and splices their Markdown into
//! BENCHMARKS.md, each table between markers so a rerun replaces it in place.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, step};

const FILE: &str = "BENCHMARKS.md";
const ALL: &[&str] = &["xdp"];

pub fn run(which: &[String]) -> Result<()> {
    let which: Vec<&str> = if which.is_empty() { ALL.to_vec() } else { which.iter().map(String::as_str).collect() };
    for w in &which {
        if !ALL.contains(w) {
            bail!("unknown benchmark `{w}`; known: {}", ALL.join(", "));
        }
    }
    let machine = machine()?;
    for w in which {
        step(format!("benchmark {w}"));
        let body = output(Command::new("cargo").args([
            "run", "--release", "--quiet", "--package", "xdplb-tests", "--bin", "bench", "--", w,
        ]).stderr(std::process::Stdio::inherit()))?;
        let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
        let mut section = String::new();
        writeln!(section, "Measured {} on {machine}.", date.trim())?;
        writeln!(section, "Command: `cargo xtask bench {w}`\n")?;
        section.push_str(&body);
        splice(Path::new(FILE), w, &section)?;
        eprintln!("    wrote the `{w}` section of {FILE}");
    }
    Ok(())
}

fn machine() -> Result<String> {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = output(Command::new("uname").arg("-r"))?;
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())))
        .unwrap_or_else(|| "unknown CPU".into());
    Ok(format!("{cpus} cores ({model}), Linux {}", kernel.trim()))
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`,
/// appending the pair when absent.
fn splice(path: &Path, name: &str, body: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let block = format!("{open}\n{body}\n{close}");
    let new = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + close.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
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
        splice(&f, "a", "one").unwrap();
        splice(&f, "b", "two").unwrap();
        splice(&f, "a", "three").unwrap();
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(t.contains("intro") && t.contains("three") && t.contains("two") && !t.contains("one"), "{t}");
        assert!(t.find("three").unwrap() < t.find("two").unwrap(), "a stays before b: {t}");
    }
}
