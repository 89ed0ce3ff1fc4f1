//! End to end: path MTU discovery through a Service (issue 12). A router
//! namespace forwards over a 1280-byte hop and answers a larger packet (Linux
//! TCP sets DF) with "fragmentation needed", where a bridge would drop it
//! silently. 1 MiB moves through the Service only if that error reaches the
//! sender about a packet its socket knows, which takes the data path's
//! translation:
//!
//! - client side: a far client behind the router, whose link to it has the
//!   narrow MTU on the router's end only (the client announces an MSS of
//!   1460). The backend's 1 MiB response leaves node1 from the Service
//!   address; the router's error about it goes to the Service address, is
//!   routed to node1 and must reach the backend about its own packet (pod1a,
//!   local; pod2a, remote, about node1's SNAT address).
//! - pod side: node1 and node2 reach each other's pods through the router,
//!   whose routes to them have `mtu lock 1280`. The client's 1 MiB upload
//!   leaves node1 from node1's address (SNAT) to pod2a, and the router's
//!   error about it must reach the client about client -> Service; pod1b's
//!   upload (no SNAT) the same about pod1b -> Service. pod1c's download from
//!   pod2a is the control: the router's error goes to pod2a about pod2a ->
//!   pod1c, before node1 translates anything, so path MTU discovery needs no
//!   translation there (it passes without it).
//!
//! Every case runs with the uplink program at the harness's default hook
//! (XDP with `--xdp-on-veth`: every sender here, the far client too,
//! completes its checksums) and at TC. Each transfer is bounded (a stall is
//! the failure) and follows a small exchange on the same path (routing told
//! apart from translation); the router must have sent destination
//! unreachables meanwhile, and the sender must hold a 1280-byte path MTU to
//! its peer. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    bulk::{download, upload, BulkServers, BULK_PORT, SIZE},
    netns::Netns,
    topology::ClusterTopology,
};
use Transfer::{Download, Upload};

/// The narrow hop's MTU.
const MTU: &str = "1280";
/// A Service whose only endpoint is pod1a, on node1.
const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 70), 80);
/// A Service whose only endpoint is pod2a, on node2 (SNAT to node1's address).
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 71), 80);
/// The router's address on the LAN (also in the routes below), and its
/// settings: it forwards, checks no reverse path, and sends no redirects (on
/// the pod side it forwards back out of the LAN port a packet came in by).
const ROUTER: &str = "192.168.50.20";
/// See [`ROUTER`].
const ROUTER_SETUP: &str = "sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    sysctl -qw net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.all.send_redirects=0
    sysctl -qw net.ipv4.conf.default.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0";
/// The router's routes to each node's pods for [`Hop::PodSide`], with the
/// narrow [`MTU`] (forwarding honours a route's MTU; `lock` keeps it).
const POD_SIDE_ROUTES: &str = "ip route add 10.244.2.0/24 via 192.168.50.12 mtu lock 1280
    ip route add 10.244.1.0/24 via 192.168.50.11 mtu lock 1280";
/// The far client's address, behind the router on 192.168.60.0/24.
const FAR_CLIENT: &str = "192.168.60.10";
/// The router's end of the far client's link (`eth1`), and its route to Services.
const FAR_ROUTER_SETUP: &str = "ip addr add 192.168.60.1/24 dev eth1
    ip link set eth1 up
    sysctl -qw net.ipv4.conf.eth1.rp_filter=0 net.ipv4.conf.eth1.send_redirects=0
    ip route add 10.96.0.0/12 via 192.168.50.11";
/// The far client's end (`eth0`), its route, and complete checksums (as the
/// LAN's hosts send them: XDP on node1's uplink cannot rewrite partial ones).
const FAR_CLIENT_SETUP: &str = "ip addr add 192.168.60.10/24 dev eth0
    ip link set eth0 up
    ip link set lo up
    ip route add default via 192.168.60.1
    ethtool -K eth0 tx off";

/// A ClusterIP Service at `addr`, TCP to [`BULK_PORT`], whose only endpoint
/// is `pod` on `node`.
fn service(name: &str, addr: SocketAddrV4, pod: Ipv4Addr, node: &str) -> String {
    let (ip, port) = (addr.ip(), addr.port());
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
spec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: {port}, protocol: TCP, targetPort: {BULK_PORT}}}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
addressType: IPv4\nports:\n- {{name: http, port: {BULK_PORT}, protocol: TCP}}\n\
endpoints:\n- {{addresses: [\"{pod}\"], nodeName: {node}, conditions: {{ready: true}}}}\n"
    )
}

/// Where the 1280-byte hop is.
#[derive(Clone, Copy, PartialEq)]
enum Hop {
    /// Between the router and a far client (the router's `eth1`).
    ClientSide,
    /// Between node1 and node2's pods, both ways (the router's routes).
    PodSide,
}

/// Which way the big transfer goes.
#[derive(Clone, Copy, Debug)]
enum Transfer {
    /// `GET /big`: [`SIZE`] bytes from the backend.
    Download,
    /// `POST /upload` of [`SIZE`] bytes to the backend.
    Upload,
}

/// Topology, hop, servers, manifests and a ready agent. Field order is drop order.
struct Cluster {
    _agent: Agent,
    _manifests: ManifestDir,
    _servers: BulkServers,
    /// The far client ([`Hop::ClientSide`]).
    far: Option<Netns>,
    router: Netns,
    topo: ClusterTopology,
}

impl Cluster {
    /// The cluster with `hop`, both Services, the agent run with `extra` arguments.
    fn new(hop: Hop, extra: &[&str]) -> Self {
        let topo = ClusterTopology::new().expect("building the namespace topology");
        let router = topo
            .add_lan_host("router", "lan3", &format!("{ROUTER}/24"))
            .expect("the router on the LAN");
        router.script(ROUTER_SETUP);
        let far = (hop == Hop::ClientSide).then(|| far_client(&topo, &router));
        if hop == Hop::PodSide {
            let node1 = "ip route replace 10.244.2.0/24 via 192.168.50.20";
            let node2 = "ip route replace 10.244.1.0/24 via 192.168.50.20";
            for (ns, script) in [
                (&router, POD_SIDE_ROUTES),
                (&topo.node1, node1),
                (&topo.node2, node2),
            ] {
                ns.script(script);
            }
        }
        let servers = BulkServers::start(
            &[&topo.pod("pod1a").ns, &topo.pod("pod2a").ns],
            Ipv4Addr::UNSPECIFIED.into(),
        );
        let manifests = ManifestDir::new().unwrap();
        for (name, addr, pod, node) in [
            ("pmtu-local", LOCAL, "pod1a", "node1"),
            ("pmtu-remote", REMOTE, "pod2a", "node2"),
        ] {
            let yaml = service(name, addr, topo.pod(pod).ip, node);
            manifests.write(&format!("{name}.yaml"), &yaml).unwrap();
        }
        let dir = manifests.path().to_string_lossy().into_owned();
        let mut args = vec!["--manifests", &dir];
        args.extend_from_slice(extra);
        let mut agent = Agent::start_with(&topo.node1, &args).expect("starting lb-agent");
        let ready = agent.wait_ready(Duration::from_secs(30));
        ready.expect("lb-agent ready");
        Self {
            _agent: agent,
            _manifests: manifests,
            _servers: servers,
            far,
            router,
            topo,
        }
    }

    /// The router's `Icmp: OutDestUnreachs` (`/proc/net/snmp`).
    fn router_unreachables(&self) -> u64 {
        let snmp = String::from_utf8(self.router.exec(&["cat", "/proc/net/snmp"]).unwrap().stdout)
            .unwrap();
        let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
        let at = names
            .split_whitespace()
            .position(|n| n == "OutDestUnreachs")
            .unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    }

    /// From `client` (`who`), a small exchange with `service` (the control),
    /// then `transfer` of [`SIZE`] bytes, which must complete while the
    /// router sends errors; then `sender` holds a 1280-byte path MTU to `peer`.
    fn moves_a_mebibyte(
        &self,
        (client, who): (&Netns, &str),
        service: SocketAddrV4,
        transfer: Transfer,
        (sender, peer): (&Netns, &str),
    ) {
        let echoed = upload(client, service, 100)
            .unwrap_or_else(|e| panic!("control: {who} posts 100 bytes to {service}: {e:#}"));
        assert_eq!(echoed, 100, "control: {who} -> {service}");
        let before = self.router_unreachables();
        let moved = match transfer {
            Download => download(client, service),
            Upload => upload(client, service, SIZE),
        };
        let sent = self.router_unreachables() - before;
        let what = format!("{who}: {transfer:?} of {SIZE} bytes through {service}");
        let moved = moved.unwrap_or_else(|e| panic!("{what}, {sent} unreachables sent: {e:#}"));
        assert_eq!(moved, SIZE, "{what}");
        assert!(
            sent > 0,
            "{what}: the router sent no unreachable: the hop did nothing"
        );
        let route =
            String::from_utf8(sender.exec(&["ip", "route", "get", peer]).unwrap().stdout).unwrap();
        let learned = route.contains(&format!("mtu {MTU}"));
        assert!(
            learned,
            "{what}: the sender learned no path MTU to {peer}: {route}"
        );
    }
}

/// The far client: a namespace linked to the router (its `eth1`, with the
/// narrow MTU; the client's end keeps 1500), routes both ways via the router.
fn far_client(topo: &ClusterTopology, router: &Netns) -> Netns {
    let far = Netns::new("farclient").expect("the far client's namespace");
    let name = far.name();
    let link = format!("ip link add eth1 mtu {MTU} type veth peer name eth0 netns {name}");
    router.script(&(link + "\n" + FAR_ROUTER_SETUP));
    far.script(FAR_CLIENT_SETUP);
    topo.node1
        .script("ip route add 192.168.60.0/24 via 192.168.50.20");
    far
}

/// Case 1: the far client downloads from pod1a, then from pod2a (which
/// replied to node1's SNAT address).
fn far_client_downloads(extra: &[&str]) {
    let c = Cluster::new(Hop::ClientSide, extra);
    let far = (c.far.as_ref().unwrap(), "far client");
    let pod1a = (&c.topo.pod("pod1a").ns, FAR_CLIENT);
    c.moves_a_mebibyte(far, LOCAL, Download, pod1a);
    let pod2a = (&c.topo.pod("pod2a").ns, "192.168.50.11");
    c.moves_a_mebibyte(far, REMOTE, Download, pod2a);
}

/// Case 2: the client uploads to pod2a (SNAT at node1).
fn client_uploads(extra: &[&str]) {
    let c = Cluster::new(Hop::PodSide, extra);
    let (client, service) = (&c.topo.client, REMOTE.ip().to_string());
    c.moves_a_mebibyte((client, "client"), REMOTE, Upload, (client, &service));
}

/// Case 3: pod1c downloads from pod2a (the control, no translation
/// involved), pod1b uploads to it. Two pods: a path MTU either transfer
/// learned would shrink the MSS the other's peer announces.
fn pods_download_and_upload(extra: &[&str]) {
    let c = Cluster::new(Hop::PodSide, extra);
    let (downloader, backend) = (c.topo.pod("pod1c"), &c.topo.pod("pod2a").ns);
    let peer = downloader.ip.to_string();
    let (ns, who) = (&downloader.ns, "pod1c");
    c.moves_a_mebibyte((ns, who), REMOTE, Download, (backend, &peer));
    let service = REMOTE.ip().to_string();
    let uploader = &c.topo.pod("pod1b").ns;
    c.moves_a_mebibyte((uploader, "pod1b"), REMOTE, Upload, (uploader, &service));
}

/// The uplink program at TC instead of the default hook.
const TC: &[&str] = &["--uplink-hook", "tc"];

#[test]
fn a_far_client_downloads_a_mebibyte_through_a_1280_byte_hop() {
    far_client_downloads(&[]);
}

#[test]
fn a_far_client_downloads_a_mebibyte_through_a_1280_byte_hop_with_the_uplink_hook_at_tc() {
    far_client_downloads(TC);
}

#[test]
fn a_client_uploads_a_mebibyte_to_a_remote_backend_through_a_1280_byte_hop() {
    client_uploads(&[]);
}

#[test]
fn a_client_uploads_a_mebibyte_through_a_1280_byte_hop_with_the_uplink_hook_at_tc() {
    client_uploads(TC);
}

#[test]
fn pods_download_and_upload_a_mebibyte_through_a_1280_byte_hop_to_a_remote_backend() {
    pods_download_and_upload(&[]);
}

#[test]
fn pods_download_and_upload_a_mebibyte_through_a_1280_byte_hop_with_the_uplink_hook_at_tc() {
    pods_download_and_upload(TC);
}
