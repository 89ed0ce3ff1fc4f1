//! End to end over IPv6 (issue 16): the built agent on node1 of a
//! dual-stack namespace cluster serves Services' IPv6 cluster IPs with real
//! TCP and UDP, beside their IPv4 ones; on an IPv6-only cluster (no IPv4
//! address but loopback anywhere) it serves an IPv6 cluster IP and a node
//! port on node1's IPv6 address to the client. The end-to-end cases are
//! flows from pods to any backend and from outside the cluster to any
//! backend: flows to other nodes' backends are translated to node1's IPv6
//! address and forwarded past the stack (`tests/forwarding6.rs` has their
//! bytes). Needs root.

use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    cluster::assert_spread,
    require_ipv6,
    topology::{ClusterTopology, Cni, Family, SenderChecksums, NODE1_IP6},
    traffic::{http_distribution, udp_distribution, HttpClient, PodServers},
};

/// The dual-stack Service's IPv6 cluster IP (its IPv4 one is 10.96.0.30).
const WEB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30);
/// The IPv6-only Service's cluster IP, served by node1's pods only.
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x31);
/// local6's TCP node port.
const LOCAL6_NODE_PORT: u16 = 30680;
const DEADLINE: Duration = Duration::from_mins(1);

/// The slice endpoints of pods `(node, host)`: `fd00:244:<node>::<host>`.
fn v6_endpoints(pods: &[(u8, u16)]) -> String {
    let mut out = String::new();
    for (node, host) in pods {
        let _ = write!(
            out,
            "  - addresses: [\"fd00:244:{node}::{host:x}\"]\n    conditions: {{ready: true}}\n    nodeName: node{node}\n"
        );
    }
    out
}

/// `web6`: dual-stack, its IPv6 backends `web6_pods` and its IPv4 ones
/// pod1b, pod1c and pod2a (pod1a is the in-cluster client). `local6`:
/// IPv6 only, pod1b and pod1c (on node1), with node ports.
fn manifests(web6_pods: &[(u8, u16)]) -> String {
    let ports = "ports:\n  - {name: http, port: 8080, protocol: TCP}\n  - {name: dns, port: 5353, protocol: UDP}\n";
    let service_ports = "  ports:\n    - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n    - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n";
    let slice = |name: &str, service: &str, family: &str, endpoints: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\n{ports}endpoints:\n{endpoints}"
        )
    };
    let v4 = "  - addresses: [\"10.244.1.3\"]\n    conditions: {ready: true}\n    nodeName: node1\n  - addresses: [\"10.244.1.4\"]\n    conditions: {ready: true}\n    nodeName: node1\n  - addresses: [\"10.244.2.2\"]\n    conditions: {ready: true}\n    nodeName: node2\n";
    [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: default}}\nspec:\n  type: ClusterIP\n  clusterIP: 10.96.0.30\n  clusterIPs: [10.96.0.30, \"{WEB6}\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n{service_ports}"
        ),
        slice("web6-v4", "web6", "IPv4", v4),
        slice("web6-v6", "web6", "IPv6", &v6_endpoints(web6_pods)),
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: local6, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: \"{LOCAL6}\"\n  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n  ports:\n    - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {LOCAL6_NODE_PORT}}}\n    - {{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30653}}\n"
        ),
        slice("local6-v6", "local6", "IPv6", &v6_endpoints(&[(1, 3), (1, 4)])),
    ]
    .concat()
}

/// web6's IPv6 backends at the start: pod1b, pod1c, pod2a.
const WEB6_PODS: [(u8, u16); 3] = [(1, 3), (1, 4), (2, 2)];

/// A dual-stack cluster (the CNI layout of the run), its pods' servers
/// on both families, and a ready agent reading the manifests above.
struct Dual {
    agent: Agent,
    manifests: ManifestDir,
    _servers: PodServers,
    topo: ClusterTopology,
}

fn dual(checksums: SenderChecksums, extra: &[&str]) -> Dual {
    cluster(Family::Dual, checksums, extra)
}

/// The cluster of [`dual`] in `family`'s addresses: on an IPv6-only one the
/// agent has no IPv4 node address (nor `--node-ip`), and IPv4's frontends
/// are written but reach nothing.
fn cluster(family: Family, checksums: SenderChecksums, extra: &[&str]) -> Dual {
    require_ipv6();
    let topo = ClusterTopology::with_family(checksums, Cni::from_env(), family)
        .unwrap_or_else(|e| panic!("building the {family:?} topology: {e:#}"));
    let servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("web6.yaml", &manifests_text()).unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut args = vec!["--manifests", dir.as_str()];
    args.extend_from_slice(extra);
    let mut agent = Agent::start_with(&topo.node1, &args).expect("starting lb-agent");
    agent
        .wait_ready(Duration::from_secs(30))
        .expect("lb-agent ready");
    Dual {
        agent,
        manifests,
        _servers: servers,
        topo,
    }
}

/// Where the agent serves `/metrics` (on node1's loopback) when asked to.
const METRICS: &str = "127.0.0.1:9960";

/// node1's `/metrics` (from an agent started with `--metrics-addr` [`METRICS`]).
fn scrape(c: &Dual) -> String {
    let (status, text) = lb_tests::traffic::scrape(&c.topo.node1, 9960, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    text
}

/// One series' value, which must be there.
fn counter(metrics: &str, series: &str) -> f64 {
    lb_tests::traffic::metric(metrics, series)
        .unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
}

fn manifests_text() -> String {
    manifests(&WEB6_PODS)
}

#[test]
fn a_pod_reaches_both_cluster_ips_of_a_dual_stack_service_spread_over_every_backend() {
    let c = dual(SenderChecksums::Complete, &["--metrics-addr", METRICS]);
    let from = &c.topo.pod("pod1a").ns;
    let all = ["pod1b", "pod1c", "pod2a"];
    let before = scrape(&c);
    let tcp6 = http_distribution(from, SocketAddrV6::new(WEB6, 80, 0, 0), 90, DEADLINE);
    assert_spread(&tcp6, &all, 90, 0.10);
    // udp_distribution counts replies from any other source than the
    // Service address as "wrong-source".
    let udp6 = udp_distribution(from, SocketAddrV6::new(WEB6, 53, 0, 0), 60, DEADLINE);
    assert_spread(&udp6, &all, 60, 0.05);
    let tcp4 = http_distribution(
        from,
        SocketAddrV4::new([10, 96, 0, 30].into(), 80),
        60,
        DEADLINE,
    );
    assert_spread(&tcp4, &all, 60, 0.05);
    // /metrics tells the families apart: each HTTP exchange is at least 5
    // client packets, and the Service's IPv6 side has its own series.
    let after = scrape(&c);
    for (family, exchanges) in [("ipv6", 90.0), ("ipv4", 60.0)] {
        let translated = format!("lb_packets_total{{verdict=\"translated\",family=\"{family}\"}}");
        assert!(
            counter(&after, &translated) >= counter(&before, &translated) + exchanges * 5.0,
            "{translated}:\n{after}"
        );
        let web = format!(
            "lb_service_packets_total{{service=\"default/web6\",port=\"http\",family=\"{family}\"}}"
        );
        assert!(counter(&after, &web) >= exchanges * 5.0, "{web}:\n{after}");
    }
    let log = c.agent.log();
    assert!(
        !log.contains("IPv6NotServed"),
        "cluster IPs are served:\n{log}"
    );
}

/// On an IPv6-only cluster. The client's senders leave their checksums
/// partial, as Linux does on a veth, and node1 completes them in software
/// on the way out: a wrong update of the IPv6 pseudo-header's share would
/// show here.
#[test]
fn the_client_reaches_an_ipv6_cluster_ip_served_on_this_node() {
    client_reaches_local6(&[]);
}

/// The same with the uplink program at TC ingress (a pass whose test bed
/// hook is TC skips it: its twin above runs there).
#[test]
fn the_client_reaches_an_ipv6_cluster_ip_with_the_uplink_hook_at_tc() {
    client_reaches_local6(&["--uplink-hook", "tc"]);
}

fn client_reaches_local6(extra: &[&str]) {
    let c = cluster(Family::V6, SenderChecksums::Partial, extra);
    let local = ["pod1b", "pod1c"];
    let tcp = http_distribution(
        &c.topo.client,
        SocketAddrV6::new(LOCAL6, 80, 0, 0),
        60,
        DEADLINE,
    );
    assert_spread(&tcp, &local, 60, 0.10);
    let udp = udp_distribution(
        &c.topo.client,
        SocketAddrV6::new(LOCAL6, 53, 0, 0),
        40,
        DEADLINE,
    );
    assert_spread(&udp, &local, 40, 0.05);
    // The node port on node1's IPv6 address, to the same backends.
    let node_port = http_distribution(
        &c.topo.client,
        SocketAddrV6::new(NODE1_IP6, LOCAL6_NODE_PORT, 0, 0),
        40,
        DEADLINE,
    );
    assert_spread(&node_port, &local, 40, 0.10);
}

/// From outside the cluster to every backend of an IPv6 Service, node2's
/// included: the flows to pod2a are translated to node1's IPv6 address and
/// forwarded past the stack both ways (`forward6`), so kube-proxy's
/// INVALID drop in node1's FORWARD chain never sees their replies.
#[test]
fn the_client_reaches_every_backend_of_an_ipv6_service_on_any_node() {
    client_reaches_every_backend6(&[]);
}

/// The same with the uplink program at TC ingress (a pass whose test bed
/// hook is TC skips it: its twin above runs there).
#[test]
fn the_client_reaches_every_ipv6_backend_with_the_uplink_hook_at_tc() {
    client_reaches_every_backend6(&["--uplink-hook", "tc"]);
}

fn client_reaches_every_backend6(extra: &[&str]) {
    let c = dual(SenderChecksums::Complete, extra);
    let all = ["pod1b", "pod1c", "pod2a"];
    let tcp = http_distribution(
        &c.topo.client,
        SocketAddrV6::new(WEB6, 80, 0, 0),
        90,
        DEADLINE,
    );
    assert_spread(&tcp, &all, 90, 0.10);
    // udp_distribution counts replies from any other source than the
    // Service address as "wrong-source".
    let udp = udp_distribution(
        &c.topo.client,
        SocketAddrV6::new(WEB6, 53, 0, 0),
        60,
        DEADLINE,
    );
    assert_spread(&udp, &all, 60, 0.05);
}

#[test]
fn an_ipv6_edit_takes_effect_within_a_second_and_a_kept_alive_connection_survives_it() {
    let c = dual(SenderChecksums::Complete, &[]);
    let from = &c.topo.pod("pod1a").ns;
    let vip = SocketAddrV6::new(WEB6, 80, 0, 0);
    // A kept-alive connection pinned to a backend that survives the edit.
    let (mut kept, pinned) = (0..30)
        .find_map(|_| {
            let mut conn = HttpClient::connect_to(from, vip.into(), Duration::from_secs(2)).ok()?;
            let who = conn.get().ok()?;
            (who != "pod1b").then_some((conn, who))
        })
        .expect("a connection to pod1c or pod2a within 30 tries");
    // pod1b leaves the IPv6 slice.
    let edited = manifests(&[(1, 4), (2, 2)]);
    c.manifests.write("web6.yaml", &edited).unwrap();
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            kept.get().expect("kept-alive request during the edit"),
            pinned
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = http_distribution(from, vip, 60, DEADLINE);
    assert_eq!(
        counts.get("pod1b"),
        None,
        "the removed backend gets no new connections: {counts:?}"
    );
    assert_spread(&counts, &["pod1c", "pod2a"], 60, 0.10);
    assert_eq!(
        kept.get().expect("kept-alive request after the edit"),
        pinned
    );
}
