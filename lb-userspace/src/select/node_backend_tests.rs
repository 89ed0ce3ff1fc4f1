//! Endpoints that are the node itself: an address of this node is a local
//! backend whatever its `nodeName` (hostNetwork endpoints, the `kubernetes`
//! Service's API server, listed with no `nodeName`).

use std::net::Ipv4Addr;

use super::tests::{backends_of, cluster, ep, http, http_slice, node, service};
use super::*;

/// node1's own address (`--node-ip`), node2's, and node1's pod gateway
/// address (found on an interface, not one of its own addresses).
const NODE1: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const NODE2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// An endpoint at `addr` on `node_name` (none: the `kubernetes` Service's shape).
fn at(addr: Ipv4Addr, node_name: Option<&str>) -> EndpointSpec {
    EndpointSpec {
        addresses: vec![addr],
        node_name: node_name.map(Into::into),
        ..ep(2, true, "")
    }
}

#[test]
fn an_address_of_the_node_is_local_whatever_its_node_name() {
    let scanned = NodeInfo {
        local_addresses: vec![Ipv4Addr::LOCALHOST, GATEWAY, NODE1],
        ..node()
    };
    let cases = [
        (
            "a pod named for this node",
            Ipv4Addr::new(10, 244, 1, 2),
            Some("node1"),
            true,
        ),
        (
            "a pod of another node",
            Ipv4Addr::new(10, 244, 2, 2),
            Some("node2"),
            false,
        ),
        ("this node's address, no nodeName", NODE1, None, true),
        (
            "this node's address, another nodeName",
            NODE1,
            Some("node2"),
            true,
        ),
        ("an interface address of this node", GATEWAY, None, true),
        ("another node's address, no nodeName", NODE2, None, false),
        (
            "another node's address, its nodeName",
            NODE2,
            Some("node2"),
            false,
        ),
        (
            "loopback is nobody's node address",
            Ipv4Addr::LOCALHOST,
            None,
            false,
        ),
        ("unspecified", Ipv4Addr::UNSPECIFIED, None, false),
    ];
    for (what, addr, node_name, local) in cases {
        assert_eq!(
            is_local(&at(addr, node_name), addr, &scanned),
            local,
            "{what}"
        );
    }
    // Before the first interface scan only the node's own addresses count.
    assert!(node().owns(NODE1));
    assert!(!node().owns(GATEWAY));
}

#[test]
fn a_node_backend_serves_local_policies_and_is_flagged_local() {
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let endpoints = || http_slice(vec![at(NODE1, None), at(NODE2, None)]);
    // Cluster: both, node1's marked local (no SNAT for outside clients).
    let c = cluster(service(ServiceKind::ClusterIp, http()), vec![endpoints()]);
    assert_eq!(
        backends_of(&c, vip, 80),
        Some(vec!["11:8080L".to_string(), "12:8080".to_string()])
    );
    // internalTrafficPolicy: Local: this node's own address serves.
    let local = ServiceSpec {
        internal_policy: TrafficPolicy::Local,
        ..service(ServiceKind::ClusterIp, http())
    };
    let c = cluster(local, vec![endpoints()]);
    assert_eq!(
        backends_of(&c, vip, 80),
        Some(vec!["11:8080L".to_string(), "12:8080~".to_string()])
    );
    // externalTrafficPolicy: Local: the node port too.
    let mut ports = http();
    ports[0].node_port = Some(30080);
    let external = ServiceSpec {
        external_policy: TrafficPolicy::Local,
        ..service(ServiceKind::NodePort, ports)
    };
    let c = cluster(external, vec![endpoints()]);
    assert_eq!(
        backends_of(&c, Ipv4Addr::UNSPECIFIED, 30080),
        Some(vec!["11:8080L".to_string(), "12:8080~".to_string()])
    );
}
