//! `xdplb backend-setup`: what a WAF node needs for the balancer's forwarding mode,
//! printed as idempotent shell commands, checked (`--check`) or applied (`--apply`)
//! on the node. The decisions are in `plan` (pure), the node's state in `host`.

mod host;
pub mod plan;

use std::{fmt::Write as _, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::XdpMode;

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
    ipip: the same, the TCP MSS clamped so that a full-size client segment still fits after\n\
    encapsulation (--no-mss-clamp: leave it to path-MTU discovery), and xdp-decap on the\n\
    interface, accepting only tunnel packets from the balancers (--balancer for the pool's\n\
    others) to the VIPs. Settings made with --apply last until reboot (xdp-decap stays pinned\n\
    until then): run it at boot, as the package's xdplb-backend.service does.")]
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
    /// ipip: leave the MSS alone (and remove our clamp if there is one): clients then
    /// rely on the balancer's ICMP answers and path-MTU discovery, or a larger MTU.
    #[arg(long)]
    pub no_mss_clamp: bool,
    /// ipip: the tunnel source of another balancer of the pool, whose packets
    /// xdp-decap must accept too (this config's `tunnel_source` always is). Repeatable.
    #[arg(long = "balancer", value_name = "ADDRESS")]
    pub balancers: Vec<IpAddr>,
    /// ipip: where xdp-decap's link and maps are pinned (it stays attached after the
    /// command exits; a later --apply updates its rules in place).
    #[arg(long, default_value = plan::DECAP_PIN_DIR)]
    pub pin_path: PathBuf,
    /// ipip: how xdp-decap attaches: driver (native) or skb (generic, any interface).
    #[arg(long, value_enum, default_value_t = AttachMode::Driver)]
    pub xdp_mode: AttachMode,
}

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Driver,
    Skb,
}

impl AttachMode {
    fn aya(self) -> XdpMode {
        match self {
            Self::Driver => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }
}

/// Runs the command; the exit code says whether the node is (now) prepared.
pub fn run(args: &Args) -> Result<ExitCode> {
    let config = config::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    let node = node(args, &config)?;
    let opts = plan::Options {
        only_vips: args.vips.clone(),
        mss_clamp: !args.no_mss_clamp,
        other_balancers: args.balancers.clone(),
        decap_pin_dir: args.pin_path.clone(),
    };
    let plan = plan::plan(&config, &node, &opts).map_err(|e| anyhow!("{e}"))?;
    let mode = match plan.forwarding {
        Forwarding::Dsr => "dsr",
        Forwarding::Ipip => "ipip",
    };
    let header =
        format!("VIPs {}: {mode} forwarding, interface {}", plan.serves.join(", "), node.interface);
    if args.check || args.apply {
        check_or_apply(&plan, &header, args.apply.then_some(args.xdp_mode.aya()))
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

/// How to get a step that has no command line.
fn manual(step: &Step) -> String {
    match step {
        Step::Decapsulation { .. } => {
            "`xdplb backend-setup --apply` loads, configures and attaches it (lb_userspace::decap)"
                .to_owned()
        }
        other => format!("{}: do it by hand", other.describe()),
    }
}

/// Checks every step, applying the missing ones when `apply` says how XDP attaches.
fn check_or_apply(plan: &Plan, header: &str, apply: Option<XdpMode>) -> Result<ExitCode> {
    println!("{header}");
    let mut missing = 0;
    for step in &plan.steps {
        let mut done = host::is_done(step)?;
        let mut verb = "ok";
        if !done && let Some(mode) = apply {
            host::apply(step, mode).with_context(|| format!("applying: {}", step.describe()))?;
            done = host::is_done(step)?;
            if !done {
                bail!("applied, but the check still fails: {}", step.describe());
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
