//! `--reference NAME=PIN` (`bench xdp`, `bench live`): another balancer's XDP
//! program, loaded, configured and pinned outside this repository (Katran's
//! `balancer.bpf.c`, built by its own recipe: issue #13's reference), run beside
//! xdp_lb on the same frames.

use anyhow::{Context as _, Result, ensure};
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;

/// A pinned program and the name its rows carry. A name given twice is two loads
/// of one object, taken as xdp_lb's loads are (`bench xdp` keeps each case's
/// faster load, `bench live` measures them in turn).
pub struct Reference {
    pub name: &'static str,
    pub prog: Xdp,
}

impl Reference {
    /// `NAME=PIN`: PIN a program pinned in bpffs (`bpftool prog load ... pinned PIN`).
    fn parse(arg: &str) -> Result<Self> {
        let (name, pin) =
            arg.split_once('=').with_context(|| format!("--reference {arg}: want NAME=PIN"))?;
        ensure!(!name.is_empty(), "--reference {arg}: the NAME before '=' is empty");
        let prog = Xdp::from_pin(pin, XdpAttachType::Interface).with_context(|| {
            format!("--reference {arg}: no XDP program pinned at {pin} (load and pin it first)")
        })?;
        Ok(Self { name: Box::leak(name.to_owned().into_boxed_str()), prog })
    }

    /// The `--reference NAME=PIN` pairs among `args` (in order), and the rest.
    pub fn split_args<'a>(args: &[&'a String]) -> Result<(Vec<Self>, Vec<&'a String>)> {
        let mut refs = Vec::new();
        let mut plain = Vec::new();
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            if a == "--reference" {
                refs.push(Self::parse(it.next().context("--reference needs NAME=PIN")?)?);
            } else {
                plain.push(a);
            }
        }
        Ok((refs, plain))
    }

    /// Each reference's name once, in the order first given (a name's loads need not
    /// be adjacent).
    #[must_use]
    pub fn names(refs: &[Self]) -> Vec<&'static str> {
        let mut names: Vec<&str> = Vec::new();
        for r in refs {
            if !names.contains(&r.name) {
                names.push(r.name);
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_reference_needs_a_name_and_a_pinned_program() {
        let err = |v: &[&str]| {
            let a = args(v);
            let refs: Vec<&String> = a.iter().collect();
            format!("{:#}", Reference::split_args(&refs).err().expect("an error"))
        };
        assert!(err(&["--reference"]).contains("needs NAME=PIN"));
        assert!(err(&["--reference", "katran"]).contains("want NAME=PIN"));
        assert!(err(&["--reference", "=/sys/fs/bpf/x"]).contains("NAME before '=' is empty"));
        assert!(
            err(&["--reference", "katran=/nonexistent/prog"])
                .contains("no XDP program pinned at /nonexistent/prog")
        );
    }

    #[test]
    fn other_arguments_pass_through_in_order() {
        let a = args(&["100000", "0"]);
        let refs: Vec<&String> = a.iter().collect();
        let (found, rest) = Reference::split_args(&refs).expect("no reference to load");
        assert!(found.is_empty());
        assert_eq!(rest, refs);
    }
}
