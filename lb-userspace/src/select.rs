//! Endpoint selection: which backends serve each frontend, by kube-proxy's rules.

use std::{collections::BTreeMap, net::SocketAddrV4};

use crate::{
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend},
    model::{AddressType, Cluster, ServiceKind, ServicePort, SliceSpec, TargetPort},
};

/// The desired state of every frontend, and warnings about ignored input.
///
/// Rules (kube-proxy's, for ClusterIP traffic):
/// - Headless and ExternalName Services are skipped; ClusterIP, NodePort and
///   LoadBalancer Services get a frontend per IPv4 cluster IP and port.
/// - A Service's endpoints come from the slices in its namespace labelled
///   with its name. Slices mirrored from legacy Endpoints count only when the
///   Service has no EndpointSlice of its own.
/// - A Service port takes, in each slice, the slice port with the same name
///   and protocol; its number is the endpoint port (so a named targetPort
///   resolves per slice). A numeric targetPort is used when the slice has no
///   ports at all. A slice without a matching port contributes nothing.
/// - Only endpoints whose `ready` condition is not false; an address found in
///   several slices counts once. Slices of another address family are ignored
///   with a warning.
/// - A backend is local when its endpoint's nodeName is `node_name`.
/// - A frontend with no endpoints is kept with no backends, so the data path
///   drops its packets rather than passing them on to nowhere.
#[must_use]
pub fn desired_state(cluster: &Cluster, node_name: &str) -> (DesiredState, Vec<String>) {
    let mut state = DesiredState::new();
    let mut warnings = Vec::new();
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceSpec>> = BTreeMap::new();
    for slice in cluster.slices.values() {
        if let AddressType::Other(family) = &slice.address_type {
            warnings.push(format!(
                "EndpointSlice {}: address type {family} is not served (IPv4 only); ignored",
                slice.name
            ));
            continue;
        }
        by_service
            .entry((slice.name.namespace.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    for service in cluster.services.values() {
        if matches!(
            service.kind,
            ServiceKind::Headless | ServiceKind::ExternalName
        ) {
            continue;
        }
        let all = by_service
            .get(&(service.name.namespace.as_str(), service.name.name.as_str()))
            .cloned()
            .unwrap_or_default();
        let has_own = all.iter().any(|s| !s.mirrored);
        let slices: Vec<&SliceSpec> = all
            .into_iter()
            .filter(|s| !has_own || !s.mirrored)
            .collect();
        for port in &service.ports {
            let backends = backends_for(port, &slices, node_name);
            for &addr in &service.cluster_ips {
                state.insert(
                    Frontend {
                        addr,
                        port: port.port,
                        proto: port.protocol,
                    },
                    DesiredFrontend {
                        service: service.name.clone(),
                        port_name: port.name.clone(),
                        backends: backends.clone(),
                    },
                );
            }
        }
    }
    (state, warnings)
}

fn backends_for(
    port: &ServicePort,
    slices: &[&SliceSpec],
    node_name: &str,
) -> BTreeMap<SocketAddrV4, BackendInfo> {
    let mut backends = BTreeMap::new();
    for slice in slices {
        let number = if slice.ports.is_empty() {
            match port.target_port {
                TargetPort::Number(n) => Some(n),
                TargetPort::Name(_) => None,
            }
        } else {
            slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
                .map(|p| p.port)
        };
        let Some(number) = number else { continue };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            let Some(&ip) = endpoint.addresses.first() else {
                continue;
            };
            let local = endpoint.node_name.as_deref() == Some(node_name);
            backends
                .entry(SocketAddrV4::new(ip, number))
                .or_insert(BackendInfo { local });
        }
    }
    backends
}
