//! End to end: an overlay CNI (issue 12). The topology is always
//! [`Cni::BridgeVxlan`], flannel's layout: pods on `cni0`, the other node's
//! pods behind a `vxlan0` device (UDP 8472 between the nodes' addresses).
//! pod1b reaches a Service whose only endpoint is pod2a, on node2: its
//! packets leave node1 translated (pod1b -> pod2a, no SNAT) and encapsulated,
//! and pod2a's replies come back encapsulated, so the uplink program sees
//! only their outer UDP header (and passes it), and after decapsulation on
//! `vxlan0` they are routed to pod1b untranslated. The program at TC egress
//! of pod1b's interface must give them the Service's address back: TCP
//! (new connections and a kept-alive one), UDP (answered from the Service
//! address) and pod2a's port unreachable (ECONNREFUSED from the Service
//! address) all reach pod1b only then; the replies must have come in over
//! the overlay. A client outside reaching the same Service (SNAT to node1's
//! address, its replies over the LAN) works as before. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    netns::Netns,
    topology::{ClusterTopology, Cni, SenderChecksums, VXLAN_DEVICE},
    traffic::{http_get, udp_refused_by, udp_request, HttpClient, PodServers, HTTP_PORT},
};

/// A Service whose only endpoint is pod2a, on node2: TCP 80 to its HTTP
/// server, UDP 53 to its UDP server, UDP 54 to a port nobody listens on.
const REMOTE_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: overlay-remote, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.80\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n  - {name: closed, port: 54, protocol: UDP, targetPort: 5999}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: overlay-remote-1, namespace: default, labels: {kubernetes.io/service-name: overlay-remote}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n- {name: dns, port: 5353, protocol: UDP}\n- {name: closed, port: 5999, protocol: UDP}\n\
endpoints:\n- {addresses: [\"10.244.2.2\"], nodeName: node2, conditions: {ready: true}}\n";

/// The Service's address.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
/// Its TCP frontend.
const WEB: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
/// Its UDP frontend.
const DNS: SocketAddrV4 = SocketAddrV4::new(VIP, 53);
/// Its UDP frontend to a closed port of pod2a.
const CLOSED: SocketAddrV4 = SocketAddrV4::new(VIP, 54);
/// Bound on each request: a reply that never comes is the failure.
const WAIT: Duration = Duration::from_secs(2);
/// Requests of each kind.
const ROUNDS: usize = 3;

/// The overlay topology, pod servers, the Service and a ready agent. Field
/// order is drop order.
struct Overlay {
    _agent: Agent,
    _manifests: ManifestDir,
    _servers: PodServers,
    topo: ClusterTopology,
}

impl Overlay {
    fn new() -> Self {
        let topo = ClusterTopology::with(SenderChecksums::Complete, Cni::BridgeVxlan)
            .expect("building the overlay topology");
        let servers = PodServers::start(&topo).expect("starting pod servers");
        // The overlay itself carries pod traffic (routing told apart from translation).
        let pod2a = SocketAddrV4::new(topo.pod("pod2a").ip, HTTP_PORT);
        let direct = http_get(&topo.pod("pod1b").ns, pod2a, WAIT)
            .unwrap_or_else(|e| panic!("pod1b -> {pod2a} over the overlay, no agent: {e:#}"));
        assert_eq!(direct, "pod2a");
        let manifests = ManifestDir::new().unwrap();
        manifests.write("overlay-remote.yaml", REMOTE_ONLY).unwrap();
        let dir = manifests.path().to_string_lossy().into_owned();
        let mut agent = Agent::start_with(&topo.node1, &["--manifests", &dir]).expect("lb-agent");
        agent
            .wait_ready(Duration::from_secs(30))
            .expect("lb-agent ready");
        Self {
            _agent: agent,
            _manifests: manifests,
            _servers: servers,
            topo,
        }
    }

    /// Packets node1's `vxlan0` has received (decapsulated) so far.
    fn overlay_rx_packets(&self) -> u64 {
        let path = format!("/sys/class/net/{VXLAN_DEVICE}/statistics/rx_packets");
        // `ip netns exec` mounts the namespace's own /sys.
        let out = self
            .topo
            .node1
            .exec(&["cat", &path])
            .expect("reading vxlan0's counters");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a packet count")
    }
}

/// TCP (new connections, then one kept alive) and UDP from `from` to the
/// Service are answered by pod2a, the datagrams from the Service's address.
fn reaches_pod2a(from: &Netns, who: &str) {
    for round in 0..ROUNDS {
        let body = http_get(from, WEB, WAIT)
            .unwrap_or_else(|e| panic!("{who} -> {WEB}, connection {round}: {e:#}"));
        assert_eq!(body, "pod2a", "{who} -> {WEB}, connection {round}");
    }
    let mut kept = HttpClient::connect(from, WEB, WAIT)
        .unwrap_or_else(|e| panic!("{who} -> {WEB}, kept-alive connection: {e:#}"));
    for request in 0..ROUNDS {
        let body = kept
            .get()
            .unwrap_or_else(|e| panic!("{who} -> {WEB}, kept-alive request {request}: {e:#}"));
        assert_eq!(
            body, "pod2a",
            "{who} -> {WEB}, kept-alive request {request}"
        );
    }
    for round in 0..ROUNDS {
        let (body, answered_by) = udp_request(from, DNS, WAIT)
            .unwrap_or_else(|e| panic!("{who} -> {DNS}, datagram {round}: {e:#}"));
        assert_eq!(
            (body.as_str(), answered_by),
            ("pod2a", SocketAddr::V4(DNS)),
            "{who} -> {DNS}, datagram {round}: answered from the Service address"
        );
    }
}

#[test]
fn a_pod_reaches_a_service_on_the_other_node_over_the_overlay() {
    let cluster = Overlay::new();
    let pod1b = &cluster.topo.pod("pod1b").ns;
    let before = cluster.overlay_rx_packets();
    reaches_pod2a(pod1b, "pod1b");
    // pod2a's port unreachable comes back over the overlay too, about
    // pod1b -> pod2a:5999: pod1b must see it about its own datagram, from
    // the Service.
    let offender =
        udp_refused_by(pod1b, CLOSED, WAIT).unwrap_or_else(|e| panic!("pod1b -> {CLOSED}: {e:#}"));
    assert_eq!(
        offender, VIP,
        "pod2a's port unreachable reaches pod1b from the Service address"
    );
    let carried = cluster.overlay_rx_packets() - before;
    assert!(
        carried >= 4 * ROUNDS as u64,
        "pod2a's replies came in over {VXLAN_DEVICE}: {carried} packets"
    );
}

#[test]
fn a_client_outside_reaches_the_same_service() {
    let cluster = Overlay::new();
    reaches_pod2a(&cluster.topo.client, "the client");
    // And a pod still, on the same node and agent.
    reaches_pod2a(&cluster.topo.pod("pod1b").ns, "pod1b");
}
