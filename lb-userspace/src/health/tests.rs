//! The pure parts: which Services get a port, the local endpoint count, and
//! the answers, byte for byte.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use super::*;
use crate::{
    ident::Protocol,
    model::{EndpointSpec, NodeFacts, ServicePort, ServiceSpec, SlicePort, SliceSpec, TargetPort},
};

const NODE: &str = "node1";

/// The node named `n`, with `addresses` of its own.
fn on(n: &str, addresses: &[Ipv4Addr]) -> NodeInfo {
    NodeInfo {
        name: n.into(),
        addresses: addresses.to_vec(),
        ..NodeInfo::default()
    }
}

fn name(namespace: &str, n: &str) -> ObjectName {
    ObjectName {
        namespace: namespace.into(),
        name: n.into(),
    }
}

fn lb_local(n: &str, hc_port: Option<u16>) -> ServiceSpec {
    ServiceSpec {
        name: name("default", n),
        kind: ServiceKind::LoadBalancer,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            node_port: Some(30080),
        }],
        external_policy: TrafficPolicy::Local,
        health_check_node_port: hc_port,
        ..ServiceSpec::default()
    }
}

fn ep(last: u8, ready: bool, node: Option<&str>) -> EndpointSpec {
    EndpointSpec {
        addresses: vec![Ipv4Addr::new(10, 244, 1, last)],
        ready,
        serving: None,
        terminating: None,
        node_name: node.map(Into::into),
        zone: None,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

fn slice(
    namespace: &str,
    n: &str,
    service: &str,
    ports: &[u16],
    eps: Vec<EndpointSpec>,
) -> SliceSpec {
    SliceSpec {
        name: name(namespace, n),
        service: service.into(),
        address_type: AddressType::Ipv4,
        ports: ports
            .iter()
            .map(|&p| SlicePort {
                name: format!("p{p}"),
                port: p,
                protocol: Protocol::Tcp,
            })
            .collect(),
        endpoints: eps,
        mirrored: false,
    }
}

fn cluster(services: Vec<ServiceSpec>, slices: Vec<SliceSpec>) -> Cluster {
    Cluster {
        services: services
            .into_iter()
            .map(|s| (s.name.clone(), s.into()))
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| (s.name.clone(), s.into()))
            .collect(),
        node: None,
    }
}

#[test]
fn only_local_load_balancers_with_a_port_get_a_health_check() {
    let mut cluster_policy = lb_local("cluster", Some(31001));
    cluster_policy.external_policy = TrafficPolicy::Cluster;
    let mut node_port = lb_local("nodeport", Some(31002));
    node_port.kind = ServiceKind::NodePort;
    let mut no_ports = lb_local("noports", Some(31003));
    no_ports.ports.clear();
    let mut ipv6_only = lb_local("v6", Some(31004));
    ipv6_only.cluster_ips.clear();
    let c = cluster(
        vec![
            lb_local("web", Some(31000)),
            lb_local("unset", None),
            cluster_policy,
            node_port,
            no_ports,
            ipv6_only,
        ],
        vec![],
    );
    assert_eq!(
        health_check_ports(&c),
        [(name("default", "web"), 31000)].into()
    );
}

#[test]
fn health_check_ports_follow_the_changed_services_only() {
    let before = cluster(
        vec![
            lb_local("web", Some(31000)),
            lb_local("gone", Some(31001)),
            lb_local("moved", Some(31002)),
            lb_local("later", None),
        ],
        vec![],
    );
    let mut ports = health_check_ports(&before);
    let mut cluster_policy = lb_local("moved", Some(31002));
    cluster_policy.external_policy = TrafficPolicy::Cluster;
    let after = cluster(
        vec![
            lb_local("web", Some(31000)),
            cluster_policy,
            lb_local("later", Some(31003)),
            lb_local("new", Some(31004)),
        ],
        vec![],
    );
    let changes = Changes {
        services: ["gone", "moved", "later", "new"]
            .into_iter()
            .map(|n| name("default", n))
            .collect(),
        ..Changes::default()
    };
    update_health_check_ports(&mut ports, &after, &changes);
    assert_eq!(ports, health_check_ports(&after));
    // A Service outside the changes is not looked at: the ports say what
    // the changes said (here, a port "web" no longer has).
    let mut web = lb_local("web", Some(31009));
    web.external_policy = TrafficPolicy::Local;
    let unchanged = cluster(vec![web], vec![]);
    update_health_check_ports(&mut ports, &unchanged, &Changes::default());
    assert_eq!(ports[&name("default", "web")], 31000);
    update_health_check_ports(&mut ports, &unchanged, &Changes::all());
    assert_eq!(ports, health_check_ports(&unchanged));
}

#[test]
fn local_ready_endpoints_count_as_kube_proxy_counts_them() {
    let terminating_serving = EndpointSpec {
        serving: Some(true),
        terminating: Some(true),
        ..ep(5, false, Some(NODE))
    };
    let mut mirrored = slice(
        "default",
        "web-mirror",
        "web",
        &[8080],
        vec![ep(7, true, Some(NODE))],
    );
    mirrored.mirrored = true;
    let mut ipv6 = slice(
        "default",
        "web-v6",
        "web",
        &[8080],
        vec![ep(8, true, Some(NODE))],
    );
    ipv6.address_type = AddressType::Other("IPv6".into());
    let c = cluster(
        vec![lb_local("web", Some(31000)), lb_local("idle", Some(31001))],
        vec![
            // Two ports: address .1 counts once; not ready, serving and
            // terminating, remote and unplaced endpoints do not count.
            slice(
                "default",
                "web-a",
                "web",
                &[8080, 8443],
                vec![
                    ep(1, true, Some(NODE)),
                    ep(2, false, Some(NODE)),
                    ep(3, true, Some("node2")),
                    ep(4, true, None),
                    terminating_serving,
                ],
            ),
            // Another slice: .1 again (once), .6 new.
            slice(
                "default",
                "web-b",
                "web",
                &[8080],
                vec![ep(1, true, Some(NODE)), ep(6, true, Some(NODE))],
            ),
            // Mirrored slices are part of the union.
            mirrored,
            // No ports: no endpoints (kube-proxy skips such a slice).
            slice(
                "default",
                "web-noports",
                "web",
                &[],
                vec![ep(9, true, Some(NODE))],
            ),
            // Another family, another namespace: not this Service's.
            ipv6,
            slice(
                "other",
                "web-x",
                "web",
                &[8080],
                vec![ep(10, true, Some(NODE))],
            ),
            // The idle Service has only remote endpoints: absent (zero).
            slice(
                "default",
                "idle-a",
                "idle",
                &[80],
                vec![ep(11, true, Some("node2"))],
            ),
        ],
    );
    let ports = health_check_ports(&c);
    assert_eq!(
        local_ready_endpoints(&c, &SliceIndex::build(&c), &on(NODE, &[]), ports.keys()),
        [(name("default", "web"), 3)].into(),
        ".1, .6 and .7"
    );
    // Only the Services asked about.
    assert!(local_ready_endpoints(&c, &SliceIndex::build(&c), &on(NODE, &[]), []).is_empty());
    assert_eq!(
        local_ready_endpoints(&c, &SliceIndex::build(&c), &on("node2", &[]), ports.keys()),
        [(name("default", "web"), 1), (name("default", "idle"), 1)].into()
    );
    // An endpoint at one of the node's addresses is the node itself, local
    // without a nodeName (.4) or with another's (.3).
    let node = on(
        NODE,
        &[Ipv4Addr::new(10, 244, 1, 4), Ipv4Addr::new(10, 244, 1, 3)],
    );
    assert_eq!(
        local_ready_endpoints(&c, &SliceIndex::build(&c), &node, ports.keys()),
        [(name("default", "web"), 5)].into(),
        ".1, .3, .4, .6 and .7"
    );
}

#[test]
fn the_service_answer_is_kube_proxys() {
    let web = name("default", "web");
    let ok = service::reply(&web, 2, true);
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\
         \"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    assert_eq!(
        ok.headers,
        [
            ("Content-Type", "application/json".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("X-Load-Balancing-Endpoint-Weight", "2".to_string()),
        ]
    );
    let none = service::reply(&web, 0, true);
    assert_eq!(none.status, 503);
    assert!(none.body.contains("\"localEndpoints\": 0,"));
    assert_eq!(none.headers[2].1, "0");
    // Endpoints, but the proxy is behind: 503 as well.
    let late = service::reply(&web, 2, false);
    assert_eq!(late.status, 503);
    assert!(late.body.ends_with("\"serviceProxyHealthy\": false\n}"));
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

#[test]
fn times_are_written_as_go_writes_them() {
    assert_eq!(proxy::go_time(None), "0001-01-01T00:00:00Z");
    assert_eq!(
        proxy::go_time(Some(at(1_700_000_000, 0))),
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(
        proxy::go_time(Some(at(1_700_000_000, 120_000_000))),
        "2023-11-14T22:13:20.12Z"
    );
    assert_eq!(
        proxy::go_time(Some(at(1_700_000_000, 1))),
        "2023-11-14T22:13:20.000000001Z"
    );
}

#[test]
fn the_proxy_is_healthy_unless_a_change_waits_too_long_after_a_sync() {
    let now = Instant::now();
    let timeout = Duration::from_mins(1);
    let ago = |s| now.checked_sub(Duration::from_secs(s)).unwrap();
    // Starting: healthy, even with a change waiting (kube-proxy checks only
    // proxiers that have synced once).
    assert!(SyncState::default().healthy(now, timeout));
    let starting = SyncState {
        last_updated: None,
        pending_since: Some(ago(600)),
    };
    assert!(starting.healthy(now, timeout));
    let synced = SyncState {
        last_updated: Some(at(1_700_000_000, 0)),
        pending_since: None,
    };
    assert!(synced.healthy(now, timeout));
    let waiting = |s| SyncState {
        pending_since: Some(ago(s)),
        ..synced
    };
    assert!(waiting(59).healthy(now, timeout));
    assert!(!waiting(60).healthy(now, timeout));
}

#[test]
fn healthz_and_livez_answer_as_kube_proxy_does() {
    let now = Instant::now();
    let wall = at(1_700_000_100, 0);
    let timeout = Duration::from_mins(1);
    let headers = json_headers();
    // Before any sync: healthy, lastUpdated is now, no per-family status.
    let start = proxy::reply(&SyncState::default(), Some(true), now, wall, timeout);
    assert_eq!(start.status, 200);
    assert_eq!(start.headers, headers);
    assert_eq!(
        start.body,
        r#"{"lastUpdated":"2023-11-14T22:15:00Z","currentTime":"2023-11-14T22:15:00Z","nodeEligible":true,"healthy":true}"#
    );
    let synced = SyncState {
        last_updated: Some(at(1_700_000_000, 0)),
        pending_since: None,
    };
    let healthz = proxy::reply(&synced, Some(true), now, wall, timeout);
    assert_eq!(healthz.status, 200);
    assert_eq!(
        healthz.body,
        r#"{"lastUpdated":"2023-11-14T22:15:00Z","currentTime":"2023-11-14T22:15:00Z","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:20Z","healthy":true}}}"#
    );
    let livez = proxy::reply(&synced, None, now, wall, timeout);
    assert_eq!(livez.status, 200);
    assert!(!livez.body.contains("nodeEligible"));
    // Overdue: 503 on both, lastUpdated the real one.
    let overdue = SyncState {
        pending_since: now.checked_sub(Duration::from_secs(61)),
        ..synced
    };
    for node in [Some(true), None] {
        let late = proxy::reply(&overdue, node, now, wall, timeout);
        assert_eq!(late.status, 503);
        assert!(late
            .body
            .starts_with(r#"{"lastUpdated":"2023-11-14T22:13:20Z","#));
        assert!(late.body.contains(r#""healthy":false,"#));
    }
    // Node being deleted: /healthz 503 (the proxy itself still healthy),
    // /livez ignores it.
    let leaving = proxy::reply(&synced, Some(false), now, wall, timeout);
    assert_eq!(leaving.status, 503);
    assert_eq!(
        leaving.body,
        r#"{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:15:00Z","nodeEligible":false,"healthy":true,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:20Z","healthy":true}}}"#
    );
}

fn k8s_node(deleting: bool, taints: &[&str]) -> k8s_openapi::api::core::v1::Node {
    let mut node = k8s_openapi::api::core::v1::Node::default();
    node.metadata.name = Some(NODE.into());
    if deleting {
        node.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
    }
    node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        taints: Some(
            taints
                .iter()
                .map(|k| k8s_openapi::api::core::v1::Taint {
                    key: (*k).into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    node
}

#[test]
fn a_node_is_eligible_until_it_is_being_deleted() {
    let facts = |deleting, taints: &[&str]| NodeFacts::from_k8s(&k8s_node(deleting, taints));
    assert!(!facts(false, &["node.kubernetes.io/unschedulable"]).being_deleted);
    assert!(facts(true, &[]).being_deleted);
    assert!(facts(false, &["ToBeDeletedByClusterAutoscaler"]).being_deleted);
    let mut c = Cluster::default();
    // No Node (manifests, or not listed yet): eligible.
    assert!(node_eligible(&c, false));
    c.node = Some(facts(false, &[]));
    assert!(node_eligible(&c, true));
    c.node = Some(facts(true, &[]));
    assert!(!node_eligible(&c, true));
    // The Node we saw is gone: deleted.
    c.node = None;
    assert!(!node_eligible(&c, true));
}

#[test]
fn the_bind_address_is_ip_port_or_empty() {
    assert_eq!(
        parse_bind_address("0.0.0.0:10256").unwrap(),
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(parse_bind_address("").unwrap(), None);
    assert!(parse_bind_address("10256").is_err());
    assert_eq!(
        HealthOptions::default().healthz_addr,
        Some(DEFAULT_HEALTHZ_BIND_ADDRESS.parse().unwrap())
    );
}
