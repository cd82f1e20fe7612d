//! The compiled XDP objects, embedded at build time (see build.rs).

/// `xdp-lb`: the balancer.
pub static XDP_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-lb"));
/// `xdp-decap`: the backend-side decapsulator.
pub static XDP_DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-decap"));
/// `xdp-tools`: pass-through, harness and floor programs, traffic sink.
pub static XDP_TOOLS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-tools"));
