//! The per-flow state machine, driven by real packets through the real
//! programs (`BPF_PROG_TEST_RUN`): the state after each packet of a
//! handshake, a transfer and a close in both directions, with the exact bytes
//! out; half-close and a spoofed RST keep a flow (and its SNAT port) as long
//! as it exchanges data; idle flows expire after their state's timeout
//! (configured in seconds here). Needs root.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{
    conntrack::CtState, Event, Verdict, CT_F_REPLIED, CT_F_SNAT, CT_F_STREAM, IPPROTO_TCP,
    IPPROTO_UDP,
};
use lb_tests::{
    fixture::{frontend, program},
    packet::{flow_key, src_of, test_flows, Packet, TestDatapath, XDP_DROP, XDP_PASS},
};
use lb_userspace::{
    desired::Protocol,
    flows::{set_timeout, FlowSettings, PortRange},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

/// Test flow settings with these timeout overrides and SNAT pool.
fn flows(timeouts: &[&str], pool: PortRange) -> FlowSettings {
    let mut f = FlowSettings {
        snat_ports: pool,
        ..test_flows()
    };
    for t in timeouts {
        set_timeout(&mut f.timeouts, t).unwrap();
    }
    f
}

/// VIP:80/TCP and VIP:53/UDP to one backend, remote (SNAT) or local.
fn datapath(name: &str, flows: FlowSettings, remote: bool) -> TestDatapath {
    let mut dp = TestDatapath::load_with_flows(name, NODE, flows);
    let (backend, local) = if remote {
        (REMOTE, false)
    } else {
        (LOCAL, true)
    };
    program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(backend, 8080, local)]),
            frontend(VIP, 53, Protocol::Udp, &[(backend, 5353, local)]),
        ],
    );
    dp
}

/// The state and flags of the flow `client`:`port` -> VIP:80/TCP.
fn state_of(dp: &TestDatapath, client: Ipv4Addr, port: u16) -> (CtState, u16) {
    let ct = dp
        .conntrack(&flow_key(client, port, VIP, 80, IPPROTO_TCP))
        .expect("the flow is tracked");
    (CtState::from_u8(ct.state), ct.flags)
}

/// Sends a segment, of the client or of the backend, through the uplink
/// program; asserts it passes as `expected`.
fn passes_as(dp: &TestDatapath, seg: &Packet, expected: &Packet) {
    let (ret, out) = dp.run_xdp(&seg.build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, expected.build());
}

/// Opens CLIENT:`port` to VIP:80 with a SYN; returns its SNAT port.
fn open(dp: &TestDatapath, port: u16) -> u16 {
    let (ret, out) = dp.run_xdp(&Packet::tcp(CLIENT, port, VIP, 80).syn().build());
    assert_eq!(ret, XDP_PASS, "SYN from {port}");
    assert_eq!(src_of(&out).0, NODE);
    src_of(&out).1
}

#[test]
fn a_handshake_a_transfer_and_a_close_by_the_client_walk_the_states() {
    let dp = datapath("ct-client-close", test_flows(), true);
    let snat = open(&dp, 40000);
    assert!(
        test_flows().snat_ports.0.contains(&snat),
        "port {snat} from the pool"
    );
    assert_eq!(state_of(&dp, CLIENT, 40000), (CtState::SynSent, CT_F_SNAT));
    // The backend's SYN-ACK: replied, SYN_RECV (v3 marked this "closed by the backend").
    passes_as(
        &dp,
        &Packet::tcp(REMOTE, 8080, NODE, snat).synack(),
        &Packet::tcp(VIP, 80, CLIENT, 40000).synack(),
    );
    assert_eq!(
        state_of(&dp, CLIENT, 40000),
        (CtState::SynRecv, CT_F_SNAT | CT_F_REPLIED)
    );
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40000, VIP, 80).ack(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).ack(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40000).0, CtState::Established);
    passes_as(
        &dp,
        &Packet::tcp(REMOTE, 8080, NODE, snat).ack(),
        &Packet::tcp(VIP, 80, CLIENT, 40000).ack(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40000).0, CtState::Established);
    // The client closes first; the backend still sends, then closes.
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40000, VIP, 80).fin(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).fin(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40000).0, CtState::FinClient);
    passes_as(
        &dp,
        &Packet::tcp(REMOTE, 8080, NODE, snat).ack(),
        &Packet::tcp(VIP, 80, CLIENT, 40000).ack(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40000).0, CtState::FinClient);
    passes_as(
        &dp,
        &Packet::tcp(REMOTE, 8080, NODE, snat).fin(),
        &Packet::tcp(VIP, 80, CLIENT, 40000).fin(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40000).0, CtState::Closed);
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40000, VIP, 80).ack(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).ack(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40000).0, CtState::Closed);
    // The client reuses its port: the tuple reopens on the same SNAT port.
    assert_eq!(open(&dp, 40000), snat);
    assert_eq!(state_of(&dp, CLIENT, 40000), (CtState::SynSent, CT_F_SNAT));
}

#[test]
fn a_close_by_the_backend_ends_in_time_wait_and_rst_in_reset() {
    let dp = datapath("ct-backend-close", test_flows(), true);
    let snat = open(&dp, 40001);
    for (seg, out) in [
        (
            Packet::tcp(REMOTE, 8080, NODE, snat).synack(),
            Packet::tcp(VIP, 80, CLIENT, 40001).synack(),
        ),
        (
            Packet::tcp(REMOTE, 8080, NODE, snat).fin(),
            Packet::tcp(VIP, 80, CLIENT, 40001).fin(),
        ),
    ] {
        passes_as(&dp, &seg, &out);
    }
    // A SYN-ACK never closes; the first FIN of this flow is the backend's.
    assert_eq!(state_of(&dp, CLIENT, 40001).0, CtState::FinBackend);
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40001, VIP, 80).ack(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).ack(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40001).0, CtState::FinBackend);
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40001, VIP, 80).fin(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).fin(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40001).0, CtState::TimeWait);

    // An RST from either side: Reset.
    for (port, from_the_client) in [(40002, true), (40003, false)] {
        let snat = open(&dp, port);
        if from_the_client {
            passes_as(
                &dp,
                &Packet::tcp(CLIENT, port, VIP, 80).rst(),
                &Packet::tcp(NODE, snat, REMOTE, 8080).rst(),
            );
        } else {
            passes_as(
                &dp,
                &Packet::tcp(REMOTE, 8080, NODE, snat).rst(),
                &Packet::tcp(VIP, 80, CLIENT, port).rst(),
            );
        }
        assert_eq!(state_of(&dp, CLIENT, port).0, CtState::Reset);
    }
}

/// Keeps the flow CLIENT:`port` (SNAT port `snat`) exchanging data for
/// `for_how_long`, a segment each way every 300 ms; each must be translated
/// with the flow's own port.
fn keep_talking(dp: &TestDatapath, port: u16, snat: u16, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        passes_as(
            dp,
            &Packet::tcp(REMOTE, 8080, NODE, snat).ack(),
            &Packet::tcp(VIP, 80, CLIENT, port).ack(),
        );
        passes_as(
            dp,
            &Packet::tcp(CLIENT, port, VIP, 80).ack(),
            &Packet::tcp(NODE, snat, REMOTE, 8080).ack(),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether another client's SYN finds a pool port (the pool being one port).
fn port_free(dp: &TestDatapath, attempt: u16) -> bool {
    let (ret, _) = dp.run_xdp(&Packet::tcp(OTHER, 30_000 + attempt, VIP, 80).syn().build());
    ret == XDP_PASS
}

/// An established flow holding the one port of the pool, with every
/// closing hold at 2 s.
fn one_port_flow(name: &str) -> (TestDatapath, u16) {
    let dp = datapath(
        name,
        flows(
            &[
                "tcp-half-closed=2",
                "tcp-reset=2",
                "tcp-closed=2",
                "tcp-time-wait=2",
                "tcp-syn=2",
            ],
            PortRange(2000..=2000),
        ),
        true,
    );
    let snat = open(&dp, 40010);
    assert_eq!(snat, 2000);
    passes_as(
        &dp,
        &Packet::tcp(REMOTE, 8080, NODE, snat).synack(),
        &Packet::tcp(VIP, 80, CLIENT, 40010).synack(),
    );
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40010, VIP, 80).ack(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).ack(),
    );
    (dp, snat)
}

#[test]
fn half_close_keeps_its_port_while_the_backend_streams_past_every_hold() {
    let (dp, snat) = one_port_flow("ct-half-close");
    // shutdown(SHUT_WR) at the client: FIN; the backend streams on for 5 s,
    // more than twice the half-closed timeout.
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40010, VIP, 80).fin(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).fin(),
    );
    let until = Instant::now() + Duration::from_secs(5);
    let mut attempt = 0;
    while Instant::now() < until {
        passes_as(
            &dp,
            &Packet::tcp(REMOTE, 8080, NODE, snat).ack(),
            &Packet::tcp(VIP, 80, CLIENT, 40010).ack(),
        );
        attempt += 1;
        assert!(
            !port_free(&dp, attempt),
            "the streaming flow's port went to another client"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(state_of(&dp, CLIENT, 40010).0, CtState::FinClient);
    // Silent for longer than the hold: the port returns.
    std::thread::sleep(Duration::from_millis(3100));
    assert!(
        port_free(&dp, 999),
        "the idle half-closed flow's port returns"
    );
    assert_eq!(dp.event(Event::SnatReclaimed), 1);
}

#[test]
fn a_spoofed_rst_does_not_free_the_port_of_a_flow_that_goes_on() {
    let (dp, snat) = one_port_flow("ct-spoofed-rst");
    // Someone who knows the tuple sends an RST as the client.
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40010, VIP, 80).rst(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).rst(),
    );
    assert_eq!(state_of(&dp, CLIENT, 40010).0, CtState::Reset);
    // The endpoints ignored it (out of window) and go on talking for 4 s.
    keep_talking(&dp, 40010, snat, Duration::from_secs(4));
    assert!(
        !port_free(&dp, 1),
        "a live flow's port went to another client"
    );
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40010, VIP, 80).ack(),
        &Packet::tcp(NODE, snat, REMOTE, 8080).ack(),
    );
}

#[test]
fn idle_flows_expire_and_an_expired_flow_cannot_come_back_mid_stream() {
    let dp = datapath(
        "ct-idle",
        flows(&["tcp-established=2"], PortRange(2000..=2000)),
        true,
    );
    let snat = open(&dp, 40020);
    passes_as(
        &dp,
        &Packet::tcp(REMOTE, 8080, NODE, snat).synack(),
        &Packet::tcp(VIP, 80, CLIENT, 40020).synack(),
    );
    keep_talking(&dp, 40020, snat, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(3100));
    // Expired: its next segment cannot claim a port mid-stream.
    let (ret, _) = dp.run_xdp(&Packet::tcp(CLIENT, 40020, VIP, 80).ack().build());
    assert_eq!(ret, XDP_DROP);
    assert_eq!(dp.verdict(Verdict::Invalid), 1);
    // A new SYN (any client) takes the port over from the expired flow.
    assert_eq!(open(&dp, 40021), snat);
    assert_eq!(dp.event(Event::SnatReclaimed), 1);
}

#[test]
fn a_udp_flow_lives_by_its_idle_timeout_and_becomes_a_stream() {
    let dp = datapath(
        "ct-udp",
        flows(&["udp=2", "udp-stream=6"], PortRange(2000..=2001)),
        true,
    );
    let query = |port: u16| dp.run_xdp(&Packet::udp(CLIENT, port, VIP, 53).build());
    let (ret, out) = query(50000);
    assert_eq!(ret, XDP_PASS);
    let snat = src_of(&out).1;
    let key = flow_key(CLIENT, 50000, VIP, 53, IPPROTO_UDP);
    assert_eq!(dp.conntrack(&key).unwrap().state, CtState::Datagram as u8);
    // The answer marks it replied; traffic 2 s after its start makes it a stream.
    let (ret, out) = dp.run_xdp(&Packet::udp(REMOTE, 5353, NODE, snat).build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, Packet::udp(VIP, 53, CLIENT, 50000).build());
    assert_eq!(dp.conntrack(&key).unwrap().flags, CT_F_SNAT | CT_F_REPLIED);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(query(50000).0, XDP_PASS);
    }
    let stream = dp.conntrack(&key).unwrap();
    assert_ne!(
        stream.flags & CT_F_STREAM,
        0,
        "a replied flow active after 2 s is a stream"
    );
    // Idle 3 s: past the datagram timeout, within the stream's: still ours,
    // the same entry (an expired one would be replaced by a new datagram
    // flow, which may well get the same port).
    std::thread::sleep(Duration::from_secs(3));
    let (ret, out) = query(50000);
    assert_eq!((ret, src_of(&out).1), (XDP_PASS, snat));
    let ct = dp.conntrack(&key).unwrap();
    assert_eq!(
        (ct.created_ns, ct.flags & CT_F_STREAM),
        (stream.created_ns, CT_F_STREAM),
        "the stream's own entry carried the datagram"
    );
    // A one-shot datagram flow (unanswered) is gone after 2 s idle.
    let (ret, out) = query(50001);
    assert_eq!(ret, XDP_PASS);
    let other = src_of(&out).1;
    std::thread::sleep(Duration::from_millis(3100));
    let snapshot = dp.snapshot();
    let life = snapshot.life(
        &flow_key(CLIENT, 50001, VIP, 53, IPPROTO_UDP),
        &dp.conntrack(&flow_key(CLIENT, 50001, VIP, 53, IPPROTO_UDP))
            .unwrap(),
    );
    assert!(life.expired, "the one-shot flow expired: {life:?}");
    // Its port goes to the next new flow.
    let (ret, out) = query(50002);
    assert_eq!((ret, src_of(&out).1), (XDP_PASS, other));
}

#[test]
fn a_flow_to_a_local_backend_is_picked_up_mid_stream_but_lives_as_a_syn_until_answered() {
    let dp = datapath(
        "ct-pickup",
        flows(&["tcp-syn=2"], PortRange(2000..=2000)),
        false,
    );
    // No SYN seen (an entry lost): a local backend sees the client's
    // address, so no port is needed and the flow is picked up.
    passes_as(
        &dp,
        &Packet::tcp(CLIENT, 40030, VIP, 80).ack(),
        &Packet::tcp(CLIENT, 40030, LOCAL, 8080).ack(),
    );
    let (state, flags) = state_of(&dp, CLIENT, 40030);
    assert_eq!((state, flags & CT_F_REPLIED), (CtState::Established, 0));
    let snapshot = dp.snapshot();
    let key = flow_key(CLIENT, 40030, VIP, 80, IPPROTO_TCP);
    let life = snapshot.life(&key, &dp.conntrack(&key).unwrap());
    assert_eq!(
        life.timeout_s, 2,
        "an unanswered pickup lives as long as a SYN"
    );
    // An RST to nothing is not a flow.
    let (ret, _) = dp.run_xdp(&Packet::tcp(CLIENT, 40031, VIP, 80).rst().build());
    assert_eq!(ret, XDP_DROP);
    assert!(dp
        .conntrack(&flow_key(CLIENT, 40031, VIP, 80, IPPROTO_TCP))
        .is_none());
}
