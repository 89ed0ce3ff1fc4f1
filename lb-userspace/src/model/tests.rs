//! Validation rules, one table row each.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::*;

fn service(spec: &Value) -> Result<ServiceSpec, String> {
    let object =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec});
    ServiceSpec::from_k8s(&serde_json::from_value(object).unwrap())
}

fn slice(
    labels: &Value,
    address_type: &str,
    ports: &Value,
    endpoints: &Value,
) -> Result<SliceSpec, String> {
    let object = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "prod", "labels": labels},
        "addressType": address_type, "ports": ports, "endpoints": endpoints,
    });
    SliceSpec::from_k8s(&serde_json::from_value(object).unwrap())
}

fn labelled() -> Value {
    json!({"kubernetes.io/service-name": "web"})
}

#[test]
fn service_kinds_addresses_and_target_ports() {
    let v4 = |ips: &[[u8; 4]]| ips.iter().map(|&o| Ipv4Addr::from(o)).collect::<Vec<_>>();
    let cases = [
        (
            "no type is ClusterIP",
            json!({"clusterIP": "10.96.0.1"}),
            ServiceKind::ClusterIp,
            v4(&[[10, 96, 0, 1]]),
        ),
        (
            "None is headless",
            json!({"clusterIP": "None"}),
            ServiceKind::Headless,
            v4(&[]),
        ),
        (
            "clusterIPs None is headless",
            json!({"clusterIPs": ["None"]}),
            ServiceKind::Headless,
            v4(&[]),
        ),
        (
            "ExternalName",
            json!({"type": "ExternalName", "externalName": "example.org"}),
            ServiceKind::ExternalName,
            v4(&[]),
        ),
        (
            "NodePort",
            json!({"type": "NodePort", "clusterIP": "10.96.0.2"}),
            ServiceKind::NodePort,
            v4(&[[10, 96, 0, 2]]),
        ),
        (
            "LoadBalancer",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.3"}),
            ServiceKind::LoadBalancer,
            v4(&[[10, 96, 0, 3]]),
        ),
        (
            "dual stack keeps IPv4",
            json!({"clusterIPs": ["fd00::10", "10.96.0.4"]}),
            ServiceKind::ClusterIp,
            v4(&[[10, 96, 0, 4]]),
        ),
        (
            "IPv6 only has no frontends",
            json!({"clusterIPs": ["fd00::10"]}),
            ServiceKind::ClusterIp,
            v4(&[]),
        ),
    ];
    for (rule, spec, kind, ips) in cases {
        let parsed = service(&spec).unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!((parsed.kind, parsed.cluster_ips), (kind, ips), "{rule}");
    }
    let parsed = service(&json!({"clusterIP": "10.96.0.1", "ports": [
        {"port": 80},
        {"port": 81, "targetPort": 8081},
        {"port": 82, "targetPort": "8082"},
        {"port": 83, "targetPort": "http"},
        {"port": 80, "protocol": "UDP", "name": "dns"},
    ]}))
    .unwrap();
    let targets: Vec<_> = parsed
        .ports
        .iter()
        .map(|p| (p.port, p.protocol, p.target_port.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            (80, Protocol::Tcp, TargetPort::Number(80)),
            (81, Protocol::Tcp, TargetPort::Number(8081)),
            (82, Protocol::Tcp, TargetPort::Number(8082)),
            (83, Protocol::Tcp, TargetPort::Name("http".into())),
            (80, Protocol::Udp, TargetPort::Number(80)),
        ],
        "the same port number with another protocol is a different port"
    );
    assert_eq!(parsed.ports[4].name, "dns");
}

#[test]
fn invalid_services_are_errors() {
    let cases = [
        (
            json!({"clusterIP": "10.96.0.300"}),
            "clusterIP \"10.96.0.300\"",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 0}]}),
            "port 0 is out of range",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 65536}]}),
            "port 65536 is out of range",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": 70000}]}),
            "targetPort 70000",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": "0"}]}),
            "targetPort 0",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "QUIC"}]}),
            "unknown protocol \"QUIC\"",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}, {"port": 80, "name": "b"}]}),
            "port 80/TCP is listed twice",
        ),
        (json!({"type": "Magic"}), "unknown type"),
    ];
    for (spec, needle) in cases {
        let error = service(&spec).expect_err(needle);
        assert!(
            error.contains(needle),
            "{error:?} should contain {needle:?}"
        );
    }
}

#[test]
fn slices_are_validated() {
    let parsed = slice(
        &labelled(),
        "IPv4",
        &json!([{"name": "http", "port": 8080}, {"port": 53, "protocol": "UDP"}]),
        &json!([
            {"addresses": ["10.244.1.2"], "nodeName": "node1", "zone": "a"},
            {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]),
    )
    .unwrap();
    assert_eq!(parsed.name.to_string(), "prod/web-1");
    assert_eq!((parsed.service.as_str(), parsed.mirrored), ("web", false));
    assert_eq!(
        parsed.ports,
        [
            SlicePort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp
            },
            SlicePort {
                name: String::new(),
                port: 53,
                protocol: Protocol::Udp
            },
        ]
    );
    let first = &parsed.endpoints[0];
    assert!(first.ready, "no conditions means ready");
    assert_eq!(
        (first.node_name.as_deref(), first.zone.as_deref()),
        (Some("node1"), Some("a"))
    );
    let second = &parsed.endpoints[1];
    assert_eq!(
        (second.ready, second.serving, second.terminating),
        (false, Some(true), Some(true))
    );

    let v6 = slice(
        &labelled(),
        "IPv6",
        &json!([]),
        &json!([{"addresses": ["fd00::1"]}]),
    )
    .unwrap();
    let AddressType::Ipv6(endpoints) = &v6.address_type else {
        panic!("an IPv6 slice is kept as one: {:?}", v6.address_type);
    };
    assert_eq!(
        endpoints[0].addresses,
        ["fd00::1".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    assert!(v6.endpoints.is_empty(), "the IPv4 endpoints stay empty");

    let mirrored = slice(
        &json!({"kubernetes.io/service-name": "web", MANAGED_BY_LABEL: MIRROR_MANAGER}),
        "IPv4",
        &json!([]),
        &json!([]),
    )
    .unwrap();
    assert!(mirrored.mirrored);
}

#[test]
fn invalid_slices_are_errors() {
    let ok_ports = json!([{"port": 80}]);
    let ok_endpoints = json!([{"addresses": ["10.244.1.2"]}]);
    let cases = [
        (
            json!({}),
            ok_ports.clone(),
            ok_endpoints.clone(),
            "label kubernetes.io/service-name is missing",
        ),
        (
            labelled(),
            ok_ports.clone(),
            json!([{"addresses": ["10.244.1"]}]),
            "\"10.244.1\" is not a valid IPv4 address",
        ),
        (
            labelled(),
            ok_ports.clone(),
            json!([{"addresses": ["fd00::1"]}]),
            "\"fd00::1\" is not a valid IPv4 address",
        ),
        (
            labelled(),
            json!([{"port": 70000}]),
            ok_endpoints.clone(),
            "port 70000 is out of range",
        ),
    ];
    for (labels, ports, endpoints, needle) in cases {
        let error = slice(&labels, "IPv4", &ports, &endpoints).expect_err(needle);
        assert!(
            error.contains(needle),
            "{error:?} should contain {needle:?}"
        );
    }
}

fn full_service(object: &Value) -> Result<ServiceSpec, String> {
    ServiceSpec::from_k8s(&serde_json::from_value(object.clone()).unwrap())
}

#[test]
fn source_ranges_health_check_port_ip_mode_and_age() {
    let lb = |meta: Value, spec: Value, ingress: Value| {
        let mut s = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.9",
            "ports": [{"port": 80, "nodePort": 30080}]});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        full_service(
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": s, "status": {"loadBalancer": {"ingress": ingress}}}),
        )
    };
    let range = |a: [u8; 4], len| SourceRange {
        addr: Ipv4Addr::from(a),
        prefix_len: len,
    };
    let svc = lb(
        json!({"name": "web", "creationTimestamp": "2026-01-02T03:04:05Z"}),
        json!({"loadBalancerSourceRanges": ["10.1.2.3/8", "192.0.2.0/24", "2001:db8::/32", "10.0.0.0/8"],
               "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}),
        json!([{"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"},
               {"ip": "198.51.100.3", "ipMode": "VIP"}]),
    )
    .unwrap();
    assert_eq!(
        svc.source_ranges,
        vec![range([10, 0, 0, 0], 8), range([192, 0, 2, 0], 24)],
        "host bits cleared, duplicates once, IPv6 skipped"
    );
    assert!(svc.source_ranges[0].contains(Ipv4Addr::new(10, 200, 0, 1)));
    assert!(!svc.source_ranges[0].contains(Ipv4Addr::new(11, 0, 0, 1)));
    assert!(SourceRange {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0
    }
    .contains(Ipv4Addr::BROADCAST));
    assert_eq!(svc.health_check_node_port, Some(32000));
    assert_eq!(
        svc.load_balancer_ips,
        vec![
            Ipv4Addr::new(198, 51, 100, 1),
            Ipv4Addr::new(198, 51, 100, 3)
        ],
        "an ingress of a proxying load balancer (ipMode: Proxy) is not ours"
    );
    assert_eq!(svc.created, Some(1_767_323_045));

    // The annotation of the same meaning is for cloud load balancers:
    // kube-proxy reads only the field, and so do we.
    let annotated = lb(
        json!({"name": "web", "annotations": {"service.beta.kubernetes.io/load-balancer-source-ranges": "203.0.113.0/24"}}),
        json!({}),
        json!([]),
    )
    .unwrap();
    assert!(annotated.source_ranges.is_empty());
    assert_eq!(annotated.created, None);
    let padded = lb(
        json!({"name": "web"}),
        json!({"loadBalancerSourceRanges": [" 10.0.0.0/8 "]}),
        json!([]),
    )
    .unwrap();
    assert_eq!(
        padded.source_ranges,
        vec![range([10, 0, 0, 0], 8)],
        "padding trimmed"
    );
    for bad in ["10.0.0.0", "10.0.0.0/33", "example/8", "10.0.0.0/x"] {
        let err = lb(
            json!({"name": "web"}),
            json!({"loadBalancerSourceRanges": [bad]}),
            json!([]),
        )
        .unwrap_err();
        assert!(err.contains(bad) && err.contains("CIDR"), "{bad}: {err}");
    }
}
