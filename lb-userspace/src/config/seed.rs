//! The flow-hash seed: the secret that keeps clients from choosing source ports
//! that all land on one backend (`lb_common::hash`). Every balancer of a group must
//! use the same one, or they pick different backends for a flow.
//!
//! Taken from `hash_seed` (32 hex digits in the config) or `hash_seed_file` (a file
//! holding them); with neither, from [`DEFAULT_FILE`] when it exists (the package
//! generates it at install time); failing that, a public seed, with a warning.

use std::{
    fmt::{self, Write as _},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use lb_common::hash::{PUBLIC_SEED, Seed, fingerprint};

/// Where the package puts the seed it generates at install time, and where
/// `xdplb gen-seed --output` writes by default.
pub const DEFAULT_FILE: &str = "/etc/xdplb/hash-seed";
/// Hex digits of a seed: 128 bits.
pub const HEX_DIGITS: usize = 32;

/// Where a config's seed came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedSource {
    /// `hash_seed` in the config.
    Config,
    /// `hash_seed_file` in the config.
    File(PathBuf),
    /// Neither key: [`DEFAULT_FILE`], which exists.
    DefaultFile(PathBuf),
    /// Neither key and no [`DEFAULT_FILE`]: `lb_common::hash::PUBLIC_SEED`.
    Public,
}

/// The seed and where it came from. `Debug` and `Display` show its fingerprint,
/// never the seed.
#[derive(Clone, PartialEq, Eq)]
pub struct HashSeed {
    pub seed: Seed,
    pub source: SeedSource,
}

impl Default for HashSeed {
    fn default() -> Self {
        Self { seed: PUBLIC_SEED, source: SeedSource::Public }
    }
}

impl fmt::Debug for HashSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashSeed")
            .field("source", &self.source)
            .field("fingerprint", &format_args!("{:08x}", fingerprint(&self.seed)))
            .finish()
    }
}

impl fmt::Display for HashSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SeedSource::Config => f.write_str("hash_seed in the config")?,
            SeedSource::File(p) => write!(f, "hash_seed_file {}", p.display())?,
            SeedSource::DefaultFile(p) => write!(f, "{} (the default)", p.display())?,
            SeedSource::Public => f.write_str("the public built-in seed")?,
        }
        // Compare fingerprints to check that balancers share one seed.
        write!(f, ", fingerprint {:08x}", fingerprint(&self.seed))
    }
}

impl HashSeed {
    /// What an operator should hear about this seed, if anything.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        (self.source == SeedSource::Public).then(|| {
            format!(
                "no hash_seed or hash_seed_file in the config and no {DEFAULT_FILE}: the flow hash uses \
                 a public seed, so a client can choose source ports that all land on one backend. \
                 Run `xdplb gen-seed --output {DEFAULT_FILE}` on one balancer and copy the file to \
                 every balancer of the group (they must share it)"
            )
        })
    }
}

/// Why a text is not a secret of [`parse_secret`]: each secret words it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSecret {
    /// Not `2 * N` hex digits: how many characters it has (whitespace around left out).
    NotHex { chars: usize },
    /// Every byte zero: no secret at all.
    AllZero,
}

/// `N` secret bytes from their text form: `2 * N` hex digits, surrounding
/// whitespace ignored, not all zero. The one parser of the hash seed and the
/// sync key (and of any secret file like them).
pub fn parse_secret<const N: usize>(text: &str) -> Result<[u8; N], BadSecret> {
    let t = text.trim();
    if t.len() != 2 * N || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadSecret::NotHex { chars: t.chars().count() });
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    let mut bytes = [0u8; N];
    for (b, pair) in bytes.iter_mut().zip(t.as_bytes().chunks_exact(2)) {
        *b = digit(pair[0]) << 4 | digit(pair[1]);
    }
    if bytes == [0; N] {
        return Err(BadSecret::AllZero);
    }
    Ok(bytes)
}

/// A seed from its text form: 32 hex digits, surrounding whitespace ignored.
pub fn parse(text: &str) -> Result<Seed, String> {
    let bytes = parse_secret::<{ HEX_DIGITS / 2 }>(text).map_err(|e| match e {
        BadSecret::NotHex { chars } => format!(
            "a seed is {HEX_DIGITS} hexadecimal digits (128 bits), as `xdplb gen-seed` writes; got {chars} characters"
        ),
        BadSecret::AllZero => {
            "an all-zero seed is no secret: generate one with `xdplb gen-seed`".to_owned()
        }
    })?;
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Ok([word(0), word(4), word(8), word(12)])
}

/// The text form [`parse`] reads.
#[must_use]
pub fn format(seed: &Seed) -> String {
    hex(seed.iter().flat_map(|w| w.to_le_bytes()))
}

/// Bytes as lowercase hex digits.
#[must_use]
pub fn hex(bytes: impl Iterator<Item = u8>) -> String {
    bytes.fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads a seed file; the error says what is wrong with it.
pub fn read(path: &Path) -> Result<Seed, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn random(buf: &mut [u8]) -> Result<()> {
    // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new random seed (the kernel's CSPRNG).
pub fn generate() -> Result<Seed> {
    let mut bytes = [0u8; 16];
    random(&mut bytes)?;
    parse(&hex(bytes.into_iter())).map_err(anyhow::Error::msg)
}

/// Writes a new seed to `path`, readable by its owner only; an existing file is
/// kept unless `replace` (a changed seed moves new flows between backends, and a
/// balancer group must share it).
pub fn write_new(path: &Path, replace: bool) -> Result<Seed> {
    let seed = generate()?;
    write_private(path, &format(&seed), replace, "seed")?;
    Ok(seed)
}

/// Writes `text` and a newline to a new file `path` of mode 0600 (its directory
/// created); an existing file is kept unless `replace`. `what` names the secret
/// in the error: every balancer of a group must keep the same one.
pub fn write_private(path: &Path, text: &str, replace: bool, what: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists; every balancer of a group must keep the same {what} (--force replaces it)",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })?;
    // An existing file keeps its mode on truncation: make it private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_words_are_little_endian() {
        let seed = parse("000102030405060708090a0b0c0d0e0f\n").unwrap();
        assert_eq!(seed, [0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c]);
        assert_eq!(format(&seed), "000102030405060708090a0b0c0d0e0f");
        assert_eq!(parse("  000102030405060708090A0B0C0D0E0F  ").unwrap(), seed);
    }

    #[test]
    fn a_secret_is_its_bytes_in_hex_of_either_case_and_never_all_zero() {
        assert_eq!(parse_secret::<3>(" 00fF7a\n"), Ok([0x00, 0xff, 0x7a]));
        assert_eq!(parse_secret::<3>("00ff7"), Err(BadSecret::NotHex { chars: 5 }));
        assert_eq!(parse_secret::<3>("00ff7g"), Err(BadSecret::NotHex { chars: 6 }));
        assert_eq!(parse_secret::<2>("0000"), Err(BadSecret::AllZero));
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        assert!(parse("0102").unwrap_err().contains("32 hexadecimal digits"));
        assert!(parse(&"g".repeat(32)).unwrap_err().contains("32 hexadecimal digits"));
        assert!(parse(&"0".repeat(32)).unwrap_err().contains("all-zero"));
    }

    #[test]
    fn generated_seeds_differ_and_are_written_private_and_kept() {
        let dir = std::env::temp_dir().join(format!("xdplb-seed-{}", std::process::id()));
        let path = dir.join("etc/hash-seed");
        let a = write_new(&path, false).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_new(&path, false).unwrap_err().to_string();
        assert!(err.contains("exists") && err.contains("--force"), "{err}");
        assert_eq!(read(&path).unwrap(), a, "kept");
        let b = write_new(&path, true).unwrap();
        assert_ne!(a, b);
        assert_eq!(read(&path).unwrap(), b);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_and_display_show_a_fingerprint_not_the_seed() {
        let s = HashSeed {
            seed: parse("00112233445566778899aabbccddeeff").unwrap(),
            source: SeedSource::Config,
        };
        for text in [format!("{s:?}"), s.to_string()] {
            assert!(!text.contains("8899aa") && !text.contains("aabbccdd"), "{text}");
            assert!(text.contains(&format!("{:08x}", fingerprint(&s.seed))), "{text}");
        }
    }
}
