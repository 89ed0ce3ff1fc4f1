//! The roles this binary plays when re-executed with `LB_FLOWS_ROLE`.
//!
//! The helper side of `procs::Proc`: a helper dies with the bench and at its
//! deadline, and enters its namespace before anything else.

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt as _;
use lb_tests::{
    flood::{parse_mac, send_paced, FrameMaker},
    load::{request, serve_answers},
};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};

use crate::{
    conns::connect_and_request,
    procs::{LIFETIME_ENV, NETNS_ENV, PARENT_ENV},
};

/// Runs `role` and exits; never returns.
pub(crate) fn main(role: &str) -> ! {
    let code = match setup().and_then(|()| run(role)) {
        Ok(()) => 0,
        Err(e) => {
            println!("{}", json!({"error": format!("{e:#}")}));
            1
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// Dies with the parent and after the lifetime; enters the namespace.
fn setup() -> Result<()> {
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    if env(PARENT_ENV)?.parse::<i32>()? != parent {
        bail!("the benchmark is gone");
    }
    let path = env(NETNS_ENV)?;
    ensure!(
        path.starts_with(&format!("/run/netns/{}", lb_tests::netns::PREFIX)),
        "{path} is not a namespace of the tests"
    );
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd, before any other thread exists.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    let lifetime = Duration::from_millis(env(LIFETIME_ENV)?.parse()?);
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        eprintln!("flows helper: past the benchmark's deadline, exiting");
        std::process::exit(2);
    });
    Ok(())
}

fn run(role: &str) -> Result<()> {
    match role {
        "server" => server(),
        "client" => client(),
        "flood" => flood(),
        _ => bail!("unknown role {role}"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// pod2a's HTTP server, one of several sharing the port; until stdin closes.
fn server() -> Result<()> {
    let name = env("LB_FLOWS_NAME")?;
    let port: u16 = env("LB_FLOWS_PORT")?.parse()?;
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let rt = runtime()?;
    rt.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        )))?;
        let listener = socket.listen(8192)?;
        println!("{}", json!({"ready": true}));
        std::io::stdout().flush()?;
        serve_answers(listener, name).await;
        Ok(())
    })
}

/// Opens, checks and closes connections on command (see `Proc`).
fn client() -> Result<()> {
    let target: SocketAddrV4 = env("LB_FLOWS_TARGET")?.parse()?;
    let bind: Ipv4Addr = env("LB_FLOWS_BIND")?.parse()?;
    let rt = runtime()?;
    let mut held: Vec<TcpStream> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["open", n, timeout_ms, concurrency] => {
                let (n, t, c) = (
                    n.parse()?,
                    Duration::from_millis(timeout_ms.parse()?),
                    concurrency.parse()?,
                );
                rt.block_on(open(target, bind, n, t, c, &mut held))
            }
            ["check"] => rt.block_on(check(&mut held)),
            ["close"] => {
                let n = held.len();
                rt.block_on(async { held.clear() });
                json!({"closed": n})
            }
            _ => json!({"error": format!("unknown command {line:?}")}),
        };
        println!("{answer}");
        std::io::stdout().flush()?;
    }
    Ok(())
}

async fn open(
    target: SocketAddrV4,
    bind: Ipv4Addr,
    n: usize,
    connect_timeout: Duration,
    concurrency: usize,
    held: &mut Vec<TcpStream>,
) -> Value {
    let started = Instant::now();
    let results: Vec<Result<TcpStream, String>> = futures::stream::iter(0..n)
        .map(|_| connect_and_request(Some(bind), target, connect_timeout))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut failed) = (0u64, 0u64);
    for r in results {
        match r {
            Ok(s) => {
                held.push(s);
                ok += 1;
            }
            Err(e) => {
                failed += 1;
                *reasons.entry(e).or_insert(0) += 1;
            }
        }
    }
    json!({"ok": ok, "failed": failed, "reasons": reasons, "held": held.len(),
        "seconds": started.elapsed().as_secs_f64()})
}

/// One more request on every held connection; the ones that fail are dropped.
async fn check(held: &mut Vec<TcpStream>) -> Value {
    let results: Vec<bool> = futures::stream::iter(held.iter_mut())
        .map(|s| async move {
            let mut buf = Vec::with_capacity(128);
            matches!(
                tokio::time::timeout(Duration::from_secs(5), request(s, &mut buf)).await,
                Ok(Ok(()))
            )
        })
        .buffered(512)
        .collect()
        .await;
    let mut it = results.iter();
    held.retain(|_| *it.next().unwrap_or(&false));
    let ok = results.iter().filter(|&&r| r).count();
    json!({"ok": ok, "failed": results.len() - ok})
}

/// The paced spoofing sender: only on this namespace's eth0, only to a
/// Service address, only from the shared address space.
fn flood() -> Result<()> {
    ensure!(
        env(NETNS_ENV)?.ends_with("-flood"),
        "the sender runs only in the flood's own namespace"
    );
    let dst: Ipv4Addr = env("LB_FLOWS_VIP")?.parse()?;
    ensure!(
        u32::from(dst) >> 20 == u32::from(Ipv4Addr::new(10, 96, 0, 0)) >> 20,
        "{dst} is not a Service address of the topology"
    );
    let ports: Vec<u16> = env("LB_FLOWS_PORTS")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(ports.len() == 2, "two ports: TCP and UDP");
    let rate: u64 = env("LB_FLOWS_RATE")?.parse()?;
    let seconds: f64 = env("LB_FLOWS_SECONDS")?.parse()?;
    ensure!(rate <= 2_000_000 && seconds <= 60.0, "a bounded flood");
    let seed = u64::from(std::process::id())
        ^ u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
                & u128::from(u64::MAX),
        )?;
    let mut maker = FrameMaker::new(
        parse_mac(&env("LB_FLOWS_DST_MAC")?)?,
        parse_mac(&env("LB_FLOWS_SRC_MAC")?)?,
        dst,
        (ports[0], ports[1]),
        seed,
    );
    let report = send_paced("eth0", &mut maker, rate, Duration::from_secs_f64(seconds))?;
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
    #[allow(clippy::cast_precision_loss)] // seconds and microseconds of CPU time
    let cpu = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as f64
        + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) as f64 / 1e6;
    println!(
        "{}",
        json!({"sent": report.sent, "refused": report.refused, "seconds": report.seconds, "cpu_seconds": cpu})
    );
    Ok(())
}
