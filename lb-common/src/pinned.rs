//! What a stopped controller leaves in its pin directory besides the data path's
//! own maps, for the next one (a restart, an upgrade) to read: the layout
//! version of the whole set, and the controller's view of each backend. The
//! data path never reads these; they are created and pinned by the controller.

/// Version of the layout of every pinned map of `xdp-lb` (keys, values, sizes
/// and what their values mean), stored in the pinned `LAYOUT` map. A controller
/// refuses pins of another version instead of misreading them.
///
/// Bump it with any change a controller of the previous version could misread
/// even where the sizes agree (a reordered field, a new meaning of a value).
/// Version 1 is the set from before this map existed (the same maps and
/// layouts, without `LAYOUT` and `BACKEND_FLAGS`). Version 3: `ConnValue` gained
/// `flags`, `BACKEND_STATS` holds `BackendStats` (traffic and handshakes). Version
/// 4: a SYN waits in `SYNS`, not `CONNS` (`ConnValue` lost `flags`), and `STATS`
/// counts `conn_handshake`. Version 5: `LbConfig` gained `accept_macs`, `STATS`
/// counts `pass_not_for_us`. Version 6: IPv4 flows in `CONNS4` (`FlowKey4`, 16
/// bytes), `CONNS` holds IPv6 flows only. Version 7: the flow caches
/// (`FLOW_CACHE`, per CPU) and their epoch (`CONN_EPOCH`) are pinned; a table hit
/// is counted in `BackendStats::hits` only (`stats` module text), VIP_STATS holds
/// the controller's retired hits after the data path's entries. Version 8:
/// `FLOW_CACHE` holds two-slot sets (`FlowCacheSet`, 64 bytes, mmapable so each
/// is one cache line) instead of direct-mapped slots. Version 9: IPv4 flows in
/// `FLOWS4` (`flow_table`: sets of four `FlowWay`s shared by every CPU, pending
/// handshakes among them) instead of `CONNS4` and the flow caches (`FLOW_CACHE`
/// is gone); `LbConfig` gained `flow_sets_mask`.
pub const LAYOUT_VERSION: u32 = 9;

/// Bits of a `BACKEND_FLAGS` entry: the controller's view of the backend in the
/// same slot of `BACKENDS`. The data path's state alone cannot say it (draining
/// is an operator's drain, a standby reserve, or a down backend keeping its flows;
/// down may hide a drain), so a restarted controller reads this instead.
pub mod backend_flags {
    /// The entry was written by a controller (0: never, or a removed backend).
    pub const KNOWN: u32 = 1;
    /// Its health check said up.
    pub const HEALTHY: u32 = 1 << 1;
    /// An operator drained it (`xdplb drain`).
    pub const DRAINED: u32 = 1 << 2;
}
