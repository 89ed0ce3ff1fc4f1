//! Socket-level balancing of IPv6 sockets (`lb-ebpf/src/sock6.rs`), the
//! twin of `socket_lb.rs`: the cgroup programs point an IPv6 socket aimed
//! at an IPv6 Service at a backend when it connects (or per send of an
//! unconnected UDP socket), and the socket reports the Service's address
//! (`getpeername`, `recvfrom`); a dual-stack socket aimed at a v4-mapped
//! address (`::ffff:a.b.c.d`) reaches the IPv4 Service there and keeps
//! seeing the v4-mapped Service address. Session affinity keeps a
//! namespace's sockets on one backend, as IPv4's.
//!
//! IPv6 has no loopback range to hold a Service address, so everything runs
//! in a network namespace of the test's own with loopback only: the
//! backends listen on its `lo` (`::1` and one more address), the data path
//! is loaded from inside it (so it is the agent's, "the node's",
//! namespace), and a socket the programs failed to translate finds no
//! route (`ENETUNREACH`) and never leaves. The client processes join a
//! test cgroup of their own (never the machine's root). Needs root and a
//! cgroup v2 hierarchy.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use lb_common::{Event, Family};
use lb_tests::{
    cgroup::TestCgroup,
    netns::{in_netns, Netns},
    packet::TestDatapath,
    sock_client::{self, Servers},
};
use lb_userspace::{
    desired::{
        BackendInfo, DesiredFrontend, DesiredState, DesiredState6, Frontend, FrontendV6, Listen6,
        ObjectName, Protocol, TrafficPolicy,
    },
    plan::Planner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// The IPv6 Service address: no route reaches it in the test's namespace.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// The IPv6 backends: loopback, and an address the test adds to its
/// namespace's `lo`.
const BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::LOCALHOST,
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0xb),
];
/// The IPv4 Service reached through v4-mapped addresses, and its backend.
const VIP4: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 10);
const BACKEND4: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Connections per client run.
const CONNECTS: u32 = 24;

/// The fixtures' backend info: on this node, selected for every policy.
const SELECTED: BackendInfo = BackendInfo {
    local: true,
    for_cluster: true,
    for_local: true,
};

/// A desired frontend of Service `name` with these backends.
fn desired<S: lb_userspace::desired::AddrFamily>(
    name: &str,
    backends: impl IntoIterator<Item = S>,
) -> DesiredFrontend<S> {
    let backends: BTreeMap<S, BackendInfo> = backends.into_iter().map(|b| (b, SELECTED)).collect();
    DesiredFrontend {
        service: ObjectName {
            namespace: "default".into(),
            name: name.into(),
        },
        port_name: String::new(),
        has_endpoints: !backends.is_empty(),
        backends,
        policy: TrafficPolicy::Cluster,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        source_ranges: Vec::new(),
        node_port_addrs: Vec::new(),
    }
}

/// The IPv6 Services: TCP port 80 and UDP port 53 at [`VIP6`], over the
/// servers of [`BACKENDS6`] (their first `count`).
fn services6(servers: &Servers, count: usize) -> DesiredState6 {
    let backends = |udp: bool| {
        BACKENDS6
            .iter()
            .zip(&servers.ports)
            .take(count)
            .map(move |(ip, ports)| {
                SocketAddrV6::new(*ip, if udp { ports.1 } else { ports.0 }, 0, 0)
            })
            .collect::<Vec<_>>()
    };
    let frontend = |port, proto| FrontendV6 {
        listen: Listen6::Addr(VIP6, port),
        proto,
    };
    [
        (
            frontend(80, Protocol::Tcp),
            desired("web6", backends(false)),
        ),
        (frontend(53, Protocol::Udp), desired("dns6", backends(true))),
        (
            frontend(8080, Protocol::Tcp),
            DesiredFrontend {
                affinity_timeout: 60,
                ..desired("sticky6", backends(false))
            },
        ),
    ]
    .into()
}

/// Runs the client in `ns` and `cgroup` and returns its lines.
fn client(ns: &Netns, cgroup: &TestCgroup, mode: &str, to: SocketAddr, count: u32) -> Vec<String> {
    client_in(ns, cgroup, mode, to, count, &[])
}

/// [`client`] with more arguments (`other-netns`).
fn client_in(
    ns: &Netns,
    cgroup: &TestCgroup,
    mode: &str,
    to: SocketAddr,
    count: u32,
    extra: &[&str],
) -> Vec<String> {
    sock_client::run(
        env!("CARGO_BIN_EXE_sock-client"),
        Some(ns),
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

/// A namespace of the test's own with loopback only: `lo` up, with
/// [`BACKENDS6`]' second address.
fn test_netns() -> Netns {
    let ns = Netns::new("sock6").expect("a test namespace");
    let extra = format!("{}/128", BACKENDS6[1]);
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &extra, "dev", "lo", "nodad"],
    ] {
        let mut cmd = vec!["ip", "-n", ns.name()];
        cmd.extend(args);
        lb_tests::netns::sh(&cmd).expect("setting up the test namespace");
    }
    ns
}

/// Servers for [`BACKENDS6`] (b0, b1) and [`BACKEND4`] (b2), in the
/// calling thread's namespace.
fn servers() -> Servers {
    let mut addrs: Vec<IpAddr> = BACKENDS6.iter().copied().map(IpAddr::V6).collect();
    addrs.push(IpAddr::V4(BACKEND4));
    Servers::start(&addrs)
}

/// Writes the IPv4 Services at [`VIP4`] (over b2) and [`services6`] into
/// `dp`; the planner is for later changes.
fn program(dp: &mut TestDatapath, servers: &Servers) -> Planner {
    let now = Instant::now();
    let mut planner = Planner::new(dp.slab_slots(), Duration::ZERO);
    let ports4 = servers.ports[2];
    let services4: DesiredState = [
        (
            Frontend {
                addr: VIP4,
                port: 80,
                proto: Protocol::Tcp,
            },
            desired("web4", [SocketAddrV4::new(BACKEND4, ports4.0)]),
        ),
        (
            Frontend {
                addr: VIP4,
                port: 53,
                proto: Protocol::Udp,
            },
            desired("dns4", [SocketAddrV4::new(BACKEND4, ports4.1)]),
        ),
    ]
    .into();
    let (plan4, errors4) = planner.plan(&services4, now);
    let (plan6, errors6) = planner.plan6(&services6(servers, 2), now);
    assert!(errors4.is_empty() && errors6.is_empty());
    for plan in [&plan4, &plan6] {
        dp.datapath_mut().maps.apply(&plan.ops).expect("apply");
    }
    planner
}

/// Whether a pin named `name` is anywhere under `dir`.
fn pinned(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name() == name || (e.path().is_dir() && pinned(&e.path(), name)))
}

#[test]
fn ipv6_sockets_reach_a_service_and_see_its_address() {
    let ns = test_netns();
    in_netns(&ns, || serve_and_check(&ns));
}

/// With `--ipv6 off` only IPv4's socket programs attach: an IPv6 socket
/// aimed at an IPv6 Service is left alone (and finds no route), IPv4's
/// sockets are balanced as ever.
#[test]
fn with_ipv6_off_only_ipv4_s_socket_programs_attach() {
    let ns = test_netns();
    in_netns(&ns, || {
        let cgroup = TestCgroup::new("sock6off");
        let servers = servers();
        let mut dp =
            TestDatapath::load_with_socket_lb_ipv4_only("socket-lb6off", NODE, cgroup.path());
        let _planner = program(&mut dp, &servers);
        assert!(pinned(dp.pin_dir(), "sock-connect4"));
        assert!(!pinned(dp.pin_dir(), "sock-connect6"));
        let web = SocketAddr::from((VIP6, 80));
        let left = client(&ns, &cgroup, "tcp", web, 1);
        assert!(left[0].contains("unreachable"), "{left:?}");
        let web4 = SocketAddr::from((VIP4, 80));
        let seen = replies(&client(&ns, &cgroup, "tcp", web4, 2), web4);
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["b2"], "{seen:?}");
        assert_eq!(dp.event_of(Family::Ipv6, Event::SocketTranslated), 0);
        drop(dp);
        drop(servers);
    });
}

/// The test, on a thread inside `ns`: the servers and the data path are
/// the namespace's.
fn serve_and_check(ns: &Netns) {
    let cgroup = TestCgroup::new("sock6");
    let servers = servers();
    let mut dp = TestDatapath::load_with_socket_lb("socket-lb6", NODE, cgroup.path());
    let mut planner = program(&mut dp, &servers);
    assert!(pinned(dp.pin_dir(), "sock-connect6"));
    let web = SocketAddr::from((VIP6, 80));
    let dns = SocketAddr::from((VIP6, 53));

    let tcp = replies(&client(ns, &cgroup, "tcp", web, CONNECTS), web);
    assert_eq!(tcp.keys().collect::<Vec<_>>(), ["b0", "b1"], "{tcp:?}");
    let udp = replies(&client(ns, &cgroup, "udp", dns, CONNECTS), dns);
    assert_eq!(udp.keys().collect::<Vec<_>>(), ["b0", "b1"], "{udp:?}");
    let unconnected = replies(&client(ns, &cgroup, "udp-unconnected", dns, CONNECTS), dns);
    assert_eq!(unconnected.values().sum::<usize>(), CONNECTS as usize);
    assert_eq!(
        dp.event_of(Family::Ipv6, Event::SocketTranslated),
        u64::from(3 * CONNECTS),
        "one IPv6 translation per connect or unconnected send"
    );
    assert_eq!(dp.event_of(Family::Ipv4, Event::SocketTranslated), 0);

    // A dual-stack socket aimed at a v4-mapped Service address reaches the
    // IPv4 Service, and sees the v4-mapped Service address.
    let mapped = |port| SocketAddr::from((VIP4.to_ipv6_mapped(), port));
    for mode in ["tcp", "udp", "udp-unconnected"] {
        let to = mapped(if mode == "tcp" { 80 } else { 53 });
        let seen = replies(&client(ns, &cgroup, mode, to, 2), to);
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["b2"], "{mode}: {seen:?}");
    }
    assert_eq!(
        dp.event_of(Family::Ipv4, Event::SocketTranslated),
        6,
        "v4-mapped sockets are translated by IPv4's rules"
    );

    // Session affinity: the namespace's sockets stick to one backend.
    let sticky = SocketAddr::from((VIP6, 8080));
    let stuck = replies(&client(ns, &cgroup, "tcp", sticky, CONNECTS), sticky);
    assert_eq!(stuck.len(), 1, "one backend for the namespace: {stuck:?}");

    // A socket of another network namespace (a pod's) is left alone.
    let pod = client_in(ns, &cgroup, "tcp", web, 1, &["other-netns"]);
    assert!(pod[0].starts_with("error="), "{pod:?}");
    assert_eq!(
        dp.event_of(Family::Ipv6, Event::SocketTranslated),
        u64::from(4 * CONNECTS)
    );

    // An edit removes backend b1: new sockets avoid it.
    let (plan, _) = planner.plan6(&services6(&servers, 1), Instant::now());
    dp.datapath_mut().maps.apply(&plan.ops).expect("apply");
    let tcp = replies(&client(ns, &cgroup, "tcp", web, CONNECTS), web);
    assert_eq!(tcp.keys().collect::<Vec<_>>(), ["b0"], "{tcp:?}");

    // No backend at all: connect fails at once, nothing is sent anywhere.
    let (plan, _) = planner.plan6(&services6(&servers, 0), Instant::now());
    dp.datapath_mut().maps.apply(&plan.ops).expect("apply");
    let refused = client(ns, &cgroup, "tcp", web, 1);
    assert!(
        refused[0].starts_with("error=") && refused[0].contains("not permitted"),
        "{refused:?}"
    );
    assert_eq!(dp.event_of(Family::Ipv6, Event::SocketRefused), 1);
    assert_eq!(dp.event_of(Family::Ipv4, Event::SocketRefused), 0);
    drop(dp);
    drop(servers);
}
