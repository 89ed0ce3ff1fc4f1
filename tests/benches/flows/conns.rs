//! Client connections: one request on a new connection, held open or timed
//! (async, for the load and the helpers; a one-off check uses
//! `lb_tests::traffic::HttpClient`).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::load::request;
use tokio::{
    net::{TcpSocket, TcpStream},
    time::timeout,
};

/// The longest the request on a new connection may take (a caller's own
/// timeout, as `attempt`'s, may cut it shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
    timeout(REQUEST_TIMEOUT, request(&mut stream, &mut buf))
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
