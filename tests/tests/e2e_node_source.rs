//! End to end: packets that leave a pod with the node's address as their
//! source once translated. A reply of a local pod to a NodePort client gets
//! the node's address (the frontend) as source; a pod reaching itself
//! through its Service is translated to the node's address. Entering the
//! stack through the pod's interface, or through `cni0` on a bridge CNI
//! (`LB_TEST_CNI=bridge`), such a packet is a martian unless `accept_local`
//! is set there; the TC program forwards them past the stack instead, and
//! the agent sets `accept_local` on no pod interface. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    topology::ClusterTopology,
    traffic::{http_get, PodServers},
};

/// A NodePort Service (port 80, node port 30080, to 8080) and a ClusterIP
/// one, both with pod1a, on node1, as their only endpoint.
const LOCAL_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: local-only, namespace: default}\n\
spec:\n  type: NodePort\n  clusterIP: 10.96.0.42\n  ports:\n  - {name: http, port: 80, nodePort: 30080, protocol: TCP, targetPort: 8080}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: local-only-1, namespace: default, labels: {kubernetes.io/service-name: local-only}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n\
endpoints:\n- {addresses: [\"10.244.1.2\"], nodeName: node1, conditions: {ready: true}}\n";

/// node1's address.
const NODE1: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// `LOCAL_ONLY`'s node port on node1.
const NODE_PORT: SocketAddrV4 = SocketAddrV4::new(NODE1, 30080);
/// `LOCAL_ONLY`'s cluster IP.
const CLUSTER_IP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 42), 80);
/// Bound on each request.
const WAIT: Duration = Duration::from_secs(2);

#[test]
fn node_port_replies_and_hairpin_leave_pods_without_accept_local() {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let _servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("local-only.yaml", LOCAL_ONLY).unwrap();
    let mut agent = Agent::start_ready(&topo.node1, &manifests, &[]).expect("lb-agent ready");
    for iface in ["vpod1a", "vpod1b", "all", "default"] {
        let key = format!("net.ipv4.conf.{iface}.accept_local");
        assert_eq!(topo.node1.sysctl(&key).unwrap(), "0", "{key}");
    }
    let (backend, other_pod) = (topo.pod("pod1a"), topo.pod("pod1b"));
    for round in 0..3 {
        // From outside to the node port: pod1a's replies leave as the node's.
        assert_eq!(
            http_get(&topo.client, NODE_PORT, WAIT)
                .unwrap_or_else(|e| panic!("client -> {NODE_PORT}, round {round}: {e:#}")),
            "pod1a"
        );
        // From another pod on the node to the node port: the same, at the pod hook.
        assert_eq!(
            http_get(&other_pod.ns, NODE_PORT, WAIT)
                .unwrap_or_else(|e| panic!("pod1b -> {NODE_PORT}, round {round}: {e:#}")),
            "pod1a"
        );
        // pod1a to itself through its Service: translated to the node's address both ways.
        assert_eq!(
            http_get(&backend.ns, CLUSTER_IP, WAIT)
                .unwrap_or_else(|e| panic!("pod1a -> {CLUSTER_IP}, round {round}: {e:#}")),
            "pod1a"
        );
        assert_eq!(
            http_get(&backend.ns, NODE_PORT, WAIT)
                .unwrap_or_else(|e| panic!("pod1a -> {NODE_PORT}, round {round}: {e:#}")),
            "pod1a"
        );
    }
    assert!(agent.is_running());
}
