//! The xdplb controller as a library: the binary `xdplb` and the test suites use
//! the same code to load the XDP programs and fill their maps.

pub mod admin;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod decap;
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
pub mod writer;
