//! End to end: IPv6 path MTU discovery through a Service (issue 16). IPv6
//! routers never fragment: a router forwarding over a 1280-byte hop (IPv6's
//! minimum link MTU) answers a larger packet with `ICMPv6` Packet Too Big, and
//! a large transfer moves only if that error reaches the sender about a
//! packet its socket knows.
//!
//! A far client behind the router downloads 1 MiB from an IPv6 Service
//! whose endpoint is pod1a, on node1 of a dual-stack cluster. The reply
//! leaves node1 from the Service address; the router's Packet Too Big
//! about it goes to the Service address, is routed to node1, and must reach
//! pod1a about its own packet (pod1a -> far client): that takes the data
//! path's translation where the error enters node1 (the uplink hook of the
//! pass: XDP or TC). Without it the error is lost and the download stalls.
//! Bounded by `lb_tests::bulk::WAIT`; a small exchange first tells routing
//! apart from translation; the router must have sent Packet Too Big
//! meanwhile, and pod1a must hold a 1280-byte path MTU to the far client.
//!
//! The client on the LAN uploads 1 MiB to an IPv6 Service whose endpoint is
//! pod2a, on node2: node1 translates the flow to its own IPv6 address and
//! forwards it past the stack, by a route to node2's pods of MTU 1280
//! (locked). The stack's Packet Too Big for such a packet would go to the
//! translated source, node1 itself: the upload moves only if node1's data
//! path answers the client itself, from the Service address, about its
//! packet as it sent it; the client must then hold a 1280-byte path MTU to
//! the Service. Its twin puts the 1280-byte hop on a router between node1
//! and node2's pods (IPv4's upload case): the router's Packet Too Big goes
//! to node1's address and must reach the client translated. Needs root.

use std::{
    net::{Ipv6Addr, SocketAddrV6},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    bulk::{download, upload, BulkServers, BULK_PORT, SIZE},
    netns::Netns,
    require_ipv6,
    topology::{pod_ip6, ClusterTopology, Cni, Family, SenderChecksums},
};

/// The narrow hop's MTU: IPv6's minimum.
const MTU: &str = "1280";
/// An IPv6 Service whose only endpoint is pod1a, on node1.
const LOCAL: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x70), 80, 0, 0);
/// An IPv6 Service whose only endpoint is pod2a, on node2 (translated to
/// node1's IPv6 address).
const REMOTE: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x71), 80, 0, 0);
/// node2's IPv6 pod prefix, which node1's route to gets the narrow MTU.
const NODE2_PODS: &str = "fd00:244:2::/64";
/// The far client's address, behind the router on `fd00:60::/64`.
const FAR_CLIENT: &str = "fd00:60::10";
/// The router: its LAN address, and settings (it forwards IPv6, routes the
/// Service range to node1 and the far client's prefix out of `eth1`).
const ROUTER_SETUP: &str = "ip -6 addr add fd00:50::20/64 dev eth0 nodad
    sysctl -qw net.ipv6.conf.all.forwarding=1
    ip -6 route add fd00:96::/108 via fd00:50::11";
/// The router's end of the far client's link (`eth1`, the narrow MTU).
const FAR_ROUTER_SETUP: &str = "ip -6 addr add fd00:60::1/64 dev eth1 nodad
    ip link set eth1 up";
/// The far client's settings before its link exists (IPv6 on, no DAD).
const FAR_SYSCTLS: &str = "sysctl -qw net.ipv6.conf.all.disable_ipv6=0
    sysctl -qw net.ipv6.conf.default.disable_ipv6=0
    sysctl -qw net.ipv6.conf.all.accept_dad=0
    sysctl -qw net.ipv6.conf.default.accept_dad=0";
/// The far client's end (`eth0`, MTU 1500), its route, and complete
/// checksums (as the LAN's hosts send them).
const FAR_CLIENT_SETUP: &str = "ip -6 addr add fd00:60::10/64 dev eth0 nodad
    ip link set eth0 up
    ip link set lo up
    ip -6 route add default via fd00:60::1
    ethtool -K eth0 tx off";

/// An IPv6-only ClusterIP Service `name` at `addr`, TCP to [`BULK_PORT`],
/// whose only endpoint is `pod` on `node`.
fn service(name: &str, addr: SocketAddrV6, pod: Ipv6Addr, node: &str) -> String {
    let (ip, port) = (addr.ip(), addr.port());
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
spec:\n  clusterIP: \"{ip}\"\n  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n  ports: [{{name: http, port: {port}, protocol: TCP, targetPort: {BULK_PORT}}}]\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
addressType: IPv6\nports:\n- {{name: http, port: {BULK_PORT}, protocol: TCP}}\n\
endpoints:\n- {{addresses: [\"{pod}\"], nodeName: {node}, conditions: {{ready: true}}}}\n"
    )
}

/// `ns`'s `ICMPv6` counter `name` (`/proc/net/snmp6`).
fn snmp6(ns: &Netns, name: &str) -> u64 {
    let snmp = String::from_utf8(ns.exec(&["cat", "/proc/net/snmp6"]).unwrap().stdout).unwrap();
    snmp.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{snmp}"))
}

/// The router's `Icmp6OutPktTooBigs`.
fn router_packet_too_bigs(router: &Netns) -> u64 {
    snmp6(router, "Icmp6OutPktTooBigs")
}

#[test]
fn a_far_client_downloads_a_mebibyte_over_ipv6_through_a_1280_byte_hop() {
    require_ipv6();
    let topo =
        ClusterTopology::with_family(SenderChecksums::Complete, Cni::from_env(), Family::Dual)
            .expect("building the dual-stack topology");
    let router = topo
        .add_lan_host("router6", "lan3", "192.168.50.20/24")
        .expect("the router on the LAN");
    router.script(ROUTER_SETUP);
    let far = Netns::new("farclient6").expect("the far client's namespace");
    far.script(FAR_SYSCTLS);
    let link = format!(
        "ip link add eth1 mtu {MTU} type veth peer name eth0 netns {}",
        far.name()
    );
    router.script(&(link + "\n" + FAR_ROUTER_SETUP));
    far.script(FAR_CLIENT_SETUP);
    topo.node1
        .script("ip -6 route add fd00:60::/64 via fd00:50::20");
    let pod1a = &topo.pod("pod1a").ns;
    let _servers = BulkServers::start(&[pod1a], Ipv6Addr::UNSPECIFIED.into());
    let manifests = ManifestDir::new().unwrap();
    let yaml = service("pmtu6", LOCAL, pod_ip6(1, 2), "node1");
    manifests.write("pmtu6.yaml", &yaml).unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut agent = Agent::start_with(&topo.node1, &["--manifests", &dir]).expect("lb-agent");
    agent
        .wait_ready(Duration::from_secs(30))
        .expect("lb-agent ready");

    let echoed = upload(&far, LOCAL, 100)
        .unwrap_or_else(|e| panic!("control: the far client posts 100 bytes to {LOCAL}: {e:#}"));
    assert_eq!(echoed, 100, "control");
    let before = router_packet_too_bigs(&router);
    let moved = download(&far, LOCAL);
    let sent = router_packet_too_bigs(&router) - before;
    let what = format!("the far client's download of {SIZE} bytes through {LOCAL}");
    let moved = moved.unwrap_or_else(|e| panic!("{what}, {sent} Packet Too Big sent: {e:#}"));
    assert_eq!(moved, SIZE, "{what}");
    assert!(sent > 0, "{what}: the router sent no Packet Too Big");
    let route = pod1a
        .exec(&["ip", "-6", "route", "get", FAR_CLIENT])
        .unwrap();
    let route = String::from_utf8(route.stdout).unwrap();
    assert!(
        route.contains(&format!("mtu {MTU}")),
        "{what}: pod1a learned no path MTU to the far client: {route}"
    );
}

/// Where the 1280-byte hop of the client's upload is.
#[derive(Clone, Copy, PartialEq)]
enum Narrow {
    /// node1's own route to node2's pods: node1's data path answers.
    Node1,
    /// A router between node1 and node2's pods: its Packet Too Big goes to
    /// node1's address and must be translated to the client.
    Router,
}

/// The client's upload to pod2a through the narrow hop at `narrow` (see
/// the module doc), the agent run with `extra` arguments.
fn client_uploads_through_a_narrow_route(narrow: Narrow, extra: &[&str]) {
    require_ipv6();
    let topo =
        ClusterTopology::with_family(SenderChecksums::Complete, Cni::from_env(), Family::Dual)
            .expect("building the dual-stack topology");
    let _router = if narrow == Narrow::Router {
        let router = topo
            .add_lan_host("router6", "lan3", "192.168.50.20/24")
            .expect("the router on the LAN");
        router.script(ROUTER_SETUP);
        router.script(&format!(
            "ip -6 route add {NODE2_PODS} via fd00:50::12 mtu lock {MTU}"
        ));
        topo.node1
            .script(&format!("ip -6 route replace {NODE2_PODS} via fd00:50::20"));
        Some(router)
    } else {
        // node1's route to node2's pods, whatever the CNI made it, narrowed.
        let shown = topo
            .node1
            .exec(&["ip", "-6", "route", "show", NODE2_PODS])
            .unwrap();
        let shown = String::from_utf8(shown.stdout).unwrap();
        let route = shown
            .lines()
            .next()
            .unwrap_or_else(|| panic!("node1 has no route to {NODE2_PODS}"));
        topo.node1
            .script(&format!("ip -6 route change {route} mtu lock {MTU}"));
        None
    };
    let pod2a = &topo.pod("pod2a").ns;
    let _servers = BulkServers::start(&[pod2a], Ipv6Addr::UNSPECIFIED.into());
    let manifests = ManifestDir::new().unwrap();
    let yaml = service("pmtu6-remote", REMOTE, pod_ip6(2, 2), "node2");
    manifests.write("pmtu6-remote.yaml", &yaml).unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut args = vec!["--manifests", &dir];
    args.extend_from_slice(extra);
    let mut agent = Agent::start_with(&topo.node1, &args).expect("lb-agent");
    agent
        .wait_ready(Duration::from_secs(30))
        .expect("lb-agent ready");

    let client = &topo.client;
    let echoed = upload(client, REMOTE, 100)
        .unwrap_or_else(|e| panic!("control: the client posts 100 bytes to {REMOTE}: {e:#}"));
    assert_eq!(echoed, 100, "control");
    let before = snmp6(client, "Icmp6InPktTooBigs");
    let moved = upload(client, REMOTE, SIZE);
    let got = snmp6(client, "Icmp6InPktTooBigs") - before;
    let what = format!("the client's upload of {SIZE} bytes through {REMOTE}");
    let moved = moved.unwrap_or_else(|e| panic!("{what}, {got} Packet Too Big received: {e:#}"));
    assert_eq!(moved, SIZE, "{what}");
    assert!(got > 0, "{what}: the client got no Packet Too Big");
    let service = REMOTE.ip().to_string();
    let route = client
        .exec(&["ip", "-6", "route", "get", &service])
        .unwrap();
    let route = String::from_utf8(route.stdout).unwrap();
    assert!(
        route.contains(&format!("mtu {MTU}")),
        "{what}: the client learned no path MTU to the Service: {route}"
    );
}

#[test]
fn a_client_uploads_a_mebibyte_over_ipv6_to_a_remote_backend_through_a_1280_byte_route() {
    client_uploads_through_a_narrow_route(Narrow::Node1, &[]);
}

#[test]
fn a_client_uploads_a_mebibyte_over_ipv6_through_a_1280_byte_route_with_the_uplink_hook_at_tc() {
    client_uploads_through_a_narrow_route(Narrow::Node1, &["--uplink-hook", "tc"]);
}

#[test]
fn a_client_uploads_a_mebibyte_over_ipv6_to_a_remote_backend_through_a_routers_1280_byte_hop() {
    client_uploads_through_a_narrow_route(Narrow::Router, &[]);
}
