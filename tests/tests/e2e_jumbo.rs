//! End to end: jumbo frames. With a 9000-byte MTU on the LAN, node1's uplink
//! and the pods' links, the agent attaches its XDP program (multi-buffer
//! aware, `xdp.frags`: a program without it cannot attach where the veth
//! peer's MTU exceeds a page) and translates 8000-byte datagrams, which
//! arrive as multi-buffer frames, to a local and a remote backend, with the
//! uplink program at XDP and at TC. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use lb_tests::{
    agent::{udp_service_on_one_pod, Agent, ManifestDir},
    topology::{ClusterTopology, Cni, VXLAN_DEVICE},
    traffic::{PodServers, UDP_PORT},
};

/// The jumbo MTU.
const MTU: &str = "9000";
/// The overlay's MTU on the jumbo LAN: [`MTU`] less VXLAN's 50 bytes.
const VXLAN_JUMBO_MTU: &str = "8950";
/// Bytes of each request: one frame on a 9000-byte link, six on a 1500-byte one.
const DATAGRAM: usize = 8000;
/// A Service whose only endpoint is pod1a, on node1.
const LOCAL_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
/// A Service whose only endpoint is pod2a, on node2 (translated to node1's address).
const REMOTE_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
/// The Services' UDP port.
const PORT: u16 = 53;

/// A Service at `ip` whose only endpoint is `pod_ip` on `node`, UDP
/// [`PORT`] to the pods' UDP server.
fn service(name: &str, ip: Ipv4Addr, pod_ip: Ipv4Addr, node: &str) -> String {
    udp_service_on_one_pod(name, ip, &[("dns", PORT, UDP_PORT)], pod_ip, node)
}

/// Raises the MTU of every link a Service's packets cross: the LAN's ports
/// and bridge, the hosts' uplinks, both ends of the pods' links.
fn jumbo(topo: &ClusterTopology) {
    let set = |ns: &lb_tests::netns::Netns, dev: &str| {
        let out = ns
            .exec(&["ip", "link", "set", dev, "mtu", MTU])
            .unwrap_or_else(|e| panic!("{dev} in {}: {e:#}", ns.name()));
        assert!(out.status.success(), "{dev} in {}: {out:?}", ns.name());
    };
    for port in ["lan0", "lan1", "lan2", "br0"] {
        set(&topo.lan, port);
    }
    for host in [&topo.client, &topo.node1, &topo.node2] {
        set(host, "eth0");
    }
    for (pod, node) in [("pod1a", &topo.node1), ("pod2a", &topo.node2)] {
        set(&topo.pod(pod).ns, "eth0");
        set(node, &format!("v{pod}"));
        if topo.cni().bridged() {
            // The bridge's own MTU, else the smallest of its ports'.
            set(node, "cni0");
        }
    }
    if topo.cni() == Cni::BridgeVxlan {
        // A jumbo LAN gives the overlay a jumbo MTU (less VXLAN's headers),
        // as flannel derives it from the uplink's.
        for node in [&topo.node1, &topo.node2] {
            let out = node
                .exec(&["ip", "link", "set", VXLAN_DEVICE, "mtu", VXLAN_JUMBO_MTU])
                .unwrap_or_else(|e| panic!("{VXLAN_DEVICE} in {}: {e:#}", node.name()));
            assert!(out.status.success(), "{out:?}");
        }
    }
}

/// Sends one [`DATAGRAM`]-byte request from the client to `service` and
/// returns the answer and where it came from.
fn big_request(topo: &ClusterTopology, service: SocketAddrV4) -> (String, SocketAddr) {
    let socket = topo
        .client
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let sent = socket.send_to(&[b'x'; DATAGRAM], service).unwrap();
    assert_eq!(sent, DATAGRAM);
    let mut buf = [0u8; 1500];
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to {DATAGRAM} bytes sent to {service}: {e}"));
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

/// The agent with `extra` arguments on the jumbo topology; 8000-byte
/// requests to both Services are answered by their backends, from the
/// Service addresses.
fn jumbo_datagrams_are_translated(extra: &[&str]) {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    jumbo(&topo);
    let _servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::new().unwrap();
    let pod1a = topo.pod("pod1a").ip;
    let pod2a = topo.pod("pod2a").ip;
    manifests
        .write(
            "local.yaml",
            &service("jumbo-local", LOCAL_SERVICE, pod1a, "node1"),
        )
        .unwrap();
    manifests
        .write(
            "remote.yaml",
            &service("jumbo-remote", REMOTE_SERVICE, pod2a, "node2"),
        )
        .unwrap();
    let mut agent = Agent::start_ready(&topo.node1, &manifests, extra)
        .expect("lb-agent attaches on a 9000-byte MTU uplink and gets ready");
    for (service, backend) in [(LOCAL_SERVICE, "pod1a"), (REMOTE_SERVICE, "pod2a")] {
        let addr = SocketAddrV4::new(service, PORT);
        let (body, from) = big_request(&topo, addr);
        assert_eq!(
            (body.as_str(), from),
            (backend, SocketAddr::V4(addr)),
            "{DATAGRAM} bytes to {addr}"
        );
    }
    assert!(agent.is_running());
}

#[test]
fn jumbo_frames_are_translated_by_the_xdp_uplink_program() {
    jumbo_datagrams_are_translated(&[]);
}

#[test]
fn jumbo_frames_are_translated_by_the_tc_uplink_program() {
    jumbo_datagrams_are_translated(&["--uplink-hook", "tc"]);
}
