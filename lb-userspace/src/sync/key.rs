//! The shared secret that authenticates peer sync messages (HMAC-SHA256): 32
//! bytes, written as 64 hex digits in a file every balancer of a group holds
//! (`sync.key_file`, mode 0600; `xdplb gen-sync-key FILE` writes one).

use std::{fmt, path::Path};

use anyhow::Result;

use crate::config::seed::{self, BadSecret};

/// Hex digits of a key: 256 bits.
pub const HEX_DIGITS: usize = 64;

/// The key. `Debug` shows a fingerprint, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncKey(pub [u8; 32]);

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncKey(fingerprint {:08x})", self.fingerprint())
    }
}

impl SyncKey {
    /// A short public name for the key, to compare balancers' keys without
    /// showing them: the first bytes of its HMAC over a fixed label.
    #[must_use]
    pub fn fingerprint(&self) -> u32 {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let tag = ring::hmac::sign(&key, b"xdplb sync key fingerprint");
        let t = tag.as_ref();
        u32::from_be_bytes([t[0], t[1], t[2], t[3]])
    }
}

/// A key from its text form: 64 hex digits, surrounding whitespace ignored.
pub fn parse(text: &str) -> Result<SyncKey, String> {
    seed::parse_secret::<{ HEX_DIGITS / 2 }>(text).map(SyncKey).map_err(|e| match e {
        BadSecret::NotHex { chars } => format!(
            "a sync key is {HEX_DIGITS} hexadecimal digits (32 bytes), as `xdplb gen-sync-key` \
             writes; got {chars} characters"
        ),
        BadSecret::AllZero => {
            "an all-zero key is no secret: generate one with `xdplb gen-sync-key`".to_owned()
        }
    })
}

/// Reads a key file; the error says what is wrong with it.
pub fn read(path: &Path) -> Result<SyncKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether others than the owner may read the file (a key should be mode 0600).
#[must_use]
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// Writes a new random key to `path` (mode 0600); an existing file is kept
/// unless `replace`: every balancer of a group must hold the same key.
pub fn write_new(path: &Path, replace: bool) -> Result<SyncKey> {
    let mut bytes = [0u8; 32];
    seed::random(&mut bytes)?;
    let text = seed::hex(bytes.iter().copied());
    seed::write_private(path, &text, replace, "key")?;
    parse(&text).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_is_64_hex_digits_and_not_zero() {
        let k = parse(&format!("  {}\n", "ab".repeat(32))).unwrap();
        assert_eq!(k.0, [0xab; 32]);
        assert!(parse("abcd").unwrap_err().contains("64 hexadecimal digits"));
        assert!(parse(&"zz".repeat(32)).unwrap_err().contains("64 hexadecimal digits"));
        assert!(parse(&"0".repeat(64)).unwrap_err().contains("all-zero"));
    }

    #[test]
    fn new_keys_differ_are_private_and_kept_unless_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("xdplb-sync-key-{}", std::process::id()));
        let path = dir.join("sync-key");
        let a = write_new(&path, false).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!readable_by_others(&path));
        let err = write_new(&path, false).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        let b = write_new(&path, true).unwrap();
        assert_ne!(a, b);
        let shown = format!("{a:?}");
        assert!(!shown.contains(&seed::hex(a.0[..4].iter().copied())), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
