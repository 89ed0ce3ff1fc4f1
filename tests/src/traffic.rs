//! Test servers in pods, and clients: HTTP over TCP and a UDP request/response.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
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

/// Servers in every pod: HTTP on 8080 and UDP on 5353, answering with the pod's name.
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
            let (name, s) = (pod.name.clone(), stop.clone());
            let listener = pod.ns.run(|| TcpListener::bind(("0.0.0.0", HTTP_PORT)))??;
            listener.set_nonblocking(true)?;
            threads.push(std::thread::spawn(move || serve_http(&listener, &name, &s)));
            let (name, s) = (pod.name.clone(), stop.clone());
            let socket = pod.ns.run(|| UdpSocket::bind(("0.0.0.0", UDP_PORT)))??;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            threads.push(std::thread::spawn(move || serve_udp(&socket, &name, &s)));
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
        let stream = ns
            .run(move || TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout))?
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

/// One UDP request; returns the reply's body and source address.
pub fn udp_request(
    ns: &Netns,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<(String, SocketAddr)> {
    let socket = ns.run(|| UdpSocket::bind("0.0.0.0:0"))??;
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
    addr: SocketAddrV4,
    count: usize,
    deadline: Duration,
) -> BTreeMap<String, usize> {
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for _ in 0..count {
        if started.elapsed() > deadline {
            *counts.entry("timeout".to_string()).or_insert(0) += 1;
            break;
        }
        let who =
            http_get(ns, addr, Duration::from_secs(2)).unwrap_or_else(|_| "error".to_string());
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

/// Which pod answered each of `count` UDP requests; replies not from `addr` count as "wrong-source".
#[must_use]
pub fn udp_distribution(
    ns: &Netns,
    addr: SocketAddrV4,
    count: usize,
    deadline: Duration,
) -> BTreeMap<String, usize> {
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for _ in 0..count {
        if started.elapsed() > deadline {
            break;
        }
        let who = match udp_request(ns, addr, Duration::from_secs(1)) {
            Ok((body, from)) if from == SocketAddr::V4(addr) => body,
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
