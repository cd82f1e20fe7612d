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
