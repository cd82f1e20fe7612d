//! The flow hash that picks a ring slot. It lives here so the tests and the
//! controller can predict the kernel's choice; it must stay cheap (no loops over
//! data-dependent lengths) because every new flow pays for it.

use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
/// Fixed seed: every balancer with the same config picks the same backend for a flow.
pub const FLOW_SEED: u32 = 0x5eed_1b01;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Murmur3-style hash of the client address and both ports. The VIP is not
/// hashed: every VIP has its own ring.
#[inline(always)]
#[must_use]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports = (key.ports[0] as u32) | ((key.ports[1] as u32) << 16);
    let mut h = mix(FLOW_SEED, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, ports);
    h = mix(h, key.proto as u32);
    finish(h)
}
