//! A running `xdplb run` inside a network namespace, driven the way an operator
//! would: its admin socket, its metrics endpoint, its log.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use lb_userspace::admin::{self, Request, Response};

use crate::lab::{exec_in_netns, in_netns};

/// The `xdplb` binary next to this test's binary (`cargo xtask test` builds it first).
pub fn binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/xdplb
    let dirs = exe.ancestors().skip(1).take(2).map(Path::to_path_buf).collect::<Vec<_>>();
    dirs.iter().map(|d| d.join("xdplb")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no xdplb binary near {}: run `cargo build -p lb-userspace` (cargo xtask test does)",
            exe.display()
        )
    })
}

pub struct Daemon {
    child: Option<Child>,
    ns: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `xdplb run --config CONFIG` in namespace `ns` (network namespace
    /// only, so the host's bpffs stays visible and pins outlive the process).
    pub fn start(
        ns: &str,
        config: &Path,
        socket: &Path,
        metrics: SocketAddr,
        extra: &[&str],
    ) -> Result<Self> {
        let mut cmd = Command::new(binary()?);
        cmd.args(["run", "--config"]).arg(config).args(extra);
        Self::spawn(ns, cmd, config, socket, metrics)
    }

    /// Starts `cmd` (an `xdplb run` for `config`, perhaps behind a wrapper that drops
    /// privileges) in namespace `ns`, logging to the config's `.log` file.
    pub fn spawn(
        ns: &str,
        mut cmd: Command,
        config: &Path,
        socket: &Path,
        metrics: SocketAddr,
    ) -> Result<Self> {
        let log = config.with_extension("log");
        let out = File::create(&log)?;
        cmd.stdout(out.try_clone()?).stderr(out).stdin(Stdio::null());
        exec_in_netns(&mut cmd, ns)?;
        let child = cmd.spawn().context("starting xdplb")?;
        Ok(Self {
            child: Some(child),
            ns: ns.to_owned(),
            config: config.to_owned(),
            socket: socket.to_owned(),
            metrics,
            log,
        })
    }

    pub fn admin(&self, req: &Request) -> Result<Response> {
        admin::call(&self.socket, req)
    }

    /// `xdplb status` text, whether the balancer is healthy or not.
    pub fn status(&self) -> Result<String> {
        match self.admin(&Request::Status)? {
            Response::Ok(s) | Response::Failing(s) => Ok(s),
            Response::Error(e) => bail!("status: {e}"),
        }
    }

    /// `xdplb status` text if the balancer is healthy; its `health:` line if not.
    pub fn healthy_status(&self) -> Result<String> {
        match self.admin(&Request::Status)? {
            Response::Ok(s) => Ok(s),
            Response::Failing(s) => {
                bail!("{}", s.lines().find(|l| l.starts_with("health:")).unwrap_or("unhealthy"))
            }
            Response::Error(e) => bail!("status: {e}"),
        }
    }

    /// Polls `check` every 50 ms until it holds or `timeout` passes.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.exited()? {
                bail!("xdplb exited while waiting for {what}:\n{}", self.log_text());
            }
            if check(self) {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}; status:\n{}\nlog:\n{}",
            self.status().unwrap_or_default(),
            self.log_text()
        )
    }

    /// An HTTP GET on the metrics endpoint (from inside the namespace): (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.metrics;
        let path = path.to_owned();
        in_netns(Some(&self.ns), move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
            Ok((code, body))
        })
    }

    /// The sum of every series of metric `name` whose labels include `labels`
    /// (0 when there is none), from `/metrics`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let (code, body) = self.http_get("/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(metric_sum(&body, name, labels))
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True once the process has exited.
    pub fn exited(&self) -> Result<bool> {
        // try_wait needs &mut; a zero-signal kill tells the same without reaping.
        let Some(child) = &self.child else { return Ok(true) };
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill with signal 0 only checks the process exists.
        Ok(unsafe { libc::kill(pid, 0) } != 0 || is_zombie(pid))
    }

    /// Sends `signal` to the daemon (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let Some(child) = &self.child else { bail!("xdplb is not running") };
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(i32::try_from(child.id())?, signal) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its exit code
    /// (`None`: killed by a signal) and log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(Option<i32>, String)> {
        let Some(mut child) = self.child.take() else { bail!("xdplb is not running") };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status.code(), self.log_text()));
            }
            if start.elapsed() > timeout {
                child.kill()?;
                child.wait()?;
                bail!("xdplb did not exit within {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the log.
    pub fn stop(&mut self) -> Result<String> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(i32::try_from(child.id())?, libc::SIGTERM) };
            let start = Instant::now();
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    child.kill()?;
                    child.wait()?;
                    bail!("xdplb did not stop within 10 s of SIGTERM:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(self.log_text())
    }
}

/// The sum over the series of `name` in Prometheus text whose labels include
/// `labels` (`name{a="x",b="y"} 3`).
#[must_use]
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let wanted = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && wanted).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sums_the_series_whose_labels_match() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{vip=\"web\",to=\"down\"} 2\nx_total{vip=\"api\",to=\"down\"} 3\n\
                    x_total{vip=\"web\",to=\"up\"} 5\nx_total_other 7\ny 1.5\n";
        assert!((metric_sum(text, "x_total", &[("to", "down")]) - 5.0).abs() < 1e-9);
        assert!((metric_sum(text, "x_total", &[]) - 10.0).abs() < 1e-9);
        assert!((metric_sum(text, "y", &[]) - 1.5).abs() < 1e-9);
        assert!(metric_sum(text, "z", &[]).abs() < 1e-9);
    }
}
