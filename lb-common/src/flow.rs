use crate::Addr;

/// Connection-table key: a flow as the client sent it (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Source and destination port, network byte order.
    pub ports: [u16; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Connection-table key of an IPv4 flow (`FLOWS4`, as its `words`): the flow of a [`FlowKey`] of
/// family V4 in 16 bytes instead of 40, so the kernel hashes and compares less
/// than half as much on every lookup and insert.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    /// Source and destination port, network byte order.
    pub ports: [u16; 2],
    /// The IP protocol, widened to a word: no padding bytes to clear.
    pub proto: u32,
}

impl FlowKey4 {
    /// The IPv4 part of `flow` (its family is not checked).
    #[inline(always)]
    #[must_use]
    pub const fn of(flow: &FlowKey) -> Self {
        Self { src: flow.src[0], dst: flow.dst[0], ports: flow.ports, proto: flow.proto as u32 }
    }

    /// The key as `FLOWS4` holds and compares it: two words (`FlowWay::key`),
    /// built from the fields so the key needs no 8-byte alignment.
    #[inline(always)]
    #[must_use]
    pub const fn words(&self) -> [u64; 2] {
        [
            self.src as u64 | (self.dst as u64) << 32,
            self.ports[0] as u64 | (self.ports[1] as u64) << 16 | (self.proto as u64) << 32,
        ]
    }

    /// The same flow as a [`FlowKey`].
    #[must_use]
    pub const fn flow(&self) -> FlowKey {
        FlowKey {
            src: [self.src, 0, 0, 0],
            dst: [self.dst, 0, 0, 0],
            ports: self.ports,
            proto: self.proto as u8,
            family: crate::family::V4,
            _pad: [0; 2],
        }
    }
}

/// Connection-table value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnValue {
    /// Index into the backend table.
    pub backend: u32,
    /// `Backend::generation` when the entry was written.
    pub generation: u32,
}

/// `CONN_EPOCH`, one u64: the controller's clock in the high half (a step a
/// second, by atomic adds), which `FLOWS4` stamps a way with when a packet uses
/// it (`flow_table::FlowWay::clock`). The low half held the flow caches' epoch
/// (layouts 7 and 8) and is no longer read.
pub mod conn_epoch {
    /// Adds one step to the clock.
    pub const CLOCK_STEP: u64 = 1 << 32;
}

/// One slot of the SYN array (`SYNS`): the backend a TCP SYN was sent to, until
/// the handshake's ACK puts the flow in the connection table. Direct-mapped by the
/// flow hash (`hash::syn_slot`), so a flood of SYNs only overwrites other pending
/// handshakes, never an established flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynSlot {
    /// `hash::syn_tag` of the flow (0: empty).
    pub tag: u64,
    /// Index into the backend table.
    pub backend: u32,
    /// `Backend::generation` when the SYN was sent.
    pub generation: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_words_are_its_bytes_as_two_little_endian_words() {
        let k = FlowKey4 { src: 0x0403_0201, dst: 0x0807_0605, ports: [0x0a09, 0x0c0b], proto: 6 };
        // SAFETY: FlowKey4 is 16 bytes of integers, no padding.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(k) };
        let w = k.words();
        assert_eq!(bytes[..8], w[0].to_le_bytes());
        assert_eq!(bytes[8..], w[1].to_le_bytes());
    }
}
