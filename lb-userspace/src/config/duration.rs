//! Durations as the config writes them: a decimal number and a unit, `200ms`,
//! `1s`, `1.5s`, `2m`.

use std::time::Duration;

/// Units, largest first (formatting picks the first that divides exactly).
const UNITS: &[(&str, u128)] = &[
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Health-check timings beyond a day are a typo, and the cap keeps arithmetic small.
const MAX: Duration = Duration::from_hours(24);

/// Parses `200ms`, `1.5s`, `2m`, ... Zero, negative, unitless and over-precise
/// values are rejected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expect = "expected a number and a unit (ns, us, ms, s, m, h), e.g. 200ms or 1.5s";
    if number.is_empty() {
        return Err(format!("invalid duration `{text}`: {expect}"));
    }
    if unit.is_empty() {
        return Err(format!("duration `{text}` has no unit: {expect}"));
    }
    let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!("invalid duration `{text}`: unknown unit `{unit}`; {expect}"));
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let bad = whole.is_empty()
        || (number.contains('.') && fraction.is_empty())
        || fraction.contains('.')
        // Long digit strings overflow before they could mean anything.
        || whole.len() > 12
        || fraction.len() > 12;
    if bad {
        return Err(format!("invalid duration `{text}`: {expect}"));
    }
    let digits = |d: &str| d.parse::<u128>().unwrap_or(0);
    let denominator = 10u128.pow(fraction.len() as u32);
    let fraction_nanos = digits(fraction) * scale;
    if fraction_nanos % denominator != 0 {
        return Err(format!("duration `{text}` is finer than 1ns"));
    }
    let nanos = digits(whole) * scale + fraction_nanos / denominator;
    if nanos == 0 {
        return Err(format!("duration `{text}` must be greater than 0"));
    }
    if nanos > MAX.as_nanos() {
        return Err(format!("duration `{text}` is longer than 24h"));
    }
    let secs = (nanos / 1_000_000_000) as u64;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// The shortest exact text for `d` that [`parse`] reads back: `1500ms`, `2m`.
#[must_use]
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    let (name, scale) =
        UNITS.iter().find(|(_, scale)| nanos.is_multiple_of(*scale)).copied().unwrap_or(("ns", 1));
    format!("{}{name}", nanos / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_integer_and_decimal_values_with_a_unit() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse("1h"), Ok(Duration::from_hours(1)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse(" 0.25s "), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_zero_missing_units_and_junk() {
        for bad in [
            "0ms",
            "0",
            "0.0s",
            "200",
            "ms",
            "",
            "1.s",
            ".5s",
            "1..5s",
            "-1s",
            "1 s",
            "1sec",
            "5d",
            "1.0000000001s",
            "25h",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(parse("0ms").unwrap_err().contains("greater than 0"));
        assert!(parse("200").unwrap_err().contains("no unit"));
    }

    #[test]
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_millis(200)), "200ms");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(2)), "2s");
        assert_eq!(format(Duration::from_mins(2)), "2m");
        assert_eq!(format(Duration::from_hours(2)), "2h");
        assert_eq!(format(Duration::from_nanos(1_001)), "1001ns");
        for text in ["200ms", "1.5s", "2m", "90s", "3us"] {
            let d = parse(text).unwrap();
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
