//! Node ports through the real programs (`BPF_PROG_TEST_RUN`): one frontend
//! per node port (address 0), served on every node-port address
//! (`NODE_PORT_ADDRS`: the node's local addresses, or those
//! `--nodeport-addresses` picks) and nowhere else; replies carry the
//! address the client used; a frontend of the exact address and port (an
//! external IP on a node address) wins over the node port, as kube-proxy
//! matches external IPs before node ports. Exact bytes. Needs root.

use std::{net::Ipv4Addr, time::Instant};

use lb_tests::{
    fixture::frontend,
    packet::{Hook, Packet, TestDatapath},
};
use lb_userspace::{
    desired::{DesiredFrontend, DesiredState, Frontend, Protocol},
    plan::Planner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// Another local address of the node (a second interface).
const SECOND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
/// An address that is not the node's.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE_PORT: u16 = 30080;
/// The node port's endpoint, and an external IP's on the same port.
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const EXTERNAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

/// The node port on `addrs`, and (with `external`) an external IP equal to
/// SECOND on the same port.
fn state(addrs: &[Ipv4Addr], external: bool) -> DesiredState {
    let (_, mut node_port): (Frontend, DesiredFrontend) = frontend(
        Ipv4Addr::UNSPECIFIED,
        NODE_PORT,
        Protocol::Tcp,
        &[(BACKEND, 8080, true)],
    );
    node_port.node_port_addrs = addrs.to_vec();
    let mut state: DesiredState =
        [(Frontend::node_port(NODE_PORT, Protocol::Tcp), node_port)].into();
    if external {
        state.extend([frontend(
            SECOND,
            NODE_PORT,
            Protocol::Tcp,
            &[(EXTERNAL_BACKEND, 8080, true)],
        )]);
    }
    state
}

/// Plans `state` with the node-port addresses `addrs` and writes both.
fn apply(dp: &mut TestDatapath, planner: &mut Planner, addrs: &[Ipv4Addr], external: bool) {
    let (add, remove) = planner.node_port_addresses(addrs);
    let (plan, errors) = planner.plan(&state(addrs, external), Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    let maps = &mut dp.datapath_mut().maps;
    for ops in [add.ops, plan.ops, remove.ops] {
        maps.apply(&ops).unwrap();
    }
}

/// A SYN from the client to `addr` at the node port, and what XDP makes of it.
fn syn(dp: &TestDatapath, addr: Ipv4Addr, sport: u16) -> (u32, Vec<u8>) {
    dp.run_xdp(&Packet::tcp(CLIENT, sport, addr, NODE_PORT).syn().build())
}

#[test]
fn a_node_port_is_served_on_every_node_port_address_and_nowhere_else() {
    let mut dp = TestDatapath::load("node-ports", NODE);
    let mut planner = Planner::new(dp.slab_slots(), std::time::Duration::ZERO);
    apply(&mut dp, &mut planner, &[NODE, SECOND], false);
    for (k, addr) in [NODE, SECOND].into_iter().enumerate() {
        let sport = 40_000 + u16::try_from(k).unwrap();
        assert_eq!(
            syn(&dp, addr, sport),
            (
                Hook::Xdp.passed(),
                Packet::tcp(CLIENT, sport, BACKEND, 8080).syn().build()
            ),
            "{addr}:{NODE_PORT}"
        );
        // The reply leaves with the address the client used.
        let reply = Packet::tcp(BACKEND, 8080, CLIENT, sport).synack().build();
        assert_eq!(
            dp.run_tc_egress(&reply).1,
            Packet::tcp(addr, NODE_PORT, CLIENT, sport).synack().build()
        );
    }
    let frame = Packet::tcp(CLIENT, 40_010, ELSEWHERE, NODE_PORT)
        .syn()
        .build();
    assert_eq!(
        dp.run_xdp(&frame),
        (Hook::Xdp.passed(), frame),
        "not a node-port address: not ours"
    );

    // The second address stops serving node ports: its packets pass untouched.
    apply(&mut dp, &mut planner, &[NODE], false);
    let frame = Packet::tcp(CLIENT, 40_020, SECOND, NODE_PORT).syn().build();
    assert_eq!(dp.run_xdp(&frame), (Hook::Xdp.passed(), frame));
    assert_eq!(
        syn(&dp, NODE, 40_021).1,
        Packet::tcp(CLIENT, 40_021, BACKEND, 8080).syn().build()
    );
}

#[test]
fn an_external_ip_on_a_node_address_wins_over_the_node_port() {
    let mut dp = TestDatapath::load("node-ports-exact", NODE);
    let mut planner = Planner::new(dp.slab_slots(), std::time::Duration::ZERO);
    apply(&mut dp, &mut planner, &[NODE, SECOND], true);
    assert_eq!(
        syn(&dp, SECOND, 41_000).1,
        Packet::tcp(CLIENT, 41_000, EXTERNAL_BACKEND, 8080)
            .syn()
            .build(),
        "the exact frontend"
    );
    assert_eq!(
        syn(&dp, NODE, 41_001).1,
        Packet::tcp(CLIENT, 41_001, BACKEND, 8080).syn().build(),
        "the node port elsewhere"
    );
}
