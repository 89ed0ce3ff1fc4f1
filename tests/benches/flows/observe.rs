//! What the bench reads: the agent's `/metrics`, its readiness and memory;
//! the machine's CPU times, input backlog drops and links; the pods' TCP
//! counters; the run time of the agent's programs (fdinfo); and the number
//! and JSON helpers of the figures.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, ensure, Context, Result};
use lb_tests::{
    netns::{sh, Netns},
    procfs::{self, ProgRuns},
    stats::percentile,
    topology::ClusterTopology,
    traffic::scrape,
};
use serde_json::{json, Value};

use crate::{capacity::POD2A_LABEL, flood::FLOOD_PORT, METRICS_PORT};

/// `x` as a float.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
pub(crate) fn f(x: u64) -> f64 {
    x as f64
}

/// `x` as a count of the figures.
pub(crate) fn count(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// `x` rounded to a whole number.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rates, positive and small
pub(crate) fn whole(x: f64) -> u64 {
    x.round() as u64
}

/// `d` in ms, to 0.1 ms.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// `x` to one decimal.
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` to two decimals.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Latency figures of sorted samples, in ms.
pub(crate) fn latency_json(sorted: &[Duration]) -> Value {
    if sorted.is_empty() {
        return json!({"p50_ms": null, "p99_ms": null, "max_ms": null});
    }
    json!({"p50_ms": ms(percentile(sorted, 50)), "p99_ms": ms(percentile(sorted, 99)),
        "max_ms": ms(sorted[sorted.len() - 1])})
}

/// The agent's flow and verdict series from `/metrics` text.
fn series(text: &str) -> BTreeMap<String, f64> {
    const KEEP: [&str; 13] = [
        "lb_packets_total",
        "lb_datapath_events_total",
        "lb_conntrack_entries",
        "lb_conntrack_created_total",
        "lb_conntrack_evictions_total",
        "lb_reverse_nat_entries",
        "lb_reverse_nat_created_total",
        "lb_reverse_nat_evictions_total",
        "lb_conntrack_flows",
        "lb_snat_flows",
        "lb_snat_ports_in_use",
        "lb_snat_exhausted_total",
        GC_RUNS,
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let keep = KEEP.iter().any(|k| {
                name.strip_prefix(k)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            });
            Some((name.to_string(), value.parse().ok()?)).filter(|_| keep)
        })
        .collect()
}

/// The agent's series from node1's `/metrics`.
pub(crate) fn metrics(node1: &Netns) -> Result<BTreeMap<String, f64>> {
    let (status, body) = scrape(node1, METRICS_PORT, "/metrics")?;
    ensure!(status.contains(" 200"), "/metrics answered {status}");
    Ok(series(&body))
}

/// Sweeps the agent's collector finished (its flow series are the last
/// sweep's census).
const GC_RUNS: &str = "lb_conntrack_gc_runs_total";

/// The agent's series from node1's `/metrics`, from a census taken wholly
/// after this call: waits until two more sweeps finished (the one running
/// now may have read the maps before the caller's last connections), at
/// most `timeout`.
pub(crate) fn fresh_metrics(node1: &Netns, timeout: Duration) -> Result<BTreeMap<String, f64>> {
    let before = require(&metrics(node1)?, GC_RUNS)?;
    let deadline = Instant::now() + timeout;
    loop {
        let m = metrics(node1)?;
        if require(&m, GC_RUNS)? >= before + 2.0 {
            return Ok(m);
        }
        ensure!(
            Instant::now() < deadline,
            "the agent's collector finished fewer than 2 sweeps in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the series `name`, 0 when absent: only for series that
/// appear on first use (labelled counters, a backend's gauges), never for
/// a figure the bench relies on (see `require`).
pub(crate) fn or_zero(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// The value of the series `name`; an error when the agent did not report it.
pub(crate) fn require(m: &BTreeMap<String, f64>, name: &str) -> Result<f64> {
    m.get(name)
        .copied()
        .ok_or_else(|| anyhow!("the agent's /metrics has no {name}"))
}

/// `require`, as a whole count.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // gauges of entries and ports
pub(crate) fn require_count(m: &BTreeMap<String, f64>, name: &str) -> Result<u64> {
    Ok(require(m, name)?.max(0.0).round() as u64)
}

/// `lb_snat_ports_in_use` for pod2a's HTTP port, while pod2a holds ports
/// (an error when the series is absent).
pub(crate) fn ports_in_use(m: &BTreeMap<String, f64>) -> Result<u64> {
    require_count(m, &format!("lb_snat_ports_in_use{{{POD2A_LABEL}}}"))
}

/// `ports_in_use`, or 0 when the agent reported its flows (`lb_snat_flows`)
/// and pod2a has no series: the agent drops a backend's series when it holds
/// no port.
pub(crate) fn ports_in_use_or_none(m: &BTreeMap<String, f64>) -> Result<u64> {
    ports_in_use(m).or_else(|e| require(m, "lb_snat_flows").map(|_| 0).map_err(|_| e))
}

/// The series as a JSON object (whole numbers as integers).
pub(crate) fn to_json(m: &BTreeMap<String, f64>) -> Value {
    m.iter()
        .map(|(k, &v)| {
            #[allow(clippy::cast_possible_truncation)] // whole numbers of counters and gauges
            let v = if v.fract() == 0.0 && v.abs() < 1e15 {
                json!(v as i64)
            } else {
                json!(v)
            };
            (k.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// After minus before, for every series of `after` (gauges too).
pub(crate) fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - or_zero(before, k)))
        .collect()
}

/// The columns of `link_series`' rows.
pub(crate) const LINK_SERIES_COLUMNS: [&str; 6] = [
    "t_s",
    "frames_into_the_bridge",
    "dropped_before_node1",
    "xdp_runs",
    "xdp_run_time_ns",
    "xdp_mean_ns",
];

/// Every 500 ms until `stop`: frames into the bridge from the sender and
/// frames dropped in front of node1, in each interval, and the runs, run
/// time and mean run time of the agent's XDP program (ns; when BPF
/// statistics are on): rows of `LINK_SERIES_COLUMNS`.
pub(crate) fn link_series(lan: &str, pid: u32, stop: &AtomicBool) -> Vec<Value> {
    let read = || -> Option<(u64, u64, ProgRuns)> {
        let out = sh(&["ip", "-j", "-s", "-n", lan, "link", "show"]).ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let dev = |name: &str| v.as_array()?.iter().find(|l| l["ifname"] == name).cloned();
        Some((
            dev(FLOOD_PORT)?["stats64"]["rx"]["packets"].as_u64()?,
            dev("lan1")?["stats64"]["tx"]["dropped"].as_u64()?,
            runs_of_type(&procfs::prog_runs_of(pid), PROG_XDP),
        ))
    };
    let started = Instant::now();
    let mut last = read();
    let mut rows = Vec::new();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
        std::thread::sleep(Duration::from_millis(500));
        let now = read();
        if let (Some(a), Some(b)) = (last, now) {
            rows.push(json!([
                round1(started.elapsed().as_secs_f64()),
                b.0 - a.0,
                b.1 - a.1,
                b.2.run_cnt.saturating_sub(a.2.run_cnt),
                b.2.run_time_ns.saturating_sub(a.2.run_time_ns),
                mean_ns(&a.2, &b.2)
            ]));
        }
        last = now;
    }
    rows
}

/// The XDP program's mean run time (ns) over the `link_series` rows whose
/// time passes `keep`: their run time over their runs (null without runs).
pub(crate) fn window_mean(rows: &[Value], keep: impl Fn(f64) -> bool) -> Value {
    let (runs, time) = rows
        .iter()
        .filter(|r| r[0].as_f64().is_some_and(&keep))
        .fold((0u64, 0u64), |(runs, time), r| {
            (
                runs + r[3].as_u64().unwrap_or(0),
                time + r[4].as_u64().unwrap_or(0),
            )
        });
    if runs == 0 {
        return Value::Null;
    }
    json!(whole(f(time) / f(runs)))
}

const PROG_XDP: u32 = 6;
const PROG_SCHED_CLS: u32 = 3;

/// The summed run statistics of the programs of one type.
fn runs_of_type(progs: &BTreeMap<u32, ProgRuns>, prog_type: u32) -> ProgRuns {
    progs
        .values()
        .filter(|p| p.prog_type == prog_type)
        .fold(ProgRuns::default(), |acc, p| ProgRuns {
            prog_type,
            run_time_ns: acc.run_time_ns + p.run_time_ns,
            run_cnt: acc.run_cnt + p.run_cnt,
        })
}

/// Mean run time between two readings, ns (null without runs).
fn mean_ns(a: &ProgRuns, b: &ProgRuns) -> Value {
    let runs = b.run_cnt.saturating_sub(a.run_cnt);
    if runs == 0 {
        return Value::Null;
    }
    json!(whole(
        f(b.run_time_ns.saturating_sub(a.run_time_ns)) / f(runs)
    ))
}

/// Runs and mean run time of the agent's XDP and TC programs between two readings.
pub(crate) fn prog_json(a: &BTreeMap<u32, ProgRuns>, b: &BTreeMap<u32, ProgRuns>) -> Value {
    let one = |t| {
        let (a, b) = (runs_of_type(a, t), runs_of_type(b, t));
        json!({"runs": b.run_cnt.saturating_sub(a.run_cnt), "mean_ns": mean_ns(&a, &b)})
    };
    json!({"xdp": one(PROG_XDP), "tc": one(PROG_SCHED_CLS)})
}

/// Packets each CPU's input backlog dropped (`/proc/net/softnet_stat`,
/// second column): the whole machine, every namespace.
pub(crate) fn softnet_dropped() -> Result<Vec<u64>> {
    std::fs::read_to_string("/proc/net/softnet_stat")?
        .lines()
        .map(|l| {
            let word = l
                .split_whitespace()
                .nth(1)
                .context("a short softnet_stat line")?;
            Ok(u64::from_str_radix(word, 16)?)
        })
        .collect()
}

/// The pods' TCP counters that show a listener under a SYN flood.
const POD_TCP: [&str; 7] = [
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPBacklogDrop",
];

/// `TcpExt` counters of every pod (`/proc/net/netstat` in its namespace).
pub(crate) fn pod_tcp_counters(
    topo: &ClusterTopology,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    topo.pods
        .iter()
        .map(|pod| {
            let out = pod.ns.exec(&["cat", "/proc/net/netstat"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
            ensure!(lines.len() == 2, "no TcpExt counters in {}", pod.name);
            let counters = lines[0]
                .split_whitespace()
                .zip(lines[1].split_whitespace())
                .skip(1)
                .filter(|(k, _)| POD_TCP.contains(k))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect();
            Ok((pod.name.clone(), counters))
        })
        .collect()
}

/// The counters that changed, per pod.
pub(crate) fn pods_delta(
    a: &BTreeMap<String, BTreeMap<String, u64>>,
    b: &BTreeMap<String, BTreeMap<String, u64>>,
) -> Value {
    b.iter()
        .map(|(pod, after)| {
            let before = a.get(pod);
            let changed: serde_json::Map<String, Value> = after
                .iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(before.and_then(|m| m.get(k)).copied().unwrap_or(0));
                    (d > 0).then(|| (k.clone(), json!(d)))
                })
                .collect();
            (pod.clone(), Value::Object(changed))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Busy and softirq jiffies per CPU (and in total, first) from /proc/stat.
pub(crate) fn cpu_times() -> Result<Vec<(u64, u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total, total - idle, v.get(6).copied().unwrap_or(0))
        })
        .collect())
}

/// Busy % per CPU (total first) and softirq % of the machine between two readings.
pub(crate) fn cpu_json(a: &[(u64, u64, u64)], b: &[(u64, u64, u64)]) -> Value {
    let pct = |x: u64, total: u64| round1(100.0 * f(x) / f(total.max(1)));
    let busy: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| pct(b.1 - a.1, b.0 - a.0))
        .collect();
    json!({"busy_pct": busy.first(), "busy_pct_per_cpu": &busy[1.min(busy.len())..],
        "softirq_pct": a.first().zip(b.first()).map(|(a, b)| pct(b.2 - a.2, b.0 - a.0))})
}

/// The `stats64` counters of `dev` in `ns`.
pub(crate) fn link_stats(ns: &str, dev: &str) -> Result<Value> {
    let out = sh(&["ip", "-j", "-s", "-n", ns, "link", "show", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v[0]["stats64"].clone())
}

/// Counter `field` of direction `dir` (`rx`, `tx`) from `a` to `b`.
pub(crate) fn link_delta(a: &Value, b: &Value, dir: &str, field: &str) -> u64 {
    b[dir][field]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(a[dir][field].as_u64().unwrap_or(0))
}

/// The agent's readiness and memory, polled every 200 ms.
#[derive(Default)]
pub(crate) struct AgentWatch {
    /// `/readyz` polls.
    pub(crate) polls: u64,
    /// Polls answered 200.
    pub(crate) ready: u64,
    /// The slowest poll.
    pub(crate) slowest: Duration,
    /// The largest RSS sampled, KiB.
    pub(crate) max_rss_kib: u64,
}

/// Polls the agent (`pid`, in `node1`) until `stop`, for two minutes at most.
pub(crate) fn watch_agent(node1: &str, pid: u32, stop: &AtomicBool) -> AgentWatch {
    let node1 = Netns::existing(node1);
    let mut w = AgentWatch::default();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
        let t = Instant::now();
        let ok = scrape(&node1, METRICS_PORT, "/readyz")
            .is_ok_and(|(status, _)| status.contains(" 200"));
        w.polls += 1;
        w.ready += u64::from(ok);
        w.slowest = w.slowest.max(t.elapsed());
        if let Some(rss) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(procfs::rss_kib)
        {
            w.max_rss_kib = w.max_rss_kib.max(rss);
        }
        std::thread::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()));
    }
    w
}
