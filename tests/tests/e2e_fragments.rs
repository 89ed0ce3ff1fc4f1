//! End to end: UDP datagrams larger than the 1500-byte MTU travel in IPv4
//! fragments, and every fragment is translated both ways. A client sends
//! 4,000- and 9,000-byte requests (3 and 7 fragments) to a Service; the
//! backend (an echo server this file runs in the pod's namespace) answers
//! with a datagram of the same size, in as many fragments; the client must
//! get it whole, byte for byte, from the Service address. From the client
//! outside the cluster (through node1's uplink program) and from a pod of
//! node1 (through its pod interface's program), to a local backend (pod1a)
//! and to a remote one (pod2a; translated to node1's address for the client
//! outside), with the uplink program at XDP and at TC. A small datagram
//! first proves each path, so a failure tells fragments from routing.
//! The same over IPv6 (fragment headers, cut by the sender) on a
//! dual-stack cluster, from pod1b to an IPv6 cluster IP served by pod1a.
//! Needs root.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{udp_service_on_one_pod, Agent, ManifestDir, TEST_BED_XDP},
    netns::Netns,
    require_ipv6,
    topology::{ClusterTopology, Cni, Family, SenderChecksums},
};

/// The echo servers' port (in the pods) and the Services' port.
const ECHO_PORT: u16 = 5356;
/// A Service whose only endpoint is pod1a, on node1.
const LOCAL_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
/// A Service whose only endpoint is pod2a, on node2.
const REMOTE_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 71);
/// Datagram sizes: one frame (the control), 3 and 7 fragments at 1500 bytes.
const SIZES: [usize; 3] = [100, 4_000, 9_000];
/// Packets of one exchange of each size each way: 1 + 3 + 7 (at 1480 bytes
/// of IP payload per fragment).
const PACKETS_PER_SERVICE: u64 = 1 + 3 + 7;
/// Bound on each answer.
const WAIT: Duration = Duration::from_secs(2);
/// Bound on an echo server's life, whatever the test does.
const SERVER_LIFE: Duration = Duration::from_mins(2);
/// The uplink program at TC.
const TC: [&str; 2] = ["--uplink-hook", "tc"];

/// A UDP echo server in a pod's namespace: it answers each datagram with
/// one of the same size, the pod's name over its first bytes (so the client
/// knows who answered) and the request's bytes after. Stopped on drop.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &Netns, name: &str) -> Self {
        // Bound inside the namespace: the socket stays there.
        // `[::]` takes both families (IPV6_V6ONLY is off by default).
        let socket = ns
            .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, ECHO_PORT)))
            .expect("entering the pod's namespace")
            .expect("binding the echo server");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let name = name.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < SERVER_LIFE {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let mut answer = buf[..n].to_vec();
                let head = name.len().min(n);
                answer[..head].copy_from_slice(&name[..head]);
                let _ = socket.send_to(&answer, from);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Topology, servers, manifests and a ready agent. Field order is drop order.
struct Cluster {
    agent: Agent,
    _manifests: ManifestDir,
    _servers: [EchoServer; 2],
    topo: ClusterTopology,
}

/// The cluster with both Services, the agent run with `hook`'s arguments.
fn cluster(hook: &[&str]) -> Cluster {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let servers = [
        EchoServer::start(&topo.pod("pod1a").ns, "pod1a"),
        EchoServer::start(&topo.pod("pod2a").ns, "pod2a"),
    ];
    let manifests = ManifestDir::new().unwrap();
    let ports = [("echo", ECHO_PORT, ECHO_PORT)];
    let pod1a = topo.pod("pod1a").ip;
    let pod2a = topo.pod("pod2a").ip;
    manifests
        .write(
            "local.yaml",
            &udp_service_on_one_pod("frag-local", LOCAL_SERVICE, &ports, pod1a, "node1"),
        )
        .unwrap();
    manifests
        .write(
            "remote.yaml",
            &udp_service_on_one_pod("frag-remote", REMOTE_SERVICE, &ports, pod2a, "node2"),
        )
        .unwrap();
    let agent = Agent::start_ready(&topo.node1, &manifests, hook).expect("lb-agent ready");
    Cluster {
        agent,
        _manifests: manifests,
        _servers: servers,
        topo,
    }
}

/// A request of `size` bytes: every byte a function of its place and the
/// size, so a fragment lost, moved or mistranslated shows.
fn request(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| u8::try_from((i * 7 + size) % 251).unwrap())
        .collect()
}

/// Sends `payload` from a socket in `client` to `to`; the answer and its source.
fn exchange(
    client: &Netns,
    to: SocketAddr,
    payload: Vec<u8>,
) -> Result<(Vec<u8>, SocketAddr), String> {
    client
        .run(move || {
            let socket = if to.is_ipv4() {
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            } else {
                UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
            }
            .map_err(|e| e.to_string())?;
            socket
                .set_read_timeout(Some(WAIT))
                .map_err(|e| e.to_string())?;
            let sent = socket.send_to(&payload, to).map_err(|e| e.to_string())?;
            if sent != payload.len() {
                return Err(format!("sent {sent} of {} bytes", payload.len()));
            }
            let mut buf = vec![0u8; 65_536];
            let (n, from) = socket
                .recv_from(&mut buf)
                .map_err(|e| format!("no answer within {WAIT:?}: {e}"))?;
            buf.truncate(n);
            Ok((buf, from))
        })
        .map_err(|e| format!("{e:#}"))?
}

/// From `client` (`who`, for messages), each size to each Service: the
/// answer is the backend's echo of the request, whole, from the Service.
fn every_size_both_ways(client: &Netns, who: &str) {
    for (service, backend) in [(LOCAL_SERVICE, "pod1a"), (REMOTE_SERVICE, "pod2a")] {
        every_size(
            client,
            who,
            SocketAddrV4::new(service, ECHO_PORT).into(),
            backend,
        );
    }
}

/// From `client` (`who`), each size to the Service `to` served by `backend`.
fn every_size(client: &Netns, who: &str, to: SocketAddr, backend: &str) {
    for size in SIZES {
        let sent = request(size);
        let (answer, from) = exchange(client, to, sent.clone())
            .unwrap_or_else(|e| panic!("{who} -> {to} ({backend}), {size} bytes: {e}"));
        assert_eq!(
            from, to,
            "{who} -> {to}, {size} bytes: answered from the Service address"
        );
        assert_eq!(answer.len(), size, "{who} -> {to}: {size} bytes back");
        let head = backend.len();
        assert_eq!(
            &answer[..head],
            backend.as_bytes(),
            "{who} -> {to}, {size} bytes: answered by {backend}"
        );
        assert!(
            answer[head..] == sent[head..],
            "{who} -> {to}, {size} bytes: the datagram came back byte for byte"
        );
    }
}

/// The agent's verdict counter `name` (from `lb-agent status`).
fn verdict(agent: &Agent, name: &str) -> u64 {
    let status = agent.status().expect("lb-agent status");
    let line = status
        .lines()
        .find(|l| l.starts_with("verdicts:"))
        .unwrap_or_else(|| panic!("no verdicts in the status:\n{status}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Every packet of every exchange was translated once: each request's
/// fragments on the way in, each answer's on the way back.
fn every_fragment_translated_once(agent: &Agent) {
    let both_services = 2 * PACKETS_PER_SERVICE;
    assert_eq!(
        verdict(agent, "translated"),
        both_services,
        "requests' packets translated"
    );
    assert_eq!(
        verdict(agent, "reversed"),
        both_services,
        "answers' packets translated back"
    );
}

/// The client outside the cluster: requests in through node1's uplink
/// program, replies from pod1a through its pod interface's program and
/// from pod2a (to node1's SNAT port) through the uplink program.
fn from_outside(hook: &[&str]) {
    let mut c = cluster(hook);
    every_size_both_ways(&c.topo.client, "client");
    every_fragment_translated_once(&c.agent);
    assert!(c.agent.is_running());
}

/// pod1b on node1: requests out through its pod interface's program;
/// replies from pod1a through pod1a's, and from pod2a (to pod1b's own
/// address) in through node1's uplink program.
fn from_a_pod(hook: &[&str]) {
    let mut c = cluster(hook);
    every_size_both_ways(&c.topo.pod("pod1b").ns, "pod1b");
    every_fragment_translated_once(&c.agent);
    assert!(c.agent.is_running());
}

#[test]
fn fragmented_datagrams_from_outside_with_the_uplink_at_xdp() {
    from_outside(&TEST_BED_XDP);
}

#[test]
fn fragmented_datagrams_from_outside_with_the_uplink_at_tc() {
    from_outside(&TC);
}

#[test]
fn fragmented_datagrams_from_a_pod_with_the_uplink_at_xdp() {
    from_a_pod(&TEST_BED_XDP);
}

#[test]
fn fragmented_datagrams_from_a_pod_with_the_uplink_at_tc() {
    from_a_pod(&TC);
}

/// An IPv6-only Service whose only endpoint is pod1a (`fd00:244:1::2`).
const LOCAL_SERVICE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x70);

/// The IPv6 Service's manifest: `LOCAL_SERVICE6`:`ECHO_PORT`/UDP to pod1a.
fn service6() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: frag6, namespace: default}}\nspec:\n  type: ClusterIP\n  clusterIP: \"{LOCAL_SERVICE6}\"\n  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n  ports:\n    - {{name: echo, port: {ECHO_PORT}, protocol: UDP, targetPort: {ECHO_PORT}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: frag6-v6\n  namespace: default\n  labels: {{kubernetes.io/service-name: frag6}}\naddressType: IPv6\nports:\n  - {{name: echo, port: {ECHO_PORT}, protocol: UDP}}\nendpoints:\n  - addresses: [\"fd00:244:1::2\"]\n    conditions: {{ready: true}}\n    nodeName: node1\n"
    )
}

/// pod1b on node1 to an IPv6 cluster IP served by pod1a: the requests'
/// fragments translated at pod1b's interface, the answers' at pod1b's
/// egress, every one once. On the bridge and VXLAN layouts with the INVALID
/// drop (`br_netfilter` on), node1 reassembles each answer from pod1a and
/// cuts it again (with a new fragment id) on its way to pod1b: its later
/// fragments reach pod1b's egress with the bridge port their original
/// fragments arrived by as their ingress interface, and must be translated
/// as their first fragment was, not judged again by it.
#[test]
fn fragmented_ipv6_datagrams_from_a_pod() {
    require_ipv6();
    let topo =
        ClusterTopology::with_family(SenderChecksums::Complete, Cni::from_env(), Family::Dual)
            .expect("building the dual-stack topology");
    let _server = EchoServer::start(&topo.pod("pod1a").ns, "pod1a");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("frag6.yaml", &service6()).unwrap();
    let mut agent =
        Agent::start_ready(&topo.node1, &manifests, &TEST_BED_XDP).expect("lb-agent ready");
    let to = SocketAddrV6::new(LOCAL_SERVICE6, ECHO_PORT, 0, 0);
    every_size(&topo.pod("pod1b").ns, "pod1b", to.into(), "pod1a");
    assert_eq!(
        verdict(&agent, "translated"),
        PACKETS_PER_SERVICE6,
        "requests' packets translated"
    );
    assert_eq!(
        verdict(&agent, "reversed"),
        PACKETS_PER_SERVICE6,
        "answers' packets translated back"
    );
    assert!(agent.is_running());
}

/// Packets of one exchange of each size each way over IPv6: 1 + 3 + 7 (at
/// 1448 bytes of upper layer per fragment).
const PACKETS_PER_SERVICE6: u64 = 1 + 3 + 7;
