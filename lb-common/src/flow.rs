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
    /// `conn_flags` bits.
    pub flags: u32,
}

/// Bits of `ConnValue::flags`.
pub mod conn_flags {
    /// Written by a TCP SYN whose handshake has not been seen to complete: the
    /// flow's next client packet that is no SYN clears it and counts a completed
    /// handshake for the backend (`Handshakes::completed`), so each flow counts once.
    /// Entries written by anything else (UDP, a TCP flow picked up mid-way) never
    /// have it: they count nothing.
    pub const AWAITING_HANDSHAKE: u32 = 1;
}
