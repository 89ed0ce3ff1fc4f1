//! End to end: Service traffic through node1's netfilter. kube-proxy puts a
//! rule in the FORWARD chain (KUBE-FORWARD) that drops whatever conntrack
//! finds INVALID (`-m conntrack --ctstate INVALID -j DROP`; firewalld and
//! Calico have the like). Conntrack must then see each flow under one pair
//! of tuples: translated to the backend on its way in, and its replies
//! from the backend until they have left the stack (translated back at TC
//! egress). A reply the data path translated back before conntrack saw it
//! (a SYN-ACK from the Service address that no entry expects) would be
//! INVALID and dropped: every test here installs the rule (once, whatever
//! `LB_TEST_FIREWALL` says) and requires its counter to stay at zero.
//!
//! Forwarded traffic must also keep meeting the FORWARD chain, where an
//! iptables-based `NetworkPolicy` (Calico's, kube-router's) drops what a pod
//! may not receive: a drop rule for the backend pod stops its Service's
//! traffic, from outside and from a pod on the node, and the same
//! connection goes through once the rule is gone (so the test cannot pass
//! for any other reason). Runs on every CNI layout (`LB_TEST_CNI`) and
//! uplink hook (`LB_TEST_UPLINK_HOOK`). Needs root.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    netns::Netns,
    topology::{ClusterTopology, Pod, NODE1_IP},
    traffic::{http_get, udp_request, HttpClient, PodServers},
};

/// The ClusterIP of the Service on pod1a, on node1 (the agent's node).
const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
/// The ClusterIP of the Service on pod2a, on node2 (reached with SNAT).
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 71);
/// The local Service's (TCP, UDP) frontends: its ClusterIP, its node ports.
const LOCAL: [(SocketAddrV4, SocketAddrV4); 2] = [
    (
        SocketAddrV4::new(LOCAL_IP, 80),
        SocketAddrV4::new(LOCAL_IP, 53),
    ),
    (
        SocketAddrV4::new(NODE1_IP, 30070),
        SocketAddrV4::new(NODE1_IP, 30071),
    ),
];
/// The remote Service's (TCP, UDP) frontends: its ClusterIP, its node ports.
const REMOTE: [(SocketAddrV4, SocketAddrV4); 2] = [
    (
        SocketAddrV4::new(REMOTE_IP, 80),
        SocketAddrV4::new(REMOTE_IP, 53),
    ),
    (
        SocketAddrV4::new(NODE1_IP, 30072),
        SocketAddrV4::new(NODE1_IP, 30073),
    ),
];
/// New connections, requests on one kept-alive connection and datagrams per frontend.
const ROUNDS: usize = 10;
/// Bound on each connect, request and datagram.
const WAIT: Duration = Duration::from_secs(2);
/// Bound on a connect the FORWARD drop rule must stop: past TCP's first
/// retransmission of the SYN (1 s, its initial RTO), so the SYN and its
/// retransmission (which may meet the data path's flow entry of the first)
/// both meet the rule; a connection the rule let through would be
/// answered in milliseconds.
const DROPPED_WAIT: Duration = Duration::from_millis(1300);

/// Topology, servers, manifests and a ready agent. Field order is drop order.
struct Cluster {
    _agent: Agent,
    _manifests: ManifestDir,
    _servers: PodServers,
    topo: ClusterTopology,
}

/// The cluster with kube-proxy's INVALID drop rule in node1, a NodePort
/// Service on pod1a and one on pod2a, and the agent ready.
fn cluster() -> Cluster {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    topo.install_invalid_drop()
        .expect("kube-proxy's INVALID drop rule in node1");
    let servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    let (local, remote) = (topo.pod("pod1a"), topo.pod("pod2a"));
    manifests
        .write("local.yaml", &service("local", &LOCAL, local))
        .unwrap();
    manifests
        .write("remote.yaml", &service("remote", &REMOTE, remote))
        .unwrap();
    let agent = Agent::start_ready(&topo.node1, &manifests, &[]).expect("lb-agent ready");
    Cluster {
        _agent: agent,
        _manifests: manifests,
        _servers: servers,
        topo,
    }
}

/// A NodePort Service `name` with `frontends` (as [`LOCAL`]: TCP 80 and
/// UDP 53 at its ClusterIP, and its node ports) whose only endpoint is `pod`.
fn service(name: &str, frontends: &[(SocketAddrV4, SocketAddrV4); 2], pod: &Pod) -> String {
    let [(http, dns), (http_node, dns_node)] = frontends.map(|(tcp, udp)| (tcp.port(), udp.port()));
    let (cluster_ip, ip, node) = (frontends[0].0.ip(), pod.ip, &pod.node);
    format!(
        "apiVersion: v1\nkind: Service\n\
metadata: {{name: {name}, namespace: default}}\n\
spec:\n  type: NodePort\n  clusterIP: {cluster_ip}\n  ports:\n\
\x20 - {{name: http, port: {http}, nodePort: {http_node}, protocol: TCP, targetPort: 8080}}\n\
\x20 - {{name: dns, port: {dns}, nodePort: {dns_node}, protocol: UDP, targetPort: 5353}}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
addressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n\
- {{name: dns, port: 5353, protocol: UDP}}\n\
endpoints:\n- {{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}\n"
    )
}

/// From `from` (`who`, for messages) to each of `frontends`: [`ROUNDS`] new
/// TCP connections, [`ROUNDS`] requests on one kept-alive connection and
/// [`ROUNDS`] UDP requests, all answered by `pod` (UDP from the frontend).
fn exchanges(from: &Netns, who: &str, frontends: &[(SocketAddrV4, SocketAddrV4)], pod: &str) {
    for &(tcp, udp) in frontends {
        for round in 0..ROUNDS {
            let body = http_get(from, tcp, WAIT)
                .unwrap_or_else(|e| panic!("{who} -> {tcp}, connection {round}: {e:#}"));
            assert_eq!(body, pod, "{who} -> {tcp}, connection {round}");
        }
        let mut kept = HttpClient::connect(from, tcp, WAIT)
            .unwrap_or_else(|e| panic!("{who} -> {tcp}, kept-alive connection: {e:#}"));
        for request in 0..ROUNDS {
            let body = kept.get().unwrap_or_else(|e| {
                panic!("{who} -> {tcp}, request {request} on one connection: {e:#}")
            });
            assert_eq!(
                body, pod,
                "{who} -> {tcp}, request {request} on one connection"
            );
        }
        for round in 0..ROUNDS {
            let (body, source) = udp_request(from, udp, WAIT)
                .unwrap_or_else(|e| panic!("{who} -> {udp}, datagram {round}: {e:#}"));
            assert_eq!(
                (body.as_str(), source),
                (pod, SocketAddr::V4(udp)),
                "{who} -> {udp}, datagram {round}: answered by the pod from the frontend"
            );
        }
    }
}

/// node1's INVALID drop rule dropped nothing.
fn nothing_invalid(topo: &ClusterTopology) {
    let drops = topo.invalid_drops().expect("reading node1's FORWARD chain");
    assert_eq!(
        drops, 0,
        "conntrack found {drops} packets INVALID in node1's FORWARD chain: \
         it saw tuples the data path did not keep to"
    );
}

#[test]
fn a_client_reaches_a_local_backend_past_kube_proxys_invalid_drop() {
    let c = cluster();
    exchanges(&c.topo.client, "client", &LOCAL, "pod1a");
    nothing_invalid(&c.topo);
}

#[test]
fn a_client_reaches_a_remote_backend_past_kube_proxys_invalid_drop() {
    let c = cluster();
    exchanges(&c.topo.client, "client", &REMOTE, "pod2a");
    nothing_invalid(&c.topo);
}

#[test]
fn a_pod_reaches_a_local_backend_past_kube_proxys_invalid_drop() {
    let c = cluster();
    exchanges(&c.topo.pod("pod1b").ns, "pod1b", &LOCAL, "pod1a");
    nothing_invalid(&c.topo);
}

/// Adds (`-I`) or deletes (`-D`) node1's FORWARD rule dropping everything
/// to `ip`, as an iptables `NetworkPolicy` isolating that pod would.
fn policy_drop(topo: &ClusterTopology, op: &str, ip: Ipv4Addr) {
    let ip = ip.to_string();
    topo.node1
        .exec(&["iptables", op, "FORWARD", "-d", &ip, "-j", "DROP"])
        .unwrap_or_else(|e| panic!("iptables {op} in node1: {e:#}"));
}

/// The packets node1's FORWARD rule dropping everything to `ip` has dropped.
fn policy_drops(topo: &ClusterTopology, ip: Ipv4Addr) -> u64 {
    let out = topo
        .node1
        .exec(&["iptables", "-L", "FORWARD", "-n", "-v", "-x"])
        .expect("listing node1's FORWARD chain");
    let (rules, ip) = (String::from_utf8_lossy(&out.stdout), ip.to_string());
    rules
        .lines()
        .map(|rule| rule.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 9 && f[2] == "DROP" && f[8] == ip)
        .and_then(|f| f[0].parse().ok())
        .unwrap_or_else(|| panic!("no drop rule for {ip} in node1's FORWARD chain:\n{rules}"))
}

/// From `from` (`who`, for messages), with a FORWARD drop rule for pod1a,
/// connections to each frontend of pod1a's Service time out, the rule
/// counting their SYNs; once the rule is deleted they are answered.
fn policy_applies(topo: &ClusterTopology, from: &Netns, who: &str) {
    let backend = topo.pod("pod1a").ip;
    policy_drop(topo, "-I", backend);
    for (tcp, _) in LOCAL {
        match HttpClient::connect(from, tcp, DROPPED_WAIT) {
            Ok(_) => panic!("{who} -> {tcp}: connected past the FORWARD drop rule for {backend}"),
            Err(e) => assert!(
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::TimedOut),
                "{who} -> {tcp}: expected a timeout (SYN dropped in FORWARD), got {e:#}"
            ),
        }
    }
    assert!(
        policy_drops(topo, backend) > 0,
        "the FORWARD drop rule for {backend} saw none of {who}'s SYNs"
    );
    policy_drop(topo, "-D", backend);
    for (tcp, _) in LOCAL {
        let body = http_get(from, tcp, WAIT)
            .unwrap_or_else(|e| panic!("{who} -> {tcp} after the drop rule is gone: {e:#}"));
        assert_eq!(body, "pod1a", "{who} -> {tcp} after the drop rule is gone");
    }
}

#[test]
fn a_forward_drop_rule_for_the_backend_stops_a_clients_service_traffic() {
    let c = cluster();
    policy_applies(&c.topo, &c.topo.client, "client");
}

#[test]
fn a_forward_drop_rule_for_the_backend_stops_a_pods_service_traffic() {
    let c = cluster();
    policy_applies(&c.topo, &c.topo.pod("pod1b").ns, "pod1b");
}
