//! xdp-lb objects under test in an A/B (`bench xdp --object`, `bench live --object`):
//! builds of the data path from other trees (`cargo xtask build-ebpf --out FILE`),
//! compared without rebuilding the bench.

use anyhow::{Context as _, Result};
use lb_userspace::objects;

/// An xdp-lb object under test: a name and its bytes.
pub struct Object {
    pub name: String,
    pub bytes: &'static [u8],
}

impl Object {
    /// The object this binary embeds, named `main`.
    #[must_use]
    pub fn embedded() -> Self {
        Self { name: "main".into(), bytes: objects::XDP_LB }
    }

    /// `NAME=FILE`; `FILE` `main` is the object this binary embeds.
    pub fn parse(arg: &str) -> Result<Self> {
        let (name, file) =
            arg.split_once('=').with_context(|| format!("--object {arg}: want NAME=FILE"))?;
        let bytes: &'static [u8] = if file == "main" {
            objects::XDP_LB
        } else {
            // A heap buffer this large is 16-byte aligned, as the ELF parser wants.
            let read = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            Box::leak(read.into_boxed_slice())
        };
        Ok(Self { name: name.to_owned(), bytes })
    }

    /// A bench's arguments split into the `--object NAME=FILE` pairs (in order) and
    /// the rest.
    pub fn split_args(args: &[String]) -> Result<(Vec<Self>, Vec<&String>)> {
        let mut objects = Vec::new();
        let mut plain = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--object" {
                objects.push(Self::parse(it.next().context("--object needs NAME=FILE")?)?);
            } else {
                plain.push(a);
            }
        }
        Ok((objects, plain))
    }
}
