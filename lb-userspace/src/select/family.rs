//! The IPv6 side of selection, kept apart from the IPv4 one: each family's
//! frontends take endpoints from that family's slices only.
//!
//! Rules (kube-proxy runs one proxier per family and reads a Service in a
//! family only when it has that family):
//! - A Service has IPv4 frontends only when IPv4 is one of its families,
//!   IPv6 frontends only when IPv6 is (externalIPs and load-balancer IPs of
//!   another family are ignored, as kube-proxy ignores them).
//! - IPv6 frontends: its IPv6 cluster IP, IPv6 externalIPs and IPv6
//!   load-balancer IPs per port, and each nodePort (on the node's IPv6
//!   addresses, which the agent does not collect yet).
//! - Their backends are the usable endpoints (ready; when none is ready,
//!   serving and terminating) of the Service's IPv6 slices, by the port
//!   matching of the IPv4 side; traffic policies and topology hints are
//!   not applied yet.
//! - The data path is IPv4 only: the IPv6 frontends are not programmed and
//!   each Service that has some gets one [`ProblemReason::Ipv6NotServed`]
//!   problem naming them, instead of being dropped silently.

use std::{collections::BTreeSet, net::SocketAddrV6};

use super::{serves, SliceIndex};
pub use crate::desired::{FrontendV6, Listen6};
use crate::{
    desired::ObjectName,
    model::{AddressType, Cluster, IpFamily, ServicePort, ServiceSpec},
    problem::{ProblemReason, ServiceProblem},
};

/// The IPv6 frontends of one Service port.
fn frontends_of_port(service: &ServiceSpec, port: &ServicePort) -> Vec<FrontendV6> {
    let at = |listen| FrontendV6 {
        listen,
        proto: port.protocol,
    };
    let mut out: Vec<FrontendV6> = service
        .v6
        .iter()
        .flat_map(|v6| {
            v6.cluster_ips
                .iter()
                .chain(&v6.external_ips)
                .chain(&v6.load_balancer_ips)
        })
        .map(|&ip| at(Listen6::Addr(ip, port.port)))
        .collect();
    out.extend(port.node_port.map(|n| at(Listen6::NodePort(n))));
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
        .collect()
}

/// The IPv6 frontends of Service `name`, each with its backends: the usable
/// endpoints of the Service's IPv6 slices only.
#[must_use]
pub fn service_state_v6(
    cluster: &Cluster,
    index: &SliceIndex,
    name: &ObjectName,
) -> Vec<(FrontendV6, BTreeSet<SocketAddrV6>)> {
    let Some(service) = cluster.services.get(name) else {
        return Vec::new();
    };
    if !serves(service, IpFamily::V6) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for port in &service.ports {
        let backends = backends_v6(cluster, index, name, port);
        for frontend in frontends_of_port(service, port) {
            out.push((frontend, backends.clone()));
        }
    }
    out
}

/// The usable endpoints of one Service port in its IPv6 slices: ready ones,
/// or when none is, serving and terminating ones; each address once.
fn backends_v6(
    cluster: &Cluster,
    index: &SliceIndex,
    name: &ObjectName,
    port: &ServicePort,
) -> BTreeSet<SocketAddrV6> {
    let mut ready = BTreeSet::new();
    let mut fallback = BTreeSet::new();
    for slice in index.slices_of(name).filter_map(|s| cluster.slices.get(s)) {
        let AddressType::Ipv6(endpoints) = &slice.address_type else {
            continue;
        };
        let Some(number) = slice.port_for(port) else {
            continue;
        };
        for endpoint in endpoints {
            let Some(&ip) = endpoint.addresses.first() else {
                continue;
            };
            let addr = SocketAddrV6::new(ip, number, 0, 0);
            if endpoint.ready {
                ready.insert(addr);
            } else if endpoint.is_serving() && endpoint.is_terminating() {
                fallback.insert(addr);
            }
        }
    }
    if ready.is_empty() {
        fallback
    } else {
        ready
    }
}

/// The problem of a Service with IPv6 frontends: they are not served (the
/// data path is IPv4 only); `None` without any.
#[must_use]
pub fn ipv6_problem(service: &ServiceSpec) -> Option<ServiceProblem> {
    let frontends = frontends_v6(service);
    if frontends.is_empty() {
        return None;
    }
    let list: Vec<String> = frontends.iter().map(ToString::to_string).collect();
    let rest = if serves(service, IpFamily::V4) {
        "its IPv4 frontends are"
    } else {
        "it has no IPv4 frontend"
    };
    Some(ServiceProblem {
        service: service.name.clone(),
        reason: ProblemReason::Ipv6NotServed,
        message: format!(
            "IPv6 frontends {} are not served (the data path is IPv4 only); {rest}",
            list.join(", ")
        ),
    })
}
