//! Socket-level balancing (`--socket-lb host`): the cgroup programs point a
//! socket of the node's namespace aimed at a Service at a backend when it
//! connects (or per send of an unconnected UDP socket), and the socket
//! reports the Service's address back (`getpeername`, `recvfrom`). Real
//! sockets of a client process moved into a test cgroup of its own (never
//! the machine's root), backends listening on loopback addresses, so every
//! packet stays on this machine. Needs root and a cgroup v2 hierarchy.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use lb_common::Event;
use lb_tests::{
    cgroup::TestCgroup,
    fixture::{apply, frontend, program},
    packet::TestDatapath,
    sock_client::{self, Servers},
};
use lb_userspace::desired::Protocol;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// The Service address: a loopback one, so that a socket the programs
/// failed to translate still never leaves the machine.
const VIP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 10);
/// The backends: two loopback addresses of this machine.
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)];
/// Connections per client run.
const CONNECTS: u32 = 24;

/// Runs the client in `cgroup` and returns its lines.
fn client(cgroup: &TestCgroup, mode: &str, to: SocketAddr, count: u32) -> Vec<String> {
    client_in(cgroup, mode, to, count, &[])
}

/// [`client`] with more arguments (`other-netns`).
fn client_in(
    cgroup: &TestCgroup,
    mode: &str,
    to: SocketAddr,
    count: u32,
    extra: &[&str],
) -> Vec<String> {
    sock_client::run(
        env!("CARGO_BIN_EXE_sock-client"),
        None,
        cgroup,
        mode,
        &to,
        count as usize,
        extra,
    )
}

/// How many exchanges each backend answered; every line must report `peer`.
fn replies(lines: &[String], peer: SocketAddr) -> BTreeMap<String, usize> {
    sock_client::answers(lines, &peer)
}

#[test]
fn sockets_of_the_node_reach_a_service_and_see_its_address() {
    let cgroup = TestCgroup::new("socklb");
    let servers = Servers::start(&BACKENDS.map(IpAddr::V4));
    let mut dp = TestDatapath::load_with_socket_lb("socket-lb", NODE, cgroup.path());
    let backends = |proto: usize| -> Vec<(Ipv4Addr, u16, bool)> {
        BACKENDS
            .iter()
            .zip(&servers.ports)
            .map(|(ip, ports)| (*ip, if proto == 0 { ports.0 } else { ports.1 }, true))
            .collect()
    };
    let mut planner = program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &backends(0)),
            frontend(VIP, 53, Protocol::Udp, &backends(1)),
        ],
    );
    let web = SocketAddr::from((VIP, 80));
    let dns = SocketAddr::from((VIP, 53));

    let tcp = replies(&client(&cgroup, "tcp", web, CONNECTS), web);
    assert_eq!(
        tcp.keys().collect::<Vec<_>>(),
        ["b0", "b1"],
        "spread: {tcp:?}"
    );
    let udp = replies(&client(&cgroup, "udp", dns, CONNECTS), dns);
    assert_eq!(
        udp.keys().collect::<Vec<_>>(),
        ["b0", "b1"],
        "spread: {udp:?}"
    );
    let unconnected = replies(&client(&cgroup, "udp-unconnected", dns, CONNECTS), dns);
    assert_eq!(unconnected.values().sum::<usize>(), CONNECTS as usize);
    assert_eq!(
        dp.event(Event::SocketTranslated),
        u64::from(3 * CONNECTS),
        "one translation per connect or unconnected send"
    );

    // A socket of another network namespace (a pod's) in the same cgroup
    // is left to the per-packet path: not translated (its namespace has
    // no route anywhere, so it goes nowhere).
    let pod = client_in(&cgroup, "tcp", web, 1, &["other-netns"]);
    assert!(pod[0].starts_with("error="), "{pod:?}");
    assert_eq!(dp.event(Event::SocketTranslated), u64::from(3 * CONNECTS));

    // An edit removes backend b1: new sockets avoid it.
    apply(
        &mut dp,
        &mut planner,
        &[
            frontend(VIP, 80, Protocol::Tcp, &backends(0)[..1]),
            frontend(VIP, 53, Protocol::Udp, &backends(1)[..1]),
        ],
    );
    let tcp = replies(&client(&cgroup, "tcp", web, CONNECTS), web);
    assert_eq!(tcp.keys().collect::<Vec<_>>(), ["b0"], "{tcp:?}");

    // No backend at all: connect fails at once, nothing is sent anywhere.
    apply(
        &mut dp,
        &mut planner,
        &[frontend(VIP, 80, Protocol::Tcp, &[])],
    );
    let refused = client(&cgroup, "tcp", web, 1);
    assert!(
        refused[0].starts_with("error=") && refused[0].contains("not permitted"),
        "{refused:?}"
    );
    assert_eq!(dp.event(Event::SocketRefused), 1);
    drop(dp);
    drop(servers);
}
