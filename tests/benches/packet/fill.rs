//! What a new flow costs as conntrack fills: the same new-flow packets
//! measured with the table empty, a quarter, half, three quarters, 90% full,
//! and full and evicting. A new flow inserts a conntrack and a reverse-NAT
//! entry into LRU hashes; once they are full every insert first evicts.
//!
//! One data path of [`SERVICES`] TCP Services; each level is reached with
//! SYNs of flows never seen again (not measured), then measured in
//! [`ROUNDS`] rounds of the bare floor and of new flows (one
//! `BPF_PROG_TEST_RUN` call per packet, each packet a new source address).
//! The measured flows add entries too: the fill before and after is shown.

use std::{fmt::Write as _, path::Path};

use aya::programs::Xdp;
use lb_common::CONNTRACK_MAX_ENTRIES;
use lb_tests::{
    charts::{grouped_bars, Bar, Group},
    fixture::program,
    packet::{Packet, TestDatapath, XDP_PASS},
    stats::{figure, median, paired_ratio},
};
use lb_userspace::{
    datapath::{XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::Protocol,
};

use crate::{call, service, vip, NODE, ROUNDS};

/// TCP Services of the data path (10 local backends each).
const SERVICES: u32 = 1_000;
/// Backends of every Service.
const BACKENDS: u32 = 10;
/// The fill levels, in percent of conntrack's capacity; the last is past
/// it: the table is full and evicts on every insert.
const LEVELS: [u32; 6] = [0, 25, 50, 75, 90, 110];
/// The chart's file name (in target/bench; the report copies it to docs/bench).
pub const CHART: &str = "packet-new-flow-fill.png";

/// A TCP SYN of the `k`-th flow from the address block `block` (/8).
fn syn(block: u32, k: u32) -> Vec<u8> {
    let src = std::net::Ipv4Addr::from((block << 24) + k);
    Packet::tcp(src, 40000, vip(k % SERVICES), 80).syn().build()
}

/// One level's figures.
struct Level {
    percent: u32,
    before: u64,
    after: u64,
    new_flow: Vec<u64>,
    p99: Vec<u64>,
    floor: Vec<u64>,
}

/// Measures every level; returns the JSON and the Markdown, and draws the
/// chart into `out`.
pub fn measure(quick: bool, out: &Path) -> (serde_json::Value, String) {
    let per_round: u32 = if quick { 400 } else { 2_000 };
    let calls = per_round * u32::try_from(ROUNDS).expect("a few rounds");
    let mut dp = TestDatapath::load_with("fill", NODE, 1 << 20);
    let state: Vec<_> = (0..SERVICES)
        .map(|i| service(vip(i), 80, Protocol::Tcp, BACKENDS, i * BACKENDS, true))
        .collect();
    program(&mut dp, &state);
    let xdp: &Xdp = dp.program(XDP_PROGRAM).try_into().unwrap();
    let pass: &Xdp = dp.program(XDP_PASS_PROGRAM).try_into().unwrap();
    let mut frame_out = vec![0u8; 512];
    let (mut filled, mut measured) = (0u32, 0u32);
    let mut levels = Vec::new();
    for percent in LEVELS {
        let target = u32::try_from(u64::from(CONNTRACK_MAX_ENTRIES) * u64::from(percent) / 100)
            .unwrap_or(u32::MAX);
        // The measured flows of lower levels count towards the fill.
        while filled + measured < target {
            assert_eq!(dp.run_xdp(&syn(0x6a, filled)).0, XDP_PASS);
            filled += 1;
        }
        let before = dp.snapshot().flows.len() as u64;
        let mut level = Level {
            percent,
            before,
            after: 0,
            new_flow: Vec::new(),
            p99: Vec::new(),
            floor: Vec::new(),
        };
        for _ in 0..ROUNDS {
            let frames: Vec<Vec<u8>> = (measured..measured + per_round)
                .map(|k| syn(0x6b, k))
                .collect();
            measured += per_round;
            let floor: Vec<u64> = frames
                .iter()
                .map(|f| call(pass, f, &mut frame_out))
                .collect();
            let mut ns: Vec<u64> = frames
                .iter()
                .map(|f| call(xdp, f, &mut frame_out))
                .collect();
            ns.sort_unstable();
            level.p99.push(ns[(ns.len() * 99 / 100).min(ns.len() - 1)]);
            level.new_flow.push(median(ns));
            level.floor.push(median(floor));
        }
        level.after = dp.snapshot().flows.len() as u64;
        levels.push(level);
    }
    report(&levels, calls, out)
}

/// The JSON, Markdown and chart of the measured levels.
fn report(levels: &[Level], calls: u32, out: &Path) -> (serde_json::Value, String) {
    let mut md = format!(
        "**New flow vs conntrack fill.** {SERVICES} TCP Services of {BACKENDS} local backends; conntrack \
         ({CONNTRACK_MAX_ENTRIES} entries) filled to each level with SYNs of flows never seen again, then \
         {calls} new flows per level in {ROUNDS} rounds, each round also measuring the bare floor on the same \
         packets. \"x floor\": median of the per-round ratios of medians (lowest-highest round).\n\n\
         | fill (target) | entries before -> after | new flow median ns (rounds) | p99 ns | floor ns | x floor (rounds) |\n\
         |---:|---:|---:|---:|---:|---:|\n"
    );
    let mut json = Vec::new();
    let mut groups = Vec::new();
    for l in levels {
        let fig = figure(&l.new_flow);
        let floor = figure(&l.floor);
        let p99 = median(l.p99.clone());
        let (x, low, high) = paired_ratio(&l.new_flow, &l.floor).expect("rounds");
        let label = if l.percent > 100 {
            "full, evicting".to_string()
        } else {
            format!("{}%", l.percent)
        };
        let _ = writeln!(
            md,
            "| {label} | {} -> {} | {} ({}-{}) | {p99} | {} | {x:.2}x ({low:.2}-{high:.2}) |",
            l.before, l.after, fig.median, fig.low, fig.high, floor.median
        );
        json.push(serde_json::json!({"fill_percent": l.percent, "entries_before": l.before,
            "entries_after": l.after, "median_ns": fig.median, "low_ns": fig.low, "high_ns": fig.high,
            "p99_ns": p99, "rounds_ns": l.new_flow, "floor_rounds_ns": l.floor,
            "vs_floor": x, "vs_floor_low": low, "vs_floor_high": high}));
        #[allow(clippy::cast_precision_loss)] // nanoseconds far below 2^52
        let bar = |series: &str, f: &lb_tests::stats::Figure| Bar {
            series: series.into(),
            value: f.median as f64,
            low: f.low as f64,
            high: f.high as f64,
        };
        groups.push(Group {
            label,
            bars: vec![
                bar("bare XDP_PASS (floor)", &floor),
                bar("new TCP flow", &fig),
            ],
        });
    }
    if let Err(e) = grouped_bars(
        &out.join(CHART),
        "New flow: ns per packet by conntrack fill (lower is better)",
        "ns per packet",
        &groups,
    ) {
        eprintln!("no chart {CHART}: {e:#}");
    }
    (serde_json::Value::Array(json), md)
}
