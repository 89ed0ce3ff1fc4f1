//! Load for the end-to-end benchmark: servers in pods, and clients that open
//! a new connection per request, reuse kept-alive connections, or stream
//! bulk data. Every request's latency is recorded; every wait is bounded.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
    time::timeout,
};

use crate::{stats::percentile, topology::Pod};

/// The benchmark servers' HTTP port (a short response per request).
pub const BENCH_HTTP_PORT: u16 = 8080;
/// The benchmark servers' sink port (reads until EOF, answers the byte count).
pub const SINK_PORT: u16 = 9000;
/// The request every client sends.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
/// The longest any single connect, request or response may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP and sink servers in pods, on a runtime of their own; they stop when dropped.
pub struct BenchServers {
    runtime: Option<Runtime>,
}

impl BenchServers {
    /// Starts the servers in `pods`.
    pub fn start(pods: &[&Pod]) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        for pod in pods {
            let name = pod.name.clone();
            let http = pod
                .ns
                .run(|| std::net::TcpListener::bind(("0.0.0.0", BENCH_HTTP_PORT)))??;
            let sink = pod
                .ns
                .run(|| std::net::TcpListener::bind(("0.0.0.0", SINK_PORT)))??;
            http.set_nonblocking(true)?;
            sink.set_nonblocking(true)?;
            let _guard = runtime.enter();
            let http = TcpListener::from_std(http)?;
            let sink = TcpListener::from_std(sink)?;
            runtime.spawn(serve(http, move |s| answer(s, name.clone())));
            runtime.spawn(serve(sink, count_bytes));
        }
        Ok(Self {
            runtime: Some(runtime),
        })
    }
}

impl Drop for BenchServers {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream));
            }
            // Out of descriptors, say: wait, do not give the port up.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Answers each request on the connection with the pod's name.
async fn answer(mut stream: TcpStream, name: String) -> Result<()> {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
        name.len()
    );
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            buf.drain(..end + 4);
            stream.write_all(response.as_bytes()).await?;
        }
    }
}

/// Reads until EOF, then answers the number of bytes read (8 bytes, big endian).
async fn count_bytes(mut stream: TcpStream) -> Result<()> {
    let mut chunk = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the head of an HTTP response: `(head length, Content-Length)`
/// once the head is complete, `None` while more bytes are needed.
pub fn response_head(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("a response head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("unexpected status line {status:?}");
    }
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .context("a response without Content-Length")?
        .1
        .trim()
        .parse()
        .context("a bad Content-Length")?;
    Ok(Some((end + 4, length)))
}

/// Serves HTTP on `listener` (tokio), answering each request with `name`;
/// no thread per connection. Runs until its runtime stops.
pub async fn serve_answers(listener: TcpListener, name: String) {
    serve(listener, move |s| answer(s, name.clone())).await;
}

/// Sends one request on `stream` and reads the whole response.
pub async fn request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    stream.write_all(REQUEST).await?;
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        if let Some((head, length)) = response_head(buf)? {
            if buf.len() >= head + length {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a load run achieved.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Requests answered.
    pub completed: u64,
    /// Requests that failed or timed out.
    pub errors: u64,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Latency of each answered request, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    /// Answered requests per second.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let completed = self.completed as f64;
        completed / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency (0 without samples).
    #[must_use]
    pub fn latency(&self, p: usize) -> Duration {
        if self.latencies.is_empty() {
            Duration::ZERO
        } else {
            percentile(&self.latencies, p)
        }
    }

    fn merge(results: Vec<LoadResult>, elapsed: Duration) -> LoadResult {
        let mut all = LoadResult {
            elapsed,
            ..LoadResult::default()
        };
        for r in results {
            all.completed += r.completed;
            all.errors += r.errors;
            all.latencies.extend(r.latencies);
        }
        all.latencies.sort_unstable();
        all
    }
}

/// Runs `concurrency` clients for `duration`, each opening a new connection
/// per request (connect, request, response, close); latency covers all four.
pub async fn new_connections(
    addr: SocketAddrV4,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    run_clients(concurrency, duration, move |deadline| async move {
        let mut result = LoadResult::default();
        let mut buf = Vec::with_capacity(512);
        while Instant::now() < deadline {
            let started = Instant::now();
            let done = timeout(IO_TIMEOUT, async {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                request(&mut stream, &mut buf).await
            })
            .await;
            record(&mut result, started, &done);
        }
        result
    })
    .await
}

/// Runs `concurrency` clients for `duration`, each opening connections one
/// after another and closing them at once; latency is `connect()` alone
/// (the handshake, and whatever the path does to the first packets).
pub async fn connects(addr: SocketAddrV4, concurrency: usize, duration: Duration) -> LoadResult {
    run_clients(concurrency, duration, move |deadline| async move {
        let mut result = LoadResult::default();
        while Instant::now() < deadline {
            let started = Instant::now();
            let done = timeout(IO_TIMEOUT, async {
                TcpStream::connect(addr).await?;
                Ok(())
            })
            .await;
            record(&mut result, started, &done);
        }
        result
    })
    .await
}

/// Runs `concurrency` clients for `duration`, each sending requests one after
/// another on one kept-alive connection (reopened if it fails).
pub async fn kept_alive(addr: SocketAddrV4, concurrency: usize, duration: Duration) -> LoadResult {
    run_clients(concurrency, duration, move |deadline| async move {
        let mut result = LoadResult::default();
        let mut buf = Vec::with_capacity(512);
        let mut conn: Option<TcpStream> = None;
        while Instant::now() < deadline {
            let started = Instant::now();
            let done = timeout(IO_TIMEOUT, async {
                if conn.is_none() {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    conn = Some(stream);
                }
                let stream = conn.as_mut().expect("connected above");
                request(stream, &mut buf).await
            })
            .await;
            if !matches!(done, Ok(Ok(()))) {
                conn = None;
            }
            record(&mut result, started, &done);
        }
        result
    })
    .await
}

fn record(
    result: &mut LoadResult,
    started: Instant,
    done: &Result<Result<()>, tokio::time::error::Elapsed>,
) {
    if let Ok(Ok(())) = done {
        result.completed += 1;
        result.latencies.push(started.elapsed());
    } else {
        result.errors += 1;
    }
}

async fn run_clients<F, Fut>(concurrency: usize, duration: Duration, client: F) -> LoadResult
where
    F: Fn(Instant) -> Fut,
    Fut: std::future::Future<Output = LoadResult> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(client(deadline)))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        if let Ok(r) = task.await {
            results.push(r);
        }
    }
    LoadResult::merge(results, started.elapsed())
}

/// Streams data to a sink over one connection for about `duration`; returns
/// bytes per second, counted by the receiver.
pub async fn bulk(addr: SocketAddrV4, duration: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connecting for bulk data timed out")??;
    let chunk = vec![0x5a_u8; 1 << 16];
    while started.elapsed() < duration {
        timeout(IO_TIMEOUT, stream.write_all(&chunk))
            .await
            .context("bulk write timed out")??;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    timeout(IO_TIMEOUT, stream.read_exact(&mut count))
        .await
        .context("the sink's byte count timed out")??;
    #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
    let bytes = u64::from_be_bytes(count) as f64;
    Ok(bytes / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_gives_its_length_and_content_length() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\npod1a";
        assert_eq!(response_head(full).unwrap(), Some((38, 5)));
        assert_eq!(response_head(&full[..20]).unwrap(), None, "incomplete head");
        let lower = b"HTTP/1.1 200 OK\r\ncontent-length:12\r\n\r\n";
        assert_eq!(response_head(lower).unwrap(), Some((lower.len(), 12)));
    }

    #[test]
    fn bad_responses_are_errors() {
        assert!(response_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(response_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn results_merge_and_give_rates_and_percentiles() {
        let ms = Duration::from_millis;
        let a = LoadResult {
            completed: 2,
            errors: 1,
            elapsed: ms(1000),
            latencies: vec![ms(3), ms(1)],
        };
        let b = LoadResult {
            completed: 2,
            errors: 0,
            elapsed: ms(1000),
            latencies: vec![ms(4), ms(2)],
        };
        let all = LoadResult::merge(vec![a, b], ms(2000));
        assert_eq!(all.completed, 4);
        assert_eq!(all.errors, 1);
        assert_eq!(all.latencies, vec![ms(1), ms(2), ms(3), ms(4)]);
        assert!((all.per_second() - 2.0).abs() < 1e-9);
        assert_eq!(all.latency(50), ms(3));
        assert_eq!(all.latency(99), ms(4));
        assert_eq!(LoadResult::default().latency(50), Duration::ZERO);
    }

    #[test]
    fn servers_and_clients_talk_over_loopback() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (std::net::SocketAddr::V4(h), std::net::SocketAddr::V4(s)) =
                (http.local_addr().unwrap(), sink.local_addr().unwrap())
            else {
                panic!("IPv4 loopback");
            };
            tokio::spawn(serve(http, |s| answer(s, "pod1a".into())));
            tokio::spawn(serve(sink, count_bytes));
            let fresh = new_connections(h, 2, Duration::from_millis(100)).await;
            assert!(fresh.completed > 0 && fresh.errors == 0, "{fresh:?}");
            let kept = kept_alive(h, 2, Duration::from_millis(100)).await;
            assert!(kept.completed > fresh.completed / 2 && kept.errors == 0);
            let rate = bulk(s, Duration::from_millis(100)).await.unwrap();
            assert!(rate > 1e6, "loopback streams more than 1 MB/s: {rate}");
        });
    }
}
