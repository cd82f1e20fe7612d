//! Running the lab's commands: every failure names the command line and carries
//! its stderr, so a broken `lab up` says what broke.

use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// The command line as a shell would show it.
#[must_use]
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A command from its argument vector (`args[0]` is the program).
#[must_use]
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(args.first().copied().unwrap_or("true"));
    c.args(args.iter().skip(1));
    c
}

/// `args` run inside network namespace `ns` (`ip netns exec`).
#[must_use]
pub fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Runs `cmd` to completion and returns its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{}`", show(cmd)))
}

/// Runs `cmd`; returns its stdout, or fails with the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `run` on an argument vector.
pub fn sh(args: &[&str]) -> Result<String> {
    run(&mut cmd(args))
}

/// `run` inside a namespace.
pub fn ns_sh(ns: &str, args: &[&str]) -> Result<String> {
    run(&mut in_ns(ns, args))
}

/// Runs `cmd` for its effect where failure is expected and harmless (removing
/// what may not exist); true when it succeeded.
pub fn quietly(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
