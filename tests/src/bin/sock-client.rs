//! A client for the socket-level balancing tests. It first moves its own
//! process (nothing else) into the cgroup v2 directory given, where the
//! agent's socket programs are attached, then talks to a Service address
//! and prints one line per exchange: `peer=<address the socket reports>
//! reply=<what the backend answered>`, or `error=<why>`.
//!
//! Usage: `sock-client <cgroup dir> <tcp|http|udp|udp-unconnected>
//! <addr:port> <count> [other-netns]`; with `other-netns` it first moves
//! into a new network namespace of its own (a pod's, as the programs see
//! it). `tcp` sends a line and reads to the end; `http` sends a GET and
//! reads one response (the test cluster's pod servers).
//!
//! `sock-client <cgroup dir> hold <tcp addr:port> <udp addr:port> <count>
//! <direct tcp> <direct udp> [netns path]` keeps sockets open instead
//! (`hold.rs`): `count` TCP and `count` connected UDP sockets to the two
//! Service addresses, and one of each connected to the direct addresses.
//! With a namespace path it first joins that network namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

#[path = "sock-client/hold.rs"]
mod hold;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(2).is_some_and(|m| m == "hold") {
        hold::main(&args[1], &args[3..]);
        return;
    }
    let (cgroup, mode, addr, count, other_netns) = match args.as_slice() {
        [_, cgroup, mode, addr, count] => (cgroup, mode, addr, count, false),
        [_, cgroup, mode, addr, count, flag] if flag == "other-netns" => {
            (cgroup, mode, addr, count, true)
        }
        _ => {
            eprintln!(
                "usage: sock-client <cgroup dir> <tcp|http|udp|udp-unconnected> <addr:port> \
                 <count> [other-netns]"
            );
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = addr.parse().expect("an address:port");
    let count: u32 = count.parse().expect("a count");
    // "0" moves the writing process itself.
    std::fs::write(format!("{cgroup}/cgroup.procs"), "0").expect("joining the cgroup");
    if other_netns {
        // SAFETY: a plain syscall; the process is single-threaded here.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
    }
    for _ in 0..count {
        let line = match mode.as_str() {
            "tcp" => tcp(addr),
            "http" => http(addr),
            "udp" => udp(addr, true),
            "udp-unconnected" => udp(addr, false),
            other => panic!("unknown mode {other}"),
        };
        println!("{}", line.unwrap_or_else(|e| format!("error={e}")));
    }
}

/// One exchange on a fresh TCP connection (the backend closes it).
fn tcp(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let peer = stream.peer_addr()?;
    stream.write_all(b"hello\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(format!("peer={peer} reply={}", reply.trim()))
}

fn http(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let peer = stream.peer_addr()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")?;
    let mut response = Vec::new();
    let mut buf = [0u8; 512];
    // Headers, then the body of Content-Length bytes; bounded by the
    // read timeout and the buffer's growth.
    while response.len() < 4096 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| body.len() >= len) {
                return Ok(format!("peer={peer} reply={}", body.trim()));
            }
        }
    }
    Err(std::io::Error::other("no complete HTTP response"))
}

fn udp(addr: SocketAddr, connected: bool) -> std::io::Result<String> {
    // The destination's family (an IPv6 socket for a v4-mapped address).
    let socket = if addr.is_ipv6() {
        UdpSocket::bind("[::]:0")?
    } else {
        UdpSocket::bind("0.0.0.0:0")?
    };
    socket.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 512];
    let (n, peer) = if connected {
        socket.connect(addr)?;
        socket.send(b"hello")?;
        let n = socket.recv(&mut buf)?;
        (n, socket.peer_addr()?)
    } else {
        socket.send_to(b"hello", addr)?;
        socket.recv_from(&mut buf)?
    };
    Ok(format!(
        "peer={peer} reply={}",
        String::from_utf8_lossy(&buf[..n]).trim()
    ))
}
