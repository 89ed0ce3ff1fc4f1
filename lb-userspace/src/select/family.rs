//! The IPv6 side of selection, kept apart from the IPv4 one: each family's
//! frontends take endpoints from that family's slices only.
//!
//! Rules (kube-proxy runs one proxier per family and reads a Service in a
//! family only when it has that family):
//! - A Service has IPv4 frontends only when IPv4 is one of its families,
//!   IPv6 frontends only when IPv6 is (externalIPs, load-balancer IPs and
//!   `loadBalancerSourceRanges` of another family are ignored, as
//!   kube-proxy ignores them).
//! - IPv6 frontends: its IPv6 cluster IP, IPv6 externalIPs and IPv6
//!   load-balancer IPs per port, and each nodePort (on the node's IPv6
//!   node-port addresses, [`NodeInfo::node_port_addresses6`]).
//! - Everything else is the IPv4 side's rules ([`super::desired_state`]),
//!   by the same code over the endpoints of the Service's IPv6 slices:
//!   port matching, ready-then-terminating fallback, traffic policies,
//!   topology hints, local endpoints (by `nodeName` or an address of the
//!   node, [`NodeInfo::owns6`]), "has endpoints", and source ranges
//!   ([`crate::source_ranges::of_frontend6`]); claims of one IPv6 frontend
//!   by several Services are settled as IPv4's ([`crate::claims`]).
//! - The reconciler computes and plans them when IPv6 is on (`--ipv6`,
//!   `Reconciler::plan_ipv6`), with the node's IPv6 interface addresses and
//!   node-port addresses ([`crate::node_ports::NodePortAddresses::select6`])
//!   in [`NodeInfo::v6`]. What the data path does not serve (everything with
//!   `--ipv6 off`; node ports so far) is one
//!   [`ProblemReason::Ipv6NotServed`] problem per Service naming those
//!   frontends, instead of being dropped silently.

use std::net::SocketAddrV6;

use super::{port_state, serves, SliceIndex};
pub use crate::desired::{FrontendV6, Listen6};
use crate::{
    claims::Claims,
    desired::{DesiredFrontend, DesiredState6, NodeInfo, ObjectName},
    model::{
        AddressType, Cluster, EndpointSpec, IpFamily, ServicePort, ServiceSpec, TrafficPolicy,
    },
    problem::{ProblemReason, ServiceProblem},
    source_ranges,
};

/// The IPv6 frontends of one Service port, each with the policy it follows
/// for clients from outside the cluster and the one it follows for pods, as
/// the IPv4 side gives them.
fn frontends_of_port(
    service: &ServiceSpec,
    port: &ServicePort,
) -> Vec<(FrontendV6, TrafficPolicy, TrafficPolicy)> {
    let at = |listen| FrontendV6 {
        listen,
        proto: port.protocol,
    };
    let internal = service.internal_policy;
    let external = service.external_policy;
    let mut out = Vec::new();
    if let Some(v6) = &service.v6 {
        for &ip in &v6.cluster_ips {
            out.push((at(Listen6::Addr(ip, port.port)), internal, internal));
        }
        for &ip in v6.external_ips.iter().chain(&v6.load_balancer_ips) {
            out.push((
                at(Listen6::Addr(ip, port.port)),
                external,
                TrafficPolicy::Cluster,
            ));
        }
    }
    if let Some(node_port) = port.node_port {
        out.push((
            FrontendV6::node_port(node_port, port.protocol),
            external,
            TrafficPolicy::Cluster,
        ));
    }
    out
}

/// The IPv6 frontends of a Service, without backends (none when it is not
/// served in IPv6).
#[must_use]
pub fn frontends_v6(service: &ServiceSpec) -> Vec<FrontendV6> {
    if !serves(service, IpFamily::V6) {
        return Vec::new();
    }
    service
        .ports
        .iter()
        .flat_map(|port| frontends_of_port(service, port))
        .map(|(frontend, _, _)| frontend)
        .collect()
}

/// The desired IPv6 state of every IPv6 frontend, claims settled as
/// [`super::desired_state`] settles IPv4's.
#[must_use]
pub fn desired_state6(cluster: &Cluster, node: &NodeInfo) -> DesiredState6 {
    let index = SliceIndex::build(cluster);
    let mut claims = Claims::<SocketAddrV6>::default();
    for (name, service) in &cluster.services {
        for (frontend, want) in service_state_v6(cluster, &index, name, node) {
            claims.insert(service, frontend, want);
        }
    }
    claims.desired()
}

/// The IPv6 frontends of Service `name` as the rules above say, with the
/// shape of [`super::service_state`]'s IPv4 ones (none when the Service is
/// absent, headless, ExternalName or without IPv6).
#[must_use]
pub fn service_state_v6(
    cluster: &Cluster,
    index: &SliceIndex,
    name: &ObjectName,
    node: &NodeInfo,
) -> Vec<(FrontendV6, DesiredFrontend<SocketAddrV6>)> {
    let Some(service) = cluster.services.get(name) else {
        return Vec::new();
    };
    if !serves(service, IpFamily::V6) {
        return Vec::new();
    }
    let slices: Vec<_> = index
        .slices_of(name)
        .filter_map(|s| cluster.slices.get(s))
        .filter_map(|slice| match &slice.address_type {
            AddressType::Ipv6(endpoints) => Some((slice, endpoints)),
            AddressType::Ipv4 | AddressType::Other(_) => None,
        })
        .collect();
    let mut out = Vec::new();
    for port in &service.ports {
        let endpoints: Vec<(u16, &[EndpointSpec<_>])> = slices
            .iter()
            .filter_map(|(slice, endpoints)| Some((slice.port_for(port)?, &endpoints[..])))
            .collect();
        out.extend(port_state(
            service,
            port,
            &endpoints,
            frontends_of_port(service, port),
            node,
            |frontend| source_ranges::of_frontend6(service, frontend, node),
        ));
    }
    out
}

/// The problem of a Service with IPv6 frontends the data path does not
/// serve: all of them when IPv6 is not `planned` (`--ipv6 off`); `None`
/// when IPv6 is planned (every IPv6 frontend is served then) or the
/// Service has no IPv6 frontend.
#[must_use]
pub fn ipv6_problem(service: &ServiceSpec, planned: bool) -> Option<ServiceProblem> {
    if planned {
        return None;
    }
    let frontends: Vec<FrontendV6> = frontends_v6(service);
    if frontends.is_empty() {
        return None;
    }
    let list: Vec<String> = frontends.iter().map(ToString::to_string).collect();
    let rest = if serves(service, IpFamily::V4) {
        "its IPv4 frontends are"
    } else {
        "it has no IPv4 frontend"
    };
    let message = format!(
        "IPv6 frontends {} are not served (--ipv6 off); {rest}",
        list.join(", ")
    );
    Some(ServiceProblem {
        service: service.name.clone(),
        reason: ProblemReason::Ipv6NotServed,
        message,
    })
}
