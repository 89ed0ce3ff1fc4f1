//! `hold`: sockets kept open across a change of the Service. It opens them,
//! makes one exchange on each (`open <kind> <n> <reply>`), prints `ready`,
//! waits for a line on stdin, makes another exchange on each (`after <kind>
//! <n> <reply>` or `after <kind> <n> error=<why>`), and replaces each
//! Service socket that failed with a new one (`reconnect <kind> <n>
//! <reply>`). Kinds: `svc-tcp`, `svc-udp`, `direct-tcp`, `direct-udp`.
//! Every call has a timeout, so it ends on its own. A count `T+U` opens `T`
//! TCP and `U` UDP Service sockets (the e2e pods' servers speak only UDP
//! this way); a direct address `-` opens no direct socket.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
};

use super::TIMEOUT;

/// A connected socket.
enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Conn {
    fn open(tcp: bool, to: SocketAddr) -> std::io::Result<Self> {
        if tcp {
            let stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            Ok(Conn::Tcp(stream))
        } else {
            // A socket of the destination's family.
            let socket = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.connect(to)?;
            Ok(Conn::Udp(socket))
        }
    }

    /// Sends a line and reads the backend's name back.
    fn exchange(&mut self) -> std::io::Result<String> {
        let mut buf = [0u8; 64];
        let n = match self {
            Conn::Tcp(stream) => {
                stream.write_all(b"hello\n")?;
                stream.read(&mut buf)?
            }
            Conn::Udp(socket) => {
                socket.send(b"hello")?;
                socket.recv(&mut buf)?
            }
        };
        if n == 0 {
            return Err(std::io::Error::other("end of stream"));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }
}

/// `args`: tcp addr, udp addr, count, direct tcp, direct udp, [netns path].
pub fn main(cgroup: &str, args: &[String]) {
    let [tcp_svc, udp_svc, count, direct_tcp, direct_udp, netns @ ..] = args else {
        eprintln!("usage: sock-client <cgroup> hold <tcp> <udp> <count> <direct tcp> <direct udp>");
        std::process::exit(2);
    };
    let addr = |s: &String| -> SocketAddr { s.parse().expect("an address:port") };
    let (tcp_count, udp_count) = count.split_once('+').unwrap_or((count, count));
    let tcp_count: usize = tcp_count.parse().expect("a count");
    let udp_count: usize = udp_count.parse().expect("a count");
    std::fs::write(format!("{cgroup}/cgroup.procs"), "0").expect("joining the cgroup");
    if let [netns] = netns {
        let file = std::fs::File::open(netns).expect("opening the namespace");
        // SAFETY: setns on a valid namespace fd; single-threaded here.
        let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
    }
    let mut plan = Vec::new();
    plan.extend((0..tcp_count).map(|n| ("svc-tcp", n, true, addr(tcp_svc))));
    plan.extend((0..udp_count).map(|n| ("svc-udp", n, false, addr(udp_svc))));
    if direct_tcp != "-" {
        plan.push(("direct-tcp", 0, true, addr(direct_tcp)));
    }
    if direct_udp != "-" {
        plan.push(("direct-udp", 0, false, addr(direct_udp)));
    }
    let mut conns = Vec::new();
    for &(kind, n, tcp, to) in &plan {
        let mut conn = Conn::open(tcp, to).expect("opening a socket");
        let reply = conn.exchange().expect("a first exchange");
        println!("open {kind} {n} {reply}");
        conns.push(conn);
    }
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let mut failed = Vec::new();
    for (&(kind, n, tcp, to), conn) in plan.iter().zip(&mut conns) {
        match conn.exchange() {
            Ok(reply) => println!("after {kind} {n} {reply}"),
            Err(e) => {
                println!("after {kind} {n} error={e}");
                failed.push((kind, n, tcp, to));
            }
        }
    }
    for (kind, n, tcp, to) in failed {
        let reply = Conn::open(tcp, to)
            .and_then(|mut conn| conn.exchange())
            .unwrap_or_else(|e| format!("error={e}"));
        println!("reconnect {kind} {n} {reply}");
    }
}
