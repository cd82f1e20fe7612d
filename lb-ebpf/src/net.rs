//! Wire headers and the one bounds-checked accessor every parser uses.
//!
//! Multi-byte fields are kept in network byte order; compare them against
//! constants converted with `to_be()` at compile time.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};

pub const ETH_HLEN: usize = 14;
/// The shortest Ethernet frame (without its FCS): a shorter one is padded to it.
pub const ETH_ZLEN: usize = 60;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const ICMP_HLEN: usize = 8;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// IPv4 `frag_off`: more-fragments flag and offset bits (host order).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
pub const IP_DF: u16 = 0x4000;

/// IPv6 next-header values: the extension headers `xdp-lb` walks or recognises.
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_ESP: u8 = 50;
pub const NEXTHDR_AH: u8 = 51;
pub const NEXTHDR_DEST: u8 = 60;
pub const NEXTHDR_MOBILITY: u8 = 135;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
/// IPv4 TOS of ICMP errors (precedence "internetwork control", as Linux sends them).
pub const IPTOS_PREC_INTERNETCONTROL: u8 = 0xc0;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The first bytes of TCP and UDP: the ports.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

#[repr(C)]
pub struct TcpHdr {
    pub ports: Ports,
    pub seq: u32,
    pub ack: u32,
    pub off_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub ports: Ports,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}

/// Pointer to a `T` at `offset` bytes into the frame, or `Err` when the frame is
/// shorter. The only way the programs touch packet memory.
#[inline(always)]
#[expect(clippy::result_unit_err, reason = "callers map the one failure to their own verdict")]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// Bytes in the frame, as a plain number. The volatile read keeps LLVM from folding
/// the subtraction into later arithmetic: the verifier allows `data_end - data`
/// but not `n - data_end`, which is what `n - (data_end - data)` may become.
#[inline(always)]
#[must_use]
pub fn frame_len(ctx: &XdpContext) -> usize {
    let len = ctx.data_end() - ctx.data();
    // SAFETY: reads the local just written.
    unsafe { core::ptr::read_volatile(&raw const len) }
}

/// Copies `T` four bytes at a time. Plain assignment of arrays and structs becomes a
/// call to a byte-wise `memmove` on BPF; volatile word copies stay a few loads and stores.
/// `T` must be a multiple of four bytes (addresses, IP headers).
#[inline(always)]
pub fn copy_words<T>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(4)) };
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: both point at a whole T (bounds-checked by the caller for packets);
        // x86 BPF tolerates the 2-byte alignment IP headers have after Ethernet.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}

/// Stores `words` four bytes at a time (see `copy_words`), e.g. a header built in
/// registers: unlike a copy, nothing is read back from the stack.
#[inline(always)]
pub fn write_words<const N: usize>(dst: *mut [u32; N], words: [u32; N]) {
    let d = dst.cast::<u32>();
    let mut i = 0;
    while i < N {
        // SAFETY: `dst` points at N words (bounds-checked by the caller for packets).
        unsafe { d.add(i).write_volatile(words[i]) };
        i += 1;
    }
}

/// Copies a MAC address as a 32-bit and a 16-bit word (see `copy_words`, `mac_eq`).
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "MACs sit at even offsets; x86 BPF loads unaligned anyway"
)]
pub fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: 6 bytes on both sides: a u32 at 0 and a u16 at 4.
    unsafe {
        d.cast::<u32>().write_volatile(s.cast::<u32>().read_volatile());
        d.add(4).cast::<u16>().write_volatile(s.add(4).cast::<u16>().read_volatile());
    }
}

/// Whether two MACs are equal: a 32-bit and a 16-bit compare folded into one
/// branch (byte-wise array equality would be six loads and branches on BPF).
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "MACs sit at even offsets; x86 BPF loads unaligned anyway"
)]
pub fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: 6 bytes on both sides: a u32 at 0 and a u16 at 4.
    let (hi, lo) = unsafe {
        (
            a.cast::<u32>().read_volatile() ^ b.cast::<u32>().read_volatile(),
            a.add(4).cast::<u16>().read_volatile() ^ b.add(4).cast::<u16>().read_volatile(),
        )
    };
    hi | u32::from(lo) == 0
}

/// `seed` plus the one's-complement sum of the `T` at `p` (packet or stack), by
/// the kernel's `bpf_csum_diff`; fold it with [`csum_fold`].
#[inline(always)]
#[expect(
    clippy::cast_sign_loss,
    reason = "the sum is 32 bits; the helper fails only on sizes ruled out below"
)]
pub fn csum_add<T>(p: *mut T, seed: u32) -> u32 {
    const { assert!(size_of::<T>().is_multiple_of(4) && size_of::<T>() <= 512) };
    // SAFETY: `p` points at a whole T (bounds-checked by the caller for packets).
    unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), size_of::<T>() as u32, seed) as u32 }
}

/// Folds a 32-bit one's-complement sum (e.g. from `bpf_csum_diff`) into the 16-bit
/// checksum to store: in the same byte order as the words that were summed.
#[inline(always)]
#[must_use]
pub fn csum_fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Internet checksum of an IPv4 header without options, `check` taken as zero.
#[inline(always)]
#[must_use]
pub fn ipv4_checksum(h: &Ipv4Hdr) -> u16 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, readable as ten u16 words.
    let words: &[u16; 10] = unsafe { &*core::ptr::from_ref(h).cast::<[u16; 10]>() };
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        if i != 5 {
            sum += u32::from(words[i]);
        }
        i += 1;
    }
    csum_fold(sum)
}

#[cfg(test)]
mod tests {
    use super::{Ipv4Hdr, csum_fold, ipv4_checksum};

    fn header(bytes: [u8; 20]) -> Ipv4Hdr {
        // SAFETY: Ipv4Hdr is 20 bytes of plain integers in wire order.
        unsafe { core::mem::transmute::<[u8; 20], Ipv4Hdr>(bytes) }
    }

    #[test]
    fn the_checksum_of_a_known_header_is_its_wire_value() {
        // 192.168.0.1 -> 192.168.0.199, UDP, 115 bytes, DF; on the wire with b861.
        // Its sum carries out of 16 bits twice (0x2479c).
        let wire = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header(wire)).to_ne_bytes(), [0xb8, 0x61]);
    }

    /// What a receiver checks (RFC 1071): the whole header, checksum included,
    /// sums to all ones, whatever `check` held when it was computed.
    #[test]
    fn a_header_with_its_checksum_sums_to_all_ones() {
        let mut all_ones = [0xff; 20];
        all_ones[0] = 0x45;
        let mut tunnel = [0; 20];
        tunnel[..10].copy_from_slice(&[0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 4]);
        tunnel[12..].copy_from_slice(&[10, 0, 0, 1, 172, 16, 255, 254]);
        // Summed on x86 (little-endian) to 0x7ffff: folding once leaves 0x10006, a carry to fold again.
        let mut folds_twice = all_ones;
        folds_twice[4..6].copy_from_slice(&[0xc1, 0x00]);
        for mut bytes in [all_ones, folds_twice, tunnel] {
            for stale in [[0, 0], [0xff, 0xff], [0x12, 0x34]] {
                bytes[10..12].copy_from_slice(&stale);
                let check = ipv4_checksum(&header(bytes));
                bytes[10..12].copy_from_slice(&check.to_ne_bytes());
                let sum =
                    bytes.chunks(2).map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]]))).sum();
                assert_eq!(csum_fold(sum), 0, "{bytes:02x?}");
            }
        }
    }
}
