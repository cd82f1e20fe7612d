//! From what serde read to a resolved [`Config`]: fill in defaults, merge the
//! health-check layers, and check everything, collecting every error with the
//! position of the node it is about.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use lb_common::limits::{ACCEPT_MACS, MAX_BACKENDS, MAX_VIPS, RING_SIZE};

use super::{
    ConfigError, defaults, duration,
    locate::{Pos, PosIndex, child},
    model::{
        BackendConf, Config, Forwarding, Ha, InitialState, Origin, SyncConf, TunnelSource, Vip,
    },
    raw::{DurationText, RawBackend, RawCheck, RawConfig, RawHa, RawKind, RawSync, RawVip},
    seed::{self, HashSeed, SeedSource},
};
use crate::{
    health::{CheckKind, CheckSpec, Damping},
    mac::Mac,
};

/// Maglev spreads load within ~1% only while the ring is over 100 x the backends.
const MAX_BACKENDS_PER_VIP: usize = (RING_SIZE / 100) as usize;

pub struct Collector<'a> {
    pub file: &'a str,
    pub index: &'a PosIndex,
    pub errors: Vec<ConfigError>,
    /// Where the seed is read from when the config names none (`seed::DEFAULT_FILE`).
    pub default_seed_file: &'a Path,
}

impl Collector<'_> {
    fn error_at(&mut self, path: &str, pos: Pos, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            path: path.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
        });
    }

    /// An error about `path`, at its position or its nearest ancestor's.
    fn error(&mut self, path: &str, message: String) {
        let pos = self.index.locate(path);
        self.error_at(path, pos, message);
    }

    fn line_of(&self, path: &str) -> usize {
        self.index.locate(path).line
    }
}

/// Checks `raw` and resolves it. Errors go to `c`; the returned config is only
/// meaningful when none were added.
pub fn resolve(raw: RawConfig, c: &mut Collector<'_>) -> Config {
    let interface = raw.interface.unwrap_or_default();
    check_interface_name(&interface, c);

    let tunnel = raw.tunnel_source.unwrap_or_default();
    let tunnel_source = TunnelSource {
        ipv4: tunnel.ipv4.as_deref().and_then(|t| family_addr(t, "tunnel_source.ipv4", c)),
        ipv6: tunnel.ipv6.as_deref().and_then(|t| family_addr(t, "tunnel_source.ipv6", c)),
    };

    let metrics_listen = match raw.metrics_listen {
        None => defaults::METRICS_LISTEN,
        Some(text) => text.trim().parse::<SocketAddr>().unwrap_or_else(|_| {
            c.error(
                "metrics_listen",
                format!("invalid listen address `{text}`: expected ADDRESS:PORT, e.g. 127.0.0.1:9650 or [::1]:9650"),
            );
            defaults::METRICS_LISTEN
        }),
    };

    let admin_socket =
        PathBuf::from(raw.admin_socket.unwrap_or_else(|| defaults::ADMIN_SOCKET.into()));
    if admin_socket.as_os_str().is_empty() {
        c.error("admin_socket", "admin_socket must not be empty".into());
    }
    let admin_group = raw.admin_group;
    if let Some(g) = &admin_group
        && (g.is_empty()
            || g.contains(|ch: char| ch.is_whitespace() || ch.is_control() || ch == ':'))
    {
        c.error("admin_group", format!("`{g}` is not a group name or number"));
    }
    let pin_path = PathBuf::from(raw.pin_path.unwrap_or_else(|| defaults::PIN_PATH.into()));
    if !pin_path.is_absolute() {
        c.error(
            "pin_path",
            format!(
                "pin_path `{}` must be an absolute path (under a bpffs mount)",
                pin_path.display()
            ),
        );
    }

    let conn_table_size = conn_table_size(raw.conn_table_size, c);
    let conn_table_size_v6 = conn_table_size_v6(raw.conn_table_size_v6, conn_table_size, c);
    if let Some(mtu) = raw.mtu
        && !(68..=65535).contains(&mtu)
    {
        c.error("mtu", format!("mtu {mtu} is out of range 68..=65535"));
    }
    let gateway = raw.gateway.as_deref().and_then(|t| unicast_addr(t, "gateway", c));
    let accept_macs = resolve_accept_macs(&raw.accept_macs.unwrap_or_default(), c);
    let hash_seed = resolve_seed(raw.hash_seed, raw.hash_seed_file, c);
    let ha = resolve_ha(raw.ha.unwrap_or_default(), c);
    let sync = raw.sync.and_then(|s| resolve_sync(s, c));

    let defaults_layer = raw.health_check_defaults.unwrap_or_default();
    check_layer(&defaults_layer, "health_check_defaults", c);

    let raw_vips = raw.vips.unwrap_or_default();
    if raw_vips.is_empty() {
        c.error("vips", "at least one VIP is required".into());
    }
    if raw_vips.len() > MAX_VIPS as usize {
        c.error(
            "vips",
            format!("{} VIPs configured, at most {MAX_VIPS} are supported", raw_vips.len()),
        );
    }
    let total: usize = raw_vips.iter().map(|v| v.backends.as_ref().map_or(0, Vec::len)).sum();
    if total > MAX_BACKENDS as usize {
        c.error(
            "vips",
            format!("{total} backends over all VIPs, at most {MAX_BACKENDS} are supported"),
        );
    }

    let vips: Vec<Vip> = raw_vips
        .into_iter()
        .enumerate()
        .map(|(i, v)| resolve_vip(v, &format!("vips[{i}]"), &defaults_layer, c))
        .collect();

    let cfg = Config {
        interface,
        xdp_mode: raw.xdp_mode.unwrap_or_default(),
        forwarding: raw.forwarding.unwrap_or_default(),
        tunnel_source,
        metrics_listen,
        admin_socket,
        admin_group,
        pin_path,
        conn_table_size,
        conn_table_size_v6,
        mtu: raw.mtu,
        gateway,
        accept_macs,
        hash_seed,
        ha,
        sync,
        vips,
        origin: Origin::default(),
    };
    check_vip_set(&cfg, c);
    check_forwarding(&cfg, c);
    cfg
}

/// `accept_macs`: unicast MACs besides the interface's, at most `ACCEPT_MACS`.
fn resolve_accept_macs(texts: &[String], c: &mut Collector<'_>) -> Vec<Mac> {
    if texts.len() > ACCEPT_MACS {
        c.error(
            "accept_macs",
            format!("{} MACs listed, at most {ACCEPT_MACS} are supported", texts.len()),
        );
    }
    let mut macs = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let path = format!("accept_macs[{i}]");
        match crate::mac::parse(text.trim()) {
            None => c.error(&path, format!("`{text}` is not a MAC address (aa:bb:cc:dd:ee:ff)")),
            // The group bit: broadcast and multicast frames always go to the kernel.
            Some(m) if m[0] & 1 != 0 => c.error(
                &path,
                format!(
                    "{text} is a multicast or broadcast MAC; VIP traffic is sent to a unicast one"
                ),
            ),
            Some([0, 0, 0, 0, 0, 0]) => c.error(&path, format!("{text} is not a usable MAC")),
            Some(m) => macs.push(m),
        }
    }
    macs
}

/// The flow-hash seed: `hash_seed`, `hash_seed_file`, the default file, or the
/// public seed (which `config::warnings` reports).
fn resolve_seed(text: Option<String>, file: Option<String>, c: &mut Collector<'_>) -> HashSeed {
    let (seed, source) = match (text, file) {
        (Some(_), Some(_)) => {
            c.error("hash_seed_file", "set hash_seed or hash_seed_file, not both".into());
            return HashSeed::default();
        }
        (Some(text), None) => {
            (seed::parse(&text).map_err(|e| ("hash_seed", e)), SeedSource::Config)
        }
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                let msg = format!("hash_seed_file `{}` must be an absolute path", path.display());
                c.error("hash_seed_file", msg);
                return HashSeed::default();
            }
            (seed::read(&path).map_err(|e| ("hash_seed_file", e)), SeedSource::File(path))
        }
        (None, None) if c.default_seed_file.exists() => {
            let path = c.default_seed_file.to_owned();
            let seed = seed::read(&path).map_err(|e| {
                ("", format!("the default seed file (no hash_seed or hash_seed_file): {e}"))
            });
            (seed, SeedSource::DefaultFile(path))
        }
        (None, None) => return HashSeed::default(),
    };
    match seed {
        Ok(seed) => HashSeed { seed, source },
        Err((path, msg)) => {
            c.error(path, msg);
            HashSeed::default()
        }
    }
}

/// `sync:`: every key required; peers distinct, not this balancer's `listen`, and
/// of its family (a socket bound to an IPv4 address cannot send to IPv6), unless
/// it listens on the IPv6 wildcard `[::]` (dual stack).
fn resolve_sync(raw: RawSync, c: &mut Collector<'_>) -> Option<SyncConf> {
    let socket = |text: &str, path: &str, c: &mut Collector<'_>| match text
        .trim()
        .parse::<SocketAddr>()
    {
        Ok(a) if a.port() == 0 => {
            c.error(path, format!("`{text}` has port 0: give the UDP port (e.g. {}:4790)", a.ip()));
            None
        }
        Ok(a) if a.ip().is_multicast() => {
            c.error(path, format!("{} is not a unicast address", a.ip()));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            c.error(
                path,
                format!("invalid address `{text}`: expected ADDRESS:PORT, e.g. 10.0.0.1:4790 or \"[fd00::1]:4790\""),
            );
            None
        }
    };
    let listen = match raw.listen.as_deref() {
        None => {
            c.error("sync.listen", "sync needs listen: the UDP ADDRESS:PORT peers send to".into());
            None
        }
        Some(text) => socket(text, "sync.listen", c),
    };
    let texts = raw.peers.unwrap_or_default();
    if texts.is_empty() {
        c.error(
            "sync.peers",
            "sync needs at least one peer (the other balancers' listen addresses)".into(),
        );
    }
    let mut peers: Vec<SocketAddr> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let path = format!("sync.peers[{i}]");
        let Some(peer) = socket(text, &path, c) else { continue };
        if peer.ip().is_unspecified() {
            c.error(&path, format!("{} is not an address a peer can be reached at", peer.ip()));
        } else if peers.contains(&peer) {
            c.error(&path, format!("peer {peer} is listed twice"));
        } else if Some(peer) == listen {
            c.error(&path, format!("peer {peer} is this balancer's own sync.listen"));
        } else if let Some(l) = listen
            && l.is_ipv4() != peer.is_ipv4()
            && l.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        {
            c.error(
                &path,
                format!(
                    "peer {peer} is not of the family of sync.listen {l} (listen on [::] for both)"
                ),
            );
        }
        peers.push(peer);
    }
    let key = match raw.key_file.map(PathBuf::from) {
        None => {
            c.error(
                "sync.key_file",
                "sync needs key_file: the shared key (`xdplb gen-sync-key FILE`, copied to every peer)"
                    .into(),
            );
            None
        }
        Some(path) if !path.is_absolute() => {
            c.error(
                "sync.key_file",
                format!("key_file `{}` must be an absolute path", path.display()),
            );
            None
        }
        Some(path) => match crate::sync::key::read(&path) {
            Ok(key) => Some((path, key)),
            Err(e) => {
                c.error("sync.key_file", e);
                None
            }
        },
    };
    let max_entries_per_peer = max_entries_per_peer(raw.max_entries_per_peer, c);
    let (key_file, key) = key?;
    Some(SyncConf { listen: listen?, peers, key_file, key, max_entries_per_peer })
}

/// `sync.max_entries_per_peer`, within its bounds (the default where absent).
fn max_entries_per_peer(raw: Option<u64>, c: &mut Collector<'_>) -> usize {
    let (min, max) =
        (defaults::SYNC_MAX_ENTRIES_PER_PEER_MIN, defaults::SYNC_MAX_ENTRIES_PER_PEER_MAX);
    match raw {
        None => defaults::SYNC_MAX_ENTRIES_PER_PEER,
        Some(n) if (min..=max).contains(&n) => {
            usize::try_from(n).unwrap_or(defaults::SYNC_MAX_ENTRIES_PER_PEER)
        }
        Some(n) => {
            c.error(
                "sync.max_entries_per_peer",
                format!(
                    "max_entries_per_peer {n} is out of range {min}..={max} (entries installed \
                     from one peer; ~100 bytes of memory each)"
                ),
            );
            defaults::SYNC_MAX_ENTRIES_PER_PEER
        }
    }
}

/// Longest `ha.withdraw_wait`: a planned stop is not a place to park a balancer.
const MAX_WITHDRAW_WAIT: Duration = Duration::from_mins(5);

/// `conn_table_size`, within its bounds (the default where absent or out of them).
fn conn_table_size(raw: Option<u64>, c: &mut Collector<'_>) -> u32 {
    match raw {
        None => defaults::CONN_TABLE_SIZE,
        Some(n) if (defaults::CONN_TABLE_MIN..=defaults::CONN_TABLE_MAX).contains(&n) => {
            u32::try_from(n).unwrap_or(defaults::CONN_TABLE_SIZE)
        }
        Some(n) => {
            c.error(
                "conn_table_size",
                format!(
                    "conn_table_size {n} is out of range {}..={} (IPv4 entries, ~88 bytes each; \
                     IPv6: a quarter as many, ~112 bytes each)",
                    defaults::CONN_TABLE_MIN,
                    defaults::CONN_TABLE_MAX
                ),
            );
            defaults::CONN_TABLE_SIZE
        }
    }
}

/// `conn_table_size_v6`, within the same bounds; absent: a quarter of the IPv4
/// table's (`conn_table::v6_entries`).
fn conn_table_size_v6(raw: Option<u64>, v4: u32, c: &mut Collector<'_>) -> u32 {
    let default = crate::conn_table::v6_entries(v4);
    match raw {
        None => default,
        Some(n) if (defaults::CONN_TABLE_MIN..=defaults::CONN_TABLE_MAX).contains(&n) => {
            u32::try_from(n).unwrap_or(default)
        }
        Some(n) => {
            c.error(
                "conn_table_size_v6",
                format!(
                    "conn_table_size_v6 {n} is out of range {}..={} (IPv6 entries, ~112 bytes \
                     each)",
                    defaults::CONN_TABLE_MIN,
                    defaults::CONN_TABLE_MAX
                ),
            );
            default
        }
    }
}

fn resolve_ha(raw: RawHa, c: &mut Collector<'_>) -> Ha {
    let track_file = raw.track_file.map(PathBuf::from);
    if let Some(path) = &track_file
        && (!path.is_absolute() || path.file_name().is_none())
    {
        c.error(
            "ha.track_file",
            format!("track_file `{}` must be an absolute path to a file", path.display()),
        );
    }
    if let Some(table) = raw.route_table {
        let reserved = match table {
            0 => Some("0 (unspecified)"),
            253 => Some("253 (the default table)"),
            254 => Some("254 (the main table)"),
            255 => Some("255 (the local table)"),
            _ => None,
        };
        if let Some(what) = reserved {
            c.error(
                "ha.route_table",
                format!(
                    "route_table {what} is the kernel's; give xdplb a table of its own (e.g. 100) that only BIRD reads"
                ),
            );
        }
    }
    let default_wait = if track_file.is_some() || raw.route_table.is_some() {
        defaults::WITHDRAW_WAIT
    } else {
        Duration::ZERO
    };
    let withdraw_wait = match raw.withdraw_wait {
        None => default_wait,
        Some(DurationText(text)) => match parse_wait(&text) {
            Ok(d) if d <= MAX_WITHDRAW_WAIT => d,
            Ok(_) => {
                c.error(
                    "ha.withdraw_wait",
                    format!(
                        "withdraw_wait {text} is longer than {}",
                        duration::format(MAX_WITHDRAW_WAIT)
                    ),
                );
                default_wait
            }
            Err(e) => {
                c.error("ha.withdraw_wait", e);
                default_wait
            }
        },
    };
    Ha { track_file, route_table: raw.route_table, withdraw_wait }
}

/// A duration, where zero (`0s`, `0ms`...) is allowed: no wait.
fn parse_wait(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let zero = number.starts_with('0') && number.chars().all(|ch| ch == '0' || ch == '.');
    if zero && ["ns", "us", "ms", "s", "m", "h"].contains(&unit) {
        return Ok(Duration::ZERO);
    }
    duration::parse(text)
}

/// Linux's rule for device names (`dev_valid_name`).
fn check_interface_name(name: &str, c: &mut Collector<'_>) {
    if name.is_empty() {
        c.error("interface", "interface is required: the NIC that receives VIP traffic".into());
    } else if name.len() > 15
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        c.error("interface", format!("`{name}` is not a valid interface name"));
    }
}

/// Names identify VIPs and backends in metrics, the admin socket and Maglev's
/// hash, so they are kept to one plain word.
fn check_name(name: Option<&str>, path: &str, what: &str, c: &mut Collector<'_>) -> String {
    let Some(name) = name else {
        c.error(path, format!("{what} name is required"));
        return String::new();
    };
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
    if !valid {
        c.error(
            path,
            format!("{what} name `{name}` must be 1 to 63 characters of A-Z a-z 0-9 _ - ."),
        );
    }
    name.to_owned()
}

fn parse_ip(text: &str, path: &str, c: &mut Collector<'_>) -> Option<IpAddr> {
    let ip = text.trim().parse::<IpAddr>().ok();
    if ip.is_none() {
        c.error(path, format!("`{text}` is not an IPv4 or IPv6 address"));
    }
    ip
}

/// An address packets can be sent to or from: not unspecified, multicast or broadcast.
fn unicast_addr(text: &str, path: &str, c: &mut Collector<'_>) -> Option<IpAddr> {
    let ip = parse_ip(text, path, c)?;
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad {
        c.error(path, format!("{ip} is not a unicast address"));
    }
    Some(ip)
}

fn family_addr<A: FamilyAddr>(text: &str, path: &str, c: &mut Collector<'_>) -> Option<A> {
    let ip = unicast_addr(text, path, c)?;
    let a = A::from_ip(ip);
    if a.is_none() {
        c.error(path, format!("{ip} is not an {} address", A::NAME));
    }
    a
}

trait FamilyAddr: Sized {
    const NAME: &'static str;
    fn from_ip(ip: IpAddr) -> Option<Self>;
}

impl FamilyAddr for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    fn from_ip(ip: IpAddr) -> Option<Self> {
        if let IpAddr::V4(a) = ip { Some(a) } else { None }
    }
}

impl FamilyAddr for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    fn from_ip(ip: IpAddr) -> Option<Self> {
        if let IpAddr::V6(a) = ip { Some(a) } else { None }
    }
}

fn resolve_vip(v: RawVip, path: &str, defaults_layer: &RawCheck, c: &mut Collector<'_>) -> Vip {
    let name = check_name(v.name.as_deref(), &child(path, "name"), "VIP", c);
    let addr_path = child(path, "address");
    let address = match v.address.as_deref() {
        None => {
            c.error(&addr_path, "VIP address is required".into());
            None
        }
        Some(t) => unicast_addr(t, &addr_path, c),
    };
    let port = v.port.unwrap_or_else(|| {
        c.error(&child(path, "port"), "VIP port is required (0 = every port)".into());
        0
    });

    let raw_backends = v.backends.unwrap_or_default();
    let backends_path = child(path, "backends");
    if raw_backends.is_empty() {
        c.error(&backends_path, "a VIP needs at least one backend".into());
    }
    if raw_backends.len() > MAX_BACKENDS_PER_VIP {
        c.error(
            &backends_path,
            format!("{} backends, at most {MAX_BACKENDS_PER_VIP} per VIP keep Maglev's imbalance under 1%", raw_backends.len()),
        );
    }
    let mut names: HashMap<String, String> = HashMap::new();
    let mut addrs: HashMap<IpAddr, String> = HashMap::new();
    let mut backends = Vec::with_capacity(raw_backends.len());
    for (j, b) in raw_backends.into_iter().enumerate() {
        let bpath = format!("{backends_path}[{j}]");
        let Some(backend) = resolve_backend(&b, &bpath, c) else {
            continue;
        };
        if !backend.name.is_empty() {
            if let Some(first) = names.get(&backend.name) {
                let line = c.line_of(first);
                c.error(
                    &child(&bpath, "name"),
                    format!("duplicate backend name `{}` (first at line {line})", backend.name),
                );
            } else {
                names.insert(backend.name.clone(), child(&bpath, "name"));
            }
        }
        if let Some(first) = addrs.get(&backend.address) {
            let line = c.line_of(first);
            c.error(
                &child(&bpath, "address"),
                format!("duplicate backend address {} (first at line {line})", backend.address),
            );
        } else {
            addrs.insert(backend.address, child(&bpath, "address"));
        }
        backends.push(backend);
    }

    let hc_path = child(path, "health_check");
    let layer = v.health_check.unwrap_or_default();
    check_layer(&layer, &hc_path, c);
    let health_check = merge_checks(&layer, &hc_path, defaults_layer, port, c);

    Vip {
        name,
        address: address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        port,
        protocol: v.protocol.unwrap_or_default(),
        backends,
        min_primaries: v.min_primaries.unwrap_or(defaults::MIN_PRIMARIES),
        all_down: v.all_down.unwrap_or_default(),
        down_flows: v.down_flows.unwrap_or_default(),
        health_check,
    }
}

/// `None` when the address is missing or invalid (already reported), so later
/// checks do not pile up errors about a placeholder.
fn resolve_backend(b: &RawBackend, path: &str, c: &mut Collector<'_>) -> Option<BackendConf> {
    let name = check_name(b.name.as_deref(), &child(path, "name"), "backend", c);
    let weight = b.weight.unwrap_or(defaults::WEIGHT);
    if !(1..=10_000).contains(&weight) {
        c.error(&child(path, "weight"), format!("weight {weight} is out of range 1..=10000"));
    }
    let addr_path = child(path, "address");
    let address = match b.address.as_deref() {
        None => {
            c.error(&addr_path, "backend address is required".into());
            None
        }
        Some(t) => unicast_addr(t, &addr_path, c),
    }?;
    Some(BackendConf { name, address, weight, backup: b.backup.unwrap_or(false) })
}

/// Checks the keys one health-check layer sets, where they are written, so that
/// an error in the defaults is reported once however many VIPs inherit it.
fn check_layer(layer: &RawCheck, path: &str, c: &mut Collector<'_>) {
    if layer.port == Some(0) {
        c.error(&child(path, "port"), "health-check port must not be 0".into());
    }
    if let Some(p) = &layer.path
        && (!p.starts_with('/') || p.contains(|ch: char| ch.is_whitespace() || ch.is_control()))
    {
        c.error(
            &child(path, "path"),
            format!("http path `{p}` must start with `/` and contain no spaces"),
        );
    }
    if let Some(h) = &layer.host
        && (h.is_empty()
            || h.contains(|ch: char| ch.is_whitespace() || ch.is_control() || ch == '/'))
    {
        c.error(&child(path, "host"), format!("host `{h}` is not a valid host name"));
    }
    if let Some(statuses) = &layer.expect_status {
        if statuses.is_empty() {
            c.error(
                &child(path, "expect_status"),
                "expect_status must list at least one status".into(),
            );
        }
        let list = child(path, "expect_status");
        for (k, s) in statuses.iter().enumerate() {
            if !(100..=599).contains(s) {
                c.error(
                    &format!("{list}[{k}]"),
                    format!("status {s} is not an HTTP status (100..=599)"),
                );
            }
        }
    }
    for (key, value) in [("rise", layer.rise), ("fall", layer.fall)] {
        if value == Some(0) {
            c.error(&child(path, key), format!("{key} must be at least 1"));
        }
    }
    for (key, text) in [
        ("interval", &layer.interval),
        ("timeout", &layer.timeout),
        ("flap_window", &layer.flap_window),
        ("flap_hold", &layer.flap_hold),
        ("fast_interval", &layer.fast_interval),
        ("fast_timeout", &layer.fast_timeout),
    ] {
        if let Some(DurationText(t)) = text
            && let Err(e) = duration::parse(t)
        {
            c.error(&child(path, key), e);
        }
    }
}

/// A duration key's parsed value, `Err` when written but invalid (reported by `check_layer`).
fn timing(text: Option<&DurationText>) -> Result<Option<Duration>, ()> {
    text.map(|DurationText(t)| duration::parse(t)).transpose().map_err(|_| ())
}

/// The VIP's layer over the defaults layer over the built-in defaults.
fn merge_checks(
    vip: &RawCheck,
    vip_path: &str,
    base: &RawCheck,
    vip_port: u16,
    c: &mut Collector<'_>,
) -> CheckSpec {
    let kind = match vip.kind.or(base.kind) {
        None => defaults::CHECK_KIND,
        Some(RawKind::Tcp) => CheckKind::Tcp,
        Some(RawKind::Http) => CheckKind::Http,
        Some(RawKind::Https) => CheckKind::Https,
    };
    let port = vip.port.or(base.port).unwrap_or_else(|| match kind {
        CheckKind::Http => 80,
        CheckKind::Https => 443,
        CheckKind::Tcp => {
            if vip_port == 0 {
                c.error(
                    &child(vip_path, "port"),
                    "a tcp check on a VIP with port 0 (every port) needs a port".into(),
                );
            }
            vip_port
        }
    });

    let (vip_interval, vip_timeout) = (timing(vip.interval.as_ref()), timing(vip.timeout.as_ref()));
    let (base_interval, base_timeout) =
        (timing(base.interval.as_ref()), timing(base.timeout.as_ref()));
    let pick = |top: Result<Option<Duration>, ()>,
                bottom: Result<Option<Duration>, ()>,
                builtin| match top {
        Ok(Some(d)) => Ok(d),
        Ok(None) => bottom.map(|d| d.unwrap_or(builtin)),
        Err(()) => Err(()),
    };
    let interval = pick(vip_interval, base_interval, defaults::INTERVAL);
    let timeout = pick(vip_timeout, base_timeout, defaults::TIMEOUT);
    if let (Ok(interval), Ok(timeout)) = (interval, timeout)
        && timeout > interval
    {
        // Blame the key closest to the VIP; identical errors from a shared defaults
        // layer collapse into one when errors are de-duplicated.
        let culprit = if vip.timeout.is_some() {
            child(vip_path, "timeout")
        } else if vip.interval.is_some() {
            child(vip_path, "interval")
        } else if base.timeout.is_some() {
            "health_check_defaults.timeout".to_owned()
        } else {
            "health_check_defaults.interval".to_owned()
        };
        c.error(
            &culprit,
            format!(
                "timeout {} must not be longer than interval {}",
                duration::format(timeout),
                duration::format(interval)
            ),
        );
    }

    let interval = interval.unwrap_or(defaults::INTERVAL);
    let timeout = timeout.unwrap_or(defaults::TIMEOUT);
    let (fast_interval, fast_timeout) = fast_timing(vip, vip_path, base, interval, timeout, c);
    CheckSpec {
        kind,
        port,
        path: vip
            .path
            .clone()
            .or_else(|| base.path.clone())
            .unwrap_or_else(|| defaults::CHECK_PATH.into()),
        host: vip.host.clone().or_else(|| base.host.clone()),
        expect_status: vip
            .expect_status
            .clone()
            .or_else(|| base.expect_status.clone())
            .unwrap_or_else(|| defaults::EXPECT_STATUS.to_vec()),
        tls_verify: vip.tls_verify.or(base.tls_verify).unwrap_or(true),
        interval,
        timeout,
        rise: vip.rise.or(base.rise).unwrap_or(defaults::RISE),
        fall: vip.fall.or(base.fall).unwrap_or(defaults::FALL),
        initially_up: vip.initial_state.or(base.initial_state).unwrap_or_default()
            == InitialState::Up,
        refused_is_down: vip
            .refused_is_down
            .or(base.refused_is_down)
            .unwrap_or(defaults::REFUSED_IS_DOWN),
        damping: Damping {
            limit: vip.flap_changes.or(base.flap_changes).unwrap_or(defaults::FLAP_CHANGES),
            window: pick(
                timing(vip.flap_window.as_ref()),
                timing(base.flap_window.as_ref()),
                defaults::FLAP_WINDOW,
            )
            .unwrap_or(defaults::FLAP_WINDOW),
            hold: pick(
                timing(vip.flap_hold.as_ref()),
                timing(base.flap_hold.as_ref()),
                defaults::FLAP_HOLD,
            )
            .unwrap_or(defaults::FLAP_HOLD),
        },
        passive: vip.passive.or(base.passive).unwrap_or(defaults::PASSIVE),
        fast_interval,
        fast_timeout,
    }
}

/// `fast_interval` and `fast_timeout`, the VIP's over the defaults'. Unset, each is
/// its built-in default or the regular `interval` / `timeout` when that is shorter:
/// fast probes are never slower than the regular ones. Set, each must be at least
/// `MIN_FAST_INTERVAL` (how often the controller looks) and at most its regular
/// counterpart; the error names the key that was written.
fn fast_timing(
    vip: &RawCheck,
    vip_path: &str,
    base: &RawCheck,
    interval: Duration,
    timeout: Duration,
    c: &mut Collector<'_>,
) -> (Duration, Duration) {
    let mut one = |key: &str,
                   top: Option<&DurationText>,
                   bottom: Option<&DurationText>,
                   builtin: Duration,
                   regular: Duration,
                   regular_key: &str| {
        let (written, at) = match (timing(top), timing(bottom)) {
            (Ok(Some(d)), _) => (d, child(vip_path, key)),
            (Ok(None), Ok(Some(d))) => (d, format!("health_check_defaults.{key}")),
            // Unset, or invalid (already reported by `check_layer`).
            _ => return builtin.min(regular),
        };
        if written < defaults::MIN_FAST_INTERVAL {
            c.error(
                &at,
                format!(
                    "{key} {} is shorter than {}, how often the controller reads the data path",
                    duration::format(written),
                    duration::format(defaults::MIN_FAST_INTERVAL)
                ),
            );
        } else if written > regular {
            c.error(
                &at,
                format!(
                    "{key} {} must not be longer than {regular_key} {}",
                    duration::format(written),
                    duration::format(regular)
                ),
            );
        }
        written
    };
    let fast_interval = one(
        "fast_interval",
        vip.fast_interval.as_ref(),
        base.fast_interval.as_ref(),
        defaults::FAST_INTERVAL,
        interval,
        "interval",
    );
    let fast_timeout = one(
        "fast_timeout",
        vip.fast_timeout.as_ref(),
        base.fast_timeout.as_ref(),
        defaults::FAST_TIMEOUT,
        timeout,
        "timeout",
    );
    (fast_interval, fast_timeout)
}

/// Checks across VIPs: unique names and unique (address, port, protocol).
fn check_vip_set(cfg: &Config, c: &mut Collector<'_>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<(IpAddr, u16, u8), usize> = HashMap::new();
    for (i, vip) in cfg.vips.iter().enumerate() {
        if !vip.name.is_empty() {
            if let Some(&first) = names.get(vip.name.as_str()) {
                let line = c.line_of(&format!("vips[{first}].name"));
                c.error(
                    &format!("vips[{i}].name"),
                    format!("duplicate VIP name `{}` (first at line {line})", vip.name),
                );
            } else {
                names.insert(&vip.name, i);
            }
        }
        if vip.address.is_unspecified() {
            continue; // missing or invalid, already reported
        }
        if let Some(&first) = keys.get(&(vip.address, vip.port, vip.protocol.number())) {
            let line = c.line_of(&format!("vips[{first}].address"));
            c.error(
                &format!("vips[{i}].address"),
                format!(
                    "duplicate VIP {} port {} {} (same as vips[{first}] at line {line})",
                    vip.address,
                    vip.port,
                    vip.protocol.name()
                ),
            );
        } else {
            keys.insert((vip.address, vip.port, vip.protocol.number()), i);
        }
    }
}

/// What the forwarding mode asks of the addresses.
fn check_forwarding(cfg: &Config, c: &mut Collector<'_>) {
    let v6_anywhere = cfg
        .vips
        .iter()
        .any(|v| v.address.is_ipv6() || v.backends.iter().any(|b| b.address.is_ipv6()));
    if let Some(mtu) = cfg.mtu
        && mtu < 1280
        && v6_anywhere
    {
        c.error("mtu", format!("mtu {mtu} is below IPv6's minimum of 1280"));
    }
    match cfg.forwarding {
        Forwarding::Dsr => {
            for (i, vip) in cfg.vips.iter().enumerate() {
                if vip.address.is_unspecified() {
                    continue;
                }
                for (j, b) in vip.backends.iter().enumerate() {
                    if b.address.is_ipv6() != vip.address.is_ipv6() {
                        c.error(
                            &format!("vips[{i}].backends[{j}].address"),
                            format!(
                                "forwarding dsr keeps the VIP as destination, so backend {} must be of the VIP's family ({}); use forwarding: ipip to mix families",
                                b.address,
                                if vip.address.is_ipv6() { "IPv6" } else { "IPv4" }
                            ),
                        );
                    }
                }
            }
        }
        Forwarding::Ipip => {
            let first_of = |v6: bool| {
                cfg.vips.iter().enumerate().find_map(|(i, v)| {
                    v.backends.iter().position(|b| b.address.is_ipv6() == v6).map(|j| (i, j))
                })
            };
            for (v6, set, key) in [
                (false, cfg.tunnel_source.ipv4.is_some(), "ipv4"),
                (true, cfg.tunnel_source.ipv6.is_some(), "ipv6"),
            ] {
                if set {
                    continue;
                }
                if let Some((i, j)) = first_of(v6) {
                    let path = format!("tunnel_source.{key}");
                    let pos = c.index.locate_any(&[&path, "tunnel_source", "forwarding"]);
                    let family = if v6 { "IPv6" } else { "IPv4" };
                    c.error_at(
                        &path,
                        pos,
                        format!(
                            "forwarding ipip to {family} backends (first: vips[{i}].backends[{j}]) needs tunnel_source.{key}, the outer source address"
                        ),
                    );
                }
            }
        }
    }
}

/// Wraps a finished collector's position index for the config to keep.
pub fn origin(file: &str, index: Arc<PosIndex>) -> Origin {
    Origin { file: file.to_owned(), index }
}
