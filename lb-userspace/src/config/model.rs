//! The resolved configuration (every default filled in) and its YAML form.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use super::{
    ConfigError, duration,
    locate::{Pos, PosIndex},
    seed::{self, HashSeed, SeedSource},
};
use crate::{health::CheckSpec, mac::Mac};

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native, in the NIC driver.
    #[default]
    Driver,
    /// Generic (skb) mode: slower, works on any interface.
    Skb,
}

impl XdpMode {
    /// The config's spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
}

/// How packets reach the backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// L2 direct server return: rewrite MACs; backends must be on-link.
    #[default]
    Dsr,
    /// IP-in-IP (or IP6-in-IP6) encapsulation; works across L3.
    Ipip,
}

impl Forwarding {
    /// The config's spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Dsr => "dsr",
            Self::Ipip => "ipip",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::proto::TCP,
            Self::Udp => lb_common::proto::UDP,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// What a VIP does with new flows while none of its backends is usable
/// (`all_down`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    /// Drop them (and count them, `drop_no_backend`): a client gets no answer
    /// rather than one from a node its health check failed. The default.
    #[default]
    Drop,
    /// Send them to every configured backend that can be reached and is not
    /// drained, as if all were up (NGINX's behaviour when every server failed):
    /// when every check fails at once the checks themselves (a shared path, a
    /// dependency of /healthz) are more likely wrong than every node.
    FailOpen,
}

impl AllDown {
    /// The config's spelling, also used in status and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::FailOpen => "fail_open",
        }
    }
}

/// What happens to the established flows of a backend whose health check
/// failed (`down_flows`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownFlows {
    /// Re-hash them to live backends at once (IPVS `expire_nodest_conn`): a dead
    /// node's connections are lost anyway, and their clients learn it at their
    /// next packet (a reset from the new node) instead of after a timeout. The default.
    #[default]
    Move,
    /// Leave them on the node (as with a drain), which gets no new flows: a node
    /// that was only slow to answer its check keeps serving its connections; one
    /// that is really dead leaves them hanging until the clients time out.
    Keep,
}

impl DownFlows {
    /// The config's spelling, also used in status and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Move => "move",
            Self::Keep => "keep",
        }
    }
}

/// A backend's state before its first health-check verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    #[default]
    Down,
    Up,
}

/// Outer source addresses for `ipip`, one per backend family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TunnelSource {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// How this balancer tells the redundancy engines whether it should carry
/// traffic (see `ha/`): a keepalived track file, VIP routes for a BGP daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ha {
    /// keepalived `track_file` (weight 0) xdplb writes: `0` while this balancer
    /// is healthy, `1` otherwise.
    pub track_file: Option<PathBuf>,
    /// Kernel routing table holding a blackhole host route per VIP address while
    /// this balancer is healthy, for BIRD to export over BGP.
    pub route_table: Option<u32>,
    /// On a planned stop (SIGTERM): withdraw, keep forwarding this long while the
    /// routers converge, then exit.
    pub withdraw_wait: Duration,
}

impl Ha {
    /// Whether any engine is told anything.
    #[must_use]
    pub fn engines(&self) -> bool {
        self.track_file.is_some() || self.route_table.is_some()
    }

    /// The `ha:` section as `Config::to_yaml` writes it: (indent, line); nothing
    /// when every key has its default.
    fn to_yaml(&self) -> Vec<(usize, String)> {
        if !self.engines() && self.withdraw_wait.is_zero() {
            return vec![];
        }
        let mut out = vec![(0, "ha:".to_owned())];
        if let Some(path) = &self.track_file {
            out.push((2, format!("track_file: {}", scalar(&path.to_string_lossy()))));
        }
        if let Some(table) = self.route_table {
            out.push((2, format!("route_table: {table}")));
        }
        let wait = if self.withdraw_wait.is_zero() {
            "0s".to_owned()
        } else {
            duration::format(self.withdraw_wait)
        };
        out.push((2, format!("withdraw_wait: {wait}")));
        out
    }
}

/// `sync:`: share this balancer's connection-table exceptions with its peers
/// and install theirs (`crate::sync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConf {
    /// UDP address:port peers' messages are received on (and ours sent from).
    pub listen: SocketAddr,
    /// The other balancers' `listen` addresses.
    pub peers: Vec<SocketAddr>,
    /// The shared key's file (64 hex digits), read at load and reload.
    pub key_file: PathBuf,
    pub key: crate::sync::key::SyncKey,
    /// Entries installed from one peer at most; more are refused and counted
    /// (`xdplb_sync_entries_refused_total{reason="cap"}`). Follows a reload.
    pub max_entries_per_peer: usize,
}

impl Config {
    /// The connection tables' sizes as configured (`conn_table_size`, `_v6`).
    #[must_use]
    pub const fn conn_tables(&self) -> crate::conn_table::Configured {
        crate::conn_table::Configured { v4: self.conn_table_size, v6: self.conn_table_size_v6 }
    }

    /// The `sync:` section, if any, as `to_yaml` writes it.
    fn sync_yaml(&self) -> Vec<(usize, String)> {
        self.sync.as_ref().map(SyncConf::to_yaml).unwrap_or_default()
    }

    /// `mtu`, `gateway` and `accept_macs`, those set, as `to_yaml` writes them.
    fn link_yaml(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(mtu) = self.mtu {
            out.push(format!("mtu: {mtu}"));
        }
        if let Some(gw) = self.gateway {
            out.push(format!("gateway: {}", scalar(&gw.to_string())));
        }
        if !self.accept_macs.is_empty() {
            let macs: Vec<String> =
                self.accept_macs.iter().map(|m| format!("\"{}\"", crate::mac::format(m))).collect();
            out.push(format!("accept_macs: [{}]", macs.join(", ")));
        }
        out
    }
}

impl SyncConf {
    /// The `sync:` section as `Config::to_yaml` writes it: (indent, line).
    fn to_yaml(&self) -> Vec<(usize, String)> {
        let peers: Vec<String> = self.peers.iter().map(|p| scalar(&p.to_string())).collect();
        vec![
            (0, "sync:".to_owned()),
            (2, format!("listen: {}", scalar(&self.listen.to_string()))),
            (2, format!("peers: [{}]", peers.join(", "))),
            (2, format!("key_file: {}", scalar(&self.key_file.to_string_lossy()))),
            (2, format!("max_entries_per_peer: {}", self.max_entries_per_peer)),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConf {
    /// Identity with `address` (Maglev hashes both, never the list position).
    pub name: String,
    pub address: IpAddr,
    /// Share of the VIP's connections, 1..=10000.
    pub weight: u32,
    /// A reserve (`backup: true`): in the ring only while fewer than the VIP's
    /// `min_primaries` primaries are usable.
    pub backup: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<BackendConf>,
    /// While fewer primaries (backends without `backup`) than this are usable,
    /// the usable reserves join the ring.
    pub min_primaries: u32,
    /// New flows while no backend is usable.
    pub all_down: AllDown,
    /// Established flows of a backend whose check failed.
    pub down_flows: DownFlows,
    /// `health_check_defaults` with this VIP's `health_check` keys laid over it.
    pub health_check: CheckSpec,
}

/// The configuration with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interface: String,
    pub xdp_mode: XdpMode,
    pub forwarding: Forwarding,
    pub tunnel_source: TunnelSource,
    pub metrics_listen: SocketAddr,
    pub admin_socket: PathBuf,
    /// A group whose members may read `status` over the admin socket (which is
    /// then mode 0660 in that group); `None`: root and xdplb's own user only.
    pub admin_group: Option<String>,
    pub pin_path: PathBuf,
    /// Entries of the IPv4 connection table (`FLOWS4`: sets of four shared by all
    /// CPUs, rounded up to a power of two sets; the IPv6 one, `CONNS`, holds a
    /// quarter of it: `conn_table::v6_entries`). Read at start only.
    pub conn_table_size: u32,
    /// Entries of the IPv6 connection table (`CONNS`); default a quarter of
    /// `conn_table_size` (at least 1024). Read at start only.
    pub conn_table_size_v6: u32,
    /// `None`: read from the interface.
    pub mtu: Option<u32>,
    /// Next hop for `ipip` when backends are not on-link.
    pub gateway: Option<IpAddr>,
    /// Destination MACs VIP traffic is also taken on besides the interface's own
    /// (keepalived's VRRP virtual MACs under `use_vmac`): `LbConfig::accept_macs`.
    pub accept_macs: Vec<Mac>,
    /// The flow hash's secret seed and where it came from.
    pub hash_seed: HashSeed,
    pub ha: Ha,
    /// `None`: no peer sync.
    pub sync: Option<SyncConf>,
    pub vips: Vec<Vip>,
    /// Where this config came from; not part of its value.
    pub origin: Origin,
}

/// The file a [`Config`] was read from and the position of each of its nodes, so
/// that errors found later (an unknown interface, a backend that cannot be
/// resolved) still point into the file. Equality ignores it: two configs with the
/// same settings are equal wherever they came from.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub(super) file: String,
    pub(super) index: Arc<PosIndex>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Origin {
    /// The file name given to `parse` or `load`.
    #[must_use]
    pub fn file(&self) -> &str {
        &self.file
    }

    /// An error about the node at `path` (e.g. `vips[0].backends[1].address`),
    /// positioned at it or at its nearest ancestor present in the file.
    #[must_use]
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let Pos { line, column } = self.index.locate(path);
        ConfigError {
            file: self.file.clone(),
            path: path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl Config {
    /// The resolved config in the file's key shape, defaults written out, so that
    /// `parse(&cfg.to_yaml(), ..)` gives back an equal `Config`.
    #[must_use]
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        let mut line = |indent: usize, text: String| {
            let _ = writeln!(out, "{:indent$}{text}", "");
        };
        line(0, format!("interface: {}", scalar(&self.interface)));
        line(0, format!("xdp_mode: {}", self.xdp_mode.name()));
        line(0, format!("forwarding: {}", self.forwarding.name()));
        let TunnelSource { ipv4, ipv6 } = self.tunnel_source;
        if ipv4.is_some() || ipv6.is_some() {
            line(0, "tunnel_source:".into());
            if let Some(a) = ipv4 {
                line(2, format!("ipv4: {}", scalar(&a.to_string())));
            }
            if let Some(a) = ipv6 {
                line(2, format!("ipv6: {}", scalar(&a.to_string())));
            }
        }
        line(0, format!("metrics_listen: {}", scalar(&self.metrics_listen.to_string())));
        line(0, format!("admin_socket: {}", scalar(&self.admin_socket.to_string_lossy())));
        if let Some(group) = &self.admin_group {
            line(0, format!("admin_group: {}", scalar(group)));
        }
        line(0, format!("pin_path: {}", scalar(&self.pin_path.to_string_lossy())));
        line(0, format!("conn_table_size: {}", self.conn_table_size));
        line(0, format!("conn_table_size_v6: {}", self.conn_table_size_v6));
        for text in self.link_yaml() {
            line(0, text);
        }
        // The default file and the public seed are what an absent key means.
        match &self.hash_seed.source {
            SeedSource::Config => {
                line(0, format!("hash_seed: \"{}\"", seed::format(&self.hash_seed.seed)));
            }
            SeedSource::File(p) => {
                line(0, format!("hash_seed_file: {}", scalar(&p.to_string_lossy())));
            }
            SeedSource::DefaultFile(_) | SeedSource::Public => {}
        }
        for (indent, text) in self.ha.to_yaml().into_iter().chain(self.sync_yaml()) {
            line(indent, text);
        }
        line(0, "vips:".into());
        for vip in &self.vips {
            line(2, format!("- name: {}", scalar(&vip.name)));
            line(4, format!("address: {}", scalar(&vip.address.to_string())));
            line(4, format!("port: {}", vip.port));
            line(4, format!("protocol: {}", vip.protocol.name()));
            line(4, format!("min_primaries: {}", vip.min_primaries));
            line(4, format!("all_down: {}", vip.all_down.name()));
            line(4, format!("down_flows: {}", vip.down_flows.name()));
            line(4, "backends:".into());
            for b in &vip.backends {
                line(6, format!("- name: {}", scalar(&b.name)));
                line(8, format!("address: {}", scalar(&b.address.to_string())));
                line(8, format!("weight: {}", b.weight));
                line(8, format!("backup: {}", b.backup));
            }
            let hc = &vip.health_check;
            line(4, "health_check:".into());
            line(6, format!("kind: {}", hc.kind.name()));
            line(6, format!("port: {}", hc.port));
            line(6, format!("path: {}", scalar(&hc.path)));
            if let Some(host) = &hc.host {
                line(6, format!("host: {}", scalar(host)));
            }
            let statuses: Vec<String> = hc.expect_status.iter().map(u16::to_string).collect();
            line(6, format!("expect_status: [{}]", statuses.join(", ")));
            line(6, format!("tls_verify: {}", hc.tls_verify));
            line(6, format!("interval: {}", duration::format(hc.interval)));
            line(6, format!("timeout: {}", duration::format(hc.timeout)));
            line(6, format!("rise: {}", hc.rise));
            line(6, format!("fall: {}", hc.fall));
            line(6, format!("initial_state: {}", if hc.initially_up { "up" } else { "down" }));
            line(6, format!("refused_is_down: {}", hc.refused_is_down));
            line(6, format!("flap_changes: {}", hc.damping.limit));
            line(6, format!("flap_window: {}", duration::format(hc.damping.window)));
            line(6, format!("flap_hold: {}", duration::format(hc.damping.hold)));
            line(6, format!("passive: {}", hc.passive));
            line(6, format!("fast_interval: {}", duration::format(hc.fast_interval)));
            line(6, format!("fast_timeout: {}", duration::format(hc.fast_timeout)));
        }
        out
    }
}

/// `s` as a YAML scalar that reads back as the same string: plain when that is
/// unambiguous (names, paths, IP addresses), double-quoted otherwise.
fn scalar(s: &str) -> String {
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    let special = ["true", "false", "yes", "no", "on", "off", "y", "n", "null"];
    let plain_word = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && s.chars().all(word)
        && !special.iter().any(|w| s.eq_ignore_ascii_case(w));
    // `fd00::2` is plain-safe; a leading or trailing `:` would not be.
    let plain_ip = s.parse::<IpAddr>().is_ok() && !s.starts_with(':') && !s.ends_with(':');
    if plain_word || plain_ip {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::scalar;

    #[test]
    fn scalars_are_quoted_only_when_yaml_would_misread_them() {
        assert_eq!(scalar("waf-1"), "waf-1");
        assert_eq!(scalar("/run/xdplb/admin.sock"), "/run/xdplb/admin.sock");
        assert_eq!(scalar("10.0.0.1"), "10.0.0.1");
        assert_eq!(scalar("fd00::2"), "fd00::2");
        assert_eq!(scalar("::1"), "\"::1\"");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("127.0.0.1:9650"), "\"127.0.0.1:9650\"");
        assert_eq!(scalar("a \"b\"\\\n"), "\"a \\\"b\\\"\\\\\\n\"");
        for s in ["yes", "123", "::1", "a: b", "#x", "[x]", "a\u{1}b", "~", "1.5", "-x"] {
            let back: String = serde_yaml::from_str(&scalar(s)).unwrap();
            assert_eq!(back, s);
        }
    }
}
