//! The SNAT port pool under pressure, through the real programs
//! (`BPF_PROG_TEST_RUN`) with small configured pools: a full pool gives way
//! only to flows that are not assured; a segment without SYN never claims a
//! port; ports return after their flow's timeout and not before; UDP ports
//! return after the idle timeout; a reply to a pool port is a reply even
//! where the port is also a frontend's; exhaustion is counted per backend.
//! Needs root.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use lb_common::{BackendKey, Event, Verdict, IPPROTO_TCP};
use lb_tests::{
    fixture::{frontend, program},
    packet::{src_of, test_flows, Packet, TestDatapath, XDP_DROP, XDP_PASS},
};
use lb_userspace::{
    conntrack::gc::Collector,
    desired::Protocol,
    flows::{set_timeout, FlowSettings, PortRange},
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

/// Client number `i`: its own address and port.
fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i / 1000),
        20_000 + u16::try_from(i % 1000).unwrap(),
    )
}

/// A data path whose VIP:80/TCP and VIP:53/UDP go to one remote backend,
/// with `pool` and these timeouts.
fn remote_only(name: &str, pool: PortRange, timeouts: &[&str]) -> TestDatapath {
    let mut flows = FlowSettings {
        snat_ports: pool,
        ..test_flows()
    };
    for t in timeouts {
        set_timeout(&mut flows.timeouts, t).unwrap();
    }
    let mut dp = TestDatapath::load_with_flows(name, NODE, flows);
    program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)]),
            frontend(VIP, 53, Protocol::Udp, &[(REMOTE, 5353, false)]),
        ],
    );
    dp
}

/// Sends client `i`'s SYN; its SNAT port, or `None` when it was dropped.
fn syn(dp: &TestDatapath, i: u32) -> Option<u16> {
    let (addr, port) = client(i);
    let (ret, out) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).syn().build());
    (ret == XDP_PASS).then(|| {
        assert_eq!(src_of(&out).0, NODE);
        src_of(&out).1
    })
}

/// Completes client `i`'s handshake on SNAT port `snat` (SYN-ACK, ACK): assured.
fn establish(dp: &TestDatapath, i: u32, snat: u16) {
    let (addr, port) = client(i);
    let (ret, out) = dp.run_xdp(&Packet::tcp(REMOTE, 8080, NODE, snat).synack().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, Packet::tcp(VIP, 80, addr, port).synack().build());
    let (ret, out) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).ack().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, Packet::tcp(NODE, snat, REMOTE, 8080).ack().build());
}

/// Client `i`'s data segment: its SNAT port if translated.
fn data(dp: &TestDatapath, i: u32) -> Option<u16> {
    let (addr, port) = client(i);
    let (ret, out) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).ack().build());
    (ret == XDP_PASS).then(|| src_of(&out).1)
}

fn exhausted_for(dp: &TestDatapath, backend: Ipv4Addr, port: u16) -> u64 {
    let counts = Collector::new(dp.pin_dir()).exhaustion().unwrap();
    let key = BackendKey {
        addr: u32::from_ne_bytes(backend.octets()),
        port: port.to_be(),
        proto: IPPROTO_TCP,
        pad: 0,
    };
    let label = lb_userspace::conntrack::backend_label(&key);
    counts.get(&label).copied().unwrap_or(0)
}

#[test]
fn a_full_pool_gives_way_only_to_flows_that_are_not_assured() {
    let dp = remote_only("snat-early-drop", PortRange(2000..=2015), &[]);
    // 8 established flows and 8 unanswered SYNs (a spoofed flood) fill 16 ports.
    let mut assured = BTreeMap::new();
    for i in 0..8 {
        let port = syn(&dp, i).expect("a free port");
        establish(&dp, i, port);
        assured.insert(i, port);
    }
    let mut half_open = BTreeMap::new();
    for i in 100..108 {
        half_open.insert(i, syn(&dp, i).expect("a free port"));
    }
    let mut all: Vec<u16> = assured
        .values()
        .chain(half_open.values())
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 16, "16 flows hold 16 distinct ports");
    // Within the first second nothing gives way yet (a handshake in flight).
    assert_eq!(syn(&dp, 200), None);
    assert_eq!(dp.verdict(Verdict::Error), 1);
    assert_eq!(exhausted_for(&dp, REMOTE, 8080), 1);
    std::thread::sleep(Duration::from_millis(2100));
    // New flows take the unanswered SYNs' ports, never an assured flow's.
    let taken: Vec<u16> = (300..308)
        .map(|i| syn(&dp, i).expect("an early drop"))
        .collect();
    for port in &taken {
        assert!(
            half_open.values().any(|p| p == port),
            "port {port} was an assured flow's"
        );
    }
    assert_eq!(dp.event(Event::SnatEarlyDrop), 8);
    // Now every port is held by a live flow; 8 of them assured, 8 young.
    assert_eq!(syn(&dp, 400), None);
    assert_eq!(exhausted_for(&dp, REMOTE, 8080), 2);
    for (&i, &port) in &assured {
        assert_eq!(data(&dp, i), Some(port), "assured flow {i} keeps its port");
    }
    // The flows that gave way are gone: their next segment is invalid.
    let (&gone, _) = half_open.iter().next().unwrap();
    assert_eq!(data(&dp, gone), None);
    assert!(dp.verdict(Verdict::Invalid) >= 1);
}

#[test]
fn a_segment_without_syn_never_claims_a_port() {
    let dp = remote_only("snat-no-syn", PortRange(2000..=2015), &[]);
    for i in 0..50 {
        assert_eq!(data(&dp, i), None, "a mid-stream segment from nowhere");
        let (addr, port) = client(i);
        let (ret, _) = dp.run_xdp(&Packet::tcp(addr, port, VIP, 80).synack().build());
        assert_eq!(ret, XDP_DROP, "a SYN-ACK from a client opens nothing");
    }
    assert_eq!(dp.verdict(Verdict::Invalid), 100);
    assert!(dp.snapshot().replies.is_empty(), "no port was claimed");
    assert!(dp.snapshot().flows.is_empty());
    assert_eq!(dp.event(Event::RevNatCreated), 0);
}

#[test]
fn ports_return_after_their_flows_timeout_and_not_before() {
    let dp = remote_only(
        "snat-return",
        PortRange(2000..=2003),
        &["tcp-closed=2", "tcp-reset=2", "tcp-time-wait=5"],
    );
    let ports: Vec<u16> = (0..4).map(|i| syn(&dp, i).expect("a free port")).collect();
    for (i, &port) in (0..).zip(&ports) {
        establish(&dp, i, port);
    }
    let fin = |i: u32, from_client: bool| {
        let (addr, cport) = client(i);
        let p = ports[i as usize];
        let seg = if from_client {
            Packet::tcp(addr, cport, VIP, 80).fin()
        } else {
            Packet::tcp(REMOTE, 8080, NODE, p).fin()
        };
        assert_eq!(dp.run_xdp(&seg.build()).0, XDP_PASS);
    };
    // 0: client first (the backend closes passively); 1: backend first (its
    // TIME_WAIT); 2: RST; 3: stays open.
    fin(0, true);
    fin(0, false);
    fin(1, false);
    fin(1, true);
    let (addr, cport) = client(2);
    assert_eq!(
        dp.run_xdp(&Packet::tcp(addr, cport, VIP, 80).rst().build())
            .0,
        XDP_PASS
    );
    assert_eq!(syn(&dp, 10), None, "nothing returns at once");
    std::thread::sleep(Duration::from_millis(3100));
    // Closed and reset flows give their ports back; TIME_WAIT holds on.
    let mut back = Vec::new();
    for i in 11..13 {
        let port = syn(&dp, i).expect("a returned port");
        // Assured: these never give way to the SYNs below.
        establish(&dp, i, port);
        back.push(port);
    }
    back.sort_unstable();
    let mut expected = vec![ports[0], ports[2]];
    expected.sort_unstable();
    assert_eq!(back, expected);
    assert_eq!(syn(&dp, 13), None, "the backend's TIME_WAIT holds its port");
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(syn(&dp, 14), Some(ports[1]), "TIME_WAIT is over");
    establish(&dp, 14, ports[1]);
    assert_eq!(syn(&dp, 15), None);
    assert_eq!(data(&dp, 3), Some(ports[3]), "the open flow keeps its port");
}

#[test]
fn udp_ports_return_after_the_idle_timeout() {
    let dp = remote_only("snat-udp", PortRange(2000..=2001), &["udp=2"]);
    let query = |i: u32| {
        let (addr, port) = client(i);
        let (ret, out) = dp.run_xdp(&Packet::udp(addr, port, VIP, 53).build());
        (ret == XDP_PASS).then(|| src_of(&out).1)
    };
    let first: Vec<u16> = (0..2).map(|i| query(i).expect("a free port")).collect();
    // Answered (a DNS exchange), then the pool is full for a second.
    for (i, &port) in (0..).zip(&first) {
        let (addr, cport) = client(i);
        let (_, out) = dp.run_xdp(&Packet::udp(REMOTE, 5353, NODE, port).build());
        assert_eq!(out, Packet::udp(VIP, 53, addr, cport).build());
    }
    assert_eq!(query(10), None);
    std::thread::sleep(Duration::from_millis(3100));
    let mut again: Vec<u16> = (11..13)
        .map(|i| query(i).expect("a returned port"))
        .collect();
    again.sort_unstable();
    let mut first = first;
    first.sort_unstable();
    assert_eq!(again, first);
}

#[test]
fn a_reply_to_a_pool_port_that_is_also_a_frontend_is_a_reply() {
    // One pool port, 2000, which is also a frontend on the node address (a
    // NodePort range that overlaps the pool: the agent refuses that, this
    // shows the data path would not be fooled either).
    let mut dp = TestDatapath::load_with_flows(
        "snat-nodeport",
        NODE,
        FlowSettings {
            snat_ports: PortRange(2000..=2000),
            ..test_flows()
        },
    );
    program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)]),
            frontend(NODE, 2000, Protocol::Tcp, &[(LOCAL, 9090, true)]),
        ],
    );
    assert_eq!(syn(&dp, 0), Some(2000));
    let (addr, port) = client(0);
    let (ret, out) = dp.run_xdp(&Packet::tcp(REMOTE, 8080, NODE, 2000).synack().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, Packet::tcp(VIP, 80, addr, port).synack().build());
    // A client of the node port is still served.
    let (ret, out) = dp.run_xdp(&Packet::tcp(addr, port + 1, NODE, 2000).syn().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, Packet::tcp(addr, port + 1, LOCAL, 9090).syn().build());
}
