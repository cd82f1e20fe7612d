//! xorshift64*: a tiny generator for values that only need to vary (probe jitter,
//! the SYN flood's sources and ports), never for anything a client may not predict.

pub struct XorShift(u64);

impl XorShift {
    /// Zero is xorshift's one fixed point, so the seed's low bit is set.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_seed_still_varies() {
        let mut rng = XorShift::new(0);
        let (a, b) = (rng.next_u64(), rng.next_u64());
        assert!(a != 0 && b != 0 && a != b);
    }
}
