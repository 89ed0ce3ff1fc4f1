//! Test helpers: the IPv6 twin of an IPv4 cluster, address by address
//! (`a.b.c.d` becomes `fd00:4::a.b.c.d`), and the IPv6 desired state that
//! its IPv4 desired state predicts; plus scenarios beyond
//! `kube_proxy_tests`' for the rules those do not reach.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV6},
    sync::Arc,
};

use super::tests::{cluster, ep, http, http_slice, name, node, service};
use super::*;
use crate::{
    desired::{DesiredState6, FrontendV6, Listen6, NodeAddrs6},
    model::{IpFamilies, IpFamilyPolicy, ServiceV6, SourceRange, SourceRangeV6},
};

/// The prefix of every twin address.
const TWIN_PREFIX: u128 = 0xfd00_0004 << 96;

/// The IPv6 twin of an IPv4 address.
pub(super) fn twin(addr: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from(TWIN_PREFIX | u128::from(u32::from(addr)))
}

fn twins(addrs: &[Ipv4Addr]) -> Vec<Ipv6Addr> {
    addrs.iter().map(|&a| twin(a)).collect()
}

/// The twin of a range; all of IPv4 is all of IPv6.
fn twin_range(range: SourceRange) -> SourceRangeV6 {
    if range.prefix_len == 0 {
        SourceRangeV6::new(Ipv6Addr::UNSPECIFIED, 0)
    } else {
        SourceRangeV6::new(twin(range.addr), range.prefix_len + 96)
    }
}

fn twin_endpoint(e: &EndpointSpec) -> EndpointSpec<Ipv6Addr> {
    EndpointSpec {
        addresses: twins(&e.addresses),
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
        node_name: e.node_name.clone(),
        zone: e.zone.clone(),
        zone_hints: e.zone_hints.clone(),
        node_hints: e.node_hints.clone(),
    }
}

/// `cluster` with every Service made dual-stack with the twins of its
/// addresses and ranges, and an IPv6 twin beside every (IPv4) slice.
pub(super) fn twin_cluster(cluster: &Cluster) -> Cluster {
    let mut out = cluster.clone();
    for service in out.services.values_mut() {
        let service = Arc::make_mut(service);
        assert!(service.v6.is_none(), "{}: already has IPv6", service.name);
        service.ip_families = IpFamilies::from_list(&[IpFamily::V4, IpFamily::V6]).unwrap();
        service.ip_family_policy = IpFamilyPolicy::RequireDualStack;
        service.v6 = Some(Box::new(ServiceV6 {
            cluster_ips: twins(&service.cluster_ips),
            external_ips: twins(&service.external_ips),
            load_balancer_ips: twins(&service.load_balancer_ips),
            source_ranges: service
                .source_ranges
                .iter()
                .map(|&r| twin_range(r))
                .collect(),
        }));
    }
    for slice in cluster.slices.values() {
        assert_eq!(slice.address_type, AddressType::Ipv4, "{}", slice.name);
        let twin = SliceSpec {
            name: ObjectName {
                namespace: slice.name.namespace.clone(),
                name: format!("{}-v6", slice.name.name),
            },
            address_type: AddressType::Ipv6(slice.endpoints.iter().map(twin_endpoint).collect()),
            endpoints: Vec::new(),
            ..SliceSpec::clone(slice)
        };
        out.slices.insert(twin.name.clone(), twin.into());
    }
    if let Some(facts) = &mut out.node {
        facts.addresses_v6 = twins(&facts.addresses);
    }
    out
}

/// `node` with the twins of its addresses as its IPv6 ones.
pub(super) fn twin_node(node: &NodeInfo) -> NodeInfo {
    NodeInfo {
        v6: NodeAddrs6 {
            addresses: twins(&node.addresses),
            local_addresses: twins(&node.local_addresses),
            node_port_addresses: node.node_port_addresses.as_deref().map(twins),
        },
        ..node.clone()
    }
}

fn twin_frontend(frontend: Frontend) -> FrontendV6 {
    if frontend.is_node_port() {
        FrontendV6::node_port(frontend.port, frontend.proto)
    } else {
        FrontendV6 {
            listen: Listen6::Addr(twin(frontend.addr), frontend.port),
            proto: frontend.proto,
        }
    }
}

/// The IPv6 desired state that mirrors `state` (each frontend, backend,
/// range and node-port address by its twin; everything else as it is).
pub(super) fn twin_state(state: &DesiredState) -> DesiredState6 {
    state
        .iter()
        .map(|(&frontend, want)| {
            let twin_want = DesiredFrontend {
                service: want.service.clone(),
                port_name: want.port_name.clone(),
                backends: want
                    .backends
                    .iter()
                    .map(|(a, info)| (SocketAddrV6::new(twin(*a.ip()), a.port(), 0, 0), *info))
                    .collect(),
                policy: want.policy,
                pods_policy: want.pods_policy,
                affinity_timeout: want.affinity_timeout,
                has_endpoints: want.has_endpoints,
                source_ranges: want.source_ranges.iter().map(|&r| twin_range(r)).collect(),
                node_port_addrs: twins(&want.node_port_addrs),
            };
            (twin_frontend(frontend), twin_want)
        })
        .collect()
}

/// An endpoint at `addr` on `node_name` (none: a node's own address).
fn at(addr: Ipv4Addr, node_name: Option<&str>) -> EndpointSpec {
    EndpointSpec {
        addresses: vec![addr],
        node_name: node_name.map(Into::into),
        ..ep(9, true, "")
    }
}

/// Scenarios for the rules `kube_proxy_tests` does not reach: node hints,
/// local endpoints by address, both `Local` policies, source ranges with
/// the node in range, node-port addresses, affinity, and a contested
/// frontend.
pub(super) fn more_cases() -> Vec<(&'static str, Cluster, NodeInfo)> {
    let svc = || service(ServiceKind::ClusterIp, http());
    let node_hinted = |last, for_node: &str| EndpointSpec {
        node_hints: vec![for_node.into()],
        ..ep(last, true, "node2")
    };
    let gateway = Ipv4Addr::new(10, 244, 1, 1);
    let scanned = NodeInfo {
        local_addresses: vec![gateway, Ipv4Addr::new(192, 168, 50, 11)],
        ..node()
    };
    let local_both = ServiceSpec {
        internal_policy: TrafficPolicy::Local,
        external_policy: TrafficPolicy::Local,
        external_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
        ..svc()
    };
    let mut ports = http();
    ports[0].node_port = Some(30080);
    let lb = ServiceSpec {
        load_balancer_ips: vec![Ipv4Addr::new(198, 51, 100, 7)],
        external_ips: vec![Ipv4Addr::new(203, 0, 113, 8)],
        source_ranges: vec![
            SourceRange {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 8,
            },
            SourceRange {
                addr: Ipv4Addr::new(192, 168, 0, 0),
                prefix_len: 16,
            },
        ],
        external_policy: TrafficPolicy::Local,
        affinity_timeout: Some(600),
        ..service(ServiceKind::LoadBalancer, ports)
    };
    let chosen = NodeInfo {
        node_port_addresses: Some(vec![
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 168, 50, 11),
        ]),
        ..node()
    };
    let endpoints = || {
        vec![http_slice(vec![
            ep(2, true, "node1"),
            ep(3, true, "node2"),
            ep(4, false, "node1"),
        ])]
    };
    vec![
        (
            "topology: node hints for this node",
            cluster(
                svc(),
                vec![http_slice(vec![
                    node_hinted(2, "node1"),
                    node_hinted(3, "node2"),
                ])],
            ),
            node(),
        ),
        (
            "local by address: the node's own and an interface's, under both Local policies",
            cluster(
                local_both,
                vec![http_slice(vec![
                    at(gateway, None),
                    at(Ipv4Addr::new(192, 168, 50, 11), Some("node2")),
                    at(Ipv4Addr::new(192, 168, 50, 12), None),
                    ep(5, true, "node2"),
                ])],
            ),
            scanned,
        ),
        (
            "a load balancer with ranges holding the node, a node port, affinity",
            cluster(lb.clone(), endpoints()),
            node(),
        ),
        (
            "the same on chosen node-port addresses, the node outside the ranges",
            cluster(lb, endpoints()),
            NodeInfo {
                addresses: vec![Ipv4Addr::new(172, 16, 0, 11)],
                ..chosen
            },
        ),
        ("no endpoint anywhere", cluster(svc(), vec![]), node()),
        ("a contested frontend", contested(), node()),
    ]
}

/// web, and an older Service whose externalIP is web's cluster IP (the
/// cluster IP keeps it).
fn contested() -> Cluster {
    let thief = ServiceSpec {
        name: name("thief"),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 20)],
        external_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
        created: Some(1),
        ..service(ServiceKind::ClusterIp, http())
    };
    let mut c = cluster(
        service(ServiceKind::ClusterIp, http()),
        vec![http_slice(vec![ep(2, true, "node1")])],
    );
    let mut theirs = http_slice(vec![ep(7, true, "node2")]);
    theirs.name = name("thief-a");
    theirs.service = "thief".into();
    c.slices.insert(theirs.name.clone(), theirs.into());
    c.services.insert(thief.name.clone(), thief.into());
    c
}
