//! The planner's IPv6 side: the same rules as IPv4's, over IPv6's own
//! maps, sharing the slab, the backend and service ids and the filter.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use super::*;
use crate::desired::{BackendInfo, Listen6, Protocol, SourceRangeV6};

const GRACE: Duration = Duration::from_secs(2);

fn fe4(last: u8) -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(10, 96, 0, last),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn fe6(last: u16) -> FrontendV6 {
    FrontendV6 {
        listen: Listen6::Addr(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, last), 80),
        proto: Protocol::Tcp,
    }
}

fn service(name: &str) -> ObjectName {
    ObjectName {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn info() -> BackendInfo {
    BackendInfo {
        local: true,
        for_cluster: true,
        for_local: true,
    }
}

fn want4(name: &str, backends: &[u8]) -> DesiredFrontend {
    DesiredFrontend {
        service: service(name),
        port_name: "http".into(),
        backends: backends
            .iter()
            .map(|&last| {
                (
                    SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 8080),
                    info(),
                )
            })
            .collect(),
        policy: TrafficPolicy::Cluster,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        has_endpoints: !backends.is_empty(),
        source_ranges: Vec::new(),
        node_port_addrs: Vec::new(),
    }
}

fn want6(name: &str, backends: &[u16]) -> DesiredFrontend<SocketAddrV6> {
    DesiredFrontend {
        service: service(name),
        port_name: "http".into(),
        backends: backends
            .iter()
            .map(|&last| {
                let ip = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, last);
                (SocketAddrV6::new(ip, 8080, 0, 0), info())
            })
            .collect(),
        policy: TrafficPolicy::Cluster,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        has_endpoints: !backends.is_empty(),
        source_ranges: Vec::new(),
        node_port_addrs: Vec::new(),
    }
}

/// The kinds of a plan's operations, IPv4's and IPv6's told apart.
fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetBackend(..) => Some("backend"),
            MapOp::SetBackend6(..) => Some("backend6"),
            MapOp::SetTable { .. } => Some("table"),
            MapOp::SetService(..) => Some("service"),
            MapOp::SetService6(..) => Some("service6"),
            MapOp::DeleteService6(..) => Some("delete6"),
            MapOp::ClearBackend6(..) => Some("clear6"),
            MapOp::SetSourceRange6(..) => Some("range6"),
            MapOp::DeleteSourceRange6(..) => Some("unrange6"),
            MapOp::SetLabel(..) | MapOp::SetFilterWord(..) | MapOp::DeleteLabel(..) => None,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn labels(plan: &Plan) -> Vec<(u32, String)> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetLabel(id, label) => Some((*id, label.clone())),
            _ => None,
        })
        .collect()
}

/// Slab ranges (offset, length) the plan writes tables into.
fn tables(plan: &Plan) -> Vec<(u32, u32)> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetTable { offset, slots } => {
                Some((*offset, u32::try_from(slots.len()).unwrap()))
            }
            _ => None,
        })
        .collect()
}

fn backend_ids(plan: &Plan) -> Vec<u32> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetBackend(id, _) | MapOp::SetBackend6(id, _) => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn first_sync_writes_backends6_then_tables_then_services6_and_is_idempotent() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let desired: DesiredState6 = [
        (fe6(10), want6("web", &[2, 3])),
        (fe6(20), want6("db", &[])),
    ]
    .into_iter()
    .collect();
    let (plan, errors) = p.plan6(&desired, t0);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        kinds(&plan),
        ["backend6", "backend6", "table", "service6", "service6"]
    );
    let named: Vec<String> = labels(&plan).into_iter().map(|(_, l)| l).collect();
    assert_eq!(named, ["default/web:http/IPv6", "default/db:http/IPv6"]);
    // Each backend entry carries the address in wire order and its port's id.
    let service_id = p
        .frontends6()
        .find(|f| f.frontend == fe6(10))
        .unwrap()
        .entry
        .id;
    for op in &plan.ops {
        if let MapOp::SetBackend6(_, b) = op {
            assert_eq!(b.addr[0].to_ne_bytes(), [0xfd, 0x00, 0x02, 0x44]);
            assert_eq!((b.port, b.service_id), (8080u16.to_be(), service_id));
        }
    }
    let (again, _) = p.plan6(&desired, t0);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    // IPv4's side saw nothing.
    assert_eq!(p.frontend_count(), 0);
    assert_eq!(p.frontend_count6(), 2);
    let empty = p.frontends6().find(|f| f.frontend == fe6(20)).unwrap();
    assert_eq!(empty.entry.flags, SERVICE_F_REJECT, "no endpoints: refused");
}

#[test]
fn a_dual_stack_port_gets_two_ids_two_labels_and_tables_apart() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let (plan4, _) = p.plan(&[(fe4(10), want4("web", &[2, 3]))].into(), t0);
    let (plan6, _) = p.plan6(&[(fe6(10), want6("web", &[2, 3]))].into(), t0);
    let (l4, l6) = (labels(&plan4), labels(&plan6));
    assert_eq!(l4[0].1, "default/web:http");
    assert_eq!(l6[0].1, "default/web:http/IPv6");
    assert_ne!(l4[0].0, l6[0].0, "one service id per family");
    let (ids4, ids6) = (backend_ids(&plan4), backend_ids(&plan6));
    assert!(
        ids4.iter().all(|id| !ids6.contains(id)),
        "{ids4:?} {ids6:?}"
    );
    let ((o4, n4), (o6, n6)) = (tables(&plan4)[0], tables(&plan6)[0]);
    assert!(
        o4 + n4 <= o6 || o6 + n6 <= o4,
        "the tables overlap in the slab"
    );
    // The IPv6 table's slots are IPv6 backend ids.
    for op in &plan6.ops {
        if let MapOp::SetTable { slots, .. } = op {
            assert!(slots.iter().all(|id| ids6.contains(id)));
        }
    }
}

#[test]
fn families_share_the_backend_id_space_and_its_capacity() {
    let t0 = Instant::now();
    // Four entries: id 0 is never used, so three backends fit in all.
    let mut p = Planner::new_sized(
        Capacity {
            backend_slots: 4,
            ..Capacity::with_slab(1 << 16)
        },
        GRACE,
    );
    let (_, errors) = p.plan(&[(fe4(10), want4("web", &[2, 3]))].into(), t0);
    assert!(errors.is_empty());
    let (_, errors) = p.plan6(&[(fe6(10), want6("web", &[2, 3]))].into(), t0);
    assert_eq!(errors.len(), 1, "two more do not fit");
    assert!(errors[0].message.contains("--max-backends"), "{errors:?}");
    assert_eq!(errors[0].frontend, fe6(10));
    // One does (once the id the failed attempt held is past its grace).
    let (_, errors) = p.plan6(&[(fe6(10), want6("web", &[2]))].into(), t0 + GRACE);
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn ids_ipv6_freed_wait_the_grace_before_ipv4_reuses_them() {
    let t0 = Instant::now();
    let mut p = Planner::new_sized(
        Capacity {
            backend_slots: 3,
            ..Capacity::with_slab(1 << 16)
        },
        GRACE,
    );
    let (plan, _) = p.plan6(&[(fe6(10), want6("web", &[2, 3]))].into(), t0);
    let freed = backend_ids(&plan);
    assert_eq!(freed.len(), 2);
    let (plan, _) = p.plan6(&DesiredState6::new(), t0);
    assert_eq!(kinds(&plan), ["delete6", "clear6", "clear6"]);
    let (_, errors) = p.plan(&[(fe4(10), want4("web", &[2]))].into(), t0 + GRACE / 2);
    assert_eq!(errors.len(), 1, "within the grace no id is free");
    let (plan, errors) = p.plan(&[(fe4(10), want4("web", &[2]))].into(), t0 + GRACE);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(freed.contains(&backend_ids(&plan)[0]));
}

#[test]
fn ipv6_source_ranges_and_node_port_addresses_have_their_own_ops() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let lb = FrontendV6 {
        listen: Listen6::Addr("2001:db8::7".parse().unwrap(), 443),
        proto: Protocol::Tcp,
    };
    let range = SourceRangeV6 {
        addr: "2001:db8:40::".parse().unwrap(),
        prefix_len: 44,
    };
    let mut want = want6("web", &[2]);
    want.source_ranges = vec![range];
    let (plan, _) = p.plan6(&[(lb, want.clone())].into(), t0);
    let id = p.frontends6().next().unwrap().entry.id;
    assert!(plan.ops.contains(&MapOp::SetSourceRange6(id, range)));
    let entry = p.frontends6().next().unwrap().entry;
    assert_ne!(entry.flags & SERVICE_F_SOURCE_RANGES, 0);
    want.source_ranges.clear();
    let (plan, _) = p.plan6(&[(lb, want)].into(), t0);
    assert_eq!(
        kinds(&plan),
        ["service6", "unrange6"],
        "entry first, then the range"
    );

    let node: Ipv6Addr = "fd00:50::11".parse().unwrap();
    let (add, remove) = p.node_port_addresses6(&[node]);
    assert_eq!(
        (add.ops, remove.ops),
        (vec![MapOp::SetNodePortAddr6(node)], vec![])
    );
    let (add, remove) = p.node_port_addresses6(&[]);
    assert_eq!(
        (add.ops, remove.ops),
        (vec![], vec![MapOp::DeleteNodePortAddr6(node)])
    );
    // IPv4's addresses are another set.
    assert!(p.node_port_addresses(&[]).0.ops.is_empty());
}

#[test]
fn adopting_both_families_replans_nothing() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let desired4: DesiredState = [(fe4(10), want4("web", &[2, 3]))].into();
    let desired6: DesiredState6 = [(fe6(10), want6("web", &[2, 3]))].into();
    let (plan4, _) = p.plan(&desired4, t0);
    let (plan6, _) = p.plan6(&desired6, t0);
    // The filter words as the maps hold them after both plans.
    let mut words = vec![0u64; lb_common::FILTER_WORDS as usize];
    for op in plan4.ops.iter().chain(&plan6.ops) {
        if let MapOp::SetFilterWord(index, bits) = op {
            words[*index as usize] = *bits;
        }
    }
    let mut adopted = Planner::adopt(p.frontends().collect(), words, 1 << 16, GRACE)
        .adopt6(p.frontends6().collect());
    let (again4, e4) = adopted.plan(&desired4, t0);
    let (again6, e6) = adopted.plan6(&desired6, t0);
    assert!(e4.is_empty() && e6.is_empty());
    assert!(again4.ops.is_empty(), "{:?}", again4.ops);
    assert!(again6.ops.is_empty(), "{:?}", again6.ops);
    assert_eq!(adopted.frontends6().next(), p.frontends6().next());
    // Adopted IPv6 ids are taken: a new IPv4 port gets other ones.
    let (plan, _) = adopted.plan(
        &[
            (fe4(10), want4("web", &[2, 3])),
            (fe4(11), want4("api", &[4])),
        ]
        .into(),
        t0,
    );
    let taken: Vec<u32> = p
        .ports6()
        .flat_map(|port| port.backends.values().map(|b| b.id))
        .collect();
    assert!(backend_ids(&plan).iter().all(|id| !taken.contains(id)));
}

#[test]
fn an_ipv6_id_an_ipv4_port_holds_makes_an_orphan_that_the_next_plan_deletes() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    p.plan(&[(fe4(10), want4("web", &[2]))].into(), t0);
    p.plan6(&[(fe6(10), want6("web", &[2]))].into(), t0);
    let mut six: Vec<AppliedFrontend<SocketAddrV6>> = p.frontends6().collect();
    // As if the IPv6 entry named the IPv4 port's id.
    six[0].entry.id = p.frontends().next().unwrap().entry.id;
    let mut adopted =
        Planner::adopt(p.frontends().collect(), Vec::new(), 1 << 16, GRACE).adopt6(six);
    assert_eq!(adopted.frontend_count6(), 0, "not adopted");
    let (plan, _) = adopted.plan6(&DesiredState6::new(), t0);
    assert_eq!(kinds(&plan), ["delete6"]);
}

#[test]
fn ipv6_service_entries_carry_the_affinity_timeout_and_follow_its_edits() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let mut want = want6("web", &[2, 3]);
    want.affinity_timeout = 600;
    let desired: DesiredState6 = [(fe6(10), want.clone())].into_iter().collect();
    let (plan, errors) = p.plan6(&desired, t0);
    assert!(errors.is_empty(), "{errors:?}");
    let timeouts = |plan: &Plan| -> Vec<u32> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                MapOp::SetService6(_, entry) => Some(entry.affinity_timeout),
                _ => None,
            })
            .collect()
    };
    assert_eq!(timeouts(&plan), [600]);
    want.affinity_timeout = 0;
    let desired: DesiredState6 = [(fe6(10), want)].into_iter().collect();
    let (plan, _) = p.plan6(&desired, t0);
    assert_eq!(
        timeouts(&plan),
        [0],
        "affinity turned off rewrites the entry"
    );
}
