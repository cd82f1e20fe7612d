//! Code shared by the XDP programs of this crate: wire headers and bounds-checked
//! packet access. Each program is a binary (`src/main.rs`, `src/bin/*`).
#![no_std]

pub mod net;
pub mod timed;
