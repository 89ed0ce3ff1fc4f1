//! IP family rules of Services (see [`super::family`]), one table row each.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};

use super::*;

fn service(spec: &Value) -> Result<ServiceSpec, String> {
    let object =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec});
    ServiceSpec::from_k8s(&serde_json::from_value(object).unwrap())
}

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

#[test]
fn families_and_policies_are_resolved_as_the_api_server_does() {
    use IpFamily::{V4, V6};
    use IpFamilyPolicy::{PreferDualStack, RequireDualStack, SingleStack};
    let cases = [
        (
            "nothing: IPv4, SingleStack",
            json!({}),
            vec![V4],
            SingleStack,
        ),
        (
            "clusterIP alone",
            json!({"clusterIP": "10.96.0.1"}),
            vec![V4],
            SingleStack,
        ),
        (
            "IPv6 clusterIP alone",
            json!({"clusterIP": "fd00::1"}),
            vec![V6],
            SingleStack,
        ),
        (
            "families from clusterIPs; two default to RequireDualStack",
            json!({"clusterIPs": ["fd00::1", "10.96.0.1"]}),
            vec![V6, V4],
            RequireDualStack,
        ),
        (
            "PreferDualStack with one family is fine",
            json!({"clusterIPs": ["10.96.0.1"], "ipFamilyPolicy": "PreferDualStack"}),
            vec![V4],
            PreferDualStack,
        ),
        (
            "ipFamilies may list more families than there are cluster IPs",
            json!({"clusterIP": "10.96.0.1", "ipFamilies": ["IPv4", "IPv6"],
                   "ipFamilyPolicy": "PreferDualStack"}),
            vec![V4, V6],
            PreferDualStack,
        ),
        (
            "headless keeps its families",
            json!({"clusterIP": "None", "ipFamilies": ["IPv6"]}),
            vec![V6],
            SingleStack,
        ),
        (
            "clusterIP and clusterIPs[0] agree",
            json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
                   "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
            vec![V4, V6],
            RequireDualStack,
        ),
    ];
    for (rule, spec, families, policy) in cases {
        let parsed = service(&spec).unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(
            (
                parsed.ip_families.iter().collect::<Vec<_>>(),
                parsed.ip_family_policy
            ),
            (families, policy),
            "{rule}"
        );
    }
}

#[test]
fn disagreeing_family_fields_reject_the_service() {
    let cases = [
        (
            "clusterIP is not clusterIPs[0]",
            json!({"clusterIP": "10.96.0.2", "clusterIPs": ["10.96.0.1"]}),
            "clusterIPs[0]",
        ),
        (
            "two of one family",
            json!({"clusterIPs": ["10.96.0.1", "10.96.0.2"]}),
            "different families",
        ),
        (
            "three cluster IPs",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1", "10.96.0.3"]}),
            "at most two",
        ),
        (
            "None with another",
            json!({"clusterIPs": ["None", "10.96.0.1"]}),
            "only value",
        ),
        (
            "a bad address",
            json!({"clusterIPs": ["10.96.0.300"]}),
            "not a valid IP",
        ),
        (
            "unknown family",
            json!({"ipFamilies": ["IPv5"]}),
            "unknown IP family",
        ),
        (
            "a family twice",
            json!({"ipFamilies": ["IPv4", "IPv4"]}),
            "twice",
        ),
        (
            "three families",
            json!({"ipFamilies": ["IPv4", "IPv6", "IPv4"]}),
            "at most two",
        ),
        (
            "clusterIPs out of ipFamilies' order",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1"], "ipFamilies": ["IPv6", "IPv4"]}),
            "clusterIPs[0] 10.96.0.1 is not of family ipFamilies[0] IPv6",
        ),
        (
            "a cluster IP without its family",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1"], "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "PreferDualStack"}),
            "has no family",
        ),
        (
            "SingleStack with two clusterIPs",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1"], "ipFamilyPolicy": "SingleStack"}),
            "SingleStack",
        ),
        (
            "SingleStack with two ipFamilies",
            json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
            "SingleStack",
        ),
        (
            "RequireDualStack with one family",
            json!({"clusterIP": "10.96.0.1", "ipFamilyPolicy": "RequireDualStack"}),
            "RequireDualStack",
        ),
        (
            "RequireDualStack with nothing",
            json!({"ipFamilyPolicy": "RequireDualStack"}),
            "RequireDualStack",
        ),
        (
            "unknown policy",
            json!({"ipFamilyPolicy": "DualStack"}),
            "unknown ipFamilyPolicy",
        ),
        (
            "families on an ExternalName",
            json!({"type": "ExternalName", "externalName": "x.example", "ipFamilies": ["IPv4"]}),
            "ExternalName",
        ),
    ];
    for (rule, spec, needle) in cases {
        let err = service(&spec).expect_err(rule);
        assert!(err.contains(needle), "{rule}: {err}");
    }
}

#[test]
fn addresses_are_split_by_family_and_v4_only_services_keep_no_v6_side() {
    let dual = service(&json!({
        "type": "LoadBalancer",
        "clusterIPs": ["10.96.0.1", "fd00::1"],
        "ipFamilyPolicy": "PreferDualStack",
        "externalIPs": ["192.0.2.1", "2001:db8::1"],
        "loadBalancerSourceRanges": ["10.0.0.0/8", "2001:db8::1/32", "2001:db8::/32"],
    }))
    .unwrap();
    assert_eq!(dual.cluster_ips, [Ipv4Addr::new(10, 96, 0, 1)]);
    assert_eq!(dual.external_ips, [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(dual.source_ranges.len(), 1);
    let side = dual.v6.as_deref().expect("an IPv6 side");
    assert_eq!(side.cluster_ips, [v6("fd00::1")]);
    assert_eq!(side.external_ips, [v6("2001:db8::1")]);
    assert_eq!(
        side.source_ranges,
        [SourceRangeV6::new(v6("2001:db8::"), 32)],
        "host bits cleared, duplicates once"
    );
    assert!(side.source_ranges[0].contains(v6("2001:db8:1::5")));
    assert!(!side.source_ranges[0].contains(v6("2001:db9::5")));

    let v4 = service(&json!({"clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"]})).unwrap();
    assert_eq!(v4.v6, None, "an IPv4-only Service has no IPv6 box");
    assert!(
        std::mem::size_of::<Option<Box<ServiceV6>>>() == std::mem::size_of::<usize>()
            && std::mem::size_of::<IpFamilies>() == 2,
        "the IPv6 side costs an IPv4 Service one pointer and three bytes"
    );
}

#[test]
fn ipv6_slices_cost_ipv4_slices_nothing() {
    assert_eq!(
        std::mem::size_of::<AddressType>(),
        std::mem::size_of::<String>(),
        "AddressType stays the size of its FQDN name, as before IPv6"
    );
}

#[test]
fn a_nodes_addresses_are_kept_by_family() {
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.50.11"},
            {"type": "InternalIP", "address": "fd00:50::11"},
            {"type": "ExternalIP", "address": "2001:db8::11"},
            {"type": "Hostname", "address": "node1"},
        ]},
    }))
    .unwrap();
    let facts = NodeFacts::from_k8s(&node);
    assert_eq!(facts.addresses, [Ipv4Addr::new(192, 168, 50, 11)]);
    assert_eq!(facts.addresses_v6, [v6("fd00:50::11"), v6("2001:db8::11")]);
}
