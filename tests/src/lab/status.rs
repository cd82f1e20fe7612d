//! `lab status`: what of the lab exists, read from the machine itself (so it
//! also shows leftovers of a crashed lab), and whether each WAF node answers.

use std::{fmt::Write as _, time::Instant};

use super::{
    BRIDGE, CUT_TABLE, LAB_DIR, Lab, NS_CLIENT, NS_IF, NS_LB, Node, PIN_DIR, UDP_PORT, VIP4, VIP6,
    lab_namespaces, nginx, read_pid, root_links,
    sh::{cmd, in_ns, ns_sh, output, quietly, sh},
};

/// The lab's state as found on the machine, with or without a state file.
#[must_use]
pub fn status() -> String {
    match Lab::current() {
        Ok(lab) => status_report(lab.as_ref()),
        Err(e) => format!("cannot read the lab state: {e:#}\n{}", status_report(None)),
    }
}

/// `xdp_pass (driver, id 42)` for an interface, or `none`.
fn xdp_on(ns: Option<&str>, ifname: &str) -> String {
    let args = ["ip", "-d", "-o", "link", "show", "dev", ifname];
    let out = match ns {
        Some(ns) => output(&mut in_ns(ns, &args)),
        None => output(&mut cmd(&args)),
    };
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return format!("? ({})", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => return format!("? ({e:#})"),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let mode = if words.contains(&"xdpgeneric") {
        "generic"
    } else if words.contains(&"xdpoffload") {
        "offload"
    } else {
        "driver"
    };
    let Some(id) = words.iter().position(|w| w.starts_with("prog/xdp")).and_then(|i| {
        (words.get(i + 1) == Some(&"id")).then(|| words.get(i + 2).copied()).flatten()
    }) else {
        return "none".to_owned();
    };
    let name = sh(&["bpftool", "prog", "show", "id", id])
        .ok()
        .and_then(|s| {
            let w: Vec<&str> = s.split_whitespace().collect();
            w.iter().position(|x| *x == "name").and_then(|i| w.get(i + 1).map(|n| (*n).to_owned()))
        })
        .unwrap_or_else(|| "prog".to_owned());
    format!("{name} ({mode}, id {id})")
}

fn addresses(ns: &str, ifname: &str) -> String {
    ns_sh(ns, &["ip", "-o", "addr", "show", "dev", ifname, "scope", "global"]).map_or_else(
        |e| format!("? ({e:#})"),
        |s| {
            s.lines()
                .filter_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.iter()
                        .position(|x| *x == "inet" || *x == "inet6")
                        .and_then(|i| w.get(i + 1).copied())
                })
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

/// The first lines: the lab's shape and its engines; `Err` when nothing exists.
fn heading(lab: Option<&Lab>, nothing: bool) -> Result<String, String> {
    let mut s = String::new();
    match lab {
        Some(lab) => {
            let _ = writeln!(
                s,
                "lab: {} mode, {} WAF nodes; VIPs {VIP4} {VIP6}",
                lab.mode(),
                lab.config.wafs
            );
            if lab.config.ha.is_some() {
                let _ = writeln!(s, "{}", lab.engines_status());
            }
        }
        None if nothing => return Err("lab: down (nothing of it exists)\n".to_owned()),
        None => {
            let _ = writeln!(
                s,
                "lab: no state file in {LAB_DIR}, but leftovers exist (`lab down` removes them)"
            );
        }
    }
    Ok(s)
}

pub(super) fn status_report(lab: Option<&Lab>) -> String {
    let mut s = String::new();
    let mut namespaces = lab_namespaces().unwrap_or_default();
    namespaces.sort();
    let links = root_links().unwrap_or_default();
    match heading(lab, namespaces.is_empty() && links.is_empty()) {
        Ok(h) => s.push_str(&h),
        Err(down) => return down,
    }
    let bridge = if links.iter().any(|l| l == BRIDGE) { "present" } else { "MISSING" };
    let _ = writeln!(s, "bridge {BRIDGE}: {bridge}; root-side links: {}", links.join(" "));
    let _ = writeln!(
        s,
        "namespaces: {}",
        if namespaces.is_empty() { "none".to_owned() } else { namespaces.join(" ") }
    );
    let mut nodes: Vec<Node> = lab.map(Lab::nodes).unwrap_or_default();
    for ns in &namespaces {
        let node = match ns.as_str() {
            NS_CLIENT => Node::Client,
            NS_LB => Node::Lb,
            "router" => Node::Router,
            w if w.starts_with("lb") => match w.trim_start_matches("lb").parse() {
                Ok(k) => Node::Peer(k),
                Err(_) => continue,
            },
            w => match w.trim_start_matches("waf").parse() {
                Ok(k) => Node::Waf(k),
                Err(_) => continue,
            },
        };
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    nodes.sort();
    for node in nodes {
        let ns = node.ns();
        if !namespaces.contains(&ns) {
            let _ = writeln!(s, "{ns:<7} MISSING");
            continue;
        }
        let _ = writeln!(
            s,
            "{ns:<7} {NS_IF} {:<32} xdp: {:<28} | {}: xdp: {}",
            addresses(&ns, NS_IF),
            xdp_on(Some(&ns), NS_IF),
            node.veth(),
            xdp_on(None, &node.veth())
        );
        if let Node::Waf(_) = node {
            let dir = node.dir();
            let nginx =
                nginx::running(&dir).map_or_else(|| "DOWN".to_owned(), |p| format!("up (pid {p})"));
            let udp = read_pid(&dir.join("udp.pid"))
                .filter(|p| nginx::alive(*p))
                .map_or_else(|| "DOWN".to_owned(), |p| format!("up (pid {p})"));
            let cut = quietly(&mut in_ns(&ns, &["nft", "list", "table", "inet", CUT_TABLE]));
            let url = format!("http://{}/healthz", node.v4());
            let t = Instant::now();
            let probe = match ns_sh(NS_LB, &["curl", "-sS", "-m", "1", &url]) {
                Ok(body) => format!("{} in {} ms", body.trim(), t.elapsed().as_millis()),
                Err(e) => {
                    format!("FAILED: {}", e.to_string().rsplit(": ").next().unwrap_or_default())
                }
            };
            let _ = writeln!(
                s,
                "        lo: {}  nginx: {nginx}  udp:{UDP_PORT}: {udp}{}  /healthz from lb: {probe}",
                addresses(&ns, "lo"),
                if cut { "  LINK CUT" } else { "" }
            );
        }
    }
    let pins: Vec<String> = std::fs::read_dir(PIN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "pinned XDP links in {PIN_DIR}: {}",
        if pins.is_empty() { "none".to_owned() } else { pins.join(" ") }
    );
    s
}
