//! IPv6 node ports through the real programs (`BPF_PROG_TEST_RUN`), the
//! twin of `tests/node_ports.rs`: one frontend per node port (address `::`
//! in `SERVICES6`), served on every IPv6 node-port address
//! (`NODEPORT_ADDRS6`) and nowhere else; replies carry the address the
//! client used; an external IP on a node address wins over the node port.
//! Traffic policies as far as no source is translated (SNAT is not here
//! yet): local backends from the uplink, any backend from a pod. The maps
//! are written by the real planner. Exact bytes. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{Family, Verdict};
use lb_tests::{
    fixture::{frontend6, program6},
    packet::{Hook, TestDatapath},
    packet6::{checksums6_valid, dst6_of, Packet6},
};
use lb_userspace::{
    desired::{FrontendV6, Listen6, Protocol, TrafficPolicy},
    plan::Planner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x11);
/// Another IPv6 address of the node (a second interface).
const SECOND: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x60, 0, 0, 0, 0, 0x11);
/// An address that is not the node's.
const ELSEWHERE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x60, 0, 0, 0, 0, 0x99);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
/// A pod of this node that is a client (the pod hook).
const POD_CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 9);
const NODE_PORT: u16 = 30080;
/// The node port's endpoint (on this node), and an external IP's.
const BACKEND: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
const EXTERNAL_BACKEND: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 3);
/// An endpoint on another node.
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);

fn node_port() -> Listen6 {
    Listen6::NodePort(NODE_PORT)
}

/// A data path with the TCP node port to BACKEND on `addrs`, and (with
/// `external`) an external IP equal to SECOND on the same port.
fn datapath(name: &str, addrs: &[Ipv6Addr], external: bool) -> (TestDatapath, Planner) {
    let mut dp = TestDatapath::load(name, NODE).with_ipv6();
    let mut planner = Planner::new(dp.slab_slots(), std::time::Duration::ZERO);
    apply(&mut dp, &mut planner, addrs, external);
    (dp, planner)
}

/// Plans the node port (and the external IP) on `addrs` and writes them.
fn apply(dp: &mut TestDatapath, planner: &mut Planner, addrs: &[Ipv6Addr], external: bool) {
    let mut state = vec![frontend6(
        node_port(),
        Protocol::Tcp,
        &[(BACKEND, 8080, true)],
    )];
    if external {
        let (fe, mut want) = frontend6(
            Listen6::Addr(SECOND, NODE_PORT),
            Protocol::Tcp,
            &[(EXTERNAL_BACKEND, 8080, true)],
        );
        want.service.name = "external".into();
        state.push((fe, want));
    }
    program6(dp, planner, addrs, &state);
}

/// A SYN from `client` to `addr` at the node port.
fn syn(client: Ipv6Addr, sport: u16, addr: Ipv6Addr) -> Vec<u8> {
    Packet6::tcp(client, sport, addr, NODE_PORT).syn().build()
}

#[test]
fn a_node_port_is_served_on_every_node_port_address_and_nowhere_else() {
    let (mut dp, mut planner) = datapath("node-ports6", &[NODE6, SECOND], false);
    for (k, addr) in [NODE6, SECOND].into_iter().enumerate() {
        let sport = 40_000 + u16::try_from(k).unwrap();
        let (ret, out) = dp.run_xdp(&syn(CLIENT, sport, addr));
        assert_eq!(
            (ret, out.as_slice()),
            (
                Hook::Xdp.passed(),
                Packet6::tcp(CLIENT, sport, BACKEND, 8080)
                    .syn()
                    .build()
                    .as_slice()
            ),
            "[{addr}]:{NODE_PORT}"
        );
        assert!(checksums6_valid(&out));
        // The reply leaves with the address the client used.
        let reply = Packet6::tcp(BACKEND, 8080, CLIENT, sport).synack().build();
        assert_eq!(
            dp.run_tc_egress(&reply).1,
            Packet6::tcp(addr, NODE_PORT, CLIENT, sport)
                .synack()
                .build()
        );
    }
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Translated), 2);
    let frame = syn(CLIENT, 40_010, ELSEWHERE);
    assert_eq!(
        dp.run_xdp(&frame),
        (Hook::Xdp.passed(), frame),
        "not a node-port address: not ours"
    );

    // The second address stops serving node ports: its packets pass untouched.
    apply(&mut dp, &mut planner, &[NODE6], false);
    let frame = syn(CLIENT, 40_020, SECOND);
    assert_eq!(dp.run_xdp(&frame), (Hook::Xdp.passed(), frame));
    assert_eq!(
        dp.run_xdp(&syn(CLIENT, 40_021, NODE6)).1,
        Packet6::tcp(CLIENT, 40_021, BACKEND, 8080).syn().build()
    );
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Translated), 3);
}

#[test]
fn every_ingress_hook_serves_the_node_port() {
    for hook in Hook::ALL {
        let (dp, _) = datapath("node-ports6-hooks", &[NODE6], false);
        let client = if hook == Hook::Pod {
            POD_CLIENT
        } else {
            CLIENT
        };
        let (ret, out) = hook.run(&dp, &syn(client, 40_100, NODE6));
        assert_eq!(ret, hook.passed(), "{hook:?}");
        assert_eq!(
            out,
            Packet6::tcp(client, 40_100, BACKEND, 8080).syn().build(),
            "{hook:?}"
        );
        // The flow goes on through the uplink's XDP as for any frontend.
        let ack = Packet6::tcp(client, 40_100, NODE6, NODE_PORT).ack().build();
        assert_eq!(
            dp.run_xdp(&ack).1,
            Packet6::tcp(client, 40_100, BACKEND, 8080).ack().build(),
            "{hook:?}"
        );
    }
}

#[test]
fn an_external_ip_on_a_node_address_wins_over_the_node_port() {
    let (dp, _) = datapath("node-ports6-exact", &[NODE6, SECOND], true);
    assert_eq!(
        dp.run_xdp(&syn(CLIENT, 41_000, SECOND)).1,
        Packet6::tcp(CLIENT, 41_000, EXTERNAL_BACKEND, 8080)
            .syn()
            .build(),
        "the exact frontend"
    );
    assert_eq!(
        dp.run_xdp(&syn(CLIENT, 41_001, NODE6)).1,
        Packet6::tcp(CLIENT, 41_001, BACKEND, 8080).syn().build(),
        "the node port elsewhere"
    );
}

/// A node port under `externalTrafficPolicy: Local` with `backends`
/// (address, on this node?).
fn local_policy(name: &str, backends: &[(Ipv6Addr, bool)]) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE).with_ipv6();
    let mut planner = Planner::new(dp.slab_slots(), std::time::Duration::ZERO);
    let members: Vec<_> = backends.iter().map(|&(a, l)| (a, 8080, l)).collect();
    let (fe, mut want): (FrontendV6, _) = frontend6(node_port(), Protocol::Tcp, &members);
    want.policy = TrafficPolicy::Local;
    program6(&mut dp, &mut planner, &[NODE6], &[(fe, want)]);
    dp
}

#[test]
fn under_a_local_policy_the_uplink_reaches_only_local_endpoints_and_pods_every_one() {
    let dp = local_policy("node-ports6-local", &[(BACKEND, true), (REMOTE, false)]);
    for sport in 42_000..42_016 {
        assert_eq!(
            dst6_of(&dp.run_xdp(&syn(CLIENT, sport, NODE6)).1),
            (BACKEND, 8080),
            "from the uplink, the local endpoint only (sport {sport})"
        );
    }
    // Without a local endpoint, the uplink's connection drops (the Service
    // has endpoints: not refused); a pod reaches the remote one, its
    // address kept.
    let dp = local_policy("node-ports6-local-none", &[(REMOTE, false)]);
    let dropped = dp.verdict_of(Family::Ipv6, Verdict::Dropped);
    assert_eq!(
        dp.run_xdp(&syn(CLIENT, 42_100, NODE6)).0,
        Hook::Xdp.dropped()
    );
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Dropped), dropped + 1);
    let (ret, out) = Hook::Pod.run(&dp, &syn(POD_CLIENT, 42_101, NODE6));
    assert_eq!(
        (ret, out),
        (
            Hook::Pod.passed(),
            Packet6::tcp(POD_CLIENT, 42_101, REMOTE, 8080).syn().build()
        ),
        "pods follow the Cluster policy"
    );
}

#[test]
fn under_the_cluster_policy_a_pod_reaches_an_endpoint_on_another_node() {
    let (mut dp, mut planner) = datapath("node-ports6-cluster", &[NODE6], false);
    let state = [frontend6(
        node_port(),
        Protocol::Tcp,
        &[(REMOTE, 8080, false)],
    )];
    program6(&mut dp, &mut planner, &[NODE6], &state);
    let (ret, out) = Hook::Pod.run(&dp, &syn(POD_CLIENT, 43_000, NODE6));
    assert_eq!(
        (ret, out),
        (
            Hook::Pod.passed(),
            Packet6::tcp(POD_CLIENT, 43_000, REMOTE, 8080).syn().build()
        )
    );
    let reply = Packet6::tcp(REMOTE, 8080, POD_CLIENT, 43_000)
        .synack()
        .build();
    assert_eq!(
        dp.run_tc_egress(&reply).1,
        Packet6::tcp(NODE6, NODE_PORT, POD_CLIENT, 43_000)
            .synack()
            .build(),
        "the reply from the node port"
    );
}
