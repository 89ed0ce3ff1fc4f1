//! Per-family selection: each family's frontends take that family's slices.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use super::family::{frontends_v6, ipv6_problem, service_state_v6, FrontendV6, Listen6};
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
    let side = service_state_v6(&c, &index, &name("web"));
    let want = FrontendV6 {
        listen: Listen6::Addr(v6("fd00::10"), 80),
        proto: Protocol::Tcp,
    };
    assert_eq!(side.len(), 1);
    assert_eq!(side[0].0, want);
    assert_eq!(
        side[0].1.iter().copied().collect::<Vec<_>>(),
        [SocketAddrV6::new(v6("fd00:244::7"), 8080, 0, 0)],
        "IPv6 frontends take only IPv6 slices, ready endpoints first"
    );
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
    assert_eq!(ipv6_problem(&v4_only), None);
}

#[test]
fn ipv6_frontends_are_reported_not_served_once_per_service() {
    let mut svc = dual();
    svc.kind = ServiceKind::NodePort;
    svc.ports[0].node_port = Some(30080);
    let problem = ipv6_problem(&svc).expect("a problem");
    assert_eq!(problem.reason, ProblemReason::Ipv6NotServed);
    assert_eq!(problem.service, name("web"));
    assert_eq!(
        problem.message,
        "IPv6 frontends [fd00::10]:80/TCP, node port 30080/TCP are not served (the data path is IPv4 only); its IPv4 frontends are"
    );
    assert_eq!(ipv6_problem(&service(ServiceKind::ClusterIp, http())), None);
    let headless = ServiceSpec {
        kind: ServiceKind::Headless,
        ..dual()
    };
    assert_eq!(
        ipv6_problem(&headless),
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
