//! `xdplb`: the balancer daemon and its admin commands.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use lb_userspace::{
    admin::{self, Request, Response},
    backend_setup, config, controller, loader,
};

#[derive(Parser)]
#[command(
    name = "xdplb",
    version,
    about = "L4 load balancer with failover on XDP: Maglev hashing to healthy backends",
    long_about = "xdplb hashes every flow to a VIP onto a healthy backend in an XDP program and\n\
        health-checks the backends from userspace, moving traffic within a second when one dies.\n\n\
        Start with `xdplb check-config FILE`, then `xdplb run --config FILE`.",
    after_help = "Example config:\n\n\
        interface: eth0\n\
        forwarding: dsr               # dsr | ipip\n\
        health_check_defaults: { kind: http, port: 80, path: /healthz, interval: 200ms, rise: 2, fall: 3 }\n\
        vips:\n\
        \x20 - name: waf-https\n\
        \x20   address: 203.0.113.10\n\
        \x20   port: 443\n\
        \x20   protocol: tcp\n\
        \x20   backends:\n\
        \x20     - { name: waf-1, address: 10.0.0.11, weight: 100 }\n\
        \x20     - { name: waf-2, address: 10.0.0.12 }\n\
        \x20     - { name: waf-9, address: 10.0.0.19, backup: true }   # a reserve\n\
        \x20   min_primaries: 1              # reserves serve while fewer primaries are usable\n\
        \x20   health_check: { kind: tcp, port: 443 }"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer in the foreground (logs to stderr; SIGHUP reloads; SIGTERM stops).
    #[command(after_help = "Example:\n  xdplb run --config /etc/xdplb/xdplb.yaml\n\n\
        On exit the XDP program stays attached and its maps stay pinned (pin_path), so traffic\n\
        keeps flowing and the next `xdplb run` adopts them without dropping established flows.\n\
        --detach-on-exit removes both instead; `xdplb detach` does it later.")]
    Run {
        /// The YAML config.
        #[arg(long, short)]
        config: PathBuf,
        /// On exit, detach XDP and remove the pins.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Validate a config and print it resolved (defaults filled in), or every error found.
    #[command(after_help = "Example:\n  xdplb check-config /etc/xdplb/xdplb.yaml\n\n\
        Warnings (on stderr, `warning: FILE:LINE:COLUMN: FIELD: ...`) name settings that work but\n\
        may not do what was meant, e.g. reserves (`backup: true`) that can never take traffic\n\
        because `min_primaries` is 0, or a VIP with no primary. They do not fail the check\n\
        unless --strict is given.")]
    CheckConfig {
        /// The YAML config to check.
        file: PathBuf,
        /// Also check that the interface exists on this host.
        #[arg(long)]
        interface: bool,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Generate a secret flow-hash seed (32 hex digits, 128 bits from the kernel's RNG).
    ///
    /// The seed keeps clients from choosing source ports that all land on one backend.
    /// Every balancer of a group must use the same seed, or they pick different
    /// backends for a flow: generate it once, then copy the file to the others. A
    /// config without hash_seed or hash_seed_file reads /etc/xdplb/hash-seed.
    #[command(after_help = "Examples:
  xdplb gen-seed --output /etc/xdplb/hash-seed   # once, on one balancer
          scp /etc/xdplb/hash-seed lb2:/etc/xdplb/hash-seed  # the same file on every balancer
          xdplb gen-seed                                 # print one (for hash_seed: in the config)")]
    GenSeed {
        /// Write the seed to this file (mode 0600) instead of printing it.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace an existing file (new flows then hash differently on this balancer).
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Generate the shared key that authenticates peer sync messages (64 hex digits,
    /// 256 bits from the kernel's RNG), written to FILE with mode 0600.
    ///
    /// Every balancer of a group must hold the same key (`sync.key_file` in the
    /// config): generate it once, then copy the file to the others.
    #[command(after_help = "Example:
  xdplb gen-sync-key /etc/xdplb/sync-key
  scp -p /etc/xdplb/sync-key lb2:/etc/xdplb/sync-key

Then, in each balancer's config:
  sync:
    listen: 10.0.0.1:4790          # this balancer
    peers: [ \"10.0.0.2:4790\" ]     # the others
    key_file: /etc/xdplb/sync-key")]
    GenSyncKey {
        /// Where to write the key (mode 0600).
        file: PathBuf,
        /// Replace an existing file (every peer then needs the new one).
        #[arg(long)]
        force: bool,
    },
    /// Show the balancer's health, then VIPs (with their ring digest) and backends of the
    /// running daemon: state, health, drain, MAC, packets. Exits 1 while the balancer
    /// cannot forward (the reasons are on its `health:` line, as /healthz gives them).
    #[command(
        after_help = "Example:\n  xdplb status\n  xdplb status --config /etc/xdplb/xdplb.yaml   # its admin_socket\n\n\
        Two balancers with the same config and backend health show the same `ring` digest\n\
        for each VIP: a flow then reaches the same backend through either."
    )]
    Status(Socket),
    /// Stop sending new flows to a backend of a VIP; its established flows stay.
    #[command(after_help = "Example:\n  xdplb drain waf-https waf-2")]
    Drain {
        /// The VIP's `name` in the config.
        vip: String,
        /// The backend's `name` in that VIP.
        backend: String,
        #[command(flatten)]
        socket: Socket,
    },
    /// Undo `drain`.
    #[command(after_help = "Example:\n  xdplb undrain waf-https waf-2")]
    Undrain {
        /// The VIP's `name` in the config.
        vip: String,
        /// The backend's `name` in that VIP.
        backend: String,
        #[command(flatten)]
        socket: Socket,
    },
    /// Make the daemon re-read its config (as SIGHUP); an invalid config changes nothing.
    #[command(after_help = "Example:\n  xdplb reload")]
    Reload(Socket),
    /// On a WAF node: print, check (--check) or apply (--apply) what it needs for this
    /// config's forwarding mode (VIPs on lo, ARP and rp_filter sysctls, MSS for ipip).
    BackendSetup(backend_setup::Args),
    /// Detach XDP and remove the pins a previous `xdplb run` left behind.
    #[command(after_help = "Example:\n  xdplb detach --config /etc/xdplb/xdplb.yaml")]
    Detach {
        /// Take pin_path from this config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The pin directory (default /sys/fs/bpf/xdplb).
        #[arg(long, conflicts_with = "config")]
        pin_path: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct Socket {
    /// The daemon's admin socket (default /run/xdplb/admin.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Take admin_socket from this config.
    #[arg(long, short, conflicts_with = "socket")]
    config: Option<PathBuf>,
}

impl Socket {
    fn path(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            return Ok(config::load(c).map_err(|e| anyhow::anyhow!("{e}"))?.admin_socket);
        }
        Ok(PathBuf::from(config::defaults::ADMIN_SOCKET))
    }
}

fn main() -> ExitCode {
    // First of all: a SIGHUP, SIGTERM or SIGINT during start-up waits for the
    // daemon's loop instead of killing it or interrupting the verifier (`xdplb
    // run` lets them through once it can answer).
    if let Err(e) = controller::hold_signals() {
        eprintln!("xdplb: {e:#}");
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xdplb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        controller::release_signals()?;
    }
    match cli.command {
        Command::Run { config, detach_on_exit } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(controller::run(&config, controller::RunOptions { detach_on_exit }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, interface, strict } => {
            let cfg = match config::load(&file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if interface && let Err(e) = config::check_interfaces(&cfg, config::interface_exists) {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            let warnings = config::warnings(&cfg);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            if strict && !warnings.is_empty() {
                eprintln!("{} warning(s), failing (--strict)", warnings.len());
                return Ok(ExitCode::FAILURE);
            }
            print!("{}", cfg.to_yaml());
            eprintln!("flow hash seed: {}", cfg.hash_seed);
            Ok(ExitCode::SUCCESS)
        }
        Command::GenSeed { output: None, .. } => {
            println!("{}", config::seed::format(&config::seed::generate()?));
            Ok(ExitCode::SUCCESS)
        }
        Command::GenSeed { output: Some(path), force } => {
            let seed = config::seed::write_new(&path, force)?;
            eprintln!(
                "wrote a new flow-hash seed to {} (fingerprint {:08x}); copy it to every balancer of the group",
                path.display(),
                lb_common::hash::fingerprint(&seed)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::GenSyncKey { file, force } => {
            let key = lb_userspace::sync::key::write_new(&file, force)?;
            eprintln!(
                "wrote a new sync key to {} (fingerprint {:08x}); copy it to every peer",
                file.display(),
                key.fingerprint()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(s) => call(&s, &Request::Status),
        Command::Drain { vip, backend, socket } => call(&socket, &Request::Drain { vip, backend }),
        Command::Undrain { vip, backend, socket } => {
            call(&socket, &Request::Undrain { vip, backend })
        }
        Command::Reload(s) => call(&s, &Request::Reload),
        Command::BackendSetup(args) => backend_setup::run(&args),
        Command::Detach { config: c, pin_path } => {
            let dir = match (c, pin_path) {
                (Some(c), _) => config::load(&c).map_err(|e| anyhow::anyhow!("{e}"))?.pin_path,
                (None, Some(p)) => p,
                (None, None) => PathBuf::from(config::defaults::PIN_PATH),
            };
            let removed = loader::detach(&dir)?;
            eprintln!("{}", removed.describe(&dir, loader::bpffs_root()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn call(socket: &Socket, request: &Request) -> Result<ExitCode> {
    match admin::call(&socket.path()?, request)? {
        Response::Ok(text) => {
            println!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Response::Failing(text) => {
            println!("{}", text.trim_end());
            if let Some(line) = text.lines().find(|l| l.starts_with("health: ")) {
                eprintln!("xdplb: {}", line.trim_start_matches("health: "));
            }
            Ok(ExitCode::FAILURE)
        }
        Response::Error(text) => {
            eprintln!("xdplb: {}", text.trim_end());
            Ok(ExitCode::FAILURE)
        }
    }
}
