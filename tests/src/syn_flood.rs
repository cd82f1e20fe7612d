//! SYNs with forged sources, at a steady rate, from a lab namespace: what a
//! spoofing attacker sends a VIP. They never complete a handshake, which is what
//! xdplb's passive signal must not mistake for a dead node.
//!
//! A raw IPv4 socket (`IPPROTO_RAW`, so the kernel sends the IP header as built):
//! sources from 198.18.0.0/15 (RFC 2544's benchmarking range, routed nowhere),
//! source ports and sequence numbers random, the kernel routing each SYN to the VIP
//! as it routes the client's real traffic.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use etherparse::PacketBuilder;
use lb_userspace::xorshift::XorShift;

use crate::lab::in_netns;

/// SYNs are sent in bursts this often, `rate / 1000` at a time.
const TICK: Duration = Duration::from_millis(1);

/// A running flood; stopped (and its count returned) by `stop` or on drop.
pub struct SynFlood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
    started: Instant,
}

impl SynFlood {
    /// Starts sending `rate` SYNs per second to `target` from namespace `ns`.
    pub fn start(ns: &str, target: SocketAddrV4, rate: u32) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (st, count, ns) = (Arc::clone(&stop), Arc::clone(&sent), ns.to_owned());
        let thread = std::thread::spawn(move || {
            in_netns(Some(&ns), || {
                let socket = match raw_socket() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("raw socket: {e}")));
                        return Ok(());
                    }
                };
                flood(&socket, target, rate, &st, &count)
            })
        });
        ready_rx.recv().map_err(|_| anyhow!("SYN flood thread died"))??;
        Ok(Self { stop, sent, thread: Some(thread), started: Instant::now() })
    }

    /// SYNs sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it: (SYNs sent, for how long).
    pub fn stop(mut self) -> Result<(u64, Duration)> {
        self.halt()?;
        Ok((self.sent(), self.started.elapsed()))
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("SYN flood thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn flood(
    socket: &OwnedFd,
    target: SocketAddrV4,
    rate: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    // Sources and ports only need to vary.
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(rate));
    let dst = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET)?,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(*target.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let per_second = u64::from(rate);
    let start = Instant::now();
    let mut due: u64 = 0;
    let mut packet = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        // As many as the elapsed time allows: a late tick catches up.
        let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let allowed = elapsed.saturating_mul(per_second) / 1_000_000;
        while due < allowed {
            packet.clear();
            let r = rng.next_u64();
            // 198.18.0.0/15: the low 17 bits of r.
            let source = Ipv4Addr::from(0xc612_0000 | (u32::try_from(r & 0x1_ffff)?));
            let sport = u16::try_from((r >> 17) & 0xffff)?.max(1024);
            let seq = u32::try_from(r >> 32)?;
            PacketBuilder::ipv4(source.octets(), target.ip().octets(), 64)
                .tcp(sport, target.port(), seq, 64_240)
                .syn()
                .write(&mut packet, &[])?;
            // SAFETY: sending a buffer we own to an address we built, both sized right.
            let n = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const dst).cast(),
                    libc::socklen_t::try_from(size_of::<libc::sockaddr_in>())?,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                // A full queue drops this SYN, as a congested link would; go on.
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    bail!("sending a SYN: {e}");
                }
            } else {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            due += 1;
        }
        std::thread::sleep(TICK);
    }
    Ok(())
}
