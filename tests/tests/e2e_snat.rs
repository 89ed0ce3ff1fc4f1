//! End to end: the SNAT port pool of a remote backend, at a small configured
//! size, filled by real TCP connections and UDP exchanges from the client,
//! and recovered after the flows close or go idle; the node's own connections
//! to the same backend keep working meanwhile; exhaustion shows in
//! `/metrics`. And `accept_local` is set exactly where translated packets
//! need it, while packets from outside that claim the node's address stay
//! out. (An agent refusing a pool that overlaps the node's ephemeral range
//! does not depend on the topology: `tests/e2e_agent.rs`.) Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    topology::ClusterTopology,
    traffic::{http_get, metric, scrape, scrape_after_sweep, udp_request, HttpClient, PodServers},
};

/// A Service whose only endpoint is pod2a, on node2: every flow from the
/// client through node1 is translated to a pool port.
const REMOTE_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: remote-only, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.40\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: remote-only-1, namespace: default, labels: {kubernetes.io/service-name: remote-only}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n- {name: dns, port: 5353, protocol: UDP}\n\
endpoints:\n- {addresses: [\"10.244.2.2\"], nodeName: node2, conditions: {ready: true}}\n";

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 80);
const DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 53);
const POD2A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
/// Ports in the pool.
const POOL: usize = 6;
const METRICS_PORT: u16 = 9971;

fn metrics(topo: &ClusterTopology) -> String {
    scrape(&topo.node1, METRICS_PORT, "/metrics").unwrap().1
}

/// node1's agent's `/metrics` after a sweep that started after this call
/// (the flow series are as of the last sweep).
fn metrics_after_sweep(topo: &ClusterTopology) -> String {
    scrape_after_sweep(&topo.node1, METRICS_PORT, Duration::from_secs(10)).unwrap()
}

/// node1's agent's `/metrics` as soon as `done` holds of them, else after
/// 10 s (the flow series change at each sweep, one a second here).
fn metrics_once(topo: &ClusterTopology, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(topo);
        if done(&text) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (10 s at most) until a sweep of node1's agent that started after
/// this call finds no live flow holding a port of the pool of `backend` (a
/// label, as `backend="10.244.2.2:8080/TCP"`): its flows are past their
/// timeouts (closed, or idle), for collection or takeover.
fn until_pool_free(topo: &ClusterTopology, backend: &str) {
    let series = format!("lb_snat_ports_in_use{{{backend}}}");
    let runs = |text: &str| metric(text, "lb_conntrack_gc_runs_total").unwrap_or(0.0);
    let start = runs(&metrics(topo));
    // Two more sweeps: one of them started after the call.
    let free =
        |text: &str| runs(text) >= start + 2.0 && metric(text, &series).unwrap_or(0.0) == 0.0;
    let text = metrics_once(topo, free);
    assert!(free(&text), "the pool of {backend} still in use:\n{text}");
}

#[test]
fn a_full_pool_refuses_new_flows_spares_the_node_and_recovers() {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let _servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("remote-only.yaml", REMOTE_ONLY).unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let mut agent = Agent::start_with(
        &topo.node1,
        &[
            "--manifests",
            &dir,
            "--snat-port-range",
            "20000-20005",
            "--ct-timeout",
            "tcp-closed=2",
            "--ct-timeout",
            "tcp-time-wait=2",
            "--ct-timeout",
            "udp=2",
            "--ct-gc-interval",
            "1",
            "--metrics-addr",
            &metrics_addr,
        ],
    )
    .expect("starting lb-agent");
    agent.wait_ready(Duration::from_secs(30)).expect("ready");

    // Fill the pool with kept-alive connections.
    let mut held: Vec<HttpClient> = (0..POOL)
        .map(|i| {
            let mut c = HttpClient::connect(&topo.client, WEB, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
            assert_eq!(c.get().unwrap(), "pod2a");
            c
        })
        .collect();
    // The pool is full of established flows: a new connection is refused
    // (its SYN dropped), and counted.
    assert!(
        http_get(&topo.client, WEB, Duration::from_millis(1500)).is_err(),
        "a seventh flow found a port in a pool of six"
    );
    let text = metrics_after_sweep(&topo);
    let backend = "backend=\"10.244.2.2:8080/TCP\"";
    assert_eq!(
        metric(&text, &format!("lb_snat_ports_in_use{{{backend}}}")),
        Some(6.0),
        "{text}"
    );
    assert!(
        metric(&text, &format!("lb_snat_exhausted_total{{{backend}}}")).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "lb_conntrack_flows{state=\"established\"}").unwrap_or(0.0) >= 6.0,
        "{text}"
    );
    // The node's own connections to that backend use its ephemeral ports,
    // outside the pool: they keep working.
    for _ in 0..3 {
        assert_eq!(
            http_get(&topo.node1, POD2A, Duration::from_secs(2)).unwrap(),
            "pod2a"
        );
    }
    // The held connections still work.
    for c in &mut held {
        assert_eq!(c.get().unwrap(), "pod2a");
    }
    // Closed by the client (then the server): the ports come back after
    // the closed hold.
    held.clear();
    until_pool_free(&topo, backend);
    let mut again: Vec<HttpClient> = (0..POOL)
        .map(|i| {
            let mut c = HttpClient::connect(&topo.client, WEB, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connection {i} after the close: {e:#}"));
            assert_eq!(c.get().unwrap(), "pod2a");
            c
        })
        .collect();
    again.clear();

    let gc_deleted = |text: &str| {
        metric(text, "lb_conntrack_gc_deleted_total{map=\"conntrack\"}").unwrap_or(0.0)
    };
    let deleted_before_udp = gc_deleted(&metrics_after_sweep(&topo));

    // UDP: six exchanges from six client ports hold the six ports of the
    // UDP backend; a seventh finds none at once; after the idle timeout
    // new exchanges succeed.
    for i in 0..POOL {
        let (body, from) = udp_request(&topo.client, DNS, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("UDP exchange {i}: {e:#}"));
        assert_eq!((body.as_str(), from), ("pod2a", DNS.into()));
    }
    assert!(
        udp_request(&topo.client, DNS, Duration::from_millis(800)).is_err(),
        "a seventh UDP flow found a port"
    );
    until_pool_free(&topo, "backend=\"10.244.2.2:5353/UDP\"");
    for i in 0..POOL {
        let (body, _) = udp_request(&topo.client, DNS, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("UDP exchange {i} after the idle timeout: {e:#}"));
        assert_eq!(body, "pod2a");
    }
    // The collector removed expired flows from the maps during this phase:
    // the six UDP flows (and the second round's closed TCP flows).
    let text = metrics_once(&topo, |text| gc_deleted(text) >= deleted_before_udp + 6.0);
    assert!(
        gc_deleted(&text) >= deleted_before_udp + 6.0,
        "{deleted_before_udp} before the UDP flows:\n{text}"
    );
    assert!(agent.is_running());
}

/// A Service whose only endpoint is pod1a: pod1a reaching it reaches itself.
const SELF_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: self-only, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.41\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: self-only-1, namespace: default, labels: {kubernetes.io/service-name: self-only}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n\
endpoints:\n- {addresses: [\"10.244.1.2\"], nodeName: node1, conditions: {ready: true}}\n";

const SELF_WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 41), 80);
const NODE1: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);

/// `net.ipv4.conf.<iface>.accept_local` in node1.
fn accept_local(topo: &ClusterTopology, iface: &str) -> String {
    topo.node1
        .sysctl(&format!("net.ipv4.conf.{iface}.accept_local"))
        .unwrap()
}

fn set_accept_local(topo: &ClusterTopology, iface: &str, value: &str) {
    topo.node1
        .exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{iface}.accept_local={value}"),
        ])
        .unwrap();
}

/// A 4,000-byte datagram (three fragments on the LAN) from the client to
/// [`DNS`]: the answering pod's name.
fn big_udp_request(topo: &ClusterTopology, timeout: Duration) -> anyhow::Result<String> {
    let socket = topo.client.run(|| UdpSocket::bind("0.0.0.0:0"))??;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(&[b'x'; 4000], DNS)?;
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Removes node1's neighbour entry for the next hop to pod2a (node2 on the
/// LAN; the overlay's `.0` keeps its permanent one, and XDP cannot reach
/// it anyway), as if node1 had never talked to it.
fn forget_next_hop_to_pod2a(topo: &ClusterTopology) {
    // Fails harmlessly where there is no such entry.
    let _ = topo
        .node1
        .exec(&["ip", "neigh", "del", "192.168.50.12", "dev", "eth0"]);
}

/// Sends one UDP datagram from `src` (any address: a raw socket writes the
/// IPv4 header) to node1:`port`, from the client's namespace.
fn send_udp_from(topo: &ClusterTopology, src: Ipv4Addr, port: u16) {
    let frame = lb_tests::packet::Packet::udp(src, 40_000, NODE1, port).build();
    topo.client
        .run(move || {
            // SAFETY: plain socket calls on a descriptor this closure owns and
            // closes; the address and buffer outlive the calls.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
                assert!(fd >= 0, "a raw socket in the client's namespace");
                let to = libc::sockaddr_in {
                    sin_family: u16::try_from(libc::AF_INET).unwrap(),
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(NODE1.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // The IPv4 packet, without the Ethernet header.
                let ip = &frame[14..];
                let sent = libc::sendto(
                    fd,
                    ip.as_ptr().cast(),
                    ip.len(),
                    0,
                    (&raw const to).cast(),
                    u32::try_from(size_of::<libc::sockaddr_in>()).unwrap(),
                );
                libc::close(fd);
                assert_eq!(usize::try_from(sent).ok(), Some(ip.len()), "sent");
            }
        })
        .unwrap();
}

#[test]
fn accept_local_is_set_where_translated_packets_need_it_and_spoofs_of_the_node_stay_out() {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let _servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    manifests.write("remote-only.yaml", REMOTE_ONLY).unwrap();
    manifests.write("self-only.yaml", SELF_ONLY).unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let mut agent = Agent::start_with(
        &topo.node1,
        &["--manifests", &dir, "--metrics-addr", &metrics_addr],
    )
    .expect("starting lb-agent");
    agent.wait_ready(Duration::from_secs(30)).expect("ready");
    // Only the interfaces the programs are attached to, never node-wide.
    assert_eq!(accept_local(&topo, "eth0"), "1");
    assert_eq!(accept_local(&topo, "vpod1a"), "0");
    assert_eq!(accept_local(&topo, "all"), "0");
    assert_eq!(accept_local(&topo, "default"), "0");
    let pod1a = topo.pod("pod1a");

    // A flow SNATed to a remote backend is forwarded past the stack, both
    // ways (at XDP through the TC hand-off where XDP cannot send it: no
    // neighbour entry yet, an overlay device). The uplink needs
    // accept_local only for the packets the programs hand to the stack,
    // with the node's address as source: every fragment from the uplink,
    // a packet too big for its route, no route. A fragmented datagram
    // shows it.
    let short = Duration::from_millis(1500);
    assert_eq!(http_get(&topo.client, WEB, short).unwrap(), "pod2a");
    set_accept_local(&topo, "eth0", "0");
    forget_next_hop_to_pod2a(&topo);
    assert_eq!(
        http_get(&topo.client, WEB, short).unwrap(),
        "pod2a",
        "a connection never reaches the stack, its next hop unresolved or not"
    );
    assert!(
        big_udp_request(&topo, short).is_err(),
        "fragments go to the stack, which drops them as martians"
    );
    set_accept_local(&topo, "eth0", "1");
    assert_eq!(big_udp_request(&topo, short).unwrap(), "pod2a");
    assert_eq!(http_get(&topo.client, WEB, short).unwrap(), "pod2a");
    // A pod interface needs none: a pod reaching itself is translated to
    // the node's address, which the stack would drop as a martian there (on
    // a bridge CNI too, where it would enter through cni0), so the TC
    // program forwards it to the pod itself. Both ways, several times.
    for _ in 0..3 {
        assert_eq!(http_get(&pod1a.ns, SELF_WEB, short).unwrap(), "pod1a");
    }

    // With accept_local on the uplink, a LAN packet claiming the node's
    // address would reach the node's sockets; the uplink program drops it.
    let server = topo
        .node1
        .run(|| UdpSocket::bind((NODE1, 7777)))
        .unwrap()
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    send_udp_from(&topo, NODE1, 7777);
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a spoof of the node's address got in"
    );
    // The same datagram from the client's own address arrives (the test can tell).
    send_udp_from(&topo, Ipv4Addr::new(192, 168, 50, 10), 7777);
    let (_, from) = server.recv_from(&mut buf).expect("the genuine datagram");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 50, 10))
    );
    let text = metrics(&topo);
    assert!(
        metric(
            &text,
            "lb_datapath_events_total{event=\"node_source_spoofed\",family=\"ipv4\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
}
