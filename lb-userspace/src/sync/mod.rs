//! Peer sync (issue #15): balancers share only what the ring does not say.
//!
//! Balancers with the same config build the same Maglev rings, so a flow reaches
//! the same backend through any of them — until a ring changes under established
//! flows (a node recovers, is added, drains): the active balancer keeps those
//! flows on their old backends through its connection table, a peer's ring sends
//! them elsewhere. Those entries are the *exceptions*; only they are synced.
//! See docs/sync.md for the protocol and the rules.

pub mod conns;
pub mod exceptions;
pub mod install;
pub mod key;
pub mod peers;
pub mod service;
pub mod wire;
pub use service::Service;
