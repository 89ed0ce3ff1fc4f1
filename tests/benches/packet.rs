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
//! `LB_BENCH_QUICK=1` (`cargo xtask bench --quick`) takes fewer samples.
//! Writes `target/bench/packet.json` and `target/bench/packet.md`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_tests::{
    packet::{Packet, TestDatapath, XDP_PASS},
    stats::{figure, median, ratio, Figure},
};
use lb_userspace::{
    datapath::{XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend, ObjectName, Protocol},
    plan::Planner,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const ROUNDS: usize = 5;

/// The `i`-th service's virtual IP.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000 + i + 1)
}

fn frontend(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    backends: u32,
    first: u32,
    local: bool,
) -> (Frontend, DesiredFrontend) {
    (
        Frontend { addr, port, proto },
        DesiredFrontend {
            service: ObjectName {
                namespace: "bench".into(),
                name: format!("{addr}"),
            },
            port_name: String::new(),
            backends: (0..backends)
                .map(|b| {
                    let n = first + b;
                    (
                        SocketAddrV4::new(Ipv4Addr::from(0x0af0_0000 + n), 8080),
                        BackendInfo {
                            local,
                            selected: true,
                        },
                    )
                })
                .collect(),
            affinity_timeout: 0,
        },
    )
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
    let mut desired: DesiredState = (0..services)
        .map(|i| frontend(vip(i), 80, Protocol::Tcp, backends, i * backends, true))
        .collect();
    let (f, d) = frontend(vip(0), 53, Protocol::Udp, backends, 0, true);
    desired.insert(f, d);
    let (f, d) = frontend(vip(0), 81, Protocol::Tcp, 1, 0x00f0_0000, false);
    desired.insert(f, d);
    let mut planner = Planner::new(dp.slab_slots(), Duration::ZERO);
    let (plan, errors) = planner.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    dp.datapath_mut().maps.apply(&plan.ops).unwrap();
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

fn measure(dp: &TestDatapath, calls: usize, new_flow_base: &mut u32) -> Vec<Figure> {
    let lb: &Xdp = dp.program(XDP_PROGRAM).try_into().unwrap();
    // Flows set up once: an established TCP flow, a UDP flow, a SNATed flow for replies.
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

    let mut out = vec![0u8; 512];
    let mut rounds: Vec<Vec<u64>> = vec![Vec::new(); CLASSES.len()];
    for _ in 0..ROUNDS {
        for (class, round) in rounds.iter_mut().enumerate() {
            let mut samples = Vec::with_capacity(calls / ROUNDS);
            for _ in 0..calls / ROUNDS {
                let frame = match class {
                    0 => non_service.clone(),
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
                    2 => established.clone(),
                    3 => udp.clone(),
                    _ => reply.clone(),
                };
                samples.push(call(lb, &frame, &mut out));
            }
            round.push(median(samples));
        }
    }
    rounds.iter().map(|r| figure(r)).collect()
}

fn baseline(dp: &TestDatapath, name: &str, calls: usize) -> Figure {
    let prog: &Xdp = dp.program(name).try_into().unwrap();
    let frame = Packet::tcp(CLIENT, 40000, vip(0), 80).ack().build();
    let mut out = vec![0u8; 512];
    let rounds: Vec<u64> = (0..ROUNDS)
        .map(|_| {
            median(
                (0..calls / ROUNDS)
                    .map(|_| call(prog, &frame, &mut out))
                    .collect(),
            )
        })
        .collect();
    figure(&rounds)
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
    let mut json_configs = Vec::new();
    let mut md = String::new();
    let mut new_flow_base = 0;
    let mut floor = None;
    let mut parse = None;
    let _ = writeln!(md, "| services | backends/service | class | ns/packet (median) | spread (round medians) | vs parse-only | above floor |");
    let _ = writeln!(md, "|---:|---:|---|---:|---|---:|---:|");
    for (services, backends) in configs {
        let dp = datapath(services, backends);
        let f = *floor.get_or_insert_with(|| baseline(&dp, XDP_PASS_PROGRAM, calls));
        let p = *parse.get_or_insert_with(|| baseline(&dp, XDP_PARSE_PROGRAM, calls));
        let figures = measure(&dp, calls, &mut new_flow_base);
        let mut classes = serde_json::Map::new();
        for (class, fig) in CLASSES.iter().zip(&figures) {
            let _ = writeln!(
                md,
                "| {services} | {backends} | {class} | {} | {}-{} | {:.2}x | {} ns |",
                fig.median,
                fig.low,
                fig.high,
                ratio(fig.median, p.median),
                fig.median.saturating_sub(f.median)
            );
            classes.insert(
                (*class).to_string(),
                serde_json::json!({"median_ns": fig.median, "low_ns": fig.low, "high_ns": fig.high,
                    "vs_parse_only": ratio(fig.median, p.median), "above_floor_ns": fig.median.saturating_sub(f.median)}),
            );
        }
        json_configs.push(serde_json::json!({"services": services, "backends_per_service": backends, "classes": classes}));
    }
    let (f, p) = (floor.unwrap(), parse.unwrap());
    let header = format!(
        "Per packet, XDP, `BPF_PROG_TEST_RUN` one call per packet, {calls} calls per measurement in {ROUNDS} interleaved rounds.\n\
         Baselines in the same run: bare XDP_PASS {} ns ({}-{}), parse-only {} ns ({}-{}).\n\n",
        f.median, f.low, f.high, p.median, p.low, p.high
    );
    let report = serde_json::json!({
        "calls_per_measurement": calls,
        "rounds": ROUNDS,
        "floor_ns": {"median": f.median, "low": f.low, "high": f.high},
        "parse_only_ns": {"median": p.median, "low": p.low, "high": p.high},
        "configs": json_configs,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("packet.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("packet.md"), format!("{header}{md}")).unwrap();
    print!("{header}{md}");
    println!(
        "(took {:.1} s; wrote target/bench/packet.json and packet.md)",
        started.elapsed().as_secs_f64()
    );
}
