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

/// Connection-table key of an IPv4 flow (`CONNS4`): the flow of a [`FlowKey`] of
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
