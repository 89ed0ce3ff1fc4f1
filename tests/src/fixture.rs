//! Services for packet tests: frontends with their backends, written into a
//! loaded data path through the real planner and map writer.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use lb_userspace::{
    datapath::Datapath,
    desired::{
        BackendInfo, DesiredFrontend, DesiredState, DesiredState6, Frontend, FrontendV6, Listen6,
        ObjectName, Protocol, TrafficPolicy,
    },
    flows::FlowSettings,
    plan::Planner,
};

use crate::packet::TestDatapath;

/// A frontend and its backends (address, port, on this node?), all selected.
/// Its service is `default/svc-{addr}-{port}`: one service per frontend, also
/// where two frontends share a port on different addresses. Without
/// backends, its Service has no endpoints at all (refused).
#[must_use]
pub fn frontend(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    backends: &[(Ipv4Addr, u16, bool)],
) -> (Frontend, DesiredFrontend) {
    (
        Frontend { addr, port, proto },
        DesiredFrontend {
            service: ObjectName {
                namespace: "default".into(),
                name: format!("svc-{addr}-{port}"),
            },
            port_name: String::new(),
            backends: backends
                .iter()
                .map(|&(ip, port, local)| {
                    (
                        SocketAddrV4::new(ip, port),
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
        },
    )
}

/// A frontend under a `Local` traffic policy (for every client, as a
/// cluster IP's `internalTrafficPolicy`) on a node without a local
/// endpoint: its Service's endpoints (address, port) are all on other
/// nodes, listed but not selected (kept only for established flows), so new
/// connections drop rather than being refused.
#[must_use]
pub fn frontend_without_local_endpoints(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    backends: &[(Ipv4Addr, u16)],
) -> (Frontend, DesiredFrontend) {
    let (frontend, mut desired) = frontend(addr, port, proto, &[]);
    desired.policy = TrafficPolicy::Local;
    desired.pods_policy = TrafficPolicy::Local;
    desired.backends = backends
        .iter()
        .map(|&(ip, port)| {
            (
                SocketAddrV4::new(ip, port),
                BackendInfo {
                    local: false,
                    for_cluster: true,
                    for_local: false,
                },
            )
        })
        .collect();
    desired.has_endpoints = !backends.is_empty();
    (frontend, desired)
}

/// Loads a data path (`TestDatapath::load_with_flows`) and writes `state`
/// into it; the planner is for later changes ([`apply`]).
#[must_use]
pub fn setup(
    name: &str,
    node: Ipv4Addr,
    flows: FlowSettings,
    state: &[(Frontend, DesiredFrontend)],
) -> (TestDatapath, Planner) {
    let mut dp = TestDatapath::load_with_flows(name, node, flows);
    let planner = program(&mut dp, state);
    (dp, planner)
}

/// Writes `state` into `dp` (a fresh planner: the data path's first sync).
pub fn program(dp: &mut TestDatapath, state: &[(Frontend, DesiredFrontend)]) -> Planner {
    let mut planner = Planner::new(dp.slab_slots(), Duration::ZERO);
    apply(dp, &mut planner, state);
    planner
}

/// Plans `state` with `planner` (which holds what `dp` has) and writes it into `dp`.
pub fn apply(dp: &mut TestDatapath, planner: &mut Planner, state: &[(Frontend, DesiredFrontend)]) {
    apply_to(dp.datapath_mut(), planner, state);
}

/// [`apply`] for a data path loaded without [`TestDatapath`].
pub fn apply_to(dp: &mut Datapath, planner: &mut Planner, state: &[(Frontend, DesiredFrontend)]) {
    let desired: DesiredState = state.iter().cloned().collect::<BTreeMap<_, _>>();
    let (plan, errors) = planner.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "plan errors: {errors:?}");
    dp.maps.apply(&plan.ops).expect("apply plan");
}

/// The IPv6 twin of [`frontend`]: a frontend at `listen` and its backends
/// (address, port, on this node?), all selected; its service is
/// `default/svc6-{addr}-{port}` (`nodeport` for a node port's address).
/// A node port lists no node-port addresses yet (see [`program6`]).
#[must_use]
pub fn frontend6(
    listen: Listen6,
    proto: Protocol,
    backends: &[(Ipv6Addr, u16, bool)],
) -> (FrontendV6, DesiredFrontend<SocketAddrV6>) {
    let name = match listen {
        Listen6::Addr(addr, port) => format!("svc6-{addr}-{port}").replace(':', "."),
        Listen6::NodePort(port) => format!("svc6-nodeport-{port}"),
    };
    (
        FrontendV6 { listen, proto },
        DesiredFrontend {
            service: ObjectName {
                namespace: "default".into(),
                name,
            },
            port_name: String::new(),
            backends: backends
                .iter()
                .map(|&(ip, port, local)| {
                    (
                        SocketAddrV6::new(ip, port, 0, 0),
                        BackendInfo {
                            local,
                            for_cluster: true,
                            for_local: local,
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
        },
    )
}

/// Writes the IPv6 node-port addresses `addrs` and `state` into `dp` with
/// `planner` (which holds what `dp` has), as the agent orders them: new
/// addresses first, then the plan, then the addresses gone. Every node port
/// of `state` is given `addrs`.
pub fn program6(
    dp: &mut TestDatapath,
    planner: &mut Planner,
    addrs: &[Ipv6Addr],
    state: &[(FrontendV6, DesiredFrontend<SocketAddrV6>)],
) {
    let desired: DesiredState6 = state
        .iter()
        .cloned()
        .map(|(frontend, mut want)| {
            if frontend.is_node_port() {
                want.node_port_addrs = addrs.to_vec();
            }
            (frontend, want)
        })
        .collect();
    let (add, remove) = planner.node_port_addresses6(addrs);
    let (plan, errors) = planner.plan6(&desired, Instant::now());
    assert!(errors.is_empty(), "plan errors: {errors:?}");
    let maps = &mut dp.datapath_mut().maps;
    for ops in [add.ops, plan.ops, remove.ops] {
        maps.apply(&ops).expect("apply plan");
    }
}
