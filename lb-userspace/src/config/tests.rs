use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;
use crate::health::{CheckKind, CheckSpec};

const EXAMPLE: &str = include_str!("../../tests/configs/example.yaml");

/// `text` without its first (blank) line and its common indentation, so test
/// configs can be written indented and line 1 is their first line.
fn yaml(text: &str) -> String {
    let body = text.strip_prefix('\n').unwrap_or(text);
    let indent = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.lines().map(|l| l.get(indent..).unwrap_or("").to_owned() + "\n").collect()
}

fn errors(text: &str) -> ConfigErrors {
    match parse(text, "test.yaml") {
        Ok(cfg) => panic!("expected errors, got {cfg:#?}"),
        Err(e) => e,
    }
}

/// The error at `path`; fails listing all errors if there is none.
fn error_at<'a>(errs: &'a ConfigErrors, path: &str) -> &'a ConfigError {
    errs.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at `{path}` in:\n{errs}"))
}

/// Asserts exactly one error, at `path`, `line`, `column`, whose message contains `words`.
fn assert_only_error(text: &str, path: &str, line: usize, column: usize, words: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{errs}");
    let e = error_at(&errs, path);
    assert_eq!((e.line, e.column), (line, column), "position of: {e}");
    assert!(e.message.contains(words), "`{words}` not in: {e}");
}

/// `config::parse` with a default seed file of the tests' own: results must not
/// depend on whether this host has `seed::DEFAULT_FILE` (shadows the glob import).
fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("xdplb-test-seed-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        path
    });
    parse_with_seed_default(text, source, file)
}

fn ok(text: &str) -> Config {
    parse(text, "test.yaml").unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A valid config to vary: one VIP, two backends.
fn base() -> String {
    yaml(
        "
        interface: eth0
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends:
              - { name: a, address: 10.0.0.11 }
              - { name: b, address: 10.0.0.12 }
        ",
    )
}

// --- what parses, and what it resolves to -------------------------------------

#[test]
fn readme_example_parses_with_defaults_filled_in() {
    let cfg = ok(EXAMPLE);
    assert_eq!(cfg.interface, "eth0");
    assert_eq!(cfg.xdp_mode, XdpMode::Driver);
    assert_eq!(cfg.forwarding, Forwarding::Dsr);
    assert_eq!(
        cfg.tunnel_source,
        TunnelSource {
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ipv6: Some("fd00::2".parse().unwrap())
        }
    );
    assert_eq!(cfg.metrics_listen, "127.0.0.1:9650".parse::<SocketAddr>().unwrap());
    assert_eq!(cfg.admin_socket, PathBuf::from("/run/xdplb/admin.sock"));
    assert_eq!(cfg.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
    assert_eq!((cfg.mtu, cfg.gateway), (None, None));
    assert_eq!(cfg.conn_table_size, 1 << 20, "the connection table's default size");
    assert_eq!(cfg.conn_table_size_v6, 1 << 18, "the IPv6 table: a quarter of it");
    assert_eq!(cfg.vips.len(), 1);
    let vip = &cfg.vips[0];
    assert_eq!((vip.name.as_str(), vip.address, vip.port), ("waf-https", v4(203, 0, 113, 10), 443));
    assert_eq!(vip.protocol, Protocol::Tcp);
    assert_eq!(vip.protocol.number(), 6);
    assert_eq!(
        vip.backends,
        vec![
            BackendConf {
                name: "waf-1".into(),
                address: v4(10, 0, 0, 11),
                weight: 100,
                backup: false
            },
            BackendConf {
                name: "waf-2".into(),
                address: v4(10, 0, 0, 12),
                weight: 100,
                backup: false
            },
            BackendConf {
                name: "waf-9".into(),
                address: v4(10, 0, 0, 19),
                weight: 100,
                backup: true
            },
        ]
    );
    assert_eq!(vip.min_primaries, 1);
    // kind and port from the VIP, the rest from health_check_defaults and built-ins.
    assert_eq!(
        vip.health_check,
        CheckSpec {
            kind: CheckKind::Tcp,
            port: 443,
            path: "/healthz".into(),
            host: None,
            expect_status: vec![200],
            tls_verify: true,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 3,
            initially_up: false,
            refused_is_down: true,
            damping: crate::health::Damping {
                limit: 6,
                window: Duration::from_mins(1),
                hold: Duration::from_mins(1),
            },
            passive: true,
            fast_interval: Duration::from_millis(10),
            fast_timeout: Duration::from_millis(40),
        }
    );
    assert_eq!(cfg.origin.file(), "test.yaml");
}

#[test]
fn example_config_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/example.yaml");
    let cfg = load(&path).unwrap_or_else(|e| panic!("{e}"));
    // `load` reads the host's default seed file (or none); the tests' `parse` their own.
    let want = Config { hash_seed: cfg.hash_seed.clone(), ..ok(EXAMPLE) };
    assert_eq!(cfg, want);
    assert_eq!(cfg.origin.file(), path.display().to_string());
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let cfg = ok(&base());
    assert_eq!(cfg.xdp_mode, XdpMode::Driver);
    assert_eq!(cfg.forwarding, Forwarding::Dsr);
    assert_eq!(cfg.tunnel_source, TunnelSource::default());
    assert_eq!(cfg.metrics_listen, defaults::METRICS_LISTEN);
    assert_eq!(cfg.admin_socket, PathBuf::from("/run/xdplb/admin.sock"));
    assert_eq!(cfg.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
    let vip = &cfg.vips[0];
    assert_eq!(vip.protocol, Protocol::Tcp);
    assert!(vip.backends.iter().all(|b| b.weight == 100));
    assert_eq!(
        vip.health_check,
        CheckSpec {
            kind: CheckKind::Http,
            port: 80,
            path: "/healthz".into(),
            host: None,
            expect_status: vec![200],
            tls_verify: true,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(150),
            rise: 2,
            fall: 3,
            initially_up: false,
            refused_is_down: true,
            damping: crate::health::Damping {
                limit: 6,
                window: Duration::from_mins(1),
                hold: Duration::from_mins(1),
            },
            passive: true,
            fast_interval: Duration::from_millis(10),
            fast_timeout: Duration::from_millis(40),
        }
    );
}

#[test]
fn vip_health_check_overrides_defaults_key_by_key() {
    let cfg = ok(&yaml(
        "
        interface: eth0
        health_check_defaults: { kind: https, host: waf.example, interval: 1s, timeout: 500ms, rise: 5, tls_verify: false }
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends: [{ name: a, address: 10.0.0.11 }]
            health_check: { path: /ready, expect_status: [200, 204], timeout: 1.5s, interval: 2s, initial_state: up }
          - name: other
            address: 203.0.113.11
            port: 443
            backends: [{ name: a, address: 10.0.0.11 }]
        ",
    ));
    let hc = &cfg.vips[0].health_check;
    assert_eq!(hc.kind, CheckKind::Https);
    assert_eq!(hc.port, 443);
    assert_eq!(hc.host.as_deref(), Some("waf.example"));
    assert_eq!(hc.path, "/ready");
    assert_eq!(hc.expect_status, vec![200, 204]);
    assert!(!hc.tls_verify);
    assert_eq!((hc.interval, hc.timeout), (Duration::from_secs(2), Duration::from_millis(1500)));
    assert_eq!((hc.rise, hc.fall), (5, 3));
    assert!(hc.initially_up);
    // A VIP without its own keys gets the defaults as they are.
    let hc = &cfg.vips[1].health_check;
    assert_eq!(
        (hc.path.as_str(), hc.interval, hc.timeout),
        ("/healthz", Duration::from_secs(1), Duration::from_millis(500))
    );
    assert!(!hc.initially_up);
}

#[test]
fn refusal_and_fast_probe_keys_layer_like_the_others() {
    let cfg = ok(&yaml(
        "
        interface: eth0
        health_check_defaults: { refused_is_down: false, fast_interval: 30ms }
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends: [{ name: a, address: 10.0.0.11 }]
            health_check: { passive: false, fast_timeout: 25ms }
          - name: other
            address: 203.0.113.11
            port: 443
            backends: [{ name: a, address: 10.0.0.11 }]
            health_check: { refused_is_down: true }
        ",
    ));
    let hc = &cfg.vips[0].health_check;
    assert!(!hc.refused_is_down && !hc.passive);
    assert_eq!(
        (hc.fast_interval, hc.fast_timeout),
        (Duration::from_millis(30), Duration::from_millis(25))
    );
    let hc = &cfg.vips[1].health_check;
    assert!(hc.refused_is_down && hc.passive);
    assert_eq!(
        (hc.fast_interval, hc.fast_timeout),
        (Duration::from_millis(30), Duration::from_millis(40))
    );
}

#[test]
fn fast_probes_are_never_slower_than_the_regular_ones() {
    // Unset, they follow a shorter regular interval and timeout.
    let cfg = ok(&base().replace(
        "interface: eth0",
        "interface: eth0\nhealth_check_defaults: { interval: 8ms, timeout: 6ms }",
    ));
    let hc = &cfg.vips[0].health_check;
    assert_eq!(
        (hc.fast_interval, hc.fast_timeout),
        (Duration::from_millis(8), Duration::from_millis(6))
    );
}

#[test]
fn fast_probe_timing_out_of_bounds_is_an_error_at_the_key_written() {
    let text = yaml(
        "
        interface: eth0
        health_check_defaults: { fast_interval: 5ms }
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends: [{ name: a, address: 10.0.0.11 }]
            health_check: { interval: 100ms, timeout: 50ms, fast_timeout: 60ms }
          - name: other
            address: 203.0.113.11
            port: 443
            backends: [{ name: a, address: 10.0.0.11 }]
            health_check: { interval: 100ms, timeout: 50ms, fast_interval: 150ms }
        ",
    );
    let errs = errors(&text);
    let got: Vec<(&str, &str)> =
        errs.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                "health_check_defaults.fast_interval",
                "fast_interval 5ms is shorter than 10ms, how often the controller reads the data path"
            ),
            (
                "vips[0].health_check.fast_timeout",
                "fast_timeout 60ms must not be longer than timeout 50ms"
            ),
            (
                "vips[1].health_check.fast_interval",
                "fast_interval 150ms must not be longer than interval 100ms"
            ),
        ],
        "{errs}"
    );
}

#[test]
fn check_port_defaults_follow_the_kind() {
    let with_check = |check: &str| {
        let text =
            base().replace("port: 443\n", &format!("port: 8443\n    health_check: {check}\n"));
        ok(&text).vips[0].health_check.port
    };
    assert_eq!(with_check("{ kind: http }"), 80);
    assert_eq!(with_check("{ kind: https }"), 443);
    assert_eq!(with_check("{ kind: tcp }"), 8443, "tcp checks the VIP's port");
    assert_eq!(with_check("{ kind: tcp, port: 22 }"), 22);
}

#[test]
fn wildcard_vip_port_is_allowed() {
    let cfg = ok(&base().replace("port: 443", "port: 0"));
    assert_eq!(cfg.vips[0].port, 0);
}

#[test]
fn same_address_and_port_with_another_protocol_is_another_vip() {
    let text = yaml(
        "
        interface: eth0
        vips:
          - { name: dns-udp, address: 203.0.113.53, port: 53, protocol: udp, backends: [{ name: a, address: 10.0.0.1 }], health_check: { kind: tcp } }
          - { name: dns-tcp, address: 203.0.113.53, port: 53, protocol: tcp, backends: [{ name: a, address: 10.0.0.1 }], health_check: { kind: tcp } }
        ",
    );
    let cfg = ok(&text);
    assert_eq!(cfg.vips[0].protocol.number(), 17);
    assert_eq!(cfg.vips[1].protocol.number(), 6);
}

#[test]
fn ipip_accepts_mixed_families_with_both_tunnel_sources() {
    let cfg = ok(&yaml(
        "
        interface: eth0
        forwarding: ipip
        tunnel_source: { ipv4: 10.0.0.2, ipv6: \"fd00::2\" }
        gateway: 10.0.0.1
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends:
              - { name: a, address: 10.0.0.11 }
              - { name: b, address: \"fd00::11\" }
        ",
    ));
    assert_eq!(cfg.forwarding, Forwarding::Ipip);
    assert_eq!(cfg.gateway, Some(v4(10, 0, 0, 1)));
    assert_eq!(
        cfg.vips[0].backends[1].address,
        IpAddr::V6("fd00::11".parse::<Ipv6Addr>().unwrap())
    );
}

#[test]
fn conn_table_size_is_read_and_bounded_with_its_line() {
    let sized = |n: &str| {
        base().replace("interface: eth0\n", &format!("interface: eth0\nconn_table_size: {n}\n"))
    };
    assert_eq!(ok(&sized("1024")).conn_table_size, 1024);
    assert_eq!(ok(&sized("67108864")).conn_table_size, 1 << 26);
    for n in ["1023", "0", "67108865", "4294967296"] {
        assert_only_error(
            &sized(n),
            "conn_table_size",
            2,
            18,
            &format!("conn_table_size {n} is out of range 1024..=67108864"),
        );
    }
    let errs = errors(&sized("-5"));
    assert!(errs.to_string().contains("conn_table_size"), "{errs}");
}

#[test]
fn conn_table_size_v6_defaults_to_a_quarter_and_is_bounded_with_its_line() {
    let sized = |v4: &str, v6: &str| {
        base().replace(
            "interface: eth0\n",
            &format!("interface: eth0\nconn_table_size: {v4}\nconn_table_size_v6: {v6}\n"),
        )
    };
    let quarter = base().replace("interface: eth0\n", "interface: eth0\nconn_table_size: 4096\n");
    assert_eq!(ok(&quarter).conn_table_size_v6, 1024);
    let small = base().replace("interface: eth0\n", "interface: eth0\nconn_table_size: 2048\n");
    assert_eq!(ok(&small).conn_table_size_v6, 1024, "at least 1024");
    let cfg = ok(&sized("4096", "1048576"));
    assert_eq!((cfg.conn_table_size, cfg.conn_table_size_v6), (4096, 1 << 20));
    assert_eq!(cfg.conn_tables(), crate::conn_table::Configured { v4: 4096, v6: 1 << 20 });
    for n in ["1023", "67108865"] {
        assert_only_error(
            &sized("4096", n),
            "conn_table_size_v6",
            3,
            21,
            &format!("conn_table_size_v6 {n} is out of range 1024..=67108864"),
        );
    }
}

#[test]
fn accept_macs_are_unicast_macs_at_most_four() {
    assert_eq!(ok(&base()).accept_macs, Vec::<[u8; 6]>::new(), "none by default");
    let cfg = ok(&base().replace(
        "interface: eth0",
        "interface: eth0\naccept_macs: [\"00:00:5e:00:01:33\", \"00:00:5E:00:02:33\"]",
    ));
    assert_eq!(cfg.accept_macs, [[0, 0, 0x5e, 0, 1, 0x33], [0, 0, 0x5e, 0, 2, 0x33]]);
    let bad = base().replace(
        "interface: eth0",
        "interface: eth0\naccept_macs: [\"00:00:5e:00:01\", \"ff:ff:ff:ff:ff:ff\", \"01:00:5e:00:00:12\", \"00:00:00:00:00:00\"]",
    );
    let errs = errors(&bad);
    assert_eq!(errs.len(), 4, "{errs}");
    assert!(error_at(&errs, "accept_macs[0]").message.contains("not a MAC address"), "{errs}");
    assert!(error_at(&errs, "accept_macs[1]").message.contains("broadcast"), "{errs}");
    assert!(error_at(&errs, "accept_macs[2]").message.contains("multicast"), "{errs}");
    assert!(error_at(&errs, "accept_macs[3]").message.contains("not a usable MAC"), "{errs}");
    assert_eq!(error_at(&errs, "accept_macs[1]").line, 2, "{errs}");
    let five = base().replace(
        "interface: eth0",
        "interface: eth0\naccept_macs: [\"02:00:00:00:00:01\", \"02:00:00:00:00:02\", \"02:00:00:00:00:03\", \"02:00:00:00:00:04\", \"02:00:00:00:00:05\"]",
    );
    assert_only_error(&five, "accept_macs", 2, 14, "5 MACs listed, at most 4");
}

#[test]
fn to_yaml_round_trips_to_an_equal_config() {
    let rich = yaml(
        "
        interface: ens1f0
        xdp_mode: skb
        forwarding: ipip
        tunnel_source: { ipv4: 10.0.0.2, ipv6: \"fd00::2\" }
        metrics_listen: \"[::1]:9100\"
        admin_socket: /tmp/xdplb.sock
        pin_path: /sys/fs/bpf/other
        conn_table_size: 65536
        mtu: 9000
        gateway: \"fd00::1\"
        accept_macs: [\"00:00:5e:00:01:33\", \"00:00:5E:00:02:33\"]
        hash_seed: \"00112233445566778899aabbccddeeff\"
        ha: { track_file: /run/xdplb/vrrp.track, route_table: 100, withdraw_wait: 1.5s }
        health_check_defaults: { kind: https, host: \"waf.example\", tls_verify: false, interval: 1.5s, timeout: 1s, initial_state: up }
        vips:
          - name: waf.v6
            address: \"2001:db8::10\"
            port: 0
            protocol: udp
            backends:
              - { name: \"1\", address: \"fd00::11\", weight: 10000 }
              - { name: waf-2, address: 10.0.0.12, weight: 1, backup: true }
            min_primaries: 1
            health_check: { kind: tcp, port: 8443, rise: 1, fall: 1 }
          - name: web
            address: 203.0.113.10
            port: 80
            backends: [{ name: a, address: 10.0.0.11 }]
            health_check: { path: \"/health check?x=1\", expect_status: [200, 301] }
        ",
    );
    // A path with a space is invalid; keep the quoting exercise without it.
    let rich = rich.replace("/health check?x=1", "/health?x=1&y=\\\"q\\\"");
    for text in [EXAMPLE.to_owned(), base(), rich] {
        let cfg = ok(&text);
        let printed = cfg.to_yaml();
        let again =
            parse(&printed, "printed.yaml").unwrap_or_else(|e| panic!("{e}\nin:\n{printed}"));
        assert_eq!(again, cfg, "printed:\n{printed}");
        assert_eq!(again.to_yaml(), printed, "printing is stable");
    }
}

#[test]
fn to_yaml_writes_defaults_and_durations_as_text() {
    let printed = ok(&base()).to_yaml();
    for line in [
        "xdp_mode: driver",
        "forwarding: dsr",
        "metrics_listen: \"127.0.0.1:9650\"",
        "pin_path: /sys/fs/bpf/xdplb",
        "        weight: 100",
        "        backup: false",
        "    min_primaries: 1",
        "      interval: 200ms",
        "      timeout: 150ms",
        "      initial_state: down",
        "      refused_is_down: true",
        "      passive: true",
        "      fast_interval: 10ms",
        "      fast_timeout: 40ms",
    ] {
        assert!(printed.lines().any(|l| l == line), "no line `{line}` in:\n{printed}");
    }
}

// --- structural errors (serde_yaml) ----------------------------------------------

#[test]
fn syntax_error_is_reported_with_line_and_column() {
    let text = base().replace("port: 443", "port: 443: x");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert_eq!((e.path.as_str(), e.line, e.column), ("vips[0].port", 5, 14), "{e}");
    assert!(e.message.contains("mapping values are not allowed"), "{e}");
    // An unclosed flow mapping is noticed where the file ends.
    let text = base().replace("10.0.0.12 }", "10.0.0.12");
    let e = &errors(&text).errors[0];
    assert_eq!(e.path, "vips[0].backends[1].address", "{e}");
    assert!(e.message.contains("while parsing a flow mapping at line 8 column 9"), "{e}");
}

#[test]
fn wrong_type_names_the_field_path() {
    let text = base().replace("port: 443", "port: https");
    assert_only_error(&text, "vips[0].port", 5, 11, "invalid type: string \"https\", expected u16");
    let text = base()
        .replace("{ name: b, address: 10.0.0.12 }", "{ name: b, address: 10.0.0.12, weight: -5 }");
    assert_only_error(&text, "vips[0].backends[1].weight", 8, 48, "expected u32");
}

#[test]
fn unknown_enum_value_lists_the_choices() {
    let text = base().replace("interface: eth0", "interface: eth0\nforwarding: nat");
    assert_only_error(
        &text,
        "forwarding",
        2,
        13,
        "unknown variant `nat`, expected `dsr` or `ipip`",
    );
}

#[test]
fn unknown_key_names_the_key_and_its_position() {
    let text = base()
        .replace("{ name: a, address: 10.0.0.11 }", "{ name: a, address: 10.0.0.11, wieght: 5 }");
    assert_only_error(&text, "vips[0].backends[0].wieght", 7, 40, "unknown field `wieght`");
    let text = base().replace("interface: eth0", "interface: eth0\nvip: []");
    assert_only_error(&text, "vip", 2, 1, "unknown field `vip`");
}

#[test]
fn duplicate_key_is_reported_at_the_second_occurrence() {
    let text = base().replace("    port: 443\n", "    port: 443\n    port: 80\n");
    assert_only_error(&text, "vips[0].port", 6, 5, "duplicate key (first at line 5)");
}

// --- semantic errors -------------------------------------------------------------

#[test]
fn duplicate_vip_name_is_an_error() {
    let text = yaml(
        "
        interface: eth0
        vips:
          - { name: web, address: 203.0.113.10, port: 443, backends: [{ name: a, address: 10.0.0.1 }] }
          - { name: web, address: 203.0.113.11, port: 443, backends: [{ name: a, address: 10.0.0.1 }] }
        ",
    );
    assert_only_error(&text, "vips[1].name", 4, 13, "duplicate VIP name `web` (first at line 3)");
}

#[test]
fn duplicate_vip_address_port_protocol_is_an_error() {
    let text = yaml(
        "
        interface: eth0
        vips:
          - { name: one, address: 203.0.113.10, port: 443, backends: [{ name: a, address: 10.0.0.1 }] }
          - { name: two, address: 203.0.113.10, port: 443, protocol: tcp, backends: [{ name: a, address: 10.0.0.1 }] }
        ",
    );
    assert_only_error(&text, "vips[1].address", 4, 27, "duplicate VIP 203.0.113.10 port 443 tcp");
}

#[test]
fn duplicate_backend_name_within_a_vip_is_an_error() {
    let text = base().replace("{ name: b,", "{ name: a,");
    assert_only_error(
        &text,
        "vips[0].backends[1].name",
        8,
        17,
        "duplicate backend name `a` (first at line 7)",
    );
}

#[test]
fn duplicate_backend_address_within_a_vip_is_an_error() {
    let text = base().replace("10.0.0.12", "10.0.0.11");
    assert_only_error(
        &text,
        "vips[0].backends[1].address",
        8,
        29,
        "duplicate backend address 10.0.0.11",
    );
}

#[test]
fn dsr_rejects_a_backend_of_the_other_family() {
    let text = base().replace("address: 10.0.0.12", "address: \"fd00::12\"");
    assert_only_error(
        &text,
        "vips[0].backends[1].address",
        8,
        29,
        "must be of the VIP's family (IPv4)",
    );
}

#[test]
fn ipip_v4_backend_without_tunnel_source_points_at_forwarding() {
    let text = base().replace("interface: eth0", "interface: eth0\nforwarding: ipip");
    assert_only_error(&text, "tunnel_source.ipv4", 2, 13, "needs tunnel_source.ipv4");
}

#[test]
fn ipip_v6_backend_without_ipv6_source_points_at_tunnel_source() {
    let text = base()
        .replace(
            "interface: eth0",
            "interface: eth0\nforwarding: ipip\ntunnel_source:\n  ipv4: 10.0.0.2",
        )
        .replace("address: 10.0.0.12", "address: \"fd00::12\"");
    assert_only_error(
        &text,
        "tunnel_source.ipv6",
        3,
        1,
        "IPv6 backends (first: vips[0].backends[1])",
    );
}

#[test]
fn weight_out_of_range_is_an_error() {
    let text = base()
        .replace("{ name: a, address: 10.0.0.11 }", "{ name: a, address: 10.0.0.11, weight: 0 }");
    assert_only_error(
        &text,
        "vips[0].backends[0].weight",
        7,
        48,
        "weight 0 is out of range 1..=10000",
    );
    let text = base().replace(
        "{ name: b, address: 10.0.0.12 }",
        "{ name: b, address: 10.0.0.12, weight: 10001 }",
    );
    assert_only_error(&text, "vips[0].backends[1].weight", 8, 48, "weight 10001 is out of range");
    let text = base().replace(
        "{ name: b, address: 10.0.0.12 }",
        "{ name: b, address: 10.0.0.12, weight: 10000 }",
    );
    assert_eq!(ok(&text).vips[0].backends[1].weight, 10_000);
}

#[test]
fn timeout_longer_than_interval_is_an_error() {
    let text = base()
        .replace("port: 443\n", "port: 443\n    health_check: { interval: 1s, timeout: 2s }\n");
    assert_only_error(
        &text,
        "vips[0].health_check.timeout",
        6,
        44,
        "timeout 2s must not be longer than interval 1s",
    );
}

#[test]
fn timeout_error_from_shared_defaults_is_reported_once() {
    let text = yaml(
        "
        interface: eth0
        health_check_defaults:
          timeout: 300ms
        vips:
          - { name: one, address: 203.0.113.10, port: 443, backends: [{ name: a, address: 10.0.0.1 }] }
          - { name: two, address: 203.0.113.11, port: 443, backends: [{ name: a, address: 10.0.0.1 }] }
        ",
    );
    assert_only_error(
        &text,
        "health_check_defaults.timeout",
        3,
        12,
        "timeout 300ms must not be longer than interval 200ms",
    );
}

#[test]
fn rise_or_fall_of_zero_is_an_error() {
    let text = base()
        .replace("interface: eth0", "interface: eth0\nhealth_check_defaults: { rise: 0, fall: 0 }");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_eq!(error_at(&errs, "health_check_defaults.rise").column, 32);
    let e = error_at(&errs, "health_check_defaults.fall");
    assert_eq!((e.line, e.column), (2, 41));
    assert!(e.message.contains("fall must be at least 1"), "{e}");
}

#[test]
fn health_check_port_zero_is_an_error() {
    let text =
        base().replace("port: 443\n", "port: 443\n    health_check: { kind: tcp, port: 0 }\n");
    assert_only_error(&text, "vips[0].health_check.port", 6, 38, "health-check port must not be 0");
}

#[test]
fn tcp_check_on_a_wildcard_vip_needs_a_port() {
    let text = base().replace("port: 443\n", "port: 0\n    health_check: { kind: tcp }\n");
    assert_only_error(&text, "vips[0].health_check.port", 6, 19, "needs a port");
}

#[test]
fn empty_backends_list_is_an_error() {
    let text = yaml(
        "
        interface: eth0
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends: []
        ",
    );
    assert_only_error(&text, "vips[0].backends", 6, 15, "at least one backend");
    let text = text.replace("backends: []\n", "");
    assert_only_error(&text, "vips[0].backends", 3, 5, "at least one backend");
}

#[test]
fn empty_or_missing_vips_list_is_an_error() {
    assert_only_error("interface: eth0\nvips: []\n", "vips", 2, 7, "at least one VIP");
    assert_only_error("interface: eth0\n", "vips", 1, 1, "at least one VIP");
}

#[test]
fn invalid_expect_status_is_an_error() {
    let text = base()
        .replace("port: 443\n", "port: 443\n    health_check: { expect_status: [200, 99, 600] }\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    let e = error_at(&errs, "vips[0].health_check.expect_status[1]");
    assert_eq!((e.line, e.column), (6, 42));
    assert!(e.message.contains("status 99 is not an HTTP status (100..=599)"), "{e}");
    assert_eq!(error_at(&errs, "vips[0].health_check.expect_status[2]").column, 46);
    let text =
        base().replace("port: 443\n", "port: 443\n    health_check: { expect_status: [] }\n");
    assert_only_error(&text, "vips[0].health_check.expect_status", 6, 36, "at least one status");
}

#[test]
fn http_path_must_start_with_a_slash() {
    let text = base().replace(
        "port: 443\n",
        "port: 443\n    health_check:\n      kind: http\n      path: healthz\n",
    );
    assert_only_error(
        &text,
        "vips[0].health_check.path",
        8,
        13,
        "http path `healthz` must start with `/`",
    );
}

#[test]
fn bad_durations_are_errors() {
    let text = base().replace(
        "interface: eth0",
        "interface: eth0\nhealth_check_defaults:\n  interval: 200\n  timeout: 0ms\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    let e = error_at(&errs, "health_check_defaults.interval");
    assert_eq!((e.line, e.column), (3, 13));
    assert!(e.message.contains("has no unit"), "{e}");
    let e = error_at(&errs, "health_check_defaults.timeout");
    assert_eq!((e.line, e.column), (4, 12));
    assert!(e.message.contains("must be greater than 0"), "{e}");
    let text = base().replace("port: 443\n", "port: 443\n    health_check: { interval: soon }\n");
    assert_only_error(&text, "vips[0].health_check.interval", 6, 31, "invalid duration `soon`");
}

#[test]
fn invalid_addresses_are_errors() {
    let text =
        base().replace("203.0.113.10", "203.0.113.300").replace("10.0.0.12", "0.0.0.0").replace(
            "interface: eth0",
            "interface: eth0\nmetrics_listen: localhost\ntunnel_source: { ipv4: \"fd00::1\" }",
        );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs}");
    assert_eq!(error_at(&errs, "metrics_listen").line, 2);
    assert!(error_at(&errs, "tunnel_source.ipv4").message.contains("not an IPv4 address"));
    let e = error_at(&errs, "vips[0].address");
    assert_eq!((e.line, e.column), (6, 14));
    assert!(e.message.contains("`203.0.113.300` is not an IPv4 or IPv6 address"), "{e}");
    assert!(
        error_at(&errs, "vips[0].backends[1].address").message.contains("not a unicast address")
    );
}

#[test]
fn missing_interface_and_bad_names_are_errors() {
    let text = base().replace("interface: eth0\n", "").replace("name: web", "name: \"my web\"");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert!(error_at(&errs, "interface").message.contains("interface is required"));
    assert_eq!(error_at(&errs, "vips[0].name").line, 2);
}

#[test]
fn unknown_interface_error_points_at_the_interface_key() {
    let text = base().replace("interface: eth0", "# comment\ninterface:   eth9");
    let cfg = ok(&text);
    assert_eq!(check_interfaces(&cfg, |name| name == "eth9"), Ok(()));
    let errs = check_interfaces(&cfg, |_| false).unwrap_err();
    assert_eq!(errs.len(), 1);
    let e = &errs.errors[0];
    assert_eq!((e.path.as_str(), e.line, e.column), ("interface", 2, 14));
    assert_eq!(e.to_string(), "test.yaml:2:14: interface: no interface named `eth9` on this host");
}

#[test]
fn interface_exists_rejects_names_that_are_not_plain() {
    for name in ["", ".", "..", "../../../etc", "lo/../lo"] {
        assert!(!interface_exists(name), "{name}");
    }
    assert!(!interface_exists("xdplb-no-such0"));
}

#[test]
fn multiple_errors_are_all_reported_in_file_order() {
    let text = yaml(
        "
        interface: eth0
        health_check_defaults: { rise: 0 }
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
            backends:
              - { name: a, address: 10.0.0.11, weight: 0 }
              - { name: a, address: 10.0.0.11 }
          - name: web
            address: 203.0.113.11
            port: 443
            backends: []
        ",
    );
    let errs = errors(&text);
    let got: Vec<(&str, usize)> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        got,
        vec![
            ("health_check_defaults.rise", 2),
            ("vips[0].backends[0].weight", 8),
            ("vips[0].backends[1].name", 9),
            ("vips[0].backends[1].address", 9),
            ("vips[1].name", 10),
            ("vips[1].backends", 13),
        ]
    );
}

#[test]
fn errors_display_as_file_line_column_path_message() {
    let text = base()
        .replace("{ name: b, address: 10.0.0.12 }", "{ name: b, address: 10.0.0.12, weight: 0 }");
    let errs = parse(&text, "lb.yaml").unwrap_err();
    assert_eq!(
        errs.to_string(),
        "lb.yaml:8:48: vips[0].backends[1].weight: weight 0 is out of range 1..=10000"
    );
    let two = parse("interface: eth0\nvips: []\nmtu: 1\n", "lb.yaml").unwrap_err();
    assert_eq!(two.to_string().lines().count(), 2);
    // std::error::Error, so `?` into anyhow works.
    let any: anyhow::Error = two.into();
    assert!(any.to_string().starts_with("lb.yaml:2:7: vips: "));
}

#[test]
fn load_reports_an_unreadable_file_as_one_error() {
    let errs = load(Path::new("/nonexistent/xdplb.yaml")).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs.to_string().starts_with("/nonexistent/xdplb.yaml: cannot read: "), "{errs}");
}

#[test]
fn garbage_inputs_never_panic() {
    let deep_flow = "[".repeat(10_000);
    let deep_block: String = (0..300).map(|i| " ".repeat(i) + "a:\n").collect();
    let deep_vips = format!("interface: eth0\nvips: {}{}", "[".repeat(200), "]".repeat(200));
    let junk: String = (0u8..=255).map(char::from).collect();
    let inputs = [
        "",
        "[]",
        "{}",
        "~",
        "---\n---\n",
        "interface: eth0\n---\ninterface: eth1\n",
        "\u{0}\u{1}\u{7f}\u{fffd}",
        ": : :",
        "a: &x [*x]",
        "vips: *nope",
        "? [a]\n: b",
        "interface: eth0\nvips:\n  - 42\n  - [1, 2]\n  - name: {a: b}\n",
        "\t\tinterface: eth0",
        "interface: !!binary aGVsbG8=",
        "'unterminated",
        &deep_flow,
        &deep_block,
        &deep_vips,
        &junk,
    ];
    for text in inputs {
        let result = parse(text, "junk.yaml");
        let errs = result.expect_err("garbage must not parse");
        assert!(!errs.is_empty());
        for e in &errs {
            assert!(e.line >= 1 && e.column >= 1, "{e}");
        }
    }
}

#[test]
fn broken_example_configs_report_the_expected_path_and_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected ten broken configs in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect =
            text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| {
                panic!("{}: first line must be `# expect: <path> line <N>`", file.display())
            });
        let (path, line) = expect.split_once(" line ").unwrap();
        let line: usize = line.trim().parse().unwrap();
        let errs = load(&file).expect_err(&file.display().to_string());
        assert!(
            errs.iter().any(|e| e.path == path && e.line == line),
            "{}: expected an error at {path} line {line}, got:\n{errs}",
            file.display()
        );
    }
}

#[test]
fn random_yaml_like_inputs_never_panic() {
    const TOKENS: &[&str] = &[
        ":",
        ": ",
        "-",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\n",
        "  ",
        " ",
        "\t",
        "&a ",
        "*a",
        "? ",
        "'",
        "\"",
        "#",
        "!!str ",
        "|",
        ">",
        "---\n",
        "...\n",
        "%YAML 1.2\n",
        "interface",
        "vips",
        "name",
        "backends",
        "address",
        "port",
        "weight",
        "health_check",
        "timeout",
        "1s",
        "0",
        "-1",
        "10.0.0.1",
        "fd00::1",
        "\u{0}",
        "é",
        "\r",
    ];
    // xorshift: deterministic, so a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let len = next() % 40;
        let text: String =
            (0..len).map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize]).collect();
        if let Err(errs) = parse(&text, "fuzz.yaml") {
            assert!(!errs.is_empty(), "{text:?}");
            assert!(errs.iter().all(|e| e.line >= 1 && e.column >= 1), "{text:?}: {errs}");
        }
    }
}

// --- the reserve tier: backup and min_primaries -------------------------------

/// `base()` with r1 and r2 as reserves, and `vip_extra` lines in the VIP (after `port`).
fn tiered(vip_extra: &str) -> String {
    yaml(&format!(
        "
        interface: eth0
        vips:
          - name: web
            address: 203.0.113.10
            port: 443
{vip_extra}            backends:
              - {{ name: a, address: 10.0.0.11 }}
              - {{ name: b, address: 10.0.0.12 }}
              - {{ name: r1, address: 10.0.0.13, backup: true }}
              - {{ name: r2, address: 10.0.0.14, backup: true, weight: 50 }}
        "
    ))
}

#[test]
fn backup_and_min_primaries_default_to_false_and_1() {
    let cfg = ok(&base());
    assert_eq!(cfg.vips[0].min_primaries, 1);
    assert!(cfg.vips[0].backends.iter().all(|b| !b.backup));
    let cfg = ok(&tiered("            min_primaries: 2\n"));
    let backup: Vec<bool> = cfg.vips[0].backends.iter().map(|b| b.backup).collect();
    assert_eq!(backup, [false, false, true, true]);
    assert_eq!(cfg.vips[0].min_primaries, 2);
    assert!(warnings(&cfg).is_empty(), "{:?}", warnings(&cfg));
}

#[test]
fn a_backup_that_is_not_a_boolean_is_an_error_at_its_line() {
    let text = tiered("").replace("backup: true, weight", "backup: maybe, weight");
    let errs = errors(&text);
    let e = &errs.errors[0];
    assert_eq!(e.line, 10, "{e}");
    assert!(e.message.contains("boolean"), "{e}");
}

#[test]
fn a_negative_min_primaries_is_an_error_at_its_line() {
    let errs = errors(&tiered("            min_primaries: -1\n"));
    let e = &errs.errors[0];
    assert_eq!((e.path.as_str(), e.line), ("vips[0].min_primaries", 6), "{e}");
}

/// The warnings of `text`, which must parse.
fn warned(text: &str) -> Vec<ConfigError> {
    warnings(&ok(text))
}

#[test]
fn reserves_that_can_never_serve_are_a_warning_at_min_primaries() {
    let w = warned(&tiered("            min_primaries: 0\n"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].path.as_str(), w[0].line, w[0].column), ("vips[0].min_primaries", 6, 20));
    assert!(w[0].message.contains("(r1, r2) never take traffic"), "{}", w[0]);
    assert!(w[0].to_string().starts_with("test.yaml:6:20: vips[0].min_primaries: "), "{}", w[0]);
}

#[test]
fn a_vip_without_primaries_is_a_warning_at_its_backends() {
    let text = tiered("")
        .replace("10.0.0.11 }", "10.0.0.11, backup: true }")
        .replace("10.0.0.12 }", "10.0.0.12, backup: true }");
    let w = warned(&text);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].path.as_str(), w[0].line), ("vips[0].backends", 6));
    assert!(w[0].message.contains("there is no primary"), "{}", w[0]);
}

#[test]
fn min_primaries_above_the_primaries_is_a_warning_the_reserves_always_serve() {
    let w = warned(&tiered("            min_primaries: 3\n"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].line, 6);
    assert!(w[0].message.contains("more than the 2 primaries"), "{}", w[0]);
    assert!(w[0].message.contains("always in the ring"), "{}", w[0]);
}

#[test]
fn min_primaries_without_reserves_is_a_warning_that_it_does_nothing() {
    let text = base().replace("port: 443\n", "port: 443\n    min_primaries: 2\n");
    let w = warned(&text);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].path.as_str(), w[0].line), ("vips[0].min_primaries", 6));
    assert!(w[0].message.contains("has no effect"), "{}", w[0]);
}

#[test]
fn configs_without_the_reserve_keys_have_no_warnings() {
    assert!(warned(EXAMPLE).is_empty());
    assert!(warned(&base()).is_empty());
}

// --- the flow-hash seed -----------------------------------------------------------

/// A config parsed with `default` as the seed file used when it names none.
fn ok_with_default_seed(text: &str, default: &Path) -> Config {
    parse_with_seed_default(text, "test.yaml", default).unwrap_or_else(|e| panic!("{e}"))
}

fn temp_seed_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdplb-config-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const SEED_HEX: &str = "00112233445566778899aabbccddeeff";

#[test]
fn hash_seed_in_the_config_is_the_flow_hash_seed() {
    let cfg = ok(&format!("hash_seed: \"{SEED_HEX}\"\n{}", base()));
    assert_eq!(cfg.hash_seed.seed, seed::parse(SEED_HEX).unwrap());
    assert_eq!(cfg.hash_seed.source, seed::SeedSource::Config);
    assert!(warnings(&cfg).is_empty(), "{:?}", warnings(&cfg));
}

#[test]
fn hash_seed_file_is_read_and_printed_as_its_path() {
    let path = temp_seed_file("seed-file", &format!("{SEED_HEX}\n"));
    let cfg = ok(&format!("hash_seed_file: {}\n{}", path.display(), base()));
    assert_eq!(cfg.hash_seed.seed, seed::parse(SEED_HEX).unwrap());
    assert_eq!(cfg.hash_seed.source, seed::SeedSource::File(path.clone()));
    let printed = cfg.to_yaml();
    assert!(printed.contains(&format!("hash_seed_file: {}", path.display())), "{printed}");
    assert!(!printed.contains(SEED_HEX), "the file's secret is not printed:\n{printed}");
    assert_eq!(ok(&printed), cfg);
}

#[test]
fn config_without_a_seed_reads_the_default_file() {
    let path = temp_seed_file("default-seed", SEED_HEX);
    let cfg = ok_with_default_seed(&base(), &path);
    assert_eq!(cfg.hash_seed.seed, seed::parse(SEED_HEX).unwrap());
    assert_eq!(cfg.hash_seed.source, seed::SeedSource::DefaultFile(path));
    assert!(warnings(&cfg).is_empty(), "{:?}", warnings(&cfg));
}

#[test]
fn config_without_any_seed_keeps_working_with_the_public_seed_and_a_warning() {
    let cfg = ok_with_default_seed(&base(), Path::new("/nonexistent/hash-seed"));
    assert_eq!(cfg.hash_seed.seed, lb_common::hash::PUBLIC_SEED);
    let warned = warnings(&cfg);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].path, "hash_seed");
    for words in ["public seed", "one backend", "xdplb gen-seed", "every balancer"] {
        assert!(warned[0].message.contains(words), "`{words}` not in: {}", warned[0]);
    }
}

#[test]
fn broken_seed_settings_are_errors_at_their_key() {
    let bad_hex = format!("hash_seed: \"0011\"\n{}", base());
    assert_only_error(&bad_hex, "hash_seed", 1, 12, "32 hexadecimal digits");
    let both = format!("hash_seed: \"{SEED_HEX}\"\nhash_seed_file: /etc/x\n{}", base());
    assert_only_error(&both, "hash_seed_file", 2, 17, "not both");
    let missing = format!("hash_seed_file: /nonexistent/seed\n{}", base());
    assert_only_error(&missing, "hash_seed_file", 1, 17, "cannot read /nonexistent/seed");
    let relative = format!("hash_seed_file: seed\n{}", base());
    assert_only_error(&relative, "hash_seed_file", 1, 17, "absolute path");
    let garbage = temp_seed_file("garbage-seed", "not a seed");
    let errs = parse_with_seed_default(&base(), "test.yaml", &garbage).unwrap_err();
    assert!(errs.to_string().contains("default seed file"), "{errs}");
}

#[test]
fn ipip_mtu_too_small_for_ipv6_inside_the_tunnel_is_a_warning() {
    let text = yaml(
        "
        interface: eth0
        forwarding: ipip
        tunnel_source: { ipv6: \"fd00::2\" }
        mtu: 1300
        hash_seed: \"00112233445566778899aabbccddeeff\"
        vips:
          - name: web6
            address: \"2001:db8::10\"
            port: 443
            backends: [{ name: a, address: \"fd00::11\" }]
        ",
    );
    let warned = warnings(&ok(&text));
    assert_eq!(warned.len(), 1, "{warned:?}");
    let w = &warned[0];
    assert_eq!((w.path.as_str(), w.line), ("mtu", 4), "{w}");
    assert!(w.message.contains("1260") && w.message.contains("at least 1320"), "{w}");
    assert!(warnings(&ok(&text.replace("mtu: 1300", "mtu: 1320"))).is_empty());
}

#[test]
fn flap_damping_keys_layer_like_the_other_keys_and_zero_turns_it_off() {
    let cfg = ok(&base()
        .replace("vips:", "health_check_defaults: { flap_changes: 3, flap_window: 10s }\nvips:"));
    let d = cfg.vips[0].health_check.damping;
    assert_eq!((d.limit, d.window, d.hold), (3, Duration::from_secs(10), Duration::from_mins(1)));
    let off = ok(&base().replace("vips:", "health_check_defaults: { flap_changes: 0 }\nvips:"));
    assert_eq!(off.vips[0].health_check.damping.limit, 0);
    let bad = errors(&base().replace("vips:", "health_check_defaults: { flap_hold: 30 }\nvips:"));
    assert!(error_at(&bad, "health_check_defaults.flap_hold").message.contains("unit"), "{bad}");
}

#[test]
fn admin_group_is_a_group_name_or_number_and_written_back() {
    let cfg = ok(&base().replace("vips:", "admin_group: xdplb-ops\nvips:"));
    assert_eq!(cfg.admin_group.as_deref(), Some("xdplb-ops"));
    assert_eq!(ok(&cfg.to_yaml()), cfg);
    assert_eq!(ok(&base()).admin_group, None, "root and xdplb's own user only by default");
    let errs = errors(&base().replace("vips:", "admin_group: \"ops team\"\nvips:"));
    assert!(error_at(&errs, "admin_group").message.contains("not a group name"), "{errs}");
}

// --- ha: the redundancy engines ---------------------------------------------------

#[test]
fn ha_is_off_by_default_and_stops_at_once() {
    let cfg = ok(&base());
    assert_eq!(cfg.ha, Ha::default());
    assert!(!cfg.ha.engines());
    assert!(!cfg.to_yaml().contains("ha:"), "nothing to print");
}

#[test]
fn an_ha_engine_brings_a_default_withdraw_wait() {
    let cfg = ok(&format!("{}ha: {{ track_file: /run/xdplb/vrrp.track }}\n", base()));
    assert_eq!(cfg.ha.track_file, Some(PathBuf::from("/run/xdplb/vrrp.track")));
    assert_eq!(cfg.ha.route_table, None);
    assert_eq!(cfg.ha.withdraw_wait, Duration::from_secs(2));
    let cfg = ok(&format!("{}ha: {{ route_table: 100, withdraw_wait: 0s }}\n", base()));
    assert_eq!((cfg.ha.route_table, cfg.ha.withdraw_wait), (Some(100), Duration::ZERO));
    let printed = cfg.to_yaml();
    assert_eq!(ok(&printed), cfg, "{printed}");
    // A wait without an engine: a track script on /healthz sees it fail meanwhile.
    let cfg = ok(&format!("{}ha: {{ withdraw_wait: 500ms }}\n", base()));
    assert_eq!(cfg.ha.withdraw_wait, Duration::from_millis(500));
    assert_eq!(ok(&cfg.to_yaml()), cfg);
}

#[test]
fn ha_errors_name_the_key_and_line() {
    let text = format!("{}ha:\n  route_table: 254\n", base());
    let line = text.lines().count();
    assert_only_error(&text, "ha.route_table", line, 16, "the main table");
    let text = format!("{}ha:\n  track_file: vrrp.track\n", base());
    assert_only_error(&text, "ha.track_file", text.lines().count(), 15, "absolute path");
    let text = format!("{}ha:\n  withdraw_wait: 10m\n", base());
    assert_only_error(&text, "ha.withdraw_wait", text.lines().count(), 18, "longer than 5m");
    let text = format!("{}ha:\n  withdraw_wait: 0x\n", base());
    assert_only_error(&text, "ha.withdraw_wait", text.lines().count(), 18, "unknown unit");
    let errs = errors(&format!("{}ha:\n  table: 100\n", base()));
    assert!(errs.to_string().contains("unknown field `table`"), "{errs}");
}

// --- sync: ---------------------------------------------------------------------

/// A key file holding `text`, mode 0600, unique to the test.
fn sync_key_file(name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("xdplb-cfg-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn with_sync(section: &str) -> String {
    format!("{}{}", base(), yaml(section))
}

#[test]
fn sync_section_resolves_and_round_trips() {
    let key = sync_key_file("good", &"5a".repeat(32));
    let text = with_sync(&format!(
        "
        sync:
          listen: \"[::]:4790\"
          peers: [ \"10.0.0.2:4790\", \"[fd00::2]:4790\" ]
          key_file: {}
        ",
        key.display()
    ));
    let cfg = ok(&text);
    let sync = cfg.sync.as_ref().expect("sync on");
    assert_eq!(sync.listen.to_string(), "[::]:4790");
    assert_eq!(sync.peers.len(), 2);
    assert_eq!(sync.key.0, [0x5a; 32]);
    assert_eq!(sync.max_entries_per_peer, 262_144, "the default cap per peer");
    assert!(cfg.to_yaml().contains("\n  max_entries_per_peer: 262144\n"), "the default shown");
    assert_eq!(ok(&cfg.to_yaml()), cfg, "to_yaml gives the same config back");
    assert!(ok(&base()).sync.is_none(), "absent: sync off");
}

#[test]
fn sync_max_entries_per_peer_is_bounded_and_named_with_its_line() {
    let key = sync_key_file("cap", &"5a".repeat(32));
    let with_cap = |cap: &str| {
        with_sync(&format!(
            "
            sync:
              listen: 10.0.0.1:4790
              peers: [ \"10.0.0.2:4790\" ]
              key_file: {}
              max_entries_per_peer: {cap}
            ",
            key.display()
        ))
    };
    let cfg = ok(&with_cap("1048576"));
    assert_eq!(cfg.sync.as_ref().unwrap().max_entries_per_peer, 1 << 20);
    assert_eq!(ok(&cfg.to_yaml()), cfg, "to_yaml keeps the cap");
    for bad in ["0", "67108865"] {
        let errs = errors(&with_cap(bad));
        let e = error_at(&errs, "sync.max_entries_per_peer");
        assert!(e.message.contains(&format!("{bad} is out of range 1..=67108864")), "{e}");
        assert_eq!(e.line, 14, "{e}");
    }
    let errs = errors(&with_cap("lots"));
    assert_eq!(errs.iter().next().unwrap().line, 14, "{errs}");
    assert!(errs.to_string().contains("max_entries_per_peer"), "{errs}");
}

#[test]
fn sync_errors_name_the_field_and_its_line() {
    let key = sync_key_file("for-errors", &"5a".repeat(32));
    let text = with_sync(&format!(
        "
        sync:
          listen: 10.0.0.1
          peers: [ \"10.0.0.2:4790\", \"10.0.0.2:4790\", \"[fd00::2]:4790\", nonsense ]
          key_file: {}
        ",
        key.display()
    ));
    let errs = errors(&text);
    let listen = error_at(&errs, "sync.listen");
    assert!(listen.message.contains("ADDRESS:PORT"), "{listen}");
    assert_eq!(listen.line, 11);
    assert!(error_at(&errs, "sync.peers[1]").message.contains("listed twice"));
    assert!(error_at(&errs, "sync.peers[3]").message.contains("`nonsense`"));

    let text = with_sync(
        "
        sync:
          listen: 10.0.0.1:4790
          peers: [ \"[fd00::2]:4790\", \"10.0.0.1:4790\" ]
          key_file: relative/key
        ",
    );
    let errs = errors(&text);
    assert!(error_at(&errs, "sync.peers[0]").message.contains("family"), "{errs}");
    assert!(error_at(&errs, "sync.peers[1]").message.contains("own sync.listen"), "{errs}");
    assert!(error_at(&errs, "sync.key_file").message.contains("absolute"), "{errs}");
    assert_eq!(error_at(&errs, "sync.key_file").line, 13);

    let text = with_sync("\nsync: { listen: \"10.0.0.1:4790\" }\n");
    let errs = errors(&text);
    assert!(error_at(&errs, "sync.peers").message.contains("at least one peer"), "{errs}");
    assert!(error_at(&errs, "sync.key_file").message.contains("gen-sync-key"), "{errs}");

    let bad = sync_key_file("short", "abcd\n");
    let text = with_sync(&format!(
        "\nsync: {{ listen: \"10.0.0.1:4790\", peers: [\"10.0.0.2:4790\"], key_file: {} }}\n",
        bad.display()
    ));
    let e = error_at(&errors(&text), "sync.key_file").message.clone();
    assert!(e.contains("64 hexadecimal digits") && e.contains("short"), "{e}");
    let text =
        with_sync("\nsync: { listen: \"10.0.0.1:4790\", peers: [], key_file: /k, port: 1 }\n");
    assert!(errors(&text).to_string().contains("port"), "unknown keys are refused");
}

#[test]
fn a_sync_key_readable_by_others_is_a_warning() {
    use std::os::unix::fs::PermissionsExt as _;
    let key = sync_key_file("open", &"5a".repeat(32));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = with_sync(&format!(
        "\nsync: {{ listen: \"10.0.0.1:4790\", peers: [\"10.0.0.2:4790\"], key_file: {} }}\n",
        key.display()
    ));
    let w = warnings(&ok(&text));
    assert!(
        w.iter().any(|w| w.path == "sync.key_file" && w.message.contains("chmod 600")),
        "{w:?}"
    );
}
