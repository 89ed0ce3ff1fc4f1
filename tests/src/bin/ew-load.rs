//! The east-west benchmark's client: it moves its own process (nothing
//! else) into the cgroup v2 directory given, where the agent's socket
//! programs may be attached, then loads `addr` from the network namespace
//! it was started in (a pod's, entered by `nsenter`) and prints one JSON
//! object: TCP connect latency, new connections (connect, request,
//! response, close) and kept-alive requests, each with its rate and p50/p99
//! in microseconds.
//!
//! Usage: `ew-load <cgroup dir> <addr:port>[,<addr:port>...] <concurrency>
//! <milliseconds>`: the clients are shared out over the addresses (the
//! backends themselves, for a client that balances on its own).

use std::{net::SocketAddrV4, time::Duration};

use lb_tests::{
    load::{connects, kept_alive, new_connections, LoadResult},
    paced::shared,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, cgroup, targets, concurrency, millis] = args.as_slice() else {
        eprintln!(
            "usage: ew-load <cgroup dir> <addr:port>[,<addr:port>...] <concurrency> <milliseconds>"
        );
        std::process::exit(2);
    };
    let targets: Vec<SocketAddrV4> = targets
        .split(',')
        .map(|t| t.parse().expect("an address:port"))
        .collect();
    let concurrency: usize = concurrency.parse().expect("a concurrency");
    let duration = Duration::from_millis(millis.parse().expect("milliseconds"));
    // "0" moves the writing process itself, before any thread or socket exists.
    std::fs::write(format!("{cgroup}/cgroup.procs"), "0").expect("joining the cgroup");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (connect, new, kept) = runtime.block_on(async {
        for addr in &targets {
            let warm = new_connections(*addr, 1, Duration::from_millis(200)).await;
            assert!(
                warm.completed > 0 && warm.errors == 0,
                "{addr} does not answer: {warm:?}"
            );
        }
        (
            shared(&targets, concurrency, |t, n| connects(t, n, duration)).await,
            shared(&targets, concurrency, |t, n| {
                new_connections(t, n, duration)
            })
            .await,
            shared(&targets, concurrency, |t, n| kept_alive(t, n, duration)).await,
        )
    });
    let figures = |r: &LoadResult| {
        let micros = |p| u64::try_from(r.latency(p).as_micros()).unwrap_or(u64::MAX);
        serde_json::json!({
            "per_s": r.per_second().round(),
            "p50_us": micros(50),
            "p99_us": micros(99),
            "errors": r.errors,
        })
    };
    println!(
        "{}",
        serde_json::json!({
            "connect": figures(&connect),
            "new_connection": figures(&new),
            "kept_alive": figures(&kept),
        })
    );
}
