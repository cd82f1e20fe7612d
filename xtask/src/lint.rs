//! `cargo xtask lint`, also the first step of `cargo xtask test`: formatting and
//! clippy (the workspace's pedantic set, warnings as errors), so CI fails on either.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd::{output, run, step};

/// The target the XDP programs are built for (as lb-userspace's build.rs does).
const BPF_TARGET: &str = "bpfel-unknown-none";

pub fn lint() -> Result<()> {
    ensure_components()?;
    step("format (cargo fmt --check)");
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    step("clippy: userspace, tests and xtask");
    // lb-ebpf is left out here: it only builds for the BPF target (next step).
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step(format!("clippy: the XDP programs (nightly, {BPF_TARGET})"));
    // As the real build: nightly with core built for the BPF target. Its own target
    // directory, so the host build's artifacts stay valid.
    run(Command::new("cargo").args([
        "+nightly",
        "clippy",
        "--package",
        "lb-ebpf",
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/bpf-clippy",
        "--",
        "-D",
        "warnings",
    ]))
}

/// rustfmt and clippy on the toolchain in use, clippy on nightly (which `setup`
/// installs with the minimal profile).
fn ensure_components() -> Result<()> {
    for (toolchain, components) in
        [(None, &["rustfmt", "clippy"][..]), (Some("nightly"), &["clippy"])]
    {
        let on = |c: &mut Command| {
            if let Some(t) = toolchain {
                c.args(["--toolchain", t]);
            }
        };
        let mut list = Command::new("rustup");
        list.args(["component", "list", "--installed"]);
        on(&mut list);
        let installed = output(&mut list)?;
        for component in components {
            if !installed.lines().any(|l| l.starts_with(component)) {
                step(format!(
                    "adding {component} to {}",
                    toolchain.unwrap_or("the toolchain in use")
                ));
                let mut add = Command::new("rustup");
                add.args(["component", "add", component]);
                on(&mut add);
                run(&mut add)?;
            }
        }
    }
    Ok(())
}
