//! `cargo xtask setup`: installs what building and testing xdplb needs, and only
//! what is missing. Safe to run again; fast when everything is there.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{is_root, output, run, step, succeeds};

/// The bpf-linker release this workspace is tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The cargo-deb release `cargo xtask package` is tested with.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What to install beyond the eBPF toolchain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Extras {
    /// Only what building needs.
    #[default]
    Build,
    /// Also what the lab, end-to-end and deployment-kit tests run: nginx, ethtool,
    /// nftables, Prometheus (and its promtool), lintian, and the redundancy engines
    /// keepalived and BIRD 2.
    Lab,
    /// Also the peers and load tools benchmarks compare against: haproxy, wrk.
    Bench,
}

pub fn setup(extras: Extras) -> Result<()> {
    step("checking the nightly toolchain (builds the XDP programs)");
    ensure_nightly_rust_src()?;
    let llvm = nightly_llvm_major()?;
    step(format!("nightly uses LLVM {llvm}; checking bpf-linker"));
    ensure_bpf_linker(llvm)?;
    let mut packages = vec![];
    if extras >= Extras::Lab {
        packages.extend([
            "nginx",
            "ethtool",
            "iproute2",
            "nftables",
            "bpftool",
            "curl",
            "prometheus",
            "lintian",
            "keepalived",
            "bird2",
        ]);
    }
    if extras >= Extras::Bench {
        packages.extend(["haproxy", "wrk"]);
    }
    if !packages.is_empty() {
        step(format!("checking packages: {}", packages.join(" ")));
        apt_install(&packages)?;
    }
    step("setup complete");
    Ok(())
}

fn ensure_nightly_rust_src() -> Result<()> {
    if !succeeds(Command::new("rustup").arg("--version")) {
        bail!(
            "rustup not found: install Rust with rustup (https://rustup.rs), then run `cargo xtask setup` again"
        );
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the XDP programs need a nightly toolchain (-Z build-std)")?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    rust-src: installed");
    } else {
        step("adding rust-src to nightly (core is rebuilt for the BPF target)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// cargo-deb, which `cargo xtask package` builds the Debian package with.
pub fn ensure_cargo_deb() -> Result<()> {
    if let Ok(v) = output(Command::new("cargo").args(["deb", "--version"])) {
        eprintln!("    {}: installed", v.trim());
        return Ok(());
    }
    step(format!(
        "installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package; a few minutes, once)"
    ));
    run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// The LLVM major version of the nightly compiler: bpf-linker must link the same one.
fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    parse_llvm_major(&vv)
        .with_context(|| format!("no `LLVM version` in `rustc +nightly -vV`:\n{vv}"))
}

fn parse_llvm_major(vv: &str) -> Option<u32> {
    let v = vv.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    v.split('.').next()?.trim().parse().ok()
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    if let Ok(v) = output(Command::new("bpf-linker").arg("--version")) {
        if linked_llvm_major().is_none_or(|m| m == llvm) {
            eprintln!("    {}: installed", v.trim());
            return Ok(());
        }
        step(format!("bpf-linker links another LLVM than nightly's {llvm}; rebuilding it"));
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    if !std::path::Path::new(&prefix).join("bin/llvm-config").exists() {
        apt_install(&[&format!("llvm-{llvm}-dev")]).with_context(|| {
            format!(
                "bpf-linker needs LLVM {llvm} development files ({prefix}); install llvm-{llvm}-dev"
            )
        })?;
    }
    step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (a few minutes, once)"
    ));
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm}")])
        .env("LLVM_PREFIX", &prefix))
}

/// The LLVM major of the installed bpf-linker's libLLVM, when ldd can tell.
fn linked_llvm_major() -> Option<u32> {
    let path = output(Command::new("sh").args(["-c", "command -v bpf-linker"])).ok()?;
    let ldd = output(Command::new("ldd").arg(path.trim())).ok()?;
    let lib = ldd.lines().find(|l| l.contains("libLLVM"))?;
    // libLLVM-22.so.1 / libLLVM.so.22.1
    let digits: String = lib
        .split("libLLVM")
        .nth(1)?
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Installs the Debian packages that are missing, refreshing the package lists
/// once when apt does not know a package.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("    packages: all installed");
        return Ok(());
    }
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!("missing packages {} and no apt-get here: install them by hand", missing.join(" "));
    }
    if !is_root() {
        bail!(
            "missing packages {}: run as root, or `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        step("refreshing apt package lists");
        run(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_verbose_version() {
        let vv =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
