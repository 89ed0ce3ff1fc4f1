//! Bulk HTTP transfers through a Service, for path MTU tests: servers in
//! pods that send [`SIZE`] bytes (`GET /big`) or read an upload
//! (`POST /upload`), and clients that check every byte came, each read and
//! write bounded by [`WAIT`] (a stall is the failure).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{ensure, Context, Result};

use crate::netns::Netns;

/// Bytes of each big transfer.
pub const SIZE: usize = 1 << 20;
/// Bound on each read and write: a stall fails the transfer.
pub const WAIT: Duration = Duration::from_secs(20);
/// The bulk servers' port in the pods.
pub const BULK_PORT: u16 = 8090;

/// HTTP servers on [`BULK_PORT`] in some pods: `GET /big` answers [`SIZE`]
/// bytes, `POST /upload` reads the body and answers with its length. One
/// request per connection, each bounded by [`WAIT`]. Stop when dropped.
pub struct BulkServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BulkServers {
    /// Servers in `pods`, each listening on `ip`:[`BULK_PORT`] (`0.0.0.0`
    /// or `::`, the pods' family).
    #[must_use]
    pub fn start(pods: &[&Netns], ip: IpAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = pods
            .iter()
            .map(|ns| {
                let listener = ns
                    .run(move || TcpListener::bind((ip, BULK_PORT)))
                    .unwrap()
                    .unwrap();
                listener.set_nonblocking(true).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((stream, _)) => drop(std::thread::spawn(move || serve(&stream))),
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BulkServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves one request on `stream`; an error ends the connection.
fn serve(stream: &TcpStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    let mut reader = BufReader::new(stream);
    let (request, length) = read_head(&mut reader)?;
    let mut writer = stream;
    if request.starts_with("GET /big ") {
        write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n")?;
        writer.write_all(&vec![b'x'; SIZE])?;
    } else {
        ensure!(
            request.starts_with("POST /upload "),
            "unknown request {request:?}"
        );
        let body = std::io::copy(&mut reader.take(length), &mut std::io::sink())?.to_string();
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}

/// Reads an HTTP head: its first line and its `Content-Length` (0 if none).
fn read_head(reader: &mut impl BufRead) -> Result<(String, u64)> {
    let (mut first, mut length, mut line) = (String::new(), 0, String::new());
    loop {
        line.clear();
        ensure!(
            reader.read_line(&mut line)? > 0,
            "the connection closed within the head"
        );
        if line == "\r\n" {
            return Ok((first, length));
        }
        if first.is_empty() {
            first.clone_from(&line);
        } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
}

/// A connection from `ns` to `service`, each read and write bounded by [`WAIT`].
fn connect(ns: &Netns, service: SocketAddr) -> Result<TcpStream> {
    let timeout = Duration::from_secs(2);
    let stream = ns
        .run(move || TcpStream::connect_timeout(&service, timeout))?
        .with_context(|| format!("connecting to {service}"))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    Ok(stream)
}

/// Reads `stream`'s response, head and body; returns the body.
fn response(stream: &TcpStream) -> Result<Vec<u8>> {
    let mut reader = BufReader::new(stream);
    let (status, length) = read_head(&mut reader)?;
    ensure!(status.starts_with("HTTP/1.1 200"), "answered {status:?}");
    let mut body = Vec::new();
    // On an error, what was read is in `body`.
    let read = reader.take(length).read_to_end(&mut body);
    read.with_context(|| format!("after {} of {length} bytes", body.len()))?;
    ensure!(
        body.len() as u64 == length,
        "closed after {} of {length} bytes",
        body.len()
    );
    Ok(body)
}

/// `GET /big` from `ns` through `service`; returns the bytes of body received.
pub fn download(ns: &Netns, service: impl Into<SocketAddr>) -> Result<usize> {
    let mut stream = connect(ns, service.into())?;
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: pmtu\r\n\r\n")?;
    let body = response(&stream)?;
    ensure!(body.iter().all(|&b| b == b'x'), "a corrupted body");
    Ok(body.len())
}

/// `POST /upload` of `size` bytes from `ns` through `service`; returns the
/// length the server says it read.
pub fn upload(ns: &Netns, service: impl Into<SocketAddr>, size: usize) -> Result<usize> {
    let mut stream = connect(ns, service.into())?;
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: pmtu\r\nContent-Length: {size}\r\n\r\n"
    )?;
    let mut sent = 0;
    for piece in vec![b'y'; size].chunks(64 * 1024) {
        let write = stream.write_all(piece);
        write.with_context(|| format!("after sending {sent} of {size} bytes"))?;
        sent += piece.len();
    }
    let body = response(&stream).context("the upload's answer")?;
    let body = String::from_utf8_lossy(&body);
    body.parse().with_context(|| format!("the answer {body:?}"))
}
