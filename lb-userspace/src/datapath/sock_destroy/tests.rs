//! The messages, and real loopback sockets found and aborted (as root:
//! `SOCK_DESTROY` needs `CAP_NET_ADMIN`; skipped otherwise).

use std::{
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
};

use super::{wire::*, *};
use crate::desired::Protocol;

fn is_root() -> bool {
    // SAFETY: a plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: SOCK_DESTROY needs root");
    }
    root
}

/// `SO_COOKIE` of a socket.
fn cookie(fd: &impl AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap();
    // SAFETY: valid pointers to a u64 and its length.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    assert_eq!(ret, 0);
    cookie
}

fn v4(addr: std::net::SocketAddr) -> SocketAddrV4 {
    match addr {
        std::net::SocketAddr::V4(a) => a,
        std::net::SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

fn v6(addr: std::net::SocketAddr) -> SocketAddrV6 {
    match addr {
        std::net::SocketAddr::V6(a) => a,
        std::net::SocketAddr::V4(_) => panic!("IPv6 only"),
    }
}

#[test]
fn a_socket_id_reads_back_from_a_diag_message() {
    let sock: InetSock = InetSock {
        proto: 17,
        src: "127.0.0.1:40000".parse().unwrap(),
        dst: "127.0.0.2:53".parse().unwrap(),
        ifindex: 3,
        cookie: 0x1234_5678_9abc_def0,
    };
    let mut msg = vec![2u8, 1, 0, 0];
    msg.extend_from_slice(&sockid(&sock));
    msg.extend_from_slice(&[0; 20]);
    assert_eq!(parse_diag_msg(17, &msg), Some(sock));
    assert_eq!(
        parse_diag_msg::<SocketAddrV4>(17, &msg[..40]),
        None,
        "short"
    );
    msg[0] = 10;
    assert_eq!(parse_diag_msg::<SocketAddrV4>(17, &msg), None, "AF_INET6");
}

#[test]
fn an_ipv6_socket_id_reads_back_from_a_diag_message() {
    let sock: InetSock<SocketAddrV6> = InetSock {
        proto: 6,
        src: "[fd00::1]:40000".parse().unwrap(),
        dst: "[fd00:96::a]:80".parse().unwrap(),
        ifindex: 3,
        cookie: 0x1234_5678_9abc_def0,
    };
    let id = sockid(&sock);
    assert_eq!(
        &id[4..20],
        &sock.src.ip().octets(),
        "the whole source field"
    );
    assert_eq!(
        &id[20..36],
        &sock.dst.ip().octets(),
        "the whole destination field"
    );
    let mut msg = vec![10u8, 1, 0, 0];
    msg.extend_from_slice(&id);
    msg.extend_from_slice(&[0; 20]);
    assert_eq!(parse_diag_msg(6, &msg), Some(sock));
    msg[0] = 2;
    assert_eq!(parse_diag_msg::<SocketAddrV6>(6, &msg), None, "AF_INET");
}

#[test]
fn the_filter_is_one_destination_condition() {
    let f = dst_filter("10.0.0.7:8080".parse::<SocketAddrV4>().unwrap());
    assert_eq!(f.len(), 20);
    assert_eq!(u16::from_ne_bytes([f[0], f[1]]), 20, "attribute length");
    assert_eq!((f[4], f[5]), (INET_DIAG_BC_D_COND, 16), "code, yes");
    assert_eq!(u16::from_ne_bytes([f[6], f[7]]), 20, "no: past the end");
    assert_eq!(i32::from_ne_bytes(f[12..16].try_into().unwrap()), 8080);
    assert_eq!(&f[16..20], &[10, 0, 0, 7]);
    assert_eq!((f[8], f[9]), (2, 32), "AF_INET, a /32");
}

#[test]
fn the_ipv6_filter_is_one_destination_condition_on_the_whole_address() {
    let dst: SocketAddrV6 = "[fd00::7]:8080".parse().unwrap();
    let f = dst_filter(dst);
    assert_eq!(f.len(), 32);
    assert_eq!(u16::from_ne_bytes([f[0], f[1]]), 32, "attribute length");
    assert_eq!((f[4], f[5]), (INET_DIAG_BC_D_COND, 28), "code, yes");
    assert_eq!(u16::from_ne_bytes([f[6], f[7]]), 32, "no: past the end");
    assert_eq!((f[8], f[9]), (10, 128), "AF_INET6, a /128");
    assert_eq!(i32::from_ne_bytes(f[12..16].try_into().unwrap()), 8080);
    assert_eq!(&f[16..32], &dst.ip().octets());
}

#[test]
fn the_ipv6_reverse_map_s_words_read_back() {
    let svc: SocketAddrV6 = "[fd00:96::10]:53".parse().unwrap();
    let entry = SockRevEntry6 {
        svc_addr: ipv6_words(svc.ip().octets()),
        svc_port: 53u16.to_be(),
        pad: 0,
    };
    assert_eq!(SocketAddrV6::svc_of(&entry), svc);
}

#[test]
fn connected_tcp_and_udp_sockets_are_found_by_peer_and_aborted() {
    if !is_root() {
        return;
    }
    let diag = SockDiag::open().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = v4(listener.local_addr().unwrap());
    let mut client = TcpStream::connect(to).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let found = diag.connected_to(lb_common::IPPROTO_TCP, to).unwrap();
    assert_eq!(found.len(), 1, "the client, not the listener: {found:?}");
    assert_eq!(found[0].cookie, cookie(&client));
    assert_eq!(found[0].src, v4(client.local_addr().unwrap()));
    assert!(diag.destroy(&found[0]).unwrap());
    let err = client.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    assert!(!diag.destroy(&found[0]).unwrap(), "gone already");

    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = v4(server.local_addr().unwrap());
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a, b) = (
        UdpSocket::bind("0.0.0.0:0").unwrap(),
        UdpSocket::bind("0.0.0.0:0").unwrap(),
    );
    a.connect(to).unwrap();
    b.connect(other.local_addr().unwrap()).unwrap();
    let found = diag.connected_to(lb_common::IPPROTO_UDP, to).unwrap();
    assert_eq!(found.len(), 1, "only the socket connected to it: {found:?}");
    assert_eq!(found[0].cookie, cookie(&a));
    assert!(diag.destroy(&found[0]).unwrap());
    a.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let err = a.recv(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    b.send(b"x").unwrap();
}

#[test]
fn connected_ipv6_sockets_are_found_by_peer_and_aborted() {
    if !is_root() {
        return;
    }
    let diag = SockDiag::open().unwrap();
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let to = v6(listener.local_addr().unwrap());
    let mut client = TcpStream::connect(to).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let found = diag.connected_to(lb_common::IPPROTO_TCP, to).unwrap();
    assert_eq!(found.len(), 1, "the client, not the listener: {found:?}");
    assert_eq!(found[0].cookie, cookie(&client));
    assert_eq!(found[0].src, v6(client.local_addr().unwrap()));
    assert!(
        diag.connected_to(lb_common::IPPROTO_TCP, v4("127.0.0.1:1".parse().unwrap()))
            .unwrap()
            .iter()
            .all(|s| s.cookie != cookie(&client)),
        "not in IPv4's dump"
    );
    assert!(diag.destroy(&found[0]).unwrap());
    let err = client.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    assert!(!diag.destroy(&found[0]).unwrap(), "gone already");
}

#[test]
fn only_sockets_the_reverse_map_names_for_the_frontend_are_closed() {
    if !is_root() {
        return;
    }
    // One filtered dump; then one of every connected UDP socket, as more
    // than `FILTERED_DUMPS` backends went.
    let svc4 = |last: u8| SocketAddrV4::new(Ipv4Addr::new(127, 1, 0, last), 53);
    let unused4 = |port: u16| SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), port);
    for extra in [0, FILTERED_DUMPS] {
        closes_only_what_the_reverse_map_names(
            ("127.0.0.1:0", v4),
            [svc4(10), svc4(11)],
            unused4,
            extra,
        );
    }
    // IPv6's: an `AF_INET6` dump, `SOCK_REVERSE6`'s entries.
    let svc6 =
        |last: u16| SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, last), 53, 0, 0);
    let unused6 = |port: u16| SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0);
    for extra in [0, FILTERED_DUMPS] {
        closes_only_what_the_reverse_map_names(
            ("[::1]:0", v6),
            [svc6(10), svc6(11)],
            unused6,
            extra,
        );
    }
}

/// UDP sockets to a backend on `loopback` (of family `S`, read by `of`): one balanced
/// through the frontend `svcs[0]`, one through another frontend
/// (`svcs[1]`), one connected directly. The backend leaves the first
/// frontend, with `extra` more (unused: `unused(port)`) backends gone: only
/// the first socket is closed.
fn closes_only_what_the_reverse_map_names<S: SockFamily>(
    (loopback, of): (&str, fn(std::net::SocketAddr) -> S),
    svcs: [S; 2],
    unused: impl Fn(u16) -> S,
    extra: usize,
) where
    S::RevKey: PartialEq,
{
    let diag = SockDiag::open().unwrap();
    let server = UdpSocket::bind(loopback).unwrap();
    let backend = of(server.local_addr().unwrap());
    let socket = || {
        let any = if loopback.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let s = UdpSocket::bind(any).unwrap();
        s.connect(server.local_addr().unwrap()).unwrap();
        s
    };
    // Balanced through the frontend; through another frontend; direct.
    let (through, other, direct) = (socket(), socket(), socket());
    let frontend = S::frontend(svcs[0].ip_of(), svcs[0].port_of(), Protocol::Udp);
    let (through_key, other_key) = (
        S::rev_key(cookie(&through), backend),
        S::rev_key(cookie(&other), backend),
    );
    let reverse = |key: &S::RevKey| {
        if *key == through_key {
            Some(S::rev_entry(svcs[0]))
        } else if *key == other_key {
            Some(S::rev_entry(svcs[1]))
        } else {
            None
        }
    };
    let mut gone = vec![GoneBackend { frontend, backend }];
    // Ports nothing here is connected to.
    gone.extend((0..extra).map(|k| GoneBackend {
        frontend,
        backend: unused(1 + u16::try_from(k).unwrap()),
    }));
    let closed = close_pointed_at(&diag, &gone, reverse);
    assert_eq!(
        closed,
        Closed {
            destroyed: 1,
            failed: 0
        },
        "{loopback}, {extra} more gone"
    );
    for s in [&through, &other, &direct] {
        s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
    }
    let err = through.recv(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    for s in [&other, &direct] {
        // Still connected: only the timeout.
        let err = s.recv(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");
    }
}

#[test]
fn many_backends_of_a_protocol_take_one_unfiltered_dump() {
    let backend = |i: u8| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 80);
    let few: Vec<_> = (1..=2).map(|i| (6, backend(i))).collect();
    assert_eq!(dumps(&few), [(6, Some(backend(1))), (6, Some(backend(2)))]);
    let mut many: Vec<_> = (1..=9).map(|i| (6, backend(i))).collect();
    many.push((17, backend(1)));
    assert_eq!(dumps(&many), [(6, None), (17, Some(backend(1)))]);
}

#[test]
fn an_unfiltered_dump_holds_every_connected_socket_of_the_protocol() {
    if !is_root() {
        return;
    }
    let diag = SockDiag::open().unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(server.local_addr().unwrap()).unwrap();
    let all = diag
        .connected::<SocketAddrV4>(lb_common::IPPROTO_UDP, None)
        .unwrap();
    let cookies: Vec<u64> = all.iter().map(|s| s.cookie).collect();
    assert!(cookies.contains(&cookie(&a)), "the connected one");
    assert!(
        !cookies.contains(&cookie(&server)),
        "not an unconnected one"
    );
}
