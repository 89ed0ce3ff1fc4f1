//! End to end with `--source kube`: the agent in node1 watches the test API
//! server (on node1's loopback); changes to EndpointSlices change real traffic,
//! over IPv4 and, on a dual-stack cluster, IPv6. Needs root.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::Agent,
    apiserver::TestApiServer,
    cluster::assert_spread,
    require_ipv6,
    topology::{ClusterTopology, Cni, Family, SenderChecksums},
    traffic::{http_distribution, PodServers},
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 80);
const DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 53);
/// How long an API change may take to reach traffic: a bound on liveness,
/// not a speed figure (the control bench measures change-to-map latency);
/// generous because test passes share the host's two cores.
const APPLY: Duration = Duration::from_secs(5);
/// A bound on each batch of requests.
const DEADLINE: Duration = Duration::from_mins(1);

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.40\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: http}\n  - {name: dns, port: 53, protocol: UDP, targetPort: dns}\n";

/// The Service's slice with `(pod address, node, ready)` endpoints.
fn slice(endpoints: &[(&str, &str, bool)]) -> String {
    let with_conditions: Vec<(&str, &str, String)> = endpoints
        .iter()
        .map(|(ip, node, ready)| (*ip, *node, format!("ready: {ready}")))
        .collect();
    slice_with(&with_conditions)
}

/// The Service's slice with `(pod address, node, conditions)` endpoints.
fn slice_with(endpoints: &[(&str, &str, String)]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(ip, node, conditions)| {
            format!("{{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{{conditions}}}}}")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\n\
         endpoints: [{}]\n",
        list.join(", ")
    )
}

/// Waits until the agent's maps send new connections to `backends` (as
/// `lb-agent status` lists them: sorted, comma-separated) for the HTTP
/// port; fails when that takes more than [`APPLY`].
fn until_serving(agent: &Agent, backends: &str) {
    let line = format!("default/web {WEB}/TCP -> {backends}\n");
    let started = Instant::now();
    loop {
        let status = agent.status().unwrap();
        if status.contains(&line) {
            return;
        }
        assert!(
            started.elapsed() < APPLY,
            "not serving {backends} after {APPLY:?}:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pods_answering(counts: &BTreeMap<String, usize>) -> Vec<&str> {
    counts.keys().map(String::as_str).collect()
}

#[test]
fn endpoint_changes_from_the_api_server_change_traffic() {
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let api = TestApiServer::start_in(Some(&topo.node1)).unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("lbt{}-kubeconfig", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(SERVICE).unwrap();
    api.apply(&slice(&[
        ("10.244.1.2", "node1", true),
        ("10.244.1.3", "node1", true),
        ("10.244.2.2", "node2", true),
    ]))
    .unwrap();
    let config = kubeconfig.to_string_lossy().into_owned();
    let mut agent = Agent::start_with(
        &topo.node1,
        &[
            "--source",
            "kube",
            "--kubeconfig",
            &config,
            "--metrics-addr",
            "127.0.0.1:9961",
        ],
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let _ = std::fs::remove_file(&kubeconfig);

    let counts = http_distribution(&topo.client, WEB, 60, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod1a", "pod1b", "pod2a"],
        "{counts:?}"
    );

    // Scale up.
    api.apply(&slice(&[
        ("10.244.1.2", "node1", true),
        ("10.244.1.3", "node1", true),
        ("10.244.2.2", "node2", true),
        ("10.244.1.4", "node1", true),
    ]))
    .unwrap();
    until_serving(
        &agent,
        "10.244.1.2:8080,10.244.1.3:8080,10.244.1.4:8080,10.244.2.2:8080",
    );
    let counts = http_distribution(&topo.client, WEB, 80, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod1a", "pod1b", "pod1c", "pod2a"],
        "scaled up: {counts:?}"
    );

    // pod1a turns not ready: no new connections.
    api.apply(&slice(&[
        ("10.244.1.2", "node1", false),
        ("10.244.1.3", "node1", true),
        ("10.244.2.2", "node2", true),
        ("10.244.1.4", "node1", true),
    ]))
    .unwrap();
    until_serving(&agent, "10.244.1.3:8080,10.244.1.4:8080,10.244.2.2:8080");
    let counts = http_distribution(&topo.client, WEB, 60, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod1b", "pod1c", "pod2a"],
        "not ready: {counts:?}"
    );

    // The API server becomes unreachable: traffic keeps flowing on the last known state.
    api.set_down(true);
    let counts = http_distribution(&topo.client, WEB, 40, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod1b", "pod1c", "pod2a"],
        "API server down: {counts:?}"
    );
    assert!(agent.is_running());
    api.set_down(false);

    // Scale down to pod2a.
    api.apply(&slice(&[("10.244.2.2", "node2", true)])).unwrap();
    until_serving(&agent, "10.244.2.2:8080");
    let counts = http_distribution(&topo.client, WEB, 20, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod2a"],
        "scaled down: {counts:?}"
    );
    // Every API change was timed from its watch event to the maps.
    let (_, metrics) = lb_tests::traffic::scrape(&topo.node1, 9961, "/metrics").unwrap();
    let changes = lb_tests::traffic::metric(&metrics, "lb_change_to_map_seconds_count").unwrap();
    assert!(changes >= 4.0, "{metrics}");
    let status = agent.status().unwrap();
    assert!(
        status.contains("default/web 10.96.0.40:80/TCP -> 10.244.2.2:8080"),
        "{status}"
    );
}

#[test]
fn a_terminating_endpoint_keeps_its_connections_and_gets_no_new_ones() {
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let api = TestApiServer::start_in(Some(&topo.node1)).unwrap();
    let kubeconfig =
        std::env::temp_dir().join(format!("lbt{}-kubeconfig-term", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(SERVICE).unwrap();
    let ready = || "ready: true".to_string();
    api.apply(&slice_with(&[
        ("10.244.1.2", "node1", ready()),
        ("10.244.2.2", "node2", ready()),
    ]))
    .unwrap();
    let mut agent = Agent::start_kube(&topo.node1, &kubeconfig).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let _ = std::fs::remove_file(&kubeconfig);

    // A kept-alive connection to pod2a, which then starts terminating.
    let mut conn = (0..30)
        .find_map(|_| {
            let mut c =
                lb_tests::traffic::HttpClient::connect(&topo.client, WEB, Duration::from_secs(2))
                    .ok()?;
            (c.get().ok()? == "pod2a").then_some(c)
        })
        .expect("a connection to pod2a");
    let terminating = "ready: false, serving: true, terminating: true".to_string();
    api.apply(&slice_with(&[
        ("10.244.1.2", "node1", ready()),
        ("10.244.2.2", "node2", terminating.clone()),
    ]))
    .unwrap();
    until_serving(&agent, "10.244.1.2:8080");
    let counts = http_distribution(&topo.client, WEB, 40, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod1a"],
        "no new connections to the terminating pod: {counts:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            conn.get().unwrap(),
            "pod2a",
            "its established connection continues"
        );
    }
    // With no ready endpoint left, serving terminating ones take new connections (KEP-1669).
    api.apply(&slice_with(&[
        ("10.244.1.2", "node1", "ready: false".into()),
        ("10.244.2.2", "node2", terminating),
    ]))
    .unwrap();
    until_serving(&agent, "10.244.2.2:8080");
    let counts = http_distribution(&topo.client, WEB, 20, Duration::from_mins(1));
    assert_eq!(
        pods_answering(&counts),
        ["pod2a"],
        "fallback to serving terminating endpoints: {counts:?}"
    );
    // Removed from the slice: its connection ends up elsewhere or fails, never on pod2a.
    api.apply(&slice_with(&[("10.244.1.2", "node1", ready())]))
        .unwrap();
    until_serving(&agent, "10.244.1.2:8080");
    let counts = http_distribution(&topo.client, WEB, 20, Duration::from_mins(1));
    assert_eq!(pods_answering(&counts), ["pod1a"], "{counts:?}");
}

#[test]
fn a_udp_client_moves_off_a_deleted_backend_at_its_next_packet() {
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let api = TestApiServer::start_in(Some(&topo.node1)).unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("lbt{}-kubeconfig-udp", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(SERVICE).unwrap();
    let all = [
        ("10.244.1.2", "node1", true),
        ("10.244.1.3", "node1", true),
        ("10.244.1.4", "node1", true),
        ("10.244.2.2", "node2", true),
    ];
    api.apply(&slice(&all)).unwrap();
    let mut agent = Agent::start_kube(&topo.node1, &kubeconfig).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let _ = std::fs::remove_file(&kubeconfig);

    // One long-running UDP client (one 5-tuple), as a DNS resolver would be.
    let socket = topo
        .client
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut ask = || -> Option<String> {
        socket.send_to(b"query", DNS).unwrap();
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        assert_eq!(
            from,
            SocketAddr::V4(DNS),
            "the reply comes from the service address"
        );
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let pinned = ask().expect("first reply");
    for _ in 0..5 {
        assert_eq!(
            ask().as_deref(),
            Some(pinned.as_str()),
            "conntrack keeps the flow on one backend"
        );
    }

    // Delete the backend it is pinned to, and keep sending every 50 ms.
    let pinned_ip = topo.pod(&pinned).ip.to_string();
    let rest: Vec<_> = all
        .iter()
        .copied()
        .filter(|(ip, _, _)| *ip != pinned_ip)
        .collect();
    api.apply(&slice(&rest)).unwrap();
    let deleted = Instant::now();
    let mut answers = Vec::new();
    while deleted.elapsed() < Duration::from_secs(3) {
        answers.push((deleted.elapsed(), ask()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_moved = answers
        .iter()
        .position(|(_, a)| a.as_deref().is_some_and(|who| who != pinned))
        .unwrap_or_else(|| panic!("never moved off {pinned}: {answers:?}"));
    assert!(
        answers[first_moved].0 < APPLY,
        "moved after {:?}: {answers:?}",
        answers[first_moved].0
    );
    let after = &answers[first_moved..];
    assert!(
        after
            .iter()
            .all(|(_, a)| a.as_deref().is_some_and(|who| who != pinned)),
        "once moved, every packet is answered by a live backend: {answers:?}"
    );
    let moved_to = after[0].1.clone().unwrap();
    assert!(
        after
            .iter()
            .all(|(_, a)| a.as_deref() == Some(moved_to.as_str())),
        "and stays there: {answers:?}"
    );
}

/// The dual-stack Service's cluster IPs.
const DUAL4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 41);
const DUAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x41);

const DUAL_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: dual, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.41\n  clusterIPs: [10.96.0.41, \"fd00:96::41\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: http}\n";

/// The dual-stack Service's slice of `family` (IPv4 or IPv6) with
/// `(pod address, node)` endpoints.
fn family_slice(family: &str, endpoints: &[(&str, &str)]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(ip, node)| {
            format!("{{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dual-{family}, namespace: default, labels: {{kubernetes.io/service-name: dual}}}}\n\
         addressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
        list.join(", ")
    )
}

/// pod1b, pod1c and pod2a (pod1a is the client) in each family.
const DUAL_V4: [(&str, &str); 3] = [
    ("10.244.1.3", "node1"),
    ("10.244.1.4", "node1"),
    ("10.244.2.2", "node2"),
];
const DUAL_V6: [(&str, &str); 3] = [
    ("fd00:244:1::3", "node1"),
    ("fd00:244:1::4", "node1"),
    ("fd00:244:2::2", "node2"),
];

/// On a dual-stack cluster, a dual-stack Service and its IPv4 and IPv6
/// slices from the API server: a pod reaches both cluster IPs, spread over
/// that family's backends, and an IPv6 slice change reaches IPv6 traffic
/// (and leaves IPv4's alone).
#[test]
fn a_pod_reaches_both_cluster_ips_of_a_dual_stack_service_from_the_api_server() {
    require_ipv6();
    let topo =
        ClusterTopology::with_family(SenderChecksums::Complete, Cni::from_env(), Family::Dual)
            .expect("building the dual-stack topology");
    let _servers = PodServers::start(&topo).unwrap();
    let api = TestApiServer::start_in(Some(&topo.node1)).unwrap();
    let kubeconfig =
        std::env::temp_dir().join(format!("lbt{}-kubeconfig-dual", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(DUAL_SERVICE).unwrap();
    api.apply(&family_slice("IPv4", &DUAL_V4)).unwrap();
    api.apply(&family_slice("IPv6", &DUAL_V6)).unwrap();
    let mut agent = Agent::start_kube(&topo.node1, &kubeconfig).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let _ = std::fs::remove_file(&kubeconfig);

    let from = &topo.pod("pod1a").ns;
    let all = ["pod1b", "pod1c", "pod2a"];
    let vip6 = SocketAddrV6::new(DUAL6, 80, 0, 0);
    let vip4 = SocketAddrV4::new(DUAL4, 80);
    assert_spread(&http_distribution(from, vip6, 60, DEADLINE), &all, 60, 0.10);
    assert_spread(&http_distribution(from, vip4, 60, DEADLINE), &all, 60, 0.10);

    // pod1b leaves the IPv6 slice: new IPv6 connections stop reaching it.
    api.apply(&family_slice("IPv6", &DUAL_V6[1..])).unwrap();
    let changed = Instant::now();
    while http_distribution(from, vip6, 10, DEADLINE).contains_key("pod1b") {
        assert!(
            changed.elapsed() < APPLY,
            "pod1b still served after {APPLY:?}"
        );
    }
    assert_spread(
        &http_distribution(from, vip6, 40, DEADLINE),
        &["pod1c", "pod2a"],
        40,
        0.10,
    );
    // IPv4's slice did not change: pod1b still takes IPv4 connections.
    assert_spread(&http_distribution(from, vip4, 60, DEADLINE), &all, 60, 0.10);
    let log = agent.log();
    assert!(
        !log.contains("IPv6NotServed"),
        "cluster IPs are served:\n{log}"
    );
}
