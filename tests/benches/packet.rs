//! Per-packet cost of the XDP program, measured with `BPF_PROG_TEST_RUN`.
//!
//! One call per packet (`repeat = 1`, a fresh copy of the frame each call):
//! with `repeat > 1` the kernel would rerun the program on the frame it has
//! already rewritten. Reports the median of the kernel's per-call durations
//! for each class, and the ratio to a bare `XDP_PASS` program measured in the
//! same run (the fixed per-call floor). Run with `cargo xtask bench`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_tests::packet::{Packet, TestDatapath, XDP_PASS};
use lb_userspace::{
    datapath::{XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend, ObjectName, Protocol},
    plan::Planner,
};

const CALLS: usize = 200_000;
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn median_ns(prog: &Xdp, frames: &mut dyn FnMut(usize) -> Vec<u8>) -> u64 {
    let mut out = vec![0u8; 512];
    let mut samples: Vec<u64> = (0..CALLS)
        .map(|i| {
            let frame = frames(i);
            let result = prog
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    repeat: 1,
                    ..TestRunOptions::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX)
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let started = Instant::now();
    let mut dp = TestDatapath::load("bench", Ipv4Addr::new(192, 168, 50, 11));
    let backends = (2..12)
        .map(|i| {
            (
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, i), 8080),
                BackendInfo {
                    local: true,
                    selected: true,
                },
            )
        })
        .collect();
    let desired: DesiredState = [(
        Frontend {
            addr: VIP,
            port: 80,
            proto: Protocol::Tcp,
        },
        DesiredFrontend {
            service: ObjectName {
                namespace: "default".into(),
                name: "bench".into(),
            },
            port_name: String::new(),
            backends,
            affinity_timeout: 0,
        },
    )]
    .into_iter()
    .collect();
    let mut planner = Planner::new(dp.slab_slots(), Duration::ZERO);
    let (plan, errors) = planner.plan(&desired, Instant::now());
    assert!(errors.is_empty());
    dp.datapath_mut().maps.apply(&plan.ops).unwrap();

    let lb: &Xdp = dp.program(XDP_PROGRAM).try_into().unwrap();
    let floor: &Xdp = dp.program(XDP_PASS_PROGRAM).try_into().unwrap();

    let non_service = Packet::tcp(CLIENT, 40000, Ipv4Addr::new(10, 0, 0, 1), 443)
        .ack()
        .build();
    let established = Packet::tcp(CLIENT, 40000, VIP, 80).ack().build();
    // Create the flow's conntrack entry once.
    let (verdict, _) = dp.run_xdp(&Packet::tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(verdict, XDP_PASS, "the flow's first packet is translated");

    let floor_ns = median_ns(floor, &mut |_| established.clone());
    let rows = [
        (
            "non-service (pass-through)",
            median_ns(lb, &mut |_| non_service.clone()),
        ),
        (
            "established TCP flow",
            median_ns(lb, &mut |_| established.clone()),
        ),
        (
            "new TCP flow (conntrack miss, Maglev, insert)",
            median_ns(lb, &mut |i| {
                let src = Ipv4Addr::from(0x0a80_0000 + u32::try_from(i).unwrap());
                Packet::tcp(src, 40000, VIP, 80).syn().build()
            }),
        ),
    ];
    println!("per-packet cost, median of {CALLS} calls each (repeat = 1)");
    println!("{:<48} {:>8} {:>10}", "class", "ns/pkt", "vs floor");
    println!(
        "{:<48} {:>8} {:>10}",
        "bare XDP_PASS (floor)", floor_ns, "1.00x"
    );
    for (class, ns) in rows {
        #[allow(clippy::cast_precision_loss)]
        let ratio = ns as f64 / floor_ns.max(1) as f64;
        println!("{class:<48} {ns:>8} {ratio:>9.2}x");
    }
    println!("(took {:.1} s)", started.elapsed().as_secs_f64());
}
