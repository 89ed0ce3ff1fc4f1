//! IPv6 beside IPv4, one hot flow per class (issue 16's figures): a data
//! path with one IPv4 and one IPv6 frontend of 10 local backends each,
//! both written by the agent's planner, and per round the medians of the
//! floor, both parse-only baselines, and an established flow, a new flow
//! and a packet for no Service in each family, all through `lb_xdp` (an
//! IPv6 frame pays the tail call to `lb_xdp6`). The ratios IPv6/IPv4 are
//! per round, so a drift of the machine cancels. Target: IPv6 established
//! within 1.3x of IPv4's.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV6},
    time::Instant,
};

use lb_tests::{
    fixture::program,
    packet::{Packet, TestDatapath, XDP_PASS},
    packet6::Packet6,
    stats::{figure, paired_ratio},
};
use lb_userspace::{
    datapath::{XDP_PARSE6_PROGRAM, XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::{
        BackendInfo, DesiredFrontend, DesiredState6, FrontendV6, Listen6, ObjectName, Protocol,
        TrafficPolicy,
    },
};

use super::{call, service, vip, CLIENT, NODE, ROUNDS};

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1);
const BACKENDS: u16 = 10;

/// The measures, in the order of a round.
const MEASURES: [&str; 9] = [
    "floor (XDP_PASS)",
    "parse-only IPv4",
    "parse-only IPv6",
    "IPv4 established",
    "IPv6 established",
    "IPv4 new flow",
    "IPv6 new flow",
    "IPv4 non-service",
    "IPv6 non-service",
];

/// The program each of [`MEASURES`] runs.
const PROGRAMS: [&str; 9] = [
    XDP_PASS_PROGRAM,
    XDP_PARSE_PROGRAM,
    XDP_PARSE6_PROGRAM,
    XDP_PROGRAM,
    XDP_PROGRAM,
    XDP_PROGRAM,
    XDP_PROGRAM,
    XDP_PROGRAM,
    XDP_PROGRAM,
];

/// The frames of the flows set up.
struct Frames {
    est4: Vec<u8>,
    est6: Vec<u8>,
    other4: Vec<u8>,
    other6: Vec<u8>,
}

impl Frames {
    /// The frame of measure `m` for its `n`-th call (a new flow's source
    /// differs at every call).
    fn of(&self, m: usize, n: u32) -> Vec<u8> {
        match m {
            0 | 1 | 3 => self.est4.clone(),
            2 | 4 => self.est6.clone(),
            5 => Packet::tcp(Ipv4Addr::from(0x0b00_0000 + n), 40000, vip(0), 80)
                .syn()
                .build(),
            6 => {
                let src = Ipv6Addr::from(0x2001_0db8_0b00_u128 << 80 | u128::from(n));
                Packet6::tcp(src, 40000, VIP6, 80).syn().build()
            }
            7 => self.other4.clone(),
            _ => self.other6.clone(),
        }
    }
}

/// The IPv6 frontend `VIP6`:80 of `BACKENDS` local backends.
fn state6() -> DesiredState6 {
    let backends = (1..=BACKENDS)
        .map(|n| {
            let ip = Ipv6Addr::new(0xfd00, 0x240, 0, 0, 0, 0, 0, n);
            let info = BackendInfo {
                local: true,
                for_cluster: true,
                for_local: true,
            };
            (SocketAddrV6::new(ip, 8080, 0, 0), info)
        })
        .collect();
    let want = DesiredFrontend {
        service: ObjectName {
            namespace: "default".into(),
            name: "svc6".into(),
        },
        port_name: String::new(),
        backends,
        policy: TrafficPolicy::Cluster,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        has_endpoints: true,
        source_ranges: Vec::new(),
        node_port_addrs: Vec::new(),
    };
    let frontend = FrontendV6 {
        listen: Listen6::Addr(VIP6, 80),
        proto: Protocol::Tcp,
    };
    BTreeMap::from([(frontend, want)])
}

/// A data path with both frontends written and a flow of each family
/// established; the frames to replay.
fn load() -> (TestDatapath, Frames) {
    let mut dp = TestDatapath::load_with("b6", NODE, 1 << 20).with_ipv6();
    let mut planner = program(&mut dp, &[service(vip(0), 80, Protocol::Tcp, 10, 0, true)]);
    let (plan, errors) = planner.plan6(&state6(), Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    dp.datapath_mut()
        .maps
        .apply(&plan.ops)
        .expect("writing the IPv6 frontend");
    let est4 = Packet::tcp(CLIENT, 40000, vip(0), 80);
    assert_eq!(dp.run_xdp(&est4.clone().syn().build()).0, XDP_PASS);
    let est4 = est4.ack().build();
    let est6 = Packet6::tcp(CLIENT6, 40000, VIP6, 80);
    let (ret, out) = dp.run_xdp(&est6.clone().syn().build());
    assert_eq!(ret, XDP_PASS);
    assert_ne!(
        lb_tests::packet6::dst6_of(&out).0,
        VIP6,
        "IPv6 is translated"
    );
    let est6 = est6.ack().build();
    let other4 = Packet::tcp(CLIENT, 40000, Ipv4Addr::new(10, 0, 0, 1), 443)
        .ack()
        .build();
    let other6 = Packet6::tcp(
        CLIENT6,
        40000,
        Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
        443,
    )
    .ack()
    .build();
    let frames = Frames {
        est4,
        est6,
        other4,
        other6,
    };
    (dp, frames)
}

/// Measures the two families side by side; the JSON and Markdown of it.
/// The data path is loaded afresh for every round: where the kernel places
/// a program's machine code moves its cost by several percent, so one load
/// would judge one placement (see `before_after`).
pub fn measure(quick: bool) -> (serde_json::Value, String) {
    let calls = if quick { 10_000 } else { 50_000 } / ROUNDS;
    let mut out = vec![0u8; 512];
    let mut next = 0u32;
    let mut rounds: Vec<Vec<u64>> = vec![Vec::new(); MEASURES.len()];
    let mut previous: Option<TestDatapath> = None;
    for _ in 0..ROUNDS {
        // Loaded while the previous round's is still held: new places.
        let (dp, frames) = load();
        drop(previous.take());
        for (m, samples) in rounds.iter_mut().enumerate() {
            let program: &aya::programs::Xdp = dp.program(PROGRAMS[m]).try_into().unwrap();
            let mut ns: Vec<u64> = (0..calls)
                .map(|_| {
                    next += 1;
                    call(program, &frames.of(m, next), &mut out)
                })
                .collect();
            ns.sort_unstable();
            samples.push(ns[ns.len() / 2]);
        }
        previous = Some(dp);
    }
    report(&rounds, calls)
}

/// The Markdown table and JSON of the rounds' medians.
fn report(rounds: &[Vec<u64>], calls: usize) -> (serde_json::Value, String) {
    let mut md = format!(
        "IPv6 beside IPv4 (one hot flow per class, 10 local backends each, through `lb_xdp`; \
         {calls} calls per measurement in {ROUNDS} rounds, the data path loaded afresh for each; \
         ratios are medians of per-round ratios, lowest-highest round in brackets):\n\n| measure | ns/packet (median) | spread |\n|---|---:|---|\n"
    );
    let mut json = serde_json::Map::new();
    for (name, ns) in MEASURES.iter().zip(rounds) {
        let fig = figure(ns);
        let _ = writeln!(md, "| {name} | {} | {}-{} |", fig.median, fig.low, fig.high);
        json.insert(
            (*name).to_string(),
            serde_json::json!({"median_ns": fig.median, "low_ns": fig.low, "high_ns": fig.high, "rounds_ns": ns}),
        );
    }
    let _ = writeln!(md, "\n| IPv6 / IPv4 | ratio (rounds) |\n|---|---:|");
    let mut ratios = serde_json::Map::new();
    for (name, six, four) in [
        ("established (target 1.3x)", 4, 3),
        ("new flow", 6, 5),
        ("non-service (pass-through)", 8, 7),
        ("parse-only", 2, 1),
    ] {
        let (r, low, high) = paired_ratio(&rounds[six], &rounds[four]).expect("rounds");
        let _ = writeln!(md, "| {name} | {r:.2}x ({low:.2}-{high:.2}) |");
        ratios.insert(
            name.to_string(),
            serde_json::json!({"ratio": r, "low": low, "high": high}),
        );
    }
    (
        serde_json::json!({"calls_per_measurement": calls, "rounds": ROUNDS, "measures": json, "ipv6_over_ipv4": ratios}),
        md,
    )
}
