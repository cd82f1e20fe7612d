//! The xdplb controller as a library: the binary `xdplb` and the test suites use
//! the same code to load the XDP programs and fill their maps.
//!
//! Failover path, file by file: `health/` probes and reports -> `controller/core/`
//! decides (rise/fall, backend state) -> `controller/planner.rs` plans the desired
//! state (`desired.rs`) -> `writer.rs` writes the difference -> `maps.rs`. The loop
//! that feeds the core and carries out its decisions is `controller/mod.rs`.
//!
//! Balancer redundancy: `controller/balancer_health.rs` judges whether this
//! balancer can forward; `ha/` judges it continuously and tells keepalived (a
//! track file) and BIRD (VIP routes in a table of our own).

pub mod access;
pub mod admin;
pub mod backend_setup;
pub mod batch;
pub mod clock;
pub mod config;
pub mod conn_table;
pub mod controller;
pub mod decap;
pub mod desired;
pub mod flows4;
pub mod ha;
pub mod health;
pub mod interface;
pub mod loader;
pub mod mac;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod neighbours;
pub mod netlink;
pub mod objects;
pub mod pins;
pub mod privileges;
pub mod server;
pub mod skip;
pub mod stats;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod writer;
pub mod xorshift;
