//! The fixed-rate figures as tables, JSON and summary lines: CPU per request
//! per mode (host-wide and the bench's own processes), its ratio to direct
//! paired by round (for flows node1 forwards to node2, our modes' ratio to
//! the iptables layout too), the programs' run time.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use lb_tests::stats::{figure, paired_ratio, ratio};
use serde_json::{json, Map, Value};

use crate::{
    fixed::{
        Fixed, FixedPair, ACHIEVED_MIN, HOST_IDLE_MIN_PCT, KEPT_ALIVE_RATE, NEW_CONNECTION_RATE,
    },
    modes::{Mode, Sample},
};

type Get = fn(&FixedPair) -> Fixed;
type Cpu = fn(&Fixed) -> u64;

/// The kinds of window: name, JSON key, figure.
const KINDS: [(&str, &str, Get); 3] = [
    ("kept-alive request", "kept_alive", |p| p.kept),
    ("new connection", "new_connections", |p| p.conn),
    ("forwarded kept-alive request", REMOTE_KEY, |p| p.remote),
];

/// The JSON key of the window whose flows node1 forwards to node2.
const REMOTE_KEY: &str = "kept_alive_remote";

/// The JSON key of our modes' host CPU ratios to the iptables layout.
const OVER_IPTABLES: &str = "cpu_over_iptables";

/// The two CPU figures: JSON key of the ratios, figure.
const CPUS: [(&str, Cpu); 2] = [
    ("cpu_over_direct", |f| f.cpu_ns_per_request),
    ("own_cpu_over_direct", |f| f.own_cpu_ns_per_request),
];

/// A mode's ratio to direct in the same rounds.
struct Ratio {
    median: f64,
    low: f64,
    high: f64,
    rounds: Vec<f64>,
    /// Rounds where either mode fell short of the offered rate.
    short: Vec<bool>,
    /// Rounds where the host was saturated in either mode's window.
    saturated: Vec<bool>,
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

fn over_direct(ours: &[Fixed], base: &[Fixed], cpu: Cpu) -> Option<Ratio> {
    let of = |w: &[Fixed]| w.iter().map(cpu).collect::<Vec<_>>();
    let (median, low, high) = paired_ratio(&of(ours), &of(base))?;
    let pairs = || ours.iter().zip(base);
    Some(Ratio {
        median,
        low,
        high,
        rounds: pairs().map(|(a, b)| ratio(cpu(a), cpu(b))).collect(),
        short: pairs().map(|(a, b)| a.short() || b.short()).collect(),
        saturated: pairs()
            .map(|(a, b)| a.saturated() || b.saturated())
            .collect(),
    })
}

#[allow(clippy::cast_precision_loss)] // ns far below 2^52
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn spread_us(w: &[Fixed], cpu: Cpu) -> String {
    let f = figure(&w.iter().map(cpu).collect::<Vec<_>>());
    format!("{:.1} ({:.1}-{:.1})", us(f.median), us(f.low), us(f.high))
}

impl Ratio {
    /// The median and spread, as "1.05x (1.00-1.10x)".
    fn text(&self) -> String {
        format!("{:.2}x ({:.2}-{:.2}x)", self.median, self.low, self.high)
    }

    /// " over N rounds", and how many were short or saturated.
    fn rounds_text(&self) -> String {
        let flagged = self
            .short
            .iter()
            .zip(&self.saturated)
            .filter(|(a, b)| **a || **b)
            .count();
        format!(
            " over {} rounds{}",
            self.rounds.len(),
            if flagged > 0 {
                format!(", {flagged} short or saturated")
            } else {
                String::new()
            }
        )
    }

    fn json(&self) -> Value {
        json!({
            "median": self.median, "low": self.low, "high": self.high,
            "rounds": self.rounds, "short": self.short, "saturated": self.saturated,
        })
    }
}

fn ratio_text(r: Option<&Ratio>) -> String {
    r.map_or_else(|| "-".to_string(), Ratio::text)
}

/// One table row's cells after the mode.
fn cells(w: &[Fixed], host: Option<&Ratio>, own: Option<&Ratio>) -> String {
    let achieved = figure(&w.iter().map(|f| f.achieved_per_s).collect::<Vec<_>>());
    let short = w.iter().filter(|f| f.short()).count();
    let flag = if short > 0 {
        format!(" **short in {short} round(s)**")
    } else {
        String::new()
    };
    let idle = figure(&w.iter().map(|f| f.host_idle_pct).collect::<Vec<_>>());
    let saturated = if w.iter().any(Fixed::saturated) {
        " **saturated**"
    } else {
        ""
    };
    let bpf: Vec<u64> = w.iter().filter_map(|f| f.bpf_ns_per_request).collect();
    let bpf = if bpf.is_empty() {
        "-".to_string()
    } else {
        let f = figure(&bpf);
        format!("{} ({}-{})", f.median, f.low, f.high)
    };
    format!(
        " {}{flag} | {} ({}-{}){saturated} | {} | {} | {} | {} | {bpf} |",
        achieved.median,
        idle.median,
        idle.low,
        idle.high,
        spread_us(w, CPUS[0].1),
        ratio_text(host),
        spread_us(w, CPUS[1].1),
        ratio_text(own),
    )
}

fn rounds_json(w: &[Fixed]) -> Value {
    json!({
        "achieved_per_s": w.iter().map(|f| f.achieved_per_s).collect::<Vec<_>>(),
        "short": w.iter().map(Fixed::short).collect::<Vec<_>>(),
        "host_idle_pct": w.iter().map(|f| f.host_idle_pct).collect::<Vec<_>>(),
        "errors": w.iter().map(|f| f.errors).collect::<Vec<_>>(),
        "cpu_ns_per_request": w.iter().map(|f| f.cpu_ns_per_request).collect::<Vec<_>>(),
        "own_cpu_ns_per_request": w.iter().map(|f| f.own_cpu_ns_per_request).collect::<Vec<_>>(),
        "bpf_ns_per_request": w.iter().map(|f| f.bpf_ns_per_request).collect::<Vec<_>>(),
        "bpf_runs_per_request_x100": w.iter().map(|f| f.bpf_runs_per_request_x100).collect::<Vec<_>>(),
        "p99_us": w.iter().map(|f| f.p99_us).collect::<Vec<_>>(),
    })
}

fn intro(window: Duration) -> String {
    format!(
        "### CPU per request at a fixed offered rate\n\n\
         Open-loop load well below saturation: {KEPT_ALIVE_RATE} kept-alive requests/s, then \
         {NEW_CONNECTION_RATE} new connections/s (one request each), {} s each, from 8 clients \
         sharing the schedule (a request late on its schedule is sent as soon as a client is free, \
         so a path that cannot keep up answers fewer; below {:.0}% of the offered rate a window is \
         flagged short). Host CPU is host-wide busy time (`/proc/stat`, all CPUs, total minus idle \
         and iowait) over the window divided by the requests answered: every namespace shares one \
         kernel, so it counts the client, the servers, the agent, softirqs and anything else the \
         machine runs at the time; a window with less than {HOST_IDLE_MIN_PCT}% of the host idle \
         is flagged saturated (its host figure then measures the machine, not this load). Own CPU \
         counts only the bench process (client and servers), the agent and the `ksoftirqd` \
         threads (`/proc/<pid>/stat`; softirqs run in a sender's context are charged to it). \
         \"x direct\" pairs each mode with the direct run of the same round (median of the rounds' \
         ratios, lowest-highest). BPF ns is the agent's programs' own run time per request \
         (`BPF_ENABLE_STATS` on during every window in every mode). Forwarded kept-alive \
         requests go to a Service whose one endpoint is pod2a on node2 (at the same rate, one \
         target): node1 translates each flow to its own address and forwards it to node2 and \
         the replies back to the client (our modes past the stack: a FIB lookup and `XDP_TX`, \
         or `bpf_redirect_neigh` at TC; kube-proxy's layouts by DNAT and masquerade in the \
         stack); direct routes the client's requests to pod2a through node1 and node2 routes \
         the replies through node1, so every mode crosses node1 both ways. For these, \
         \"x iptables\" below the tables pairs our modes with the iptables layout's round.\n\n",
        window.as_secs(),
        ACHIEVED_MIN * 100.0
    )
}

/// The fixed-rate section: markdown, JSON (`e2e.json`'s `fixed_rate`) and
/// summary lines.
pub(crate) fn fixed_section(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
    window: Duration,
    measured: &[u32],
) -> (String, Value, String) {
    let mut md = intro(window);
    let mut scales = Vec::new();
    let mut ratios = Map::new();
    let mut summary = String::new();
    for &total in measured {
        let mut modes = Map::new();
        for (name, key, get) in KINDS {
            let _ = writeln!(
                md,
                "#### {total} services, {name}s\n\n| mode | answered/s | host idle % | host CPU µs/{name} | \
                 x direct | own CPU µs/{name} | x direct | BPF ns/{name} |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|"
            );
            let base = windows(per_round, (total, Mode::Direct), get);
            let iptables = windows(per_round, (total, Mode::Iptables), get);
            let mut below = String::new();
            for mode in Mode::ALL {
                let w = windows(per_round, (total, mode), get);
                if w.is_empty() {
                    continue;
                }
                let [host, own] = CPUS.map(|(_, cpu)| {
                    (mode != Mode::Direct)
                        .then(|| over_direct(&w, &base, cpu))
                        .flatten()
                });
                let vs_iptables = (key == REMOTE_KEY && matches!(mode, Mode::Ours | Mode::OursTc))
                    .then(|| over_direct(&w, &iptables, CPUS[0].1))
                    .flatten();
                let _ = writeln!(
                    md,
                    "| {} |{}",
                    mode.name(),
                    cells(&w, host.as_ref(), own.as_ref())
                );
                modes.entry(mode.key()).or_insert_with(|| json!({}))[key] = rounds_json(&w);
                for (which, r) in [
                    (CPUS[0].0, &host),
                    (CPUS[1].0, &own),
                    (OVER_IPTABLES, &vs_iptables),
                ] {
                    let Some(r) = r else { continue };
                    ratios.entry(which).or_insert_with(|| json!({}))[key][total.to_string()]
                        [mode.key()] = r.json();
                }
                if let Some(r) = &vs_iptables {
                    let _ = writeln!(
                        below,
                        "- {} x iptables layout, host CPU: {}{}",
                        mode.name(),
                        r.text(),
                        r.rounds_text()
                    );
                    let _ = writeln!(
                        summary,
                        "- CPU per {name} at a fixed rate, {total} services, {} / iptables layout: host {}{}",
                        mode.name(),
                        r.text(),
                        r.rounds_text()
                    );
                }
                let summarized = matches!(mode, Mode::Ours | Mode::OursTc | Mode::DirectAgain)
                    || (key == REMOTE_KEY && mode == Mode::Iptables);
                if let (Some(h), Some(o), true) = (&host, &own, summarized) {
                    let _ = writeln!(
                        summary,
                        "- CPU per {name} at a fixed rate, {total} services, {} / direct: host {}, own {}{}",
                        mode.name(),
                        h.text(),
                        o.text(),
                        h.rounds_text()
                    );
                }
            }
            let _ = writeln!(md);
            if !below.is_empty() {
                let _ = writeln!(md, "{below}");
            }
        }
        scales.push(json!({"services": total, "modes": modes}));
    }
    let mut json = json!({
        "kept_alive_per_s": KEPT_ALIVE_RATE, "new_connections_per_s": NEW_CONNECTION_RATE,
        "window_s": window.as_secs(), "achieved_min": ACHIEVED_MIN,
        "host_idle_min_pct": HOST_IDLE_MIN_PCT, "scales": scales,
    });
    for (k, v) in ratios {
        json[k] = v;
    }
    (md, json, summary)
}
