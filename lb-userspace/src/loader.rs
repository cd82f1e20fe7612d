//! Loading `xdp-lb`, pinning its maps and its XDP link under the pin directory,
//! and adopting them after a restart: a restarted `xdplb run` finds the pinned
//! maps (with the connection table and rings the old process wrote) and swaps its
//! program into the pinned link atomically, so established flows never stop.

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};

use lb_common::{flow_table::WAYS, map_names};

use crate::{conn_table, maps::BpfMaps, netlink, objects, pins, privileges, stats::BpfStats};

const PROGRAM: &str = "xdp_lb";
/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Held for as long as one `xdplb` owns a pin directory: an exclusive `flock` on
/// the directory itself (bpffs holds no regular files), released when the
/// process exits however it exits.
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

/// Takes the pin directory `pin_dir` for this process, creating it (and mounting
/// bpffs) if need be; fails at once, touching nothing, when another process
/// holds it: a second `xdplb run` must not swap its program into the running
/// one's link.
pub fn lock_pins(pin_dir: &Path) -> Result<PinLock> {
    ensure_bpffs(pin_dir)?;
    let dir = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            bail!(
                "another xdplb is running with pin_path {} (it holds that directory); \
                 stop it first, or give this one its own pin_path",
                pin_dir.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", pin_dir.display()));
    }
    Ok(PinLock { _dir: dir })
}

/// A loaded and attached balancer.
pub struct Loaded {
    pub attachment: Attachment,
    pub maps: BpfMaps,
    pub stats: BpfStats,
    /// The maps were already pinned: a previous controller filled them.
    pub adopted: bool,
}

/// The program and its place on the interface. Dropping it leaves the program
/// attached and the maps pinned: traffic keeps flowing with the last state
/// written, and the next `xdplb run` adopts it.
pub struct Attachment {
    /// The loaded program (for an adopted link, also the link's fd): kept while we run.
    _ebpf: Ebpf,
    /// Set when we created the link; an adopted link's fd belongs to the program.
    _link: Option<PinnedLink>,
    check: AttachCheck,
    /// Last: the pins stay ours until the program and link are closed.
    _lock: PinLock,
}

/// Whether our program is still the one attached, as the kernel reports it:
/// part of the balancer's own health (`/healthz`, `xdplb status`). Plain data,
/// so the health monitor checks without the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachCheck {
    pin_dir: PathBuf,
    interface: String,
    if_index: u32,
    mode: XdpMode,
    program_id: u32,
}

/// Where things are pinned under `pin_dir`.
pub(crate) fn maps_dir(pin_dir: &Path) -> PathBuf {
    pins::maps_dir(pin_dir)
}
pub(crate) fn link_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join("link")
}

/// Makes sure `dir` will be on bpffs, then creates it. Nothing to do when `dir` or
/// its nearest existing parent already is: under the systemd unit, `/sys/fs/bpf`
/// is a tmpfs holding only our bind-mounted pin directory, and mounting is not
/// allowed. Otherwise mounts bpffs on `/sys/fs/bpf` (not mounted at boot
/// everywhere; systemd does mount it).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new(BPF_ROOT);
    let on_bpffs = dir.ancestors().find(|p| p.exists()).is_some_and(is_bpffs);
    if !on_bpffs && dir.starts_with(root) && !is_bpffs(root) {
        let c = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
        let fstype = std::ffi::CString::new("bpf").expect("no NUL");
        // SAFETY: plain mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context(
                "mounting bpffs on /sys/fs/bpf (needs CAP_SYS_ADMIN: mount it first, as systemd does at boot)",
            );
        }
        log::info!("mounted bpffs on /sys/fs/bpf");
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0)
        && u64::try_from(st.f_type).ok() == Some(BPF_FS_MAGIC)
}

/// Loads the `xdp-lb` object with its maps pinned under `pin_dir/maps`, reusing
/// the pinned ones: the program then runs on the live state of a running (or
/// stopped) balancer. Not loaded into the kernel yet.
pub fn load_with_pinned_maps(pin_dir: &Path) -> Result<Ebpf> {
    load_pinned(pin_dir, None)
}

/// As [`load_with_pinned_maps`], creating missing connection tables for
/// `conn_tables` (the config's sizes; the object's defaults without them).
fn load_pinned(pin_dir: &Path, conn_tables: Option<conn_table::Configured>) -> Result<Ebpf> {
    let maps_dir = maps_dir(pin_dir);
    ensure_bpffs(&maps_dir)?;
    let mut loader = EbpfLoader::new();
    if let Some(tables) = conn_tables {
        for (name, entries) in tables.max_entries() {
            loader.map_max_entries(name, entries);
        }
    }
    let paths: Vec<(&str, PathBuf)> =
        pins::OBJECT_MAPS.iter().map(|m| (*m, maps_dir.join(m))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(objects::XDP_LB).map_err(|e| {
        anyhow!(e).context(format!(
            "loading xdp-lb with maps pinned in {} (if they come from an incompatible xdplb version, run `xdplb detach` first)",
            maps_dir.display()
        ))
    })
}

/// Loads `xdp-lb` with its maps pinned under `pin_dir/maps` (reusing pinned ones;
/// new connection tables get `conn_table`'s entries) and attaches it to
/// `interface` through a link pinned at `pin_dir/link` (replacing the program of
/// an existing link atomically).
pub fn load_and_attach(
    pin_dir: &Path,
    interface: &str,
    mode: XdpMode,
    conn_table: conn_table::Configured,
) -> Result<Loaded> {
    privileges::require("xdplb run", privileges::BALANCER)?;
    // First: a second `xdplb run` on these pins stops here, before it touches them.
    let lock = lock_pins(pin_dir)?;
    ensure_bpffs(&maps_dir(pin_dir))?;
    // Checked before aya reuses a single pin: a partial set, another layout
    // version or another size is refused with what to do.
    let size = conn_table::Size::on_this_host(conn_table)?;
    let survey = pins::survey(
        pin_dir,
        &[(map_names::FLOWS4, size.v4 / WAYS as u32), (map_names::CONNS, size.v6)],
    )?;
    let adopted = matches!(survey, pins::Survey::Adopt { .. });
    if let pins::Survey::Adopt { version: 1 } = survey {
        log::info!("adopting maps pinned by an xdplb from before layout versions (version 1)");
    }
    let mut ebpf = load_pinned(pin_dir, Some(conn_table))?;
    let maps = BpfMaps::take_from(&mut ebpf)?.with_flags(pins::backend_flags(pin_dir)?);
    // The set is complete: record which layout it has (last, see `pins`).
    pins::write_layout(pin_dir)?;
    let v6 = MapData::from_pin(pins::map_path(pin_dir, map_names::CONNS))
        .with_context(|| format!("opening the pinned connection table {}", map_names::CONNS))?;
    let tables = conn_table::Tables { v4: maps.flows4()?, v6 };
    let stats = BpfStats::take_from(&mut ebpf)?.counting(conn_table::Watch::spawn(
        tables,
        size,
        conn_table::INTERVAL,
    )?);
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("no program {PROGRAM} in the object"))?
        .try_into()?;
    prog.load().context("the kernel verifier rejected xdp_lb")?;

    let if_index = if_index(interface)?;
    let link = attach_pinned_link(prog, PROGRAM, interface, if_index, mode, &link_path(pin_dir))?;
    let program_id = prog.info().context("reading xdp_lb's program id")?.id();
    let check = AttachCheck {
        pin_dir: pin_dir.to_owned(),
        interface: interface.to_owned(),
        if_index,
        mode,
        program_id,
    };
    let attachment = Attachment { _ebpf: ebpf, _link: link, check, _lock: lock };
    Ok(Loaded { attachment, maps, stats, adopted })
}

/// Attaches `prog` (called `name` in messages) to `interface` in `mode` through a
/// BPF link pinned at `link_path`, so it stays attached after this process exits.
/// A link already pinned there, on that interface in that mode, gets `prog`
/// swapped in atomically (the interface never runs without a program) and `None`
/// is returned; otherwise the new link's pin. A pinned link on another interface
/// (the config moved) is replaced once `prog` runs on the new one; one in another
/// mode is detached first (an interface cannot run native and generic XDP at
/// once, so traffic takes the kernel's path for the moment between), and if the
/// new mode fails the old one is restored and the error says so.
pub(crate) fn attach_pinned_link(
    prog: &mut Xdp,
    name: &str,
    interface: &str,
    if_index: u32,
    mode: XdpMode,
    link_path: &Path,
) -> Result<Option<PinnedLink>> {
    if !link_path.exists() {
        return attach_new(prog, name, interface, if_index, mode, link_path).map(Some);
    }
    let pinned = PinnedLink::from_pin(link_path)
        .with_context(|| format!("opening the pinned link {}", link_path.display()))?;
    let fd: FdLink = pinned.into();
    let old_prog = fd.info().context("reading the pinned XDP link")?.program_id();
    let attached = netlink::xdp_attached().context("listing attached XDP programs")?;
    let found = attached.iter().find_map(|a| {
        let m = if a.driver == Some(old_prog) {
            XdpMode::Driver
        } else if a.skb == Some(old_prog) {
            XdpMode::Skb
        } else {
            return None;
        };
        Some((a.ifindex, a.name.clone(), m))
    });
    let shown = link_path.display();
    match found {
        Some((index, _, m)) if index == if_index && m == mode => {
            let xdp_link = XdpLink::try_from(fd).context("the pinned link is not an XDP link")?;
            prog.attach_to_link(xdp_link)
                .context("swapping our program into the pinned XDP link")?;
            log::info!("adopted the XDP link pinned at {shown}");
            // The link stays pinned; `prog` owns its fd now.
            Ok(None)
        }
        Some((index, old, _)) if index != if_index => {
            // The new interface first: the old one forwards until this one does.
            let link = attach(prog, name, interface, if_index, mode)?;
            remove_link_pin(link_path, fd)?;
            log::warn!(
                "{name} moved from {old} to {interface} (the config names another interface)"
            );
            pin_link(link, link_path).map(Some)
        }
        Some((_, _, old_mode)) => {
            remove_link_pin(link_path, fd)?;
            log::warn!(
                "{name} re-attached to {interface} in {mode:?} mode (was {old_mode:?}); \
                 packets took the kernel's path for the moment between"
            );
            match attach(prog, name, interface, if_index, mode) {
                Ok(link) => pin_link(link, link_path).map(Some),
                Err(e) => {
                    let link = attach(prog, name, interface, if_index, old_mode)?;
                    pin_link(link, link_path)?;
                    Err(e.context(format!(
                        "{name} is attached to {interface} in {old_mode:?} mode again; \
                         set xdp_mode back, or fix what keeps {mode:?} mode from working"
                    )))
                }
            }
        }
        None => {
            // The link's interface is gone (deleted, or recreated with another index).
            remove_link_pin(link_path, fd)?;
            log::info!("the XDP link pinned at {shown} was attached to no interface; replaced");
            attach_new(prog, name, interface, if_index, mode, link_path).map(Some)
        }
    }
}

/// Attaches `prog` through a new link and pins it at `link_path`.
fn attach_new(
    prog: &mut Xdp,
    name: &str,
    interface: &str,
    if_index: u32,
    mode: XdpMode,
    link_path: &Path,
) -> Result<PinnedLink> {
    let link = attach(prog, name, interface, if_index, mode)?;
    pin_link(link, link_path)
}

fn attach(
    prog: &mut Xdp,
    name: &str,
    interface: &str,
    if_index: u32,
    mode: XdpMode,
) -> Result<FdLink> {
    let id = prog.attach_to_if_index(if_index, mode).with_context(|| {
        format!("attaching {name} to {interface} ({mode:?} mode); is another XDP program attached?")
    })?;
    let link = prog.take_link(id)?;
    FdLink::try_from(link).map_err(|_| {
        anyhow!("the kernel attached {name} without a BPF link (netlink fallback); it could not be pinned")
    })
}

fn pin_link(link: FdLink, link_path: &Path) -> Result<PinnedLink> {
    link.pin(link_path).with_context(|| format!("pinning the XDP link at {}", link_path.display()))
}

/// Removes the pin of a link and closes our handle: the link detaches.
fn remove_link_pin(link_path: &Path, fd: FdLink) -> Result<()> {
    fs::remove_file(link_path).with_context(|| format!("removing {}", link_path.display()))?;
    drop(fd);
    Ok(())
}

pub(crate) fn if_index(interface: &str) -> Result<u32> {
    crate::interface::index(interface).ok_or_else(|| anyhow!("interface {interface} not found"))
}

impl Attachment {
    /// What tells whether this attachment still holds.
    #[must_use]
    pub fn check(&self) -> &AttachCheck {
        &self.check
    }

    /// Detaches the program and removes every pin, still holding the pin lock.
    pub fn detach(self) -> Result<()> {
        let Self { _ebpf: ebpf, _link: link, check, _lock: lock } = self;
        drop(link);
        drop(ebpf);
        let removed = remove_pins(&check.pin_dir);
        drop(lock);
        removed.map(drop)
    }
}

impl AttachCheck {
    /// Ok while this balancer can forward: the interface still exists, is up and
    /// has its lower layer (carrier), the pinned link runs our program, and the
    /// kernel reports our program attached to the interface in the configured
    /// mode. Otherwise why not.
    pub fn attached(&self) -> Result<(), String> {
        let name = &self.interface;
        match if_index(name) {
            Ok(i) if i == self.if_index => {}
            _ => return Err(format!("interface {name} is gone or was recreated")),
        }
        let link = PinnedLink::from_pin(link_path(&self.pin_dir))
            .map_err(|e| format!("XDP link pin missing: {e}"))?;
        let fd: FdLink = link.into();
        let info = fd.info().map_err(|e| format!("reading the XDP link: {e}"))?;
        let ours = self.program_id;
        if info.program_id() != ours {
            return Err(format!(
                "the XDP link runs program {} instead of ours ({ours})",
                info.program_id()
            ));
        }
        let state = netlink::link_state(self.if_index)
            .map_err(|e| format!("asking the kernel about {name}: {e:#}"))?;
        judge_link(name, self.mode, ours, &state)
    }
}

/// The kernel's view of the interface against what we attached.
fn judge_link(
    name: &str,
    mode: XdpMode,
    ours: u32,
    state: &netlink::LinkState,
) -> Result<(), String> {
    if !state.up {
        return Err(format!("interface {name} is down"));
    }
    if !state.lower_up {
        return Err(format!("interface {name} has no carrier"));
    }
    let (running, mode_name) = match mode {
        XdpMode::Skb => (state.xdp.skb, "skb"),
        XdpMode::Hardware => (state.xdp.hw, "hardware"),
        XdpMode::Driver | XdpMode::Default => (state.xdp.driver, "driver"),
    };
    match running {
        id if id == ours => Ok(()),
        0 => Err(format!("no XDP program runs on {name} in {mode_name} mode (ours is {ours})")),
        id => Err(format!("program {id} runs on {name} in {mode_name} mode, not ours ({ours})")),
    }
}

/// What [`detach`] or [`remove_pins`] found under a pin directory and removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removed {
    /// The pin directory existed.
    pub dir: bool,
    /// The XDP link pin was there (removing it detaches XDP once no process holds it).
    pub link: bool,
    /// How many map pins were there.
    pub maps: usize,
}

impl Removed {
    /// The line `xdplb detach` prints: what was found in `dir` and removed. An
    /// absent directory under an `/sys/fs/bpf` that is no bpffs (`ip netns exec`
    /// remounts /sys) is most likely not the operator's meaning of "nothing
    /// pinned": say so.
    #[must_use]
    pub fn describe(&self, dir: &Path, bpffs_root: bool) -> String {
        let d = dir.display();
        match (self.link, self.maps) {
            (true, n) if n > 0 => {
                format!("removed the pins in {d} (XDP detaches once no xdplb runs)")
            }
            (true, _) => format!(
                "removed the XDP link pin in {d} (no map pins were there; XDP detaches once no \
                 xdplb runs)"
            ),
            (false, n) if n > 0 => {
                format!(
                    "removed {n} map pins in {d} (no XDP link pin was there: nothing to detach)"
                )
            }
            _ if !self.dir && dir.starts_with(BPF_ROOT) && !bpffs_root => format!(
                "nothing pinned in {d}: nothing removed ({BPF_ROOT} is no bpffs here: under `ip \
                 netns exec`, which remounts /sys, the host's pins are out of sight; run `xdplb \
                 detach` outside it)"
            ),
            _ if !self.dir => format!("nothing pinned in {d}: nothing removed (no such directory)"),
            _ => format!("nothing pinned in {d}: nothing removed"),
        }
    }
}

const BPF_ROOT: &str = "/sys/fs/bpf";

/// Whether `/sys/fs/bpf` is a bpffs mount in this mount namespace.
#[must_use]
pub fn bpffs_root() -> bool {
    is_bpffs(Path::new(BPF_ROOT))
}

/// Removes the link pin (detaching XDP once no process holds it) and the map pins.
/// Refuses while a running `xdplb` holds the pin directory ([`lock_pins`]).
pub fn detach(pin_dir: &Path) -> Result<Removed> {
    if !pin_dir.exists() {
        return Ok(Removed::default());
    }
    let _lock = lock_pins(pin_dir)?;
    remove_pins(pin_dir)
}

/// Removes the link pin (detaching XDP once no process holds it) and the map pins.
pub fn remove_pins(pin_dir: &Path) -> Result<Removed> {
    let mut removed = Removed { dir: pin_dir.exists(), ..Removed::default() };
    let link = link_path(pin_dir);
    if link.exists() {
        fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        removed.link = true;
    }
    let maps = maps_dir(pin_dir);
    if maps.exists() {
        for m in fs::read_dir(&maps)? {
            let m = m?;
            fs::remove_file(m.path())
                .with_context(|| format!("removing {}", m.path().display()))?;
            removed.maps += 1;
        }
        fs::remove_dir(&maps)?;
    }
    if pin_dir.exists() && fs::read_dir(pin_dir)?.next().is_none() {
        fs::remove_dir(pin_dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{LinkState, XdpPrograms};

    #[test]
    fn detach_says_what_it_found_and_removed() {
        let say = |dir: bool, link: bool, maps: usize, bpffs: bool| {
            Removed { dir, link, maps }.describe(Path::new("/sys/fs/bpf/xdplb"), bpffs)
        };
        assert_eq!(
            say(true, true, 9, true),
            "removed the pins in /sys/fs/bpf/xdplb (XDP detaches once no xdplb runs)"
        );
        assert!(say(true, false, 9, true).starts_with("removed 9 map pins in /sys/fs/bpf/xdplb"));
        assert!(say(true, true, 0, true).starts_with("removed the XDP link pin in"));
        assert_eq!(
            say(true, false, 0, true),
            "nothing pinned in /sys/fs/bpf/xdplb: nothing removed"
        );
        assert_eq!(
            say(false, false, 0, true),
            "nothing pinned in /sys/fs/bpf/xdplb: nothing removed (no such directory)"
        );
        let netns = say(false, false, 0, false);
        assert!(
            netns.starts_with("nothing pinned in /sys/fs/bpf/xdplb: nothing removed"),
            "{netns}"
        );
        assert!(netns.contains("/sys/fs/bpf is no bpffs here"), "{netns}");
        assert!(netns.contains("ip netns exec"), "{netns}");
        // Elsewhere than under /sys/fs/bpf the mount there is no hint.
        let other = Removed::default().describe(Path::new("/run/pins"), false);
        assert_eq!(other, "nothing pinned in /run/pins: nothing removed (no such directory)");
    }

    fn state(up: bool, lower_up: bool, driver: u32, skb: u32) -> LinkState {
        LinkState { up, lower_up, xdp: XdpPrograms { driver, skb, hw: 0 } }
    }

    #[test]
    fn our_program_must_run_in_the_configured_mode_on_a_live_interface() {
        let judge = |mode, s: &LinkState| judge_link("eth0", mode, 42, s);
        assert_eq!(judge(XdpMode::Driver, &state(true, true, 42, 0)), Ok(()));
        assert_eq!(judge(XdpMode::Skb, &state(true, true, 0, 42)), Ok(()));
        assert_eq!(
            judge(XdpMode::Driver, &state(true, true, 0, 42)),
            Err("no XDP program runs on eth0 in driver mode (ours is 42)".into()),
            "attached, but in generic mode where driver mode was configured"
        );
        assert_eq!(
            judge(XdpMode::Driver, &state(true, true, 7, 0)),
            Err("program 7 runs on eth0 in driver mode, not ours (42)".into())
        );
        assert_eq!(
            judge(XdpMode::Driver, &state(false, false, 42, 0)),
            Err("interface eth0 is down".into())
        );
        assert_eq!(
            judge(XdpMode::Driver, &state(true, false, 42, 0)),
            Err("interface eth0 has no carrier".into())
        );
    }

    #[test]
    fn a_second_owner_of_a_pin_directory_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("xdplb-pinlock-{}", std::process::id()));
        let first = lock_pins(&dir).expect("the first takes it");
        let err = lock_pins(&dir).expect_err("the second is refused").to_string();
        assert!(err.starts_with("another xdplb is running with pin_path"), "{err}");
        assert!(detach(&dir).is_err(), "detach refuses while the pins are held");
        drop(first);
        let again = lock_pins(&dir).expect("free again");
        drop(again);
        fs::remove_dir(&dir).expect("cleanup");
    }
}
