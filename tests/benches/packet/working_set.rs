//! The working set: every class over many distinct flows spread over
//! 10,000 Services, with conntrack full and evicting.
//!
//! One `BPF_PROG_TEST_RUN` call per packet, each packet a different flow's
//! (the hot-flow figures replay one flow per class, which stays in cache).
//! The bare floor and the parse-only baseline run the same way, one call per
//! distinct packet. Before measuring, conntrack is filled beyond its
//! capacity with SYNs of flows never seen again, then the measured flows are
//! set up and warmed by one unmeasured round; every round then measures the
//! seven series in an order rotated by one per round, and the new-flow
//! series keeps evicting (a full LRU map evicts on every insert).

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::programs::Xdp;
use lb_common::{Event, CONNTRACK_MAX_ENTRIES};
use lb_tests::{
    fixture::program,
    packet::{dst_of, src_of, Packet, TestDatapath, XDP_PASS},
    stats::{figure, median, paired_ratio},
};
use lb_userspace::{
    datapath::{XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::Protocol,
};

use crate::{call, service, vip, NODE, ROUNDS};

/// TCP Services with local backends (established and new flows).
const TCP_SERVICES: u32 = 8_000;
/// UDP Services with local backends.
const UDP_SERVICES: u32 = 1_000;
/// TCP Services whose backends are on other nodes (translated to the node
/// address; their replies are measured).
const REMOTE_SERVICES: u32 = 1_000;
/// Backends of every Service.
const BACKENDS: u32 = 10;

/// The series measured in every round: the two baselines, then the classes.
const SERIES: [&str; 7] = [
    "bare XDP_PASS (floor)",
    "parse-only",
    "non-service",
    "new TCP flow",
    "established TCP",
    "UDP flow",
    "reply (reverse NAT)",
];

/// Median, mean and 99th percentile of one series in one round (ns).
#[derive(Clone, Copy)]
struct Stats {
    median: u64,
    mean: u64,
    p99: u64,
}

/// The [`Stats`] of one series' per-call durations.
fn stats(mut samples: Vec<u64>) -> Stats {
    samples.sort_unstable();
    let n = samples.len();
    Stats {
        median: samples[n / 2],
        mean: samples.iter().sum::<u64>() / n as u64,
        p99: samples[(n * 99 / 100).min(n - 1)],
    }
}

/// The frame of the `k`-th flow from the address block `block` (/8) to `dst`.
fn tcp(block: u32, k: u32, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp(Ipv4Addr::from((block << 24) + k), 40000, dst, dport)
}

/// The loaded configuration and the frames of its measured flows.
struct WorkingSet {
    dp: TestDatapath,
    established: Vec<Vec<u8>>,
    udp: Vec<Vec<u8>>,
    reply: Vec<Vec<u8>>,
    non_service: Vec<Vec<u8>>,
    /// Calls per round of the series that are not tracked flows.
    calls: u32,
    /// New flows started so far (each a source address of its own).
    new_flows: u32,
}

impl WorkingSet {
    /// Loads 10,000 Services, fills conntrack past its capacity, then sets
    /// up `tracked` established TCP flows and a quarter as many UDP and
    /// translated flows each.
    fn new(tracked: u32, calls: u32) -> Self {
        let mut dp = TestDatapath::load_with("ws", NODE, 1 << 24);
        let mut state: Vec<_> = (0..TCP_SERVICES)
            .map(|i| service(vip(i), 80, Protocol::Tcp, BACKENDS, i * BACKENDS, true))
            .collect();
        let udp0 = TCP_SERVICES;
        state.extend(
            (udp0..udp0 + UDP_SERVICES)
                .map(|i| service(vip(i), 53, Protocol::Udp, BACKENDS, i * BACKENDS, true)),
        );
        let remote0 = udp0 + UDP_SERVICES;
        state.extend((remote0..remote0 + REMOTE_SERVICES).map(|i| {
            service(
                vip(i),
                80,
                Protocol::Tcp,
                BACKENDS,
                0x0008_0000 + i * BACKENDS,
                false,
            )
        }));
        program(&mut dp, &state);
        // Flows never seen again, beyond the capacity: conntrack is full.
        for k in 0..CONNTRACK_MAX_ENTRIES / 10 * 11 {
            let syn = tcp(0x67, k, vip(k % TCP_SERVICES), 80).syn().build();
            assert_eq!(dp.run_xdp(&syn).0, XDP_PASS);
        }
        let established = (0..tracked)
            .map(|k| {
                let flow = tcp(0x64, k, vip(k % TCP_SERVICES), 80);
                assert_eq!(dp.run_xdp(&flow.clone().syn().build()).0, XDP_PASS);
                flow.ack().build()
            })
            .collect();
        let udp = (0..tracked / 4)
            .map(|k| {
                let src = Ipv4Addr::from(0x6500_0000 + k);
                let frame = Packet::udp(src, 40000, vip(udp0 + k % UDP_SERVICES), 53).build();
                assert_eq!(dp.run_xdp(&frame).0, XDP_PASS);
                frame
            })
            .collect();
        let reply = (0..tracked / 4)
            .map(|k| {
                let syn = tcp(0x66, k, vip(remote0 + k % REMOTE_SERVICES), 80).syn();
                let (_, out) = dp.run_xdp(&syn.build());
                let ((node, port), (backend, backend_port)) = (src_of(&out), dst_of(&out));
                assert_eq!(
                    node, NODE,
                    "a remote backend's flow is translated to the node"
                );
                Packet::tcp(backend, backend_port, node, port).ack().build()
            })
            .collect();
        let non_service = (0..calls)
            .map(|k| {
                let dst = Ipv4Addr::from(0x0a00_0000 + (k & 0xffff));
                tcp(0x69, k, dst, 443).ack().build()
            })
            .collect();
        Self {
            dp,
            established,
            udp,
            reply,
            non_service,
            calls,
            new_flows: 0,
        }
    }

    /// One call of `prog` per frame: the durations, and how many outputs
    /// `ok` rejects.
    fn run(&self, prog: &str, frames: &[Vec<u8>], ok: impl Fn(&[u8]) -> bool) -> (Vec<u64>, u64) {
        let prog: &Xdp = self.dp.program(prog).try_into().unwrap();
        let mut out = vec![0u8; 512];
        let mut failed = 0;
        let ns = frames
            .iter()
            .map(|frame| {
                let ns = call(prog, frame, &mut out);
                failed += u64::from(!ok(&out));
                ns
            })
            .collect();
        (ns, failed)
    }

    /// Series `s` once: its durations, and its misses (a tracked flow's
    /// packet that found no entry: created anew, or a reply left untranslated).
    fn series(&mut self, s: usize) -> (Vec<u64>, u64) {
        let created = self.dp.event(Event::ConntrackCreated);
        let any = |_: &[u8]| true;
        let (ns, untranslated) = match s {
            0 => self.run(XDP_PASS_PROGRAM, &self.established, any),
            1 => self.run(XDP_PARSE_PROGRAM, &self.established, any),
            2 => self.run(XDP_PROGRAM, &self.non_service, any),
            3 => {
                let first = self.new_flows;
                self.new_flows += self.calls;
                let frames: Vec<_> = (first..self.new_flows)
                    .map(|k| tcp(0x68, k, vip(k % TCP_SERVICES), 80).syn().build())
                    .collect();
                return self.run(XDP_PROGRAM, &frames, any);
            }
            4 => self.run(XDP_PROGRAM, &self.established, any),
            5 => self.run(XDP_PROGRAM, &self.udp, any),
            _ => self.run(XDP_PROGRAM, &self.reply, |out| dst_of(out).0 != NODE),
        };
        let recreated = self.dp.event(Event::ConntrackCreated) - created;
        (ns, untranslated + recreated)
    }

    /// Live conntrack entries and entries created so far.
    fn conntrack(&self) -> (u64, u64) {
        let live = self.dp.snapshot().flows.len() as u64;
        (live, self.dp.event(Event::ConntrackCreated))
    }
}

/// Runs the working-set measurement; returns its JSON and Markdown.
pub fn measure(quick: bool) -> (serde_json::Value, String) {
    let (tracked, calls) = if quick {
        (20_000, 20_000)
    } else {
        (100_000, 100_000)
    };
    let mut ws = WorkingSet::new(tracked, calls);
    for s in 0..SERIES.len() {
        ws.series(s); // warm-up: every measured flow touched once
    }
    let (live0, created0) = ws.conntrack();
    let mut rounds: Vec<Vec<Stats>> = vec![Vec::new(); SERIES.len()];
    let mut misses = vec![0u64; SERIES.len()];
    for r in 0..ROUNDS {
        for i in 0..SERIES.len() {
            let s = (i + r) % SERIES.len();
            let (ns, not_found) = ws.series(s);
            rounds[s].push(stats(ns));
            misses[s] += not_found;
        }
    }
    let (live1, created1) = ws.conntrack();
    let evicted = (created1 - created0).saturating_sub(live1.saturating_sub(live0));
    let flows = [0, 0, calls, calls, tracked, tracked / 4, tracked / 4];
    let floor: Vec<Stats> = rounds[0].clone();
    let parse: Vec<u64> = rounds[1].iter().map(|s| s.median).collect();
    let floor_medians: Vec<u64> = floor.iter().map(|s| s.median).collect();
    let mut md = format!(
        "**Working set.** {} Services ({TCP_SERVICES} TCP and {UDP_SERVICES} UDP with {BACKENDS} local backends each, \
         {REMOTE_SERVICES} TCP with {BACKENDS} backends on other nodes, whose flows are translated to the node address); \
         {} tracked flows measured ({tracked} established TCP, {} UDP, {} translated whose replies are measured), \
         spread over the Services of their kind; {calls} distinct packets per round for the other series (new flows: \
         a new source address each). Conntrack ({CONNTRACK_MAX_ENTRIES} entries) filled first with {} flows never seen \
         again; during the {ROUNDS} measured rounds it held {live0} -> {live1} entries and evicted {evicted} \
         (created {} in those rounds). One `BPF_PROG_TEST_RUN` call per packet, every packet a different flow's, the \
         floor and parse-only measured the same way on the established flows' packets; series in an order rotated by \
         one each round. Per series: median of the round medians (lowest-highest round), median of the round means \
         and of the round 99th percentiles; \"above floor\" is the median over rounds of the difference to the bare \
         floor's same statistic in the same round; \"x floor\" and \"x parse-only\" the median of per-round ratios of \
         medians. \"misses\": packets of a measured flow that found no entry (re-created, or a reply left \
         untranslated), all rounds.\n\n",
        TCP_SERVICES + UDP_SERVICES + REMOTE_SERVICES,
        tracked + tracked / 2,
        tracked / 4,
        tracked / 4,
        CONNTRACK_MAX_ENTRIES / 10 * 11,
        created1 - created0,
    );
    let _ = writeln!(md, "| series | flows | median ns (rounds) | mean ns | p99 ns | above floor: median / mean / p99 (ns) | x floor (rounds) | x parse-only (rounds) | misses |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---:|---:|---:|");
    let mut classes = serde_json::Map::new();
    for (s, name) in SERIES.iter().enumerate() {
        let r = &rounds[s];
        let medians: Vec<u64> = r.iter().map(|x| x.median).collect();
        let fig = figure(&medians);
        let mean = median(r.iter().map(|x| x.mean).collect());
        let p99 = median(r.iter().map(|x| x.p99).collect());
        let above = |get: fn(&Stats) -> u64| {
            median(
                r.iter()
                    .zip(&floor)
                    .map(|(x, f)| get(x).saturating_sub(get(f)))
                    .collect(),
            )
        };
        let (am, amean, ap99) = (above(|x| x.median), above(|x| x.mean), above(|x| x.p99));
        let (x_floor, floor_low, floor_high) =
            paired_ratio(&medians, &floor_medians).expect("rounds");
        let (x_parse, parse_low, parse_high) = paired_ratio(&medians, &parse).expect("rounds");
        let shown = match flows[s] {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        let _ = writeln!(
            md,
            "| {name} | {shown} | {} ({}-{}) | {mean} | {p99} | {am} / {amean} / {ap99} | {x_floor:.2}x ({floor_low:.2}-{floor_high:.2}) | {x_parse:.2}x ({parse_low:.2}-{parse_high:.2}) | {} |",
            fig.median, fig.low, fig.high, misses[s],
        );
        classes.insert(
            (*name).to_string(),
            serde_json::json!({"flows": flows[s], "median_ns": fig.median, "low_ns": fig.low, "high_ns": fig.high,
                "mean_ns": mean, "p99_ns": p99,
                "rounds": r.iter().map(|x| serde_json::json!({"median_ns": x.median, "mean_ns": x.mean, "p99_ns": x.p99})).collect::<Vec<_>>(),
                "above_floor_ns": am, "above_floor_mean_ns": amean, "above_floor_p99_ns": ap99,
                "vs_floor": x_floor, "vs_floor_low": floor_low, "vs_floor_high": floor_high,
                "vs_parse_only": x_parse, "vs_parse_only_low": parse_low, "vs_parse_only_high": parse_high,
                "misses": misses[s]}),
        );
    }
    let json = serde_json::json!({
        "services": TCP_SERVICES + UDP_SERVICES + REMOTE_SERVICES,
        "tcp_services": TCP_SERVICES, "udp_services": UDP_SERVICES, "remote_services": REMOTE_SERVICES,
        "backends_per_service": BACKENDS, "rounds": ROUNDS, "calls_per_round": calls,
        "tracked_flows": tracked + tracked / 2,
        "conntrack_capacity": CONNTRACK_MAX_ENTRIES,
        "conntrack_live_before": live0, "conntrack_live_after": live1,
        "conntrack_created_during": created1 - created0, "conntrack_evicted_during": evicted,
        "series": classes,
    });
    (json, md)
}
