//! The compiled XDP objects, embedded at build time (see build.rs).

/// `xdp-lb`: the balancer.
pub static XDP_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-lb"));
/// `xdp-decap`: the backend-side decapsulator.
pub static XDP_DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-decap"));
/// `xdp-tools`: pass-through, harness and floor programs, traffic sink.
pub static XDP_TOOLS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-tools"));

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lb_common::map_names;

    use super::*;

    /// The names of the maps an object defines, read from the ELF file (no kernel).
    fn maps_of(object: &[u8]) -> BTreeSet<String> {
        let parsed = aya_obj::Object::parse(object).expect("a BPF object");
        parsed.maps.into_keys().filter(|name| !name.starts_with('.')).collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn the_balancer_defines_exactly_the_maps_lb_common_names() {
        assert_eq!(maps_of(XDP_LB), names(map_names::XDP_LB));
    }

    #[test]
    fn the_decapsulator_and_the_tools_define_the_maps_userspace_opens() {
        assert_eq!(maps_of(XDP_DECAP), names(map_names::XDP_DECAP));
        assert_eq!(
            maps_of(XDP_TOOLS),
            names(&[
                map_names::GEN_CONFIG,
                map_names::GEN_SEQ,
                map_names::SINK_STATS,
                map_names::BENCH_SCRIPT,
                map_names::BENCH_TAIL
            ])
        );
    }
}
