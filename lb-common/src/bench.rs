//! What the timed benchmark programs (`xdp_*_timed`, `lb_ebpf::timed`) replay: a
//! script of frames, one per run of a `BPF_PROG_TEST_RUN` with a large `repeat`.
//!
//! With `repeat > 1` the kernel runs a program again on whatever the previous run
//! left in the frame (rewritten MACs, an outer header). A timed program first puts
//! back the frame the script gives this run (head, tail and bytes), then runs the
//! program under test; the same prologue in front of an empty program is the
//! harness, subtracted from every case. Many runs per timed section average the
//! kernel's ~10 ns clock steps away, which one run per section (`repeat = 1`) cannot.

/// Bytes a scripted frame may have.
pub const FRAME_MAX: usize = 128;

/// Outer source and destination of `xdp_ipip_floor` (`xdp-tools`): fixed, as it
/// reads no map; the tests check its output against them.
pub const IPIP_FLOOR_SRC: [u8; 4] = [192, 0, 2, 100];
pub const IPIP_FLOOR_DST: [u8; 4] = [192, 0, 2, 101];

/// The one entry of the `BENCH_SCRIPT` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Script {
    /// The two frames of a flow: `frames[0]` for its first `first` packets, then `frames[1]`.
    pub frames: [[u8; FRAME_MAX]; 2],
    /// Their lengths (at most `FRAME_MAX`).
    pub lens: [u32; 2],
    /// Packets per flow. 0: one flow, the frames as given. Otherwise run `n` sends
    /// packet `n % per_flow` of flow `n / per_flow`, whose source port is the frame's
    /// plus the flow number, and the low 16 bits of its source address the frame's
    /// plus the flow number / 65536 (no checksum is fixed: the programs read none).
    pub per_flow: u32,
    /// Packets of a flow that use `frames[0]`.
    pub first: u32,
    /// Offset of the source port and of the low 16 bits of the source address.
    pub port_off: u32,
    pub addr_off: u32,
    /// `xdp_tail_timed` (in `xdp-tools`): the slot of `BENCH_TAIL` it hands each run
    /// to, after the restore (another balancer's program, or the harness's).
    pub tail: u32,
    /// Packets of a flow past its first `first` are those of the flow `lag` flows
    /// back: a connection whose handshake ACK comes `lag` connections after its SYN
    /// (other flows' packets in between, as a round trip puts them). 0: its own.
    pub lag: u32,
    /// Flows the script cycles through: flow numbers are taken modulo `wrap`, so a
    /// flow comes back every `wrap` flows (table hits over a working set of `wrap`
    /// flows). 0: never.
    pub wrap: u64,
    /// Runs so far (written by the program; zeroed with the script).
    pub seq: u64,
    /// Where the frame started in the first run (written by the program; 0 until then).
    pub head: u64,
    /// Where it starts in this run (the program's scratch).
    pub now: u64,
}

impl Script {
    /// What run `seq` sends: which of `frames` (0 or 1), and the flow number added
    /// to its source port and address (0 with `per_flow` 0: the frames as given).
    #[inline(always)]
    #[must_use]
    pub const fn run(&self, seq: u64) -> (usize, u64) {
        if self.per_flow == 0 {
            return (0, 0);
        }
        let per_flow = self.per_flow as u64;
        let later = seq % per_flow >= self.first as u64;
        let lag = if later { self.lag as u64 } else { 0 };
        let flow = (seq / per_flow).wrapping_sub(lag);
        (later as usize, if self.wrap == 0 { flow } else { flow % self.wrap })
    }
}

impl Default for Script {
    fn default() -> Self {
        Self {
            frames: [[0; FRAME_MAX]; 2],
            lens: [0; 2],
            per_flow: 0,
            first: 0,
            port_off: 0,
            addr_off: 0,
            tail: 0,
            lag: 0,
            wrap: 0,
            seq: 0,
            head: 0,
            now: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapping_script_comes_back_to_its_first_flow_every_wrap_flows() {
        let s = Script { per_flow: 1, first: 1, wrap: 4, ..Script::default() };
        let flows: [u64; 10] = core::array::from_fn(|seq| s.run(seq as u64).1);
        assert_eq!(flows, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
        let open = Script { wrap: 0, ..s };
        assert_eq!(open.run(9), (0, 9), "without wrap a flow never comes back");
    }
}
