//! One table row per selection rule, each with its expected backend set.

use std::net::Ipv4Addr;

use super::*;
use crate::{
    desired::{NodeAddrs6, ObjectName, Protocol},
    model::{EndpointSpec, ServiceSpec, SlicePort, TargetPort},
};

pub(super) fn name(n: &str) -> ObjectName {
    ObjectName {
        namespace: "default".into(),
        name: n.into(),
    }
}

pub(super) fn node() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        zone: Some("zone-a".into()),
        addresses: vec![Ipv4Addr::new(192, 168, 50, 11)],
        local_addresses: Vec::new(),
        node_port_addresses: None,
        v6: NodeAddrs6::default(),
    }
}

pub(super) fn service(kind: ServiceKind, ports: Vec<ServicePort>) -> ServiceSpec {
    ServiceSpec {
        name: name("web"),
        kind,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
        ports,
        external_ips: vec![],
        load_balancer_ips: vec![],
        internal_policy: TrafficPolicy::Cluster,
        external_policy: TrafficPolicy::Cluster,
        affinity_timeout: None,
        ..ServiceSpec::default()
    }
}

pub(super) fn port(name: &str, port: u16, protocol: Protocol, target: TargetPort) -> ServicePort {
    ServicePort {
        name: name.into(),
        port,
        protocol,
        target_port: target,
        node_port: None,
    }
}

pub(super) fn http() -> Vec<ServicePort> {
    vec![port(
        "http",
        80,
        Protocol::Tcp,
        TargetPort::Name("http".into()),
    )]
}

/// An endpoint: last octet, ready, node.
pub(super) fn ep(last: u8, ready: bool, node: &str) -> EndpointSpec {
    EndpointSpec {
        addresses: vec![Ipv4Addr::new(10, 244, 1, last)],
        ready,
        serving: None,
        terminating: None,
        node_name: Some(node.into()),
        zone: None,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

/// A terminating endpoint that is still serving (or not).
pub(super) fn terminating(last: u8, serving: bool, node: &str) -> EndpointSpec {
    EndpointSpec {
        serving: Some(serving),
        terminating: Some(true),
        ..ep(last, false, node)
    }
}

pub(super) fn hinted(last: u8, zones: &[&str]) -> EndpointSpec {
    EndpointSpec {
        zone_hints: zones.iter().map(|z| (*z).to_string()).collect(),
        ..ep(last, true, "node9")
    }
}

pub(super) fn slice(n: &str, ports: &[(&str, u16)], endpoints: Vec<EndpointSpec>) -> SliceSpec {
    SliceSpec {
        name: name(n),
        service: "web".into(),
        address_type: AddressType::Ipv4,
        ports: ports
            .iter()
            .map(|&(name, port)| SlicePort {
                name: name.into(),
                port,
                protocol: Protocol::Tcp,
            })
            .collect(),
        endpoints,
        mirrored: false,
    }
}

pub(super) fn cluster(service: ServiceSpec, slices: Vec<SliceSpec>) -> Cluster {
    Cluster {
        services: [(service.name.clone(), service.into())]
            .into_iter()
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| (s.name.clone(), s.into()))
            .collect(),
        node: None,
    }
}

/// Backends of one frontend as "octet:port", with "L" when local and "~" when
/// kept for established connections only (not selected).
pub(super) fn backends_of(cluster: &Cluster, addr: Ipv4Addr, port: u16) -> Option<Vec<String>> {
    let (state, _) = desired_state(cluster, &node());
    let frontend = Frontend {
        addr,
        port,
        proto: Protocol::Tcp,
    };
    state.get(&frontend).map(|f| {
        f.backends
            .iter()
            .map(|(a, i)| {
                format!(
                    "{}:{}{}{}",
                    a.ip().octets()[3],
                    a.port(),
                    if i.local { "L" } else { "" },
                    if f.selects(i, false) { "" } else { "~" }
                )
            })
            .collect()
    })
}

pub(super) fn backends(cluster: &Cluster) -> Option<Vec<String>> {
    backends_of(cluster, Ipv4Addr::new(10, 96, 0, 10), 80)
}

pub(super) fn http_slice(endpoints: Vec<EndpointSpec>) -> SliceSpec {
    slice("a", &[("http", 8080)], endpoints)
}

#[test]
#[allow(clippy::too_many_lines)] // one table row per rule
fn selection_rules() {
    let svc = || service(ServiceKind::ClusterIp, http());
    let local_internal = || ServiceSpec {
        internal_policy: TrafficPolicy::Local,
        ..svc()
    };
    let cases: Vec<(&str, Cluster, Option<Vec<&str>>)> = vec![
        (
            "named targetPort through the slice port",
            cluster(svc(), vec![http_slice(vec![ep(2, true, "node1")])]),
            Some(vec!["2:8080L"]),
        ),
        (
            "a name maps to different numbers per slice",
            cluster(
                svc(),
                vec![
                    http_slice(vec![ep(2, true, "node1")]),
                    slice("b", &[("http", 9090)], vec![ep(3, true, "node1")]),
                ],
            ),
            Some(vec!["2:8080L", "3:9090L"]),
        ),
        (
            "not ready endpoints take no new connections",
            cluster(
                svc(),
                vec![http_slice(vec![
                    ep(2, true, "node1"),
                    ep(3, false, "node1"),
                ])],
            ),
            Some(vec!["2:8080L", "3:8080L~"]),
        ),
        (
            "duplicates across slices count once",
            cluster(
                svc(),
                vec![
                    http_slice(vec![ep(2, true, "node1")]),
                    slice("b", &[("http", 8080)], vec![ep(2, true, "node1")]),
                ],
            ),
            Some(vec!["2:8080L"]),
        ),
        (
            "other nodes' endpoints are remote",
            cluster(svc(), vec![http_slice(vec![ep(2, true, "node2")])]),
            Some(vec!["2:8080"]),
        ),
        (
            "a slice without the port contributes nothing",
            cluster(
                svc(),
                vec![slice("a", &[("metrics", 9100)], vec![ep(2, true, "node1")])],
            ),
            Some(vec![]),
        ),
        (
            "no slices: the frontend exists with no backends",
            cluster(svc(), vec![]),
            Some(vec![]),
        ),
        (
            "terminating endpoints keep connections but take no new ones",
            cluster(
                svc(),
                vec![http_slice(vec![
                    ep(2, true, "node2"),
                    terminating(3, true, "node2"),
                ])],
            ),
            Some(vec!["2:8080", "3:8080~"]),
        ),
        (
            "no ready endpoint: serving terminating ones take new connections",
            cluster(
                svc(),
                vec![http_slice(vec![
                    terminating(2, true, "node2"),
                    terminating(3, false, "node2"),
                    ep(4, false, "node2"),
                ])],
            ),
            Some(vec!["2:8080", "3:8080~", "4:8080~"]),
        ),
        (
            "internalTrafficPolicy Local: only this node's endpoints",
            cluster(
                local_internal(),
                vec![http_slice(vec![ep(2, true, "node1"), ep(3, true, "node2")])],
            ),
            Some(vec!["2:8080L", "3:8080~"]),
        ),
        (
            "internalTrafficPolicy Local without local endpoints drops",
            cluster(
                local_internal(),
                vec![http_slice(vec![ep(3, true, "node2")])],
            ),
            Some(vec!["3:8080~"]),
        ),
        (
            "internalTrafficPolicy Local falls back to local terminating",
            cluster(
                local_internal(),
                vec![http_slice(vec![
                    terminating(2, true, "node1"),
                    ep(3, true, "node2"),
                ])],
            ),
            Some(vec!["2:8080L", "3:8080~"]),
        ),
        (
            "zone hints for this zone are used",
            cluster(
                svc(),
                vec![http_slice(vec![
                    hinted(2, &["zone-a"]),
                    hinted(3, &["zone-b"]),
                    hinted(4, &["zone-a", "zone-b"]),
                ])],
            ),
            Some(vec!["2:8080", "3:8080~", "4:8080"]),
        ),
        (
            "an endpoint without hints disables topology",
            cluster(
                svc(),
                vec![http_slice(vec![hinted(2, &["zone-a"]), hinted(3, &[])])],
            ),
            Some(vec!["2:8080", "3:8080"]),
        ),
        (
            "no hint for this zone: all endpoints",
            cluster(
                svc(),
                vec![http_slice(vec![
                    hinted(2, &["zone-b"]),
                    hinted(3, &["zone-c"]),
                ])],
            ),
            Some(vec!["2:8080", "3:8080"]),
        ),
        (
            "node hints for this node come first",
            cluster(
                svc(),
                vec![http_slice(vec![
                    EndpointSpec {
                        node_hints: vec!["node1".into()],
                        ..hinted(2, &["zone-a"])
                    },
                    EndpointSpec {
                        node_hints: vec!["node2".into()],
                        ..hinted(3, &["zone-a"])
                    },
                ])],
            ),
            Some(vec!["2:8080", "3:8080~"]),
        ),
        (
            "NodePort services keep their ClusterIP frontend",
            cluster(
                service(ServiceKind::NodePort, http()),
                vec![http_slice(vec![ep(2, true, "node1")])],
            ),
            Some(vec!["2:8080L"]),
        ),
        (
            "headless services are skipped",
            cluster(
                service(ServiceKind::Headless, http()),
                vec![http_slice(vec![ep(2, true, "node1")])],
            ),
            None,
        ),
        (
            "ExternalName services are skipped",
            cluster(service(ServiceKind::ExternalName, http()), vec![]),
            None,
        ),
    ];
    for (rule, cluster, expected) in cases {
        let expected = expected.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(backends(&cluster), expected, "{rule}");
    }
}

#[test]
fn external_frontends_follow_external_traffic_policy() {
    let mut ports = http();
    ports[0].node_port = Some(30080);
    let svc = ServiceSpec {
        external_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
        load_balancer_ips: vec![Ipv4Addr::new(198, 51, 100, 9)],
        external_policy: TrafficPolicy::Local,
        ..service(ServiceKind::LoadBalancer, ports)
    };
    let c = cluster(
        svc,
        vec![http_slice(vec![ep(2, true, "node1"), ep(3, true, "node2")])],
    );
    let local = Some(vec!["2:8080L".to_string(), "3:8080~".to_string()]);
    assert_eq!(
        backends_of(&c, Ipv4Addr::new(203, 0, 113, 7), 80),
        local,
        "externalIP"
    );
    assert_eq!(
        backends_of(&c, Ipv4Addr::new(198, 51, 100, 9), 80),
        local,
        "load-balancer IP"
    );
    assert_eq!(
        backends_of(&c, Ipv4Addr::UNSPECIFIED, 30080),
        local,
        "the node port, one frontend for every node-port address"
    );
    assert_eq!(
        backends_of(&c, Ipv4Addr::new(192, 168, 50, 11), 30080),
        None
    );
    let (state, _) = desired_state(&c, &node());
    let node_port = &state[&Frontend::node_port(30080, Protocol::Tcp)];
    assert_eq!(node_port.node_port_addrs, [Ipv4Addr::new(192, 168, 50, 11)]);
    let elsewhere = NodeInfo {
        node_port_addresses: Some(vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]),
        ..node()
    };
    let (state, _) = desired_state(&c, &elsewhere);
    assert_eq!(
        state[&Frontend::node_port(30080, Protocol::Tcp)].node_port_addrs,
        [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        "where --nodeport-addresses says"
    );
    assert!(state
        .iter()
        .all(|(f, want)| f.is_node_port() || want.node_port_addrs.is_empty()));
    assert_eq!(
        backends(&c),
        Some(vec!["2:8080L".to_string(), "3:8080".to_string()]),
        "the cluster IP follows internalTrafficPolicy (Cluster)"
    );
}

/// Whether the cluster IP's frontend refuses (no usable endpoint anywhere)
/// rather than drops what it cannot balance, as the data path's flag says.
fn refuses(cluster: &Cluster) -> bool {
    let (state, _) = desired_state(cluster, &node());
    let frontend = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: Protocol::Tcp,
    };
    let want = &state[&frontend];
    let count = want
        .backends
        .values()
        .filter(|b| want.selects(b, false))
        .count();
    let count = u32::try_from(count).expect("few backends");
    let flags =
        crate::plan::service_flags(want.table_policy(), false, count, want.has_endpoints, false);
    flags & lb_common::SERVICE_F_REJECT != 0
}

#[test]
fn no_usable_endpoint_anywhere_refuses_and_none_here_under_local_drops() {
    let svc = || service(ServiceKind::ClusterIp, http());
    let local = || ServiceSpec {
        internal_policy: TrafficPolicy::Local,
        ..svc()
    };
    let cases = [
        ("no slice", cluster(svc(), vec![]), true),
        (
            "an empty slice",
            cluster(svc(), vec![http_slice(vec![])]),
            true,
        ),
        (
            "only endpoints neither ready nor serving-terminating",
            cluster(
                svc(),
                vec![http_slice(vec![
                    ep(2, false, "node2"),
                    terminating(3, false, "node2"),
                ])],
            ),
            true,
        ),
        (
            "a ready endpoint",
            cluster(svc(), vec![http_slice(vec![ep(2, true, "node2")])]),
            false,
        ),
        (
            "a serving terminating endpoint",
            cluster(svc(), vec![http_slice(vec![terminating(2, true, "node2")])]),
            false,
        ),
        (
            "Local policy, ready endpoints only on another node: dropped",
            cluster(local(), vec![http_slice(vec![ep(3, true, "node2")])]),
            false,
        ),
        (
            "Local policy, no endpoints at all: refused (kube-proxy too)",
            cluster(local(), vec![http_slice(vec![])]),
            true,
        ),
        (
            "Local policy, a local endpoint",
            cluster(local(), vec![http_slice(vec![ep(2, true, "node1")])]),
            false,
        ),
    ];
    for (what, cluster, refused) in cases {
        assert_eq!(refuses(&cluster), refused, "{what}");
    }
}

#[test]
fn other_address_families_are_ignored_with_a_warning() {
    let mut v6 = http_slice(vec![]);
    v6.name = name("v6");
    v6.address_type = AddressType::Other("IPv6".into());
    let c = cluster(service(ServiceKind::ClusterIp, http()), vec![v6]);
    let (state, warnings) = desired_state(&c, &node());
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("default/v6") && warnings[0].contains("IPv6"),
        "{warnings:?}"
    );
    assert!(state.values().all(|f| f.backends.is_empty()));
}

#[test]
fn a_service_with_5000_endpoints_in_50_slices_is_not_truncated() {
    let slices = (0..50u16)
        .map(|s| {
            let endpoints = (0..100u16)
                .map(|i| {
                    let n = s * 100 + i;
                    EndpointSpec {
                        addresses: vec![Ipv4Addr::new(
                            10,
                            245,
                            u8::try_from(n / 250).unwrap(),
                            u8::try_from(n % 250).unwrap() + 1,
                        )],
                        ..ep(0, true, "node2")
                    }
                })
                .collect();
            slice(&format!("s{s}"), &[("http", 8080)], endpoints)
        })
        .collect();
    let c = cluster(service(ServiceKind::ClusterIp, http()), slices);
    assert_eq!(backends(&c).map(|b| b.len()), Some(5000));
}

#[test]
fn the_examples_give_the_documented_state() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let loaded = crate::manifest::load_dir(&dir, &crate::manifest::ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let (state, warnings) = desired_state(&loaded.cluster(), &node());
    assert!(warnings.is_empty(), "{warnings:?}");
    let lines: Vec<String> = state
        .iter()
        .map(|(f, d)| {
            let b: Vec<String> = d
                .backends
                .iter()
                .map(|(a, i)| format!("{a}{}", if i.local { "(local)" } else { "" }))
                .collect();
            format!("{} {f} -> {}", d.service, b.join(","))
        })
        .collect();
    assert_eq!(
        lines,
        [
            "default/web-service 10.96.0.10:53/UDP -> 10.244.1.2:5353(local),10.244.1.3:5353(local),10.244.1.4:5353(local),10.244.2.2:5353",
            "default/web-service 10.96.0.10:80/TCP -> 10.244.1.2:8080(local),10.244.1.3:8080(local),10.244.1.4:8080(local),10.244.2.2:8080",
            "default/external-service 10.96.0.20:80/TCP -> 10.244.1.3:8080(local),10.244.2.2:8080",
        ]
    );
}
