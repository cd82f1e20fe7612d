//! UDP datagrams between the pair's balancers, seen and forged from outside: a
//! packet socket in a balancer's namespace collects what a peer sends it, and a
//! raw socket in another namespace sends datagrams with any source address, as a
//! forger on the segment would. What the peer-sync test checks forged and replayed
//! sync messages with. IPv4 only (the pair syncs over its IPv4 addresses).

use std::{
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::lab::in_netns;

/// Most datagrams a capture keeps.
const KEEP: usize = 256;

/// Collects, in one namespace, the payload of every IPv4 UDP datagram from one
/// socket address to another.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts collecting in namespace `ns` what `from` sends to `to`.
    pub fn start(ns: &str, from: SocketAddrV4, to: SocketAddrV4) -> Result<Self> {
        let fd = in_netns(Some(ns), packet_socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: `buf` is writable for its length; `fd` is open.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue }; // the timeout, or EINTR
                if let Some(p) = udp_payload(&buf[..n], from, to)
                    && got.len() < KEEP
                {
                    got.push(p);
                }
            }
            got
        });
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops it; every payload seen, in order.
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().context("capture already stopped")?;
        t.join().map_err(|_| anyhow!("the capture thread panicked"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A packet socket for IPv4 (link headers removed) that wakes every 100 ms.
fn packet_socket() -> Result<OwnedFd> {
    let proto = i32::from(u16::to_be(u16::try_from(libc::ETH_P_IP)?));
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
    ensure!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: `tv` is a valid timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>())?,
        )
    };
    ensure!(rc == 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    Ok(fd)
}

/// The UDP payload of `packet` (an IPv4 packet) when it goes from `from` to `to`.
fn udp_payload(packet: &[u8], from: SocketAddrV4, to: SocketAddrV4) -> Option<Vec<u8>> {
    let p = SlicedPacket::from_ip(packet).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else { return None };
    let Some(TransportSlice::Udp(udp)) = &p.transport else { return None };
    let h = ip.header();
    (h.source_addr() == *from.ip()
        && h.destination_addr() == *to.ip()
        && udp.source_port() == from.port()
        && udp.destination_port() == to.port())
    .then(|| udp.payload().to_vec())
}

/// Sends `payload` in a UDP datagram from `from` to `to` out of namespace `ns`,
/// whatever addresses `ns` holds (a raw socket writes the IP header itself).
pub fn send_spoofed(ns: &str, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Result<()> {
    let mut packet = Vec::new();
    PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64)
        .udp(from.port(), to.port())
        .write(&mut packet, payload)
        .context("building the datagram")?;
    in_netns(Some(ns), move || {
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        ensure!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dst = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET)?,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.ip().octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `dst` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::from_ref(&dst).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_in>())?,
            )
        };
        ensure!(
            usize::try_from(n).ok() == Some(packet.len()),
            "sending a spoofed datagram to {to}: {}",
            io::Error::last_os_error()
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64)
            .udp(from.port(), to.port())
            .write(&mut p, payload)
            .unwrap();
        p
    }

    #[test]
    fn a_capture_keeps_only_the_datagrams_from_one_address_to_the_other() {
        let a: SocketAddrV4 = "10.0.0.1:4790".parse().unwrap();
        let b: SocketAddrV4 = "10.0.0.2:4790".parse().unwrap();
        let other: SocketAddrV4 = "10.0.0.1:4791".parse().unwrap();
        assert_eq!(udp_payload(&datagram(a, b, b"xy"), a, b), Some(b"xy".to_vec()));
        assert_eq!(udp_payload(&datagram(b, a, b"xy"), a, b), None);
        assert_eq!(udp_payload(&datagram(other, b, b"xy"), a, b), None);
        assert_eq!(udp_payload(b"\x45garbage", a, b), None);
    }
}
