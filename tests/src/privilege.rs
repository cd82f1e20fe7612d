//! Tests that need root (BPF, namespaces) skip outside CI and fail under `CI=true`,
//! so a CI run can never pass without having run them; `cargo xtask test` counts
//! the skips (`lb_userspace::skip`).

/// True when the caller may go on; records the skip otherwise. Panics under `CI=true`.
#[must_use]
pub fn have_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    lb_userspace::skip::skip(what, "needs root (BPF_PROG_TEST_RUN, network namespaces)");
    false
}
