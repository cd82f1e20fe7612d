//! Medians with their spread, the only statistic the benchmark tables print.

use std::fmt;

/// Median, minimum and maximum of a few runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (NaNs ignored); `None` when there is none.
    #[must_use]
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) };
        Some(Self { median, min: v[0], max: v[n - 1] })
    }

    /// `median (min–max)` with `decimals` digits after the point.
    #[must_use]
    pub fn show(&self, decimals: usize) -> String {
        format!("{:.d$} ({:.d$}–{:.d$})", self.median, self.min, self.max, d = decimals)
    }

    /// Every figure divided by `by` (for unit changes).
    #[must_use]
    pub fn scaled(&self, by: f64) -> Self {
        Self { median: self.median / by, min: self.min / by, max: self.max / by }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(f.precision().unwrap_or(2)))
    }
}

/// `Summary::of(values).show(decimals)`, or "n/a" when there are no values.
#[must_use]
pub fn show(values: &[f64], decimals: usize) -> String {
    Summary::of(values).map_or_else(|| "n/a".to_owned(), |s| s.show(decimals))
}

/// The ratio of two medians, `a / b`, or NaN when `b` is missing or zero.
#[must_use]
pub fn ratio(a: &[f64], b: &[f64]) -> f64 {
    match (Summary::of(a), Summary::of(b)) {
        (Some(a), Some(b)) if b.median != 0.0 => a.median / b.median,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median - 2.5).abs() < 1e-12);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(show(&[1.0, 2.0, 3.0], 1), "2.0 (1.0–3.0)");
    }
}
