//! The reconciler's IPv6 side: off by default, and on, incremental and
//! full recomputes agree, as they do for IPv4.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::{
    desired::Protocol,
    model::{
        EndpointSpec, IpFamilies, IpFamily, IpFamilyPolicy, ServiceKind, ServicePort, ServiceSpec,
        ServiceV6, SlicePort, SliceSpec, TargetPort, TrafficPolicy,
    },
    plan::MapOp,
};

fn name(n: &str) -> ObjectName {
    ObjectName {
        namespace: "default".into(),
        name: n.into(),
    }
}

/// A dual-stack ClusterIP Service, `10.96.0.<i>` and `fd00:96::<i>`.
fn dual(n: &str, i: u8) -> ServiceSpec {
    ServiceSpec {
        name: name(n),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, i)],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            node_port: None,
        }],
        internal_policy: TrafficPolicy::Cluster,
        external_policy: TrafficPolicy::Cluster,
        ip_families: IpFamilies::from_list(&[IpFamily::V4, IpFamily::V6]).unwrap(),
        ip_family_policy: IpFamilyPolicy::RequireDualStack,
        v6: Some(Box::new(ServiceV6 {
            cluster_ips: vec![Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, u16::from(i))],
            ..ServiceV6::default()
        })),
        ..ServiceSpec::default()
    }
}

fn endpoint<A>(addr: A) -> EndpointSpec<A> {
    EndpointSpec {
        addresses: vec![addr],
        ready: true,
        serving: None,
        terminating: None,
        node_name: None,
        zone: None,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

/// Service `svc`'s slices of both families, endpoints `.<last>` / `::<last>`.
fn slices(svc: &str, lasts: &[u8]) -> [SliceSpec; 2] {
    let port = SlicePort {
        name: "http".into(),
        port: 8080,
        protocol: Protocol::Tcp,
    };
    let v4 = SliceSpec {
        name: name(&format!("{svc}-v4")),
        service: svc.into(),
        address_type: AddressType::Ipv4,
        ports: vec![port.clone()],
        endpoints: lasts
            .iter()
            .map(|&l| endpoint(Ipv4Addr::new(10, 244, 1, l)))
            .collect(),
        mirrored: false,
    };
    let v6 = SliceSpec {
        name: name(&format!("{svc}-v6")),
        service: svc.into(),
        address_type: AddressType::Ipv6(
            lasts
                .iter()
                .map(|&l| endpoint(Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, u16::from(l))))
                .collect(),
        ),
        ports: vec![port],
        endpoints: vec![],
        mirrored: false,
    };
    [v4, v6]
}

fn cluster_of(services: u8) -> Cluster {
    let mut cluster = Cluster::default();
    for i in 1..=services {
        let n = format!("s{i}");
        let svc = dual(&n, i);
        cluster.services.insert(svc.name.clone(), svc.into());
        for slice in slices(&n, &[i, i + 100]) {
            cluster.slices.insert(slice.name.clone(), slice.into());
        }
    }
    cluster
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        ..NodeInfo::default()
    }
}

fn is_ipv6(op: &MapOp) -> bool {
    matches!(
        op,
        MapOp::SetService6(..)
            | MapOp::DeleteService6(..)
            | MapOp::SetBackend6(..)
            | MapOp::ClearBackend6(..)
            | MapOp::SetNodePortAddr6(..)
            | MapOp::DeleteNodePortAddr6(..)
            | MapOp::SetSourceRange6(..)
            | MapOp::DeleteSourceRange6(..)
    )
}

#[test]
fn ipv6_off_plans_nothing_of_it_and_ipv4_as_before() {
    let cluster = cluster_of(5);
    let mut r = Reconciler::new(node(), 1 << 20);
    let done = r.reconcile(&cluster, &Changes::all(), Instant::now());
    assert!(!done.plan.ops.iter().any(is_ipv6), "{:?}", done.plan.ops);
    assert!(r.desired6().is_empty());
    assert_eq!(r.desired().len(), 5);
    // IPv4's plan is what a planner given the IPv4 state alone makes.
    let mut alone = Planner::new(1 << 20, REUSE_GRACE);
    let (plan, _) = alone.plan(r.desired(), Instant::now());
    assert_eq!(plan.ops, done.plan.ops);
    // The IPv6 frontends are reported as not served.
    assert!(done
        .problems
        .iter()
        .any(|p| p.reason == ProblemReason::Ipv6NotServed));
}

#[test]
fn on_each_family_is_planned_and_incremental_agrees_with_full() {
    let mut cluster = cluster_of(8);
    let mut r = Reconciler::new(node(), 1 << 20);
    r.plan_ipv6(true);
    let t0 = Instant::now();
    let first = r.reconcile(&cluster, &Changes::all(), t0);
    assert!(first.errors.is_empty() && first.errors6.is_empty());
    assert_eq!((r.desired().len(), r.desired6().len()), (8, 8));
    assert_eq!(first.recomputed, 16);
    let services6 = first
        .plan
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::SetService6(..)))
        .count();
    assert_eq!(services6, 8);

    // An IPv6 slice changes: only that Service's IPv6 side is planned.
    let [_, edited] = slices("s3", &[3, 77, 78]);
    cluster.slices.insert(edited.name.clone(), edited.into());
    let changes = Changes {
        slices: [name("s3-v6")].into_iter().collect(),
        ..Changes::default()
    };
    let step = r.reconcile(&cluster, &changes, t0);
    assert_eq!(step.recomputed, 2, "s3's two frontends, one per family");
    assert!(step
        .plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::SetBackend6(..))));
    assert!(!step
        .plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::SetBackend(..))));

    // A Service goes.
    cluster.services.remove(&name("s5"));
    let gone = Changes {
        services: [name("s5")].into_iter().collect(),
        ..Changes::default()
    };
    let step = r.reconcile(&cluster, &gone, t0);
    assert!(step
        .plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::DeleteService6(..))));

    // The incremental state equals a full recompute of the same model.
    assert_eq!(
        r.desired6(),
        &select::family::desired_state6(&cluster, &node())
    );
    let mut fresh = Reconciler::new(node(), 1 << 20);
    fresh.plan_ipv6(true);
    fresh.reconcile(&cluster, &Changes::all(), t0);
    assert_eq!(fresh.desired6(), r.desired6());
    assert_eq!(fresh.desired(), r.desired());
    // And nothing is left to apply.
    let again = r.reconcile(&cluster, &Changes::all(), t0);
    assert!(again.plan.ops.is_empty(), "{:?}", again.plan.ops);

    // Turned off, the IPv6 frontends go; IPv4's stay.
    r.plan_ipv6(false);
    let off = r.reconcile(&cluster, &Changes::default(), t0);
    let deleted = off
        .plan
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::DeleteService6(..)))
        .count();
    assert_eq!(deleted, 7);
    assert!(!off
        .plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::DeleteService(..))));
}

#[test]
fn chunks_cover_both_families_ipv4_first() {
    let cluster = cluster_of(10);
    let mut r = Reconciler::new(node(), 1 << 20);
    r.plan_ipv6(true);
    let mut chunks = Vec::new();
    let (done, applied) =
        r.reconcile_chunked(&cluster, &Changes::all(), Instant::now(), 200, |plan| {
            chunks.push(plan);
            Ok::<(), ()>(())
        });
    applied.unwrap();
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    let families: Vec<bool> = chunks.iter().map(|c| c.ops.iter().any(is_ipv6)).collect();
    let first6 = families.iter().position(|&v6| v6).unwrap();
    assert!(
        families[first6..].iter().all(|&v6| v6),
        "IPv4 first: {families:?}"
    );
    assert_eq!(chunks.iter().map(|c| c.ops.len()).sum::<usize>(), done.ops);
}

/// The backends an IPv6 frontend loses are found as IPv4's are, at an
/// incremental step and at a full sync, each family in its own list.
#[test]
fn tracked_the_backends_an_ipv6_frontend_loses_are_reported_in_its_family() {
    let mut cluster = cluster_of(2);
    let mut r = Reconciler::new(node(), 1 << 20);
    r.plan_ipv6(true);
    r.track_gone(true);
    let t0 = Instant::now();
    let first = r.reconcile(&cluster, &Changes::all(), t0);
    assert!(first.gone.is_empty() && first.gone6.is_empty());
    let ep6 = |l: u16| {
        std::net::SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, l), 8080, 0, 0)
    };
    let fe6 = FrontendV6 {
        listen: crate::desired::Listen6::Addr(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 2), 80),
        proto: Protocol::Tcp,
    };

    // s2's IPv6 endpoint ::102 leaves its slice; IPv4's stays.
    let [_, edited] = slices("s2", &[2]);
    cluster.slices.insert(edited.name.clone(), edited.into());
    let changes = Changes {
        slices: [name("s2-v6")].into_iter().collect(),
        ..Changes::default()
    };
    let step = r.reconcile(&cluster, &changes, t0);
    assert!(step.gone.is_empty(), "IPv4 lost nothing: {:?}", step.gone);
    let found: Vec<_> = step.gone6.iter().map(|g| (g.frontend, g.backend)).collect();
    assert_eq!(found, [(fe6, ep6(102))]);

    // A full sync finds the same (::2 goes too now).
    let [_, edited] = slices("s2", &[]);
    cluster.slices.insert(edited.name.clone(), edited.into());
    let step = r.reconcile(&cluster, &Changes::all(), t0);
    let found: Vec<_> = step.gone6.iter().map(|g| (g.frontend, g.backend)).collect();
    assert_eq!(found, [(fe6, ep6(2))]);
}
