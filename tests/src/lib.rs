//! Shared fixtures for xdplb's integration tests: frames built and decoded with
//! an independent implementation (etherparse), the real compiled XDP objects run
//! through BPF_PROG_TEST_RUN, and maps filled by the controller's own writer.

pub mod balancer;
pub mod bench;
pub mod chart;
pub mod daemon;
pub mod decapsulator;
pub mod fuzz;
pub mod lab;
pub mod listener;
pub mod packet;
pub mod pair;
pub mod privilege;
pub mod rig;
pub mod serial;
pub mod syn_flood;
pub mod traffic;
