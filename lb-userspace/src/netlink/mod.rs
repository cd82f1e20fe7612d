//! rtnetlink, as much of it as xdplb needs: the neighbour table (next-hop MACs,
//! [`neigh`]), one interface's state and XDP attachment (the balancer's own
//! health, [`link`]), and blackhole routes in a table of our own (the VIP routes
//! a BGP daemon announces, [`route`]). Messages are built and parsed here by hand
//! (a handful of request and answer types do not justify a netlink crate);
//! parsing is bounds-checked throughout and treats anything odd as an error or a
//! skipped entry, never a panic.

mod link;
mod neigh;
mod route;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, anyhow};

pub use self::{
    link::{LinkState, XdpAttached, XdpPrograms, link_state, xdp_attached},
    neigh::dump_neighbours,
    route::{ROUTE_PROTOCOL, add_route, delete_route, dump_routes},
};

// Kernel ABI constants (linux/netlink.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
const RTA_HDRLEN: usize = 4;
/// Strips the `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` flag bits from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Address families as rtnetlink headers carry them (`u8`, where libc has `c_int`).
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How long to wait for the kernel's answer.
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

/// Whether an exchange continues past the datagram just parsed.
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

/// A request: the netlink header, then the family header and attributes appended.
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut msg = Vec::with_capacity(64);
        // Length, patched by `bytes`.
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        // Port id 0: the kernel fills in ours.
        msg.extend_from_slice(&0u32.to_ne_bytes());
        Self(msg)
    }

    /// The family header (`ndmsg`, `ifinfomsg`, `rtmsg`), padded to 4 bytes.
    fn header(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = RTA_HDRLEN + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    fn bytes(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// The attributes of a payload after its `skip`-byte family header, as (type,
/// data). A malformed attribute ends the walk, keeping what was read before it.
fn attributes(payload: &[u8], skip: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = payload.get(skip..).unwrap_or_default();
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(rest, 0)?);
        let kind = u16_at(rest, 2)?;
        // A length below the header would never advance; one past the end lies.
        if len < RTA_HDRLEN {
            return None;
        }
        let data = rest.get(RTA_HDRLEN..len)?;
        rest = rest.get(align4(len)..).unwrap_or_default();
        Some((kind & NLA_TYPE_MASK, data))
    })
}

/// Parses one received datagram of the exchange with sequence number `seq`,
/// handing each answer message (type, payload) to `on_message`. An exchange ends
/// with `NLMSG_DONE` (a dump) or an acknowledgement (a request with `NLM_F_ACK`).
fn parse_datagram(
    buf: &[u8],
    seq: u32,
    mut on_message: impl FnMut(u16, &[u8]),
) -> Result<Progress, NetlinkError> {
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
            NLMSG_ERROR => {
                return match i32_at(payload, 0).ok_or(NetlinkError::Truncated)? {
                    0 => Ok(Progress::Done),
                    code => Err(NetlinkError::Kernel(code.saturating_neg())),
                };
            }
            _ => on_message(kind, payload),
        }
    }
    Ok(Progress::More)
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

/// Sends `request` (built with sequence number `seq`) on a fresh socket and
/// collects the answer messages (type, payload) until the kernel ends the
/// exchange. `what` names it in errors.
fn exchange(request: Request, seq: u32, what: &str) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
    let sock = Netlink::open().context("cannot open a netlink socket")?;
    sock.send(&request.bytes()).with_context(|| format!("cannot send the {what} request"))?;
    // Dump datagrams are at most 32 KiB on current kernels.
    let mut buf = vec![0u8; 64 * 1024];
    let mut answers = Vec::new();
    loop {
        let (len, from_kernel) = sock.recv(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                anyhow!("no {what} answer from the kernel within {NETLINK_TIMEOUT:?}")
            } else {
                anyhow!("cannot read the {what} answer: {e}")
            }
        })?;
        if !from_kernel {
            continue;
        }
        let data = buf.get(..len).unwrap_or_default();
        let progress = parse_datagram(data, seq, |kind, payload| {
            answers.push((kind, payload.to_vec()));
        })
        .with_context(|| what.to_owned())?;
        if progress == Progress::Done {
            return Ok(answers);
        }
    }
}

/// Whether an error from [`exchange`] is the kernel's `errno`.
fn is_errno(e: &anyhow::Error, errno: i32) -> bool {
    e.chain()
        .any(|cause| cause.downcast_ref::<NetlinkError>() == Some(&NetlinkError::Kernel(errno)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A netlink message with the given type, sequence number and payload.
    pub fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
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

    pub fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let len = RTA_HDRLEN + data.len();
        let mut a = Vec::new();
        a.extend_from_slice(&(len as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(len), 0);
        a
    }

    pub fn done(seq: u32, code: i32) -> Vec<u8> {
        message(NLMSG_DONE, seq, &code.to_ne_bytes())
    }

    pub fn error(seq: u32, code: i32) -> Vec<u8> {
        // nlmsgerr: the error code, then the offending request's header.
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&Request::new(18, 0, seq).bytes()[..NLMSG_HDRLEN]);
        message(NLMSG_ERROR, seq, &payload)
    }

    #[test]
    fn address_family_constants_match_libc() {
        assert_eq!(i32::from(AF_UNSPEC), libc::AF_UNSPEC);
        assert_eq!(i32::from(AF_INET), libc::AF_INET);
        assert_eq!(i32::from(AF_INET6), libc::AF_INET6);
    }

    #[test]
    fn a_request_carries_its_length_type_flags_and_sequence_number() {
        let req =
            Request::new(24, NLM_F_ACK, 9).header(&[10, 32, 0]).attr(1, &[1, 2, 3, 4]).bytes();
        assert_eq!(req.len(), 16 + 4 + 8);
        assert_eq!(u32_at(&req, 0), Some(28));
        assert_eq!(u16_at(&req, 4), Some(24));
        assert_eq!(u16_at(&req, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(u32_at(&req, 8), Some(9));
        assert_eq!(&req[16..20], &[10, 32, 0, 0], "the header is padded to 4 bytes");
        assert_eq!(attributes(&req[16..], 4).collect::<Vec<_>>(), [(1, &[1u8, 2, 3, 4][..])]);
    }

    #[test]
    fn an_ack_ends_an_exchange_and_an_error_fails_it() {
        let mut seen = Vec::new();
        let mut answer = message(16, 7, &[1, 2, 3, 4]);
        answer.extend(error(7, 0));
        assert_eq!(parse_datagram(&answer, 7, |k, p| seen.push((k, p.len()))), Ok(Progress::Done));
        assert_eq!(seen, [(16, 4)]);
        let err = parse_datagram(&error(7, -libc::EPERM), 7, |_, _| {}).expect_err("eperm");
        assert_eq!(err, NetlinkError::Kernel(libc::EPERM));
        assert!(err.to_string().contains("not permitted"), "{err}");
    }

    #[test]
    fn done_carrying_an_error_fails_the_dump() {
        assert_eq!(
            parse_datagram(&done(7, -libc::EBUSY), 7, |_, _| {}),
            Err(NetlinkError::Kernel(libc::EBUSY))
        );
        // DONE without a payload (old kernels) just ends the dump.
        assert_eq!(parse_datagram(&message(NLMSG_DONE, 7, &[]), 7, |_, _| {}), Ok(Progress::Done));
    }

    #[test]
    fn messages_of_another_sequence_number_are_ignored() {
        let mut buf = message(16, 6, &[0; 4]);
        buf.extend(done(6, 0));
        buf.extend(message(16, 7, &[0; 8]));
        let mut seen = Vec::new();
        assert_eq!(parse_datagram(&buf, 7, |_, p| seen.push(p.len())), Ok(Progress::More));
        assert_eq!(seen, [8]);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let full = message(16, 7, &[0; 8]);
        let no = |buf: &[u8]| parse_datagram(buf, 7, |_, _| {});
        // A header cut short.
        assert_eq!(no(&full[..10]), Err(NetlinkError::Truncated));
        // A length that runs past the datagram.
        assert_eq!(no(&full[..full.len() - 1]), Err(NetlinkError::Truncated));
        // A length smaller than the header itself.
        let mut tiny = full.clone();
        tiny[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(no(&tiny), Err(NetlinkError::Truncated));
        // An error message without its code.
        assert_eq!(no(&message(NLMSG_ERROR, 7, &[0, 0])), Err(NetlinkError::Truncated));
    }

    #[test]
    fn attribute_walks_stop_at_malformed_lengths() {
        let mut payload = attr(1, &[10, 0, 0, 11]);
        let mut bogus = attr(2, &[0; 6]);
        bogus[..2].copy_from_slice(&200u16.to_ne_bytes());
        payload.extend(bogus);
        assert_eq!(attributes(&payload, 0).map(|(k, _)| k).collect::<Vec<_>>(), [1]);
        let mut zero = attr(1, &[0; 4]);
        zero[..2].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(attributes(&zero, 0).count(), 0, "a zero length ends the walk");
        assert_eq!(attributes(&[], 12).count(), 0, "a payload shorter than its header");
    }
}
