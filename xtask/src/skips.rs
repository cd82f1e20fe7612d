//! What `cargo xtask test` says about tests that were skipped (not root, a tool
//! missing): each skipped test appends a line to the skip log
//! (`lb_userspace::skip`); the summary counts them and fails the run unless told
//! to allow skips, so a run that skipped privileged tests never looks complete.

use anyhow::{Result, anyhow};

pub struct Verdict {
    /// For the end of the run's output.
    pub summary: String,
    pub outcome: Result<()>,
}

/// The verdict on the skip log's `text`.
pub fn verdict(text: &str, allow_skips: bool) -> Verdict {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Verdict { summary: "==> no test skipped".into(), outcome: Ok(()) };
    }
    let mut summary = format!("==> {} test(s) skipped:", lines.len());
    for l in &lines {
        summary.push_str("\n    ");
        summary.push_str(l);
    }
    let outcome = if allow_skips {
        summary.push_str("\n    (allowed by --allow-skips)");
        Ok(())
    } else {
        summary.push_str("\n    run as root with the lab's tools (cargo xtask setup --lab), or pass --allow-skips");
        Err(anyhow!("{} test(s) skipped; the run is incomplete", lines.len()))
    };
    Verdict { summary, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_skip_passes_quietly() {
        let v = verdict("", false);
        assert!(v.outcome.is_ok());
        assert_eq!(v.summary, "==> no test skipped");
    }

    #[test]
    fn skips_are_counted_listed_and_fail_the_run_unless_allowed() {
        let log = "fuzz_xdp_lb: needs root\ne2e (dsr): needs root\n";
        let v = verdict(log, false);
        assert!(v.summary.starts_with("==> 2 test(s) skipped:"), "{}", v.summary);
        assert!(
            v.summary.contains("fuzz_xdp_lb: needs root") && v.summary.contains("--allow-skips")
        );
        let err = v.outcome.unwrap_err().to_string();
        assert!(err.contains("2 test(s) skipped"), "{err}");
        let v = verdict(log, true);
        assert!(v.outcome.is_ok());
        assert!(
            v.summary.contains("2 test(s) skipped") && v.summary.contains("allowed"),
            "{}",
            v.summary
        );
    }
}
