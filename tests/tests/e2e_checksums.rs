//! End to end with checksums as Linux senders leave them: TX checksum
//! offload on at the client and node2's pods (their L4 checksums arrive at
//! node1 partial), and node1 completing checksums in software on its
//! uplink's way out (`ethtool -K eth0 tx off`), where a wrong incremental
//! update of a partial checksum would corrupt the packet. XDP cannot tell a
//! partial checksum from a complete one: the agent's default (`auto`) takes
//! the TC uplink program on a veth uplink, whose checksum helpers handle
//! both, and refuses XDP there (native without `--xdp-on-veth`, and generic
//! mode everywhere) with an error naming the hook to use. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    topology::{ClusterTopology, SenderChecksums},
    traffic::{http_distribution, udp_distribution, PodServers},
};

/// The example web Service: pods on both nodes behind it.
const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// The example web Service's UDP port.
const WEB_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
/// Bound on each batch of requests.
const DEADLINE: Duration = Duration::from_mins(1);

/// The agent with `hook_args` on the topology whose senders leave checksums
/// partial: every request through the Service succeeds, to local backends
/// and to the remote one (translated to node1's address, leaving through
/// node1's uplink where the checksum is completed in software). With
/// `expect_in_log`, the agent's log says why it chose its hook.
fn every_request_succeeds(hook_args: &[&str], expect_in_log: Option<&str>) {
    let topo = ClusterTopology::with_checksums(SenderChecksums::Partial)
        .expect("building the namespace topology");
    let _servers = PodServers::start(&topo).expect("starting pod servers");
    let manifests = ManifestDir::with_examples().unwrap();
    let mut agent = Agent::start_ready(&topo.node1, &manifests, hook_args).expect("lb-agent ready");
    if let Some(expected) = expect_in_log {
        assert!(
            agent.log().contains(expected),
            "the agent's log should say {expected:?}:\n{}",
            agent.log()
        );
    }
    let tcp = http_distribution(&topo.client, WEB, 90, DEADLINE);
    assert_eq!(tcp.get("error"), None, "TCP through {WEB}: {tcp:?}");
    assert!(
        tcp.get("pod2a").copied().unwrap_or(0) > 0,
        "the remote backend served: {tcp:?}"
    );
    let udp = udp_distribution(&topo.client, WEB_DNS, 60, DEADLINE);
    assert_eq!(udp.get("error"), None, "UDP through {WEB_DNS}: {udp:?}");
    assert_eq!(
        udp.get("wrong-source"),
        None,
        "UDP through {WEB_DNS}: {udp:?}"
    );
    assert!(
        udp.get("pod2a").copied().unwrap_or(0) > 0,
        "the remote backend served: {udp:?}"
    );
    assert!(agent.is_running());
}

/// The agent refuses `hook_args` on the veth uplink, naming `--uplink-hook tc`.
fn refused(hook_args: &[&str], reason: &str) {
    let topo = ClusterTopology::with_checksums(SenderChecksums::Partial)
        .expect("building the namespace topology");
    let manifests = ManifestDir::with_examples().unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut args = vec!["--manifests", &dir];
    args.extend_from_slice(hook_args);
    let mut agent = Agent::start_with(&topo.node1, &args).expect("starting lb-agent");
    let err = agent
        .wait_ready(Duration::from_secs(30))
        .expect_err("the agent must refuse XDP here");
    let text = format!("{err:#}");
    assert!(
        text.contains(reason) && text.contains("--uplink-hook tc"),
        "{text}"
    );
}

#[test]
fn by_default_a_veth_uplink_gets_the_tc_program_and_partial_checksums_survive() {
    every_request_succeeds(
        &["--uplink-hook", "auto"],
        Some("the uplink program runs at TC"),
    );
}

#[test]
fn the_tc_uplink_program_completes_partial_checksums_correctly() {
    every_request_succeeds(&["--uplink-hook", "tc"], None);
}

#[test]
fn native_xdp_on_a_veth_uplink_is_refused() {
    refused(&["--uplink-hook", "xdp"], "eth0 is a veth");
}

#[test]
fn generic_xdp_is_refused() {
    refused(&["--uplink-hook", "xdp", "--xdp-mode", "skb"], "GRO");
}
