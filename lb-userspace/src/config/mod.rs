//! The YAML configuration of `xdplb`.
//!
//! ```yaml
//! interface: eth0                 # required: the NIC that receives VIP traffic
//! xdp_mode: driver                # driver (default) | skb
//! forwarding: dsr                 # dsr (default) | ipip
//! tunnel_source: { ipv4: 10.0.0.2, ipv6: "fd00::2" }   # ipip: one per backend family
//! metrics_listen: 127.0.0.1:9650  # default 127.0.0.1:9650
//! admin_socket: /run/xdplb/admin.sock   # default; mode 0600: root and xdplb's own user
//! admin_group: xdplb-ops          # optional: its members may read `status` (socket 0660)
//! pin_path: /sys/fs/bpf/xdplb     # default
//! conn_table_size: 1048576        # default; IPv4 connection-table entries, 1024..=67108864
//!                                 # (~88 B each; IPv6: a quarter of it, ~112 B each; LRU per
//!                                 # CPU: each CPU's flows get size / CPUs); a change needs a
//!                                 # restart and `xdplb detach`
//! conn_table_size_v6: 262144      # default a quarter of conn_table_size (at least 1024);
//!                                 # IPv6 connection-table entries, same range and rules
//! mtu: 1500                       # optional; default: the interface's
//! gateway: 10.0.0.1               # optional next hop for ipip
//! accept_macs: ["00:00:5e:00:01:33"]   # optional, at most 4: destination MACs VIP traffic
//!                                 # is also taken on besides the interface's own (VRRP
//!                                 # use_vmac); frames to any other MAC pass to the kernel
//! hash_seed_file: /etc/xdplb/hash-seed   # the flow hash's secret (or hash_seed: 32 hex digits);
//!                                 # default: that file if it exists; the same on every balancer
//! ha:                             # optional: tell VRRP / BGP whether to send traffic here
//!   track_file: /run/xdplb/vrrp.track   # keepalived track_file (weight 0): 0 healthy, 1 not
//!   route_table: 100              # VIP host routes here while healthy, for BIRD to export
//!   withdraw_wait: 2s             # planned stop: withdraw, forward this long, then exit
//! sync:                           # optional: share connection-table exceptions with peers
//!   listen: 10.0.0.1:4790         # UDP address:port peers send to (IPv4 or IPv6)
//!   peers: [ "10.0.0.2:4790" ]    # the other balancers' listen addresses (at least one)
//!   key_file: /etc/xdplb/sync-key # shared secret, 64 hex digits (`xdplb gen-sync-key`), mode 0600
//!   max_entries_per_peer: 262144  # default; entries installed from one peer at most
//! health_check_defaults: { kind: http, port: 80, path: /healthz }
//! vips:                           # at least one
//!   - name: waf-https             # required, unique; A-Z a-z 0-9 _ - .
//!     address: 203.0.113.10       # required, IPv4 or IPv6
//!     port: 443                   # required; 0 = every port
//!     protocol: tcp               # tcp (default) | udp
//!     min_primaries: 1            # default 1: reserves join the ring while fewer
//!                                 # primaries than this are usable
//!     all_down: drop              # no usable backend: drop (default) new flows, or
//!                                 # fail_open: send them to every reachable, undrained one
//!     down_flows: move            # a backend's check fails: move (default) its
//!                                 # established flows at once, or keep them on it
//!     backends:                   # at least one; names and addresses unique
//!       - { name: waf-1, address: 10.0.0.11, weight: 100 }   # weight 1..=10000, default 100
//!       - { name: waf-9, address: 10.0.0.19, backup: true }  # a reserve (default false)
//!     health_check: { kind: tcp } # overrides health_check_defaults key by key
//! ```
//!
//! Health-check keys and their built-in defaults (used where neither the VIP's
//! `health_check` nor `health_check_defaults` sets the key):
//! `kind: http`; `port: 80` for http, `443` for https, the VIP's port for tcp;
//! `path: /healthz`; `host:` none (the backend address); `expect_status: [200]`;
//! `tls_verify: true`; `interval: 200ms`; `timeout: 150ms` (must not be longer
//! than the interval: probes of one backend never overlap); `rise: 2`;
//! `fall: 3`; `initial_state: down`; `refused_is_down: true` (a probe that is
//! refused — the node answered its SYN with a reset, nothing listens — brings an
//! up backend down at once; timeouts, resets after connecting and bad answers
//! still count towards `fall`); `flap_changes: 6`, `flap_window: 60s`,
//! `flap_hold: 60s` (flap damping: a backend whose health changed more than
//! `flap_changes` times within `flap_window` is held down for `flap_hold`, and
//! again at its end while it keeps changing; `flap_changes: 0` turns it off);
//! `passive: true` (when the data path sees the
//! backend receive SYNs but complete no handshake, probe it at once and then
//! every `fast_interval`, each probe bounded by `fast_timeout`, until rise/fall
//! decides; the traffic alone never takes a backend out); `fast_interval: 10ms`
//! and `fast_timeout: 40ms` (or the regular `interval` / `timeout` when shorter;
//! at least 10ms, at most the regular ones). Durations are a number and a unit:
//! `150ms`, `1s`, `1.5s`, `2m` (units ns, us, ms, s, m, h).
//!
//! [`parse`] reports every error it finds, each with the field path and the
//! line and column in the file. Structural errors (YAML syntax, a wrong type, an
//! unknown key) come from `serde_yaml`, which stops at the first; everything else
//! is checked afterwards and reported together.

mod duration;
mod locate;
mod model;
mod raw;
pub mod seed;
mod validate;
mod warnings;

#[cfg(test)]
mod tests;

use std::{fmt, path::Path, sync::Arc};

pub use duration::format as format_duration;
pub use warnings::warnings;

pub use model::{
    AllDown, BackendConf, Config, DownFlows, Forwarding, Ha, InitialState, Origin, Protocol,
    SyncConf, TunnelSource, Vip, XdpMode,
};

/// Built-in defaults.
pub mod defaults {
    use std::{
        net::{IpAddr, Ipv4Addr, SocketAddr},
        time::Duration,
    };

    use crate::health::CheckKind;

    pub const METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9650);
    pub const ADMIN_SOCKET: &str = "/run/xdplb/admin.sock";
    pub const PIN_PATH: &str = "/sys/fs/bpf/xdplb";
    pub const CONN_TABLE_SIZE: u32 = lb_common::limits::CONN_TABLE_SIZE;
    /// Bounds of `conn_table_size`: below, a CPU's share of the LRU holds a
    /// handful of flows; above, the tables take ~7.3 GiB (~88 B an IPv4 entry, and
    /// a quarter as many IPv6 ones at ~112 B).
    pub const CONN_TABLE_MIN: u64 = 1024;
    pub const CONN_TABLE_MAX: u64 = 1 << 26;
    /// `sync.max_entries_per_peer`: a node's return plus a drain at 1 M flows
    /// leaves ~400 k exceptions (BENCHMARKS.md, bench sync), above this default;
    /// at most the largest connection table (each held entry also costs ~100 B
    /// of the daemon's memory).
    pub const SYNC_MAX_ENTRIES_PER_PEER: usize = 1 << 18;
    pub const SYNC_MAX_ENTRIES_PER_PEER_MIN: u64 = 1;
    pub const SYNC_MAX_ENTRIES_PER_PEER_MAX: u64 = CONN_TABLE_MAX;
    pub const WEIGHT: u32 = 100;
    /// As HAProxy's and NGINX's `backup`: reserves serve only when no primary can.
    pub const MIN_PRIMARIES: u32 = 1;
    pub const CHECK_KIND: CheckKind = CheckKind::Http;
    pub const CHECK_PATH: &str = "/healthz";
    pub const EXPECT_STATUS: &[u16] = &[200];
    pub const INTERVAL: Duration = Duration::from_millis(200);
    pub const TIMEOUT: Duration = Duration::from_millis(150);
    pub const RISE: u32 = 2;
    pub const FALL: u32 = 3;
    pub const REFUSED_IS_DOWN: bool = true;
    /// Flap damping: more health changes than this within `FLAP_WINDOW` hold a
    /// backend down for `FLAP_HOLD` (three down-and-up cycles in a minute: a node
    /// that restarts twice is not held; one that dies every few seconds is).
    pub const FLAP_CHANGES: u32 = 6;
    pub const FLAP_WINDOW: Duration = Duration::from_mins(1);
    pub const FLAP_HOLD: Duration = Duration::from_mins(1);
    pub const PASSIVE: bool = true;
    /// A suspect backend is probed this often, each probe given this long; see
    /// `controller/suspicion.rs` for why these two values.
    pub const FAST_INTERVAL: Duration = Duration::from_millis(10);
    pub const FAST_TIMEOUT: Duration = Duration::from_millis(40);
    /// The controller reads the data path's counters this often, so a shorter
    /// fast interval could not be kept.
    pub const MIN_FAST_INTERVAL: Duration = Duration::from_millis(10);
    /// `ha.withdraw_wait` when `ha` names an engine (else 0: nothing to wait for).
    pub const WITHDRAW_WAIT: Duration = Duration::from_secs(2);
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name given to [`parse`] or [`load`].
    pub file: String,
    /// The field, e.g. `vips[1].backends[0].weight`; empty for the whole document.
    pub path: String,
    /// 1-based; 0 when the error has no position (the file could not be read).
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    #[must_use]
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// Sorts by position and drops repeats (a shared default's error reached through several VIPs).
    fn from_vec(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| (e.line, e.column));
        let mut seen = std::collections::HashSet::new();
        errors.retain(|e| seen.insert((e.path.clone(), e.line, e.column, e.message.clone())));
        Self { errors }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self { errors: vec![e] }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

/// Parses and checks a config; `source` names the file in error messages. A config
/// without `hash_seed` or `hash_seed_file` takes its seed from [`seed::DEFAULT_FILE`]
/// when that exists.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
    parse_with_seed_default(text, source, Path::new(seed::DEFAULT_FILE))
}

/// [`parse`], with the seed file used when the config names none.
pub fn parse_with_seed_default(
    text: &str,
    source: &str,
    default_seed_file: &Path,
) -> Result<Config, ConfigErrors> {
    let (index, duplicates) = locate::PosIndex::build(text);
    let mut errors: Vec<ConfigError> = duplicates
        .iter()
        .map(|d| ConfigError {
            file: source.to_owned(),
            path: d.path.clone(),
            line: d.at.line,
            column: d.at.column,
            message: format!("duplicate key (first at line {})", d.first.line),
        })
        .collect();
    let raw: raw::RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let e = serde_error(&e, &index, source);
            // serde's "duplicate field" says less than the walk's own report.
            if errors.is_empty() || !e.message.starts_with("duplicate field") {
                errors.push(e);
            }
            return Err(ConfigErrors::from_vec(errors));
        }
    };
    let index = Arc::new(index);
    let mut collector =
        validate::Collector { file: source, index: &index, errors, default_seed_file };
    let mut cfg = validate::resolve(raw, &mut collector);
    if !collector.errors.is_empty() {
        return Err(ConfigErrors::from_vec(collector.errors));
    }
    cfg.origin = validate::origin(source, Arc::clone(&index));
    Ok(cfg)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &name),
        Err(e) => Err(ConfigError {
            file: name,
            path: String::new(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }
        .into()),
    }
}

/// Checks that the config's interface exists, by `exists` (e.g. [`interface_exists`]);
/// separate from [`parse`] so that parsing needs no real NIC.
pub fn check_interfaces(cfg: &Config, exists: impl Fn(&str) -> bool) -> Result<(), ConfigErrors> {
    if exists(&cfg.interface) {
        Ok(())
    } else {
        Err(cfg
            .origin
            .error("interface", format!("no interface named `{}` on this host", cfg.interface))
            .into())
    }
}

/// Whether a network interface called `name` exists in this network namespace.
#[must_use]
pub fn interface_exists(name: &str) -> bool {
    crate::interface::check_name(name).is_ok() && crate::interface::index(name).is_some()
}

/// A `serde_yaml` error as a positioned [`ConfigError`]. `serde_yaml` prints the
/// field path in front of its message; when it has none (syntax errors), the
/// path is the last node that starts before the error.
fn serde_error(e: &serde_yaml::Error, index: &locate::PosIndex, file: &str) -> ConfigError {
    let mut text = e.to_string();
    let pos = e.location().map(|l| locate::Pos { line: l.line(), column: l.column() });
    if let Some(p) = pos {
        text = text.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1);
    }
    let (mut path, message) = match text.split_once(": ") {
        Some((head, tail)) if looks_like_path(head) => (head.to_owned(), tail.to_owned()),
        _ => (String::new(), text.clone()),
    };
    // serde names the mapping that holds an unknown key; name the key itself.
    if let Some(key) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        path = locate::child(&path, key);
    }
    match pos {
        Some(p) if path.is_empty() => {
            index.path_before(p).unwrap_or_default().clone_into(&mut path);
        }
        _ => {}
    }
    let pos = pos.unwrap_or_else(|| index.locate(&path));
    ConfigError { file: file.to_owned(), path, line: pos.line, column: pos.column, message }
}

fn looks_like_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '?' | '-'))
}
