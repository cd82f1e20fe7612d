//! Prometheus metrics: the registry of every series ([`registry`]) and the HTTP
//! endpoint that serves them with `/healthz` ([`endpoint`]).

pub mod balancer;
pub mod endpoint;
pub mod registry;
pub mod sync;

pub use endpoint::{Scrape, serve};
pub use registry::{Metrics, Update};
