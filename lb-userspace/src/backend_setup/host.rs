//! The node as it is: its addresses and interfaces (`ip -j`), its sysctls
//! (/proc/sys), the MSS table (`nft`) and the XDP program on an interface. Also
//! runs a step's commands: the printed commands are exactly what `--apply` runs.

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use aya::programs::XdpMode;

use super::plan::{Cmd, MSS_TABLE, Step, conf_key, mss_signature, sysctl_path};
use crate::{decap::Decap, loader};

/// An interface with its MTU and addresses.
#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<IpAddr>,
}

fn ip_json(args: &[&str]) -> Result<Value> {
    let out =
        Command::new("ip").arg("-j").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("`ip -j {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
}

/// Every interface of this network namespace with its addresses.
pub fn links() -> Result<Vec<Link>> {
    let v = ip_json(&["addr", "show"])?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|l| Link {
            name: l["ifname"].as_str().unwrap_or_default().to_owned(),
            mtu: l["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(1500),
            addresses: l["addr_info"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|a| a["local"].as_str()?.parse().ok())
                .collect(),
        })
        .collect())
}

fn read_sysctl(key: &str) -> Result<i64> {
    let path = sysctl_path(key);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim().parse().with_context(|| format!("{path}: {text:?}"))
}

/// Whether the step is already in place on this node.
pub fn is_done(step: &Step) -> Result<bool> {
    Ok(match step {
        Step::VipOnLo(addr) => {
            links()?.iter().any(|l| l.name == "lo" && l.addresses.contains(addr))
        }
        Step::Sysctl { key, value, .. } => read_sysctl(key)? == i64::from(*value),
        Step::RpFilterNotStrict { interface } => {
            let all = read_sysctl(&conf_key("all", "rp_filter"))?;
            let dev = read_sysctl(&conf_key(interface, "rp_filter"))?;
            all.max(dev) != 1
        }
        Step::MssClamp { v4, v6, vips } => {
            let out = Command::new("nft")
                .args(["list", "table", "inet", MSS_TABLE])
                .output()
                .context("running `nft` (nftables)")?;
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .contains(&format!("comment \"{}\"", mss_signature(*v4, *v6, vips)))
        }
        Step::NoMssClamp => !Command::new("nft")
            .args(["list", "table", "inet", MSS_TABLE])
            .output()
            .context("running `nft` (nftables)")?
            .status
            .success(),
        Step::Decapsulation { interface, rules, pin_dir } => {
            xdp_program(interface)?.as_deref() == Some("xdp_decap")
                && loader::link_path(pin_dir).exists()
                && Decap::load(Some(pin_dir))?.rules()? == *rules
        }
    })
}

/// The name of the XDP program attached to `interface`, if any.
pub fn xdp_program(interface: &str) -> Result<Option<String>> {
    let v = ip_json(&["-d", "link", "show", "dev", interface])?;
    let xdp = &v[0]["xdp"];
    let name = |p: &Value| p["name"].as_str().map(str::to_owned);
    Ok(name(&xdp["prog"])
        .or_else(|| xdp["attached"].as_array()?.iter().find_map(|a| name(&a["prog"]))))
}

/// Makes the step so: its commands, or for xdp-decap the library that loads it.
pub fn apply(step: &Step, xdp_mode: XdpMode) -> Result<()> {
    if let Step::Decapsulation { interface, rules, pin_dir } = step {
        let mut decap = Decap::load(Some(pin_dir))?;
        decap.set_rules(rules)?;
        // Swaps our program into the pinned link when there is one (same rules maps).
        return decap.attach(interface, xdp_mode);
    }
    for c in step.commands().into_iter().flatten() {
        run(&c)?;
    }
    Ok(())
}

/// Runs one command; an error carries its stderr.
pub fn run(cmd: &Cmd) -> Result<()> {
    let (program, args) = cmd.argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut c = Command::new(program);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c.stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().with_context(|| format!("starting `{program}`"))?;
    if let (Some(text), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`{}` failed: {}", cmd.argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
