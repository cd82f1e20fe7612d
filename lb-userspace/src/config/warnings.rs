//! Settings that parse but may not do what the operator meant: a VIP whose
//! reserves can never serve, or that has no primary; a flow hash on the public
//! seed; an ipip MTU that leaves IPv6 less than its minimum inside the tunnel. They are warnings, not
//! errors: each is a legitimate config (reserves parked on purpose, a pool being
//! converted), and refusing it would lock an operator out of a working balancer.
//! `xdplb check-config` prints them (`--strict` fails on them); `xdplb run` logs
//! them at start and on every reload.

use super::{Config, ConfigError, Vip};

/// Every warning about `cfg`, positioned like errors, in file order.
#[must_use]
pub fn warnings(cfg: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (i, vip) in cfg.vips.iter().enumerate() {
        reserve_tier(cfg, vip, &format!("vips[{i}]"), &mut out);
    }
    if let Some(w) = cfg.hash_seed.warning() {
        out.push(cfg.origin.error("hash_seed", w));
    }
    ipip_mtu(cfg, &mut out);
    if let Some(sync) = &cfg.sync
        && crate::sync::key::readable_by_others(&sync.key_file)
    {
        out.push(cfg.origin.error(
            "sync.key_file",
            format!(
                "{} is readable by other users: anyone who reads it can forge sync messages \
                 (chmod 600)",
                sync.key_file.display()
            ),
        ));
    }
    out.sort_by_key(|w| (w.line, w.column));
    out
}

fn reserve_tier(cfg: &Config, vip: &Vip, path: &str, out: &mut Vec<ConfigError>) {
    let reserves: Vec<&str> =
        vip.backends.iter().filter(|b| b.backup).map(|b| b.name.as_str()).collect();
    let primaries = vip.backends.len() - reserves.len();
    let min = vip.min_primaries;
    let at = |key: &str| format!("{path}.{key}");
    if reserves.is_empty() {
        if min != super::defaults::MIN_PRIMARIES {
            out.push(cfg.origin.error(
                &at("min_primaries"),
                format!(
                    "min_primaries {min} has no effect: no backend of VIP `{}` has `backup: true`",
                    vip.name
                ),
            ));
        }
        return;
    }
    let list = reserves.join(", ");
    if primaries == 0 {
        out.push(cfg.origin.error(
            &at("backends"),
            format!(
                "every backend of VIP `{}` is a reserve (`backup: true`) and there is no primary: \
                 the reserves ({list}) always take traffic, as primaries would",
                vip.name
            ),
        ));
    } else if min == 0 {
        out.push(cfg.origin.error(
            &at("min_primaries"),
            format!(
                "min_primaries 0: the reserves of VIP `{}` ({list}) never take traffic, not even \
                 with every primary down; set 1 (the default) to fail over to them",
                vip.name
            ),
        ));
    } else if min as usize > primaries {
        out.push(cfg.origin.error(
            &at("min_primaries"),
            format!(
                "min_primaries {min} is more than the {primaries} primaries of VIP `{}`: its \
                 reserves ({list}) are always in the ring, as primaries would be",
                vip.name
            ),
        ));
    }
}

/// In ipip mode, an IPv6 VIP's packets must fit the MTU with the outer header: an
/// IPv6 client cannot be told to send less than 1280 bytes (RFC 8200), so with less
/// room inside the tunnel its full-size packets are lost.
fn ipip_mtu(cfg: &Config, out: &mut Vec<ConfigError>) {
    let (super::Forwarding::Ipip, Some(mtu)) = (cfg.forwarding, cfg.mtu) else { return };
    for v in cfg.vips.iter().filter(|v| v.address.is_ipv6()) {
        let outer = if v.backends.iter().any(|b| b.address.is_ipv6()) { 40 } else { 20 };
        let room = mtu.saturating_sub(outer);
        if room < 1280 {
            out.push(cfg.origin.error(
                "mtu",
                format!(
                    "mtu {mtu} leaves {room} bytes inside the tunnel for IPv6 VIP `{}`, under IPv6's \
                     minimum of 1280 that clients cannot be told to go below: its full-size packets \
                     are lost. Use an MTU of at least {} towards the WAF nodes",
                    v.name,
                    1280 + outer
                ),
            ));
        }
    }
}
