//! The topology's IPv6-only and dual-stack families (issue 16, step 5), with
//! no load-balancer program loaded: plain IPv6 (and, dual-stack, IPv4 beside
//! it in the same namespaces) connects the client to every pod and the pods
//! across nodes, over TCP and UDP, on every CNI layout. Addresses are usable
//! at once (no DAD left pending), and an IPv4 topology stays IPv6-free.
//! Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    netns::Netns,
    topology::{
        pod_ip6, pod_prefix6, ClusterTopology, Cni, Family, Pod, SenderChecksums, CLIENT_IP6,
        NODE1_IP6, NODE2_IP6, VXLAN6_MTU, VXLAN_DEVICE, VXLAN_MTU,
    },
    traffic::{http_get_at, udp_request_at, PodServers, HTTP_PORT, UDP_PORT},
};

/// Bound on each request: a reply that never comes is the failure.
const WAIT: Duration = Duration::from_secs(3);

/// Builds the topology of `cni` and `family` with its pod servers, and
/// routes the client to the pods.
fn topology(cni: Cni, family: Family) -> (ClusterTopology, PodServers) {
    let topo = ClusterTopology::with_family(SenderChecksums::Complete, cni, family)
        .unwrap_or_else(|e| panic!("building the {family:?} topology on {cni:?}: {e:#}"));
    let servers = PodServers::start(&topo).expect("starting pod servers");
    topo.route_client_to_pods().expect("client routes to pods");
    (topo, servers)
}

/// Asserts that `to` answers `from` over TCP and UDP at its address `addr`,
/// the UDP reply coming from that address.
fn assert_reaches(from: &Netns, who: &str, to: &Pod, addr: IpAddr) {
    let http = http_get_at(from, SocketAddr::new(addr, HTTP_PORT), WAIT)
        .unwrap_or_else(|e| panic!("TCP from {who} to {} at {addr}: {e:#}", to.name));
    assert_eq!(http, to.name, "TCP from {who} to {addr}");
    let target = SocketAddr::new(addr, UDP_PORT);
    let (udp, source) = udp_request_at(from, target, WAIT)
        .unwrap_or_else(|e| panic!("UDP from {who} to {} at {addr}: {e:#}", to.name));
    assert_eq!(udp, to.name, "UDP from {who} to {addr}");
    assert_eq!(source, target, "UDP reply from {who}'s peer {addr}");
}

/// The output of `args` run in `ns`.
fn output(ns: &Netns, args: &[&str]) -> String {
    let out = ns.exec(args).expect("running in the namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every namespace of `topo` but the LAN's, with a name for messages.
fn hosts(topo: &ClusterTopology) -> Vec<(&str, &Netns)> {
    let mut hosts = vec![
        ("client", &topo.client),
        ("node1", &topo.node1),
        ("node2", &topo.node2),
    ];
    hosts.extend(topo.pods.iter().map(|p| (p.name.as_str(), &p.ns)));
    hosts
}

/// The addresses and settings `family` promises: IPv6 ones in every host,
/// none tentative (DAD off) or failed; IPv4 ones only with IPv4; bridges
/// flooding multicast (NDP) with no snooping.
fn assert_layout(topo: &ClusterTopology, cni: Cni, family: Family) {
    assert_eq!(topo.family(), family);
    for (name, ns) in hosts(topo) {
        let tentative = output(ns, &["ip", "-6", "-o", "addr", "show", "tentative"]);
        assert!(tentative.is_empty(), "{name}: tentative: {tentative}");
        let failed = output(ns, &["ip", "-6", "-o", "addr", "show", "dadfailed"]);
        assert!(failed.is_empty(), "{name}: DAD failed: {failed}");
        let global4 = output(ns, &["ip", "-4", "-o", "addr", "show", "scope", "global"]);
        assert_eq!(
            !global4.is_empty(),
            family.has_v4(),
            "{name}'s IPv4 addresses in a {family:?} topology: {global4:?}"
        );
    }
    let client = output(
        &topo.client,
        &["ip", "-6", "-o", "addr", "show", "dev", "eth0"],
    );
    assert!(client.contains(&format!("{CLIENT_IP6}/64")), "{client}");
    for (node, addr) in [(&topo.node1, NODE1_IP6), (&topo.node2, NODE2_IP6)] {
        assert_eq!(node.sysctl("net.ipv6.conf.eth0.forwarding").unwrap(), "1");
        let lan = output(node, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
        assert!(lan.contains(&format!("{addr}/64")), "{lan}");
    }
    for pod in &topo.pods {
        let node: u8 = if pod.node == "node1" { 1 } else { 2 };
        let last = pod.ip6.expect("an IPv6 address").segments()[7];
        assert_eq!(pod.ip6, Some(pod_ip6(node, last)), "{}", pod.name);
        assert_eq!(pod.ipv4().is_some(), family.has_v4(), "{}", pod.name);
        assert_eq!(pod.addrs().len(), if family.has_v4() { 2 } else { 1 });
    }
    let mut bridges = vec![(&topo.lan, "br0")];
    if cni.bridged() {
        bridges.extend([(&topo.node1, "cni0"), (&topo.node2, "cni0")]);
    }
    for (ns, bridge) in bridges {
        let path = format!("/sys/class/net/{bridge}/bridge/multicast_snooping");
        assert_eq!(output(ns, &["cat", &path]).trim(), "0", "{bridge}");
    }
}

/// The overlay of `family`: IPv6-only runs it over the IPv6 LAN at its
/// smaller MTU, dual-stack over the IPv4 LAN carrying both families.
fn assert_overlay(topo: &ClusterTopology, family: Family) {
    let (underlay, mtu) = if family == Family::V6 {
        (NODE1_IP6.to_string(), VXLAN6_MTU)
    } else {
        ("192.168.50.11".to_string(), VXLAN_MTU)
    };
    let device = output(&topo.node1, &["ip", "-d", "link", "show", VXLAN_DEVICE]);
    assert!(
        device.contains(&format!("local {underlay} ")) && device.contains(&format!("mtu {mtu} ")),
        "node1's {VXLAN_DEVICE} over {underlay} at MTU {mtu}: {device}"
    );
    let pod = output(&topo.pod("pod1a").ns, &["ip", "link", "show", "eth0"]);
    assert!(pod.contains(&format!("mtu {mtu} ")), "pod1a's link: {pod}");
}

/// Total packets `ns` received on `device`.
fn rx_packets(ns: &Netns, device: &str) -> u64 {
    let path = format!("/sys/class/net/{device}/statistics/rx_packets");
    output(ns, &["cat", &path]).trim().parse().expect("a count")
}

/// Builds the topology of `cni` and `family`, checks its layout, and proves
/// that each of its families connects the client to every pod and the pods
/// across nodes both ways, over TCP and UDP.
fn connectivity(cni: Cni, family: Family) {
    let (topo, _servers) = topology(cni, family);
    assert_layout(&topo, cni, family);
    if cni == Cni::BridgeVxlan {
        assert_overlay(&topo, family);
    }
    let node2_overlay_rx = (cni == Cni::BridgeVxlan).then(|| rx_packets(&topo.node2, VXLAN_DEVICE));
    let (pod1a, pod2a) = (topo.pod("pod1a"), topo.pod("pod2a"));
    for pod in &topo.pods {
        let addrs = pod.addrs();
        assert_eq!(addrs.len(), if family == Family::Dual { 2 } else { 1 });
        for addr in addrs {
            assert_reaches(&topo.client, "the client", pod, addr);
            let peer = if pod.node == "node1" { pod2a } else { pod1a };
            assert_reaches(&peer.ns, &peer.name, pod, addr);
        }
    }
    if let Some(before) = node2_overlay_rx {
        let after = rx_packets(&topo.node2, VXLAN_DEVICE);
        assert!(
            after > before,
            "node1's pods reached pod2a through node2's {VXLAN_DEVICE}: {before} -> {after}"
        );
    }
}

#[test]
fn ipv6_only_routed() {
    connectivity(Cni::Routed, Family::V6);
}

#[test]
fn ipv6_only_bridge() {
    connectivity(Cni::Bridge, Family::V6);
}

#[test]
fn ipv6_only_vxlan() {
    connectivity(Cni::BridgeVxlan, Family::V6);
}

#[test]
fn dual_stack_routed() {
    connectivity(Cni::Routed, Family::Dual);
}

#[test]
fn dual_stack_bridge() {
    connectivity(Cni::Bridge, Family::Dual);
}

#[test]
fn dual_stack_vxlan() {
    connectivity(Cni::BridgeVxlan, Family::Dual);
}

/// An IPv4 topology keeps its layout: no global IPv6 address on any host or
/// pod, no IPv6 address on its pods, and IPv4 connects as before.
#[test]
fn ipv4_topology_stays_ipv4() {
    let (topo, _servers) = topology(Cni::Routed, Family::V4);
    assert_eq!(topo.family(), Family::V4);
    for (name, ns) in hosts(&topo) {
        let global6 = output(ns, &["ip", "-6", "-o", "addr", "show", "scope", "global"]);
        assert!(global6.is_empty(), "{name}: {global6}");
    }
    for pod in &topo.pods {
        assert_eq!(pod.ip6, None, "{}", pod.name);
        assert_eq!(pod.addrs(), vec![IpAddr::V4(pod.ip)], "{}", pod.name);
        assert_reaches(&topo.client, "the client", pod, IpAddr::V4(pod.ip));
    }
}

/// In an IPv6-only topology, another LAN host gets its IPv6 address usable
/// at once and reaches node2's pod through node2, and node1's INVALID drop rule
/// goes into both `iptables` and `ip6tables` without cutting valid traffic.
#[test]
fn ipv6_lan_host_and_firewall() {
    let (topo, _servers) = topology(Cni::Routed, Family::V6);
    let host = topo
        .add_lan_host("far", "lan9", "fd00:50::20/64")
        .expect("an IPv6 LAN host");
    let tentative = output(&host, &["ip", "-6", "-o", "addr", "show", "tentative"]);
    assert!(tentative.is_empty(), "the LAN host: tentative: {tentative}");
    let pod2a = topo.pod("pod2a");
    let addr = IpAddr::V6(pod2a.ip6.expect("an IPv6 address"));
    let via = NODE2_IP6.to_string();
    output(
        &host,
        &["ip", "-6", "route", "add", &pod_prefix6(2), "via", &via],
    );
    assert_reaches(&host, "the LAN host", pod2a, addr);
    topo.install_invalid_drop().expect("the INVALID drop rule");
    for table in ["iptables", "ip6tables"] {
        let rules = output(&topo.node1, &[table, "-S", "FORWARD"]);
        assert!(
            rules.contains("--ctstate INVALID -j DROP"),
            "{table}: {rules}"
        );
    }
    assert_reaches(&topo.client, "the client", pod2a, addr);
}
