//! Open-loop load at a fixed offered rate (requests are due on a schedule,
//! whether or not earlier ones were answered), and closed-loop load shared
//! out over several addresses: the end-to-end benchmark's CPU-per-request
//! windows, and its direct mode spreading over the backends like a balancer.

use std::{future::Future, net::SocketAddrV4, time::Duration};

use futures::future::join_all;
use tokio::{
    net::TcpStream,
    time::{sleep_until, timeout, Instant},
};

use crate::load::{request, LoadResult, IO_TIMEOUT};

/// Runs `load` with `concurrency` clients shared out over `targets` (as
/// evenly as they go), at once, and merges what they achieved.
pub async fn shared<F, Fut>(targets: &[SocketAddrV4], concurrency: usize, load: F) -> LoadResult
where
    F: Fn(SocketAddrV4, usize) -> Fut,
    Fut: Future<Output = LoadResult>,
{
    let share =
        |k: usize| concurrency / targets.len() + usize::from(k < concurrency % targets.len());
    let runs = targets
        .iter()
        .enumerate()
        .filter(|(k, _)| share(*k) > 0)
        .map(|(k, t)| load(*t, share(k)));
    merge(join_all(runs).await)
}

fn merge(results: Vec<LoadResult>) -> LoadResult {
    let mut all = LoadResult::default();
    for r in results {
        all.completed += r.completed;
        all.errors += r.errors;
        all.elapsed = all.elapsed.max(r.elapsed);
        all.latencies.extend(r.latencies);
    }
    all.latencies.sort_unstable();
    all
}

/// How each scheduled request travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// On the worker's kept-alive connection (reopened if it fails); worker
    /// `k` keeps its connection to `targets[k % len]`.
    KeptAlive,
    /// On a new connection each (connect, request, response, close);
    /// request `i` goes to `targets[i % len]`.
    NewConnection,
}

/// When request `i` of a schedule at `rate` per second is due, from its start.
#[must_use]
pub fn due(i: u64, rate: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Offers `rate` requests per second for `duration`, open loop: request
/// `i` is due at `i / rate` s and worker `i % workers` sends it when due or,
/// if that worker is still busy, as soon as it is free (so a path that cannot
/// keep up falls short of the rate instead of slowing the schedule).
/// Latency counts from when the request was due. `elapsed` is `duration`;
/// compare `completed` with `rate * duration` to see whether the rate held.
pub async fn fixed_rate(
    targets: &[SocketAddrV4],
    kind: Kind,
    workers: usize,
    rate: u64,
    duration: Duration,
) -> LoadResult {
    let start = Instant::now();
    let deadline = start + duration;
    let workers = workers.max(1);
    let tasks: Vec<_> = (0..workers)
        .map(|k| {
            let targets = targets.to_vec();
            tokio::spawn(async move {
                let mut result = LoadResult::default();
                let mut buf = Vec::with_capacity(512);
                let mut conn: Option<TcpStream> = None;
                let mut i = k as u64;
                loop {
                    let at = start + due(i, rate);
                    // Bounded: the schedule ends at the deadline.
                    if at >= deadline || Instant::now() >= deadline {
                        break;
                    }
                    sleep_until(at).await;
                    let target = match kind {
                        Kind::KeptAlive => targets[k % targets.len()],
                        Kind::NewConnection => {
                            targets[usize::try_from(i).unwrap_or(0) % targets.len()]
                        }
                    };
                    let done = timeout(IO_TIMEOUT, async {
                        if conn.is_none() || kind == Kind::NewConnection {
                            let stream = TcpStream::connect(target).await?;
                            stream.set_nodelay(true)?;
                            conn = Some(stream);
                        }
                        let stream = conn.as_mut().expect("connected above");
                        request(stream, &mut buf).await
                    })
                    .await;
                    if matches!(done, Ok(Ok(()))) {
                        result.completed += 1;
                        result.latencies.push(at.elapsed());
                    } else {
                        result.errors += 1;
                        conn = None;
                    }
                    if kind == Kind::NewConnection {
                        conn = None;
                    }
                    i += workers as u64;
                }
                result
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        if let Ok(r) = task.await {
            results.push(r);
        }
    }
    let mut all = merge(results);
    all.elapsed = duration;
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::serve_answers;

    #[test]
    fn requests_are_due_evenly() {
        assert_eq!(due(0, 1000), Duration::ZERO);
        assert_eq!(due(1, 1000), Duration::from_millis(1));
        assert_eq!(due(3, 4), Duration::from_millis(750));
        assert_eq!(
            due(5, 0),
            Duration::from_secs(5),
            "a zero rate reads as one"
        );
    }

    #[test]
    fn the_offered_rate_is_achieved_over_loopback() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut targets = Vec::new();
            for name in ["a", "b"] {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
                    panic!("IPv4 loopback");
                };
                tokio::spawn(serve_answers(l, name.into()));
                targets.push(addr);
            }
            let window = Duration::from_millis(500);
            for kind in [Kind::KeptAlive, Kind::NewConnection] {
                let r = fixed_rate(&targets, kind, 4, 400, window).await;
                assert_eq!(r.errors, 0, "{kind:?}");
                assert!((190..=200).contains(&r.completed), "{kind:?}: {r:?}");
                assert_eq!(r.elapsed, window);
            }
            let spread = shared(&targets, 3, |t, n| {
                crate::load::kept_alive(t, n, Duration::from_millis(100))
            })
            .await;
            assert!(spread.completed > 0 && spread.errors == 0);
        });
    }
}
