//! Shared helpers of the integration tests and the demo: namespaces, the
//! cluster topology, test servers and clients, and the agent process.

pub mod agent;
pub mod apiserver;
pub mod before_after;
pub mod bench_run;
pub mod bulk;
pub mod cgroup;
pub mod charts;
pub mod cluster;
pub mod cpu;
pub mod fixture;
pub mod flood;
pub mod kubeproxy;
pub mod legacy;
pub mod load;
pub mod netns;
pub mod paced;
pub mod packet;
pub mod packet6;
pub mod procfs;
pub mod sock_client;
pub mod stats;
pub mod targets;
pub mod topology;
pub mod traffic;

/// Panics with a clear message unless running as root: the tests load BPF
/// programs and create network namespaces, and never skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests need root (they load BPF programs and create network namespaces): run `sudo cargo xtask test`"
    );
}

/// Panics unless bpffs is mounted at /sys/fs/bpf (`cargo xtask setup` mounts it).
pub fn require_bpffs() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let _ = f.next();
            f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
        }),
        "bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup` (or `mount -t bpf bpf /sys/fs/bpf`)"
    );
}

/// Panics with a clear message unless this kernel has IPv6 (it was not
/// booted with `ipv6.disable=1`): the IPv6 and dual-stack topologies need
/// it, and never skip silently. (Each of their namespaces turns IPv6 on for
/// itself, whatever the host's `disable_ipv6`.)
pub fn require_ipv6() {
    // SAFETY: socket has no preconditions; the descriptor is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) };
    let error = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: fd is the socket just opened, closed once.
        unsafe { libc::close(fd) };
    }
    assert!(
        fd >= 0 && std::path::Path::new("/proc/sys/net/ipv6").is_dir(),
        "these tests need IPv6, which this kernel does not have (an AF_INET6 socket: {}): \
         boot it without `ipv6.disable=1`",
        if fd >= 0 {
            "opens".to_string()
        } else {
            error.to_string()
        }
    );
}
