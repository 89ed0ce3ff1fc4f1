//! Netlink sockets the agent talks to the kernel through (`sock_diag` to
//! close sockets, rtnetlink for `lb-agent check`).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// How long a reply may take: a kernel that never answers must not hang
/// the agent.
const REPLY_TIMEOUT_S: libc::time_t = 2;

/// A netlink socket of `protocol` (e.g. `NETLINK_ROUTE`) in the calling
/// thread's network namespace, whose reads time out.
pub fn socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: REPLY_TIMEOUT_S,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval and its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).expect("small"),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
