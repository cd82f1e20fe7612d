//! What a WAF node needs for the balancer's forwarding mode, as a list of steps
//! decided from the config and a few facts about the node: no I/O here, so every
//! decision is a unit test.
//!
//! - dsr: frames arrive with the VIP as destination, so the VIP must be a local
//!   address (on `lo`, where it answers no ARP: `arp_ignore=1`, and is never an ARP
//!   source: `arp_announce=2`); replies leave from the VIP straight to the client,
//!   and strict reverse-path filtering must not drop what arrives (loose is enough).
//! - ipip: the same VIPs on `lo` with the same ARP hygiene, loose reverse-path filtering for the
//!   decapsulated packets, plus the MSS the node advertises clamped so that a
//!   client's full-size segment still fits the node's link after the balancer adds
//!   its outer header (20 bytes IPv4, 40 IPv6), and something that decapsulates.

use std::{collections::BTreeSet, fmt, fmt::Write as _, net::IpAddr, path::PathBuf};

use crate::{
    config::{Config, Forwarding},
    decap::DecapRules,
};

/// The nftables table that clamps the MSS (ipip).
pub const MSS_TABLE: &str = "xdplb_backend";

/// One thing the node needs. `commands` says how to get it; the host module checks
/// whether it is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The VIP as a local address on `lo` (/32 or /128).
    VipOnLo(IpAddr),
    /// A sysctl with exactly this value.
    Sysctl { key: String, value: u8, why: &'static str },
    /// Reverse-path filtering on `interface` not strict (`max(all, interface)` != 1):
    /// loose (2) or off (0) both pass packets whose source routes elsewhere.
    RpFilterNotStrict { interface: String },
    /// TCP SYN-ACKs from the VIPs advertise at most these MSS values (nftables).
    MssClamp { v4: u16, v6: u16, vips: Vec<IpAddr> },
    /// No MSS clamp of ours (`--no-mss-clamp`: clients rely on the balancer's ICMP
    /// answers and path-MTU discovery, or the MTU is large enough).
    NoMssClamp,
    /// `xdp-decap` on `interface` with exactly these rules, its link and maps
    /// pinned in `pin_dir` (so it stays attached after the command exits).
    Decapsulation { interface: String, rules: DecapRules, pin_dir: PathBuf },
}

/// A command line, with what it reads on stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
}

impl Cmd {
    fn new(argv: &[&str]) -> Self {
        Self { argv: argv.iter().map(|s| (*s).to_owned()).collect(), stdin: None }
    }

    /// As a shell line (a heredoc for stdin).
    #[must_use]
    pub fn shell(&self) -> String {
        let line = self.argv.join(" ");
        match &self.stdin {
            None => line,
            Some(text) => format!("{line} <<'EOF'\n{text}EOF"),
        }
    }
}

impl Step {
    /// What it is, for `--check` and `--apply` output.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::VipOnLo(a) => format!("VIP {a} on lo"),
            Self::Sysctl { key, value, why } => format!("{key} = {value} ({why})"),
            Self::RpFilterNotStrict { interface } => {
                format!("reverse-path filter on {interface} loose or off, not strict")
            }
            Self::MssClamp { v4, v6, .. } => {
                format!(
                    "TCP MSS from the VIPs at most {v4} (IPv4) / {v6} (IPv6), nftables table inet {MSS_TABLE}"
                )
            }
            Self::NoMssClamp => format!("no MSS clamp (nftables table inet {MSS_TABLE} absent)"),
            Self::Decapsulation { interface, rules, pin_dir } => {
                let list = |s: &BTreeSet<IpAddr>| {
                    s.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                };
                format!(
                    "xdp-decap on {interface} (pinned in {}): strips tunnel packets to {} from \
                     balancers {} to VIPs {}",
                    pin_dir.display(),
                    list(&rules.local),
                    list(&rules.balancers),
                    list(&rules.vips)
                )
            }
        }
    }

    /// The commands that make it so; running them again changes nothing. None:
    /// this command cannot do it (yet); `describe` and the README say what to do.
    #[must_use]
    pub fn commands(&self) -> Option<Vec<Cmd>> {
        Some(match self {
            Self::VipOnLo(IpAddr::V4(a)) => {
                vec![Cmd::new(&["ip", "addr", "replace", &format!("{a}/32"), "dev", "lo"])]
            }
            Self::VipOnLo(IpAddr::V6(a)) => {
                vec![Cmd::new(&[
                    "ip",
                    "-6",
                    "addr",
                    "replace",
                    &format!("{a}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])]
            }
            Self::Sysctl { key, value, .. } => {
                vec![Cmd::new(&["sysctl", "-qw", &format!("{}={value}", sysctl_arg(key))])]
            }
            Self::RpFilterNotStrict { interface } => vec![Cmd::new(&[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=2",
                &format!("{}=2", sysctl_arg(&conf_key(interface, "rp_filter"))),
            ])],
            Self::MssClamp { v4, v6, vips } => {
                let mut c = Cmd::new(&["nft", "-f", "-"]);
                c.stdin = Some(mss_ruleset(*v4, *v6, vips));
                vec![c]
            }
            Self::NoMssClamp => {
                vec![Cmd::new(&["nft", "delete", "table", "inet", MSS_TABLE])]
            }
            // Loaded and configured through lb_userspace::decap, not a command line.
            Self::Decapsulation { .. } => return None,
        })
    }
}

/// `net.ipv4.conf.SCOPE.NAME`: the per-interface IPv4 setting (SCOPE `all` or an interface).
#[must_use]
pub fn conf_key(scope: &str, name: &str) -> String {
    format!("net.ipv4.conf.{scope}.{name}")
}

/// Its file under /proc/sys. Interface names may hold dots (`eth0.100`), so the
/// interface is whatever lies between the fixed prefix and the last component.
#[must_use]
pub fn sysctl_path(key: &str) -> String {
    match key.strip_prefix("net.ipv4.conf.").and_then(|rest| rest.rsplit_once('.')) {
        Some((scope, name)) => format!("/proc/sys/net/ipv4/conf/{scope}/{name}"),
        None => format!("/proc/sys/{}", key.replace('.', "/")),
    }
}

/// The key as sysctl(8) reads it: dotted, or slashed when an interface name has a dot.
fn sysctl_arg(key: &str) -> String {
    match key.strip_prefix("net.ipv4.conf.").and_then(|rest| rest.rsplit_once('.')) {
        Some((scope, name)) if scope.contains('.') => format!("net/ipv4/conf/{scope}/{name}"),
        _ => key.to_owned(),
    }
}

/// The comment that identifies the MSS table's content, so a check can tell whether
/// the table on the node is the one this config asks for.
#[must_use]
pub fn mss_signature(v4: u16, v6: u16, vips: &[IpAddr]) -> String {
    let vips: Vec<String> = vips.iter().map(ToString::to_string).collect();
    format!("xdplb backend-setup: mss4 {v4} mss6 {v6} vips {}", vips.join(" "))
}

/// An nftables script that replaces the table atomically (creating it first, so the
/// delete never fails): applying it twice leaves one table.
#[must_use]
pub fn mss_ruleset(v4: u16, v6: u16, vips: &[IpAddr]) -> String {
    let list = |want_v4: bool| {
        vips.iter()
            .filter(|a| a.is_ipv4() == want_v4)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (vips4, vips6) = (list(true), list(false));
    let mut chain = String::new();
    if !vips4.is_empty() {
        let _ = writeln!(
            chain,
            "    ip saddr {{ {vips4} }} tcp flags & (syn | ack) == syn | ack tcp option maxseg size > {v4} tcp option maxseg size set {v4}"
        );
    }
    if !vips6.is_empty() {
        let _ = writeln!(
            chain,
            "    ip6 saddr {{ {vips6} }} tcp flags & (syn | ack) == syn | ack tcp option maxseg size > {v6} tcp option maxseg size set {v6}"
        );
    }
    format!(
        "table inet {MSS_TABLE} {{}}\ndelete table inet {MSS_TABLE}\ntable inet {MSS_TABLE} {{\n  comment \"{}\"\n  chain mss {{\n    type filter hook output priority mangle; policy accept;\n{chain}  }}\n}}\n",
        mss_signature(v4, v6, vips)
    )
}

/// What the operator chose beyond the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Prepare for these VIPs (by name) instead of those listing the node.
    pub only_vips: Vec<String>,
    /// ipip: clamp the MSS (the default) or leave it alone.
    pub mss_clamp: bool,
    /// ipip: tunnel sources of the pool's other balancers (their configs differ
    /// from this one only in `tunnel_source`).
    pub other_balancers: Vec<IpAddr>,
    /// ipip: where xdp-decap's link and maps are pinned.
    pub decap_pin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            only_vips: vec![],
            mss_clamp: true,
            other_balancers: vec![],
            decap_pin_dir: PathBuf::from(DECAP_PIN_DIR),
        }
    }
}

/// Where `xdp-decap` is pinned on a WAF node by default.
pub const DECAP_PIN_DIR: &str = "/sys/fs/bpf/xdplb-decap";

/// Facts about the node the plan depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The interface that faces the balancer (receives the forwarded frames).
    pub interface: String,
    /// Its MTU.
    pub mtu: u32,
    /// The node's own addresses (its backend address among them).
    pub addresses: Vec<IpAddr>,
}

/// A WAF node's preparation for one config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub forwarding: Forwarding,
    /// `vip name (backend name)` of every VIP this node serves.
    pub serves: Vec<String>,
    pub steps: Vec<Step>,
}

/// Why there is no plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// None of the node's addresses is a backend in the config.
    NotABackend { addresses: Vec<IpAddr> },
    /// `--vip` names no VIP of the config.
    UnknownVip(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotABackend { addresses } => {
                let a: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "none of this node's addresses ({}) is a backend address in the config; \
                     pass --backend ADDRESS (the node's address as the config lists it), or --vip NAME",
                    if a.is_empty() { "none".to_owned() } else { a.join(", ") }
                )
            }
            Self::UnknownVip(name) => write!(f, "no VIP named `{name}` in the config"),
        }
    }
}

/// Outer header the balancer adds to reach a backend of this family.
fn outer_header(backend: IpAddr) -> u32 {
    if backend.is_ipv4() { 20 } else { 40 }
}

/// The largest MSS a client may send to this node so that the encapsulated segment
/// fits `mtu`: MTU - outer - inner IP (20 / 40) - TCP (20).
#[must_use]
pub fn clamped_mss(mtu: u32, backend: IpAddr, inner_v6: bool) -> u16 {
    let inner = if inner_v6 { 40 } else { 20 };
    u16::try_from(mtu.saturating_sub(outer_header(backend) + inner + 20)).unwrap_or(u16::MAX)
}

/// The steps for `node`. The VIPs it serves are those listing one of its addresses
/// as a backend, or exactly `opts.only_vips` when given.
pub fn plan(config: &Config, node: &Node, opts: &Options) -> Result<Plan, PlanError> {
    let only_vips = &opts.only_vips;
    for name in only_vips {
        if !config.vips.iter().any(|v| &v.name == name) {
            return Err(PlanError::UnknownVip(name.clone()));
        }
    }
    let mut serves = vec![];
    let mut vips: BTreeSet<IpAddr> = BTreeSet::new();
    // ipip: the largest MSS per client family that fits every tunnel to this node
    // (a VIP's tunnel has the family of the node's address in its backend list).
    let (mut mss4, mut mss6) = (u16::MAX, u16::MAX);
    let mut local: BTreeSet<IpAddr> = BTreeSet::new();
    for v in &config.vips {
        let mine = v.backends.iter().find(|b| node.addresses.contains(&b.address.to_canonical()));
        let chosen =
            if only_vips.is_empty() { mine.is_some() } else { only_vips.contains(&v.name) };
        if chosen {
            serves.push(match mine {
                Some(b) => format!("{} ({})", v.name, b.name),
                None => v.name.clone(),
            });
            let vip = v.address.to_canonical();
            vips.insert(vip);
            let tunnel_end = mine.map_or_else(
                || node.addresses.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                |b| b.address.to_canonical(),
            );
            local.insert(tunnel_end);
            let mss = clamped_mss(node.mtu, tunnel_end, vip.is_ipv6());
            if vip.is_ipv4() {
                mss4 = mss4.min(mss);
            } else {
                mss6 = mss6.min(mss);
            }
        }
    }
    if serves.is_empty() {
        return Err(PlanError::NotABackend { addresses: node.addresses.clone() });
    }
    let iface = node.interface.clone();
    let mut steps: Vec<Step> = vips.iter().map(|&a| Step::VipOnLo(a)).collect();
    let any_v4 = vips.iter().any(IpAddr::is_ipv4);
    // ARP hygiene in both modes: a VIP on lo must never be claimed on the wire (in
    // ipip mode too, where a node may share a segment with the VIP's router).
    if any_v4 {
        for (scope, value, key, why) in [
            (
                "all",
                1,
                "arp_ignore",
                "answer ARP only for addresses on the asking interface, not the VIP on lo",
            ),
            (
                iface.as_str(),
                1,
                "arp_ignore",
                "answer ARP only for addresses on the asking interface, not the VIP on lo",
            ),
            ("all", 2, "arp_announce", "never use the VIP as the source of an ARP request"),
            (
                iface.as_str(),
                2,
                "arp_announce",
                "never use the VIP as the source of an ARP request",
            ),
        ] {
            steps.push(Step::Sysctl { key: conf_key(scope, key), value, why });
        }
    }
    if any_v4 {
        steps.push(Step::RpFilterNotStrict { interface: iface.clone() });
    }
    if config.forwarding == Forwarding::Ipip {
        steps.push(if opts.mss_clamp {
            // A family without VIPs gets no rule: say what one over the node's first
            // address would need.
            let first = local.iter().next().copied().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let or = |m: u16, v6| if m == u16::MAX { clamped_mss(node.mtu, first, v6) } else { m };
            Step::MssClamp {
                v4: or(mss4, false),
                v6: or(mss6, true),
                vips: vips.iter().copied().collect(),
            }
        } else {
            Step::NoMssClamp
        });
        let mut rules = DecapRules::for_config(config, local, opts.other_balancers.iter().copied());
        // Only the VIPs this node serves.
        rules.vips.clone_from(&vips);
        steps.push(Step::Decapsulation {
            interface: iface,
            rules,
            pin_dir: opts.decap_pin_dir.clone(),
        });
    }
    Ok(Plan { forwarding: config.forwarding, serves, steps })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::config;

    const CONFIG: &str = "
interface: eth0
forwarding: dsr
vips:
  - name: web4
    address: 203.0.113.10
    port: 443
    backends:
      - { name: waf-1, address: 10.0.0.11 }
      - { name: waf-2, address: 10.0.0.12 }
  - name: web6
    address: 2001:db8::10
    port: 443
    backends:
      - { name: waf-1, address: fd00::11 }
  - name: other
    address: 203.0.113.20
    port: 80
    backends:
      - { name: waf-9, address: 10.0.0.19 }
";

    fn cfg(forwarding: &str) -> Config {
        let text = CONFIG.replace("forwarding: dsr", &format!("forwarding: {forwarding}"));
        let text = if forwarding == "ipip" {
            format!("{text}tunnel_source: {{ ipv4: 10.0.0.2, ipv6: \"fd00::2\" }}\n")
        } else {
            text
        };
        config::parse(&text, "test.yaml").expect("valid")
    }

    fn node(addresses: &[IpAddr]) -> Node {
        Node { interface: "eth0".into(), mtu: 1500, addresses: addresses.to_vec() }
    }

    fn only(vips: &[&str]) -> Options {
        Options { only_vips: vips.iter().map(|v| (*v).to_owned()).collect(), ..Options::default() }
    }

    #[test]
    fn each_family_gets_the_mss_of_its_own_tunnel_and_the_clamp_can_be_left_out() {
        // A node in both families: IPv4 clients reach it over IPv4, IPv6 over IPv6.
        let p = plan(&cfg("ipip"), &waf1(), &Options::default()).expect("plan");
        let mss = p.steps.iter().find_map(|s| match s {
            Step::MssClamp { v4, v6, .. } => Some((*v4, *v6)),
            _ => None,
        });
        // 1500 - 20 - 20 - 20; 1500 - 40 - 40 - 20 (IP6IP6).
        assert_eq!(mss, Some((1440, 1400)));
        let opts = Options { mss_clamp: false, ..Options::default() };
        let p = plan(&cfg("ipip"), &waf1(), &opts).expect("plan");
        assert!(p.steps.contains(&Step::NoMssClamp));
        assert!(!p.steps.iter().any(|s| matches!(s, Step::MssClamp { .. })));
    }

    fn waf1() -> Node {
        node(&[
            Ipv4Addr::new(10, 0, 0, 11).into(),
            "fd00::11".parse::<Ipv6Addr>().expect("v6").into(),
        ])
    }

    #[test]
    fn dsr_node_gets_its_vips_on_lo_arp_hygiene_and_no_strict_rp_filter() {
        let p = plan(&cfg("dsr"), &waf1(), &Options::default()).expect("plan");
        assert_eq!(p.serves, ["web4 (waf-1)", "web6 (waf-1)"]);
        let vip4: IpAddr = Ipv4Addr::new(203, 0, 113, 10).into();
        let vip6: IpAddr = "2001:db8::10".parse::<Ipv6Addr>().expect("v6").into();
        assert_eq!(p.steps[..2], [Step::VipOnLo(vip4), Step::VipOnLo(vip6)]);
        let sysctls: Vec<String> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Sysctl { key, value, .. } => Some(format!("{key}={value}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            sysctls,
            [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.eth0.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.eth0.arp_announce=2"
            ]
        );
        assert!(p.steps.contains(&Step::RpFilterNotStrict { interface: "eth0".into() }));
        // Nothing of ipip, nothing for the VIP this node does not serve.
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::MssClamp { .. } | Step::Decapsulation { .. }))
        );
        assert!(!p.steps.contains(&Step::VipOnLo(Ipv4Addr::new(203, 0, 113, 20).into())));
    }

    #[test]
    fn ipip_node_gets_an_mss_that_fits_the_outer_header_and_a_decapsulator() {
        let p =
            plan(&cfg("ipip"), &node(&[Ipv4Addr::new(10, 0, 0, 12).into()]), &Options::default())
                .expect("plan");
        assert_eq!(p.serves, ["web4 (waf-2)"]);
        // 1500 - 20 outer - 20 IP - 20 TCP; IPv6 inner: 1500 - 20 - 40 - 20.
        assert!(p.steps.contains(&Step::MssClamp {
            v4: 1440,
            v6: 1420,
            vips: vec![Ipv4Addr::new(203, 0, 113, 10).into()]
        }));
        let tunnel_end: IpAddr = Ipv4Addr::new(10, 0, 0, 12).into();
        assert!(
            p.steps.contains(&Step::Decapsulation {
                interface: "eth0".into(),
                rules: DecapRules {
                    local: [tunnel_end].into(),
                    balancers: [
                        IpAddr::from(Ipv4Addr::new(10, 0, 0, 2)),
                        "fd00::2".parse::<Ipv6Addr>().expect("v6").into()
                    ]
                    .into(),
                    vips: [IpAddr::from(Ipv4Addr::new(203, 0, 113, 10))].into(),
                },
                pin_dir: DECAP_PIN_DIR.into(),
            })
        );
        assert!(p.steps.contains(&Step::Sysctl {
            key: conf_key("eth0", "arp_ignore"),
            value: 1,
            why: "answer ARP only for addresses on the asking interface, not the VIP on lo"
        }));
    }

    #[test]
    fn mss_follows_the_tunnel_family_and_the_mtu() {
        let v4: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert_eq!(clamped_mss(1500, v4, false), 1440);
        assert_eq!(clamped_mss(1500, v4, true), 1420);
        assert_eq!(clamped_mss(1500, v6, false), 1420);
        assert_eq!(clamped_mss(1500, v6, true), 1400);
        assert_eq!(clamped_mss(9000, v4, false), 8940);
    }

    #[test]
    fn a_node_that_is_no_backend_is_told_how_to_choose() {
        let e =
            plan(&cfg("dsr"), &node(&[Ipv4Addr::new(10, 0, 0, 99).into()]), &Options::default())
                .expect_err("no plan");
        let text = e.to_string();
        assert!(
            text.contains("10.0.0.99") && text.contains("--backend") && text.contains("--vip"),
            "{text}"
        );
        // --vip selects VIPs by name whatever the addresses say.
        let p = plan(&cfg("dsr"), &node(&[]), &only(&["other"])).expect("plan");
        assert_eq!(p.serves, ["other"]);
        assert_eq!(
            plan(&cfg("dsr"), &node(&[]), &only(&["nope"])).expect_err("unknown"),
            PlanError::UnknownVip("nope".into())
        );
    }

    #[test]
    fn commands_are_idempotent_forms() {
        let c = Step::VipOnLo(Ipv4Addr::new(203, 0, 113, 10).into()).commands().expect("cmds");
        assert_eq!(c[0].shell(), "ip addr replace 203.0.113.10/32 dev lo");
        let c = Step::VipOnLo("2001:db8::10".parse::<Ipv6Addr>().expect("v6").into())
            .commands()
            .expect("cmds");
        assert_eq!(c[0].shell(), "ip -6 addr replace 2001:db8::10/128 dev lo nodad");
        let vips = vec![
            Ipv4Addr::new(203, 0, 113, 10).into(),
            "2001:db8::10".parse::<Ipv6Addr>().expect("v6").into(),
        ];
        let script = mss_ruleset(1440, 1420, &vips);
        // Created, deleted, created: the delete never fails, the result is one table.
        assert!(
            script.starts_with("table inet xdplb_backend {}\ndelete table inet xdplb_backend\n"),
            "{script}"
        );
        assert!(script.contains("ip saddr { 203.0.113.10 } tcp flags & (syn | ack) == syn | ack tcp option maxseg size > 1440 tcp option maxseg size set 1440"), "{script}");
        assert!(
            script.contains("ip6 saddr { 2001:db8::10 }") && script.contains("set 1420"),
            "{script}"
        );
        assert!(
            script.contains(&format!("comment \"{}\"", mss_signature(1440, 1420, &vips))),
            "{script}"
        );
        let decap = Step::Decapsulation {
            interface: "eth0".into(),
            rules: DecapRules::default(),
            pin_dir: DECAP_PIN_DIR.into(),
        };
        assert_eq!(decap.commands(), None);
        assert_eq!(
            Step::NoMssClamp.commands().expect("cmds")[0].shell(),
            "nft delete table inet xdplb_backend"
        );
    }

    #[test]
    fn sysctl_keys_of_interfaces_with_dots_use_the_slash_form() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.100.arp_ignore"),
            "/proc/sys/net/ipv4/conf/eth0.100/arp_ignore"
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter"),
            "/proc/sys/net/ipv4/conf/all/rp_filter"
        );
        let step = Step::Sysctl { key: conf_key("eth0.100", "arp_ignore"), value: 1, why: "" };
        assert_eq!(
            step.commands().expect("cmds")[0].shell(),
            "sysctl -qw net/ipv4/conf/eth0.100/arp_ignore=1"
        );
        let rp = Step::RpFilterNotStrict { interface: "eth0".into() };
        assert_eq!(
            rp.commands().expect("cmds")[0].shell(),
            "sysctl -qw net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2"
        );
    }
}
