//! xdp-lb objects under test in an A/B (`bench xdp --object`, `bench live --object`):
//! builds of the data path from other trees (`cargo xtask build-ebpf --out FILE`),
//! compared without rebuilding the bench.

use anyhow::{Context as _, Result, bail};
use lb_userspace::objects;

/// An xdp-lb object under test: a name and its bytes.
pub struct Object {
    pub name: String,
    pub bytes: &'static [u8],
    /// `NAME=FILE@N`: the connection tables `conn_table_size: N` gives (`bench live`
    /// only, for a working-set experiment; bench xdp takes `--conn-table N`).
    pub conns: Option<u32>,
}

impl Object {
    /// The object this binary embeds, named `main`.
    #[must_use]
    pub fn embedded() -> Self {
        Self { name: "main".into(), bytes: objects::XDP_LB, conns: None }
    }

    /// `NAME=FILE[@N]`; `FILE` `main` is the object this binary embeds.
    pub fn parse(arg: &str) -> Result<Self> {
        let (name, file) =
            arg.split_once('=').with_context(|| format!("--object {arg}: want NAME=FILE"))?;
        let (file, conns) = match file.rsplit_once('@') {
            Some((f, n)) => match n.parse::<u32>() {
                Ok(n) if n > 0 => (f, Some(n)),
                _ => bail!(
                    "--object {arg}: `@{n}` wants a number of entries above 0 (conn_table_size)"
                ),
            },
            None => (file, None),
        };
        let bytes: &'static [u8] = if file == "main" {
            objects::XDP_LB
        } else {
            // A heap buffer this large is 16-byte aligned, as the ELF parser wants.
            let read = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            Box::leak(read.into_boxed_slice())
        };
        Ok(Self { name: name.to_owned(), bytes, conns })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_may_name_its_connection_tables_size_after_an_at() {
        let plain = Object::parse("base=main").unwrap();
        assert_eq!((plain.name.as_str(), plain.conns), ("base", None));
        let sized = Object::parse("small=main@16384").unwrap();
        assert_eq!((sized.name.as_str(), sized.conns), ("small", Some(16384)));
        assert_eq!(sized.bytes.len(), objects::XDP_LB.len());
        for bad in ["x=main@", "x=main@0", "x=main@1M"] {
            let err = Object::parse(bad).err().unwrap().to_string();
            assert!(err.contains(bad) && err.contains("conn_table_size"), "{err}");
        }
    }
}
