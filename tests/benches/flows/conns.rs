//! Client connections: one request on a new connection (held open or timed),
//! async for the load and the helpers, blocking for a one-off check.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb_tests::{
    load::{request, response_head, REQUEST},
    netns::Netns,
};
use tokio::{
    net::{TcpSocket, TcpStream},
    time::timeout,
};

use crate::window::LEGIT_TIMEOUT;

fn reason(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

/// Opens a connection from `bind` (port chosen by the kernel) to `target`
/// and completes one request on it.
pub(crate) async fn connect_and_request(
    bind: Option<Ipv4Addr>,
    target: SocketAddrV4,
    connect_timeout: Duration,
) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| reason(&e))?;
    if let Some(addr) = bind {
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(addr, 0)))
            .map_err(|e| format!("bind: {}", reason(&e)))?;
    }
    let mut stream = timeout(connect_timeout, socket.connect(SocketAddr::V4(target)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {}", reason(&e)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(128);
    timeout(
        LEGIT_TIMEOUT.max(Duration::from_secs(5)),
        request(&mut stream, &mut buf),
    )
    .await
    .map_err(|_| "request timed out".to_string())?
    .map_err(|e| format!("request: {e}"))?;
    Ok(stream)
}

/// `(new-connection outcome, latency)` of one attempt with a total timeout.
pub(crate) async fn attempt(
    bind: Option<Ipv4Addr>,
    target: SocketAddrV4,
    total: Duration,
) -> (Result<(), String>, Duration) {
    let started = Instant::now();
    let r = match timeout(total, connect_and_request(bind, target, total)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".to_string()),
    };
    (r, started.elapsed())
}

/// One HTTP request on a new blocking connection from `ns`: the body and the local port.
pub(crate) fn blocking_get(ns: &Netns, addr: SocketAddrV4) -> Result<(String, u16)> {
    ns.run(move || -> Result<(String, u16)> {
        let mut s =
            std::net::TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let port = s.local_addr()?.port();
        s.write_all(REQUEST)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            if let Some((head, length)) = response_head(&buf)? {
                if buf.len() >= head + length {
                    return Ok((
                        String::from_utf8_lossy(&buf[head..head + length]).into_owned(),
                        port,
                    ));
                }
            }
            let n = s.read(&mut chunk)?;
            ensure!(n > 0, "the connection closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
        }
    })?
    .with_context(|| format!("a request to {addr}"))
}
