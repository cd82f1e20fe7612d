//! The admin socket as other users meet it: `xdplb status` and `xdplb drain` run as
//! another uid against a server whose `admin_group` is that user's group. Needs
//! root (to run the CLI as another user); skips otherwise, fails under CI=true.
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use lb_userspace::{
    access::{self, Access},
    admin::{self, Response},
};

/// A world-traversable directory for the socket, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `xdplb ARGS --socket SOCKET` as `uid`/`gid` (no supplementary groups):
/// (success, stdout and stderr).
fn xdplb_as(uid: u32, gid: u32, socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdplb"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_admin_group_may_read_status_and_nothing_else_and_strangers_cannot_connect() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root under CI");
        eprintln!("SKIPPED: running the CLI as another user needs root");
        return;
    }
    let dir = Dir(std::env::temp_dir().join(format!("xdplb-admin-access-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.0.join("admin.sock");
    let nobody = 65_534;
    let ops = access::group_id("nogroup").unwrap_or(65_534);
    let rules = Access { status_group: Some(ops), ..Access::owner_only() };
    let listener = admin::bind(&socket, &rules).unwrap();
    tokio::spawn(admin::serve(listener, rules, |request| async move {
        Response::Ok(format!("did {}", request.name()))
    }));
    let socket2 = socket.clone();
    let run = move |uid, gid, args: &'static [&'static str]| {
        let socket = socket2.clone();
        tokio::task::spawn_blocking(move || xdplb_as(uid, gid, &socket, args))
    };

    let (ok, text) = run(nobody, ops, &["status"]).await.unwrap();
    assert!(ok && text.contains("did status"), "a member reads status: {text}");
    let (ok, text) = run(nobody, ops, &["drain", "web", "waf-1"]).await.unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("permission denied: uid {nobody} may not `drain`")),
        "a member may not drain: {text}"
    );
    let (ok, text) = run(nobody, ops, &["reload"]).await.unwrap();
    assert!(!ok && text.contains("permission denied"), "{text}");
    // Not in the group: the socket's mode keeps it from connecting at all.
    let (ok, text) = run(nobody, 12_345, &["status"]).await.unwrap();
    assert!(!ok && text.contains("Permission denied"), "a stranger cannot connect: {text}");
    // Root may do everything.
    let (ok, text) = run(0, 0, &["drain", "web", "waf-1"]).await.unwrap();
    assert!(ok && text.contains("did drain"), "{text}");
}
