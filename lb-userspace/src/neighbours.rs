//! Next-hop MACs. The data path rewrites destination MACs itself (dsr, and ipip
//! towards the next hop), so the controller reads them from the kernel's
//! neighbour tables and nudges the kernel to resolve the ones it lacks. The
//! controller sees both through [`NeighbourSource`], so its decisions are tested
//! against a fake.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
};

use log::debug;

use crate::{
    interface::{Interface, check_name},
    mac::Mac,
    netlink,
};

pub const NUD_INCOMPLETE: u16 = 0x01;
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_DELAY: u16 = 0x08;
pub const NUD_PROBE: u16 = 0x10;
pub const NUD_FAILED: u16 = 0x20;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;
/// States whose link-layer address the kernel itself would send to.
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;

/// One entry of the kernel's neighbour table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    /// `NUD_*` bits.
    pub state: u16,
    pub dst: Option<IpAddr>,
    /// The link-layer address, when it is an Ethernet one.
    pub lladdr: Option<Mac>,
}

impl Neighbour {
    /// The MAC, if the kernel would use this entry to send.
    #[must_use]
    pub fn usable_mac(&self) -> Option<Mac> {
        self.lladdr.filter(|mac| self.state & NUD_USABLE != 0 && *mac != [0; 6])
    }
}

/// The kernel's neighbour tables, one per address family, as one refresh read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub v4: Vec<Neighbour>,
    pub v6: Vec<Neighbour>,
}

impl Tables {
    /// The MAC of `addr` on interface `ifindex`, if its entry is usable
    /// (reachable, stale, delay, probe, permanent or noarp with a non-zero address).
    #[must_use]
    pub fn mac(&self, ifindex: u32, addr: IpAddr) -> Option<Mac> {
        let addr = addr.to_canonical();
        let table = if addr.is_ipv6() { &self.v6 } else { &self.v4 };
        table
            .iter()
            .filter(|n| n.ifindex == ifindex && n.dst == Some(addr))
            .find_map(Neighbour::usable_mac)
    }
}

/// The next hop for `dst` out of the interface: `gateway` if given, else `dst`
/// itself (on-link).
#[must_use]
pub fn next_hop(dst: IpAddr, gateway: Option<IpAddr>) -> IpAddr {
    gateway.unwrap_or(dst)
}

/// Where the controller learns next-hop MACs, and whom it asks to resolve the
/// missing ones: the kernel in `xdplb run`, a fake in tests.
pub trait NeighbourSource {
    /// The neighbour tables as they are now.
    fn tables(&mut self) -> anyhow::Result<Tables>;
    /// Asks for `hop` to be resolved on `interface`. Best effort: the next
    /// refresh looks again.
    fn solicit(&mut self, interface: &Interface, hop: IpAddr);
}

/// The kernel's neighbour tables over rtnetlink.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl NeighbourSource for Kernel {
    fn tables(&mut self) -> anyhow::Result<Tables> {
        Ok(Tables { v4: netlink::dump_neighbours(false)?, v6: netlink::dump_neighbours(true)? })
    }

    fn solicit(&mut self, interface: &Interface, hop: IpAddr) {
        if let Err(e) = solicit(interface, hop) {
            debug!("soliciting {hop} on {}: {e}", interface.name);
        }
    }
}

/// Asks the kernel to resolve `addr` on `interface`: sends one empty UDP
/// datagram to port 9 (discard) from a socket bound to the interface, which
/// starts ARP / neighbour discovery. Callers may ignore errors: the next
/// refresh tries again.
pub fn solicit(interface: &Interface, addr: IpAddr) -> io::Result<()> {
    check_name(&interface.name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let addr = addr.to_canonical();
    let (socket, target) = match addr {
        IpAddr::V4(a) => (UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?, SocketAddr::from((a, 9))),
        IpAddr::V6(a) => {
            // A link-local address means nothing without its interface.
            let scope = if a.is_unicast_link_local() { interface.index } else { 0 };
            (
                UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?,
                SocketAddr::V6(SocketAddrV6::new(a, 9, 0, scope)),
            )
        }
    };
    // SAFETY: the option value points at the name's bytes, of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.name.as_ptr().cast(),
            interface.name.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // A full send buffer must not stall the caller; losing this datagram is fine.
    socket.set_nonblocking(true)?;
    socket.send_to(&[], target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::interface;

    const MAC_A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: Mac = [0x02, 0, 0, 0, 0, 0x0b];

    #[test]
    fn only_usable_states_with_a_nonzero_mac_resolve() {
        let entry = |state, mac| Neighbour { ifindex: 3, state, dst: None, lladdr: Some(mac) };
        for state in [NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_PERMANENT, NUD_NOARP] {
            assert_eq!(entry(state, MAC_A).usable_mac(), Some(MAC_A), "state {state:#x}");
        }
        for state in [NUD_INCOMPLETE, NUD_FAILED, 0] {
            assert_eq!(entry(state, MAC_A).usable_mac(), None, "state {state:#x}");
        }
        assert_eq!(entry(NUD_NOARP, [0; 6]).usable_mac(), None);
        assert_eq!(Neighbour { lladdr: None, ..entry(NUD_REACHABLE, MAC_A) }.usable_mac(), None);
    }

    #[test]
    fn a_mac_is_found_by_interface_and_address_and_unusable_entries_are_skipped() {
        let ip: IpAddr = "10.0.0.11".parse().expect("ip");
        let v4 = vec![
            Neighbour { ifindex: 2, state: NUD_REACHABLE, dst: Some(ip), lladdr: Some(MAC_B) },
            Neighbour { ifindex: 3, state: NUD_FAILED, dst: Some(ip), lladdr: Some(MAC_B) },
            Neighbour { ifindex: 3, state: NUD_STALE, dst: Some(ip), lladdr: Some(MAC_A) },
        ];
        let tables = Tables { v4, v6: Vec::new() };
        assert_eq!(tables.mac(3, ip), Some(MAC_A));
        assert_eq!(tables.mac(4, ip), None);
        assert_eq!(tables.mac(3, "10.0.0.12".parse().expect("ip")), None);
    }

    #[test]
    fn next_hop_is_the_gateway_if_given_else_the_destination() {
        let dst: IpAddr = "10.0.0.11".parse().expect("ip");
        let gw: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(next_hop(dst, Some(gw)), gw);
        assert_eq!(next_hop(dst, None), dst);
    }

    #[test]
    fn the_kernel_tables_read_without_error_and_loopback_has_no_entries() {
        // lo has no neighbour entries; this exercises the real dumps end to end.
        let tables = Kernel.tables().expect("v4 and v6 dumps");
        assert_eq!(tables.mac(1, "127.0.0.1".parse().expect("ip")), None);
        assert_eq!(tables.mac(1, "::1".parse().expect("ip")), None);
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Skips a root-only test, unless CI demands every test runs.
    fn skip(test: &str) {
        crate::skip::skip(test, "needs root");
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {args:?} failed");
    }

    /// A veth pair made for one test, deleted on drop (panics included).
    struct Veth(String);

    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }

    #[test]
    fn the_kernel_tables_hold_permanent_entries_on_their_interface_only() {
        if !is_root() {
            return skip("the_kernel_tables_hold_permanent_entries_on_their_interface_only");
        }
        // Unique per process, so parallel test runs do not collide.
        let name = format!("xlbt{}a", std::process::id() % 1_000_000);
        let peer = format!("xlbt{}b", std::process::id() % 1_000_000);
        ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        let _guard = Veth(name.clone());
        ip(&[
            "neigh",
            "add",
            "10.254.254.1",
            "lladdr",
            "02:00:00:00:00:42",
            "dev",
            &name,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-6",
            "neigh",
            "add",
            "fd00:db8:254::1",
            "lladdr",
            "02:00:00:00:00:43",
            "dev",
            &name,
            "nud",
            "permanent",
        ]);
        let this = interface::read(&name).expect("veth");
        let other = interface::read(&peer).expect("peer");

        let tables = Kernel.tables().expect("dumps");
        let v4: IpAddr = "10.254.254.1".parse().expect("ip");
        let v6: IpAddr = "fd00:db8:254::1".parse().expect("ip");
        assert_eq!(tables.mac(this.index, v4), Some([2, 0, 0, 0, 0, 0x42]));
        assert_eq!(tables.mac(this.index, v6), Some([2, 0, 0, 0, 0, 0x43]));
        // An IPv4-mapped IPv6 address is the IPv4 entry.
        assert_eq!(
            tables.mac(this.index, "::ffff:10.254.254.1".parse().expect("ip")),
            Some([2, 0, 0, 0, 0, 0x42])
        );
        assert_eq!(tables.mac(other.index, v4), None);
        assert_eq!(tables.mac(this.index, "10.254.254.2".parse().expect("ip")), None);
    }

    #[test]
    fn solicit_sends_from_a_socket_bound_to_the_interface() {
        if !is_root() {
            return skip("solicit_sends_from_a_socket_bound_to_the_interface");
        }
        let lo = interface::read("lo").expect("lo");
        solicit(&lo, "127.0.0.1".parse().expect("ip")).expect("solicit on lo");
        solicit(&lo, "::1".parse().expect("ip")).expect("solicit on lo over ipv6");
    }

    #[test]
    fn soliciting_on_an_invalid_interface_name_is_an_error() {
        let bad = Interface { name: "../x".into(), index: 1, mac: [0; 6], mtu: 1500 };
        let err = solicit(&bad, "10.0.0.1".parse().expect("ip")).expect_err("invalid");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
