//! End to end: ICMP errors about translated flows are translated back. A
//! UDP datagram to a Service whose backend port has no listener makes the
//! backend answer with an ICMP port unreachable about the translated
//! datagram; the client's connected socket must get `ECONNREFUSED`, from an
//! error whose source (`SO_EE_OFFENDER`) is the Service address, as if the
//! Service itself had refused. For a local backend (the error leaves the pod
//! through the pod-side TC program), a remote one (translated to node1's address; the error
//! comes back through the uplink program, XDP or TC), and a pod client. Each
//! case first proves the Service answers on a port that listens, so a
//! failure tells routing apart from translation. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{udp_service_on_one_pod, Agent, ManifestDir},
    netns::Netns,
    topology::ClusterTopology,
    traffic::{udp_refused_by, udp_request, PodServers, UDP_PORT},
};

/// The Service port whose target port listens (the pods' UDP servers).
const OPEN: u16 = 53;
/// The Service port whose target port nobody listens on.
const CLOSED: u16 = 54;
/// The backend port behind [`CLOSED`]: no pod serves it.
const CLOSED_TARGET: u16 = 5354;
/// A Service whose only endpoint is pod1a, on node1.
const LOCAL_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
/// A Service whose only endpoint is pod2a, on node2.
const REMOTE_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
/// Bound on every exchange.
const WAIT: Duration = Duration::from_secs(2);

/// A Service at `ip` (UDP [`OPEN`] to the pods' server, UDP [`CLOSED`] to
/// [`CLOSED_TARGET`]) whose only endpoint is `pod_ip` on `node`.
fn service(name: &str, ip: Ipv4Addr, pod_ip: Ipv4Addr, node: &str) -> String {
    udp_service_on_one_pod(
        name,
        ip,
        &[("dns", OPEN, UDP_PORT), ("closed", CLOSED, CLOSED_TARGET)],
        pod_ip,
        node,
    )
}

/// Topology, servers, manifests and a ready agent. Field order is drop order.
struct Cluster {
    _agent: Agent,
    _manifests: ManifestDir,
    _servers: PodServers,
    topo: ClusterTopology,
}

/// The cluster with both Services, the agent run with `extra` arguments.
fn cluster(extra: &[&str]) -> Cluster {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    let pod1a = topo.pod("pod1a").ip;
    let pod2a = topo.pod("pod2a").ip;
    manifests
        .write(
            "local.yaml",
            &service("icmp-local", LOCAL_SERVICE, pod1a, "node1"),
        )
        .unwrap();
    manifests
        .write(
            "remote.yaml",
            &service("icmp-remote", REMOTE_SERVICE, pod2a, "node2"),
        )
        .unwrap();
    let agent = Agent::start_ready(&topo.node1, &manifests, extra).expect("lb-agent ready");
    Cluster {
        _agent: agent,
        _manifests: manifests,
        _servers: servers,
        topo,
    }
}

/// From `client` (`who`, for messages), the Service at `service` whose only
/// backend is `backend`. The controls: its open port answers with the
/// backend's name from the Service address (routing and the translation of
/// replies work), and the backend reached directly from `direct` refuses the
/// closed port itself (it answers with a port unreachable, and the socket
/// helper reads it). Then a datagram to the Service's closed port is refused
/// by the Service address.
fn refused_by_the_service(
    c: &Cluster,
    client: &Netns,
    who: &str,
    service: Ipv4Addr,
    backend: &str,
    direct: (&Netns, &str),
) {
    let open = SocketAddrV4::new(service, OPEN);
    let (body, from) = udp_request(client, open, WAIT)
        .unwrap_or_else(|e| panic!("control: {who} -> {open} (listening): {e:#}"));
    assert_eq!(
        (body.as_str(), from),
        (backend, SocketAddr::V4(open)),
        "control: {who} -> {open} answered by {backend} from the Service address"
    );
    let backend_ip = c.topo.pod(backend).ip;
    let target = SocketAddrV4::new(backend_ip, CLOSED_TARGET);
    let (direct, direct_who) = direct;
    let offender = udp_refused_by(direct, target, WAIT).unwrap_or_else(|e| {
        panic!("control: {direct_who} -> {target} directly (no Service) must be refused: {e:#}")
    });
    assert_eq!(offender, backend_ip, "control: {direct_who} -> {target}");

    let closed = SocketAddrV4::new(service, CLOSED);
    let offender = udp_refused_by(client, closed, WAIT).unwrap_or_else(|e| {
        panic!(
            "{who} -> {closed} (to {backend}:{CLOSED_TARGET}, no listener) must fail with \
             ECONNREFUSED from an ICMP port unreachable: {e:#}"
        )
    });
    assert_eq!(
        offender, service,
        "{who} -> {closed}: the ICMP error's source is the Service address, not the backend's"
    );
}

/// Case A at the pod hook: the backend's error leaves pod1a through the
/// pod-side TC program, towards the client outside the cluster.
#[test]
fn a_client_is_refused_by_the_service_for_a_closed_port_of_a_local_backend() {
    let c = cluster(&[]);
    let node1 = (&c.topo.node1, "node1");
    refused_by_the_service(&c, &c.topo.client, "client", LOCAL_SERVICE, "pod1a", node1);
}

/// The backend on node2 sees node1's address (SNAT); its error comes back
/// through node1's uplink XDP program.
#[test]
fn a_client_is_refused_by_the_service_for_a_closed_port_of_a_remote_backend() {
    let c = cluster(&[]);
    let node1 = (&c.topo.node1, "node1");
    refused_by_the_service(&c, &c.topo.client, "client", REMOTE_SERVICE, "pod2a", node1);
}

/// A pod of node1 (pod1b) reaching a Service backed by another pod of the
/// same node (pod1a): both directions go through pod-side TC programs.
#[test]
fn a_pod_is_refused_by_the_service_for_a_closed_port_of_a_local_backend() {
    let c = cluster(&[]);
    let pod1b = &c.topo.pod("pod1b").ns;
    refused_by_the_service(&c, pod1b, "pod1b", LOCAL_SERVICE, "pod1a", (pod1b, "pod1b"));
}

/// As the local case, with the uplink program at TC (the request enters
/// through it; the error still leaves through the pod's program).
#[test]
fn a_client_is_refused_for_a_local_backend_with_the_uplink_hook_at_tc() {
    let c = cluster(&["--uplink-hook", "tc"]);
    let node1 = (&c.topo.node1, "node1");
    refused_by_the_service(&c, &c.topo.client, "client", LOCAL_SERVICE, "pod1a", node1);
}

/// As the remote case, with the error coming back through the uplink's TC
/// program instead of XDP.
#[test]
fn a_client_is_refused_for_a_remote_backend_with_the_uplink_hook_at_tc() {
    let c = cluster(&["--uplink-hook", "tc"]);
    let node1 = (&c.topo.node1, "node1");
    refused_by_the_service(&c, &c.topo.client, "client", REMOTE_SERVICE, "pod2a", node1);
}
