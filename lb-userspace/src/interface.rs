//! Facts about the balancer's network interface that the data path needs: its
//! index, MAC and MTU, read with ioctls in this process's network namespace
//! (sysfs would show the namespace it was mounted in, and xdplb may run in another
//! one: `nsenter --net` keeps the host's /sys).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, anyhow, bail};

use crate::mac::Mac;

/// The balancer's interface as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    pub mtu: u32,
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

pub(crate) fn check_name(name: &str) -> anyhow::Result<()> {
    // The name becomes an ifreq field and a SO_BINDTODEVICE argument: no NUL, no
    // path-like or blank names that would only fail later and more obscurely.
    let bad = name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if bad {
        bail!("invalid interface name {name:?}");
    }
    Ok(())
}

/// Name, index, MAC and MTU of interface `name`.
pub fn read(name: &str) -> anyhow::Result<Interface> {
    check_name(name)?;
    let index = index(name).ok_or_else(|| anyhow!("no interface {name}"))?;
    let sock = ioctl_socket().context("socket for interface ioctls")?;
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFHWADDR fills `ifr_hwaddr` of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("{name}: reading its MAC"));
    }
    // SAFETY: the union member SIOCGIFHWADDR wrote.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    // Loopback (all-zero MAC) is allowed for tests; anything else must be Ethernet.
    if hw.sa_family != libc::ARPHRD_ETHER && hw.sa_family != libc::ARPHRD_LOOPBACK {
        bail!("interface {name} is not Ethernet (hardware type {})", hw.sa_family);
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data) {
        *m = b.cast_unsigned();
    }
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFMTU fills `ifr_mtu`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("{name}: reading its MTU"));
    }
    // SAFETY: the union member SIOCGIFMTU wrote.
    let mtu = u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).unwrap_or(0);
    Ok(Interface { name: name.to_owned(), index, mac, mtu })
}

/// The index of interface `name` in this process's network namespace.
#[must_use]
pub fn index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s.cast_signed();
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_index_1_with_mtu_65536() {
        let lo = read("lo").expect("lo");
        assert_eq!(lo, Interface { name: "lo".into(), index: 1, mac: [0; 6], mtu: 65_536 });
    }

    #[test]
    fn unknown_and_invalid_interface_names_are_errors() {
        let err = read("xdplbnone0").expect_err("missing").to_string();
        assert_eq!(err, "no interface xdplbnone0");
        for bad in ["", "..", "../../etc", "a very long interface name", "eth0\0"] {
            assert!(
                read(bad).expect_err(bad).to_string().starts_with("invalid interface name"),
                "{bad:?}"
            );
        }
        assert_eq!(index("xdplbnone0"), None);
    }
}
