//! One flood window: the paced sender at one rate, the legitimate load
//! around it (kept-alive connections and new ones) and the readings before
//! and after, as one JSON object.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_tests::{load::request, netns::Netns, procfs};
use serde_json::{json, Value};
use tokio::{net::TcpStream, runtime::Runtime, time::timeout};

use crate::{
    conns::{attempt, connect_and_request},
    flood::{FloodBed, DELIVERED, FLOOD_PORT, KEEP_UP, MAX_CPU_BUSY_PCT, WEB},
    observe::{
        count, cpu_json, cpu_times, delta, f, latency_json, link_delta, link_series, link_stats,
        metrics, ms, pod_tcp_counters, pods_delta, prog_json, round1, round2, softnet_dropped,
        to_json, watch_agent, whole, window_mean, LINK_SERIES_COLUMNS,
    },
};

/// Legitimate load during the flood: kept-alive connections.
pub(crate) const KEPT_ALIVE: usize = 50;
/// How often each kept-alive connection sends a request.
const KEPT_ALIVE_EVERY: Duration = Duration::from_millis(100);
/// New connections per second.
const NEW_PER_SECOND: u32 = 20;
/// Legitimate requests answered later are late; new connections that take longer fail.
pub(crate) const LEGIT_TIMEOUT: Duration = Duration::from_secs(2);
/// A kept-alive connection whose request gets no answer for this long, or
/// fails, is broken; one answered after `LEGIT_TIMEOUT` is late. Both miss
/// the target (`flood::flood`): this only bounds how long a stall is timed.
const STALL: Duration = Duration::from_secs(10);

/// A kept-alive connection's record.
#[derive(Default)]
struct Kept {
    ok: u64,
    late: u64,
    broken: Option<String>,
    latencies: Vec<Duration>,
}

async fn keep_alive(mut stream: TcpStream, stop: Arc<AtomicBool>) -> Kept {
    let mut k = Kept::default();
    let mut tick = tokio::time::interval(KEPT_ALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(128);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
        tick.tick().await;
        let t = Instant::now();
        match timeout(STALL, request(&mut stream, &mut buf)).await {
            Ok(Ok(())) => {
                k.ok += 1;
                k.late += u64::from(t.elapsed() > LEGIT_TIMEOUT);
                k.latencies.push(t.elapsed());
            }
            Ok(Err(e)) => {
                k.broken = Some(format!("{e:#}"));
                break;
            }
            Err(_) => {
                k.broken = Some(format!("no answer within {STALL:?}"));
                break;
            }
        }
    }
    k
}

/// New connections at `per_second` for `duration`, each one request within `LEGIT_TIMEOUT`.
async fn paced_new_connections(
    per_second: u32,
    duration: Duration,
) -> Vec<(Result<(), String>, Duration)> {
    let n = (f64::from(per_second) * duration.as_secs_f64()).round();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a few hundred
    let n = n as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        tasks.push(tokio::spawn(attempt(None, WEB, LEGIT_TIMEOUT)));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(
            t.await
                .unwrap_or_else(|_| (Err("task failed".into()), Duration::ZERO)),
        );
    }
    out
}

/// One flood of `rate` frames per second for `duration`, with the legitimate
/// load and the watches around it.
#[allow(clippy::too_many_lines)] // one scenario, step by step
pub(crate) fn flood_window(
    bed: &FloodBed,
    rate: u64,
    duration: Duration,
    deadline: Instant,
) -> Result<Value> {
    bed.check_unroutable()?;
    let rt: Runtime = bed.topo.client.runtime(1)?;
    let client = Netns::existing(bed.topo.client.name());
    let opened = rt.block_on(rt.spawn(async move {
        assert!(
            client.is_current(),
            "the load would leave the client's namespace"
        );
        let tasks: Vec<_> = (0..KEPT_ALIVE)
            .map(|_| tokio::spawn(connect_and_request(None, WEB, LEGIT_TIMEOUT)))
            .collect();
        let mut streams = Vec::new();
        for t in tasks {
            streams.push(t.await.map_err(|e| e.to_string()).and_then(|r| r));
        }
        streams
    }))?;
    let streams = opened
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("a kept-alive connection: {e}"))?;
    let pid = bed.agent.pid().context("the agent's pid")?;
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let (rss_before, hwm_before) = (procfs::rss_kib(&status()), procfs::peak_rss_kib(&status()));
    let before = metrics(&bed.topo.node1)?;
    let stop_kept = Arc::new(AtomicBool::new(false));
    let kept: Vec<_> = streams
        .into_iter()
        .map(|s| rt.spawn(keep_alive(s, stop_kept.clone())))
        .collect();
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (node1, stop) = (bed.topo.node1.name().to_string(), stop_watch.clone());
        std::thread::spawn(move || watch_agent(&node1, pid, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));

    let cpu0 = cpu_times()?;
    let softnet0 = softnet_dropped()?;
    let pods0 = pod_tcp_counters(&bed.topo)?;
    let progs0 = procfs::prog_runs_of(pid);
    let lan = bed.topo.lan.name();
    let (lanf0, lan1_0) = (link_stats(lan, FLOOD_PORT)?, link_stats(lan, "lan1")?);
    let node1_0 = link_stats(bed.topo.node1.name(), "eth0")?;
    let stop_links = Arc::new(AtomicBool::new(false));
    let links = {
        let (lan, stop) = (lan.to_string(), stop_links.clone());
        std::thread::spawn(move || link_series(&lan, pid, &stop))
    };
    let mut sender = bed.sender(rate, duration, deadline)?;
    let fresh = rt.spawn(paced_new_connections(NEW_PER_SECOND, duration));
    let sent = sender.recv(duration + Duration::from_secs(15));
    stop_links.store(true, Ordering::Relaxed);
    let links = links
        .join()
        .map_err(|_| anyhow::anyhow!("the link sampler panicked"))?;
    let cpu1 = cpu_times()?;
    let progs1 = procfs::prog_runs_of(pid);
    let softnet1 = softnet_dropped()?;
    let pods1 = pod_tcp_counters(&bed.topo)?;
    let (lanf1, lan1_1) = (link_stats(lan, FLOOD_PORT)?, link_stats(lan, "lan1")?);
    let node1_1 = link_stats(bed.topo.node1.name(), "eth0")?;
    let fresh = rt.block_on(fresh);
    std::thread::sleep(Duration::from_secs(1));
    stop_kept.store(true, Ordering::Relaxed);
    // A task that failed (it panicked) counts as a broken connection.
    let kept: Vec<Kept> = kept
        .into_iter()
        .map(|k| {
            rt.block_on(k).unwrap_or_else(|e| Kept {
                broken: Some(format!("the connection's task failed: {e}")),
                ..Kept::default()
            })
        })
        .collect();
    stop_watch.store(true, Ordering::Relaxed);
    let watch = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the agent watch panicked"))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let sent = sent?;
    let fresh = fresh?;
    // Before the scrape: rendering `/metrics` reads both flow maps whole.
    let status_end = status();
    let after = metrics(&bed.topo.node1)?;
    let status_after = status();
    bed.check_unroutable()?;

    let frames = sent["sent"].as_u64().unwrap_or(0);
    let seconds = sent["seconds"].as_f64().unwrap_or(0.0);
    let reached = f(frames) / seconds.max(1e-9);
    let mut kept_lat: Vec<Duration> = kept
        .iter()
        .flat_map(|k| k.latencies.iter().copied())
        .collect();
    kept_lat.sort_unstable();
    let mut fresh_lat: Vec<Duration> = fresh.iter().filter(|r| r.0.is_ok()).map(|r| r.1).collect();
    fresh_lat.sort_unstable();
    let mut fresh_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for (r, _) in &fresh {
        if let Err(e) = r {
            *fresh_reasons.entry(e.clone()).or_insert(0) += 1;
        }
    }
    let fresh_ok = fresh.iter().filter(|r| r.0.is_ok()).count();
    let cpu = cpu_json(&cpu0, &cpu1);
    let idle = 100.0 - cpu["busy_pct"].as_f64().unwrap_or(100.0);
    let busiest = cpu["busy_pct_per_cpu"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    let into_bridge = link_delta(&lanf0, &lanf1, "rx", "packets");
    let dropped = link_delta(&lan1_0, &lan1_1, "tx", "dropped");
    let delivered = 1.0 - f(dropped) / f(into_bridge.max(1));
    Ok(json!({
        "requested_pps": rate,
        "sent": frames,
        "refused_by_kernel": sent["refused"],
        "seconds": round2(seconds),
        "reached_pps": whole(reached),
        "delivered_pct": round1(100.0 * delivered),
        "kept_up": reached >= KEEP_UP * f(rate) && delivered >= DELIVERED && busiest <= MAX_CPU_BUSY_PCT,
        "sender_cpu_seconds": sent["cpu_seconds"],
        "frames_into_the_bridge": into_bridge,
        "frames_to_node1": link_delta(&lan1_0, &lan1_1, "tx", "packets"),
        "frames_to_node1_dropped": dropped,
        "node1_rx_packets": link_delta(&node1_0, &node1_1, "rx", "packets"),
        "programs": prog_json(&progs0, &progs1),
        "backlog_dropped_per_cpu": softnet0.iter().zip(&softnet1).map(|(a, b)| b.saturating_sub(*a)).collect::<Vec<_>>(),
        "pods_tcp": pods_delta(&pods0, &pods1),
        "xdp_mean_ns_first_2s": window_mean(&links, |t| t <= 2.0),
        "xdp_mean_ns_last_2s": window_mean(&links, |t| t > duration.as_secs_f64() - 2.0),
        "per_half_second": {"columns": LINK_SERIES_COLUMNS, "rows": links},
        "node1_rx_dropped": link_delta(&node1_0, &node1_1, "rx", "dropped"),
        "cpu": cpu,
        "machine_idle_pct": round1(idle),
        "established": {
            "planned": KEPT_ALIVE,
            "connections": kept.len(),
            "requests_ok": kept.iter().map(|k| k.ok).sum::<u64>(),
            "requests_late": kept.iter().map(|k| k.late).sum::<u64>(),
            "broken": kept.iter().filter(|k| k.broken.is_some()).count(),
            "broken_reasons": kept.iter().filter_map(|k| k.broken.clone()).collect::<Vec<_>>(),
            "latency": latency_json(&kept_lat),
        },
        "new_connections": {
            "attempted": fresh.len(),
            "ok": fresh_ok,
            "success_pct": round2(100.0 * f(count(fresh_ok)) / f(count(fresh.len()).max(1))),
            "failure_reasons": fresh_reasons,
            "latency": latency_json(&fresh_lat),
        },
        "readyz": {"polls": watch.polls, "ready": watch.ready, "slowest_ms": ms(watch.slowest)},
        "agent_rss_kib": {"before": rss_before, "peak_vmhwm_before": hwm_before, "max_sampled": watch.max_rss_kib,
            "after": procfs::rss_kib(&status_end), "peak_vmhwm": procfs::peak_rss_kib(&status_end),
            "peak_vmhwm_after_metrics_scrape": procfs::peak_rss_kib(&status_after)},
        "agent_maps_memlock_bytes": procfs::maps_memlock_of(pid),
        "metrics_before": to_json(&before),
        "metrics_after": to_json(&after),
        "metrics_delta": to_json(&delta(&before, &after)),
    }))
}
