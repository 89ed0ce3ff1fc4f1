//! The raw `bpf(2)` system call, for the commands aya 0.14 does not wrap
//! for us (`BPF_MAP_LOOKUP_BATCH` in [`super::batch`]; `BPF_OBJ_GET` of a
//! pin's descriptor and `BPF_LINK_DETACH` in [`super::unpin`]).

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// An all-zero attribute: the kernel's empty one, which each command fills.
#[must_use]
pub fn empty_attr() -> bpf_attr {
    // SAFETY: a C union of integers and arrays of integers: all zeros is valid.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr, sizeof(attr))`: the kernel's non-negative return value,
/// else the error it set.
///
/// # Safety
/// Every pointer `attr` holds for `cmd` is valid for what the kernel reads
/// or writes through it, for the whole call.
pub unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid attribute of the size passed; the pointers
    // in it are the caller's promise.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
