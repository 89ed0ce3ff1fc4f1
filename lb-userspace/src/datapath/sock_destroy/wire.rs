//! The wire format of `sock_diag` requests and replies: fixed C
//! structures (`linux/inet_diag.h`), written and read field by field.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::InetSock;

/// `INET_DIAG_REQ_BYTECODE`: the request attribute holding a filter.
pub(super) const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_D_COND`: destination address (prefix) and port.
pub(super) const INET_DIAG_BC_D_COND: u8 = 8;
/// A netlink header's length; `struct inet_diag_sockid`'s;
/// `struct inet_diag_req_v2`'s; `struct inet_diag_msg`'s.
pub(super) const NLMSG_HDR: usize = 16;
pub(super) const SOCKID: usize = 48;
pub(super) const REQ_V2: usize = 8 + SOCKID;
pub(super) const DIAG_MSG: usize = 4 + SOCKID + 20;

/// `struct inet_diag_req_v2`: family `AF_INET`, `proto`, `states`, `id`.
pub(super) fn req_v2(proto: u8, states: u32, id: &[u8; SOCKID]) -> Vec<u8> {
    let mut req = Vec::with_capacity(REQ_V2 + 24);
    req.extend_from_slice(&[u8::try_from(libc::AF_INET).expect("2"), proto, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(id);
    req
}

/// The `INET_DIAG_REQ_BYTECODE` attribute of one condition: destination
/// `dst` (a /32 and its port). An op jumps `yes` bytes when it holds,
/// `no` when not; the program accepts when it ends exactly at its end.
pub(super) fn dst_filter(dst: SocketAddrV4) -> [u8; 20] {
    let code_len: u16 = 16; // op (4) + hostcond (8) + address (4)
    let mut attr = [0u8; 20];
    attr[0..2].copy_from_slice(&(code_len + 4).to_ne_bytes());
    attr[2..4].copy_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    // struct inet_diag_bc_op { code, yes, no: u16 }: yes ends the program
    // (accept), no jumps 4 bytes past it (reject).
    attr[4] = INET_DIAG_BC_D_COND;
    attr[5] = u8::try_from(code_len).expect("small");
    attr[6..8].copy_from_slice(&(code_len + 4).to_ne_bytes());
    // struct inet_diag_hostcond { family, prefix_len, port: int, addr }.
    attr[8] = u8::try_from(libc::AF_INET).expect("2");
    attr[9] = 32;
    attr[12..16].copy_from_slice(&i32::from(dst.port()).to_ne_bytes());
    attr[16..20].copy_from_slice(&dst.ip().octets());
    attr
}

/// `struct inet_diag_sockid` naming `sock`.
pub(super) fn sockid(sock: &InetSock) -> [u8; SOCKID] {
    let mut id = [0u8; SOCKID];
    id[0..2].copy_from_slice(&sock.src.port().to_be_bytes());
    id[2..4].copy_from_slice(&sock.dst.port().to_be_bytes());
    id[4..8].copy_from_slice(&sock.src.ip().octets());
    id[20..24].copy_from_slice(&sock.dst.ip().octets());
    id[36..40].copy_from_slice(&sock.ifindex.to_ne_bytes());
    // The kernel keeps the cookie as two u32 words, low word first.
    #[allow(clippy::cast_possible_truncation)]
    let (low, high) = (sock.cookie as u32, (sock.cookie >> 32) as u32);
    id[40..44].copy_from_slice(&low.to_ne_bytes());
    id[44..48].copy_from_slice(&high.to_ne_bytes());
    id
}

/// A `struct inet_diag_msg` of an IPv4 socket.
pub(super) fn parse_diag_msg(proto: u8, msg: &[u8]) -> Option<InetSock> {
    if msg.len() < DIAG_MSG || i32::from(msg[0]) != libc::AF_INET {
        return None;
    }
    let id = &msg[4..4 + SOCKID];
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    let addr = |at: usize| Ipv4Addr::new(id[at], id[at + 1], id[at + 2], id[at + 3]);
    Some(InetSock {
        proto,
        src: SocketAddrV4::new(addr(4), port(0)),
        dst: SocketAddrV4::new(addr(20), port(2)),
        ifindex: u32_at(id, 36),
        cookie: u64::from(u32_at(id, 40)) | (u64::from(u32_at(id, 44)) << 32),
    })
}

/// The native-order u32 at `at` of `buf` (which holds it).
pub(super) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
