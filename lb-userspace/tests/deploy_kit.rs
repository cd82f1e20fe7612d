//! The deployment kit in `deploy/` as an operator receives it: the Prometheus rules
//! pass `promtool check rules` and their unit tests (`promtool test rules`), every
//! alert has a unit test, the Grafana dashboard is well-formed, and the example
//! config the package installs passes `xdplb check-config`. Every rule and test file
//! in the folders is picked up, so a feature that adds `rules/NAME.yml` and
//! `tests/NAME.test.yml` is checked without touching this file. That every query
//! returns series from a real xdplb is tests/tests/monitoring.rs (the lab).
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn rule_files() -> Vec<PathBuf> {
    files(&deploy().join("prometheus/rules"), ".yml")
}

fn test_files() -> Vec<PathBuf> {
    files(&deploy().join("prometheus/tests"), ".test.yml")
}

fn yaml(path: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(alert or record name, expr)` of every rule in every rule file.
fn rules(key: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for f in rule_files() {
        for group in yaml(&f)["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                if let Some(name) = rule[key].as_str() {
                    out.push((name.to_owned(), rule["expr"].as_str().unwrap().to_owned()));
                }
            }
        }
    }
    out
}

/// promtool, or None outside CI when it is not installed (`cargo xtask setup --lab`
/// installs Debian's prometheus, which has it).
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("promtool");
    }
    lb_userspace::skip::skip(
        "deploy_kit",
        "needs promtool (apt install prometheus, or cargo xtask setup --lab)",
    );
    None
}

fn promtool_run(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("promtool").args(args).args(files).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_rule_folder_has_the_alerts_an_operator_needs() {
    let alerts: BTreeSet<String> = rules("alert").into_iter().map(|(n, _)| n).collect();
    for want in [
        "XdplbDown",
        "XdplbUnhealthy",
        "XdplbBackendDown",
        "XdplbVipNoUsableBackend",
        "XdplbDropsRising",
        "XdplbReloadFailed",
        "XdplbProbeLatencyHigh",
        "XdplbSyncPeerLagging",
        "XdplbSyncPeerNeverHeard",
        "XdplbSyncMessagesRejected",
        "XdplbSyncEntriesRefused",
        "XdplbSyncSendDropped",
    ] {
        assert!(alerts.contains(want), "no alert {want} in deploy/prometheus/rules: {alerts:?}");
    }
    assert!(!rules("record").is_empty(), "no recording rules");
}

#[test]
fn every_rule_passes_promtool_check_rules() {
    let Some(_) = promtool() else { return };
    let (ok, out) = promtool_run(&["check", "rules"], &rule_files());
    assert!(ok, "promtool check rules:\n{out}");
    let found: usize = out
        .lines()
        .filter_map(|l| {
            l.trim().strip_prefix("SUCCESS: ")?.split_whitespace().next()?.parse::<usize>().ok()
        })
        .sum();
    assert_eq!(
        found,
        rules("alert").len() + rules("record").len(),
        "promtool saw other rules than we did:\n{out}"
    );
}

#[test]
fn every_alert_has_a_promtool_unit_test_and_the_tests_pass() {
    let mut tested = BTreeSet::new();
    for f in test_files() {
        for t in yaml(&f)["tests"].as_sequence().unwrap() {
            for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                // A test of an alert that must fire, not only one that must stay silent.
                if a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()) {
                    tested.insert(a["alertname"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    let untested: Vec<String> =
        rules("alert").into_iter().map(|(n, _)| n).filter(|n| !tested.contains(n)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing test in deploy/prometheus/tests: {untested:?}"
    );
    let Some(_) = promtool() else { return };
    let (ok, out) = promtool_run(&["test", "rules"], &test_files());
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn every_rule_file_has_a_test_file_that_loads_it() {
    let loaded: BTreeSet<String> = test_files()
        .iter()
        .flat_map(|f| {
            yaml(f)["rule_files"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|r| {
                    Path::new(r.as_str().unwrap())
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for f in rule_files() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            loaded.contains(&name),
            "no test file in deploy/prometheus/tests loads rules/{name}"
        );
    }
}

fn dashboard() -> serde_json::Value {
    let path = deploy().join("grafana/xdplb-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn the_dashboard_is_well_formed_and_covers_what_an_operator_watches() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id at {title}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title} is wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: use the dashboard's data source variable"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
        }
    }
    // Per-VIP traffic, per-node state and check latency, drops by reason, failover
    // events; peer sync: lag per peer, rejected datagrams, refused entries, send drops.
    for metric in [
        "xdplb_vip_packets_total",
        "xdplb_backend_packets_total",
        "xdplb_backend_state",
        "xdplb_target_probe_duration_seconds_bucket",
        "xdplb_healthy",
        "xdplb_xdp_drop_total",
        "xdplb_backend_transitions_total",
        "xdplb_sync_lag_seconds",
        "xdplb_sync_messages_rejected_total",
        "xdplb_sync_entries_refused_total",
        "xdplb_sync_send_dropped_total",
    ] {
        assert!(exprs.contains(metric), "no panel reads {metric}");
    }
}

#[test]
fn the_packaged_example_config_passes_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_xdplb"))
        .arg("check-config")
        .arg(deploy().join("xdplb.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
