//! The kernel's neighbour tables (`RTM_GETNEIGH` dumps): where next-hop MACs come from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{AF_INET, AF_INET6, NLM_F_DUMP, Request, attributes, exchange, u16_at, u32_at};
use crate::neighbours::Neighbour;

const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
/// `struct ndmsg`: family u8, 3 pad bytes, ifindex i32, state u16, flags u8, type u8.
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// An `RTM_GETNEIGH` dump request for one address family (`AF_INET`/`AF_INET6`):
/// ifindex, state, flags and type all zero, i.e. every entry of the family.
fn dump_request(family: u8, seq: u32) -> Request {
    let mut ndmsg = [0u8; NDMSG_LEN];
    ndmsg[0] = family;
    Request::new(RTM_GETNEIGH, NLM_F_DUMP, seq).header(&ndmsg)
}

/// Parses the payload of an `RTM_NEWNEIGH` message (`ndmsg` plus attributes).
/// A payload too short for `ndmsg` yields `None`; a malformed attribute ends the
/// attribute walk, keeping what was read before it.
fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    let family = *payload.first()?;
    let ifindex = u32_at(payload, 4)?;
    let state = u16_at(payload, 8)?;
    payload.get(..NDMSG_LEN)?;
    let mut neighbour = Neighbour { ifindex, state, dst: None, lladdr: None };
    for (kind, data) in attributes(payload, NDMSG_LEN) {
        match kind {
            NDA_DST => neighbour.dst = ip_from(family, data),
            NDA_LLADDR => neighbour.lladdr = data.try_into().ok(),
            _ => {}
        }
    }
    Some(neighbour)
}

pub(super) fn ip_from(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(data).ok().map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        AF_INET6 => <[u8; 16]>::try_from(data).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// The kernel's neighbour table for IPv4 or IPv6 (`RTM_GETNEIGH` dump).
pub fn dump_neighbours(ipv6: bool) -> anyhow::Result<Vec<Neighbour>> {
    let family = if ipv6 { AF_INET6 } else { AF_INET };
    // A fresh socket sees only its own request's answers; the sequence number
    // still guards against anything else queued on it.
    let seq = 1;
    let answers = exchange(dump_request(family, seq), seq, "neighbour dump")?;
    Ok(answers
        .iter()
        .filter(|(kind, _)| *kind == RTM_NEWNEIGH)
        .filter_map(|(_, payload)| parse_neighbour(payload))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            NLM_F_REQUEST, Progress, parse_datagram,
            tests::{attr, done, message},
        },
        *,
    };
    use crate::neighbours::{NUD_REACHABLE, NUD_STALE};

    fn ndmsg(family: u8, ifindex: u32, state: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        p.extend_from_slice(&state.to_ne_bytes());
        p.extend_from_slice(&[0, 1]); // flags, type (RTN_UNICAST)
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    fn neigh_v4(seq: u32, ifindex: u32, state: u16, ip: [u8; 4], mac: &[u8]) -> Vec<u8> {
        message(
            RTM_NEWNEIGH,
            seq,
            &ndmsg(AF_INET, ifindex, state, &[attr(NDA_DST, &ip), attr(NDA_LLADDR, mac)]),
        )
    }

    /// The neighbours of one datagram, and whether the dump goes on.
    fn parse(buf: &[u8], seq: u32) -> (Vec<Neighbour>, Progress) {
        let mut out = Vec::new();
        let progress = parse_datagram(buf, seq, |kind, payload| {
            if kind == RTM_NEWNEIGH {
                out.extend(parse_neighbour(payload));
            }
        })
        .expect("a well-formed dump");
        (out, progress)
    }

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    fn two_neighbours_and_done() -> Vec<u8> {
        let mut buf = neigh_v4(7, 3, NUD_REACHABLE, [10, 0, 0, 11], &MAC_A);
        let v6: Ipv6Addr = "fd00::12".parse().expect("ipv6");
        buf.extend(message(
            RTM_NEWNEIGH,
            7,
            &ndmsg(
                AF_INET6,
                4,
                NUD_STALE,
                &[attr(NDA_DST, &v6.octets()), attr(NDA_LLADDR, &MAC_B)],
            ),
        ));
        buf.extend(done(7, 0));
        buf
    }

    #[test]
    fn dump_request_is_a_getneigh_dump_for_the_family() {
        let req = dump_request(AF_INET6, 9).bytes();
        assert_eq!(req.len(), 28);
        assert_eq!(u32_at(&req, 0), Some(28));
        assert_eq!(u16_at(&req, 4), Some(RTM_GETNEIGH));
        assert_eq!(u16_at(&req, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&req, 8), Some(9));
        assert_eq!(req[16], AF_INET6);
        assert!(req[17..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_dump_with_two_entries_and_done_yields_both_and_finishes() {
        let (out, progress) = parse(&two_neighbours_and_done(), 7);
        assert_eq!(progress, Progress::Done);
        assert_eq!(
            out,
            vec![
                Neighbour {
                    ifindex: 3,
                    state: NUD_REACHABLE,
                    dst: Some("10.0.0.11".parse().expect("ip")),
                    lladdr: Some(MAC_A)
                },
                Neighbour {
                    ifindex: 4,
                    state: NUD_STALE,
                    dst: Some("fd00::12".parse().expect("ip")),
                    lladdr: Some(MAC_B)
                },
            ]
        );
    }

    #[test]
    fn a_datagram_without_done_asks_for_more() {
        let (out, progress) = parse(&neigh_v4(7, 3, NUD_REACHABLE, [10, 0, 0, 11], &MAC_A), 7);
        assert_eq!((out.len(), progress), (1, Progress::More));
        assert_eq!(parse(&[], 7).1, Progress::More);
    }

    #[test]
    fn odd_neighbour_payloads_are_skipped_or_partially_read() {
        // Shorter than ndmsg: skipped.
        assert_eq!(parse_neighbour(&[AF_INET, 0, 0]), None);
        // An attribute claiming more bytes than there are: the walk stops there.
        let mut bogus = attr(NDA_LLADDR, &MAC_A);
        bogus[..2].copy_from_slice(&200u16.to_ne_bytes());
        let n = parse_neighbour(&ndmsg(
            AF_INET,
            3,
            NUD_REACHABLE,
            &[attr(NDA_DST, &[10, 0, 0, 11]), bogus],
        ))
        .expect("entry");
        assert_eq!((n.dst, n.lladdr), (Some("10.0.0.11".parse().expect("ip")), None));
        // An attribute length below its own header: the walk stops, no endless loop.
        let mut zero = attr(NDA_DST, &[10, 0, 0, 11]);
        zero[..2].copy_from_slice(&0u16.to_ne_bytes());
        let n = parse_neighbour(&ndmsg(AF_INET, 3, NUD_REACHABLE, &[zero])).expect("entry");
        assert_eq!(n.dst, None);
        // A non-Ethernet link-layer address (InfiniBand, 20 bytes) and a wrong-size address.
        let n = parse_neighbour(&ndmsg(
            AF_INET,
            3,
            NUD_REACHABLE,
            &[attr(NDA_DST, &[10, 0, 0]), attr(NDA_LLADDR, &[7; 20])],
        ))
        .expect("entry");
        assert_eq!((n.dst, n.lladdr), (None, None));
    }

    #[test]
    fn no_prefix_or_byte_flip_of_a_dump_panics() {
        let full = two_neighbours_and_done();
        let feed = |buf: &[u8]| {
            let _ = parse_datagram(buf, 7, |_, payload| {
                let _ = parse_neighbour(payload);
            });
        };
        for end in 0..=full.len() {
            feed(&full[..end]);
        }
        // Deterministic pseudo-random corruption.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut buf = full.clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = x as usize % buf.len();
                buf[at] = (x >> 24) as u8;
            }
            feed(&buf);
        }
    }
}
