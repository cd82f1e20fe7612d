//! The file as serde reads it: every key optional, so that missing keys become
//! defaults or positioned errors of our own instead of serde's first-error-only
//! "missing field". Values whose checks can fail independently (addresses,
//! durations) stay text here and are checked in `validate`, so one run reports all.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

use super::model::{AllDown, DownFlows, Forwarding, InitialState, Protocol, XdpMode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of xdplb settings")]
pub struct RawConfig {
    pub interface: Option<String>,
    pub xdp_mode: Option<XdpMode>,
    pub forwarding: Option<Forwarding>,
    pub tunnel_source: Option<RawTunnelSource>,
    pub metrics_listen: Option<String>,
    pub admin_socket: Option<String>,
    pub admin_group: Option<String>,
    pub pin_path: Option<String>,
    /// Wide, so that a size past `u32` gets our positioned range error.
    pub conn_table_size: Option<u64>,
    pub conn_table_size_v6: Option<u64>,
    pub mtu: Option<u32>,
    pub gateway: Option<String>,
    pub accept_macs: Option<Vec<String>>,
    pub hash_seed: Option<String>,
    pub hash_seed_file: Option<String>,
    pub health_check_defaults: Option<RawCheck>,
    pub ha: Option<RawHa>,
    pub sync: Option<RawSync>,
    pub vips: Option<Vec<RawVip>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with track_file, route_table, withdraw_wait")]
pub struct RawHa {
    pub track_file: Option<String>,
    pub route_table: Option<u32>,
    pub withdraw_wait: Option<DurationText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with listen, peers, key_file (and optionally max_entries_per_peer)"
)]
pub struct RawSync {
    pub listen: Option<String>,
    pub peers: Option<Vec<String>>,
    pub key_file: Option<String>,
    pub max_entries_per_peer: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with ipv4 and/or ipv6")]
pub struct RawTunnelSource {
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a VIP mapping")]
pub struct RawVip {
    pub name: Option<String>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub backends: Option<Vec<RawBackend>>,
    pub min_primaries: Option<u32>,
    pub all_down: Option<AllDown>,
    pub down_flows: Option<DownFlows>,
    pub health_check: Option<RawCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a backend mapping")]
pub struct RawBackend {
    pub name: Option<String>,
    pub address: Option<String>,
    pub weight: Option<u32>,
    pub backup: Option<bool>,
}

/// `health::CheckKind` as the file spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawKind {
    Tcp,
    Http,
    Https,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a health check mapping")]
pub struct RawCheck {
    pub kind: Option<RawKind>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<Vec<u16>>,
    pub tls_verify: Option<bool>,
    pub interval: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub initial_state: Option<InitialState>,
    pub refused_is_down: Option<bool>,
    pub flap_changes: Option<u32>,
    pub flap_window: Option<DurationText>,
    pub flap_hold: Option<DurationText>,
    pub passive: Option<bool>,
    pub fast_interval: Option<DurationText>,
    pub fast_timeout: Option<DurationText>,
}

/// A duration as written. Numbers are kept as text too, so that `interval: 200`
/// gets the positioned "has no unit" error rather than a type error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 200ms or 1.5s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}
