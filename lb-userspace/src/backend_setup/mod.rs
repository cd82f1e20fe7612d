//! `xdplb backend-setup`: what a WAF node needs for the balancer's forwarding mode,
//! printed as idempotent shell commands, checked (`--check`) or applied (`--apply`)
//! on the node. The decisions are in `plan` (pure), the node's state in `host`.

mod host;
pub mod plan;

use std::{fmt::Write as _, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Result, anyhow, bail};

use self::plan::{Node, Plan, Step};
use crate::config::{self, Config, Forwarding};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n\
    \x20 xdplb backend-setup --config xdplb.yaml            # print the commands for this node\n\
    \x20 xdplb backend-setup --config xdplb.yaml --check    # what is missing here (exit 1 if anything)\n\
    \x20 xdplb backend-setup --config xdplb.yaml --apply    # apply what is missing (root)\n\
    \x20 xdplb backend-setup -c xdplb.yaml --backend 10.0.0.12 --interface eth0   # for another node\n\n\
    Use the balancer's own config: the node finds the VIPs it serves by its address in the\n\
    backend lists. dsr: the VIPs on lo, arp_ignore=1 and arp_announce=2, no strict rp_filter.\n\
    ipip: the VIPs on lo, no strict rp_filter, the TCP MSS clamped so that a full-size client\n\
    segment still fits after encapsulation, and xdp-decap on the interface. Settings made\n\
    with --apply last until reboot: run it at boot (the package's xdplb-backend.service).")]
pub struct Args {
    /// The balancer's config file (the same as on the balancer).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Check this node: list each item as ok or MISSING; exit 1 if any is missing.
    #[arg(long, conflicts_with = "apply")]
    pub check: bool,
    /// Apply what is missing on this node (as root); running it again changes nothing.
    #[arg(long)]
    pub apply: bool,
    /// The interface that receives the balancer's frames (default: the one holding
    /// this node's backend address).
    #[arg(long)]
    pub interface: Option<String>,
    /// This node's address as the config's backend lists name it (default: found among
    /// this node's own addresses).
    #[arg(long)]
    pub backend: Option<IpAddr>,
    /// Prepare for these VIPs (by name) instead of those that list this node.
    #[arg(long = "vip", value_name = "NAME")]
    pub vips: Vec<String>,
    /// The interface's MTU for the MSS clamp (ipip; default: the interface's own).
    #[arg(long)]
    pub mtu: Option<u32>,
}

/// Runs the command; the exit code says whether the node is (now) prepared.
pub fn run(args: &Args) -> Result<ExitCode> {
    let config = config::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    let node = node(args, &config)?;
    let plan = plan::plan(&config, &node, &args.vips).map_err(|e| anyhow!("{e}"))?;
    let mode = match plan.forwarding {
        Forwarding::Dsr => "dsr",
        Forwarding::Ipip => "ipip",
    };
    let header =
        format!("VIPs {}: {mode} forwarding, interface {}", plan.serves.join(", "), node.interface);
    if args.check || args.apply {
        check_or_apply(&plan, &header, args.apply)
    } else {
        print!("{}", script(&plan, &header));
        Ok(ExitCode::SUCCESS)
    }
}

/// This node's facts: from the options where given, else from its interfaces.
fn node(args: &Args, config: &Config) -> Result<Node> {
    let links = host::links()?;
    let local: Vec<IpAddr> =
        links.iter().filter(|l| l.name != "lo").flat_map(|l| l.addresses.clone()).collect();
    let addresses = args.backend.map_or_else(|| local.clone(), |b| vec![b.to_canonical()]);
    let backends: Vec<IpAddr> = config
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.address.to_canonical()))
        .collect();
    let interface = match &args.interface {
        Some(i) => i.clone(),
        None => links
            .iter()
            .find(|l| l.name != "lo" && l.addresses.iter().any(|a| addresses.contains(a) && backends.contains(a)))
            .map(|l| l.name.clone())
            .ok_or_else(|| {
                anyhow!("cannot tell which interface faces the balancer: none holds a backend address of the config; pass --interface")
            })?,
    };
    let mtu = args
        .mtu
        .or_else(|| links.iter().find(|l| l.name == interface).map(|l| l.mtu))
        .unwrap_or(1500);
    Ok(Node { interface, mtu, addresses })
}

/// The plan as a shell script: a comment per step, then its commands.
fn script(plan: &Plan, header: &str) -> String {
    let mut s = format!(
        "# xdplb backend-setup for {header}\n\
         # Run as root on the WAF node; each command may run again safely.\n\
         # `xdplb backend-setup --check` lists what is missing, `--apply` applies it.\n"
    );
    for step in &plan.steps {
        let _ = write!(s, "\n# {}\n", step.describe());
        match step.commands() {
            Some(cmds) => {
                for c in cmds {
                    s.push_str(&c.shell());
                    s.push('\n');
                }
            }
            None => {
                let _ = writeln!(s, "# {}", manual(step));
            }
        }
    }
    s
}

/// What to do for a step this command cannot apply.
fn manual(step: &Step) -> String {
    match step {
        Step::Decapsulation { interface } => format!(
            "attach xdp-decap to {interface} (the lab does: tests/src/lab/netns.rs), accepting only the balancers' \
             tunnel sources; backend-setup does not load it yet"
        ),
        other => format!("{}: do it by hand", other.describe()),
    }
}

fn check_or_apply(plan: &Plan, header: &str, apply: bool) -> Result<ExitCode> {
    println!("{header}");
    let mut missing = 0;
    for step in &plan.steps {
        let mut done = host::is_done(step)?;
        let mut verb = "ok";
        if !done
            && apply
            && let Some(cmds) = step.commands()
        {
            for c in &cmds {
                host::run(c)?;
            }
            done = host::is_done(step)?;
            if !done {
                bail!(
                    "applied `{}` but the check still fails: {}",
                    cmds[0].shell(),
                    step.describe()
                );
            }
            verb = "applied";
        }
        if done {
            println!("  {verb:<8} {}", step.describe());
        } else {
            missing += 1;
            let hint = step.commands().map_or_else(
                || manual(step),
                |c| c.iter().map(plan::Cmd::shell).collect::<Vec<_>>().join("; "),
            );
            println!("  MISSING  {}\n           {hint}", step.describe());
        }
    }
    let total = plan.steps.len();
    if missing == 0 {
        println!("{total} of {total} in place");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{missing} of {total} missing");
        Ok(ExitCode::FAILURE)
    }
}
