//! The capacity part's end: new connections probed every 100 ms around the
//! close of every held connection, and the ports counted in use sampled,
//! to see when ports come back. A port-return time is reported only when
//! the probes before the close all failed: otherwise the pool had ports
//! left and the probes after it measure nothing of their return.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_tests::{netns::Netns, topology::ClusterTopology};
use serde_json::{json, Value};

use crate::{
    capacity::{PROBE_ADDR, REMOTE_WEB},
    conns::attempt,
    observe::{metrics, or_zero, ports_in_use_or_none, round1, round2},
    procs::{all, sum_field, Proc},
};

/// One probe: when it started, and when it ended and whether it succeeded.
type Probe = (Instant, Option<(Instant, bool)>);

/// Probes to stop after: this many in a row succeeded after the close.
const PROBES_IN_A_ROW: usize = 20;

/// Probes new connections every 100 ms from two seconds before the close
/// until `PROBES_IN_A_ROW` in a row succeed after it (at most `window`);
/// closes every held connection; samples the ports in use until they are
/// back below 1% of their peak (at most 40 s after the close).
#[allow(clippy::too_many_lines)] // one scenario, step by step
pub(crate) fn port_return(
    topo: &ClusterTopology,
    clients: &mut [Proc],
    window: Duration,
) -> Result<Value> {
    let rt = topo.client.runtime(1)?;
    let client = Netns::existing(topo.client.name());
    let closed_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let probes: Arc<std::sync::Mutex<Vec<Probe>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs(2) + window + Duration::from_secs(2);
    let probing = {
        let (closed_at, probes) = (closed_at.clone(), probes.clone());
        rt.spawn(async move {
            assert!(
                client.is_current(),
                "probes would leave the client's namespace"
            );
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut tasks = Vec::new();
            while Instant::now() < end {
                tick.tick().await;
                if let Some(&t0) = closed_at.get() {
                    // The probes started after the close and surely done by now.
                    let settled = Instant::now()
                        .checked_sub(Duration::from_millis(1100))
                        .unwrap_or(t0);
                    let p = probes.lock().expect("probes");
                    let done: Vec<bool> = p
                        .iter()
                        .filter(|p| p.0 >= t0 && p.0 <= settled)
                        .map(|p| p.1.is_some_and(|r| r.1))
                        .collect();
                    if done.len() >= PROBES_IN_A_ROW
                        && done[done.len() - PROBES_IN_A_ROW..].iter().all(|&ok| ok)
                    {
                        break;
                    }
                }
                let index = {
                    let mut p = probes.lock().expect("probes");
                    p.push((Instant::now(), None));
                    p.len() - 1
                };
                let probes = probes.clone();
                tasks.push(tokio::spawn(async move {
                    let (r, _) =
                        attempt(Some(PROBE_ADDR), REMOTE_WEB, Duration::from_secs(1)).await;
                    probes.lock().expect("probes")[index].1 = Some((Instant::now(), r.is_ok()));
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ports_sampler = {
        let (stop, closed_at, node1) = (
            stop.clone(),
            closed_at.clone(),
            topo.node1.name().to_string(),
        );
        std::thread::spawn(move || {
            let node1 = Netns::existing(&node1);
            let mut samples: Vec<(Instant, u64, f64)> = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
                let reading = metrics(&node1).and_then(|m| Ok((ports_in_use_or_none(&m)?, m)));
                if let Ok((in_use, m)) = reading {
                    let now = Instant::now();
                    samples.push((
                        now,
                        in_use,
                        or_zero(&m, "lb_conntrack_flows{state=\"closed\"}"),
                    ));
                    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
                    if let Some(&t0) = closed_at.get() {
                        if (now > t0 && in_use * 100 <= peak)
                            || now.duration_since(t0) > Duration::from_secs(40)
                        {
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let close_started = Instant::now();
    let closed = all(clients, "close", Duration::from_mins(1));
    let t0 = Instant::now();
    let _ = closed_at.set(t0);
    let probing_done = rt.block_on(probing);
    if closed.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let samples = ports_sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the metrics sampler panicked"))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let closed = closed?;
    probing_done?;
    let probes = std::mem::take(&mut *probes.lock().expect("probes"));

    let rel = |t: Instant| -> f64 {
        if t >= t0 {
            t.duration_since(t0).as_secs_f64()
        } else {
            -t0.duration_since(t).as_secs_f64()
        }
    };
    let ok = |p: &Probe| p.1.is_some_and(|r| r.1);
    let before: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.1.is_some_and(|r| r.0 <= close_started))
        .collect();
    let after: Vec<&Probe> = probes.iter().filter(|p| p.0 >= t0).collect();
    let first_success = after
        .iter()
        .filter(|p| ok(p))
        .filter_map(|p| p.1.map(|r| rel(r.0)))
        .reduce(f64::min);
    // The first probe from which every later one succeeded (none without probes).
    let all_from = match after.iter().rposition(|p| !ok(p)) {
        None => (!after.is_empty()).then_some(0),
        Some(i) => (i + 1 < after.len()).then_some(i + 1),
    }
    .map(|i| rel(after[i].0));
    let before_ok = before.iter().filter(|p| ok(p)).count();
    // The port return is measured only if new connections failed before the close.
    let exhausted = !before.is_empty() && before_ok == 0;
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let free_after = samples
        .iter()
        .filter(|s| s.0 >= t0 && s.1 * 100 <= peak)
        .map(|s| rel(s.0))
        .reduce(f64::min);
    Ok(json!({
        "close_seconds": round2(t0.duration_since(close_started).as_secs_f64()),
        "closed": sum_field(&closed, "closed"),
        "before_close": {"attempts": before.len(), "ok": before_ok},
        "after_close": {"attempts": after.len(), "ok": after.iter().filter(|p| ok(p)).count(),
            "window_s": window.as_secs()},
        "measured": exhausted,
        "not_measured_because": (!exhausted).then(|| if before.is_empty() {
            "no probe ended before the close".to_string()
        } else {
            format!("the pool was not exhausted: {before_ok} of {} new connections succeeded before the close", before.len())
        }),
        "first_success_s": first_success.filter(|_| exhausted).map(round2),
        "all_succeed_from_s": all_from.filter(|_| exhausted).map(round2),
        "ports_counted_free_after_s": free_after.map(round2),
        "probes": after.iter().map(|p| json!([round2(rel(p.0)), ok(p)])).collect::<Vec<_>>(),
        "ports_in_use_series": samples.iter().map(|s| json!([round1(rel(s.0)), s.1, s.2])).collect::<Vec<_>>(),
    }))
}
