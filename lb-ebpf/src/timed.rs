//! The prologue of the timed benchmark programs (`xdp_*_timed`): puts back the
//! frame that `lb_common::bench::Script` gives this run, so a program that rewrites
//! or encapsulates can be run many times per `BPF_PROG_TEST_RUN` (which does not
//! restore the frame between runs). Never on a production path.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    maps::Array,
    programs::XdpContext,
};
use lb_common::bench::{FRAME_MAX, Script};

use crate::net::ptr_at;

/// `restore` on the script in `map`'s one entry.
#[inline(always)]
#[expect(clippy::result_unit_err, reason = "the caller aborts the run on any failure")]
pub fn restore_from(ctx: &XdpContext, map: &Array<Script>) -> Result<(), ()> {
    // SAFETY: a map value, only touched by this program in one test run at a time.
    let s = unsafe { &mut *map.get_ptr_mut(0).ok_or(())? };
    restore(ctx, s)
}

/// Restores the frame for this run: the head where the first run had it, the
/// scripted length and bytes, then this run's flow number (`Script::lag` flows
/// back for a flow's later packets) added to the source port and address.
#[inline(always)]
#[expect(clippy::result_unit_err, reason = "the caller aborts the run on any failure")]
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "head moves and frame lengths are a few hundred bytes at most"
)]
pub fn restore(ctx: &XdpContext, s: &mut Script) -> Result<(), ()> {
    // The frame's start as a plain number: written to the map (the verifier lets a
    // privileged program store a packet pointer there) and read back, so it may
    // be subtracted from.
    let now = unsafe {
        (&raw mut s.now).cast::<usize>().write_volatile(ctx.data());
        (&raw const s.now).read_volatile()
    };
    if s.head == 0 {
        s.head = now;
    }
    let back = s.head.wrapping_sub(now) as i32;
    if back != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, back) } != 0 {
        return Err(());
    }
    let seq = s.seq;
    s.seq = seq + 1;
    let (k, flow) = s.run(seq);
    let want = *s.lens.get(k).ok_or(())? as usize;
    if want == 0 || want > FRAME_MAX {
        return Err(());
    }
    let have = ctx.data_end() - ctx.data();
    let grow = want as i32 - have as i32;
    if grow != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, grow) } != 0 {
        return Err(());
    }
    let frame = s.frames.get_mut(k).ok_or(())?;
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, frame.as_mut_ptr().cast(), want as u32) } != 0 {
        return Err(());
    }
    if s.per_flow != 0 {
        bump(ctx, s.port_off, flow as u16)?;
        bump(ctx, s.addr_off, (flow >> 16) as u16)?;
    }
    Ok(())
}

/// Adds `n` to the big-endian 16-bit word at `off` (below `FRAME_MAX`).
#[inline(always)]
fn bump(ctx: &XdpContext, off: u32, n: u16) -> Result<(), ()> {
    let p = ptr_at::<u16>(ctx, off as usize & (FRAME_MAX - 1))?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe { *p = u16::from_be(*p).wrapping_add(n).to_be() };
    Ok(())
}
