//! The planner's unit tests.

use std::net::Ipv4Addr;

use super::*;
use crate::{
    desired::{BackendInfo, Protocol},
    filter, maglev,
};

const GRACE: Duration = Duration::from_secs(2);

fn fe(last: u8) -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(10, 96, 0, last),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn want(backends: &[(u8, bool)]) -> DesiredFrontend {
    DesiredFrontend {
        service: ObjectName {
            namespace: "default".into(),
            name: "web".into(),
        },
        port_name: "http".into(),
        backends: backends
            .iter()
            .map(|&(last, local)| {
                (
                    SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 8080),
                    BackendInfo {
                        local,
                        for_cluster: true,
                        for_local: true,
                    },
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

/// The desired state of `items`, each frontend in a Service of its own
/// ("web-<last octet>") unless its `want` names another than "web".
fn state(items: &[(Frontend, DesiredFrontend)]) -> DesiredState {
    items
        .iter()
        .cloned()
        .map(|(frontend, mut want)| {
            if want.service.name == "web" {
                want.service.name = format!("web-{}", frontend.addr.octets()[3]);
            }
            (frontend, want)
        })
        .collect()
}

/// The kinds of the plan's operations, labels left out.
fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.ops
        .iter()
        .filter(|op| {
            !matches!(
                op,
                MapOp::SetLabel(..) | MapOp::DeleteLabel(..) | MapOp::SetFilterWord(..)
            )
        })
        .map(|op| match op {
            MapOp::SetBackend(..) => "backend",
            MapOp::SetTable { .. } => "table",
            MapOp::SetService(..) => "service",
            MapOp::DeleteService(..) => "delete",
            MapOp::ClearBackend(..) => "clear",
            MapOp::SetSourceRange(..) => "range",
            MapOp::SetInternalTable(..) => "internal",
            MapOp::SetNodePortAddr(..) => "nodeport",
            MapOp::DeleteNodePortAddr(..) => "unnodeport",
            MapOp::DeleteSourceRange(..) => "unrange",
            MapOp::SetBackend6(..) => "backend6",
            MapOp::SetService6(..) => "service6",
            MapOp::DeleteService6(..) => "delete6",
            MapOp::ClearBackend6(..) => "clear6",
            MapOp::SetNodePortAddr6(..) => "nodeport6",
            MapOp::DeleteNodePortAddr6(..) => "unnodeport6",
            MapOp::SetSourceRange6(..) => "range6",
            MapOp::DeleteSourceRange6(..) => "unrange6",
            MapOp::SetLabel(..) | MapOp::DeleteLabel(..) | MapOp::SetFilterWord(..) => {
                unreachable!()
            }
        })
        .collect()
}

#[test]
fn first_sync_writes_backends_then_tables_then_services_and_is_idempotent() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let desired = state(&[
        (fe(10), want(&[(2, true), (3, false)])),
        (fe(20), want(&[])),
    ]);
    let (plan, errors) = p.plan(&desired, t0);
    assert!(errors.is_empty());
    assert_eq!(
        kinds(&plan),
        ["backend", "backend", "table", "service", "service"]
    );
    let labels: Vec<&MapOp> = plan
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::SetLabel(..)))
        .collect();
    assert_eq!(labels.len(), 2, "each new frontend is named for status");
    assert!(matches!(labels[0], MapOp::SetLabel(_, name) if name == "default/web-10:http"));
    let (again, _) = p.plan(&desired, t0);
    assert!(again.ops.is_empty(), "same desired state, no operations");
    let empty = p.frontends().find(|f| f.frontend == fe(20)).unwrap();
    assert_eq!((empty.entry.backend_count, empty.entry.table_size), (0, 0));
    assert_eq!(empty.entry.flags, SERVICE_F_REJECT, "no endpoints: refused");
    let full = p.frontends().find(|f| f.frontend == fe(10)).unwrap();
    assert_eq!(full.entry.flags, 0);
}

#[test]
fn endpoints_only_elsewhere_drop_and_becoming_usable_rewrites_the_entry() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    // A Local policy without a local endpoint: listed, not selected (an
    // internal one: for pods neither).
    let mut elsewhere = want(&[(2, false)]);
    elsewhere.backends.values_mut().for_each(|b| {
        b.for_cluster = false;
        b.for_local = false;
    });
    // The same endpoint not usable anywhere (not ready, not terminating).
    let mut unusable = elsewhere.clone();
    unusable.has_endpoints = false;
    p.plan(&state(&[(fe(10), unusable)]), t0);
    let entry = |p: &Planner| p.frontends().next().unwrap().entry;
    assert_eq!(entry(&p).flags, SERVICE_F_REJECT);
    let (plan, _) = p.plan(&state(&[(fe(10), elsewhere)]), t0);
    assert_eq!(kinds(&plan), ["service"], "only the entry changes");
    assert_eq!(entry(&p).flags, 0, "endpoints elsewhere: dropped");
    assert_eq!(entry(&p).backend_count, 0);
}

#[test]
fn an_adopted_empty_frontend_written_before_the_flag_gets_it() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let desired = state(&[(fe(20), want(&[]))]);
    p.plan(&desired, t0);
    // As an agent before the flag wrote it: the word was padding, zero.
    let mut older: Vec<AppliedFrontend> = p.frontends().collect();
    older[0].entry.flags = 0;
    let mut adopted = Planner::adopt(older, Vec::new(), 1 << 16, GRACE);
    let (plan, errors) = adopted.plan(&desired, t0);
    assert!(errors.is_empty());
    assert_eq!(kinds(&plan), ["service"], "only the entry is rewritten");
    let entry = adopted.frontends().next().unwrap().entry;
    assert_eq!(entry.flags, SERVICE_F_REJECT);
}

#[test]
fn table_matches_maglev_over_the_backend_ids() {
    let mut p = Planner::new(1 << 16, GRACE);
    let (plan, _) = p.plan(
        &state(&[(fe(10), want(&[(2, true), (3, true), (4, true)]))]),
        Instant::now(),
    );
    let applied = p.frontends().next().unwrap();
    let addrs: Vec<SocketAddrV4> = applied.backends.keys().copied().collect();
    let expected: Vec<u32> = maglev::build_table(&addrs, applied.entry.table_size)
        .into_iter()
        .map(|i| applied.backends[&addrs[i as usize]].id)
        .collect();
    let table = plan.ops.iter().find_map(|op| match op {
        MapOp::SetTable { slots, .. } => Some(slots.clone()),
        _ => None,
    });
    assert_eq!(table, Some(expected));
}

#[test]
fn changing_one_frontend_touches_only_it_and_clears_last() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let a = (fe(10), want(&[(2, true), (3, true)]));
    let b = (fe(20), want(&[(5, true)]));
    p.plan(&state(&[a.clone(), b.clone()]), t0);
    let before = p.frontends().find(|f| f.frontend == fe(10)).unwrap();
    let (plan, _) = p.plan(&state(&[(fe(10), want(&[(3, true), (4, true)])), b]), t0);
    assert_eq!(kinds(&plan), ["backend", "table", "service", "clear"]);
    let after = p.frontends().find(|f| f.frontend == fe(10)).unwrap();
    let kept = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 3), 8080);
    assert_eq!(
        after.backends[&kept].id, before.backends[&kept].id,
        "a surviving backend keeps its id"
    );
    assert_eq!(
        after.entry.table_size, before.entry.table_size,
        "the table keeps its size"
    );
    assert_ne!(
        after.entry.table_offset, before.entry.table_offset,
        "a new table goes to free slots"
    );
    let removed = before.backends[&SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080)].id;
    let last = plan
        .ops
        .iter()
        .rfind(|op| !matches!(op, MapOp::SetFilterWord(..)));
    assert_eq!(last, Some(&MapOp::ClearBackend(removed)));
}

#[test]
fn unselected_backends_keep_their_entries_but_leave_the_table() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    p.plan(&state(&[(fe(10), want(&[(2, true), (3, true)]))]), t0);
    let before = p.frontends().next().unwrap();
    let mut draining = want(&[(2, true), (3, true)]);
    let drained = draining.backends.values_mut().nth(1).unwrap();
    drained.for_cluster = false;
    drained.for_local = false;
    let (plan, _) = p.plan(&state(&[(fe(10), draining)]), t0);
    assert_eq!(
        kinds(&plan),
        ["backend", "table", "service"],
        "the draining backend is rewritten without the selected flag, not cleared"
    );
    let MapOp::SetBackend(_, drained) = &plan.ops[0] else {
        unreachable!()
    };
    assert_eq!(drained.flags, BACKEND_F_ACTIVE | BACKEND_F_LOCAL);
    let after = p.frontends().next().unwrap();
    assert_eq!(after.entry.backend_count, 1);
    let kept = before.backends.values().nth(1).unwrap().id;
    let table = plan.ops.iter().find_map(|op| match op {
        MapOp::SetTable { slots, .. } => Some(slots.clone()),
        _ => None,
    });
    assert!(
        table.unwrap().iter().all(|&id| id != kept),
        "the draining backend is out of the table"
    );
    assert_eq!(
        after.backends.values().nth(1).unwrap().id,
        kept,
        "but keeps its id and entry"
    );
}

#[test]
fn a_frontend_with_5000_backends_gets_every_one_in_its_table() {
    let mut p = Planner::new(1 << 20, GRACE);
    let mut big = want(&[]);
    big.backends = (0..5000u32)
        .map(|i| {
            (
                SocketAddrV4::new(Ipv4Addr::from(0x0af5_0000 + i), 8080),
                BackendInfo {
                    local: false,
                    for_cluster: true,
                    for_local: true,
                },
            )
        })
        .collect();
    let (plan, errors) = p.plan(&state(&[(fe(10), big)]), Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    let table = plan
        .ops
        .iter()
        .find_map(|op| match op {
            MapOp::SetTable { slots, .. } => Some(slots.clone()),
            _ => None,
        })
        .unwrap();
    let distinct: std::collections::BTreeSet<u32> = table.iter().copied().collect();
    assert_eq!((table.len(), distinct.len()), (131_071, 5000));
}

#[test]
fn local_flag_flip_rewrites_only_the_backend() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    p.plan(&state(&[(fe(10), want(&[(2, true), (3, true)]))]), t0);
    let (plan, _) = p.plan(&state(&[(fe(10), want(&[(2, true), (3, false)]))]), t0);
    assert_eq!(kinds(&plan), ["backend"]);
    let MapOp::SetBackend(_, entry) = &plan.ops[0] else {
        unreachable!()
    };
    assert_eq!(
        entry.flags,
        BACKEND_F_ACTIVE | BACKEND_F_SELECTED | BACKEND_F_SELECTED_LOCAL
    );
}

#[test]
fn removed_frontend_is_deleted_and_its_slots_reused_only_after_grace() {
    let t0 = Instant::now();
    let mut p = Planner::new(251, GRACE);
    p.plan(&state(&[(fe(10), want(&[(2, true)]))]), t0);
    let (plan, _) = p.plan(&state(&[]), t0);
    assert_eq!(kinds(&plan), ["delete", "clear"]);
    assert!(plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::DeleteLabel(_))));
    let (_, errors) = p.plan(
        &state(&[(fe(11), want(&[(2, true)]))]),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        errors.len(),
        1,
        "the only 251 slots are still in quarantine"
    );
    assert!(
        errors[0].to_string().contains("default/web"),
        "{}",
        errors[0]
    );
    let (plan, errors) = p.plan(&state(&[(fe(11), want(&[(2, true)]))]), t0 + GRACE);
    assert!(errors.is_empty());
    assert_eq!(kinds(&plan), ["backend", "table", "service"]);
}

#[test]
fn filter_bits_are_set_first_and_cleared_last() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let (plan, _) = p.plan(&state(&[(fe(10), want(&[(2, true)]))]), t0);
    let applied = p.frontends().next().unwrap();
    let needed: Vec<u32> = filter::bits_of(&applied).collect();
    let set_first: Vec<u64> = plan
        .ops
        .iter()
        .take_while(|op| matches!(op, MapOp::SetFilterWord(..)))
        .map(|op| match op {
            MapOp::SetFilterWord(index, bits) => {
                assert!(needed.iter().any(|b| b / 64 == *index));
                *bits
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        set_first.iter().map(|w| w.count_ones()).sum::<u32>(),
        2,
        "the frontend's bit and its backend's, before anything else"
    );
    assert!(matches!(plan.ops.last(), Some(MapOp::SetLabel(..))));
    let (plan, _) = p.plan(&state(&[]), t0);
    assert!(
        !plan
            .ops
            .iter()
            .any(|op| matches!(op, MapOp::SetFilterWord(..))),
        "kept for the grace after the frontend and its backend are gone: {:?}",
        plan.ops
    );
    let (plan, _) = p.plan(&state(&[]), t0 + GRACE);
    assert!(
        matches!(plan.ops.last(), Some(MapOp::SetFilterWord(_, 0))),
        "cleared after the grace: {:?}",
        plan.ops
    );
}

#[test]
fn a_frontend_that_does_not_fit_leaves_the_others_alone() {
    let t0 = Instant::now();
    let mut p = Planner::new(600, GRACE);
    p.plan(&state(&[(fe(10), want(&[(2, true)]))]), t0);
    let big: Vec<(u8, bool)> = (2..12).map(|i| (i, true)).collect();
    let (plan, errors) = p.plan(
        &state(&[
            (fe(10), want(&[(2, true)])),
            (fe(20), want(&big)),
            (fe(30), want(&[(9, true)])),
        ]),
        t0,
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].frontend, fe(20));
    assert_eq!(
        kinds(&plan),
        ["backend", "table", "service"],
        "fe(30) is still placed"
    );
    assert!(p.frontends().all(|f| f.frontend != fe(20)));
}

#[test]
fn source_ranges_are_written_before_the_entry_that_uses_them_and_removed_after() {
    let t0 = Instant::now();
    let r = |c: u8, len| SourceRange {
        addr: Ipv4Addr::new(c, 0, 0, 0),
        prefix_len: len,
    };
    let with = |ranges: Vec<SourceRange>| DesiredFrontend {
        source_ranges: ranges,
        ..want(&[(2, true)])
    };
    let mut p = Planner::new(1 << 16, GRACE);
    let (plan, _) = p.plan(&state(&[(fe(10), with(vec![r(10, 8), r(20, 8)]))]), t0);
    assert_eq!(
        kinds(&plan),
        ["backend", "range", "range", "table", "service"]
    );
    let entry = |plan: &Plan| {
        plan.ops
            .iter()
            .find_map(|op| match op {
                MapOp::SetService(_, e) => Some(*e),
                _ => None,
            })
            .unwrap()
    };
    let first = entry(&plan);
    assert_eq!(first.flags, SERVICE_F_SOURCE_RANGES);
    let id = first.id;

    // One range more, one fewer: the table and the entry stay.
    let (plan, _) = p.plan(&state(&[(fe(10), with(vec![r(10, 8), r(30, 8)]))]), t0);
    assert_eq!(
        plan.ops,
        [
            MapOp::SetSourceRange(id, r(30, 8)),
            MapOp::DeleteSourceRange(id, r(20, 8))
        ]
    );
    // No ranges: the entry stops checking first, then the ranges go.
    let (plan, _) = p.plan(&state(&[(fe(10), with(vec![]))]), t0);
    let k = kinds(&plan);
    let service = k.iter().position(|&x| x == "service").unwrap();
    assert_eq!(entry(&plan).flags, 0);
    assert!(
        k[service + 1..].iter().filter(|&&x| x == "unrange").count() == 2,
        "{k:?}"
    );
    assert!(!k[..service].contains(&"unrange"), "{k:?}");
    // And back, then the frontend goes: its ranges go after its entry.
    p.plan(&state(&[(fe(10), with(vec![r(10, 8)]))]), t0);
    let (plan, _) = p.plan(&state(&[]), t0);
    let k = kinds(&plan);
    assert_eq!(&k[..2], ["delete", "unrange"], "{k:?}");
    assert_eq!(p.v4.source_ranges, 0);
    // Replanning the same state writes nothing.
    p.plan(&state(&[(fe(10), with(vec![r(10, 8)]))]), t0);
    let (again, _) = p.plan(&state(&[(fe(10), with(vec![r(10, 8)]))]), t0);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    assert_eq!(p.v4.source_ranges, 1);
}

#[test]
fn the_source_range_map_has_a_capacity() {
    let max = lb_common::SOURCE_RANGES_MAX_ENTRIES as usize;
    assert_eq!(ranges::count_after(max - 1, 0, 1), Ok(max));
    assert_eq!(ranges::count_after(max, 3, 3), Ok(max));
    let err = ranges::count_after(max, 0, 1).unwrap_err();
    assert!(err.contains("source ranges"), "{err}");
}

#[test]
fn a_frontend_whose_pods_see_other_backends_gets_a_second_table_before_its_entry() {
    let t0 = Instant::now();
    // externalTrafficPolicy: Local on a node with one local endpoint of
    // three: outside clients get the local one, pods all three.
    let mut local_only = want(&[(2, true), (3, false), (4, false)]);
    local_only.policy = TrafficPolicy::Local;
    for (addr, info) in &mut local_only.backends {
        info.for_local = addr.ip().octets()[3] == 2;
    }
    assert!(local_only.has_internal_table());
    let mut p = Planner::new(1 << 16, GRACE);
    let (plan, errors) = p.plan(&state(&[(fe(10), local_only.clone())]), t0);
    assert!(errors.is_empty());
    assert_eq!(
        kinds(&plan),
        ["backend", "backend", "backend", "table", "table", "internal", "service"]
    );
    let (entry, internal) = {
        let applied = p.frontends().next().unwrap();
        (applied.entry, applied.internal.unwrap())
    };
    assert_eq!(entry.flags, SERVICE_F_INTERNAL_TABLE | SERVICE_F_LOCAL);
    assert_eq!((entry.backend_count, internal.backend_count), (1, 3));
    assert_ne!(
        entry.table_offset, internal.table_offset,
        "two ranges of the slab"
    );
    let tables: Vec<(u32, Vec<BackendId>)> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetTable { offset, slots } => Some((*offset, slots.clone())),
            _ => None,
        })
        .collect();
    let distinct = |slots: &[BackendId]| {
        slots
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let main = tables
        .iter()
        .find(|(o, _)| *o == entry.table_offset)
        .unwrap();
    let pods = tables
        .iter()
        .find(|(o, _)| *o == internal.table_offset)
        .unwrap();
    assert_eq!((distinct(&main.1), distinct(&pods.1)), (1, 3));
    for op in &plan.ops {
        if let MapOp::SetBackend(_, b) = op {
            let local = b.flags & BACKEND_F_LOCAL != 0;
            assert_eq!(b.flags & BACKEND_F_SELECTED_LOCAL != 0, local);
            assert_ne!(b.flags & BACKEND_F_SELECTED, 0, "pods may use every one");
        }
    }
    // Unchanged: nothing to write. An adopting planner agrees.
    let (again, _) = p.plan(&state(&[(fe(10), local_only.clone())]), t0);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    let applied: Vec<AppliedFrontend> = p.frontends().collect();
    let mut adopted = Planner::adopt(applied, Vec::new(), 1 << 16, GRACE);
    let (again, _) = adopted.plan(&state(&[(fe(10), local_only.clone())]), t0);
    assert!(
        again
            .ops
            .iter()
            .all(|op| matches!(op, MapOp::SetFilterWord(..))),
        "{:?}",
        again.ops
    );

    // The local endpoint goes: outside clients have none here, pods two.
    let mut none_here = want(&[(3, false), (4, false)]);
    none_here.policy = TrafficPolicy::Local;
    for info in none_here.backends.values_mut() {
        info.for_local = false;
    }
    let (plan, _) = p.plan(&state(&[(fe(10), none_here)]), t0);
    assert!(kinds(&plan).contains(&"internal"));
    let applied = p.frontends().next().unwrap();
    assert_eq!(
        (
            applied.entry.backend_count,
            applied.internal.unwrap().backend_count
        ),
        (0, 2)
    );
    assert_eq!(
        applied.entry.flags,
        SERVICE_F_INTERNAL_TABLE | SERVICE_F_LOCAL,
        "dropped outside, served to pods"
    );

    // Both see the same backends again: one table, no flag.
    let (plan, _) = p.plan(&state(&[(fe(10), want(&[(3, false)]))]), t0);
    assert!(!kinds(&plan).contains(&"internal"));
    let applied = p.frontends().next().unwrap();
    assert_eq!((applied.entry.flags, applied.internal), (0, None));
    // And the frontend goes: both ranges of the slab come back after the grace.
    p.plan(&state(&[]), t0);
    let (plan, errors) = p.plan(&state(&[(fe(10), local_only)]), t0 + GRACE * 2);
    assert!(errors.is_empty() && !plan.ops.is_empty());
}

#[test]
fn the_backends_array_has_the_configured_size_and_a_clear_error() {
    let t0 = Instant::now();
    // Four entries: id 0 is never used, so three backends fit.
    let mut p = Planner::new_sized(
        Capacity {
            backend_slots: 4,
            ..Capacity::with_slab(1 << 16)
        },
        GRACE,
    );
    let (_, errors) = p.plan(
        &state(&[(fe(10), want(&[(2, true), (3, true), (4, true)]))]),
        t0,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let (_, errors) = p.plan(
        &state(&[
            (fe(10), want(&[(2, true), (3, true), (4, true)])),
            (fe(11), want(&[(5, true)])),
        ]),
        t0,
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].frontend, fe(11));
    assert!(
        errors[0].message.contains("more than 3 backends")
            && errors[0].message.contains("--max-backends"),
        "{}",
        errors[0].message
    );
    assert_eq!(
        p.frontends().count(),
        1,
        "the other frontend keeps its place"
    );
}

#[test]
fn the_services_map_has_the_configured_size_and_a_clear_error() {
    let t0 = Instant::now();
    let mut p = Planner::new_sized(
        Capacity {
            service_slots: 2,
            ..Capacity::with_slab(1 << 16)
        },
        GRACE,
    );
    let two = [(fe(10), want(&[(2, true)])), (fe(11), want(&[(3, true)]))];
    let (_, errors) = p.plan(&state(&two), t0);
    assert!(errors.is_empty(), "{errors:?}");
    let (_, errors) = p.plan(
        &state(&[two[0].clone(), two[1].clone(), (fe(12), want(&[(4, true)]))]),
        t0,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].frontend, fe(12));
    assert!(
        errors[0].message.contains("more than 2 frontends")
            && errors[0].message.contains("--max-services"),
        "{}",
        errors[0].message
    );
    assert_eq!(p.frontends().count(), 2, "the others keep their places");
    // Ids freed wait out the grace: a new Service port cannot take them yet.
    let (_, errors) = p.plan(&state(&[(fe(12), want(&[(4, true)]))]), t0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("more than 2 Service ports"),
        "{}",
        errors[0].message
    );
    let (_, errors) = p.plan(&state(&[(fe(12), want(&[(4, true)]))]), t0 + GRACE);
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn what_a_plan_frees_is_never_reused_by_the_same_plan_even_without_grace() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, Duration::ZERO);
    p.plan(&state(&[(fe(10), want(&[(2, true), (3, true)]))]), t0);
    // One plan removes fe(10) and places fe(11): its trailing clears of
    // fe(10)'s backends must not hit fe(11)'s.
    let (plan, errors) = p.plan(&state(&[(fe(11), want(&[(4, true), (5, true)]))]), t0);
    assert!(errors.is_empty());
    let written: Vec<BackendId> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetBackend(id, _) => Some(*id),
            _ => None,
        })
        .collect();
    let cleared: Vec<BackendId> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            MapOp::ClearBackend(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!((written.len(), cleared.len()), (2, 2));
    assert!(
        written.iter().all(|id| !cleared.contains(id)),
        "{written:?} {cleared:?}"
    );
    let tables: Vec<u32> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetTable { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert_ne!(
        tables,
        [0],
        "the removed table's slots are not rewritten in the same plan"
    );
    // The next plan may reuse them.
    let (plan, _) = p.plan(
        &state(&[
            (fe(12), want(&[(6, true)])),
            (fe(11), want(&[(4, true), (5, true)])),
        ]),
        t0,
    );
    assert!(plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::SetBackend(id, _) if cleared.contains(id))));
}

/// IPv4 plans as the code of `47e691a` makes them (a first sync, then one
/// endpoint gone, then one frontend gone, each a grace-clearing step
/// apart), digested: making the planner generic over the address family
/// must not change one IPv4 operation or their order. The digests hold
/// on a little-endian host (entries hold addresses in network byte order
/// read as native `u32`s).
#[test]
fn ipv4_ops_are_golden() {
    /// 64-bit FNV-1a.
    fn digest(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
    let tcp = |a, b, c, d, port| Frontend {
        addr: Ipv4Addr::new(a, b, c, d),
        port,
        proto: Protocol::Tcp,
    };
    let range = |a, b, c, prefix_len| SourceRange {
        addr: Ipv4Addr::new(a, b, c, 0),
        prefix_len,
    };
    let node_port_addrs = vec![
        Ipv4Addr::new(192, 168, 1, 10),
        Ipv4Addr::new(192, 168, 1, 11),
    ];
    // Service default/web, port "http": externalTrafficPolicy Cluster, a
    // cluster IP, an LB IP with source ranges and a node port.
    let web = |gone: Option<u8>| {
        let mut port = want(&[(2, true), (3, false), (4, false)]);
        port.backends
            .retain(|addr, _| Some(addr.ip().octets()[3]) != gone);
        let lb = DesiredFrontend {
            source_ranges: vec![range(198, 51, 100, 24), range(203, 0, 113, 24)],
            ..port.clone()
        };
        let node_port = DesiredFrontend {
            node_port_addrs: node_port_addrs.clone(),
            ..port.clone()
        };
        [
            (tcp(10, 96, 0, 10, 80), port),
            (tcp(192, 0, 2, 10, 80), lb),
            (Frontend::node_port(30_080, Protocol::Tcp), node_port),
        ]
    };
    // Service default/api, port "grpc": externalTrafficPolicy Local with
    // one local endpoint of three (pods get all three: an internal table),
    // session affinity, a cluster IP, an LB IP and a node port.
    let api = {
        let mut port = want(&[]);
        port.service.name = "api".into();
        port.port_name = "grpc".into();
        port.affinity_timeout = 10_800;
        port.has_endpoints = true;
        port.backends = [(2, true), (3, false), (4, false)]
            .into_iter()
            .map(|(last, local)| {
                let info = BackendInfo {
                    local,
                    for_cluster: true,
                    for_local: local,
                };
                (
                    SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, last), 9090),
                    info,
                )
            })
            .collect();
        let external = DesiredFrontend {
            policy: TrafficPolicy::Local,
            ..port.clone()
        };
        let node_port = DesiredFrontend {
            node_port_addrs: node_port_addrs.clone(),
            ..external.clone()
        };
        [
            (tcp(10, 96, 0, 20, 9000), port),
            (tcp(192, 0, 2, 20, 9000), external),
            (Frontend::node_port(30_090, Protocol::Tcp), node_port),
        ]
    };
    let first: DesiredState = web(None).into_iter().chain(api.clone()).collect();
    let endpoint_gone: DesiredState = web(Some(3)).into_iter().chain(api.clone()).collect();
    let mut frontend_gone = endpoint_gone.clone();
    frontend_gone.remove(&tcp(192, 0, 2, 10, 80));
    assert!(first.values().any(DesiredFrontend::has_internal_table));

    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let mut plans = Vec::new();
    for (desired, at) in [(first, 0), (endpoint_gone, 1), (frontend_gone, 4)] {
        let (plan, errors) = p.plan(&desired, t0 + Duration::from_secs(at));
        assert!(errors.is_empty(), "{errors:?}");
        plans.push(plan);
    }
    let golden: Vec<(usize, u64)> = plans
        .iter()
        .map(|plan| (plan.ops.len(), digest(format!("{:?}", plan.ops).as_bytes())))
        .collect();
    assert_eq!(
        golden,
        [
            (34, 0xe45c_2515_d64b_e22b),
            (5, 0x368f_b1b2_477a_d27e),
            (4, 0xb6a3_f5e2_2e6f_e2a8),
        ],
        "{golden:#x?}"
    );
}
