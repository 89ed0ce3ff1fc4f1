//! Copies and zeroing that stay inline.
//!
//! bpf-linker has LLVM expand `memcpy` inline, in order
//! (`--bpf-expand-memcpy-in-order`), but leaves `memmove` and `memset` as
//! calls to aya-ebpf's byte-at-a-time loops: a 56-byte entry costs 56
//! rounds of a loop, on every packet that copies it.
//! - LLVM turns an assignment into a `memmove` where it cannot prove the
//!   two places apart (a map value and the per-CPU scratch, or two fields
//!   reached through pointers). Such copies go through [`copy`],
//!   [`copy_from`] and [`copy_to`]: one `memcpy` from the source straight into the
//!   destination, no temporary to forward.
//! - `mem::zeroed` and `[0; N]` become a `memset`: [`zero`] stores words;
//!   a short padding array is written as a literal (`[0, 0, 0]`).
//!
//! What is left calls them only where bytes move within the packet
//! (building a refusal, rewriting an ICMP error's quote), which LLVM cannot
//! prove apart either.

/// Copies `src` into `dst`: the two cannot overlap (a shared and a
/// mutable reference).
#[inline(always)]
pub fn copy<T: Copy>(dst: &mut T, src: &T) {
    // SAFETY: both are valid, aligned references to a `T`, and Rust's
    // rules keep a `&mut` apart from any `&`.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, 1) };
}

/// Copies the `T` at `src` (in a map value) into `dst`.
///
/// # Safety
/// `src` points at a live, aligned `T` that does not overlap `dst` (in a
/// map value a lookup returned, never this CPU's scratch that `dst` is in).
#[inline(always)]
pub unsafe fn copy_from<T: Copy>(dst: &mut T, src: *const T) {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, 1) };
}

/// Copies `src` into the `T` at `dst` (in a map value other CPUs may read:
/// no reference to it is made).
///
/// # Safety
/// `dst` points at a live, aligned, writable `T` that does not overlap `src`.
#[inline(always)]
pub unsafe fn copy_to<T: Copy>(dst: *mut T, src: &T) {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, 1) };
}

/// Zeroes `value` in place, as 32-bit words (`mem::zeroed` is a `memset`
/// call here; zeroing a copy would cost the stack a second one): the
/// zeroed `T`.
///
/// # Safety
/// All zeros must be a valid `T`.
#[inline(always)]
pub unsafe fn zero<T>(value: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const {
        assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4);
    }
    let words = value.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: within the value, aligned (asserted above). Volatile, so
        // LLVM does not fold the stores back into a `memset`.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is written; the caller's promise makes it a `T`.
    unsafe { value.assume_init_mut() }
}
