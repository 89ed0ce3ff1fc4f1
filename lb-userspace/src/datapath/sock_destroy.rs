//! Closing sockets the socket programs pointed at a backend that is gone
//! (netlink `sock_diag`): a dump of a namespace's TCP or UDP sockets of one
//! family connected to one backend (`SOCK_DIAG_BY_FAMILY`, filtered in the
//! kernel by a bytecode condition on the destination), then `SOCK_DESTROY`
//! (Linux 4.5, `CONFIG_INET_DIAG_DESTROY`) of each whose cookie the
//! family's socket reverse map (`SOCK_REVERSE`, `SOCK_REVERSE6`) records
//! with that backend and the frontend's address. Written once for both
//! families ([`SockFamily`]). The kernel aborts
//! such a socket (`ECONNABORTED` to the application; a TCP peer gets a
//! reset); the application reconnects and `connect` picks a live backend.
//!
//! A raw netlink socket with `libc`, not a crate: the messages are three
//! fixed C structures, and the rust-netlink `sock_diag` crate emits only
//! `SOCK_DIAG_BY_FAMILY` messages. A netlink socket serves the network
//! namespace it was created in: [`SockDiag::open`] takes the calling
//! thread's, and [`close_pointed_at`] works in whichever it is given.

use std::{
    collections::HashMap,
    io,
    net::{Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, OwnedFd},
};

use lb_common::{
    maps6::{ipv6_words, SockRevEntry6, SockRevKey6, MAP_SOCK_REVERSE6},
    SockRevEntry, SockRevKey, MAP_SOCK_REVERSE,
};
use tracing::warn;

use self::wire::{dst_filter, parse_diag_msg, req_v2, sockid, u32_at, NLMSG_HDR, SOCKID};
use crate::{
    desired::AddrFamily,
    gone::{self, GoneBackend},
};

mod wire;

/// `SOCK_DIAG_BY_FAMILY`: a dump (or one socket) of a family.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY`: abort one socket.
const SOCK_DESTROY: u16 = 21;
/// `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`, `NLM_F_ACK`, `NLM_F_DUMP` (`ROOT | MATCH`).
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
/// TCP states with an application behind them and a peer: all but
/// `LISTEN` (10), `CLOSE` (7), `TIME_WAIT` (6) and `NEW_SYN_RECV` (12).
const TCP_STATES: u32 =
    (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);
/// A connected UDP socket is `ESTABLISHED` (1); an unconnected one (its
/// sends balanced one by one) is `CLOSE` and is never closed here.
const UDP_STATES: u32 = 1 << 1;
/// Backends of one protocol found by filtered dumps at most; beyond, one
/// dump of all the protocol's connected sockets, filtered here.
const FILTERED_DUMPS: usize = 8;
/// Replies read per request at most (each read holds one or more
/// messages; a dump ends with `NLMSG_DONE`).
const MAX_READS: usize = 1 << 16;

/// A family's sockets as `sock_diag` and the socket reverse map name them.
pub trait SockFamily: AddrFamily {
    /// `sock_diag`'s family: `AF_INET` or `AF_INET6`.
    const AF: u8;
    /// The family's socket reverse map.
    const REVERSE_MAP: &'static str;
    /// The reverse map's key.
    type RevKey: aya::Pod;
    /// The reverse map's value.
    type RevEntry: aya::Pod;
    /// The reverse-map key of socket `cookie` pointed at `backend`.
    fn rev_key(cookie: u64, backend: Self) -> Self::RevKey;
    /// The Service address (the one the socket asked for) `entry` records.
    fn svc_of(entry: &Self::RevEntry) -> Self;
    /// The entry that records `svc` (as the socket programs write it).
    fn rev_entry(svc: Self) -> Self::RevEntry;
    /// The address's bytes, network order (4 or 16).
    fn octets(&self) -> Vec<u8>;
    /// The socket address of `port` and the address whose bytes
    /// `inet_diag_sockid`'s 16-byte field `field` starts with.
    fn from_field(field: &[u8; 16], port: u16) -> Self;
}

impl SockFamily for SocketAddrV4 {
    const AF: u8 = 2;
    const REVERSE_MAP: &'static str = MAP_SOCK_REVERSE;
    type RevKey = SockRevKey;
    type RevEntry = SockRevEntry;

    fn rev_key(cookie: u64, backend: Self) -> SockRevKey {
        SockRevKey {
            cookie,
            backend_addr: u32::from_ne_bytes(backend.ip().octets()),
            backend_port: backend.port().to_be(),
            pad: 0,
        }
    }

    fn svc_of(entry: &SockRevEntry) -> Self {
        gone::svc_addr(entry.svc_addr, entry.svc_port)
    }

    fn rev_entry(svc: Self) -> SockRevEntry {
        SockRevEntry {
            svc_addr: u32::from_ne_bytes(svc.ip().octets()),
            svc_port: svc.port().to_be(),
            pad: 0,
        }
    }

    fn octets(&self) -> Vec<u8> {
        self.ip().octets().to_vec()
    }

    fn from_field(field: &[u8; 16], port: u16) -> Self {
        Self::new([field[0], field[1], field[2], field[3]].into(), port)
    }
}

impl SockFamily for SocketAddrV6 {
    const AF: u8 = 10;
    const REVERSE_MAP: &'static str = MAP_SOCK_REVERSE6;
    type RevKey = SockRevKey6;
    type RevEntry = SockRevEntry6;

    fn rev_key(cookie: u64, backend: Self) -> SockRevKey6 {
        SockRevKey6 {
            cookie,
            backend_addr: ipv6_words(backend.ip().octets()),
            backend_port: backend.port().to_be(),
            pad: [0; 3],
        }
    }

    fn svc_of(entry: &SockRevEntry6) -> Self {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(entry.svc_addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Self::new(Ipv6Addr::from(octets), u16::from_be(entry.svc_port), 0, 0)
    }

    fn rev_entry(svc: Self) -> SockRevEntry6 {
        SockRevEntry6 {
            svc_addr: ipv6_words(svc.ip().octets()),
            svc_port: svc.port().to_be(),
            pad: 0,
        }
    }

    fn octets(&self) -> Vec<u8> {
        self.ip().octets().to_vec()
    }

    fn from_field(field: &[u8; 16], port: u16) -> Self {
        Self::new(Ipv6Addr::from(*field), port, 0, 0)
    }
}

/// A socket as the dump names it; enough to name it to `SOCK_DESTROY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InetSock<S = SocketAddrV4> {
    /// IP protocol number.
    pub proto: u8,
    /// Its local address and port.
    pub src: S,
    /// Its peer.
    pub dst: S,
    /// The device it is bound to (0: none).
    pub ifindex: u32,
    /// Its cookie (`SO_COOKIE`, `bpf_get_socket_cookie`).
    pub cookie: u64,
}

/// A netlink `sock_diag` socket of one network namespace.
pub struct SockDiag {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl SockDiag {
    /// A `sock_diag` socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let fd = crate::netlink::socket(libc::NETLINK_SOCK_DIAG)?;
        Ok(Self {
            fd,
            seq: std::cell::Cell::new(1),
        })
    }

    /// The connected sockets of protocol `proto` (TCP or UDP) whose peer is
    /// `dst`.
    pub fn connected_to<S: SockFamily>(&self, proto: u8, dst: S) -> io::Result<Vec<InetSock<S>>> {
        self.connected(proto, Some(dst))
    }

    /// The connected sockets of family `S` and protocol `proto`, those
    /// whose peer is `dst` when given (the kernel filters).
    pub fn connected<S: SockFamily>(
        &self,
        proto: u8,
        dst: Option<S>,
    ) -> io::Result<Vec<InetSock<S>>> {
        let states = if proto == lb_common::IPPROTO_TCP {
            TCP_STATES
        } else {
            UDP_STATES
        };
        let mut id = [0u8; SOCKID];
        // No cookie: `INET_DIAG_NOCOOKIE`.
        id[40..48].copy_from_slice(&[0xff; 8]);
        let mut body = req_v2(S::AF, proto, states, &id);
        if let Some(dst) = dst {
            body.extend_from_slice(&dst_filter(dst));
        }
        let seq = self.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &body)?;
        let mut found = Vec::new();
        self.replies(seq, |ty, payload| {
            if ty == SOCK_DIAG_BY_FAMILY {
                if let Some(sock) = parse_diag_msg(proto, payload) {
                    // The kernel filtered already; this is a second look.
                    if dst.is_none_or(|dst| sock.dst == dst) {
                        found.push(sock);
                    }
                }
            }
        })?;
        Ok(found)
    }

    /// Aborts `sock`; `Ok(false)` when it is gone already.
    pub fn destroy<S: SockFamily>(&self, sock: &InetSock<S>) -> io::Result<bool> {
        let body = req_v2(S::AF, sock.proto, u32::MAX, &sockid(sock));
        let seq = self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &body)?;
        match self.replies(seq, |_, _| {}) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends one request; returns its sequence number.
    fn send(&self, ty: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let len = u32::try_from(NLMSG_HDR + body.len()).expect("a small message");
        let mut msg = Vec::with_capacity(NLMSG_HDR + body.len());
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a zeroed sockaddr_nl is the kernel's address (pid 0).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = u16::try_from(libc::AF_NETLINK).expect("16 bits");
        // SAFETY: valid buffer and address with their lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_nl>()).expect("small"),
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(seq)
    }

    /// Reads the replies to request `seq`, handing each message's type and
    /// payload to `each`, until the dump's end or the acknowledgement; an
    /// error reply becomes the error.
    fn replies(&self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..MAX_READS {
            // SAFETY: a valid buffer and its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                return Err(io::Error::last_os_error());
            };
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDR {
                let len = u32_at(rest, 0) as usize;
                if len < NLMSG_HDR || len > rest.len() {
                    return Err(io::Error::other("a malformed netlink reply"));
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let payload = &rest[NLMSG_HDR..len];
                if u32_at(rest, 8) == seq {
                    match ty {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code =
                                i32::from_ne_bytes(payload[..4].try_into().map_err(|_| {
                                    io::Error::other("a short netlink error reply")
                                })?);
                            return match code {
                                0 => Ok(()),
                                code => Err(io::Error::from_raw_os_error(-code)),
                            };
                        }
                        _ => each(ty, payload),
                    }
                }
                // Messages are 4-byte aligned.
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
        Err(io::Error::other("no end to the netlink dump"))
    }
}

/// What [`close_pointed_at`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closed {
    /// Sockets aborted.
    pub destroyed: u64,
    /// Dumps or aborts that failed (each logged).
    pub failed: u64,
}

impl std::ops::AddAssign for Closed {
    fn add_assign(&mut self, other: Self) {
        self.destroyed += other.destroyed;
        self.failed += other.failed;
    }
}

/// Closes the sockets of `diag`'s namespace that the socket programs
/// pointed at a backend of `gone` through its frontend: connected to the
/// backend, with a socket reverse-map entry (`reverse`) for their cookie
/// and that backend whose Service address the frontend serves. A socket
/// that connected to the backend's own address has no entry and stays
/// open.
pub fn close_pointed_at<S: SockFamily>(
    diag: &SockDiag,
    gone: &[GoneBackend<S>],
    reverse: impl Fn(&S::RevKey) -> Option<S::RevEntry>,
) -> Closed {
    let mut closed = Closed::default();
    // (protocol, backend) -> the frontends it left.
    let mut left: HashMap<(u8, S), Vec<&GoneBackend<S>>> = HashMap::new();
    for g in gone {
        left.entry((S::proto(&g.frontend).number(), g.backend))
            .or_default()
            .push(g);
    }
    let mut sockets = Vec::new();
    for (proto, dsts) in dumps(&gone::backends_by_proto(gone)) {
        match diag.connected(proto, dsts) {
            Ok(found) => sockets.extend(found),
            Err(e) => {
                warn!(
                    ?dsts,
                    proto, "listing the sockets connected to removed backends: {e}"
                );
                closed.failed += 1;
            }
        }
    }
    for sock in sockets {
        let backend = sock.dst;
        let Some(frontends) = left.get(&(sock.proto, backend)) else {
            continue;
        };
        // Only a socket our programs pointed at the backend has an entry.
        let Some(entry) = reverse(&S::rev_key(sock.cookie, backend)) else {
            continue;
        };
        let svc = S::svc_of(&entry);
        if !frontends.iter().any(|g| g.serves(sock.proto, svc)) {
            continue;
        }
        match diag.destroy(&sock) {
            Ok(true) => closed.destroyed += 1,
            Ok(false) => {}
            Err(e) => {
                warn!(%backend, %svc, cookie = sock.cookie, "closing a socket: {e}");
                closed.failed += 1;
            }
        }
    }
    closed
}

/// The dumps that find the sockets of `backends` ((protocol, backend),
/// sorted): one per backend, filtered by the kernel, or one of all the
/// protocol's connected sockets (`None`) when more than
/// [`FILTERED_DUMPS`] backends of a protocol went (a big Service scaled
/// down: each dump walks every socket of the protocol).
fn dumps<S: SockFamily>(backends: &[(u8, S)]) -> Vec<(u8, Option<S>)> {
    let mut out = Vec::new();
    for chunk in backends.chunk_by(|a, b| a.0 == b.0) {
        let proto = chunk[0].0;
        if chunk.len() > FILTERED_DUMPS {
            out.push((proto, None));
        } else {
            out.extend(chunk.iter().map(|&(proto, backend)| (proto, Some(backend))));
        }
    }
    out
}

#[cfg(test)]
mod tests;
