//! The traffic generator of the benchmarks (`xdp_gen` in `xdp-tools`): what it sends,
//! as the benchmark writes it into the program's `GEN_CONFIG` map.

/// Bytes of a generated frame: 64 on the wire with the FCS.
pub const FRAME_LEN: usize = 60;

/// What `xdp_gen` sends. Flow `i` comes from source port `sport + i % ports` and
/// source address `saddr + i / ports` (the low 16 bits; the benchmark keeps both
/// sums from overflowing 16 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// The frame of flow 0 with valid checksums, as words in memory order.
    pub frame: [u32; FRAME_LEN / 4],
    /// Distinct flows (0 or 1: the template only).
    pub flows: u32,
    /// Source ports per source address, > 0.
    pub ports: u32,
    /// 1 for TCP (checksum at byte 50), else UDP (byte 40).
    pub tcp: u32,
}

impl GenConfig {
    /// Flows over `frame` (Ethernet, IPv4 without options, then TCP or UDP).
    #[must_use]
    pub fn new(frame: &[u8; FRAME_LEN], flows: u32, ports: u32, tcp: bool) -> Self {
        let mut words = [0u32; FRAME_LEN / 4];
        for (w, b) in words.iter_mut().zip(frame.chunks_exact(4)) {
            *w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        }
        Self { frame: words, flows, ports, tcp: u32::from(tcp) }
    }
}
