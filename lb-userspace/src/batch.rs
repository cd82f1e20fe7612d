//! `BPF_MAP_LOOKUP_BATCH`: many entries of a map per system call (aya 0.14 has no
//! batch operations). The connection table is counted and walked with it, and the
//! statistics read every backend slot with it.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// Where a walk of a map is: the kernel's batch position.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    position: Option<u32>,
    /// The walk is over.
    pub done: bool,
}

/// The next entries of the walk of `map` at `cursor` into `keys` and `values`
/// (at most `keys.len()`); how many. `values` must hold `per_key` values for
/// each key: 1, or the possible CPUs for a per-CPU map (whose values the kernel
/// writes one per CPU, each rounded up to 8 bytes: `V` must be a multiple of 8).
pub fn lookup<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    cursor: &mut Cursor,
    keys: &mut [K],
    values: &mut [V],
    per_key: usize,
) -> io::Result<usize> {
    /// `union bpf_attr`'s `batch` member.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    if per_key == 0 || (per_key > 1 && !size_of::<V>().is_multiple_of(8)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "values of a batch"));
    }
    let batch = keys.len().min(values.len() / per_key);
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: cursor.position.as_ref().map_or(0, |p| std::ptr::from_ref(p) as u64),
        out_batch: (&raw mut next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(batch).unwrap_or(u32::MAX),
        map_fd: u32::try_from(map.as_raw_fd()).unwrap_or(u32::MAX),
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the attribute points at buffers of `batch` keys and `batch * per_key`
    // values (the caller says the map's values come `per_key` to a key), and at two
    // u32 batch positions (an array's and a hash map's), all alive for the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
    };
    let n = attr.count as usize;
    if rc != 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the walk is over (this call's entries are in the buffers).
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
        cursor.done = true;
    }
    cursor.position = Some(next);
    Ok(n)
}

/// Every entry of the array `map` (`entries` of them), `per_key` values each
/// (see [`lookup`]), in index order.
pub fn array<V: Copy + Default>(
    map: BorrowedFd<'_>,
    entries: u32,
    per_key: usize,
) -> io::Result<Vec<V>> {
    let mut keys = vec![0u32; entries as usize];
    let mut values = vec![V::default(); entries as usize * per_key];
    let (mut cursor, mut read) = (Cursor::default(), 0);
    while !cursor.done && read < keys.len() {
        read +=
            lookup(map, &mut cursor, &mut keys[read..], &mut values[read * per_key..], per_key)?;
    }
    if read != keys.len() {
        return Err(io::Error::other(format!("read {read} of {entries} entries")));
    }
    Ok(values)
}
