//! End to end: backends that are nodes themselves (hostNetwork servers, the
//! `kubernetes` Service's API server), listed by address with no
//! `nodeName`. node1's own address is a local backend: reached from a pod
//! on node1, from the client outside (cluster IP and node port, the
//! client's address kept, the replies leaving through node1's output path
//! and translated at the uplink's egress) and from node1 itself (socket-level
//! balancing, in a test cgroup of its own). node2's address stays a remote
//! backend, reached the same three ways. One agent for every check. Needs
//! root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    cgroup::TestCgroup,
    netns::Netns,
    topology::ClusterTopology,
    traffic::http_get,
};

/// node1's address (where the agent runs).
const NODE1: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// node2's address.
const NODE2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);
/// The port the node servers listen on, in each node's own namespace.
const HOST_PORT: u16 = 9080;
/// `node1-api`'s cluster IP and node port.
const SELF_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 50), 443);
const SELF_NODE_PORT: SocketAddrV4 = SocketAddrV4::new(NODE1, 30090);
/// `node2-host`'s cluster IP and node port (on node1).
const OTHER_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 51), 443);
const OTHER_NODE_PORT: SocketAddrV4 = SocketAddrV4::new(NODE1, 30091);
/// Bound on each request.
const WAIT: Duration = Duration::from_secs(2);

/// A NodePort Service whose one endpoint is `addr`:9080 without `nodeName`
/// (the `kubernetes` Service's shape).
fn node_service(name: &str, vip: SocketAddrV4, node_port: u16, addr: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\n\
metadata: {{name: {name}, namespace: default}}\n\
spec:\n  type: NodePort\n  clusterIP: {ip}\n  ports:\n  - {{name: https, port: {port}, nodePort: {node_port}, protocol: TCP, targetPort: {HOST_PORT}}}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
addressType: IPv4\nports:\n- {{name: https, port: {HOST_PORT}, protocol: TCP}}\n\
endpoints:\n- {{addresses: [\"{addr}\"], conditions: {{ready: true}}}}\n",
        ip = vip.ip(),
        port = vip.port(),
    )
}

/// A TCP server in a node's own namespace answering its node's name and
/// the address the connection came from ("node1 10.244.1.3"): an HTTP
/// response to an HTTP request, the bare answer to anything else (the
/// socket client's line), then closing.
struct NodeServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NodeServer {
    fn start(ns: &Netns, name: &'static str) -> Self {
        let listener = ns
            .run(|| TcpListener::bind(("0.0.0.0", HOST_PORT)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(WAIT));
                        let mut buf = [0u8; 512];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let answer = format!("{name} {}", peer.ip());
                        let reply = if buf[..n].starts_with(b"GET") {
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                                answer.len()
                            )
                        } else {
                            answer
                        };
                        let _ = conn.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One exchange from a process of node1's own namespace, in `cgroup`
/// (where the agent's socket programs are attached): `peer=<what the
/// socket reports> reply=<the answer>`, or `error=<why>`.
fn from_node1(topo: &ClusterTopology, cgroup: &TestCgroup, to: SocketAddrV4) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.node1.name()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sock-client"))
        .args([cgroup.path().to_str().unwrap(), "tcp", &to.to_string(), "1"])
        .output()
        .expect("running sock-client");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn node_addresses_serve_as_backends_from_pods_outside_and_the_node() {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let cgroup = TestCgroup::new("nodebe");
    let _servers = [
        NodeServer::start(&topo.node1, "node1"),
        NodeServer::start(&topo.node2, "node2"),
    ];
    let manifests = ManifestDir::new().unwrap();
    manifests
        .write(
            "node1-api.yaml",
            &node_service("node1-api", SELF_VIP, SELF_NODE_PORT.port(), NODE1),
        )
        .unwrap();
    manifests
        .write(
            "node2-host.yaml",
            &node_service("node2-host", OTHER_VIP, OTHER_NODE_PORT.port(), NODE2),
        )
        .unwrap();
    let cgroup_dir = cgroup.path().to_str().unwrap().to_string();
    let mut agent = Agent::start_ready(
        &topo.node1,
        &manifests,
        &["--socket-lb", "host", "--socket-lb-cgroup", &cgroup_dir],
    )
    .expect("lb-agent ready");
    let pod = topo.pod("pod1b");
    // Which node answers, and whom it sees: node1's own server sees every
    // client as it is (no SNAT to node1's own address); node2's sees
    // outside clients and node1 as node1 (SNAT), pods as themselves.
    let cases = [
        (SELF_VIP, "node1", true),
        (SELF_NODE_PORT, "node1", true),
        (OTHER_VIP, "node2", false),
        (OTHER_NODE_PORT, "node2", false),
    ];
    let client = Ipv4Addr::new(192, 168, 50, 10);
    // Every check runs, and the failures are reported together.
    let mut failures = Vec::new();
    for round in 0..2 {
        for (to, node, local) in cases {
            let outside = if local { client } else { NODE1 };
            for (who, ns, seen) in [
                ("client", &topo.client, outside),
                ("pod1b", &pod.ns, pod.ip),
            ] {
                let got = http_get(ns, to, WAIT).unwrap_or_else(|e| format!("{e:#}"));
                if got != format!("{node} {seen}") {
                    failures.push(format!("{who} -> {to}, round {round}: {got}"));
                }
            }
            // From node1 itself: its socket is pointed at the backend and
            // still reports the Service's address as its peer.
            let got = from_node1(&topo, &cgroup, to);
            if got != format!("peer={} reply={node} {NODE1}", SocketAddr::V4(to)) {
                failures.push(format!("node1 -> {to}, round {round}: {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let status = agent.status().unwrap();
    assert!(
        status.contains(&format!("{SELF_VIP}/TCP -> {NODE1}:{HOST_PORT}")),
        "{status}"
    );
    assert!(agent.is_running());
}
