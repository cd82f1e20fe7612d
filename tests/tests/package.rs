//! The Debian package as an operator installs it, and its systemd unit's privileges
//! in the lab. systemd is not PID 1 on the test machines, so the unit's user,
//! capabilities and file-system view are applied the way systemd would (setpriv,
//! a private mount namespace), read from the installed unit file itself: the
//! packaged `xdplb` then loads, attaches, balances, fails over, reloads and
//! restarts as the unprivileged `xdplb` user; without any one of its capabilities
//! it stops at once, naming the missing one.
//!
//! Needs `cargo xtask package` first (`cargo xtask test` does it) and root.

#![allow(clippy::unwrap_used, reason = "test helpers panic with the failing value")]
#![allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xdplb_tests::{
    daemon::Daemon,
    lab::{self, LabConfig, LabGuard, Mode, NS_CLIENT, NS_LB, in_netns},
    privilege::have_root,
    rig::{self, Checks, states, web4},
    traffic::http_once,
};

const UNIT: &str = "/usr/lib/systemd/system/xdplb.service";
const BACKEND_UNIT: &str = "/usr/lib/systemd/system/xdplb-backend.service";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The newest `target/debian/xdplb_*.deb`, or None (skip) outside CI.
fn deb() -> Option<PathBuf> {
    let dir = workspace().join("target/debian");
    let newest = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("xdplb_") && n.ends_with(".deb")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    if newest.is_none() {
        // Fails under CI=true; counted by `cargo xtask test` otherwise.
        lb_userspace::skip::skip(
            "package",
            &format!("no package in {} (cargo xtask package builds it)", dir.display()),
        );
    }
    newest
}

fn sh(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn sh_ok(program: &str, args: &[&str]) -> String {
    let (ok, out) = sh(program, args);
    assert!(ok, "`{program} {}` failed:\n{out}", args.join(" "));
    out
}

#[test]
fn lintian_finds_no_errors_in_the_package() {
    if !have_root("lintian on the package") {
        return;
    }
    let Some(deb) = deb() else { return };
    let (ok, out) =
        sh("lintian", &["--fail-on", "error", "--no-tag-display-limit", &deb.to_string_lossy()]);
    assert!(ok, "lintian reports errors in {}:\n{out}", deb.display());
    assert!(!out.lines().any(|l| l.starts_with("E: ")), "{out}");
    eprintln!("lintian: {} warnings/notes\n{out}", out.lines().count());
}

/// The `[Service]` settings of a unit file, every value of a repeated key in order.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            map.entry(k.trim().to_owned()).or_default().push(v.trim().to_owned());
        }
    }
    map
}

/// How systemd would start the unit's ExecStart, as root-run wrappers: a private
/// mount namespace where `TemporaryFileSystem=` hides what `BindPaths=` does not
/// bring back, then setpriv with the unit's user, groups, capabilities and
/// no-new-privileges, then the command with `config` for the unit's config.
struct Sandbox {
    user: String,
    caps: Vec<String>,
    no_new_privs: bool,
    umask: String,
    tmpfs: Vec<String>,
    binds: Vec<String>,
    exec_start: Vec<String>,
}

impl Sandbox {
    fn from_unit(text: &str) -> Self {
        let s = unit_settings(text);
        let one = |k: &str| {
            s.get(k)
                .and_then(|v| v.last())
                .cloned()
                .unwrap_or_else(|| panic!("{k}= missing in the unit"))
        };
        let words = |k: &str| -> Vec<String> {
            s.get(k)
                .into_iter()
                .flatten()
                .flat_map(|v| v.split_whitespace().map(str::to_owned))
                .collect()
        };
        let ambient = words("AmbientCapabilities");
        assert_eq!(ambient, words("CapabilityBoundingSet"), "ambient and bounding sets differ");
        assert_eq!(one("User"), one("Group"));
        Self {
            user: one("User"),
            caps: ambient,
            no_new_privs: one("NoNewPrivileges") == "yes",
            umask: one("UMask"),
            tmpfs: words("TemporaryFileSystem")
                .into_iter()
                .map(|t| t.split(':').next().unwrap_or_default().to_owned())
                .collect(),
            binds: words("BindPaths"),
            exec_start: one("ExecStart").split_whitespace().map(str::to_owned).collect(),
        }
    }

    /// The unit's ExecStart with `caps` instead of its capabilities and `config` for
    /// its config file, in namespace `ns`.
    fn command(&self, caps: &[String], config: &Path) -> Command {
        let stash = Path::new(lab::LAB_DIR).join("pkg-stash");
        let mut script = String::from("set -e\n");
        for t in &self.tmpfs {
            let under: Vec<&String> =
                self.binds.iter().filter(|b| Path::new(b).starts_with(t)).collect();
            for (i, b) in under.iter().enumerate() {
                let _ =
                    writeln!(script, "mkdir -p {0}/{i}; mount --bind {b} {0}/{i}", stash.display());
            }
            let _ = writeln!(script, "mount -t tmpfs -o mode=0755 tmpfs {t}");
            for (i, b) in under.iter().enumerate() {
                let _ = writeln!(script, "mkdir -p {b}; mount --move {}/{i} {b}", stash.display());
            }
            let _ = writeln!(script, "mount -o remount,ro {t}");
        }
        let set: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.to_lowercase().trim_start_matches("cap_")))
            .collect();
        let set = if set.is_empty() { String::new() } else { format!(",{}", set.join(",")) };
        let _ = write!(
            script,
            "umask {}\nexec setpriv --reuid={u} --regid={u} --init-groups --inh-caps=-all{set} --ambient-caps=-all{set} --bounding-set=-all{set}{nnp} -- \"$@\"\n",
            self.umask,
            u = self.user,
            nnp = if self.no_new_privs { " --no-new-privs" } else { "" },
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"]);
        for a in &self.exec_start {
            c.arg(if a == "/etc/xdplb/xdplb.yaml" {
                config.to_string_lossy().into_owned()
            } else {
                a.clone()
            });
        }
        c
    }
}

fn uid_of(user: &str) -> u32 {
    sh_ok("id", &["-u", user]).trim().parse().expect("a uid")
}

/// The `Uid:`, `CapEff:` and `NoNewPrivs:` lines of a process.
fn proc_status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_owned(), v.trim().to_owned())))
        .collect()
}

fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "CAP_NET_ADMIN" => 12,
            "CAP_SYS_ADMIN" => 21,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("unexpected capability {other} in the unit"),
        })
        .fold(0, |m, bit| m | 1 << bit)
}

/// Runs the unit's ExecStartPre= lines that run privileged ("+"), as systemd does.
fn exec_start_pre(unit: &str) {
    for pre in unit_settings(unit).get("ExecStartPre").into_iter().flatten() {
        let cmd = pre
            .strip_prefix('+')
            .unwrap_or_else(|| panic!("unprivileged ExecStartPre {pre}: not emulated"));
        let words: Vec<&str> = cmd.split_whitespace().collect();
        sh_ok(words[0], &words[1..]);
    }
}

/// Installs the package (again), returning whether it was installed before.
fn install(deb: &Path) -> bool {
    let before =
        sh("dpkg-query", &["-W", "-f", "${Status}", "xdplb"]).1.contains("install ok installed");
    let path = deb.canonicalize().expect("package path");
    let out = Command::new("apt-get")
        .args(["install", "-y", "--reinstall", "--no-install-recommends"])
        .arg(&path)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("apt-get");
    assert!(
        out.status.success(),
        "apt-get install {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    before
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_installed_unit_runs_xdplb_unprivileged_and_it_balances_fails_over_and_reloads() {
    if !have_root("installing the package and running it in the lab") {
        return;
    }
    let Some(deb) = deb() else { return };
    let was_installed = install(&deb);

    // What the package put in place.
    let user = "xdplb";
    let uid = uid_of(user);
    assert_ne!(uid, 0);
    let seed = std::fs::metadata("/etc/xdplb/hash-seed")
        .expect("the postinst writes /etc/xdplb/hash-seed");
    assert_eq!(seed.mode() & 0o777, 0o640, "the seed is secret");
    assert_eq!(seed.uid(), 0);
    let seed_text = std::fs::read_to_string("/etc/xdplb/hash-seed").unwrap();
    assert!(
        seed_text.trim().len() == 32 && seed_text.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{seed_text:?}"
    );
    sh_ok("/usr/bin/xdplb", &["check-config", "/etc/xdplb/xdplb.yaml"]);
    for unit in [UNIT, BACKEND_UNIT] {
        let (ok, out) = sh("systemd-analyze", &["verify", unit]);
        assert!(ok && out.trim().is_empty(), "systemd-analyze verify {unit}:\n{out}");
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let sandbox = Sandbox::from_unit(&unit);
    assert_eq!(sandbox.user, user);
    assert_eq!(sandbox.exec_start[0], "/usr/bin/xdplb", "the packaged binary");

    let lab = LabGuard::up(&LabConfig { mode: Mode::Dsr, wafs: 3, ha: None }).unwrap();
    // The config: the lab's, with the unit's pin directory and admin socket.
    let dir = Path::new(lab::LAB_DIR).join("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    let text = rig::config_text(
        Mode::Dsr,
        3,
        &Checks { interval: Some("100ms"), timeout: Some("80ms"), ..Checks::default() },
        &[],
    );
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("pin_path:") {
                "pin_path: /sys/fs/bpf/xdplb".to_owned()
            } else if l.starts_with("admin_socket:") {
                "admin_socket: /run/xdplb/admin.sock".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let config = dir.join("xdplb.yaml");
    std::fs::write(&config, &text).unwrap();
    // RuntimeDirectory=xdplb, RuntimeDirectoryMode=0750, owned by the user.
    let _ = std::fs::remove_dir_all("/run/xdplb");
    sh_ok("install", &["-d", "-o", user, "-g", user, "-m", "0750", "/run/xdplb"]);
    exec_start_pre(&unit);
    let pins = Path::new("/sys/fs/bpf/xdplb");
    assert_eq!(
        std::fs::metadata(pins).unwrap().uid(),
        uid,
        "ExecStartPre= gives the pin directory to the user"
    );

    let start = |config: &Path| {
        Daemon::spawn(
            NS_LB,
            sandbox.command(&sandbox.caps, config),
            config,
            Path::new("/run/xdplb/admin.sock"),
            rig::METRICS.parse().unwrap(),
        )
        .unwrap()
    };
    let all_up = |d: &Daemon, n: usize| {
        d.wait_until(&format!("{n} backends up"), Duration::from_secs(20), |d| {
            d.status().is_ok_and(|s| states(&s).iter().filter(|(_, _, st)| st == "up").count() == n)
        })
        .unwrap();
    };
    let mut daemon = start(&config);
    all_up(&daemon, 12);

    // Not root: the unit's user, exactly its capabilities, no new privileges.
    let st = proc_status(daemon.pid().unwrap());
    assert!(st["Uid"].split_whitespace().all(|u| u == uid.to_string()), "{st:?}");
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&st[set], 16).unwrap(),
            cap_mask(&sandbox.caps),
            "{set}: {st:?}"
        );
    }
    assert_eq!(st["NoNewPrivs"], "1");
    for pin in ["link", "maps"] {
        assert_eq!(
            std::fs::metadata(pins.join(pin)).unwrap().uid(),
            uid,
            "{pin} pinned by the user"
        );
    }

    // Balances: requests through the VIP reach every node.
    let answers = |n: usize| -> Vec<String> {
        in_netns(Some(NS_CLIENT), || {
            Ok((0..n)
                .map(|_| {
                    http_once(web4(), Duration::from_secs(1)).unwrap_or_else(|f| format!("{f:?}"))
                })
                .collect())
        })
        .unwrap()
    };
    let spread = answers(60);
    for k in 1..=3 {
        assert!(spread.contains(&format!("waf{k}")), "waf{k} got none of {spread:?}");
    }

    // Fails over: waf2 stops, it goes down, and no request fails after that.
    lab.stop_waf(2).unwrap();
    daemon
        .wait_until("waf2 down", Duration::from_secs(5), |d| {
            d.status().is_ok_and(|s| {
                states(&s).iter().any(|(v, b, st)| v == "web4" && b == "waf2" && st == "down")
            })
        })
        .unwrap();
    let after = answers(40);
    assert!(after.iter().all(|a| a == "waf1" || a == "waf3"), "after failover: {after:?}");
    lab.start_waf(2).unwrap();
    all_up(&daemon, 12);

    // Reloads through the unit's ExecReload= (SIGHUP): waf3 leaves every VIP.
    let reloaded: String =
        text.lines().filter(|l| !l.contains("name: waf3")).flat_map(|l| [l, "\n"]).collect();
    std::fs::write(&config, reloaded).unwrap();
    let reload = unit_settings(&unit)["ExecReload"][0]
        .replace("$MAINPID", &daemon.pid().unwrap().to_string());
    let words: Vec<&str> = reload.split_whitespace().collect();
    sh_ok(words[0], &words[1..]);
    daemon
        .wait_until("waf3 gone after the reload", Duration::from_secs(5), |d| {
            d.status().is_ok_and(|s| !s.contains("waf3") && states(&s).len() == 8)
        })
        .unwrap();
    let (code, metrics) = daemon.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("xdplb_config_reloads_total{result=\"ok\"} 1"), "{metrics}");

    // Restarts as the user, adopting the maps and link it pinned.
    let log = daemon.stop().unwrap();
    assert!(!log.contains("ERROR"), "{log}");
    let daemon2 = start(&config);
    all_up(&daemon2, 8);
    assert!(daemon2.log_text().contains("adopting the pinned maps"), "{}", daemon2.log_text());
    drop(daemon2);

    // Without any one of its capabilities it stops at once, naming that one.
    for missing in &sandbox.caps {
        let fewer: Vec<String> = sandbox.caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut c = sandbox.command(&fewer, &config);
        lab::exec_in_netns(&mut c, NS_LB).unwrap();
        let t = Instant::now();
        let out = c.stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without {missing}: {err}");
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?} to stop", t.elapsed());
        assert!(err.contains(&format!("lacks {missing} (")), "without {missing}: {err}");
        eprintln!("without {missing}: {}", err.trim());
    }

    sh_ok("/usr/bin/xdplb", &["detach", "--pin-path", "/sys/fs/bpf/xdplb"]);
    let _ = std::fs::remove_dir_all("/run/xdplb");
    drop(lab);
    wait("the lab's namespaces gone", Duration::from_secs(5), || !lab::ns_path(NS_LB).exists());
    if !was_installed {
        sh_ok("apt-get", &["purge", "-y", "xdplb"]);
    }
}
