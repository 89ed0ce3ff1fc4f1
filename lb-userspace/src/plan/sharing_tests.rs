//! The planner's tests of what the frontends of one Service port share.

use std::net::Ipv4Addr;

use super::*;
use crate::desired::{BackendInfo, Protocol};

const GRACE: Duration = Duration::from_secs(2);

fn cluster_ip() -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn lb_ip() -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(192, 0, 2, 10),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn node_port() -> Frontend {
    Frontend::node_port(30080, Protocol::Tcp)
}

fn endpoint(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 8080)
}

/// A frontend of Service default/web port "http" with endpoints (last
/// octet, on this node?); `Local` selects the local ones when `local_policy`.
fn port_frontend(endpoints: &[(u8, bool)], policy: TrafficPolicy) -> DesiredFrontend {
    let uses_local = policy == TrafficPolicy::Local;
    DesiredFrontend {
        service: ObjectName {
            namespace: "default".into(),
            name: "web".into(),
        },
        port_name: "http".into(),
        backends: endpoints
            .iter()
            .map(|&(last, local)| {
                let info = BackendInfo {
                    local,
                    for_cluster: true,
                    for_local: !uses_local || local,
                };
                (endpoint(last), info)
            })
            .collect(),
        policy,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        has_endpoints: !endpoints.is_empty(),
        source_ranges: Vec::new(),
        node_port_addrs: Vec::new(),
    }
}

/// Every frontend of the port, external ones following `external`.
fn whole_port(endpoints: &[(u8, bool)], external: TrafficPolicy) -> DesiredState {
    let mut ext = port_frontend(endpoints, external);
    if external == TrafficPolicy::Local {
        // The cluster IP's own policy is Cluster, but the port's backends
        // carry the Local selection too (the same for every frontend).
        ext.pods_policy = TrafficPolicy::Cluster;
    }
    let mut internal = ext.clone();
    internal.policy = TrafficPolicy::Cluster;
    [
        (cluster_ip(), internal),
        (lb_ip(), ext.clone()),
        (node_port(), ext),
    ]
    .into_iter()
    .collect()
}

fn count(plan: &Plan, pick: fn(&MapOp) -> bool) -> usize {
    plan.ops.iter().filter(|op| pick(op)).count()
}

#[test]
fn the_frontends_of_a_service_port_share_its_id_backends_and_table() {
    let mut p = Planner::new(1 << 16, GRACE);
    let desired = whole_port(&[(2, true), (3, false), (4, false)], TrafficPolicy::Cluster);
    let (plan, errors) = p.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        count(&plan, |op| matches!(op, MapOp::SetBackend(..))),
        3,
        "one entry per endpoint, not per frontend and endpoint"
    );
    assert_eq!(count(&plan, |op| matches!(op, MapOp::SetTable { .. })), 1);
    assert_eq!(count(&plan, |op| matches!(op, MapOp::SetService(..))), 3);
    let labels: Vec<&MapOp> = plan
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::SetLabel(..)))
        .collect();
    assert!(
        matches!(labels[..], [MapOp::SetLabel(_, ref l)] if l == "default/web:http"),
        "{labels:?}"
    );
    let entries: Vec<ServiceEntry> = p.frontends().map(|f| f.entry).collect();
    assert!(
        entries.iter().all(|e| *e == entries[0]),
        "the same entry at three keys: {entries:?}"
    );
    let backend_ids: BTreeSet<u32> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetBackend(_, b) => Some(b.service_id),
            _ => None,
        })
        .collect();
    assert_eq!(
        backend_ids,
        BTreeSet::from([entries[0].id]),
        "the backends carry the port's id"
    );
    assert_eq!(p.ports().count(), 1);
}

#[test]
fn a_local_external_policy_adds_one_table_shared_by_the_external_frontends() {
    let mut p = Planner::new(1 << 16, GRACE);
    let desired = whole_port(&[(2, true), (3, false), (4, false)], TrafficPolicy::Local);
    let (plan, errors) = p.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(count(&plan, |op| matches!(op, MapOp::SetBackend(..))), 3);
    assert_eq!(
        count(&plan, |op| matches!(op, MapOp::SetTable { .. })),
        2,
        "the Cluster table and the Local one"
    );
    assert_eq!(
        count(&plan, |op| matches!(op, MapOp::SetInternalTable(..))),
        1
    );
    let port = p.ports().next().unwrap();
    let (cluster, local) = (port.cluster_table.unwrap(), port.local_table.unwrap());
    assert_eq!((cluster.count, local.count), (3, 1));
    assert_eq!(
        port.internal_written,
        Some(cluster),
        "pods read the Cluster table"
    );
    for f in p.frontends() {
        let e = f.entry;
        if f.frontend == cluster_ip() {
            assert_eq!((e.flags, e.table_offset), (0, cluster.offset));
        } else {
            assert_eq!(
                (e.flags, e.table_offset, e.backend_count),
                (SERVICE_F_LOCAL | SERVICE_F_INTERNAL_TABLE, local.offset, 1),
                "{}",
                f.frontend
            );
            let outside: Vec<u8> = f
                .backends
                .iter()
                .filter(|(_, b)| f.selects(b, false))
                .map(|(a, _)| a.ip().octets()[3])
                .collect();
            let pods = f.backends.values().filter(|b| f.selects(b, true)).count();
            assert_eq!((outside, pods), (vec![2], 3));
        }
    }
}

#[test]
fn a_port_of_many_frontends_fits_a_backends_array_of_its_endpoints() {
    // Four entries: id 0 is never used, so three endpoints fit, however
    // many frontends the port has (three here: nine entries before).
    let mut p = Planner::new_sized(
        Capacity {
            backend_slots: 4,
            ..Capacity::with_slab(1 << 16)
        },
        GRACE,
    );
    let desired = whole_port(&[(2, true), (3, false), (4, false)], TrafficPolicy::Cluster);
    let (_, errors) = p.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(p.frontend_count(), 3);
}

#[test]
fn a_frontend_that_goes_leaves_the_port_to_the_others_and_the_last_clears_it() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let mut desired = whole_port(&[(2, true), (3, false)], TrafficPolicy::Local);
    p.plan(&desired, t0);
    let local_table = p.ports().next().unwrap().local_table.unwrap();
    // The external frontends go: the Local table is freed, nothing cleared.
    desired.remove(&lb_ip());
    desired.remove(&node_port());
    let (plan, _) = p.plan(&desired, t0);
    assert_eq!(count(&plan, |op| matches!(op, MapOp::DeleteService(..))), 2);
    assert_eq!(count(&plan, |op| matches!(op, MapOp::ClearBackend(..))), 0);
    assert_eq!(count(&plan, |op| matches!(op, MapOp::DeleteLabel(..))), 0);
    let port = p.ports().next().unwrap();
    assert_eq!(port.local_table, None, "no frontend follows Local");
    assert!(port.cluster_table.is_some());
    assert_ne!(Some(local_table), port.cluster_table);
    // The last one goes: the port goes with its backends.
    let (plan, _) = p.plan(&DesiredState::new(), t0);
    assert_eq!(count(&plan, |op| matches!(op, MapOp::ClearBackend(..))), 2);
    assert_eq!(count(&plan, |op| matches!(op, MapOp::DeleteLabel(..))), 1);
    assert_eq!(p.ports().count(), 0);
}

/// What a v5 agent applied for `desired`: the same frontends, each with a
/// service id, backends and table of its own, labelled "namespace/name".
fn as_v5(desired: &DesiredState) -> Vec<AppliedFrontend> {
    let mut out = Vec::new();
    for (frontend, want) in desired {
        let mut own = Planner::new(1 << 16, GRACE);
        let mut single = want.clone();
        single.port_name = format!("{frontend}");
        own.plan(&[(*frontend, single)].into_iter().collect(), Instant::now());
        out.push(own.frontends().next().unwrap());
    }
    // Ids, backend ids and slab ranges of separate planners collide: shift
    // each frontend's into a range of its own.
    for (k, applied) in (0u32..).zip(&mut out) {
        applied.entry.id += 100 * k;
        applied.entry.table_offset += 10_000 * k;
        applied.port_name = None;
        for b in applied.backends.values_mut() {
            b.id += 100 * k;
        }
    }
    out
}

#[test]
fn frontends_adopted_with_ids_of_their_own_merge_and_keep_their_flows() {
    let t0 = Instant::now();
    let desired = whole_port(&[(2, true), (3, false)], TrafficPolicy::Cluster);
    let older = as_v5(&desired);
    let mut p = Planner::adopt(older.clone(), Vec::new(), 1 << 16, GRACE);
    assert_eq!(p.ports().count(), 3, "one port per adopted id");
    let (plan, errors) = p.plan(&desired, t0);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(p.ports().count(), 1, "merged into one Service port");
    assert_eq!(
        count(&plan, |op| matches!(op, MapOp::ClearBackend(..))),
        0,
        "every endpoint stays: no entry is cleared"
    );
    let port = p.ports().next().unwrap();
    // The first frontend placed (in key order, the node port) names its
    // port: its ids stay.
    let first = &older[0];
    assert_eq!(port.id, first.entry.id);
    let mut aliases = Vec::new();
    for (addr, b) in &port.backends {
        assert_eq!(b.id, first.backends[addr].id, "{addr} keeps its id");
        assert_eq!(b.aliases.len(), 2, "{addr}: the other frontends' entries");
        aliases.extend(b.aliases.iter().copied());
    }
    // The aliases are rewritten as the port's entries after the frontends
    // point at the port (the flows keep them; the old ids' tables are gone).
    let last_service = plan
        .ops
        .iter()
        .rposition(|op| matches!(op, MapOp::SetService(..)))
        .unwrap();
    for alias in &aliases {
        let at = plan
            .ops
            .iter()
            .position(|op| matches!(op, MapOp::SetBackend(id, b) if id == alias && b.service_id == port.id))
            .unwrap_or_else(|| panic!("alias {alias} rewritten: {:?}", plan.ops));
        assert!(at > last_service);
    }
    let labels: Vec<&MapOp> = plan
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::SetLabel(..) | MapOp::DeleteLabel(..)))
        .collect();
    assert_eq!(labels.len(), 3, "one named, two gone: {labels:?}");
    // An endpoint that goes takes its aliases with it.
    let fewer = whole_port(&[(3, false)], TrafficPolicy::Cluster);
    let gone = &port.backends[&endpoint(2)];
    let expected: BTreeSet<u32> = gone.ids().collect();
    let (plan, _) = p.plan(&fewer, t0 + GRACE);
    let cleared: BTreeSet<u32> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            MapOp::ClearBackend(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(cleared, expected);
    // And the state re-adopted as this layout writes it plans nothing.
    let again = p.frontends().collect();
    let mut adopted = Planner::adopt(again, Vec::new(), 1 << 16, GRACE);
    let (plan, _) = adopted.plan(&fewer, t0 + GRACE);
    assert!(
        plan.ops
            .iter()
            .all(|op| matches!(op, MapOp::SetFilterWord(..))),
        "{:?}",
        plan.ops
    );
}

#[test]
fn a_port_whose_protocol_changes_is_another_port() {
    let t0 = Instant::now();
    let mut p = Planner::new(1 << 16, GRACE);
    let desired = whole_port(&[(2, true), (3, false)], TrafficPolicy::Cluster);
    p.plan(&desired, t0);
    let tcp_id = p.ports().next().unwrap().id;
    // The same port name, now UDP: new frontends (UDP keys), a new port,
    // also planned as the reconciler does, the old and new keys in order
    // (a UDP key may come before the TCP ones go).
    let udp: DesiredState = desired
        .iter()
        .map(|(frontend, want)| {
            let mut frontend = *frontend;
            frontend.proto = Protocol::Udp;
            (frontend, want.clone())
        })
        .collect();
    let keys: BTreeSet<Frontend> = desired.keys().chain(udp.keys()).copied().collect();
    let (_, errors) = p.plan_frontends(&udp, keys, t0);
    assert!(errors.is_empty(), "{errors:?}");
    let ports: Vec<&AppliedPort> = p.ports().collect();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].proto, Protocol::Udp, "its backends serve UDP");
    assert_ne!(ports[0].id, tcp_id);
    assert!(p.frontends().all(|f| f.entry.id == ports[0].id));
}

#[test]
fn an_adopted_frontend_whose_table_collides_is_rewritten_without_a_panic() {
    let t0 = Instant::now();
    let desired = whole_port(&[(2, true), (3, false)], TrafficPolicy::Cluster);
    let mut older = as_v5(&desired);
    // The second frontend's table lies over the first's: it cannot be adopted.
    older[1].entry.table_offset = older[0].entry.table_offset;
    let lost = older[1].frontend;
    let mut p = Planner::adopt(older, Vec::new(), 1 << 16, GRACE);
    assert_eq!(p.frontend_count(), 2);
    let (plan, errors) = p.plan(&desired, t0);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(p.frontend_count(), 3, "placed again");
    assert!(plan
        .ops
        .iter()
        .any(|op| matches!(op, MapOp::SetService(key, _) if *key == lost.key())));
    // Not desired any more: the orphan's entry is deleted.
    let mut older = as_v5(&desired);
    older[1].entry.table_offset = older[0].entry.table_offset;
    let mut p = Planner::adopt(older, Vec::new(), 1 << 16, GRACE);
    let (plan, _) = p.plan(&DesiredState::new(), t0);
    assert!(plan
        .ops
        .iter()
        .any(|op| *op == MapOp::DeleteService(lost.key())));
}

#[test]
fn adopted_frontends_take_their_policies_from_the_desired_state_first() {
    let t0 = Instant::now();
    // Every endpoint local: Local selects as Cluster does, so no entry says
    // Local, and an adopting planner cannot tell which frontends follow it.
    let mut p = Planner::new(1 << 16, GRACE);
    p.plan(&whole_port(&[(2, true)], TrafficPolicy::Local), t0);
    assert!(p.frontends().all(|f| f.entry.flags & SERVICE_F_LOCAL == 0));
    let mut adopted = Planner::adopt(p.frontends().collect(), Vec::new(), 1 << 16, GRACE);
    // A remote endpoint comes: the external frontends now need the Local
    // table; each entry is written once, as meant (the node port, placed
    // first, syncs the port for the others too).
    let (plan, errors) = adopted.plan(
        &whole_port(&[(2, true), (3, false)], TrafficPolicy::Local),
        t0,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let mut written: BTreeMap<ServiceKey, Vec<u32>> = BTreeMap::new();
    for op in &plan.ops {
        if let MapOp::SetService(key, entry) = op {
            written.entry(*key).or_default().push(entry.flags);
        }
    }
    assert_eq!(written.len(), 3, "{written:?}");
    for (key, flags) in &written {
        let external = *key != cluster_ip().key();
        let want = if external {
            SERVICE_F_LOCAL | SERVICE_F_INTERNAL_TABLE
        } else {
            0
        };
        assert_eq!(flags, &vec![want], "{key:?}");
    }
}
