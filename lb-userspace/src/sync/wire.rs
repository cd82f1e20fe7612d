//! The peer sync datagram (docs/sync.md has the whole protocol): a fixed header,
//! up to [`ENTRIES_PER_CHUNK`] exception entries, and an HMAC-SHA256 of all of it
//! under the shared key. Every field is checked here; a datagram that fails a
//! check is a [`Reject`] with the reason the metrics count.
//!
//! ```text
//! header (48 bytes, integers big-endian)
//!   0  magic "XLBS"        4  version (1)   5  kind (1: snapshot chunk)   6  flags (0, u16)
//!   8  epoch (u64)        16  sequence (u64)        24  sender time, Unix ms (u64)
//!  32  snapshot id (u32)  36  chunk index (u16)     38  chunk count (u16)
//!  40  entries in the snapshot (u32)   44  entries in this chunk (u16)   46  reserved (u16)
//! entry (56 bytes)
//!   0  flow family (4|6)   1  protocol (6|17)   2  backend family (4|6)
//!   3  flags (bit 0: the VIP is its address's port-0 wildcard)
//!   4  client port, VIP port (network order, as the flow key holds them)
//!   8  client address (16)   24  VIP address (16)   40  backend address (16)
//! HMAC-SHA256 (32 bytes) over everything before it
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{FlowKey, VipKey, family, proto};
use ring::hmac;

use super::exceptions::Identity;

pub const MAGIC: [u8; 4] = *b"XLBS";
pub const VERSION: u8 = 1;
pub const KIND_SNAPSHOT: u8 = 1;
pub const HEADER: usize = 48;
pub const ENTRY: usize = 56;
pub const MAC: usize = 32;
/// Largest datagram sent: under a 1500-byte MTU with IPv6 and UDP headers, and
/// under the 1400 bytes tunnels and VPNs between sites commonly leave.
pub const MAX_DATAGRAM: usize = 1400;
/// Entries per datagram: 23 (1368 bytes).
pub const ENTRIES_PER_CHUNK: usize = (MAX_DATAGRAM - HEADER - MAC) / ENTRY;
/// A wildcard VIP (port 0): entry flag bit.
const WILDCARD: u8 = 1;

/// The header's fields past magic, version and kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Random at the sender's start: tells its restarts apart.
    pub epoch: u64,
    /// One per datagram the sender sends, from 1.
    pub seq: u64,
    /// The sender's clock, Unix milliseconds (the replay window).
    pub time_ms: u64,
    pub snapshot: u32,
    pub chunk: u16,
    pub chunks: u16,
    /// Entries in the whole snapshot.
    pub total: u32,
}

/// One exception: the flow and its backend's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub flow: FlowKey,
    pub id: Identity,
}

/// Why a received datagram changed nothing (`metrics::sync::REJECT_REASONS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    Oversized,
    Version,
    UnknownPeer,
    BadMac,
    Replay,
    Expired,
}

impl Reject {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::Version => "version",
            Self::UnknownPeer => "unknown_peer",
            Self::BadMac => "bad_mac",
            Self::Replay => "replay",
            Self::Expired => "expired",
        }
    }
}

/// The HMAC key of the shared secret.
#[must_use]
pub fn mac_key(secret: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// One datagram: `header` and at most [`ENTRIES_PER_CHUNK`] entries, signed.
#[must_use]
pub fn encode(key: &hmac::Key, h: &Header, entries: &[Entry]) -> Vec<u8> {
    debug_assert!(entries.len() <= ENTRIES_PER_CHUNK);
    let mut b = Vec::with_capacity(HEADER + entries.len() * ENTRY + MAC);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[VERSION, KIND_SNAPSHOT, 0, 0]);
    for v in [h.epoch, h.seq, h.time_ms] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&h.snapshot.to_be_bytes());
    b.extend_from_slice(&h.chunk.to_be_bytes());
    b.extend_from_slice(&h.chunks.to_be_bytes());
    b.extend_from_slice(&h.total.to_be_bytes());
    b.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    for e in entries {
        let flags = if e.id.vip.port == 0 { WILDCARD } else { 0 };
        b.extend_from_slice(&[e.flow.family, e.flow.proto, ip_family(e.id.backend), flags]);
        b.extend_from_slice(&e.flow.ports[0].to_ne_bytes());
        b.extend_from_slice(&e.flow.ports[1].to_ne_bytes());
        for w in e.flow.src.iter().chain(&e.flow.dst) {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&ip_bytes(e.id.backend));
    }
    let tag = hmac::sign(key, &b);
    b.extend_from_slice(tag.as_ref());
    b
}

/// A received datagram's header and entries, once its size, version, MAC and
/// every field check out.
pub fn decode(key: &hmac::Key, b: &[u8]) -> Result<(Header, Vec<Entry>), Reject> {
    if b.len() > MAX_DATAGRAM {
        return Err(Reject::Oversized);
    }
    if b.len() < HEADER + MAC || b[..4] != MAGIC {
        return Err(Reject::Malformed);
    }
    if b[4] != VERSION {
        return Err(Reject::Version);
    }
    let (body, tag) = b.split_at(b.len() - MAC);
    hmac::verify(key, body, tag).map_err(|_| Reject::BadMac)?;
    let u16_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) << 32 | u64::from(u32_at(i + 4));
    let h = Header {
        epoch: u64_at(8),
        seq: u64_at(16),
        time_ms: u64_at(24),
        snapshot: u32_at(32),
        chunk: u16_at(36),
        chunks: u16_at(38),
        total: u32_at(40),
    };
    let n = usize::from(u16_at(44));
    let sane = body[5] == KIND_SNAPSHOT
        && h.chunk < h.chunks
        && n <= ENTRIES_PER_CHUNK
        && body.len() == HEADER + n * ENTRY
        && n <= h.total as usize;
    if !sane {
        return Err(Reject::Malformed);
    }
    let entries = body[HEADER..].chunks_exact(ENTRY).map(entry).collect::<Option<Vec<_>>>();
    Ok((h, entries.ok_or(Reject::Malformed)?))
}

fn entry(e: &[u8]) -> Option<Entry> {
    let (fam, proto_, bfam, flags) = (e[0], e[1], e[2], e[3]);
    if ![family::V4, family::V6].contains(&fam) || ![proto::TCP, proto::UDP].contains(&proto_) {
        return None;
    }
    let word = |i: usize| u32::from_ne_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
    let words = |at: usize| [word(at), word(at + 4), word(at + 8), word(at + 12)];
    let flow = FlowKey {
        src: words(8),
        dst: words(24),
        ports: [u16::from_ne_bytes([e[4], e[5]]), u16::from_ne_bytes([e[6], e[7]])],
        proto: proto_,
        family: fam,
        _pad: [0; 2],
    };
    let v4_clean = |w: [u32; 4]| w[1..] == [0; 3];
    if fam == family::V4 && !(v4_clean(flow.src) && v4_clean(flow.dst)) {
        return None;
    }
    let backend = ip_from(bfam, &e[40..56])?;
    let port = if flags & WILDCARD != 0 { 0 } else { flow.ports[1] };
    let vip = VipKey { addr: flow.dst, port, proto: proto_, family: fam };
    Some(Entry { flow, id: Identity { vip, backend } })
}

fn ip_family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { family::V4 } else { family::V6 }
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip_from(fam: u8, b: &[u8]) -> Option<IpAddr> {
    let b: [u8; 16] = b.try_into().ok()?;
    match fam {
        family::V4 if b[4..] == [0; 12] => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        family::V6 => Some(IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::desired::addr_words;

    pub(crate) fn entry_v(i: u16, v6: bool) -> Entry {
        let (client, vip, backend): (IpAddr, IpAddr, IpAddr) = if v6 {
            (
                "2001:db8::7".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
                "fd00::11".parse().unwrap(),
            )
        } else {
            (
                "192.0.2.7".parse().unwrap(),
                "203.0.113.10".parse().unwrap(),
                "10.0.0.11".parse().unwrap(),
            )
        };
        let (src, fam) = addr_words(client);
        let (dst, _) = addr_words(vip);
        let flow = FlowKey {
            src,
            dst,
            ports: [i.to_be(), 443u16.to_be()],
            proto: proto::TCP,
            family: fam,
            _pad: [0; 2],
        };
        let port = if i.is_multiple_of(2) { 0 } else { 443u16.to_be() };
        Entry {
            flow,
            id: Identity {
                vip: VipKey { addr: dst, port, proto: proto::TCP, family: fam },
                backend,
            },
        }
    }

    fn header() -> Header {
        Header { epoch: 7, seq: 1, time_ms: 1000, snapshot: 1, chunk: 0, chunks: 1, total: 2 }
    }

    #[test]
    fn a_chunk_round_trips_ipv4_and_ipv6_and_fits_the_datagram_limit() {
        let key = mac_key(&[9; 32]);
        let entries: Vec<Entry> =
            (0..ENTRIES_PER_CHUNK as u16).map(|i| entry_v(i, i % 3 == 0)).collect();
        let h = Header { total: entries.len() as u32, ..header() };
        let b = encode(&key, &h, &entries);
        assert_eq!(ENTRIES_PER_CHUNK, 23);
        assert!(b.len() <= MAX_DATAGRAM, "{} bytes", b.len());
        assert_eq!(decode(&key, &b), Ok((h, entries)));
        let empty = encode(&key, &Header { total: 0, ..header() }, &[]);
        assert_eq!(empty.len(), HEADER + MAC, "a heartbeat is 80 bytes");
        assert!(decode(&key, &empty).unwrap().1.is_empty());
    }

    #[test]
    fn forged_truncated_oversized_and_other_version_datagrams_are_rejected_by_reason() {
        let key = mac_key(&[9; 32]);
        let b = encode(&key, &header(), &[entry_v(1, false), entry_v(2, true)]);
        assert_eq!(decode(&mac_key(&[8; 32]), &b), Err(Reject::BadMac), "another key");
        for i in [0, 9, HEADER + 3, b.len() - 1] {
            let mut flipped = b.clone();
            flipped[i] ^= 1;
            let want = if i == 0 { Reject::Malformed } else { Reject::BadMac };
            assert_eq!(decode(&key, &flipped), Err(want), "byte {i} flipped");
        }
        assert_eq!(decode(&key, &b[..b.len() - 1]), Err(Reject::BadMac), "truncated");
        assert_eq!(decode(&key, &b[..HEADER]), Err(Reject::Malformed), "no room for a MAC");
        assert_eq!(decode(&key, &vec![0; MAX_DATAGRAM + 1]), Err(Reject::Oversized));
        let mut v2 = b.clone();
        v2[4] = 2;
        assert_eq!(decode(&key, &v2), Err(Reject::Version));
        // Signed with the key but inconsistent: chunk past the count, a bad family.
        let bad = encode(&key, &Header { chunk: 1, chunks: 1, ..header() }, &[]);
        assert_eq!(decode(&key, &bad), Err(Reject::Malformed));
        let mut e = entry_v(1, false);
        e.flow.family = 5;
        assert_eq!(decode(&key, &encode(&key, &header(), &[e])), Err(Reject::Malformed));
    }
}
