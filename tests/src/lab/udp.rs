//! The UDP responder of a WAF node: answers every datagram on its port with the
//! node's name, from the address the datagram was sent to (the VIP, in DSR and
//! IPIP alike), on IPv4 and IPv6.
//!
//! Debian's nginx has no stream module unless `libnginx-mod-stream` is installed,
//! so this is ours. It has to outlive `lab up`, and be startable from any process
//! that links this library (tests, the demo), where no helper binary may exist:
//! the sockets are bound in the node's namespace, then the process forks twice
//! and the grandchild serves. Between fork and exit the children run only raw
//! system calls on memory prepared before the fork (no allocation, no locks),
//! which is what is safe after fork in a multi-threaded process.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{self, Read as _},
    mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    ptr,
};

use anyhow::{Context as _, Result, bail};

use super::netns::{in_netns, ns_path};

/// The process name of every responder: `down` finds them by it.
pub const COMM_PREFIX: &str = "xlb-udp-";

/// Starts the responder for node `name` in namespace `ns`; writes its pid to
/// `pid_file` and returns it.
pub fn start(ns: &str, name: &str, port: u16, pid_file: &Path) -> Result<i32> {
    let (s4, s6) = in_netns(Some(ns), || Ok((socket4(port)?, socket6(port)?)))
        .with_context(|| format!("udp responder of {name}: binding port {port}"))?;
    let ns_file = File::open(ns_path(ns)).with_context(|| format!("opening namespace {ns}"))?;
    let devnull = OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let reply = format!("{name}\n").into_bytes();
    let mut comm = format!("{COMM_PREFIX}{name}");
    comm.truncate(15); // the kernel keeps 15 bytes of a task name
    let comm = CString::new(comm)?;

    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child = Daemon {
        ns: ns_file.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
        report: wr.as_raw_fd(),
        socks: [s4.as_raw_fd(), s6.as_raw_fd()],
        reply: &reply,
        comm: &comm,
    };
    // SAFETY: the child runs only `Daemon::run`, which never returns and does
    // nothing but system calls on memory that was set up before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe { child.run() }
    }
    drop(wr);
    // The first child exits as soon as it has forked the server; reap it.
    let mut status = 0;
    // SAFETY: `pid` is our child.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    let mut buf = [0u8; 4];
    File::from(rd)
        .read_exact(&mut buf)
        .with_context(|| format!("udp responder of {name} died before it started"))?;
    let server = i32::from_ne_bytes(buf);
    std::fs::write(pid_file, format!("{server}\n"))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(server)
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        bail!("{what}: {}", io::Error::last_os_error());
    }
    Ok(())
}

fn setopt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, what: &str) -> Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a c_int, the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const one).cast(),
            size_of_val(&one) as u32,
        )
    };
    check(rc, what)
}

fn udp_socket(family: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket")?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// 0.0.0.0:port, reporting each datagram's destination (`IP_PKTINFO`).
fn socket4(port: u16) -> Result<OwnedFd> {
    let fd = udp_socket(libc::AF_INET)?;
    setopt(&fd, libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO")?;
    // SAFETY: all-zero is a valid sockaddr_in (0.0.0.0:0).
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    // SAFETY: `sa` is a sockaddr_in of the size given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), size_of_val(&sa) as u32) };
    check(rc, "bind 0.0.0.0")?;
    Ok(fd)
}

/// [::]:port, IPv6 only (IPv4 has its own socket), reporting destinations.
fn socket6(port: u16) -> Result<OwnedFd> {
    let fd = udp_socket(libc::AF_INET6)?;
    setopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")?;
    setopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO")?;
    // SAFETY: all-zero is a valid sockaddr_in6 ([::]:0).
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    // SAFETY: `sa` is a sockaddr_in6 of the size given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), size_of_val(&sa) as u32) };
    check(rc, "bind [::]")?;
    Ok(fd)
}

/// Everything the forked children need, prepared before the fork.
struct Daemon<'a> {
    ns: RawFd,
    devnull: RawFd,
    report: RawFd,
    socks: [RawFd; 2],
    reply: &'a [u8],
    comm: &'a CString,
}

impl Daemon<'_> {
    /// The children's whole life. Only system calls from here on.
    unsafe fn run(&self) -> ! {
        // SAFETY (whole body): raw system calls on descriptors and buffers that
        // were valid at the fork and are owned by this process now.
        unsafe {
            // A session of its own: no terminal, no signals from the starter's group.
            libc::setsid();
            match libc::fork() {
                0 => {}
                -1 => libc::_exit(1),
                _ => libc::_exit(0),
            }
            // Live in the node's namespace too, so `ip netns pids` lists us.
            if libc::setns(self.ns, libc::CLONE_NEWNET) != 0 {
                libc::_exit(1);
            }
            libc::prctl(libc::PR_SET_NAME, self.comm.as_ptr());
            libc::chdir(c"/".as_ptr());
            // The starter may have handlers (a demo's Ctrl-C): `down` must be able to TERM us.
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut none: libc::sigset_t = mem::zeroed();
            libc::sigemptyset(&raw mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &raw const none, ptr::null_mut());
            // Hold none of the starter's descriptors (a test's output pipe would
            // keep `cargo test` waiting; a BPF fd would keep a program alive).
            for std in 0..3 {
                libc::dup2(self.devnull, std);
            }
            let mut keep = [self.socks[0], self.socks[1], self.report];
            keep.sort_unstable();
            let mut from = 3;
            for k in keep {
                close_range(from, k - 1);
                from = k + 1;
            }
            close_range(from, libc::c_int::MAX);
            let pid = libc::getpid().to_ne_bytes();
            libc::write(self.report, pid.as_ptr().cast(), pid.len());
            libc::close(self.report);
            serve(self.socks, self.reply)
        }
    }
}

/// Closes `lo..=hi` (nothing when empty).
unsafe fn close_range(lo: libc::c_int, hi: libc::c_int) {
    if lo <= hi {
        // SAFETY: closing descriptors this process no longer needs.
        unsafe { libc::syscall(libc::SYS_close_range, lo.cast_unsigned(), hi.cast_unsigned(), 0) };
    }
}

unsafe fn serve(socks: [RawFd; 2], reply: &[u8]) -> ! {
    let mut pfd = socks.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    loop {
        // SAFETY: `pfd` holds two pollfds.
        if unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) } <= 0 {
            continue; // EINTR
        }
        for p in &pfd {
            if p.revents & libc::POLLIN != 0 {
                // SAFETY: `p.fd` is one of our sockets.
                unsafe { answer(p.fd, reply) };
            }
        }
    }
}

/// Reads one datagram and answers it from the address it was sent to: the
/// received PKTINFO is turned into the one sendmsg takes as the source.
// CMSG_DATA is a byte pointer; the pktinfo behind it is only read and written unaligned.
#[allow(clippy::cast_ptr_alignment)]
unsafe fn answer(fd: RawFd, reply: &[u8]) {
    let mut buf = [0u8; 2048];
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 32];
    // SAFETY (whole body): msghdr, iovec and cmsg pointers all point into the
    // locals above, with their true sizes.
    unsafe {
        let mut peer: libc::sockaddr_storage = mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&raw mut peer).cast();
        msg.msg_namelen = size_of_val(&peer) as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        if libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) < 0 {
            return;
        }
        let mut source: *mut libc::cmsghdr = ptr::null_mut();
        let mut source_len = 0;
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let data = libc::CMSG_DATA(c).cast::<libc::in_pktinfo>();
                let mut info = data.read_unaligned();
                info.ipi_spec_dst = info.ipi_addr;
                info.ipi_ifindex = 0;
                data.write_unaligned(info);
                source = c;
                source_len = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
                break;
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let data = libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>();
                let mut info = data.read_unaligned();
                info.ipi6_ifindex = 0;
                data.write_unaligned(info);
                source = c;
                source_len = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
                break;
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
        let mut out =
            libc::iovec { iov_base: reply.as_ptr().cast_mut().cast(), iov_len: reply.len() };
        msg.msg_iov = &raw mut out;
        msg.msg_control = source.cast();
        msg.msg_controllen = source_len;
        msg.msg_flags = 0;
        libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT);
    }
}
