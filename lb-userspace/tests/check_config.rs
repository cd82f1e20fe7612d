//! `xdplb check-config` as an operator runs it: the example passes and prints the
//! resolved config; each broken config fails naming its field and line.
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

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
    // No warning but the public seed's on a host without /etc/xdplb/hash-seed (the
    // example names no seed, as an existing config does).
    let other = err.lines().filter(|l| l.starts_with("warning") && !l.contains("public seed"));
    assert_eq!(other.count(), 0, "{err}");
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

fn xdplb(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdplb")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xdplb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn gen_seed_prints_or_writes_a_private_seed_and_keeps_an_existing_file() {
    let (ok, out, err) = xdplb(&["gen-seed"]);
    assert!(ok, "{err}");
    let printed = out.trim();
    assert!(printed.len() == 32 && printed.bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
    assert_ne!(xdplb(&["gen-seed"]).1.trim(), printed, "a new seed every time");

    let file = temp_dir("gen-seed").join("hash-seed");
    let f = file.to_str().unwrap();
    let (ok, _, err) = xdplb(&["gen-seed", "--output", f]);
    assert!(ok && err.contains("fingerprint"), "{err}");
    let first = std::fs::read_to_string(&file).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let (ok, _, err) = xdplb(&["gen-seed", "--output", f]);
    assert!(!ok && err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first, "kept");
    assert!(xdplb(&["gen-seed", "--output", f, "--force"]).0);
    assert_ne!(std::fs::read_to_string(&file).unwrap(), first, "replaced");
}

#[test]
fn check_config_names_the_seed_by_source_and_fingerprint_and_warns_when_public() {
    let dir = temp_dir("check-seed");
    let seed = dir.join("hash-seed");
    assert!(xdplb(&["gen-seed", "--output", seed.to_str().unwrap()]).0);
    let example = std::fs::read_to_string(configs().join("example.yaml")).unwrap();
    let with_file = dir.join("with-file.yaml");
    std::fs::write(&with_file, format!("hash_seed_file: {}\n{example}", seed.display())).unwrap();
    let (ok, out, err) = check_config(&with_file);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("hash_seed_file: {}", seed.display())), "{out}");
    assert!(err.contains("flow hash seed: hash_seed_file") && err.contains("fingerprint"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    // Without a seed in the config: the installed default file, or the public seed
    // and a warning naming the risk; the config is valid either way.
    let (ok, _, err) = check_config(&configs().join("example.yaml"));
    assert!(ok, "{err}");
    if Path::new("/etc/xdplb/hash-seed").exists() {
        assert!(err.contains("/etc/xdplb/hash-seed (the default)"), "{err}");
    } else {
        assert!(err.contains("warning: ") && err.contains("public seed"), "{err}");
    }
}
