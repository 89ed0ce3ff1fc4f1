//! End to end: a Service without endpoints refuses, as kube-proxy's REJECT
//! rule does. A TCP `connect()` to it fails with `ECONNREFUSED` from an ICMP
//! port unreachable (queued on the socket with `IP_RECVERR`: not a RST, so
//! not node1's own stack refusing a node port), and a connected UDP socket
//! gets `ECONNREFUSED`; in both the error's source (`SO_EE_OFFENDER`) is the
//! frontend's address: the ClusterIP, or node1's address for a node port. No
//! timed assertion: the error itself proves the refusal came. From the
//! client outside (through node1's uplink: XDP, the test bed's default, and
//! `--uplink-hook tc`) and from a pod (the pod hook). Needs root.
//!
//! `XDP_TX` on a veth hands the frame to the peer's ring, and the peer's
//! NAPI is woken for it only when the peer has an XDP program of its own
//! (GRO alone gives it NAPI but no wake-up: the frame waits for the next
//! packet): the topology keeps the object's `xdp_pass` on the LAN side of
//! node1's uplink (`lan1`, [`lb_tests::topology::NODE1_LAN_PORT`]) for its
//! whole life, which the XDP case relies on. The agent's own default on a
//! veth uplink is TC (`--uplink-hook auto`), which redirects and needs
//! nothing of the peer.
//!
//! IPv6: on a dual-stack cluster, a TCP `connect()` from the client and
//! from a pod to the IPv6 cluster IP of a Service without endpoints fails
//! with `ECONNREFUSED` (an `ICMPv6` port unreachable: nobody else answers
//! for that address), at once rather than after its 2-second timeout.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    netns::Netns,
    require_ipv6,
    topology::{ClusterTopology, Cni, Family, SenderChecksums, NODE1_IP},
    traffic::{tcp_refused_by, udp_refused_by},
};

/// A NodePort Service without endpoints (no EndpointSlice at all).
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const EMPTY_SERVICE: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: empty, namespace: default}\n\
spec:\n  type: NodePort\n  clusterIP: 10.96.0.60\n  ports:\n\
\x20 - {name: http, port: 80, nodePort: 30090, protocol: TCP, targetPort: 8080}\n\
\x20 - {name: dns, port: 53, nodePort: 30091, protocol: UDP, targetPort: 5353}\n";
/// Its TCP and UDP ports, and its TCP node port.
const HTTP: u16 = 80;
const DNS: u16 = 53;
const HTTP_NODE_PORT: u16 = 30090;
/// Bound on every exchange.
const WAIT: Duration = Duration::from_secs(2);

/// Topology, manifests and a ready agent. Field order is drop order.
struct Cluster {
    _agent: Agent,
    _manifests: ManifestDir,
    topo: ClusterTopology,
}

/// The cluster with the empty Service, the agent run with `extra` arguments.
fn cluster(extra: &[&str]) -> Cluster {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("empty.yaml", EMPTY_SERVICE).unwrap();
    let agent = Agent::start_ready(&topo.node1, &manifests, extra).expect("lb-agent ready");
    Cluster {
        _agent: agent,
        _manifests: manifests,
        topo,
    }
}

/// From `client` (`who`, for messages): TCP and UDP to the ClusterIP are
/// refused by the ClusterIP.
fn refused_by_the_cluster_ip(client: &Netns, who: &str) {
    let tcp = SocketAddrV4::new(EMPTY, HTTP);
    let offender = tcp_refused_by(client, tcp, WAIT).unwrap_or_else(|e| {
        panic!("{who}: TCP connect to {tcp} (no endpoints) must be refused by ICMP: {e:#}")
    });
    assert_eq!(
        offender, EMPTY,
        "{who} -> {tcp}: refused by the Service address"
    );
    let udp = SocketAddrV4::new(EMPTY, DNS);
    let offender = udp_refused_by(client, udp, WAIT).unwrap_or_else(|e| {
        panic!("{who}: UDP to {udp} (no endpoints) must fail with ECONNREFUSED: {e:#}")
    });
    assert_eq!(
        offender, EMPTY,
        "{who} -> {udp}: refused by the Service address"
    );
}

/// From `client`: TCP to the node port is refused by node1's address, by
/// ICMP (node1's own stack would answer with a RST).
fn refused_by_the_node(client: &Netns, who: &str) {
    let tcp = SocketAddrV4::new(NODE1_IP, HTTP_NODE_PORT);
    let offender = tcp_refused_by(client, tcp, WAIT).unwrap_or_else(|e| {
        panic!("{who}: TCP connect to the node port {tcp} must be refused by ICMP: {e:#}")
    });
    assert_eq!(
        offender, NODE1_IP,
        "{who} -> {tcp}: refused by the node address"
    );
}

/// Through node1's uplink XDP program (`XDP_TX`).
#[test]
fn a_client_is_refused_by_a_service_without_endpoints_at_xdp() {
    let c = cluster(&[]);
    refused_by_the_cluster_ip(&c.topo.client, "client");
    refused_by_the_node(&c.topo.client, "client");
}

/// Through node1's uplink TC program (redirected back out of the uplink).
#[test]
fn a_client_is_refused_by_a_service_without_endpoints_with_the_uplink_hook_at_tc() {
    let c = cluster(&["--uplink-hook", "tc"]);
    refused_by_the_cluster_ip(&c.topo.client, "client");
    refused_by_the_node(&c.topo.client, "client");
}

/// Through the pod hook (redirected back into the pod).
#[test]
fn a_pod_is_refused_by_a_service_without_endpoints() {
    let c = cluster(&[]);
    let pod1b = &c.topo.pod("pod1b").ns;
    refused_by_the_cluster_ip(pod1b, "pod1b");
}

/// An IPv6-only Service without endpoints.
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x60);
const EMPTY6_SERVICE: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: empty6, namespace: default}\n\
spec:\n  clusterIP: \"fd00:96::60\"\n  ipFamilies: [IPv6]\n  ports:\n\
\x20 - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n";

/// From `client`: a TCP connect to the IPv6 cluster IP fails with
/// `ECONNREFUSED`, not a timeout.
fn refused6(client: &Netns, who: &str) {
    let to = SocketAddr::new(EMPTY6.into(), HTTP);
    let result = client
        .run(move || TcpStream::connect_timeout(&to, WAIT))
        .expect("running in the namespace");
    match result {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{who} -> {to}: refused, not {e}"
        ),
        Ok(_) => panic!("{who} -> {to}: connected to a Service without endpoints"),
    }
}

/// The dual-stack cluster with the empty IPv6 Service, the agent run with
/// `extra` arguments.
fn cluster6(extra: &[&str]) -> Cluster {
    require_ipv6();
    let topo =
        ClusterTopology::with_family(SenderChecksums::Complete, Cni::from_env(), Family::Dual)
            .expect("building the dual-stack topology");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("empty6.yaml", EMPTY6_SERVICE).unwrap();
    let agent = Agent::start_ready(&topo.node1, &manifests, extra).expect("lb-agent ready");
    Cluster {
        _agent: agent,
        _manifests: manifests,
        topo,
    }
}

/// Through node1's uplink (XDP) and the pod hook (TC), over IPv6.
#[test]
fn a_client_and_a_pod_are_refused_by_an_ipv6_service_without_endpoints() {
    let c = cluster6(&[]);
    refused6(&c.topo.client, "client");
    refused6(&c.topo.pod("pod1b").ns, "pod1b");
}

/// Through node1's uplink TC program, over IPv6.
#[test]
fn a_client_is_refused_by_an_ipv6_service_without_endpoints_with_the_uplink_hook_at_tc() {
    let c = cluster6(&["--uplink-hook", "tc"]);
    refused6(&c.topo.client, "client");
}
