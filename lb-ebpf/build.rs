use which::which;

/// The eBPF objects are linked by bpf-linker, which cargo does not know about:
/// rebuild when it changes. `cargo xtask setup` installs it.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
