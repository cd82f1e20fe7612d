//! The capabilities `xdplb run` needs, checked before it touches the kernel: a
//! missing one stops it with a message naming the capability and why it is needed,
//! instead of a bare "Operation not permitted" from deep inside the BPF loader.
//!
//! The set was found by running the daemon as an unprivileged user with each
//! capability removed in turn (tests/tests/package.rs does it on every run):
//! CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, nothing else. CAP_SYS_ADMIN would do
//! for all three (the kernel accepts it in their place) but grants far more.

use std::fmt::Write as _;

use anyhow::{Result, bail};

/// A Linux capability and what xdplb uses it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// Its bit in the capability sets (`linux/capability.h`).
    pub bit: u32,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "loading an XDP program and attaching it to the interface",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "BPF on kernels older than 5.8 (no CAP_BPF)",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "the verifier accepts xdp_lb's packet-pointer arithmetic only from CAP_PERFMON \
          holders, and spares them the Spectre v1 masking it adds to other programs",
};
pub const CAP_BPF: Capability =
    Capability { name: "CAP_BPF", bit: 39, why: "creating the BPF maps and loading the programs" };

/// What `xdplb run` needs; the systemd unit grants exactly these.
pub const BALANCER: &[Capability] = &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];

/// The capabilities of `needed` that a process with the effective set `effective`
/// lacks, on a kernel whose highest capability is `last_cap`. CAP_SYS_ADMIN
/// satisfies any of them, as the kernel's own checks allow; a capability this
/// kernel does not know (CAP_BPF before 5.8) becomes CAP_SYS_ADMIN.
#[must_use]
pub fn missing(needed: &[Capability], effective: u64, last_cap: u32) -> Vec<Capability> {
    let has = |c: Capability| effective & (1 << c.bit) != 0;
    let mut out: Vec<Capability> = vec![];
    for &c in needed {
        if has(c) || has(CAP_SYS_ADMIN) {
            continue;
        }
        let want = if c.bit > last_cap { CAP_SYS_ADMIN } else { c };
        if !out.contains(&want) {
            out.push(want);
        }
    }
    out
}

/// The message for a process that lacks `lacking` of `needed` while doing `what`.
#[must_use]
pub fn message(what: &str, needed: &[Capability], lacking: &[Capability]) -> String {
    let names = |v: &[Capability]| v.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    let mut s = format!("{what} needs the capabilities {}; this process lacks ", names(needed));
    for (i, c) in lacking.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; and " };
        let _ = write!(s, "{sep}{} ({})", c.name, c.why);
    }
    let _ = write!(
        s,
        ". Run it as root, or grant them as the systemd unit does: \
         AmbientCapabilities={} (deploy/systemd/xdplb.service)",
        needed.iter().map(|c| c.name).collect::<Vec<_>>().join(" ")
    );
    s
}

/// This process's effective capability set and the kernel's highest capability.
pub fn current() -> Result<(u64, u32)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))?;
    // Without the file (very old kernels), assume CAP_BPF's absence is not the problem.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_BPF.bit);
    Ok((eff, last))
}

/// Fails, naming each missing capability, unless this process holds `needed`.
pub fn require(what: &str, needed: &[Capability]) -> Result<()> {
    let (effective, last_cap) = current()?;
    let lacking = missing(needed, effective, last_cap);
    if lacking.is_empty() {
        return Ok(());
    }
    bail!("{}", message(what, needed, &lacking))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c.bit)
    }

    #[test]
    fn the_three_capabilities_are_enough_and_each_is_needed() {
        assert!(missing(BALANCER, set(BALANCER), 40).is_empty());
        for c in BALANCER {
            let others: Vec<Capability> = BALANCER.iter().copied().filter(|o| o != c).collect();
            assert_eq!(missing(BALANCER, set(&others), 40), vec![*c], "without {}", c.name);
        }
        assert_eq!(missing(BALANCER, 0, 40), BALANCER.to_vec());
    }

    #[test]
    fn root_and_cap_sys_admin_satisfy_everything() {
        assert!(missing(BALANCER, u64::MAX, 40).is_empty());
        assert!(missing(BALANCER, set(&[CAP_SYS_ADMIN]), 40).is_empty());
    }

    #[test]
    fn a_kernel_without_cap_bpf_asks_for_cap_sys_admin_once() {
        // 5.4: cap_last_cap 37 (no CAP_PERFMON, no CAP_BPF).
        assert_eq!(missing(BALANCER, set(&[CAP_NET_ADMIN]), 37), vec![CAP_SYS_ADMIN]);
    }

    #[test]
    fn the_message_names_the_missing_capability_and_how_to_grant_it() {
        let m = message("xdplb run", BALANCER, &[CAP_PERFMON]);
        assert!(
            m.starts_with("xdplb run needs the capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON;"),
            "{m}"
        );
        assert!(m.contains("this process lacks CAP_PERFMON (the verifier"), "{m}");
        assert!(m.contains("AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"), "{m}");
        let two = message("xdplb run", BALANCER, &[CAP_BPF, CAP_NET_ADMIN]);
        assert!(
            two.contains(
                "lacks CAP_BPF (creating the BPF maps and loading the programs); and CAP_NET_ADMIN"
            ),
            "{two}"
        );
    }

    #[test]
    fn this_process_has_a_readable_capability_set() {
        let (_, last) = current().expect("reads /proc/self/status");
        assert!(last >= CAP_NET_ADMIN.bit);
    }
}
