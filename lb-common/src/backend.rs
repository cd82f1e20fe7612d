use crate::Addr;

/// Health as the data path sees it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Takes new and existing flows.
    Up = 0,
    /// Dead: existing flows are re-hashed to a live backend at once.
    Down = 1,
    /// Out of the ring but alive: keeps its existing flows, gets no new ones.
    Draining = 2,
}

impl BackendState {
    /// Every state, in value order.
    pub const ALL: [Self; 3] = [Self::Up, Self::Down, Self::Draining];

    /// Stable lowercase name: the `xdplb status` column and the metric label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Draining => "draining",
        }
    }

    #[must_use]
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Up,
            2 => Self::Draining,
            _ => Self::Down,
        }
    }
}

/// One (VIP, backend) pair, indexed by the values stored in the rings and the
/// connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Backend address (ipip: the outer destination).
    pub addr: Addr,
    /// Next-hop MAC: the backend itself (dsr, or ipip on-link) or the gateway.
    pub mac: [u8; 6],
    pub family: u8,
    /// A `BackendState` as u8 (the kernel reads it without an enum check).
    pub state: u8,
    /// Bumped whenever the slot is given to another backend, so stale
    /// connection-table entries that name the slot are re-hashed, not misrouted.
    pub generation: u32,
    /// Index of the VIP this pair belongs to (lets a restarted controller adopt the maps).
    pub vip: u32,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            addr: [0; 4],
            mac: [0; 6],
            family: 0,
            state: BackendState::Down as u8,
            generation: 0,
            vip: 0,
        }
    }
}
