//! Tests that need root (BPF, namespaces) skip outside CI and fail under `CI=true`,
//! so a CI run can never pass without having run them.

/// True when the caller may go on; prints why not otherwise. Panics under `CI=true`.
#[must_use]
pub fn have_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = format!("{what} needs root (BPF_PROG_TEST_RUN, network namespaces)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {msg}: failing instead of skipping"
    );
    eprintln!("SKIPPED: {msg}");
    false
}
