//! `lab`: the network-namespace lab from the command line (`cargo xtask lab`).
//!
//! ```text
//! lab up [--mode dsr|ipip] [--wafs N] [--ha vrrp|bgp]
//!                                       build it (removing any previous lab first);
//!                                       --ha: two balancers with keepalived or BIRD
//! lab down                              remove everything it made
//! lab status                            namespaces, addresses, XDP, nginx, probes
//! ```

use anyhow::{Context as _, Result, bail};
use xdplb_tests::{
    lab::{Lab, LabConfig, MAX_WAFS, ha::balancer},
    pair,
    rig::Checks,
};

const USAGE: &str =
    "usage: lab up [--mode dsr|ipip] [--wafs N] [--ha vrrp|bgp] | lab down | lab status";

fn main() {
    if let Err(e) = try_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((action, rest)) = args.split_first() else { bail!(USAGE) };
    match action.as_str() {
        "up" => {
            let config = parse_up(rest)?;
            let lab = Lab::up(&config)?;
            print!("{}", lab.status());
            if let Some(ha) = config.ha {
                let configs =
                    pair::write_configs(config.mode, ha, config.wafs, &Checks::default())?;
                println!(
                    "\nxdplb is not running yet; start it on each balancer (same config, host-local paths):"
                );
                for (i, path) in configs.iter().enumerate() {
                    println!(
                        "  ip netns exec {} xdplb run --config {}",
                        balancer(i + 1).ns(),
                        path.display()
                    );
                }
            }
            Ok(())
        }
        "down" if rest.is_empty() => {
            Lab::down()?;
            eprintln!("==> lab down");
            Ok(())
        }
        "status" if rest.is_empty() => {
            print!("{}", xdplb_tests::lab::status());
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn parse_up(args: &[String]) -> Result<LabConfig> {
    let mut config = LabConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{name} needs a value"))
        };
        match name {
            "--mode" => config.mode = value()?.parse()?,
            "--ha" => config.ha = Some(value()?.parse()?),
            "--wafs" => {
                let v = value()?;
                config.wafs = v
                    .parse()
                    .with_context(|| format!("--wafs {v:?}: a number, 1 to {MAX_WAFS}"))?;
            }
            _ => bail!("unknown option {flag:?}\n{USAGE}"),
        }
    }
    Ok(config)
}
