use crate::{Addr, limits::VIP_FILTER_WORDS};

/// Bit of the VIP address filter that `addr` maps to. Traffic whose destination's
/// bit is clear is not for a VIP: one array read instead of two hash lookups on the
/// path every non-VIP packet takes.
#[inline(always)]
#[must_use]
pub const fn filter_bit(addr: &Addr) -> u32 {
    let h = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    let h = h ^ (h >> 16);
    h & (VIP_FILTER_WORDS * 64 - 1)
}

/// Key of the VIP map. `port` 0 is the wildcard: it matches every port of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into the per-VIP statistics (0..MAX_VIPS).
    pub index: u32,
    /// The active ring: the ring map slice `ring * RING_SIZE .. (ring + 1) * RING_SIZE`.
    pub ring: u32,
}

/// Key of the VIP address set: an address that holds at least one VIP. Used for
/// packets whose ports cannot be read (fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipAddrKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// One slot of a Maglev ring (the RINGS array value). Array maps store values
/// 8-byte aligned, so a slot is 8 bytes whatever its type; saying so here keeps the
/// controller's mmapped view of the rings in step with the kernel's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingSlot {
    /// Backend-table index, or `NO_BACKEND`.
    pub backend: u32,
    pub _reserved: u32,
}
