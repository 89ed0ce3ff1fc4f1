//! Per-family selection: each family's frontends take that family's slices.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use super::family::{
    desired_state6, frontends_v6, ipv6_problem, service_state_v6, FrontendV6, Listen6,
};
use super::kube_proxy_tests::{external_policy_cases, selection_cases};
use super::mirror::{more_cases, twin_cluster, twin_node, twin_state};
use super::tests::{cluster, ep, http, http_slice, name, node, service};
use super::*;
use crate::{
    desired::Protocol,
    model::{IpFamilies, IpFamilyPolicy, ServiceKind, ServiceV6},
    problem::ProblemReason,
};

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

/// A dual-stack (IPv4 primary) web Service with an IPv6 cluster IP.
fn dual() -> ServiceSpec {
    ServiceSpec {
        ip_families: IpFamilies::from_list(&[IpFamily::V4, IpFamily::V6]).unwrap(),
        ip_family_policy: IpFamilyPolicy::RequireDualStack,
        v6: Some(Box::new(ServiceV6 {
            cluster_ips: vec![v6("fd00::10")],
            ..ServiceV6::default()
        })),
        ..service(ServiceKind::ClusterIp, http())
    }
}

/// An IPv6 slice of web with endpoints `fd00:244::<last>` (ready or not).
fn v6_slice(n: &str, endpoints: &[(u16, bool)]) -> SliceSpec {
    let mut slice = http_slice(vec![]);
    slice.name = name(n);
    slice.address_type = AddressType::Ipv6(
        endpoints
            .iter()
            .map(|&(last, ready)| EndpointSpec {
                addresses: vec![Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last)],
                ready,
                serving: None,
                terminating: None,
                node_name: Some("node2".into()),
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect(),
    );
    slice
}

#[test]
fn a_dual_stack_service_takes_each_familys_endpoints_from_its_slices() {
    let c = cluster(
        dual(),
        vec![
            http_slice(vec![ep(1, true, "node2")]),
            v6_slice("b", &[(7, true), (8, false)]),
        ],
    );
    let (state, warnings) = desired_state(&c, &node());
    assert!(warnings.is_empty(), "{warnings:?}");
    let only = state.values().next().unwrap();
    assert_eq!(state.len(), 1, "one IPv4 frontend: the cluster IP");
    assert_eq!(
        only.backends
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.244.1.1:8080"],
        "IPv4 frontends take only IPv4 slices"
    );
    let index = SliceIndex::build(&c);
    let side = service_state_v6(&c, &index, &name("web"), &node());
    let want = FrontendV6 {
        listen: Listen6::Addr(v6("fd00::10"), 80),
        proto: Protocol::Tcp,
    };
    assert_eq!(side.len(), 1);
    assert_eq!(side[0].0, want);
    let at = |last: &str| SocketAddrV6::new(v6(&format!("fd00:244::{last}")), 8080, 0, 0);
    let want = &side[0].1;
    assert_eq!(
        want.backends.keys().copied().collect::<Vec<_>>(),
        [at("7"), at("8")],
        "IPv6 frontends take only IPv6 slices, every listed endpoint kept"
    );
    assert_eq!(
        want.backends
            .iter()
            .filter(|(_, b)| want.selects(b, false))
            .map(|(a, _)| *a)
            .collect::<Vec<_>>(),
        [at("7")],
        "ready endpoints first"
    );
    assert!(want.has_endpoints);
}

#[test]
fn a_familys_addresses_serve_only_when_the_service_has_that_family() {
    let v6_only = ServiceSpec {
        cluster_ips: vec![],
        external_ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
        ip_families: IpFamilies::from_list(&[IpFamily::V6]).unwrap(),
        v6: Some(Box::new(ServiceV6 {
            cluster_ips: vec![v6("fd00::10")],
            ..ServiceV6::default()
        })),
        ..service(ServiceKind::ClusterIp, http())
    };
    let c = cluster(
        v6_only.clone(),
        vec![http_slice(vec![ep(1, true, "node2")])],
    );
    assert!(desired_state(&c, &node()).0.is_empty(), "no IPv4 frontend");
    assert_eq!(frontends_v6(&v6_only).len(), 1);

    let v4_only = ServiceSpec {
        v6: Some(Box::new(ServiceV6 {
            external_ips: vec![v6("2001:db8::1")],
            ..ServiceV6::default()
        })),
        ..service(ServiceKind::ClusterIp, http())
    };
    assert!(
        frontends_v6(&v4_only).is_empty(),
        "IPv6 externalIPs of an IPv4 Service"
    );
    assert_eq!(ipv6_problem(&v4_only, false), None);
}

#[test]
fn ipv6_frontends_are_reported_not_served_once_per_service() {
    let mut svc = dual();
    svc.kind = ServiceKind::NodePort;
    svc.ports[0].node_port = Some(30080);
    let problem = ipv6_problem(&svc, false).expect("a problem");
    assert_eq!(problem.reason, ProblemReason::Ipv6NotServed);
    assert_eq!(problem.service, name("web"));
    assert_eq!(
        problem.message,
        "IPv6 frontends [fd00::10]:80/TCP, node port 30080/TCP are not served (--ipv6 off); its IPv4 frontends are"
    );
    // Served: node ports too.
    assert_eq!(ipv6_problem(&svc, true), None, "every frontend is served");
    assert_eq!(ipv6_problem(&dual(), true), None, "a cluster IP is served");
    assert_eq!(
        ipv6_problem(&service(ServiceKind::ClusterIp, http()), false),
        None
    );
    let headless = ServiceSpec {
        kind: ServiceKind::Headless,
        ..dual()
    };
    assert_eq!(
        ipv6_problem(&headless, false),
        None,
        "headless: nothing to balance"
    );
}

#[test]
fn the_reconciler_reports_the_ipv6_problem_and_programs_the_ipv4_frontends() {
    use crate::{reconcile::Reconciler, source::Changes};
    let c = cluster(
        dual(),
        vec![
            http_slice(vec![ep(1, true, "node2")]),
            v6_slice("b", &[(7, true)]),
        ],
    );
    let mut r = Reconciler::new(node(), 1 << 20);
    let done = r.reconcile(&c, &Changes::all(), std::time::Instant::now());
    let reasons: Vec<_> = done
        .problems
        .iter()
        .map(|p| (p.service.clone(), p.reason))
        .collect();
    assert_eq!(reasons, [(name("web"), ProblemReason::Ipv6NotServed)]);
    assert!(
        done.warnings.is_empty(),
        "IPv6 slices are no warning: {:?}",
        done.warnings
    );
    assert!(!done.plan.ops.is_empty(), "the IPv4 frontend is programmed");
}

/// How many frontends of the mirrored scenarios showed each rule.
#[derive(Debug, Default)]
struct Seen {
    local_policy: usize,
    internal_table: usize,
    ranges: usize,
    node_port_addrs: usize,
    refusing: usize,
    local_backends: usize,
    kept_backends: usize,
    affinity: usize,
}

#[test]
fn ipv6_selection_mirrors_ipv4_on_a_mirrored_cluster() {
    let mut scenarios: Vec<(&str, Cluster, NodeInfo)> = selection_cases()
        .into_iter()
        .map(|(rule, c, _)| (rule, c, node()))
        .collect();
    scenarios.extend(
        external_policy_cases()
            .into_iter()
            .map(|(rule, c)| (rule, c, node())),
    );
    scenarios.extend(more_cases());
    let mut seen = Seen::default();
    for (rule, cluster, node) in &scenarios {
        let (want4, _) = desired_state(cluster, node);
        assert!(!want4.is_empty(), "{rule}: a frontend to mirror");
        let (cluster, node) = (twin_cluster(cluster), twin_node(node));
        let (still4, warnings) = desired_state(&cluster, &node);
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
        assert_eq!(still4, want4, "{rule}: IPv4 is as it was beside IPv6");
        let got6 = desired_state6(&cluster, &node);
        let want6 = twin_state(&want4);
        assert_eq!(
            got6.keys().collect::<Vec<_>>(),
            want6.keys().collect::<Vec<_>>(),
            "{rule}: the twin frontends"
        );
        for (frontend, want) in &want6 {
            let got = &got6[frontend];
            let what = format!("{rule}: {frontend}");
            assert_eq!(
                (got.policy, got.pods_policy),
                (want.policy, want.pods_policy),
                "{what}: policies"
            );
            assert_eq!(got.backends, want.backends, "{what}: BackendInfo");
            assert_eq!(got.has_endpoints, want.has_endpoints, "{what}");
            assert_eq!(
                got.source_ranges.len(),
                want.source_ranges.len(),
                "{what}: ranges"
            );
            assert_eq!(got, want, "{what}: all of it");
            seen.local_policy += usize::from(got.table_policy() == TrafficPolicy::Local);
            seen.internal_table += usize::from(got.has_internal_table());
            seen.ranges += usize::from(!got.source_ranges.is_empty());
            seen.node_port_addrs += usize::from(!got.node_port_addrs.is_empty());
            seen.refusing += usize::from(!got.has_endpoints);
            seen.local_backends += got.backends.values().filter(|b| b.local).count();
            seen.kept_backends += got
                .backends
                .values()
                .filter(|b| !b.for_cluster || !b.for_local)
                .count();
            seen.affinity += usize::from(got.affinity_timeout > 0);
        }
    }
    // Every rule was shown at least once, so a rule IPv6 skips would fail.
    let Seen {
        local_policy,
        internal_table,
        ranges,
        node_port_addrs,
        refusing,
        local_backends,
        kept_backends,
        affinity,
    } = seen;
    for (rule, count) in [
        ("local_policy", local_policy),
        ("internal_table", internal_table),
        ("ranges", ranges),
        ("node_port_addrs", node_port_addrs),
        ("refusing", refusing),
        ("local_backends", local_backends),
        ("kept_backends", kept_backends),
        ("affinity", affinity),
    ] {
        assert!(count > 0, "no scenario shows {rule}: {seen:?}");
    }
}
