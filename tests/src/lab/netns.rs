//! Entering a lab namespace from Rust, and attaching XDP programs that outlive
//! the process that attached them.
//!
//! aya 0.14 always attaches XDP with a `bpf_link` when the kernel has them (it
//! falls back to netlink only on EINVAL, and offers no way to ask for netlink), and
//! a `bpf_link` is detached when its last fd closes. So every link is pinned under
//! [`PIN_DIR`](super::PIN_DIR) on the host's bpffs: the pin keeps it, `down`
//! unpins it. Namespaces are entered with `setns(CLONE_NEWNET)` only, so the mount
//! namespace, and with it `/sys/fs/bpf`, stays the host's.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, links::FdLink},
};
use lb_userspace::objects;

/// Where `ip netns add` leaves the namespace handle.
#[must_use]
pub fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{ns}"))
}

/// Makes `cmd` start in network namespace `ns`: `setns(CLONE_NEWNET)` between fork
/// and exec, so its mounts (the host's bpffs among them) stay the caller's, unlike
/// `ip netns exec`'s.
pub fn exec_in_netns(cmd: &mut std::process::Command, ns: &str) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let path = ns_path(ns);
    let file = File::open(&path)
        .with_context(|| format!("namespace {ns}: cannot open {}", path.display()))?;
    // SAFETY: setns is async-signal-safe; it only changes the child's namespace. The
    // closure owns the file, so the descriptor lives as long as the command.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread whose network namespace is `ns` (`None`: the
/// caller's). The namespace is per thread, so the caller's own stays untouched.
pub fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let handle = match ns {
        Some(ns) => {
            let path = ns_path(ns);
            Some(
                File::open(&path)
                    .with_context(|| format!("namespace {ns}: cannot open {}", path.display()))?,
            )
        }
        None => None,
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(h) = handle {
                // SAFETY: `h` is an open namespace file; setns only changes this thread.
                if unsafe { libc::setns(h.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns into {}: {}", ns.unwrap_or("?"), io::Error::last_os_error());
                }
            }
            f()
        })
        .join()
        .map_err(|_| {
            anyhow!("the thread working in namespace {} panicked", ns.unwrap_or("(root)"))
        })?
    })
}

/// Which XDP program an interface gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdpProg {
    /// `xdp_pass` from `xdp-tools`: makes a veth accept `XDP_TX`'d and redirected frames.
    /// (WAF nodes in ipip mode get `xdp_decap` from `xdplb backend-setup` instead.)
    Pass,
}

impl XdpProg {
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pass => "xdp_pass",
        }
    }
}

/// Loads `prog`, attaches it in driver mode to `ifname` in namespace `ns` and pins
/// the link at `pin`, so it stays attached after this process exits.
pub fn attach_pinned(ns: Option<&str>, ifname: &str, prog: &XdpProg, pin: &Path) -> Result<()> {
    let what = format!("{} on {ifname} in {}", prog.name(), ns.unwrap_or("the root namespace"));
    in_netns(ns, || {
        let mut ebpf = Ebpf::load(objects::XDP_TOOLS).context("loading the object")?;
        let p: &mut Xdp =
            ebpf.program_mut(prog.name()).context("program not in the object")?.try_into()?;
        p.load().context("loading the program")?;
        let id = p.attach(ifname, XdpMode::Driver).context("attaching in driver mode")?;
        // A netlink attachment (the fallback) would not be an FdLink: it cannot be
        // pinned, and aya would detach it when `ebpf` drops.
        let link = FdLink::try_from(p.take_link(id)?).context("attached without a bpf_link")?;
        // The returned PinnedLink only closes our fd when dropped; the pin holds the link.
        link.pin(pin).with_context(|| format!("pinning the link at {}", pin.display()))?;
        Ok(())
    })
    .with_context(|| what)
}
