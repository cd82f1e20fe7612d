//! Tests that cannot run here (not root, a tool missing) say so in one way: under
//! `CI=true` they fail, so a CI run never passes without having run them;
//! otherwise they print why and add their name to the file `XDPLB_SKIP_LOG` names,
//! from which `cargo xtask test` reports how many were skipped (and fails unless
//! given `--allow-skips`).

use std::io::Write as _;

/// The environment variable naming the file skipped tests are listed in.
pub const LOG_ENV: &str = "XDPLB_SKIP_LOG";

/// Records that `test` is skipped because `why`. Panics under `CI=true`. The test
/// harness names each test's thread after it, so a shared `test` (a module path)
/// still lists every skipped test by name.
pub fn skip(test: &str, why: &str) {
    let test = match std::thread::current().name() {
        Some(name) if name != "main" && !test.contains(name) => format!("{test}::{name}"),
        _ => test.to_owned(),
    };
    let test = test.as_str();
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {test} {why}: failing instead of skipping"
    );
    eprintln!("SKIPPED: {test}: {why}");
    if let Some(path) = std::env::var_os(LOG_ENV) {
        append(std::path::Path::new(&path), test, why);
    }
}

/// One line per skip; appends (tests of several processes share the file).
fn append(path: &std::path::Path, test: &str, why: &str) {
    let line = format!("{test}: {why}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_appended_one_line_each() {
        let path = std::env::temp_dir().join(format!("xdplb-skips-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        append(&path, "a_test", "needs root");
        append(&path, "another", "promtool missing");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "a_test: needs root\nanother: promtool missing\n");
        std::fs::remove_file(&path).unwrap();
    }
}
