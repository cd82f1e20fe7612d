//! MAC addresses and their text form, `aa:bb:cc:dd:ee:ff`.

/// An Ethernet address, as the maps store it.
pub type Mac = [u8; 6];

/// Parses `aa:bb:cc:dd:ee:ff` (one or two hex digits per byte, either case).
#[must_use]
pub fn parse(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `aa:bb:cc:dd:ee:ff`, lowercase.
#[must_use]
pub fn format(mac: &Mac) -> String {
    mac.iter().map(|byte| std::format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(parse("02:fc:00:00:00:01"), Some([2, 0xfc, 0, 0, 0, 1]));
        assert_eq!(parse("2:FC:0:0:0:1"), Some([2, 0xfc, 0, 0, 0, 1]));
        for bad in [
            "",
            "02:fc:00:00:00",
            "02:fc:00:00:00:01:02",
            "02:fc:00:00:00:001",
            "02:fc::00:00:01",
            "zz:00:00:00:00:00",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(format(&[2, 0xfc, 0, 0, 0, 1]), "02:fc:00:00:00:01");
        assert_eq!(parse(&format(&[0xab, 0xcd, 0xef, 1, 2, 3])), Some([0xab, 0xcd, 0xef, 1, 2, 3]));
    }
}
