//! The fixed-rate figures as tables, JSON and summary lines: CPU per request
//! per mode, its ratio to direct paired by round, the programs' run time.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use lb_tests::stats::{figure, paired_ratio, ratio};
use serde_json::{json, Map, Value};

use crate::{
    fixed::{Fixed, FixedPair, ACHIEVED_MIN, KEPT_ALIVE_RATE, NEW_CONNECTION_RATE},
    modes::{Mode, Sample},
};

type Get = fn(&FixedPair) -> Fixed;

/// The two kinds of window: name, JSON key, figure.
const KINDS: [(&str, &str, Get); 2] = [
    ("kept-alive request", "kept_alive", |p| p.kept),
    ("new connection", "new_connections", |p| p.conn),
];

/// A mode's ratio to direct in the same rounds.
struct Ratio {
    median: f64,
    low: f64,
    high: f64,
    rounds: Vec<f64>,
    /// Rounds where either mode fell short of the offered rate.
    short: Vec<bool>,
}

fn windows(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
    at: (u32, Mode),
    get: Get,
) -> Vec<Fixed> {
    per_round
        .get(&at)
        .map(|s| s.iter().map(|x| get(&x.fixed)).collect())
        .unwrap_or_default()
}

fn cpu_ratio(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
    total: u32,
    mode: Mode,
    get: Get,
) -> Option<Ratio> {
    let ours = windows(per_round, (total, mode), get);
    let base = windows(per_round, (total, Mode::Direct), get);
    let cpu = |w: &[Fixed]| w.iter().map(|f| f.cpu_ns_per_request).collect::<Vec<_>>();
    let (median, low, high) = paired_ratio(&cpu(&ours), &cpu(&base))?;
    Some(Ratio {
        median,
        low,
        high,
        rounds: ours
            .iter()
            .zip(&base)
            .map(|(a, b)| ratio(a.cpu_ns_per_request, b.cpu_ns_per_request))
            .collect(),
        short: ours
            .iter()
            .zip(&base)
            .map(|(a, b)| a.short() || b.short())
            .collect(),
    })
}

#[allow(clippy::cast_precision_loss)] // ns far below 2^52
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn cells(w: &[Fixed], r: Option<&Ratio>, md: &mut String) {
    let achieved = figure(&w.iter().map(|f| f.achieved_per_s).collect::<Vec<_>>());
    let short = w.iter().filter(|f| f.short()).count();
    let flag = if short > 0 {
        format!(" **short in {short} round(s)**")
    } else {
        String::new()
    };
    let cpu = figure(&w.iter().map(|f| f.cpu_ns_per_request).collect::<Vec<_>>());
    let ratio = r.map_or_else(
        || "-".to_string(),
        |r| format!("{:.2}x ({:.2}-{:.2}x)", r.median, r.low, r.high),
    );
    let bpf: Vec<u64> = w.iter().filter_map(|f| f.bpf_ns_per_request).collect();
    let bpf = if bpf.is_empty() {
        "-".to_string()
    } else {
        let f = figure(&bpf);
        format!("{} ({}-{})", f.median, f.low, f.high)
    };
    let _ = write!(
        md,
        " {}{flag} | {:.1} ({:.1}-{:.1}) | {ratio} | {bpf} |",
        achieved.median,
        us(cpu.median),
        us(cpu.low),
        us(cpu.high)
    );
}

fn rounds_json(w: &[Fixed]) -> Value {
    json!({
        "achieved_per_s": w.iter().map(|f| f.achieved_per_s).collect::<Vec<_>>(),
        "short": w.iter().map(Fixed::short).collect::<Vec<_>>(),
        "errors": w.iter().map(|f| f.errors).collect::<Vec<_>>(),
        "cpu_ns_per_request": w.iter().map(|f| f.cpu_ns_per_request).collect::<Vec<_>>(),
        "bpf_ns_per_request": w.iter().map(|f| f.bpf_ns_per_request).collect::<Vec<_>>(),
        "bpf_runs_per_request_x100": w.iter().map(|f| f.bpf_runs_per_request_x100).collect::<Vec<_>>(),
        "p99_us": w.iter().map(|f| f.p99_us).collect::<Vec<_>>(),
    })
}

/// The fixed-rate section: markdown, JSON (`e2e.json`'s `fixed_rate`) and
/// summary lines.
pub(crate) fn fixed_section(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
    window: Duration,
) -> (String, Value, String) {
    let mut md = format!(
        "### CPU per request at a fixed offered rate\n\n\
         Open-loop load well below saturation: {KEPT_ALIVE_RATE} kept-alive requests/s, then \
         {NEW_CONNECTION_RATE} new connections/s (one request each), {} s each, from 8 clients \
         sharing the schedule (a request late on its schedule is sent as soon as a client is free, \
         so a path that cannot keep up answers fewer). CPU is host-wide busy time (`/proc/stat`, \
         all CPUs, total minus idle and iowait) over the window divided by the requests answered: \
         every namespace shares one kernel, so it counts the client, the servers, the agent, \
         softirqs and anything else the machine runs at the time. \"x direct\" pairs each mode \
         with the direct run of the same round (median of the rounds' ratios, lowest-highest). \
         BPF ns is the agent's programs' own run time per request (`BPF_ENABLE_STATS` on during \
         both windows in every mode). A window answering less than {:.0}% of its offered rate is \
         flagged short.\n\n",
        window.as_secs(),
        ACHIEVED_MIN * 100.0
    );
    let mut scales = Vec::new();
    let mut over_direct = Map::new();
    let mut summary = String::new();
    for total in [10u32, 10_000] {
        let _ = writeln!(
            md,
            "#### {total} services\n\n| mode | kept-alive answered/s | CPU µs/request | x direct | BPF ns/request | \
             new connections answered/s | CPU µs/connection | x direct | BPF ns/connection |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut modes = Map::new();
        for mode in Mode::ALL {
            let mut row = Map::new();
            let mut line = format!("| {} |", mode.name());
            for (name, key, get) in KINDS {
                let w = windows(per_round, (total, mode), get);
                if w.is_empty() {
                    continue;
                }
                let r = (mode != Mode::Direct)
                    .then(|| cpu_ratio(per_round, total, mode, get))
                    .flatten();
                cells(&w, r.as_ref(), &mut line);
                row.insert(key.into(), rounds_json(&w));
                if let Some(r) = r {
                    let short = r.short.iter().filter(|&&s| s).count();
                    let entry = over_direct
                        .entry(key)
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("an object");
                    entry.entry(total.to_string()).or_insert_with(|| json!({}))[mode.key()] = json!({
                        "median": r.median, "low": r.low, "high": r.high,
                        "rounds": r.rounds, "short": r.short,
                    });
                    if matches!(mode, Mode::Ours | Mode::OursTc | Mode::DirectAgain) {
                        let _ = writeln!(
                            summary,
                            "- node CPU per {name} at a fixed rate, {total} services, {} / direct: {:.2}x ({:.2}-{:.2}x over {} rounds{})",
                            mode.name(),
                            r.median,
                            r.low,
                            r.high,
                            r.rounds.len(),
                            if short > 0 { format!(", {short} short") } else { String::new() },
                        );
                    }
                }
            }
            if !row.is_empty() {
                let _ = writeln!(md, "{line}");
                modes.insert(mode.key().into(), row.into());
            }
        }
        let _ = writeln!(md);
        scales.push(json!({"services": total, "modes": modes}));
    }
    let json = json!({
        "kept_alive_per_s": KEPT_ALIVE_RATE, "new_connections_per_s": NEW_CONNECTION_RATE,
        "window_s": window.as_secs(), "achieved_min": ACHIEVED_MIN,
        "scales": scales, "cpu_over_direct": over_direct,
    });
    (md, json, summary)
}
