//! Who may use the admin socket. Two layers: the socket file's mode and group
//! (who can connect at all; set before the file appears at its path), and each
//! request checked against the peer's credentials as the kernel reports them
//! (`SO_PEERCRED`, `SO_PEERGROUPS`), which the peer cannot forge.
//!
//! The rules: root (uid 0) and the user the daemon runs as (the packaged unit
//! runs it as `xdplb`, with capabilities rather than as root) may do everything;
//! members of the config's `admin_group` may read `status` only (the socket is
//! then mode 0660 in that group, else 0600); anyone else is refused.

use std::{ffi::CString, io, os::fd::AsRawFd};

use crate::admin::Request;

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups (not in libc's
/// Linux constants).
const SO_PEERGROUPS: libc::c_int = 59;

/// Who may do what over the admin socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The daemon's own user: allowed everything, as root is.
    pub owner: u32,
    /// Members of this group may read `status`.
    pub status_group: Option<u32>,
}

/// The peer of a connection, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Access {
    /// Only root and the daemon's own user (`geteuid`).
    #[must_use]
    pub fn owner_only() -> Self {
        // SAFETY: geteuid has no preconditions.
        Self { owner: unsafe { libc::geteuid() }, status_group: None }
    }

    /// The socket file's mode: group-accessible only when a group may read `status`.
    #[must_use]
    pub fn mode(&self) -> u32 {
        if self.status_group.is_some() { 0o660 } else { 0o600 }
    }

    /// Whether `peer` may make `request`; the error is the answer it gets.
    pub fn allows(&self, peer: &Peer, request: &Request) -> Result<(), String> {
        if peer.uid == 0 || peer.uid == self.owner {
            return Ok(());
        }
        let member = self.status_group.is_some_and(|g| peer.gid == g || peer.groups.contains(&g));
        if member && *request == Request::Status {
            return Ok(());
        }
        let what = request.name();
        let group = match self.status_group {
            Some(g) if member => {
                format!("; members of group {g} (admin_group) may only read `status`")
            }
            Some(g) => format!("; `status` also to members of group {g} (admin_group)"),
            None => String::new(),
        };
        Err(format!(
            "permission denied: uid {} may not `{what}`: only root and the user xdplb runs as \
             (uid {}) may{group}",
            peer.uid, self.owner
        ))
    }
}

/// The peer of a connected Unix socket.
pub fn peer(socket: &impl AsRawFd) -> io::Result<Peer> {
    let fd = socket.as_raw_fd();
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the option value points at a ucred of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer { uid: cred.uid, gid: cred.gid, groups: peer_groups(fd).unwrap_or_default() })
}

/// The peer's supplementary groups (`SO_PEERGROUPS`).
fn peer_groups(fd: libc::c_int) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: `len` now says how much is needed.
        if err.raw_os_error() != Some(libc::ERANGE) || groups.len() >= 65_536 {
            return Err(err);
        }
        groups.resize((len as usize / size_of::<libc::gid_t>()).max(groups.len() * 2), 0);
    }
}

/// The id of group `name` (a name, or a number), from the system's group database.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| format!("group name {name:?} contains NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: group is filled by getgrnam_r from `buf`, which outlives its use.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes passed.
    let rc = unsafe {
        libc::getgrnam_r(c.as_ptr(), &raw mut group, buf.as_mut_ptr(), buf.len(), &raw mut found)
    };
    if rc != 0 {
        return Err(format!("looking up group {name}: {}", io::Error::from_raw_os_error(rc)));
    }
    if found.is_null() {
        return Err(format!("no group named `{name}` on this host"));
    }
    Ok(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: u32 = 998;
    const OPS: u32 = 1500;

    fn access(group: Option<u32>) -> Access {
        Access { owner: OWNER, status_group: group }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer { uid, gid, groups: groups.to_vec() }
    }

    fn drain() -> Request {
        Request::Drain { vip: "web".into(), backend: "waf-1".into() }
    }

    #[test]
    fn root_and_the_daemons_own_user_may_do_everything() {
        for a in [access(None), access(Some(OPS))] {
            for uid in [0, OWNER] {
                for r in [Request::Status, drain(), Request::Reload] {
                    assert_eq!(a.allows(&peer(uid, 100, &[]), &r), Ok(()), "uid {uid} {r:?}");
                }
            }
        }
    }

    #[test]
    fn members_of_admin_group_may_read_status_only() {
        let a = access(Some(OPS));
        let by_primary = peer(1000, OPS, &[]);
        let by_supplementary = peer(1001, 100, &[27, OPS]);
        for p in [&by_primary, &by_supplementary] {
            assert_eq!(a.allows(p, &Request::Status), Ok(()));
            let err = a.allows(p, &drain()).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "permission denied: uid {} may not `drain`: only root and the user xdplb runs \
                     as (uid 998) may; members of group 1500 (admin_group) may only read `status`",
                    p.uid
                )
            );
            assert!(a.allows(p, &Request::Reload).is_err());
        }
    }

    #[test]
    fn anyone_else_is_refused_even_status() {
        let stranger = peer(1000, 100, &[27]);
        assert!(access(None).allows(&stranger, &Request::Status).is_err());
        let err = access(Some(OPS)).allows(&stranger, &Request::Status).unwrap_err();
        assert!(
            err.ends_with("may; `status` also to members of group 1500 (admin_group)"),
            "{err}"
        );
    }

    #[test]
    fn the_socket_is_group_accessible_only_with_an_admin_group() {
        assert_eq!(access(None).mode(), 0o600);
        assert_eq!(access(Some(OPS)).mode(), 0o660);
    }

    #[test]
    fn groups_are_found_by_name_or_number() {
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(group_id("4242"), Ok(4242));
        assert_eq!(
            group_id("no-such-group-xdplb"),
            Err("no group named `no-such-group-xdplb` on this host".into())
        );
    }

    #[test]
    fn a_connected_peer_is_ourselves() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let me = super::peer(&a).expect("peer credentials");
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((me.uid, me.gid), (uid, gid));
    }
}
