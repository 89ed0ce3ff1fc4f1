//! The reconciler against full recomputes, chunking and recovery.
use std::{net::Ipv4Addr, sync::Arc};

use super::*;
use crate::plan::MapOp;

/// Maglev slots the `SetTable` operations of `ops` write.
fn table_slots(ops: &[MapOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            MapOp::SetTable { slots, .. } => slots.len(),
            _ => 0,
        })
        .sum()
}
use crate::{
    desired::Protocol,
    model::{
        EndpointSpec, ServiceKind, ServicePort, ServiceSpec, SlicePort, SliceSpec, TargetPort,
        TrafficPolicy,
    },
};

fn name(n: &str) -> ObjectName {
    ObjectName {
        namespace: "default".into(),
        name: n.into(),
    }
}

fn service(n: &str, last: u8) -> ServiceSpec {
    ServiceSpec {
        name: name(n),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, last)],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            node_port: None,
        }],
        external_ips: vec![],
        load_balancer_ips: vec![],
        internal_policy: TrafficPolicy::Cluster,
        external_policy: TrafficPolicy::Cluster,
        affinity_timeout: None,
        ..ServiceSpec::default()
    }
}

fn slice(n: &str, svc: &str, ips: &[u8]) -> SliceSpec {
    SliceSpec {
        name: name(n),
        service: svc.into(),
        address_type: AddressType::Ipv4,
        ports: vec![SlicePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: ips
            .iter()
            .map(|&i| EndpointSpec {
                addresses: vec![Ipv4Addr::new(10, 244, 1, i)],
                ready: true,
                serving: None,
                terminating: None,
                node_name: None,
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect(),
        mirrored: false,
    }
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        ..NodeInfo::default()
    }
}

#[test]
fn a_change_recomputes_only_its_service_and_matches_a_full_recompute() {
    let mut cluster = Cluster::default();
    for i in 0..50u8 {
        let svc = service(&format!("s{i}"), i + 1);
        cluster.services.insert(svc.name.clone(), svc.into());
        let sl = slice(&format!("s{i}-1"), &format!("s{i}"), &[i + 1]);
        cluster.slices.insert(sl.name.clone(), sl.into());
    }
    let mut r = Reconciler::new(node(), 1 << 20);
    let t0 = Instant::now();
    let first = r.reconcile(&cluster, &Changes::all(), t0);
    assert_eq!(first.recomputed, 50);

    // One slice changes: one service recomputed, its frontend only.
    let edited = slice("s7-1", "s7", &[8, 99]);
    cluster.slices.insert(edited.name.clone(), edited.into());
    let one_slice = Changes {
        slices: [name("s7-1")].into_iter().collect(),
        ..Changes::default()
    };
    let step = r.reconcile(&cluster, &one_slice, t0);
    assert_eq!(step.recomputed, 1);
    assert!(!step.plan.ops.is_empty());

    // A slice moves to another service, a service goes, one comes.
    cluster
        .slices
        .insert(name("s8-1"), slice("s8-1", "s9", &[120]).into());
    cluster.services.remove(&name("s3"));
    let new = service("new", 200);
    cluster.services.insert(new.name.clone(), new.into());
    let several = Changes {
        services: [name("s3"), name("new")].into_iter().collect(),
        slices: [name("s8-1")].into_iter().collect(),
        ..Changes::default()
    };
    let step = r.reconcile(&cluster, &several, t0);
    assert_eq!(step.recomputed, 4, "s3 gone, new, s8 and s9");

    // The incremental state equals a full recompute of the same model.
    let (full, _) = select::desired_state(&cluster, &node());
    assert_eq!(r.desired(), &full);
    let mut fresh = Reconciler::new(node(), 1 << 20);
    fresh.reconcile(&cluster, &Changes::all(), t0);
    assert_eq!(fresh.desired(), r.desired());
    // And nothing is left to apply.
    let again = r.reconcile(&cluster, &Changes::all(), t0);
    assert!(again.plan.ops.is_empty(), "{:?}", again.plan.ops);
}

#[test]
fn chunks_hold_bounded_tables_and_add_up_to_the_whole_plan() {
    let mut cluster = Cluster::default();
    for i in 0..40u8 {
        let svc = service(&format!("s{i}"), i + 1);
        cluster.services.insert(svc.name.clone(), svc.into());
        let sl = slice(&format!("s{i}-1"), &format!("s{i}"), &[i + 1, i + 101]);
        cluster.slices.insert(sl.name.clone(), sl.into());
    }
    let t0 = Instant::now();
    let mut whole = Reconciler::new(node(), 1 << 20);
    let expected = whole.reconcile(&cluster, &Changes::all(), t0);
    let mut chunked = Reconciler::new(node(), 1 << 20);
    let mut chunks: Vec<Plan> = Vec::new();
    // Two backends get 251-slot tables: a chunk closes at its fourth table.
    let (done, applied) =
        chunked.reconcile_chunked(&cluster, &Changes::all(), t0, 1_000, |chunk| {
            chunks.push(chunk);
            Ok::<(), ()>(())
        });
    applied.unwrap();
    assert_eq!(chunks.len(), 10, "40 tables, 4 per chunk");
    for chunk in &chunks {
        assert!(
            table_slots(&chunk.ops) <= 1_000 + 251,
            "{}",
            table_slots(&chunk.ops)
        );
    }
    let all: Vec<MapOp> = chunks.into_iter().flat_map(|c| c.ops).collect();
    let sorted = |ops: &[MapOp]| {
        let mut ops: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
        ops.sort();
        ops
    };
    assert_eq!(
        sorted(&all),
        sorted(&expected.plan.ops),
        "the same operations (each chunk in its own order)"
    );
    assert_eq!(done.ops, all.len());
    assert_eq!(done.recomputed, expected.recomputed);
    assert_eq!(chunked.desired(), whole.desired());

    // A frontend's table is written before the entry that publishes it.
    for (k, op) in all.iter().enumerate() {
        if let MapOp::SetService(_, entry) = op {
            assert!(all[..k].iter().any(
                |o| matches!(o, MapOp::SetTable { offset, .. } if *offset == entry.table_offset)
            ));
        }
    }

    // A failing chunk stops the sync there.
    cluster.services.clear();
    let mut calls = 0;
    let (_, failed) = chunked.reconcile_chunked(&cluster, &Changes::all(), t0, 0, |_| {
        calls += 1;
        Err("map full")
    });
    assert_eq!(failed, Err("map full"));
    assert_eq!(calls, 1);
}

#[test]
fn after_a_failed_apply_the_next_sync_plans_what_the_maps_lack() {
    let mut cluster = Cluster::default();
    for i in 0..3u8 {
        let svc = service(&format!("s{i}"), i + 1);
        cluster.services.insert(svc.name.clone(), svc.into());
        let sl = slice(&format!("s{i}-1"), &format!("s{i}"), &[i + 1]);
        cluster.slices.insert(sl.name.clone(), sl.into());
    }
    let t0 = Instant::now();
    let sorted = |ops: &[MapOp]| {
        let mut ops: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
        ops.sort();
        ops
    };
    let expected = Reconciler::new(node(), 1 << 20).reconcile(&cluster, &Changes::all(), t0);
    let mut r = Reconciler::new(node(), 1 << 20);
    // The first chunk fails: the maps hold nothing, the planner thinks otherwise.
    let (_, failed) = r.reconcile_chunked(&cluster, &Changes::all(), t0, 0, |_| Err(()));
    assert_eq!(failed, Err(()));
    let mut stale = Reconciler::new(node(), 1 << 20);
    let _ = stale.reconcile_chunked(&cluster, &Changes::all(), t0, 0, |_| Err(()));
    assert!(
        stale
            .reconcile(&cluster, &Changes::default(), t0)
            .plan
            .ops
            .is_empty(),
        "without recovery nothing changed, so nothing is planned"
    );
    r.recover(Planner::new(1 << 20, REUSE_GRACE));
    let next = r.reconcile(&cluster, &Changes::default(), t0);
    assert_eq!(sorted(&next.plan.ops), sorted(&expected.plan.ops));
}

/// A Service claiming `ip:port/proto`, as a cluster IP or an external IP.
fn claimant(
    n: &str,
    cluster_ip: u8,
    external: Option<Ipv4Addr>,
    created: Option<i64>,
) -> ServiceSpec {
    let mut svc = service(n, cluster_ip);
    svc.ports[0].port = 53;
    svc.ports[0].protocol = Protocol::Udp;
    svc.external_ips.extend(external);
    svc.created = created;
    svc
}

fn dns_slice(n: &str, svc: &str, ip: u8) -> SliceSpec {
    let mut sl = slice(n, svc, &[ip]);
    sl.ports[0].protocol = Protocol::Udp;
    sl
}

/// The Service owning `frontend` now, and the reconciler agreeing with a full recompute.
fn owner_of(
    r: &mut Reconciler,
    cluster: &Cluster,
    changes: &Changes,
    frontend: Frontend,
) -> Option<String> {
    let done = r.reconcile(cluster, changes, Instant::now());
    let (full, _) = select::desired_state(cluster, &node());
    assert_eq!(r.desired(), &full, "incremental and full disagree");
    let mut fresh = Reconciler::new(node(), 1 << 20);
    let fresh_done = fresh.reconcile(cluster, &Changes::all(), Instant::now());
    assert_eq!(fresh.desired(), r.desired());
    assert_eq!(
        fresh_done.problems, done.problems,
        "the same problems either way"
    );
    r.desired().get(&frontend).map(|f| f.service.name.clone())
}

fn changed(services: &[&str]) -> Changes {
    Changes {
        services: services.iter().map(|s| name(s)).collect(),
        ..Changes::default()
    }
}

#[test]
fn a_cluster_ip_is_never_taken_over_and_a_contested_frontend_survives_its_claimants() {
    let dns_ip = Ipv4Addr::new(10, 96, 0, 10);
    let dns = Frontend {
        addr: dns_ip,
        port: 53,
        proto: Protocol::Udp,
    };
    let mut cluster = Cluster::default();
    let kube_dns = claimant("kube-dns", 10, None, Some(1_000));
    cluster
        .services
        .insert(kube_dns.name.clone(), kube_dns.into());
    let sl = dns_slice("kube-dns-1", "kube-dns", 53);
    cluster.slices.insert(sl.name.clone(), sl.into());
    let mut r = Reconciler::new(node(), 1 << 20);
    assert_eq!(
        owner_of(&mut r, &cluster, &Changes::all(), dns).as_deref(),
        Some("kube-dns")
    );

    // A younger Service, first by name, lists the DNS address as an external IP.
    let hijack = claimant("a", 20, Some(dns_ip), Some(2_000));
    cluster.services.insert(hijack.name.clone(), hijack.into());
    let sl = dns_slice("a-1", "a", 66);
    cluster.slices.insert(sl.name.clone(), sl.into());
    let mut step = changed(&["a"]);
    step.slices.insert(name("a-1"));
    assert_eq!(
        owner_of(&mut r, &cluster, &step, dns).as_deref(),
        Some("kube-dns")
    );
    let done = r.reconcile(&cluster, &Changes::default(), Instant::now());
    assert_eq!(done.problems.len(), 1, "{:?}", done.problems);
    let problem = &done.problems[0];
    assert_eq!(problem.service, name("a"));
    assert_eq!(problem.reason, ProblemReason::FrontendConflict);
    assert!(
        problem.message.contains("10.96.0.10:53/UDP")
            && problem.message.contains("default/kube-dns")
            && problem.message.contains("cluster IP"),
        "{}",
        problem.message
    );

    // Even an older claimant through an external IP does not take a cluster IP.
    Arc::make_mut(cluster.services.get_mut(&name("a")).unwrap()).created = Some(1);
    assert_eq!(
        owner_of(&mut r, &cluster, &changed(&["a"]), dns).as_deref(),
        Some("kube-dns")
    );

    // The loser changes or goes: the owner's frontend stays (no full sync).
    Arc::make_mut(cluster.services.get_mut(&name("a")).unwrap()).ports[0].name = "dns".into();
    assert_eq!(
        owner_of(&mut r, &cluster, &changed(&["a"]), dns).as_deref(),
        Some("kube-dns")
    );
    cluster.services.remove(&name("a"));
    assert_eq!(
        owner_of(&mut r, &cluster, &changed(&["a"]), dns).as_deref(),
        Some("kube-dns")
    );
    assert!(r
        .reconcile(&cluster, &Changes::default(), Instant::now())
        .problems
        .is_empty());

    // With the owner gone, the remaining claimant takes over at once.
    let hijack = claimant("a", 20, Some(dns_ip), Some(2_000));
    cluster.services.insert(hijack.name.clone(), hijack.into());
    owner_of(&mut r, &cluster, &changed(&["a"]), dns);
    cluster.services.remove(&name("kube-dns"));
    assert_eq!(
        owner_of(&mut r, &cluster, &changed(&["kube-dns"]), dns).as_deref(),
        Some("a")
    );
    let backends: Vec<u8> = r.desired()[&dns]
        .backends
        .keys()
        .map(|b| b.ip().octets()[3])
        .collect();
    assert_eq!(backends, [66], "the new owner's endpoints");
}

/// Three Services claiming one frontend: names and creation times.
type Claimants<'a> = [(&'a str, Option<i64>); 3];

#[test]
fn among_external_claims_the_oldest_wins_then_the_name() {
    let shared = Ipv4Addr::new(203, 0, 113, 5);
    let frontend = Frontend {
        addr: shared,
        port: 53,
        proto: Protocol::Udp,
    };
    let cases: [(&str, Claimants<'_>, &str); 4] = [
        (
            "oldest",
            [("a", Some(30)), ("b", Some(10)), ("c", Some(20))],
            "b",
        ),
        (
            "a creation time before none",
            [("a", None), ("b", None), ("c", Some(99))],
            "c",
        ),
        (
            "same age: by name",
            [("c", Some(5)), ("b", Some(5)), ("d", Some(5))],
            "b",
        ),
        (
            "none have one: by name",
            [("c", None), ("b", None), ("d", None)],
            "b",
        ),
    ];
    for (why, claims, want) in cases {
        let mut cluster = Cluster::default();
        let mut r = Reconciler::new(node(), 1 << 20);
        // Added one by one, so each order of arrival is seen incrementally.
        for (k, (n, created)) in claims.iter().enumerate() {
            let svc = claimant(n, 30 + u8::try_from(k).unwrap(), Some(shared), *created);
            cluster.services.insert(svc.name.clone(), svc.into());
            owner_of(&mut r, &cluster, &changed(&[n]), frontend);
        }
        assert_eq!(
            owner_of(&mut r, &cluster, &Changes::default(), frontend).as_deref(),
            Some(want),
            "{why}"
        );
        let done = r.reconcile(&cluster, &Changes::default(), Instant::now());
        let losers: BTreeSet<String> = done
            .problems
            .iter()
            .map(|p| p.service.name.clone())
            .collect();
        assert_eq!(losers.len(), 2, "{why}: {:?}", done.problems);
        assert!(!losers.contains(want), "{why}");
        // The owner goes: the next in order takes over.
        cluster.services.remove(&name(want));
        let next = owner_of(&mut r, &cluster, &changed(&[want]), frontend).unwrap();
        assert_ne!(next, want, "{why}");
    }
}

#[test]
fn every_current_problem_is_reported_at_every_reconcile() {
    let mut cluster = Cluster::default();
    let mut svc = service("sctp", 1);
    svc.skipped_ports = vec!["9/SCTP".into()];
    cluster.services.insert(svc.name.clone(), svc.into());
    let mut r = Reconciler::new(node(), 1 << 20);
    for changes in [Changes::all(), Changes::default()] {
        let done = r.reconcile(&cluster, &changes, Instant::now());
        assert_eq!(done.problems.len(), 1, "{:?}", done.problems);
        assert_eq!(done.problems[0].reason, ProblemReason::UnsupportedPort);
        assert_eq!(done.problems[0].service, name("sctp"));
    }
    // A change of another Service leaves the problem standing.
    let other = service("web", 2);
    cluster.services.insert(other.name.clone(), other.into());
    let done = r.reconcile(&cluster, &changed(&["web"]), Instant::now());
    assert_eq!(done.problems.len(), 1, "{:?}", done.problems);
    Arc::make_mut(cluster.services.get_mut(&name("sctp")).unwrap())
        .skipped_ports
        .clear();
    let done = r.reconcile(&cluster, &changed(&["sctp"]), Instant::now());
    assert!(done.problems.is_empty());
    // A Service that goes takes its problem along.
    let mut again = service("sctp", 1);
    again.skipped_ports = vec!["9/SCTP".into()];
    cluster.services.insert(again.name.clone(), again.into());
    let done = r.reconcile(&cluster, &changed(&["sctp"]), Instant::now());
    assert_eq!(done.problems.len(), 1, "{:?}", done.problems);
    cluster.services.remove(&name("sctp"));
    let done = r.reconcile(&cluster, &changed(&["sctp"]), Instant::now());
    assert!(done.problems.is_empty(), "{:?}", done.problems);
}

#[test]
fn node_ports_follow_the_local_addresses_first_added_last_removed() {
    let mut cluster = Cluster::default();
    let mut svc = service("np", 1);
    svc.kind = ServiceKind::NodePort;
    svc.ports[0].node_port = Some(30080);
    cluster.services.insert(svc.name.clone(), svc.into());
    let sl = slice("np-1", "np", &[2]);
    cluster.slices.insert(sl.name.clone(), sl.into());
    let (a, b, c) = (
        Ipv4Addr::new(192, 168, 50, 11),
        Ipv4Addr::new(10, 244, 1, 1),
        Ipv4Addr::new(172, 17, 0, 1),
    );
    let mut r = Reconciler::new(node(), 1 << 20);
    assert!(r.set_local_addresses(vec![Ipv4Addr::LOCALHOST, b, a]));
    let first = r.reconcile(&cluster, &Changes::all(), Instant::now());
    let served: Vec<&MapOp> = first
        .plan
        .ops
        .iter()
        .take_while(|op| matches!(op, MapOp::SetNodePortAddr(_)))
        .collect();
    assert_eq!(
        served,
        [&MapOp::SetNodePortAddr(b), &MapOp::SetNodePortAddr(a)],
        "ahead of everything, loopback left out"
    );
    let node_port = &r.desired()[&Frontend::node_port(30080, Protocol::Tcp)];
    assert_eq!(node_port.node_port_addrs, [b, a]);

    assert!(
        !r.set_local_addresses(vec![a, b, Ipv4Addr::LOCALHOST]),
        "the same set"
    );
    assert!(r.set_local_addresses(vec![a, c]));
    let next = r.reconcile(&cluster, &Changes::default(), Instant::now());
    assert_eq!(next.plan.ops.first(), Some(&MapOp::SetNodePortAddr(c)));
    assert_eq!(next.plan.ops.last(), Some(&MapOp::DeleteNodePortAddr(b)));
    assert_eq!(
        r.desired()[&Frontend::node_port(30080, Protocol::Tcp)].node_port_addrs,
        [c, a]
    );

    // --nodeport-addresses=primary: the node's own addresses only.
    r.set_node_port_rule(crate::node_ports::NodePortAddresses::Primary);
    let own = r.reconcile(&cluster, &Changes::all(), Instant::now());
    assert!(
        own.plan.ops.contains(&MapOp::DeleteNodePortAddr(a))
            && own.plan.ops.contains(&MapOp::DeleteNodePortAddr(c)),
        "the test node has no address of its own: {:?}",
        own.plan.ops
    );
    assert!(r.desired()[&Frontend::node_port(30080, Protocol::Tcp)]
        .node_port_addrs
        .is_empty());
}

#[test]
fn tracked_the_backends_a_frontend_loses_are_reported_once() {
    let mut cluster = Cluster::default();
    for (svc, ip, eps) in [("a", 1, &[1u8, 2, 3][..]), ("b", 2, &[2][..])] {
        let s = service(svc, ip);
        cluster.services.insert(s.name.clone(), s.into());
        let sl = slice(&format!("{svc}-1"), svc, eps);
        cluster.slices.insert(sl.name.clone(), sl.into());
    }
    let t0 = Instant::now();
    let mut r = Reconciler::new(node(), 1 << 20);
    assert!(r.reconcile(&cluster, &Changes::all(), t0).gone.is_empty());
    r.track_gone(true);
    let ep = |i| std::net::SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, i), 8080);
    let fe = |last| Frontend {
        addr: Ipv4Addr::new(10, 96, 0, last),
        port: 80,
        proto: Protocol::Tcp,
    };

    // Endpoint 2 leaves a's slice (it stays b's).
    cluster
        .slices
        .insert(name("a-1"), slice("a-1", "a", &[1, 3]).into());
    let one_slice = Changes {
        slices: [name("a-1")].into_iter().collect(),
        ..Changes::default()
    };
    let step = r.reconcile(&cluster, &one_slice, t0);
    let found: Vec<_> = step.gone.iter().map(|g| (g.frontend, g.backend)).collect();
    assert_eq!(found, [(fe(1), ep(2))]);
    assert!(r.reconcile(&cluster, &one_slice, t0).gone.is_empty());

    // b goes: its frontend takes its backend along; a full sync finds it too.
    cluster.services.remove(&name("b"));
    let mut full = Reconciler::new(node(), 1 << 20);
    full.track_gone(true);
    full.reconcile(&cluster, &Changes::all(), t0);
    let step = r.reconcile(&cluster, &changed(&["b"]), t0);
    let found: Vec<_> = step.gone.iter().map(|g| (g.frontend, g.backend)).collect();
    assert_eq!(found, [(fe(2), ep(2))]);
    cluster
        .slices
        .insert(name("a-1"), slice("a-1", "a", &[3]).into());
    let step = full.reconcile(&cluster, &Changes::all(), t0);
    let found: Vec<_> = step.gone.iter().map(|g| (g.frontend, g.backend)).collect();
    assert_eq!(found, [(fe(1), ep(1))]);
}

#[test]
fn a_restarted_agent_s_first_sync_finds_what_left_while_none_ran() {
    let mut cluster = Cluster::default();
    let s = service("a", 1);
    cluster.services.insert(s.name.clone(), s.into());
    cluster
        .slices
        .insert(name("a-1"), slice("a-1", "a", &[1, 2]).into());
    // What an earlier agent applied (and a restarted one adopts).
    let t0 = Instant::now();
    let (earlier, _) = select::desired_state(&cluster, &node());
    let mut planner = Planner::new(1 << 20, Duration::ZERO);
    planner.plan(&earlier, t0);
    // Endpoint 2 left while no agent ran.
    cluster
        .slices
        .insert(name("a-1"), slice("a-1", "a", &[1]).into());
    let mut r = Reconciler::with_planner(node(), planner);
    r.track_gone(true);
    let first = r.reconcile(&cluster, &Changes::all(), t0);
    let found: Vec<_> = first.gone.iter().map(|g| g.backend).collect();
    assert_eq!(
        found,
        [std::net::SocketAddrV4::new(
            Ipv4Addr::new(10, 244, 1, 2),
            8080
        )]
    );
}

#[test]
fn an_endpoint_at_an_interface_address_is_local_from_the_scan_that_finds_it() {
    let mut cluster = Cluster::default();
    let svc = service("api", 1);
    cluster.services.insert(svc.name.clone(), svc.into());
    // 10.244.1.1: the node's pod gateway address, an endpoint without nodeName.
    let sl = slice("api-1", "api", &[1]);
    cluster.slices.insert(sl.name.clone(), sl.into());
    let gateway = Ipv4Addr::new(10, 244, 1, 1);
    let frontend = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 1),
        port: 80,
        proto: Protocol::Tcp,
    };
    let local = |r: &Reconciler| r.desired()[&frontend].backends.values().all(|b| b.local);
    let mut r = Reconciler::new(node(), 1 << 20);
    r.reconcile(&cluster, &Changes::all(), Instant::now());
    assert!(!local(&r), "not an address of the node yet");
    assert!(r.set_local_addresses(vec![Ipv4Addr::new(192, 168, 50, 11), gateway]));
    r.reconcile(&cluster, &Changes::default(), Instant::now());
    assert!(local(&r), "found on an interface");
    assert!(r.set_local_addresses(vec![Ipv4Addr::new(192, 168, 50, 11)]));
    r.reconcile(&cluster, &Changes::default(), Instant::now());
    assert!(!local(&r), "gone from the interfaces");
}
