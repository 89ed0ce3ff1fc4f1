//! Socket-level balancing (`--socket-lb host`): the cgroup `sock_addr`
//! programs (`lb_sock_*`, see `lb-ebpf/src/sock.rs`) attached to one cgroup
//! v2 directory, which the operator names (`--socket-lb-cgroup`; there is
//! no default, so nothing attaches to a machine's root cgroup by accident).
//! They balance the sockets of the agent's own network namespace (the
//! node's: host processes, hostNetwork pods) at `connect`, with no
//! per-packet work; pods keep the per-packet path.
//!
//! Each link is pinned under the layout's `links/` as `sock-<hook>`, so the
//! programs keep serving when the agent exits. A restarted agent attaches
//! its own program, then removes the old pin and detaches the old link,
//! and pins the new one: for that instant both run, and the second finds a
//! backend's address, not a Service's, and leaves the call alone.

use std::{
    fs::File,
    io,
    net::{SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::HashMap as AyaHashMap,
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};
use tracing::{info, warn};

use super::{
    pod_netns,
    sock_destroy::{close_pointed_at, Closed, SockDiag, SockFamily},
};
use crate::gone::GoneBackend;

/// The socket programs and the kind of their link pins.
pub const PROGRAMS: [(&str, &str); 4] = [
    ("lb_sock_connect4", "sock-connect4"),
    ("lb_sock_sendmsg4", "sock-sendmsg4"),
    ("lb_sock_recvmsg4", "sock-recvmsg4"),
    ("lb_sock_getpeername4", "sock-getpeername4"),
];

/// IPv6's socket programs (`lb-ebpf/src/sock6.rs`; IPv6 Services, and IPv4
/// ones through v4-mapped addresses), attached beside [`PROGRAMS`] unless
/// IPv6 is off (`--ipv6 off`).
pub const PROGRAMS6: [(&str, &str); 4] = [
    ("lb_sock_connect6", "sock-connect6"),
    ("lb_sock_sendmsg6", "sock-sendmsg6"),
    ("lb_sock_recvmsg6", "sock-recvmsg6"),
    ("lb_sock_getpeername6", "sock-getpeername6"),
];

/// The socket programs to attach: IPv4's, and IPv6's when `ipv6`.
fn programs(ipv6: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    PROGRAMS
        .into_iter()
        .chain(PROGRAMS6.into_iter().filter(move |_| ipv6))
}

/// The global the programs compare a socket's namespace cookie with.
pub const HOST_NETNS_COOKIE: &str = "HOST_NETNS_COOKIE";
/// The global that makes the programs balance every namespace's sockets.
pub const SOCK_ALL_NETNS: &str = "SOCK_ALL_NETNS";

/// Whose sockets socket-level balancing serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketLbScope {
    /// The agent's own network namespace (the node's): host processes and
    /// hostNetwork pods; pods keep the per-packet path.
    #[default]
    Host,
    /// Every network namespace under the cgroup: the node's and its pods'
    /// (east-west TCP and UDP need no per-packet translation).
    All,
}

impl SocketLbScope {
    /// The value of [`SOCK_ALL_NETNS`] for this scope.
    #[must_use]
    pub fn all_netns(self) -> u8 {
        u8::from(self == Self::All)
    }
}

/// `CGROUP2_SUPER_MAGIC`: the file system type of a cgroup v2 hierarchy.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14).
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain syscalls; the socket is closed by `OwnedFd`.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("a socket to read the netns cookie");
    }
    // SAFETY: `fd` is a new socket of ours.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("8 bytes");
    // SAFETY: valid pointers to a u64 and its length.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error())
            .context("reading SO_NETNS_COOKIE (Linux 5.14 or later)");
    }
    Ok(cookie)
}

/// Opens `path` as a cgroup v2 directory, or says why not.
pub fn open_cgroup(path: &Path) -> Result<File> {
    let file = File::open(path)
        .with_context(|| format!("--socket-lb-cgroup {}: cannot open it", path.display()))?;
    // SAFETY: a zeroed statfs filled in by the call; valid fd.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("--socket-lb-cgroup {}", path.display()));
    }
    // `f_type` is signed with glibc, unsigned with musl.
    if u64::try_from(stat.f_type).ok() != Some(CGROUP2_SUPER_MAGIC) {
        bail!(
            "--socket-lb-cgroup {}: not a cgroup v2 directory (on a hybrid host the v2 \
             hierarchy may be at /sys/fs/cgroup/unified)",
            path.display()
        );
    }
    Ok(file)
}

/// Loads the socket programs (verifies them): IPv6's too when `ipv6`.
pub fn load(ebpf: &mut Ebpf, ipv6: bool) -> Result<()> {
    for (name, _) in programs(ipv6) {
        program(ebpf, name)?
            .load()
            .with_context(|| format!("the verifier rejected {name}"))?;
    }
    Ok(())
}

/// Attaches every socket program to the cgroup at `cgroup` (IPv6's when
/// `ipv6`), each through a new link pinned in `links_dir` in place of an
/// earlier agent's. Without `ipv6`, an earlier agent's IPv6 links go.
pub fn attach(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    scope: SocketLbScope,
    ipv6: bool,
    links_dir: &Path,
) -> Result<()> {
    let dir = open_cgroup(cgroup)?;
    if !ipv6 {
        detach_pinned_of(&PROGRAMS6, links_dir);
    }
    for (name, kind) in programs(ipv6) {
        let prog = program(ebpf, name)?;
        // A link (Linux 5.7): the kernel makes every cgroup link multi-attach
        // and takes no other mode.
        let id = prog
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup {}", cgroup.display()))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .with_context(|| format!("{name}: not a bpf_link"))?;
        // The new link serves (held by its fd) before the old one is
        // detached; then the new one takes the pin.
        let pin = links_dir.join(kind);
        super::unpin::detach_link(&pin)
            .with_context(|| format!("detaching the earlier link at {}", pin.display()))?;
        link.pin(&pin)
            .with_context(|| format!("pinning the link at {}", pin.display()))?;
    }
    let whose = match scope {
        SocketLbScope::Host => "the node's namespace",
        SocketLbScope::All => "every namespace: the node's and its pods'",
    };
    let families = if ipv6 { "IPv4 and IPv6" } else { "IPv4" };
    info!(cgroup = %cgroup.display(), "socket-level balancing attached ({families}; {whose})");
    Ok(())
}

/// Removes the pins of socket links an earlier agent left in `links_dir`
/// (socket-level balancing is now off): their links detach.
pub fn detach_pinned(links_dir: &Path) {
    detach_pinned_of(&PROGRAMS, links_dir);
    detach_pinned_of(&PROGRAMS6, links_dir);
}

/// Detaches the links `programs` pin in `links_dir`.
fn detach_pinned_of(programs: &[(&str, &str)], links_dir: &Path) {
    for &(_, kind) in programs {
        let pin: PathBuf = links_dir.join(kind);
        match super::unpin::detach_link(&pin) {
            Ok(true) => info!(pin = %pin.display(), "detached an earlier agent's socket program"),
            Ok(false) => {}
            Err(e) => {
                warn!(pin = %pin.display(), "cannot detach an earlier agent's socket program: {e}");
            }
        }
    }
}

impl super::Datapath {
    /// With socket-level balancing on, closes the sockets its programs
    /// pointed at a backend of `gone` (IPv4) or `gone6` (IPv6) (see
    /// [`super::sock_destroy::close_pointed_at`]): those of the agent's
    /// network namespace and, with the scope `all`, of every namespace in
    /// the configured directories (the pods'). `None` when it is off or
    /// nothing went. A failure is logged and counted, never fatal.
    pub fn close_sockets(
        &self,
        gone: &[GoneBackend],
        gone6: &[GoneBackend<SocketAddrV6>],
    ) -> Option<Closed> {
        if self.config.socket_lb_cgroup.is_none() || (gone.is_empty() && gone6.is_empty()) {
            return None;
        }
        let mut closed = Closed::default();
        let reverse = self.reverse_map::<SocketAddrV4>(!gone.is_empty(), &mut closed);
        let reverse6 = self.reverse_map::<SocketAddrV6>(!gone6.is_empty(), &mut closed);
        let mut close_in = |diag: io::Result<SockDiag>, whose: &dyn std::fmt::Display| match diag {
            Ok(diag) => {
                if let Some(map) = &reverse {
                    closed += close_pointed_at(&diag, gone, |key| map.get(key, 0).ok());
                }
                if let Some(map) = &reverse6 {
                    closed += close_pointed_at(&diag, gone6, |key| map.get(key, 0).ok());
                }
            }
            Err(e) => {
                warn!("a sock_diag socket in {whose} to close sockets of removed backends: {e}");
                closed.failed += 1;
            }
        };
        close_in(SockDiag::open(), &"the agent's namespace");
        if self.config.socket_lb_scope == SocketLbScope::All {
            for (path, netns) in pod_netns::namespaces(&self.config.socket_lb_netns_dirs) {
                let diag = pod_netns::open_in(&netns, &path, SockDiag::open);
                close_in(diag, &path.display());
            }
        }
        if closed.destroyed + closed.failed > 0 {
            info!(
                destroyed = closed.destroyed,
                failed = closed.failed,
                "closed sockets balanced to removed backends"
            );
        }
        Some(closed)
    }

    /// Family `S`'s socket reverse map, when `wanted` (some of its backends
    /// went); a missing map is logged and counted as a failure.
    fn reverse_map<S: SockFamily>(
        &self,
        wanted: bool,
        closed: &mut Closed,
    ) -> Option<AyaHashMap<&aya::maps::MapData, S::RevKey, S::RevEntry>> {
        if !wanted {
            return None;
        }
        let map = self
            .ebpf
            .map(S::REVERSE_MAP)
            .and_then(|map| AyaHashMap::try_from(map).ok());
        if map.is_none() {
            warn!(
                map = S::REVERSE_MAP,
                "no socket reverse map to close the sockets of removed backends"
            );
            closed.failed += 1;
        }
        map
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a cgroup sock_addr program"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cgroup_v2_directory_is_taken() {
        let err = open_cgroup(Path::new("/tmp")).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a cgroup v2 directory"),
            "{err:#}"
        );
        let err = open_cgroup(Path::new("/nonexistent/cgroup")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot open it"), "{err:#}");
    }

    #[test]
    fn ipv6_s_socket_programs_attach_only_with_ipv6_on() {
        let names = |ipv6| programs(ipv6).map(|(name, _)| name).collect::<Vec<_>>();
        assert_eq!(names(false), PROGRAMS.map(|(name, _)| name));
        let both = names(true);
        assert_eq!(both.len(), 8);
        assert!(PROGRAMS6.iter().all(|(name, _)| both.contains(name)));
        // Pins named apart from IPv4's, so that `--ipv6 off` removes only them.
        assert!(PROGRAMS6
            .iter()
            .all(|(_, kind)| PROGRAMS.iter().all(|(_, v4)| v4 != kind)));
    }

    #[test]
    fn the_netns_cookie_of_this_namespace_is_readable_and_stable() {
        let cookie = netns_cookie().unwrap();
        assert_ne!(cookie, 0);
        assert_eq!(netns_cookie().unwrap(), cookie);
    }
}
