//! End to end: socket-level balancing in the namespace cluster. The agent
//! on node1 attaches its cgroup programs to a test cgroup of its own (never
//! the machine's root); only the test's client processes (`sock-client`,
//! entered into node1's or a pod's network namespace) join it, so the
//! servers and every other socket keep the per-packet path.
//!
//! With `--socket-lb all` a pod's TCP and UDP sockets (connected and not)
//! reach a Service spread over local and remote backends and see the
//! Service's address, while the per-packet path counts none of their
//! packets (`lb_service_packets_total` stays where it was; a pod outside
//! the cgroup moves it, so the counter is alive); so do node1's own
//! sockets, including to a node port of node1 itself (not on loopback,
//! as kube-proxy's nftables mode); a pod's session
//! affinity holds across its sockets; a pod's connected sockets to a
//! backend whose endpoint leaves are closed (in its own namespace), no
//! others. With `--socket-lb host` a pod's
//! sockets in the same cgroup are left to the per-packet path; the
//! programs outlive a crashed agent (pinned links) until `lb-agent cleanup`. Run once,
//! not on every pass of the end-to-end matrix: nothing here depends on the
//! CNI layout, the firewall or the uplink hook. Needs root and cgroup v2.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::Duration,
};

use lb_tests::{
    agent::{agent_bin, ManifestDir, PinDirGuard},
    cgroup::TestCgroup,
    cluster::{assert_spread, cluster_with, Cluster},
    netns::Netns,
    sock_client,
    traffic::{http_distribution, metric, scrape},
};
use lb_userspace::datapath::PIN_LAYOUT;

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const WEB_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
/// The Service with a node port and session affinity written below.
const STICKY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 80);
/// Its node port on node1's address.
const STICKY_NODE_PORT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 11), 30_040);
const ALL: [&str; 4] = ["pod1a", "pod1b", "pod1c", "pod2a"];
const METRICS_PORT: u16 = 9961;
/// Exchanges per client run.
const COUNT: usize = 40;

/// A NodePort Service with `sessionAffinity: ClientIP` over every pod.
const STICKY_YAML: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: sticky, namespace: default}\n\
spec:\n  type: NodePort\n  clusterIP: 10.96.0.40\n  sessionAffinity: ClientIP\n\
\x20 ports:\n  - {name: http, port: 80, nodePort: 30040, protocol: TCP, targetPort: 8080}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: sticky-1, namespace: default, labels: {kubernetes.io/service-name: sticky}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\nendpoints:\n\
- {addresses: [10.244.1.2], nodeName: node1, conditions: {ready: true}}\n\
- {addresses: [10.244.1.3], nodeName: node1, conditions: {ready: true}}\n\
- {addresses: [10.244.1.4], nodeName: node1, conditions: {ready: true}}\n\
- {addresses: [10.244.2.2], nodeName: node2, conditions: {ready: true}}\n";

/// The cluster with `--socket-lb <scope>` on `cgroup` and metrics on node1
/// (and, with `all`, the pods' namespaces under `/run/netns`).
fn socket_cluster(scope: &str, cgroup: &TestCgroup) -> Cluster {
    let manifests = ManifestDir::with_examples().unwrap();
    manifests.write("sticky.yaml", STICKY_YAML).unwrap();
    let cgroup = cgroup.path().to_string_lossy().into_owned();
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    cluster_with(
        manifests,
        &[
            "--socket-lb",
            scope,
            "--socket-lb-cgroup",
            &cgroup,
            "--metrics-addr",
            &metrics,
        ]
        .into_iter()
        .chain(
            (scope == "all")
                .then_some(["--socket-lb-netns-dir", "/run/netns"])
                .into_iter()
                .flatten(),
        )
        .collect::<Vec<_>>(),
    )
}

/// Runs `sock-client` in `ns`, joining `cgroup` first: its lines.
fn sock_client(ns: &Netns, cgroup: &TestCgroup, mode: &str, to: SocketAddrV4) -> Vec<String> {
    sock_client_n(ns, cgroup, mode, to, COUNT)
}

/// [`sock_client`] with `count` exchanges.
fn sock_client_n(
    ns: &Netns,
    cgroup: &TestCgroup,
    mode: &str,
    to: SocketAddrV4,
    count: usize,
) -> Vec<String> {
    sock_client::run(
        env!("CARGO_BIN_EXE_sock-client"),
        Some(ns),
        cgroup,
        mode,
        &to,
        count,
        &[],
    )
}

/// The backends that answered, by name; every line must report `peer` as
/// the socket's peer.
fn answers(lines: &[String], peer: SocketAddrV4) -> BTreeMap<String, usize> {
    assert_eq!(lines.len(), COUNT, "{lines:?}");
    sock_client::answers(lines, &peer)
}

/// A counter from node1's metrics (absent: zero).
fn counter(c: &Cluster, series: &str) -> u64 {
    let (_, text) = scrape(&c.topo.node1, METRICS_PORT, "/metrics").unwrap();
    // Counters of whole packets and events.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = metric(&text, series).unwrap_or(0.0) as u64;
    value
}

const WEB_HTTP_PACKETS: &str =
    "lb_service_packets_total{service=\"default/web-service\",port=\"http\",family=\"ipv4\"}";
const WEB_DNS_PACKETS: &str =
    "lb_service_packets_total{service=\"default/web-service\",port=\"dns\",family=\"ipv4\"}";
const SOCKET_TRANSLATED: &str =
    "lb_datapath_events_total{event=\"socket_translated\",family=\"ipv4\"}";

#[test]
fn with_scope_all_pods_and_the_node_reach_services_with_no_packet_translated() {
    let cgroup = TestCgroup::new("e2esockall");
    let c = socket_cluster("all", &cgroup);
    let pod = &c.topo.pod("pod1a").ns;
    let before = (
        counter(&c, WEB_HTTP_PACKETS),
        counter(&c, WEB_DNS_PACKETS),
        counter(&c, SOCKET_TRANSLATED),
    );
    let tcp = answers(&sock_client(pod, &cgroup, "http", WEB), WEB);
    assert_spread(&tcp, &ALL, COUNT, 0.05);
    let udp = answers(&sock_client(pod, &cgroup, "udp", WEB_DNS), WEB_DNS);
    assert_spread(&udp, &ALL, COUNT, 0.05);
    let unconnected = answers(
        &sock_client(pod, &cgroup, "udp-unconnected", WEB_DNS),
        WEB_DNS,
    );
    assert_spread(&unconnected, &ALL, COUNT, 0.05);
    assert_eq!(
        (counter(&c, WEB_HTTP_PACKETS), counter(&c, WEB_DNS_PACKETS)),
        (before.0, before.1),
        "the per-packet path translated none of the pod's packets"
    );
    let translated = counter(&c, SOCKET_TRANSLATED) - before.2;
    assert!(
        translated >= 3 * COUNT as u64,
        "a socket event per connect and send: {translated}"
    );

    // A pod outside the cgroup goes through the per-packet path, which counts.
    let outside = http_distribution(&c.topo.pod("pod1b").ns, WEB, 10, Duration::from_secs(30));
    assert_spread(&outside, &ALL, 10, 0.0);
    assert!(counter(&c, WEB_HTTP_PACKETS) >= before.0 + 10);

    // The node's own sockets: local and remote backends, and a node port
    // of the node itself.
    let node = &c.topo.node1;
    let tcp = answers(&sock_client(node, &cgroup, "http", WEB), WEB);
    assert_spread(&tcp, &ALL, COUNT, 0.05);
    let udp = answers(&sock_client(node, &cgroup, "udp", WEB_DNS), WEB_DNS);
    assert_spread(&udp, &ALL, COUNT, 0.05);
    let unconnected = sock_client(node, &cgroup, "udp-unconnected", WEB_DNS);
    assert_spread(&answers(&unconnected, WEB_DNS), &ALL, COUNT, 0.05);
    let node_port = sock_client(node, &cgroup, "http", STICKY_NODE_PORT);
    let node_port = answers(&node_port, STICKY_NODE_PORT);
    assert_eq!(node_port.values().sum::<usize>(), COUNT, "{node_port:?}");
    // Not on a loopback address, as kube-proxy's nftables mode.
    let loopback = SocketAddrV4::new(Ipv4Addr::LOCALHOST, STICKY_NODE_PORT.port());
    for line in sock_client(node, &cgroup, "http", loopback) {
        assert!(line.starts_with("error="), "localhost:<node port>: {line}");
    }

    // Session affinity is per network namespace: every socket of the pod
    // goes to one backend, and so does every socket of the node.
    for ns in [pod, node] {
        let sticky = answers(&sock_client(ns, &cgroup, "http", STICKY), STICKY);
        assert_eq!(sticky.len(), 1, "one backend for the namespace: {sticky:?}");
    }
}

#[test]
fn with_scope_host_a_pods_sockets_keep_the_per_packet_path() {
    let cgroup = TestCgroup::new("e2esockhost");
    let mut c = socket_cluster("host", &cgroup);
    let before = (
        counter(&c, WEB_HTTP_PACKETS),
        counter(&c, SOCKET_TRANSLATED),
    );
    let pod = &c.topo.pod("pod1a").ns;
    let tcp = answers(&sock_client(pod, &cgroup, "http", WEB), WEB);
    assert_spread(&tcp, &ALL, COUNT, 0.02);
    assert_eq!(
        counter(&c, SOCKET_TRANSLATED),
        before.1,
        "no socket of a pod is balanced at connect"
    );
    assert!(
        counter(&c, WEB_HTTP_PACKETS) >= before.0 + COUNT as u64,
        "the pod's packets were translated one by one"
    );
    let node = &c.topo.node1;
    let tcp = answers(&sock_client(node, &cgroup, "http", WEB), WEB);
    assert_spread(&tcp, &ALL, COUNT, 0.05);
    assert!(counter(&c, SOCKET_TRANSLATED) >= before.1 + COUNT as u64);

    // The links are pinned: a crashed agent leaves them serving, and
    // `lb-agent cleanup` detaches them.
    let pin_dir = c.agent.pin_dir().to_path_buf();
    let _pins = PinDirGuard(pin_dir.clone());
    let links = pin_dir.join(PIN_LAYOUT).join("links");
    for hook in ["connect4", "sendmsg4", "recvmsg4", "getpeername4"] {
        assert!(links.join(format!("sock-{hook}")).exists(), "sock-{hook}");
    }
    c.agent.cleanup_on_drop = false;
    c.agent.kill();
    let node = &c.topo.node1;
    let served = sock_client_n(node, &cgroup, "http", WEB, 1);
    assert!(
        served[0].starts_with(&format!("peer={WEB} reply=")),
        "{served:?}"
    );
    // Another process holding a link (a dying agent, a `bpftool` looking at
    // it) must not keep it attached, and removing a pin detaches only
    // later, after an RCU grace period and a work queue: `cleanup` detaches
    // every link itself before it returns.
    let held = aya::programs::links::PinnedLink::from_pin(links.join("sock-connect4"))
        .expect("the connect4 link's pin opens");
    let cleanup = Command::new(agent_bin().unwrap())
        .args(["cleanup", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    let after = sock_client_n(node, &cgroup, "http", WEB, 1);
    assert!(
        after[0].starts_with("error="),
        "not balanced any more: {after:?}"
    );
    drop(held);
}

#[test]
fn with_scope_all_a_pods_sockets_to_a_removed_backend_are_closed_and_no_others() {
    const SOCKETS: usize = 16;
    let cgroup = TestCgroup::new("e2esockclose");
    let c = socket_cluster("all", &cgroup);
    let pod1b_dns = SocketAddrV4::new(c.topo.pod("pod1b").ip, 5353);
    // pod1a holds connected UDP sockets through the Service, and one
    // straight to pod1b (not ours to close).
    let (held, opened) = sock_client::Holding::start(
        env!("CARGO_BIN_EXE_sock-client"),
        &cgroup,
        &[
            WEB.to_string(),
            WEB_DNS.to_string(),
            format!("0+{SOCKETS}"),
            "-".to_string(),
            pod1b_dns.to_string(),
            format!("/run/netns/{}", c.topo.pod("pod1a").ns.name()),
        ],
    );
    let opened: Vec<[String; 3]> = opened
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            [f[1].to_string(), f[2].to_string(), f[3].to_string()]
        })
        .collect();
    let on_pod1b = opened
        .iter()
        .filter(|[kind, _, reply]| kind == "svc-udp" && reply == "pod1b")
        .count();
    assert!(on_pod1b > 0, "some sockets on pod1b: {opened:?}");

    // pod1b's endpoint leaves the slice.
    let web = c.manifests.read("web-service.yaml").unwrap();
    let edited = web.replace(
        "  - addresses: [\"10.244.1.3\"]\n    conditions: {ready: true}\n    nodeName: node1\n",
        "",
    );
    assert_ne!(edited, web, "the example lists pod1b");
    c.manifests.write("web-service.yaml", &edited).unwrap();
    let closed = "lb_sockets_closed_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&c, closed) < on_pod1b as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        counter(&c, closed),
        on_pod1b as u64,
        "the pod's sockets on pod1b"
    );

    let rest = held.finish();
    for line in &rest {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let (what, kind, n, reply) = (f[0], f[1], f[2], f[3]);
        match (what, kind) {
            ("after", "direct-udp") => assert_eq!(reply, "pod1b", "{line}"),
            ("after", "svc-udp") => {
                let first = &opened.iter().find(|o| o[0] == kind && o[1] == n).unwrap()[2];
                if first == "pod1b" {
                    assert!(reply.starts_with("error="), "closed: {line}");
                } else {
                    assert_eq!(reply, first, "kept: {line}");
                }
            }
            ("reconnect", _) => {
                assert!(
                    ALL.contains(&reply) && reply != "pod1b",
                    "a live backend: {line}"
                );
            }
            _ => panic!("{line}"),
        }
    }
    let reconnects = rest.iter().filter(|l| l.starts_with("reconnect")).count();
    assert_eq!(reconnects, on_pod1b, "{rest:?}");
}
