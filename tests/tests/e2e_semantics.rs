//! End to end: what a Service says, as kube-proxy does it (issue 13).
//! `loadBalancerSourceRanges` admit a client inside them at the Service's
//! load-balancer IP and drop another LAN host (which still reaches the
//! cluster IP) until an edit of the manifest widens them.
//! `externalTrafficPolicy: Local` with the only endpoint on node2: a pod on
//! node1 reaches the external frontends through the cluster-wide endpoints
//! while the outside client is dropped. Two Services claiming kube-dns's
//! `10.96.0.10:53/UDP` (its cluster IP and another's `externalIPs`): the
//! cluster IP keeps it, whatever the other does, and the other takes over
//! only once kube-dns goes. Needs root.

use std::{
    fmt::Write as _,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    netns::Netns,
    topology::{ClusterTopology, Pod, NODE1_IP},
    traffic::{http_get, scrape, udp_request, HttpClient, PodServers},
};

/// Where node1's agent serves its metrics (in node1's namespace).
const METRICS_PORT: u16 = 9960;
/// Bound on each exchange expected to be answered.
const WAIT: Duration = Duration::from_secs(2);
/// Bound on each exchange expected to go unanswered (dropped).
const SILENCE: Duration = Duration::from_millis(700);
/// Bound on waiting for the agent to apply an edit of the manifests.
const APPLY: Duration = Duration::from_secs(10);
/// Requests per check expected to be answered.
const ROUNDS: usize = 5;

/// Topology, servers, manifests and a ready agent. Field order is drop order.
struct Cluster {
    agent: Agent,
    manifests: ManifestDir,
    _servers: PodServers,
    topo: ClusterTopology,
}

/// The cluster with the manifests `files` make of it (file name, text) and
/// the agent ready, serving metrics.
fn cluster(files: impl FnOnce(&ClusterTopology) -> Vec<(&'static str, String)>) -> Cluster {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    for (name, text) in files(&topo) {
        manifests.write(name, &text).unwrap();
    }
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let agent = Agent::start_ready(&topo.node1, &manifests, &["--metrics-addr", &metrics])
        .expect("lb-agent ready");
    Cluster {
        agent,
        manifests,
        _servers: servers,
        topo,
    }
}

impl Cluster {
    /// The value of `series` (a counter or gauge) in the agent's metrics.
    fn metric(&self, series: &str) -> u64 {
        let (status, text) = scrape(&self.topo.node1, METRICS_PORT, "/metrics").unwrap();
        assert!(status.contains("200"), "{status}");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the agent's metrics:\n{text}"))
    }

    /// Removes the manifest file `name` (the agent drops its objects).
    fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifests.path().join(name)).unwrap();
    }
}

/// A Service `namespace/name` (`spec`: its `spec:` and any `status:`, YAML)
/// and its slice with a ready endpoint on each of `pods`, ports `http`
/// (TCP 8080) and `dns` (UDP 5353).
fn service(namespace: &str, name: &str, spec: &str, pods: &[&Pod]) -> String {
    let endpoints = pods.iter().fold(String::new(), |mut out, p| {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "- {{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}",
            p.ip, p.node
        );
        out
    });
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n{spec}\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
addressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n\
- {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n{endpoints}"
    )
}

/// The ports `http` (TCP 80) and `dns` (UDP 53) of a Service's spec.
const PORTS: &str = "  ports:\n\
\x20 - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n\
\x20 - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n";

/// `ROUNDS` new connections and datagrams from `from` (`who`) to `ip`:80/TCP
/// and `ip`:53/UDP, each answered by one of `pods` (UDP from the frontend).
fn answered(from: &Netns, who: &str, ip: Ipv4Addr, pods: &[&str]) {
    let (tcp, udp) = (SocketAddrV4::new(ip, 80), SocketAddrV4::new(ip, 53));
    for round in 0..ROUNDS {
        let body = http_get(from, tcp, WAIT)
            .unwrap_or_else(|e| panic!("{who} -> {tcp}, connection {round}: {e:#}"));
        assert!(pods.contains(&body.as_str()), "{who} -> {tcp}: {body}");
        let (body, source) = udp_request(from, udp, WAIT)
            .unwrap_or_else(|e| panic!("{who} -> {udp}, datagram {round}: {e:#}"));
        assert!(pods.contains(&body.as_str()), "{who} -> {udp}: {body}");
        assert_eq!(
            source,
            SocketAddr::V4(udp),
            "{who} -> {udp}: reply's source"
        );
    }
}

/// A connection from `from` (`who`) to `tcp` times out (its SYNs dropped).
fn tcp_dropped(from: &Netns, who: &str, tcp: SocketAddrV4) {
    match HttpClient::connect(from, tcp, SILENCE) {
        Ok(mut c) => panic!("{who} -> {tcp}: connected, answered {:?}", c.get()),
        Err(e) => assert!(
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == ErrorKind::TimedOut),
            "{who} -> {tcp}: expected a timeout (SYN dropped), got {e:#}"
        ),
    }
}

/// A datagram from `from` (`who`) to `udp` gets no reply.
fn udp_dropped(from: &Netns, who: &str, udp: SocketAddrV4) {
    if let Ok(reply) = udp_request(from, udp, SILENCE) {
        panic!("{who} -> {udp}: answered {reply:?}");
    }
}

/// Waits (at most [`APPLY`]) until a connection from `from` (`who`) to
/// `tcp` is answered by one of `pods`, as it is once the agent applied an edit.
fn until_http(from: &Netns, who: &str, tcp: SocketAddrV4, pods: &[&str]) {
    let deadline = Instant::now() + APPLY;
    loop {
        let answer = http_get(from, tcp, SILENCE);
        match &answer {
            Ok(body) if pods.contains(&body.as_str()) => return,
            _ if Instant::now() > deadline => {
                panic!("{who} -> {tcp}: wanted {pods:?} within {APPLY:?}, got {answer:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits (at most [`APPLY`]) until a datagram from `from` (`who`) to `udp`
/// is answered by `pod` (from the frontend).
fn until_udp(from: &Netns, who: &str, udp: SocketAddrV4, pod: &str) {
    let deadline = Instant::now() + APPLY;
    loop {
        let answer = udp_request(from, udp, Duration::from_millis(300));
        match &answer {
            Ok((body, source)) if body == pod && *source == SocketAddr::V4(udp) => return,
            _ if Instant::now() > deadline => {
                panic!("{who} -> {udp}: wanted {pod} within {APPLY:?}, got {answer:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The load-balancer IP of the ranged Service (clients route it to node1).
const RANGED_LB_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 5);
/// The ranged Service's cluster IP.
const RANGED_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
/// Another LAN host, outside the Service's first source range.
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 20);

/// The LoadBalancer Service `ranged` open to `range`, on pod1a and pod2a.
fn ranged(topo: &ClusterTopology, range: &str) -> String {
    let spec = format!(
        "spec:\n  type: LoadBalancer\n  clusterIP: {RANGED_CLUSTER_IP}\n\
\x20 loadBalancerSourceRanges: [\"{range}\"]\n{PORTS}\
status: {{loadBalancer: {{ingress: [{{ip: {RANGED_LB_IP}}}]}}}}\n"
    );
    service(
        "default",
        "ranged",
        &spec,
        &[topo.pod("pod1a"), topo.pod("pod2a")],
    )
}

#[test]
fn load_balancer_source_ranges_admit_clients_inside_and_drop_others() {
    let c = cluster(|topo| vec![("ranged.yaml", ranged(topo, "192.168.50.10/32"))]);
    let other = c
        .topo
        .add_lan_host("other", "lan9", &format!("{OTHER_HOST}/24"))
        .unwrap();
    other
        .exec(&["ip", "route", "add", "10.96.0.0/12", "via", "192.168.50.11"])
        .unwrap();
    let pods = ["pod1a", "pod2a"];
    let denied = "lb_datapath_events_total{event=\"source_range_denied\",family=\"ipv4\"}";
    assert_eq!(c.metric(denied), 0, "denied before any traffic");

    answered(&c.topo.client, "client", RANGED_LB_IP, &pods);
    answered(&other, "other host", RANGED_CLUSTER_IP, &pods);
    for _ in 0..2 {
        tcp_dropped(&other, "other host", SocketAddrV4::new(RANGED_LB_IP, 80));
        udp_dropped(&other, "other host", SocketAddrV4::new(RANGED_LB_IP, 53));
    }
    assert!(
        c.metric(denied) >= 4,
        "{denied}: {} after 2 SYNs and 2 datagrams refused (at least)",
        c.metric(denied)
    );

    // Widened to the LAN: the other host gets in, the client stays in.
    c.manifests
        .write("ranged.yaml", &ranged(&c.topo, "192.168.50.0/24"))
        .unwrap();
    until_http(
        &other,
        "other host",
        SocketAddrV4::new(RANGED_LB_IP, 80),
        &pods,
    );
    answered(&other, "other host", RANGED_LB_IP, &pods);
    answered(&c.topo.client, "client", RANGED_LB_IP, &pods);
}

/// The load-balancer IP of the `externalTrafficPolicy: Local` Service.
const LOCAL_LB_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 6);
/// Its cluster IP.
const LOCAL_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 81);
/// Its node ports on node1: TCP 80's, UDP 53's.
const LOCAL_NODE_PORTS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(NODE1_IP, 30081),
    SocketAddrV4::new(NODE1_IP, 30082),
];

/// The LoadBalancer Service `local` (`externalTrafficPolicy: Local`) whose
/// only endpoint is pod2a, on node2.
fn local_only(topo: &ClusterTopology) -> String {
    let [http, dns] = LOCAL_NODE_PORTS.map(|a| a.port());
    let spec = format!(
        "spec:\n  type: LoadBalancer\n  clusterIP: {LOCAL_CLUSTER_IP}\n\
\x20 externalTrafficPolicy: Local\n  ports:\n\
\x20 - {{name: http, port: 80, nodePort: {http}, protocol: TCP, targetPort: 8080}}\n\
\x20 - {{name: dns, port: 53, nodePort: {dns}, protocol: UDP, targetPort: 5353}}\n\
status: {{loadBalancer: {{ingress: [{{ip: {LOCAL_LB_IP}}}]}}}}\n"
    );
    service("default", "local", &spec, &[topo.pod("pod2a")])
}

#[test]
fn external_traffic_policy_local_sends_pods_to_every_nodes_endpoints() {
    let c = cluster(|topo| vec![("local.yaml", local_only(topo))]);
    let (pod, client) = (&c.topo.pod("pod1b").ns, &c.topo.client);
    answered(pod, "pod1b", LOCAL_LB_IP, &["pod2a"]);
    let [http, dns] = LOCAL_NODE_PORTS;
    for round in 0..ROUNDS {
        let body = http_get(pod, http, WAIT)
            .unwrap_or_else(|e| panic!("pod1b -> {http}, connection {round}: {e:#}"));
        assert_eq!(body, "pod2a", "pod1b -> {http}");
        let answer = udp_request(pod, dns, WAIT)
            .unwrap_or_else(|e| panic!("pod1b -> {dns}, datagram {round}: {e:#}"));
        assert_eq!(answer, ("pod2a".to_string(), SocketAddr::V4(dns)));
    }
    // The policy is not the cluster IP's; outside, node1 has no local endpoint.
    answered(client, "client", LOCAL_CLUSTER_IP, &["pod2a"]);
    for tcp in [SocketAddrV4::new(LOCAL_LB_IP, 80), http] {
        tcp_dropped(client, "client", tcp);
    }
    for udp in [SocketAddrV4::new(LOCAL_LB_IP, 53), dns] {
        udp_dropped(client, "client", udp);
    }
}

/// kube-dns's cluster IP, which another Service claims as an external IP.
const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The claiming Service's own cluster IP.
const ZZ_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 90);
/// The agent's gauge of Services losing a frontend to another.
const CONFLICTS: &str = "lb_service_problems{reason=\"FrontendConflict\"}";

/// `kube-system/kube-dns` at [`DNS_IP`], 53/UDP and 53/TCP, on pod1a.
fn kube_dns(topo: &ClusterTopology) -> String {
    let spec = format!(
        "spec:\n  clusterIP: {DNS_IP}\n  ports:\n\
\x20 - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n\
\x20 - {{name: http, port: 53, protocol: TCP, targetPort: 8080}}\n"
    );
    service("kube-system", "kube-dns", &spec, &[topo.pod("pod1a")])
}

/// `zz/a` at [`ZZ_IP`], 53/UDP, with `externalIPs: [DNS_IP]`, on pod1b.
fn zz_a(topo: &ClusterTopology) -> String {
    let spec = format!(
        "spec:\n  clusterIP: {ZZ_IP}\n  externalIPs: [\"{DNS_IP}\"]\n  ports:\n\
\x20 - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n"
    );
    service("zz", "a", &spec, &[topo.pod("pod1b")])
}

/// `ROUNDS` datagrams to `DNS_IP`:53 from the client and pod1c, and
/// connections to its TCP 53 when `tcp`, all answered by `pod`.
fn dns_answered_by(c: &Cluster, pod: &str, tcp: bool) {
    let dns = SocketAddrV4::new(DNS_IP, 53);
    for (from, who) in [
        (&c.topo.client, "client"),
        (&c.topo.pod("pod1c").ns, "pod1c"),
    ] {
        for round in 0..ROUNDS {
            let answer = udp_request(from, dns, WAIT)
                .unwrap_or_else(|e| panic!("{who} -> {dns}/UDP, datagram {round}: {e:#}"));
            assert_eq!(answer, (pod.to_string(), SocketAddr::V4(dns)), "{who}");
            if tcp {
                let body = http_get(from, dns, WAIT)
                    .unwrap_or_else(|e| panic!("{who} -> {dns}/TCP, connection {round}: {e:#}"));
                assert_eq!(body, pod, "{who} -> {dns}/TCP");
            }
        }
    }
}

/// Waits (at most [`APPLY`]) until the agent's `CONFLICTS` gauge is `want`.
fn until_conflicts(c: &Cluster, want: u64) {
    let deadline = Instant::now() + APPLY;
    while c.metric(CONFLICTS) != want {
        assert!(
            Instant::now() < deadline,
            "{CONFLICTS}: {} after {APPLY:?}, wanted {want}",
            c.metric(CONFLICTS)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cluster_ip_keeps_its_frontend_against_an_external_ip_claim() {
    let c = cluster(|topo| vec![("kube-dns.yaml", kube_dns(topo))]);
    let (client, zz) = (&c.topo.client, SocketAddrV4::new(ZZ_IP, 53));
    dns_answered_by(&c, "pod1a", true);

    // zz/a claims 10.96.0.10:53/UDP: once it is served (its own cluster IP
    // answers), DNS still goes to kube-dns, and zz/a's conflict is reported.
    c.manifests.write("zz-a.yaml", &zz_a(&c.topo)).unwrap();
    until_udp(client, "client", zz, "pod1b");
    dns_answered_by(&c, "pod1a", true);
    until_conflicts(&c, 1);
    assert!(
        c.agent.log().contains("Service zz/a"),
        "no line about zz/a's conflict:\n{}",
        c.agent.log()
    );

    // zz/a goes: nothing changes for kube-dns.
    c.remove("zz-a.yaml");
    let deadline = Instant::now() + APPLY;
    while udp_request(client, zz, Duration::from_millis(300)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{zz} still served after {APPLY:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    dns_answered_by(&c, "pod1a", true);
    until_conflicts(&c, 0);

    // zz/a again, then kube-dns goes: zz/a takes the frontend over.
    c.manifests.write("zz-a.yaml", &zz_a(&c.topo)).unwrap();
    until_udp(client, "client", zz, "pod1b");
    dns_answered_by(&c, "pod1a", true);
    c.remove("kube-dns.yaml");
    until_udp(client, "client", SocketAddrV4::new(DNS_IP, 53), "pod1b");
    dns_answered_by(&c, "pod1b", false);
    until_conflicts(&c, 0);
    let tcp = SocketAddrV4::new(DNS_IP, 53);
    if let Ok(body) = http_get(client, tcp, SILENCE) {
        panic!("client -> {tcp}/TCP: answered {body} after kube-dns went");
    }
}
