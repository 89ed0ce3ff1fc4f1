//! The wire format of `sock_diag` requests and replies: fixed C
//! structures (`linux/inet_diag.h`), written and read field by field.

use super::{InetSock, SockFamily};

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

/// `struct inet_diag_req_v2`: `family`, `proto`, `states`, `id`.
pub(super) fn req_v2(family: u8, proto: u8, states: u32, id: &[u8; SOCKID]) -> Vec<u8> {
    let mut req = Vec::with_capacity(REQ_V2 + 36);
    req.extend_from_slice(&[family, proto, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(id);
    req
}

/// The `INET_DIAG_REQ_BYTECODE` attribute of one condition: destination
/// `dst` (its whole address and its port). An op jumps `yes` bytes when it
/// holds, `no` when not; the program accepts when it ends exactly at its
/// end.
pub(super) fn dst_filter<S: SockFamily>(dst: S) -> Vec<u8> {
    let addr = dst.octets();
    // op (4) + hostcond (8) + address (4 or 16)
    let code_len = u16::try_from(12 + addr.len()).expect("small");
    let mut attr = vec![0u8; 4 + usize::from(code_len)];
    attr[0..2].copy_from_slice(&(code_len + 4).to_ne_bytes());
    attr[2..4].copy_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    // struct inet_diag_bc_op { code, yes, no: u16 }: yes ends the program
    // (accept), no jumps 4 bytes past it (reject).
    attr[4] = INET_DIAG_BC_D_COND;
    attr[5] = u8::try_from(code_len).expect("small");
    attr[6..8].copy_from_slice(&(code_len + 4).to_ne_bytes());
    // struct inet_diag_hostcond { family, prefix_len, port: int, addr }.
    attr[8] = S::AF;
    attr[9] = u8::try_from(addr.len() * 8).expect("32 or 128");
    attr[12..16].copy_from_slice(&i32::from(dst.port_of()).to_ne_bytes());
    attr[16..].copy_from_slice(&addr);
    attr
}

/// `struct inet_diag_sockid` naming `sock` (its addresses fill the first
/// 4 or all 16 bytes of their fields).
pub(super) fn sockid<S: SockFamily>(sock: &InetSock<S>) -> [u8; SOCKID] {
    let mut id = [0u8; SOCKID];
    id[0..2].copy_from_slice(&sock.src.port_of().to_be_bytes());
    id[2..4].copy_from_slice(&sock.dst.port_of().to_be_bytes());
    let (src, dst) = (sock.src.octets(), sock.dst.octets());
    id[4..4 + src.len()].copy_from_slice(&src);
    id[20..20 + dst.len()].copy_from_slice(&dst);
    id[36..40].copy_from_slice(&sock.ifindex.to_ne_bytes());
    // The kernel keeps the cookie as two u32 words, low word first.
    #[allow(clippy::cast_possible_truncation)]
    let (low, high) = (sock.cookie as u32, (sock.cookie >> 32) as u32);
    id[40..44].copy_from_slice(&low.to_ne_bytes());
    id[44..48].copy_from_slice(&high.to_ne_bytes());
    id
}

/// A `struct inet_diag_msg` of a socket of family `S`.
pub(super) fn parse_diag_msg<S: SockFamily>(proto: u8, msg: &[u8]) -> Option<InetSock<S>> {
    if msg.len() < DIAG_MSG || msg[0] != S::AF {
        return None;
    }
    let id = &msg[4..4 + SOCKID];
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    let field = |at: usize| -> [u8; 16] { id[at..at + 16].try_into().expect("16 bytes") };
    Some(InetSock {
        proto,
        src: S::from_field(&field(4), port(0)),
        dst: S::from_field(&field(20), port(2)),
        ifindex: u32_at(id, 36),
        cookie: u64::from(u32_at(id, 40)) | (u64::from(u32_at(id, 44)) << 32),
    })
}

/// The native-order u32 at `at` of `buf` (which holds it).
pub(super) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
