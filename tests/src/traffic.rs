//! Test servers in pods, and clients: HTTP over TCP and a UDP request/response.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns::Netns, topology::ClusterTopology};

/// The pods' HTTP port.
pub const HTTP_PORT: u16 = 8080;
/// The pods' UDP port.
pub const UDP_PORT: u16 = 5353;

/// Servers in every pod: HTTP on 8080 and UDP on 5353, answering with the pod's name,
/// on IPv4's any address and (in topologies with IPv6) the pod's IPv6 address.
/// They stop when this is dropped.
pub struct PodServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PodServers {
    /// Starts the servers of every pod of `topology`.
    pub fn start(topology: &ClusterTopology) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for pod in &topology.pods {
            let ip6 = pod.ip6.map(IpAddr::V6);
            for ip in [IpAddr::V4(Ipv4Addr::UNSPECIFIED)].into_iter().chain(ip6) {
                let (name, s) = (pod.name.clone(), stop.clone());
                let listener = pod.ns.run(move || TcpListener::bind((ip, HTTP_PORT)))??;
                listener.set_nonblocking(true)?;
                threads.push(std::thread::spawn(move || serve_http(&listener, &name, &s)));
                let (name, s) = (pod.name.clone(), stop.clone());
                let socket = pod.ns.run(move || UdpSocket::bind((ip, UDP_PORT)))??;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                threads.push(std::thread::spawn(move || serve_udp(&socket, &name, &s)));
            }
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_http(listener: &TcpListener, name: &str, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, stop) = (name.to_string(), stop.clone());
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, &name, &stop);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_connection(stream: TcpStream, name: &str, stop: &AtomicBool) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
        if line == "\r\n" {
            write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            )?;
        }
    }
    Ok(())
}

fn serve_udp(socket: &UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    }
}

/// An HTTP/1.1 connection opened from a namespace, for one or many requests.
pub struct HttpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpClient {
    /// Connects from `ns` to `addr`.
    pub fn connect(ns: &Netns, addr: SocketAddrV4, timeout: Duration) -> Result<Self> {
        Self::connect_to(ns, SocketAddr::V4(addr), timeout)
    }

    /// Connects from `ns` to `addr`, of either family.
    pub fn connect_to(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = ns
            .run(move || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// The connection's local port (the node's own, or the client's, before any translation).
    pub fn local_port(&self) -> Result<u16> {
        Ok(self.writer.local_addr()?.port())
    }

    /// Sends a request and returns the response body (the pod's name).
    pub fn get(&mut self) -> Result<String> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed before the response");
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("response without Content-Length")?];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8(body)?)
    }
}

/// One HTTP request on a new connection; returns the body.
pub fn http_get(ns: &Netns, addr: SocketAddrV4, timeout: Duration) -> Result<String> {
    HttpClient::connect(ns, addr, timeout)?.get()
}

/// One HTTP request on a new connection to `addr`, of either family; returns the body.
pub fn http_get_at(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<String> {
    HttpClient::connect_to(ns, addr, timeout)?.get()
}

/// One UDP request; returns the reply's body and source address.
pub fn udp_request(
    ns: &Netns,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<(String, SocketAddr)> {
    udp_request_at(ns, SocketAddr::V4(addr), timeout)
}

/// One UDP request to `addr`, of either family, from an ephemeral port of
/// that family; returns the reply's body and source address.
pub fn udp_request_at(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(String, SocketAddr)> {
    let any: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = ns.run(move || UdpSocket::bind(any))??;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"query", addr)?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP reply from {addr}"))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// Which pod answered each of `count` requests (new connection each), bounded by `deadline`.
/// Failed requests are counted under "error".
#[must_use]
pub fn http_distribution(
    ns: &Netns,
    addr: impl Into<SocketAddr>,
    count: usize,
    deadline: Duration,
) -> BTreeMap<String, usize> {
    let addr = addr.into();
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for _ in 0..count {
        if started.elapsed() > deadline {
            *counts.entry("timeout".to_string()).or_insert(0) += 1;
            break;
        }
        let who =
            http_get_at(ns, addr, Duration::from_secs(2)).unwrap_or_else(|_| "error".to_string());
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

/// Which pod answered each of `count` UDP requests; replies not from `addr` count as "wrong-source".
#[must_use]
pub fn udp_distribution(
    ns: &Netns,
    addr: impl Into<SocketAddr>,
    count: usize,
    deadline: Duration,
) -> BTreeMap<String, usize> {
    let addr = addr.into();
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for _ in 0..count {
        if started.elapsed() > deadline {
            break;
        }
        let who = match udp_request_at(ns, addr, Duration::from_secs(1)) {
            Ok((body, from)) if from == addr => body,
            Ok(_) => "wrong-source".to_string(),
            Err(_) => "error".to_string(),
        };
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

/// GET `path` from `port` on the loopback of `ns` (where the agent serves
/// metrics): the status line and the body.
pub fn scrape(ns: &Netns, port: u16, path: &str) -> Result<(String, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut stream = ns.run(move || TcpStream::connect(("127.0.0.1", port)))??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The agent's `/metrics` once its collector has finished a sweep that
/// started after this call (two more sweeps than at the call): the flow
/// series count what happened before it. Fails after `timeout`.
pub fn scrape_after_sweep(ns: &Netns, port: u16, timeout: Duration) -> Result<String> {
    const RUNS: &str = "lb_conntrack_gc_runs_total";
    let runs = |text: &str| metric(text, RUNS).with_context(|| format!("no {RUNS} in\n{text}"));
    let start = runs(&scrape(ns, port, "/metrics")?.1)?;
    let deadline = Instant::now() + timeout;
    loop {
        let text = scrape(ns, port, "/metrics")?.1;
        if runs(&text)? >= start + 2.0 {
            return Ok(text);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the collector swept less than twice in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of one series in Prometheus text, e.g. `lb_frontends`.
#[must_use]
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Sends one datagram from a UDP socket in `ns` connected to `to` (with
/// `IP_RECVERR` on) and expects `recv` to fail with `ECONNREFUSED` within
/// `timeout`, from an ICMP port unreachable (origin ICMP, type 3, code 3)
/// about that datagram (its destination `to`) in the socket's error queue.
/// Returns the error's offender: the ICMP packet's source address. Fails
/// naming what happened instead (a reply, silence, another error or ICMP
/// message), with the ICMP messages that reached `ns` meanwhile.
pub fn udp_refused_by(
    ns: &Netns,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<std::net::Ipv4Addr> {
    ns.run(move || udp_refused_here(to, timeout))?
}

/// [`udp_refused_by`] on the calling thread's namespace.
fn udp_refused_here(to: SocketAddrV4, timeout: Duration) -> Result<std::net::Ipv4Addr> {
    use std::{io::ErrorKind, os::fd::AsRawFd as _};

    // Opened first: it sees every ICMP message that reaches the namespace.
    let watcher = IcmpWatcher::open()?;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a live local, of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVERR,
            (&raw const on).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt IP_RECVERR");
    }
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"query")?;
    let mut buf = [0u8; 1500];
    match socket.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Ok(n) => bail!(
            "a reply ({:?}) from {to} instead of ECONNREFUSED; {}",
            String::from_utf8_lossy(&buf[..n]),
            watcher.seen()
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => bail!(
            "no reply and no error from {to} within {timeout:?} instead of ECONNREFUSED; {}",
            watcher.seen()
        ),
        Err(e) => bail!(
            "`{e}` from {to} instead of ECONNREFUSED; {}",
            watcher.seen()
        ),
    }
    let queued = QueuedError::read(&socket)
        .with_context(|| format!("ECONNREFUSED from {to}; {}", watcher.seen()))?;
    port_unreachable_offender(&queued, to, &watcher)
}

/// Connects a TCP socket in `ns` (with `IP_RECVERR` on) to `to` and expects
/// the connect to fail with `ECONNREFUSED` within `timeout`, from an ICMP
/// port unreachable about its SYN (to `to`) in the socket's error queue: a
/// refusal by ICMP, not a RST (which queues no error). Returns the error's
/// offender, the ICMP packet's source. Fails naming what happened instead
/// (a connection, silence, another error), with the ICMP messages that
/// reached `ns` meanwhile.
pub fn tcp_refused_by(
    ns: &Netns,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<std::net::Ipv4Addr> {
    ns.run(move || tcp_refused_here(to, timeout))?
}

/// [`tcp_refused_by`] on the calling thread's namespace.
fn tcp_refused_here(to: SocketAddrV4, timeout: Duration) -> Result<std::net::Ipv4Addr> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};

    let watcher = IcmpWatcher::open()?;
    // SAFETY: socket has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a TCP socket");
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    // A blocking connect gives up after the send timeout.
    let limit = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs())?,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: setsockopt reads a live local of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVERR,
            (&raw const on).cast(),
            socklen::<libc::c_int>(),
        ) | libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const limit).cast(),
            socklen::<libc::timeval>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET)?,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect reads a live sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    };
    if rc == 0 {
        bail!(
            "connected to {to} instead of ECONNREFUSED; {}",
            watcher.seen()
        );
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => {}
        Some(libc::EINPROGRESS | libc::EAGAIN | libc::ETIMEDOUT) => bail!(
            "no answer from {to} within {timeout:?} instead of ECONNREFUSED; {}",
            watcher.seen()
        ),
        _ => bail!(
            "`{err}` from {to} instead of ECONNREFUSED; {}",
            watcher.seen()
        ),
    }
    let queued = QueuedError::read(&socket).with_context(|| {
        format!(
            "ECONNREFUSED from {to}, but no ICMP error queued (a RST?); {}",
            watcher.seen()
        )
    })?;
    port_unreachable_offender(&queued, to, &watcher)
}

/// The offender (the ICMP packet's source) of `queued`, which must be a port
/// unreachable (errno `ECONNREFUSED`, origin ICMP, type 3, code 3) about a
/// packet to `to`; else an error naming what it is instead.
fn port_unreachable_offender(
    queued: &QueuedError,
    to: SocketAddrV4,
    watcher: &IcmpWatcher,
) -> Result<std::net::Ipv4Addr> {
    let ee = &queued.ee;
    let expected = (
        u32::try_from(libc::ECONNREFUSED)?,
        libc::SO_EE_ORIGIN_ICMP,
        3,
        3,
    );
    if (ee.ee_errno, ee.ee_origin, ee.ee_type, ee.ee_code) != expected || queued.destination != to {
        bail!(
            "the queued error is errno {} origin {} ICMP type {} code {} about {}, \
             not a port unreachable (errno {}, origin {}, type 3, code 3) about {to}; {}",
            ee.ee_errno,
            ee.ee_origin,
            ee.ee_type,
            ee.ee_code,
            queued.destination,
            libc::ECONNREFUSED,
            libc::SO_EE_ORIGIN_ICMP,
            watcher.seen()
        );
    }
    queued
        .offender
        .with_context(|| format!("the ICMP error names no offender; {}", watcher.seen()))
}

/// `size_of::<T>()` as a `socklen_t`.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("a small struct")
}

/// An address in network order (`in_addr`) as an [`std::net::Ipv4Addr`].
fn in_addr_ip(addr: libc::in_addr) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(addr.s_addr.to_ne_bytes())
}

/// One error from a socket's error queue (`MSG_ERRQUEUE`, `IP_RECVERR`).
struct QueuedError {
    /// The extended error.
    ee: libc::sock_extended_err,
    /// `SO_EE_OFFENDER`: the ICMP packet's source, if it names one.
    offender: Option<std::net::Ipv4Addr>,
    /// The address the offending datagram was sent to (its inner header).
    destination: SocketAddrV4,
}

impl QueuedError {
    /// Reads the oldest queued error, without waiting.
    fn read(socket: &impl std::os::fd::AsRawFd) -> Result<Self> {
        // SAFETY: plain C structs of integers and pointers: all zeros is valid.
        let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut data = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // u64s: aligned for cmsghdr.
        let mut control = [0u64; 64];
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut name).cast();
        msg.msg_namelen = socklen::<libc::sockaddr_in>();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: every buffer msg points to is a live local of the size given.
        let n = unsafe {
            libc::recvmsg(
                socket.as_raw_fd(),
                &raw mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error())
                .context("nothing in the socket's error queue (recvmsg MSG_ERRQUEUE)");
        }
        let destination = SocketAddrV4::new(in_addr_ip(name.sin_addr), u16::from_be(name.sin_port));
        // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG
        // macros stay within it, and the IP_RECVERR payload is a
        // sock_extended_err followed by a sockaddr_in (read unaligned).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                    let data = libc::CMSG_DATA(cmsg);
                    let ee = data.cast::<libc::sock_extended_err>().read_unaligned();
                    // SO_EE_OFFENDER: right after the extended error.
                    let offender = data
                        .add(size_of::<libc::sock_extended_err>())
                        .cast::<libc::sockaddr_in>()
                        .read_unaligned();
                    let offender = (i32::from(offender.sin_family) == libc::AF_INET)
                        .then(|| in_addr_ip(offender.sin_addr));
                    return Ok(Self {
                        ee,
                        offender,
                        destination,
                    });
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
        }
        bail!("a queued error without an IP_RECVERR message")
    }
}

/// A raw ICMP socket that records the ICMP messages reaching its namespace,
/// for failure messages.
struct IcmpWatcher {
    fd: std::os::fd::OwnedFd,
}

impl IcmpWatcher {
    /// Opens the socket in the calling thread's namespace.
    fn open() -> Result<Self> {
        use std::os::fd::FromRawFd as _;

        // SAFETY: socket has no memory preconditions.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("a raw ICMP socket");
        }
        // SAFETY: a descriptor just opened and owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The ICMP messages received so far, described.
    fn seen(&self) -> String {
        use std::os::fd::AsRawFd as _;

        let mut seen = Vec::new();
        let mut buf = [0u8; 1500];
        while seen.len() < 16 {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                break;
            };
            seen.push(describe_icmp(&buf[..n]));
        }
        if seen.is_empty() {
            "no ICMP message reached the namespace".to_string()
        } else {
            format!("ICMP that reached the namespace: {}", seen.join("; "))
        }
    }
}

/// An IPv4 packet carrying ICMP, in words: type, code, addresses and, for
/// errors, the packet they are about.
fn describe_icmp(packet: &[u8]) -> String {
    let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let header = |b: &[u8]| usize::from(b[0] & 0x0f) * 4;
    if packet.len() < 20 || packet.len() < header(packet) + 8 {
        return format!("a truncated packet of {} bytes", packet.len());
    }
    let icmp = &packet[header(packet)..];
    let text = format!(
        "type {} code {} from {} to {}",
        icmp[0],
        icmp[1],
        ip(&packet[12..16]),
        ip(&packet[16..20])
    );
    let inner = &icmp[8..];
    if !matches!(icmp[0], 3 | 4 | 5 | 11 | 12) || inner.len() < 20 {
        return text;
    }
    let (src, dst) = (ip(&inner[12..16]), ip(&inner[16..20]));
    let ports = inner.get(header(inner)..header(inner) + 4);
    let about = match (inner[9], ports) {
        (6 | 17, Some(p)) => format!(
            "{} {src}:{} -> {dst}:{}",
            if inner[9] == 6 { "TCP" } else { "UDP" },
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]])
        ),
        (proto, _) => format!("protocol {proto} {src} -> {dst}"),
    };
    format!("{text} about {about}")
}

/// Lines a client process printed on `out`, up to a line `end` (or the end
/// of its output), at most 1,000.
///
/// # Panics
/// When the output cannot be read.
pub fn lines_until(out: &mut impl std::io::BufRead, end: &str) -> Vec<String> {
    let mut found = Vec::new();
    for _ in 0..1000 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 || line.trim() == end {
            break;
        }
        found.push(line.trim().to_string());
    }
    found
}
