//! `cargo xtask lab up|down|status`: runs the `lab` binary of the xdplb-tests
//! crate, where the lab lives (xtask itself must not depend on the xdplb crates:
//! it builds before the eBPF toolchain exists).

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};

use crate::cmd::{is_root, run, step};

#[derive(Subcommand)]
pub enum LabAction {
    /// Build the lab (namespaces client, lb, waf1..N on bridge xlb-br0), replacing any previous one.
    #[command(
        after_help = "Examples:\n  cargo xtask lab up\n  cargo xtask lab up --mode ipip --wafs 5\n  \
        cargo xtask lab up --ha vrrp    # lb and lb2 with keepalived; the client routes the VIPs to the floating next hop\n  \
        cargo xtask lab up --ha bgp     # lb, lb2 and a router with BIRD (BGP, BFD, ECMP)\n\n\
        With --ha, xdplb is not started: `lab up` prints the command for each balancer."
    )]
    Up {
        /// How the balancer will forward: the WAF nodes get `xdp_decap` in ipip mode.
        #[arg(long, value_enum, default_value_t = Mode::Dsr)]
        mode: Mode,
        /// Number of WAF nodes (nginx + UDP responder each).
        #[arg(long, default_value_t = 3)]
        wafs: usize,
        /// A pair of balancers (lb, lb2) and the engine that moves traffic between them:
        /// vrrp (keepalived, a floating next hop) or bgp (BIRD on both and on a router, ECMP).
        #[arg(long, value_enum)]
        ha: Option<Ha>,
    },
    /// Remove everything the lab made (also after a crash).
    Down,
    /// Show namespaces, addresses, XDP per interface, nginx per node, probes from the lb.
    Status,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    Dsr,
    Ipip,
}

/// Balancer redundancy in the lab.
#[derive(Clone, Copy, ValueEnum)]
pub enum Ha {
    Vrrp,
    Bgp,
}

impl Ha {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vrrp => "vrrp",
            Self::Bgp => "bgp",
        }
    }
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dsr => "dsr",
            Self::Ipip => "ipip",
        }
    }
}

fn args(action: &LabAction) -> Vec<String> {
    match action {
        LabAction::Up { mode, wafs, ha } => {
            let mut v = vec![
                "up".into(),
                "--mode".into(),
                mode.as_str().into(),
                "--wafs".into(),
                wafs.to_string(),
            ];
            if let Some(ha) = ha {
                v.extend(["--ha".into(), ha.as_str().into()]);
            }
            v
        }
        LabAction::Down => vec!["down".into()],
        LabAction::Status => vec!["status".into()],
    }
}

pub fn run_lab(action: &LabAction) -> Result<()> {
    if !is_root() {
        bail!("the lab needs root (network namespaces, XDP): run as root");
    }
    let args = args(action);
    step(format!("lab {}", args.join(" ")));
    // The lab prepares its WAF nodes with `xdplb backend-setup`: build it beside `lab`.
    run(Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "lb-userspace",
        "--bin",
        "xdplb",
    ]))?;
    run(Command::new("cargo")
        .args(["run", "--release", "--quiet", "-p", "xdplb-tests", "--bin", "lab", "--"])
        .args(&args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_passes_mode_and_wafs() {
        assert_eq!(
            args(&LabAction::Up { mode: Mode::Ipip, wafs: 5, ha: None }),
            ["up", "--mode", "ipip", "--wafs", "5"]
        );
        assert_eq!(args(&LabAction::Status), ["status"]);
        assert_eq!(
            args(&LabAction::Up { mode: Mode::Dsr, wafs: 3, ha: Some(Ha::Bgp) }),
            ["up", "--mode", "dsr", "--wafs", "3", "--ha", "bgp"]
        );
    }
}
