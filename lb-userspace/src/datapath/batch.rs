//! Whole-array reads in a few system calls. Reading an array one element
//! per `BPF_MAP_LOOKUP_ELEM` costs a system call per slot: the backend
//! arrays hold `MAX_BACKENDS` (262,144) slots each, so a restarted agent's
//! read-back took half a million calls. `BPF_MAP_LOOKUP_BATCH` (Linux 5.6,
//! below the data path's minimum kernel) copies [`BATCH_ELEMENTS`] slots
//! per call; aya 0.14 has no wrapper for it.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, IterableMap as _, MapData},
    Pod,
};
use aya_obj::generated::bpf_cmd;

use super::bpf_syscall::{bpf, empty_attr};

/// Slots copied per system call.
pub const BATCH_ELEMENTS: u32 = 8192;

/// Every slot of `array`, in index order.
pub fn read_array<V: Pod>(array: &Array<MapData, V>) -> Result<Vec<V>> {
    let len = array.len();
    let fd = array.map().fd().as_fd().as_raw_fd();
    let mut values: Vec<V> = Vec::with_capacity(len as usize);
    let mut keys = vec![0u32; BATCH_ELEMENTS as usize];
    // The kernel's cursor: the index to start from (absent on the first call).
    let mut next: u32 = 0;
    let mut read: u32 = 0;
    while read < len {
        let want = BATCH_ELEMENTS.min(len - read);
        let mut attr = empty_attr();
        let mut out: u32 = 0;
        // SAFETY: writing the batch member of the zeroed union; every
        // pointer is valid for `want` elements (keys: `keys`, values: the
        // spare capacity after `read`) and lives across the call.
        unsafe {
            attr.batch.in_batch = if read == 0 {
                0
            } else {
                std::ptr::from_mut(&mut next) as u64
            };
            attr.batch.out_batch = std::ptr::from_mut(&mut out) as u64;
            attr.batch.keys = keys.as_mut_ptr() as u64;
            attr.batch.values = values.as_mut_ptr().add(read as usize) as u64;
            attr.batch.count = want;
            attr.batch.map_fd = u32::try_from(fd).context("a map descriptor")?;
        }
        // SAFETY: the kernel writes at most `count` keys and values into the
        // buffers the attribute points at, which live across the call.
        let ret = unsafe { bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // SAFETY: the kernel set `count` to the elements it copied.
        let copied = unsafe { attr.batch.count };
        // ENOENT: the end of the array (the elements before it are copied).
        let at_end = match ret {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e).context("reading an array map in batches"),
        };
        for (i, &key) in keys.iter().take(copied as usize).enumerate() {
            let at = read + u32::try_from(i).expect("a batch index");
            if key != at {
                bail!("a batch read of an array returned slot {key} at {at}");
            }
        }
        read += copied;
        // SAFETY: the kernel initialised the first `read` elements (each a
        // plain-data `V`, as `Pod` promises).
        unsafe { values.set_len(read as usize) };
        if at_end || copied == 0 {
            break;
        }
        next = out;
    }
    if read != len {
        bail!("a batch read of an array stopped at slot {read} of {len}");
    }
    Ok(values)
}
