//! SNAT ports come back: a port held by a flow that closed (RST, or FIN
//! first from the client) goes to a new flow after its hold, while ports of
//! open flows and of flows whose backend closed first (`TIME_WAIT` there) are
//! never handed out twice. Real programs, `BPF_PROG_TEST_RUN`. Needs root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_common::{SNAT_HOLD_AFTER_CLIENT_FIN_S, SNAT_HOLD_AFTER_RST_S};
use lb_tests::packet::{src_of, Packet, TestDatapath, XDP_PASS};
use lb_userspace::{
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend, ObjectName, Protocol},
    plan::Planner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

/// A data path whose only service has one backend on another node: every
/// flow from the uplink is translated to a node port.
fn remote_only() -> TestDatapath {
    let mut dp = TestDatapath::load("snat", NODE);
    let desired: DesiredState = BTreeMap::from([(
        Frontend {
            addr: VIP,
            port: 80,
            proto: Protocol::Tcp,
        },
        DesiredFrontend {
            service: ObjectName {
                namespace: "default".into(),
                name: "web".into(),
            },
            port_name: "http".into(),
            backends: BTreeMap::from([(
                SocketAddrV4::new(REMOTE, 8080),
                BackendInfo {
                    local: false,
                    selected: true,
                },
            )]),
            affinity_timeout: 0,
        },
    )]);
    let mut planner = Planner::new(dp.slab_slots(), Duration::ZERO);
    let (plan, errors) = planner.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    dp.datapath_mut().maps.apply(&plan.ops).unwrap();
    dp
}

/// Client number `i`: its own address and port.
fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i / 1000),
        20_000 + u16::try_from(i % 1000).unwrap(),
    )
}

/// Opens flow `i`; its SNAT port, or `None` when no port was free.
fn open(dp: &TestDatapath, i: u32) -> Option<u16> {
    let (addr, port) = client(i);
    let (ret, out) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).syn().build());
    (ret == XDP_PASS).then(|| {
        assert_eq!(src_of(&out).0, NODE, "translated to the node");
        src_of(&out).1
    })
}

/// Opens flows from `*next` on until 300 in a row find no port: the range is full.
fn fill(dp: &TestDatapath, next: &mut u32, open_flows: &mut BTreeMap<u32, u16>) {
    let mut misses = 0;
    while misses < 300 {
        match open(dp, *next) {
            Some(port) => {
                misses = 0;
                open_flows.insert(*next, port);
            }
            None => misses += 1,
        }
        *next += 1;
    }
}

fn assert_unique(open_flows: &BTreeMap<u32, u16>) {
    let ports: BTreeSet<u16> = open_flows.values().copied().collect();
    assert_eq!(
        ports.len(),
        open_flows.len(),
        "a port is held by two live flows"
    );
}

#[test]
fn ports_of_closed_flows_are_reused_and_held_ones_never() {
    let dp = remote_only();
    let mut next = 0;
    let mut live = BTreeMap::new();
    fill(&dp, &mut next, &mut live);
    assert!(live.len() > 4_000, "the range holds {} flows", live.len());
    assert_unique(&live);

    // Close some flows: RST from the client, FIN from the client, FIN from the backend.
    let ids: Vec<u32> = live.keys().copied().take(300).collect();
    let (rst, client_fin, backend_fin) = (&ids[..100], &ids[100..200], &ids[200..300]);
    for &i in rst.iter().chain(client_fin) {
        let (addr, port) = client(i);
        let p = Packet::tcp(addr, port, VIP, 80);
        let frame = if rst.contains(&i) { p.rst() } else { p.fin() };
        assert_eq!(dp.run_xdp(&frame.build()).0, XDP_PASS);
    }
    for &i in backend_fin {
        let reply = Packet::tcp(REMOTE, 8080, NODE, live[&i]).fin().build();
        let (ret, out) = dp.run_xdp(&reply);
        assert_eq!(ret, XDP_PASS);
        assert_eq!(src_of(&out), (VIP, 80), "the backend's FIN is reversed");
    }
    let released: BTreeSet<u16> = rst.iter().chain(client_fin).map(|i| live[i]).collect();
    let held: BTreeSet<u16> = backend_fin.iter().map(|i| live[i]).collect();
    // Before the hold ends nothing is reused.
    assert_eq!(open(&dp, next), None, "every port is still held");
    next += 1;
    std::thread::sleep(Duration::from_secs(
        u64::from(SNAT_HOLD_AFTER_RST_S.max(SNAT_HOLD_AFTER_CLIENT_FIN_S)) + 1,
    ));
    for i in rst.iter().chain(client_fin) {
        live.remove(i);
    }
    let mut reused = BTreeSet::new();
    for _ in 0..20_000 {
        if let Some(port) = open(&dp, next) {
            assert!(
                released.contains(&port),
                "port {port} was not released (held by the backend's TIME_WAIT: {})",
                held.contains(&port)
            );
            live.insert(next, port);
            reused.insert(port);
        }
        next += 1;
        if reused.len() == released.len() {
            break;
        }
    }
    assert!(
        reused.len() * 10 >= released.len() * 9,
        "{} of {} released ports were reused",
        reused.len(),
        released.len()
    );
    assert_unique(&live);
    // A late packet of a flow whose port went to another flow gets another port or none.
    let (addr, port) = client(rst[0]);
    let (ret, out) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).ack().build());
    if ret == XDP_PASS {
        let got = src_of(&out).1;
        assert!(
            !live.values().any(|p| *p == got),
            "the late packet must not take a live flow's port {got}"
        );
    }
    // An open flow keeps its port.
    let (&keep, &kept_port) = live.iter().next().unwrap();
    let (addr, port) = client(keep);
    let (_, out) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).ack().build());
    assert_eq!(src_of(&out), (NODE, kept_port));
}
