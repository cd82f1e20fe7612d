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
