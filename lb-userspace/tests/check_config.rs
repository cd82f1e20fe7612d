//! `xdplb check-config` as an operator runs it: the example passes and prints the
//! resolved config; each broken config fails naming its field and line.
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::{path::Path, process::Command};

fn check_config(file: &Path) -> (bool, String, String) {
    check_config_with(file, &[])
}

fn check_config_with(file: &Path, flags: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdplb"))
        .arg("check-config")
        .args(flags)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn configs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
}

#[test]
fn example_config_passes_and_prints_the_resolved_config() {
    let (ok, out, err) = check_config(&configs().join("example.yaml"));
    assert!(ok, "{err}");
    // Defaults are filled in.
    for key in ["xdp_mode: driver", "pin_path: /sys/fs/bpf/xdplb", "rise: 2", "fall: 3"] {
        assert!(out.contains(key), "missing `{key}` in:\n{out}");
    }
    assert!(out.contains("backup: true") && out.contains("min_primaries: 1"), "{out}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn every_questionable_reserve_tier_passes_with_a_warning_naming_its_field_and_line() {
    let mut seen = 0;
    for entry in std::fs::read_dir(configs().join("warn")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().unwrap().strip_prefix("# warn: ").unwrap();
        let (field, line) = expect.rsplit_once(" line ").unwrap();
        let (ok, out, err) = check_config(&path);
        assert!(ok, "{} failed:\n{err}", path.display());
        assert!(out.contains("vips:"), "the resolved config is printed: {out}");
        let name = path.file_name().unwrap().to_string_lossy();
        let want = format!("{name}:{line}:");
        assert!(
            err.lines()
                .any(|l| l.starts_with("warning: ") && l.contains(&want) && l.contains(field)),
            "{}: want a warning with `{want}` and `{field}` in:\n{err}",
            path.display()
        );
        let (ok, out, err) = check_config_with(&path, &["--strict"]);
        assert!(!ok && out.is_empty(), "{}: --strict passed", path.display());
        assert!(err.contains("--strict"), "{err}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn every_broken_config_fails_naming_its_field_and_line() {
    let mut seen = 0;
    for entry in std::fs::read_dir(configs().join("broken")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().unwrap().strip_prefix("# expect: ").unwrap();
        let (field, line) = expect.rsplit_once(" line ").unwrap();
        let (ok, _, err) = check_config(&path);
        assert!(!ok, "{} passed", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        let want = format!("{name}:{line}:");
        assert!(
            err.lines().any(|l| l.contains(&want) && l.contains(field)),
            "{}: want `{want}` and `{field}` on one line of:\n{err}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} broken configs");
}

#[test]
fn unreadable_config_is_an_error_not_a_panic() {
    let (ok, _, err) = check_config(Path::new("/nonexistent/xdplb.yaml"));
    assert!(!ok);
    assert!(err.contains("/nonexistent/xdplb.yaml"), "{err}");
}
