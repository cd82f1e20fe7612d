//! rtnetlink, as much of it as xdplb needs: a dump of the kernel's neighbour
//! table, and of the interfaces' attached XDP programs. The messages are built and parsed here by hand (one request and one
//! answer type do not justify a netlink crate); parsing is bounds-checked
//! throughout and treats anything odd as an error or a skipped entry, never a panic.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, anyhow};

use crate::neighbours::Neighbour;

// Kernel ABI constants (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
/// `struct ifinfomsg`: family u8, pad u8, type u16, index i32, flags u32, change u32.
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
/// `struct ndmsg`: family u8, 3 pad bytes, ifindex i32, state u16, flags u8, type u8.
const NDMSG_LEN: usize = 12;
const RTA_HDRLEN: usize = 4;
/// Strips the `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` flag bits from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Address families as `ndmsg` carries them (`u8`, where libc has `c_int`).
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How long to wait for the kernel's answer to a dump.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a netlink answer could not be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum NetlinkError {
    #[error("truncated netlink message")]
    Truncated,
    /// The kernel refused the request; the value is the positive errno.
    #[error("netlink: {}", io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
}

/// Whether a dump continues past the datagram just parsed.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn i32_at(buf: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// An `RTM_GETNEIGH` dump request for one address family (`AF_INET`/`AF_INET6`).
fn dump_request(family: u8, seq: u32) -> Vec<u8> {
    request(RTM_GETNEIGH, family, NDMSG_LEN, seq)
}

/// A dump request of message type `kind` whose header (`ndmsg`, `ifinfomsg`) is
/// `header` bytes, all zero but the family: every entry of the family.
fn request(kind: u16, family: u8, header: usize, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + header;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel fills in ours.
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.push(family);
    // Padding, ifindex, state, flags, type: all zero, i.e. every entry of the family.
    msg.resize(len, 0);
    msg
}

/// Parses one received datagram of a neighbour dump with sequence number `seq`,
/// appending its entries to `out`.
#[cfg(test)]
fn parse_datagram(
    buf: &[u8],
    seq: u32,
    out: &mut Vec<Neighbour>,
) -> Result<Progress, NetlinkError> {
    walk(buf, seq, |kind, payload| {
        if kind == RTM_NEWNEIGH {
            out.extend(parse_neighbour(payload));
        }
    })
}

/// Walks one received datagram of a dump with sequence number `seq`, handing
/// each message's type and payload to `each`.
fn walk(buf: &[u8], seq: u32, mut each: impl FnMut(u16, &[u8])) -> Result<Progress, NetlinkError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let len = u32_at(rest, 0).ok_or(NetlinkError::Truncated)? as usize;
        let kind = u16_at(rest, 4).ok_or(NetlinkError::Truncated)?;
        let msg_seq = u32_at(rest, 8).ok_or(NetlinkError::Truncated)?;
        if len < NLMSG_HDRLEN {
            return Err(NetlinkError::Truncated);
        }
        let payload = rest.get(NLMSG_HDRLEN..len).ok_or(NetlinkError::Truncated)?;
        rest = rest.get(align4(len)..).unwrap_or_default();
        if msg_seq != seq {
            // Left over from some other request on this socket.
            continue;
        }
        match kind {
            NLMSG_DONE => {
                // A dump that failed midway ends with DONE carrying the error.
                return match i32_at(payload, 0) {
                    Some(code) if code < 0 => Err(NetlinkError::Kernel(code.saturating_neg())),
                    _ => Ok(Progress::Done),
                };
            }
            NLMSG_ERROR => match i32_at(payload, 0).ok_or(NetlinkError::Truncated)? {
                // An acknowledgement, not an error.
                0 => {}
                code => return Err(NetlinkError::Kernel(code.saturating_neg())),
            },
            kind => each(kind, payload),
        }
    }
    Ok(Progress::More)
}

/// The attributes after a fixed header: (type without flag bits, data). A
/// malformed attribute ends the walk, keeping what came before it.
fn attributes(mut attrs: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)?;
        // A length below the header would never advance; one past the end lies.
        if len < RTA_HDRLEN {
            return None;
        }
        let data = attrs.get(RTA_HDRLEN..len)?;
        attrs = attrs.get(align4(len)..).unwrap_or_default();
        Some((kind & NLA_TYPE_MASK, data))
    })
}

/// An interface with an XDP program attached, and in which mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpAttached {
    pub ifindex: u32,
    pub name: String,
    /// The program attached in driver (native) mode.
    pub driver: Option<u32>,
    /// The program attached in generic (skb) mode.
    pub skb: Option<u32>,
}

/// Parses an `RTM_NEWLINK` payload: the interface, if it has an XDP program.
fn parse_link(payload: &[u8]) -> Option<XdpAttached> {
    let ifindex = u32_at(payload, 4)?;
    let mut link = XdpAttached { ifindex, name: String::new(), driver: None, skb: None };
    for (kind, data) in attributes(payload.get(IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_IFNAME => {
                let name = data.split(|b| *b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_XDP => {
                let (mut mode, mut id) = (0, None);
                for (kind, data) in attributes(data) {
                    match kind {
                        IFLA_XDP_ATTACHED => mode = data.first().copied().unwrap_or(0),
                        IFLA_XDP_PROG_ID => id = u32_at(data, 0),
                        IFLA_XDP_DRV_PROG_ID => link.driver = u32_at(data, 0),
                        IFLA_XDP_SKB_PROG_ID => link.skb = u32_at(data, 0),
                        _ => {}
                    }
                }
                match mode {
                    XDP_ATTACHED_DRV => link.driver = link.driver.or(id),
                    XDP_ATTACHED_SKB => link.skb = link.skb.or(id),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (link.driver.is_some() || link.skb.is_some()).then_some(link)
}

/// Parses the payload of an `RTM_NEWNEIGH` message (`ndmsg` plus attributes).
/// A payload too short for `ndmsg` yields `None`; a malformed attribute ends the
/// attribute walk, keeping what was read before it.
fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    let family = *payload.first()?;
    let ifindex = u32_at(payload, 4)?;
    let state = u16_at(payload, 8)?;
    let mut neighbour = Neighbour { ifindex, state, dst: None, lladdr: None };
    let mut attrs = payload.get(NDMSG_LEN..)?;
    while attrs.len() >= RTA_HDRLEN {
        let Some(len) = u16_at(attrs, 0).map(usize::from) else {
            break;
        };
        let Some(kind) = u16_at(attrs, 2) else { break };
        // A length below the header would never advance; one past the end lies.
        if len < RTA_HDRLEN {
            break;
        }
        let Some(data) = attrs.get(RTA_HDRLEN..len) else {
            break;
        };
        match kind & NLA_TYPE_MASK {
            NDA_DST => neighbour.dst = ip_from(family, data),
            NDA_LLADDR => neighbour.lladdr = data.try_into().ok(),
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    Some(neighbour)
}

fn ip_from(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(data).ok().map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        AF_INET6 => <[u8; 16]>::try_from(data).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// A `NETLINK_ROUTE` socket with a receive timeout.
struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let timeout = libc::timeval {
            tv_sec: NETLINK_TIMEOUT.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: 0,
        };
        // SAFETY: the option value points at a live timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn kernel() -> libc::sockaddr_nl {
        // SAFETY: sockaddr_nl is plain integers; all-zero is valid (port 0 = the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let addr = Self::kernel();
        // SAFETY: `msg` and `addr` are live for the call and their lengths are passed.
        let rc = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Receives one datagram into `buf`; returns its length and whether the
    /// kernel (port 0) sent it.
    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        loop {
            let mut from = Self::kernel();
            let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are live and writable for the lengths passed.
            let rc = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    // Report the datagram's real length, so truncation is detectable.
                    libc::MSG_TRUNC,
                    (&raw mut from).cast(),
                    &raw mut from_len,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let len = usize::try_from(rc).unwrap_or(0);
            if len > buf.len() {
                return Err(io::Error::other(format!("netlink message of {len} bytes truncated")));
            }
            return Ok((len, from.nl_pid == 0));
        }
    }
}

/// The kernel's neighbour table for IPv4 or IPv6 (`RTM_GETNEIGH` dump).
pub fn dump_neighbours(ipv6: bool) -> anyhow::Result<Vec<Neighbour>> {
    let family = if ipv6 { AF_INET6 } else { AF_INET };
    let mut table = Vec::new();
    dump(&dump_request(family, 1), "neighbour", |kind, payload| {
        if kind == RTM_NEWNEIGH {
            table.extend(parse_neighbour(payload));
        }
    })?;
    Ok(table)
}

/// Every interface of this network namespace that has an XDP program attached
/// (`RTM_GETLINK` dump).
pub fn xdp_attached() -> anyhow::Result<Vec<XdpAttached>> {
    let mut links = Vec::new();
    dump(&request(RTM_GETLINK, 0, IFINFOMSG_LEN, 1), "link", |kind, payload| {
        if kind == RTM_NEWLINK {
            links.extend(parse_link(payload));
        }
    })?;
    Ok(links)
}

/// Sends the dump `request` (sequence number 1) and hands every message of the
/// answer to `each`; `what` names the dump in errors.
fn dump(request: &[u8], what: &str, mut each: impl FnMut(u16, &[u8])) -> anyhow::Result<()> {
    let sock = Netlink::open().context("cannot open a netlink socket")?;
    // A fresh socket sees only its own request's answers; the sequence number
    // still guards against anything else queued on it.
    let seq = 1;
    sock.send(request).with_context(|| format!("cannot send the {what} dump request"))?;
    // Dump datagrams are at most 32 KiB on current kernels.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (len, from_kernel) = sock.recv(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                anyhow!("no {what} dump from the kernel within {NETLINK_TIMEOUT:?}")
            } else {
                anyhow!("cannot read the {what} dump: {e}")
            }
        })?;
        if !from_kernel {
            continue;
        }
        let data = buf.get(..len).unwrap_or_default();
        match walk(data, seq, &mut each).with_context(|| format!("{what} dump"))? {
            Progress::Done => return Ok(()),
            Progress::More => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neighbours::{NUD_REACHABLE, NUD_STALE};

    /// A netlink message with the given type, sequence number and payload.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::new();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&4242u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(align4(len), 0);
        msg
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let len = RTA_HDRLEN + data.len();
        let mut a = Vec::new();
        a.extend_from_slice(&(len as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(len), 0);
        a
    }

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

    fn done(seq: u32, code: i32) -> Vec<u8> {
        message(NLMSG_DONE, seq, &code.to_ne_bytes())
    }

    fn error(seq: u32, code: i32) -> Vec<u8> {
        // nlmsgerr: the error code, then the offending request's header.
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&dump_request(AF_INET, seq)[..NLMSG_HDRLEN]);
        message(NLMSG_ERROR, seq, &payload)
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
    fn address_family_constants_match_libc() {
        assert_eq!(i32::from(AF_INET), libc::AF_INET);
        assert_eq!(i32::from(AF_INET6), libc::AF_INET6);
    }
    #[test]
    fn dump_request_is_a_getneigh_dump_for_the_family() {
        let req = dump_request(AF_INET6, 9);
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
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&two_neighbours_and_done(), 7, &mut out), Ok(Progress::Done));
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
        let mut out = Vec::new();
        let buf = neigh_v4(7, 3, NUD_REACHABLE, [10, 0, 0, 11], &MAC_A);
        assert_eq!(parse_datagram(&buf, 7, &mut out), Ok(Progress::More));
        assert_eq!(out.len(), 1);
        assert_eq!(parse_datagram(&[], 7, &mut out), Ok(Progress::More));
    }
    #[test]
    fn messages_of_another_sequence_number_are_ignored() {
        let mut buf = neigh_v4(6, 3, NUD_REACHABLE, [10, 0, 0, 11], &MAC_A);
        buf.extend(done(6, 0));
        buf.extend(neigh_v4(7, 3, NUD_REACHABLE, [10, 0, 0, 12], &MAC_B));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&buf, 7, &mut out), Ok(Progress::More));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lladdr, Some(MAC_B));
    }
    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let full = two_neighbours_and_done();
        let mut out = Vec::new();
        // A header cut short.
        assert_eq!(parse_datagram(&full[..10], 7, &mut out), Err(NetlinkError::Truncated));
        // A length that runs past the datagram.
        let first_len = u32_at(&full, 0).expect("len") as usize;
        assert_eq!(
            parse_datagram(&full[..first_len - 1], 7, &mut out),
            Err(NetlinkError::Truncated)
        );
        // A length smaller than the header itself.
        let mut tiny = full.clone();
        tiny[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(parse_datagram(&tiny, 7, &mut out), Err(NetlinkError::Truncated));
        // An error message without its code.
        assert_eq!(
            parse_datagram(&message(NLMSG_ERROR, 7, &[0, 0]), 7, &mut out),
            Err(NetlinkError::Truncated)
        );
    }
    #[test]
    fn nlmsg_error_reports_the_errno_and_an_ack_is_not_an_error() {
        let mut out = Vec::new();
        let err = parse_datagram(&error(7, -libc::EPERM), 7, &mut out).expect_err("eperm");
        assert_eq!(err, NetlinkError::Kernel(libc::EPERM));
        assert!(err.to_string().contains("not permitted"), "{err}");
        let mut acked = error(7, 0);
        acked.extend(done(7, 0));
        assert_eq!(parse_datagram(&acked, 7, &mut out), Ok(Progress::Done));
    }
    #[test]
    fn done_carrying_an_error_fails_the_dump() {
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&done(7, -libc::EBUSY), 7, &mut out),
            Err(NetlinkError::Kernel(libc::EBUSY))
        );
        // DONE without a payload (old kernels) just ends the dump.
        assert_eq!(parse_datagram(&message(NLMSG_DONE, 7, &[]), 7, &mut out), Ok(Progress::Done));
    }
    #[test]
    fn odd_neighbour_payloads_are_skipped_or_partially_read() {
        let mut out = Vec::new();
        // Shorter than ndmsg: skipped.
        parse_datagram(&message(RTM_NEWNEIGH, 7, &[AF_INET, 0, 0]), 7, &mut out).expect("parse");
        assert!(out.is_empty());
        // An attribute claiming more bytes than there are: the walk stops there.
        let mut bogus = attr(NDA_LLADDR, &MAC_A);
        bogus[..2].copy_from_slice(&200u16.to_ne_bytes());
        let payload = ndmsg(AF_INET, 3, NUD_REACHABLE, &[attr(NDA_DST, &[10, 0, 0, 11]), bogus]);
        parse_datagram(&message(RTM_NEWNEIGH, 7, &payload), 7, &mut out).expect("parse");
        assert_eq!(out[0].dst, Some("10.0.0.11".parse().expect("ip")));
        assert_eq!(out[0].lladdr, None);
        // An attribute length below its own header: the walk stops, no endless loop.
        let mut zero = attr(NDA_DST, &[10, 0, 0, 11]);
        zero[..2].copy_from_slice(&0u16.to_ne_bytes());
        let payload = ndmsg(AF_INET, 3, NUD_REACHABLE, &[zero]);
        parse_datagram(&message(RTM_NEWNEIGH, 7, &payload), 7, &mut out).expect("parse");
        assert_eq!(out[1].dst, None);
        // A non-Ethernet link-layer address (InfiniBand, 20 bytes) and a wrong-size address.
        let payload = ndmsg(
            AF_INET,
            3,
            NUD_REACHABLE,
            &[attr(NDA_DST, &[10, 0, 0]), attr(NDA_LLADDR, &[7; 20])],
        );
        parse_datagram(&message(RTM_NEWNEIGH, 7, &payload), 7, &mut out).expect("parse");
        assert_eq!((out[2].dst, out[2].lladdr), (None, None));
    }
    #[test]
    fn no_prefix_or_byte_flip_of_a_dump_panics() {
        let full = two_neighbours_and_done();
        for end in 0..=full.len() {
            let _ = parse_datagram(&full[..end], 7, &mut Vec::new());
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
            let _ = parse_datagram(&buf, 7, &mut Vec::new());
        }
    }

    fn ifinfomsg(ifindex: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0, 0, 1, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        p.extend_from_slice(&[0; 8]);
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    fn xdp(attrs: &[Vec<u8>]) -> Vec<u8> {
        attr(IFLA_XDP | 0x8000, &attrs.concat())
    }

    #[test]
    fn a_link_dump_names_the_interfaces_with_xdp_and_the_mode_of_each_program() {
        let skb = ifinfomsg(
            3,
            &[
                attr(IFLA_IFNAME, b"eth0\0"),
                xdp(&[
                    attr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]),
                    attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()),
                ]),
            ],
        );
        let multi = ifinfomsg(
            4,
            &[
                attr(IFLA_IFNAME, b"eth1\0"),
                xdp(&[
                    attr(IFLA_XDP_ATTACHED, &[4]),
                    attr(IFLA_XDP_DRV_PROG_ID, &8u32.to_ne_bytes()),
                    attr(IFLA_XDP_SKB_PROG_ID, &9u32.to_ne_bytes()),
                ]),
            ],
        );
        let none =
            ifinfomsg(5, &[attr(IFLA_IFNAME, b"lo\0"), xdp(&[attr(IFLA_XDP_ATTACHED, &[0])])]);
        let mut buf = message(RTM_NEWLINK, 1, &skb);
        buf.extend(message(RTM_NEWLINK, 1, &multi));
        buf.extend(message(RTM_NEWLINK, 1, &none));
        buf.extend(message(NLMSG_DONE, 1, &0i32.to_ne_bytes()));
        let mut links = Vec::new();
        let progress = walk(&buf, 1, |kind, payload| {
            if kind == RTM_NEWLINK {
                links.extend(parse_link(payload));
            }
        });
        assert_eq!(progress, Ok(Progress::Done));
        assert_eq!(
            links,
            [
                XdpAttached { ifindex: 3, name: "eth0".into(), driver: None, skb: Some(77) },
                XdpAttached { ifindex: 4, name: "eth1".into(), driver: Some(8), skb: Some(9) },
            ]
        );
        assert_eq!(parse_link(&[0; 4]), None, "too short for ifinfomsg");
    }

    #[test]
    fn the_kernels_link_dump_reads_without_error() {
        xdp_attached().expect("a link dump");
    }
}
