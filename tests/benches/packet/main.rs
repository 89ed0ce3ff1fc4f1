//! Per-packet cost of the XDP program, measured with `BPF_PROG_TEST_RUN`.
//!
//! One call per packet (`repeat = 1`, a fresh copy of the frame each call):
//! with `repeat > 1` the kernel would rerun the program on the frame it has
//! already rewritten. For each measurement the kernel's per-call durations
//! are collected in several rounds, the classes interleaved within a round;
//! the report gives the median of the round medians and their spread. Two
//! baselines run the same way in the same process: a bare `XDP_PASS` program
//! (the fixed per-call floor) and `xdp_parse`, which parses Ethernet, IPv4 and
//! TCP/UDP and passes (the floor of any L4 balancer).
//!
//! Two parts: one hot flow per class in six configurations (the same packet
//! replayed, everything it touches in cache: the program's cost alone), and
//! the working set ([`working_set`]): many distinct flows over 10,000
//! Services with conntrack full and evicting (what a busy node pays); and
//! a new flow's cost by conntrack fill ([`fill`]); IPv6 beside IPv4
//! ([`ipv6`]); and IPv4 before and after the IPv6 data path, the old
//! kernel object beside the current one ([`before_after`]).
//!
//! `LB_BENCH_QUICK=1` (`cargo xtask bench --quick`) takes fewer samples and
//! a smaller working set.
//! Writes `target/bench/packet.json` and `target/bench/packet.md`.

use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_tests::{
    fixture::{frontend, program},
    packet::{Packet, TestDatapath, XDP_PASS},
    stats::{figure, median, paired_ratio},
};
mod before_after;
mod fill;
mod ipv6;
mod working_set;

use lb_userspace::{
    datapath::{XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::{DesiredFrontend, Frontend, Protocol},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const ROUNDS: usize = 5;

/// The `i`-th service's virtual IP.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000 + i + 1)
}

/// `addr`:`port` to `backends` backends (`10.240.x.x`:8080) numbered from
/// `first`, on this node (`local`) or not.
fn service(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    backends: u32,
    first: u32,
    local: bool,
) -> (Frontend, DesiredFrontend) {
    let backends: Vec<_> = (first..first + backends)
        .map(|n| (Ipv4Addr::from(0x0af0_0000 + n), 8080, local))
        .collect();
    frontend(addr, port, proto, &backends)
}

/// A data path with `services` TCP frontends of `backends` local backends,
/// plus a UDP frontend and a frontend with one remote (translated to the node address) backend.
fn datapath(services: u32, backends: u32) -> TestDatapath {
    let slab = if u64::from(services) * 1021 > 1 << 20 {
        1 << 24
    } else {
        1 << 20
    };
    let mut dp = TestDatapath::load_with(&format!("b{services}x{backends}"), NODE, slab);
    let mut state: Vec<_> = (0..services)
        .map(|i| service(vip(i), 80, Protocol::Tcp, backends, i * backends, true))
        .collect();
    state.push(service(vip(0), 53, Protocol::Udp, backends, 0, true));
    state.push(service(vip(0), 81, Protocol::Tcp, 1, 0x00f0_0000, false));
    program(&mut dp, &state);
    dp
}

/// One call of `prog` on `frame`: the kernel's duration in ns.
fn call(prog: &Xdp, frame: &[u8], out: &mut [u8]) -> u64 {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The packet classes measured, each a frame maker for the `i`-th call.
const CLASSES: [&str; 5] = [
    "non-service",
    "new TCP flow",
    "established TCP",
    "UDP flow",
    "reply (reverse NAT)",
];

/// One configuration under test: its data path and the frames of the flows set up in it.
struct Bench {
    services: u32,
    backends: u32,
    dp: TestDatapath,
    established: Vec<u8>,
    udp: Vec<u8>,
    reply: Vec<u8>,
    non_service: Vec<u8>,
}

impl Bench {
    /// Loads the configuration and sets up an established TCP flow, a UDP
    /// flow and a flow translated to the node address, whose replies are measured.
    fn new(services: u32, backends: u32) -> Self {
        let dp = datapath(services, backends);
        let established = Packet::tcp(CLIENT, 40000, vip(0), 80).ack().build();
        assert_eq!(
            dp.run_xdp(&Packet::tcp(CLIENT, 40000, vip(0), 80).syn().build())
                .0,
            XDP_PASS
        );
        let udp = Packet::udp(CLIENT, 40001, vip(0), 53).build();
        assert_eq!(dp.run_xdp(&udp).0, XDP_PASS);
        let (_, snat_syn) = dp.run_xdp(&Packet::tcp(CLIENT, 40002, vip(0), 81).syn().build());
        let (node, snat_port) = lb_tests::packet::src_of(&snat_syn);
        let (backend, backend_port) = lb_tests::packet::dst_of(&snat_syn);
        let reply = Packet::tcp(backend, backend_port, node, snat_port)
            .ack()
            .build();
        let non_service = Packet::tcp(CLIENT, 40000, Ipv4Addr::new(10, 0, 0, 1), 443)
            .ack()
            .build();
        Self {
            services,
            backends,
            dp,
            established,
            udp,
            reply,
            non_service,
        }
    }

    /// The median of `calls` per-call durations of `prog` on the frames `frame(i)` makes.
    fn median_of(&self, prog: &str, calls: usize, mut frame: impl FnMut() -> Vec<u8>) -> u64 {
        let prog: &Xdp = self.dp.program(prog).try_into().unwrap();
        let mut out = vec![0u8; 512];
        median((0..calls).map(|_| call(prog, &frame(), &mut out)).collect())
    }

    /// One round: the two baselines, then every class, `calls` each.
    fn round(&self, calls: usize, new_flow_base: &mut u32) -> Round {
        let baseline = || self.established.clone();
        let floor = self.median_of(XDP_PASS_PROGRAM, calls, baseline);
        let parse = self.median_of(XDP_PARSE_PROGRAM, calls, baseline);
        let classes = (0..CLASSES.len())
            .map(|class| {
                self.median_of(XDP_PROGRAM, calls, || match class {
                    0 => self.non_service.clone(),
                    1 => {
                        *new_flow_base += 1;
                        Packet::tcp(
                            Ipv4Addr::from(0x0b00_0000 + *new_flow_base),
                            40000,
                            vip(0),
                            80,
                        )
                        .syn()
                        .build()
                    }
                    2 => self.established.clone(),
                    3 => self.udp.clone(),
                    _ => self.reply.clone(),
                })
            })
            .collect();
        Round {
            floor,
            parse,
            classes,
        }
    }
}

/// One round's medians of one configuration (ns).
struct Round {
    floor: u64,
    parse: u64,
    classes: Vec<u64>,
}

fn main() {
    lb_tests::require_root();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let calls = if quick { 20_000 } else { 100_000 };
    let started = Instant::now();
    let configs: Vec<(u32, u32)> = vec![
        (1, 10),
        (100, 10),
        (10_000, 10),
        (1, 1),
        (1, 100),
        (1, 1_000),
    ];
    // Every configuration is loaded first; each round then measures all of
    // them, baselines included, so a drift of the machine hits every figure
    // of a round alike and the per-round ratios cancel it.
    let benches: Vec<Bench> = configs.iter().map(|&(s, b)| Bench::new(s, b)).collect();
    let mut new_flow_base = 0;
    let mut rounds: Vec<Vec<Round>> = (0..benches.len()).map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (bench, rounds) in benches.iter().zip(&mut rounds) {
            rounds.push(bench.round(calls / ROUNDS, &mut new_flow_base));
        }
    }
    let all =
        |get: fn(&Round) -> u64| figure(&rounds.iter().flatten().map(get).collect::<Vec<_>>());
    let (f, p) = (all(|r| r.floor), all(|r| r.parse));
    let mut json_configs = Vec::new();
    let mut md = String::new();
    let _ = writeln!(md, "| services | backends/service | class | ns/packet (median) | spread (round medians) | vs parse-only (rounds) | above floor | x floor (rounds) |");
    let _ = writeln!(md, "|---:|---:|---|---:|---|---:|---:|---:|");
    for (bench, rounds) in benches.iter().zip(&rounds) {
        let (services, backends) = (bench.services, bench.backends);
        let mut classes = serde_json::Map::new();
        let parse: Vec<u64> = rounds.iter().map(|r| r.parse).collect();
        let floor: Vec<u64> = rounds.iter().map(|r| r.floor).collect();
        for (c, class) in CLASSES.iter().enumerate() {
            let ns: Vec<u64> = rounds.iter().map(|r| r.classes[c]).collect();
            let fig = figure(&ns);
            let (vs_parse, vs_low, vs_high) = paired_ratio(&ns, &parse).expect("rounds");
            let (vs_floor, floor_low, floor_high) = paired_ratio(&ns, &floor).expect("rounds");
            let above = median(
                rounds
                    .iter()
                    .map(|r| r.classes[c].saturating_sub(r.floor))
                    .collect(),
            );
            let _ = writeln!(
                md,
                "| {services} | {backends} | {class} | {} | {}-{} | {vs_parse:.2}x ({vs_low:.2}-{vs_high:.2}) | {above} ns | {vs_floor:.2}x ({floor_low:.2}-{floor_high:.2}) |",
                fig.median, fig.low, fig.high,
            );
            classes.insert(
                (*class).to_string(),
                serde_json::json!({"median_ns": fig.median, "low_ns": fig.low, "high_ns": fig.high,
                    "rounds_ns": ns, "vs_parse_only": vs_parse, "vs_parse_only_low": vs_low,
                    "vs_parse_only_high": vs_high, "above_floor_ns": above,
                    "vs_floor": vs_floor, "vs_floor_low": floor_low, "vs_floor_high": floor_high}),
            );
        }
        // The rounds' baselines, so that each target is judged round by round.
        json_configs.push(
            serde_json::json!({"services": services, "backends_per_service": backends,
            "parse_only_rounds_ns": parse, "floor_rounds_ns": floor, "classes": classes}),
        );
    }
    let header = format!(
        "Per packet, XDP, `BPF_PROG_TEST_RUN` one call per packet, {calls} calls per measurement in {ROUNDS} rounds; \
         each round measures every configuration and, in each, the two baselines and then every class. \
         Baselines (all rounds): bare XDP_PASS {} ns ({}-{}), parse-only {} ns ({}-{}). \
         \"vs parse-only\" is the median of the per-round ratios to the parse-only program of the same \
         configuration and round (lowest-highest round in brackets); \"above floor\" likewise the median of per-round differences to the bare XDP_PASS, \
         \"x floor\" the median of per-round ratios to it. One hot flow per class: the same packet replayed, so everything \
         it touches stays in cache; the working set below measures many flows.\n\n",
        f.median, f.low, f.high, p.median, p.low, p.high
    );
    // The hot-flow data paths are unloaded before the working set loads its own.
    drop(benches);
    let (working_set, ws_md) = working_set::measure(quick);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let (by_fill, fill_md) = fill::measure(quick, &dir);
    let (ipv6, ipv6_md) = ipv6::measure(quick);
    let (before_after, before_after_md) = before_after::measure(quick);
    let report = serde_json::json!({
        "calls_per_measurement": calls,
        "rounds": ROUNDS,
        "floor_ns": {"median": f.median, "low": f.low, "high": f.high},
        "parse_only_ns": {"median": p.median, "low": p.low, "high": p.high},
        "configs": json_configs,
        "working_set": working_set,
        "new_flow_by_fill": by_fill,
        "ipv6": ipv6,
        "ipv4_before_after": before_after,
    });
    let md = format!("{header}{md}\n{ws_md}\n{fill_md}\n{ipv6_md}\n{before_after_md}");
    write_report(&dir, report, &md);
    print!("{md}");
    println!(
        "(took {:.1} s; wrote target/bench/packet.json and packet.md)",
        started.elapsed().as_secs_f64()
    );
}

/// Writes the run's JSON and Markdown into `dir`, stamped with the run.
fn write_report(dir: &std::path::Path, report: serde_json::Value, md: &str) {
    std::fs::write(
        dir.join("packet.json"),
        serde_json::to_string_pretty(&lb_tests::bench_run::stamped(report)).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("packet.md"), lb_tests::bench_run::stamped_text(md)).unwrap();
}
