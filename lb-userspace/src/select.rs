//! Endpoint selection: which backends serve each frontend, by kube-proxy's rules.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::{
    claims::Claims,
    desired::{
        AddrFamily, BackendInfo, DesiredFrontend, DesiredState, FamilyIp, Frontend, NodeInfo,
        ObjectName,
    },
    model::{
        AddressType, Cluster, EndpointSpec, IpFamily, ServiceKind, ServicePort, ServiceSpec,
        SliceSpec, TrafficPolicy,
    },
    source_ranges,
};

/// The desired state of every frontend, and warnings about ignored input.
///
/// Rules (kube-proxy's):
/// - Headless and ExternalName Services are skipped, and so are Services
///   without the IPv4 family (their IPv6 side: [`family`]). Every IPv4 cluster IP is
///   an internal frontend per port; external frontends are `externalIPs`,
///   load-balancer ingress IPs, and each node address with the port's
///   nodePort (NodePort and LoadBalancer Services).
/// - A Service's endpoints come from every slice in its namespace labelled
///   with its name: the union of its own slices and those mirrored from
///   legacy Endpoints. IPv6 slices serve the IPv6 frontends only
///   ([`family`]); slices of another address type (FQDN) are ignored with
///   a warning.
/// - A Service port takes, in each slice, the slice port with the same name
///   and protocol; its number is the endpoint port (so a named targetPort
///   resolves per slice). A slice without that port, or without ports at
///   all, gives the Service port nothing (whatever its targetPort). An
///   address found in several slices counts once (one not terminating over
///   a terminating one).
/// - New connections go to ready endpoints; when none is ready, to endpoints
///   that are serving and terminating (KEP-1669). Unset conditions read as
///   kube-proxy reads them: ready and serving true, terminating false.
/// - Topology (cluster-wide frontends only): when every ready endpoint
///   carries node hints and one is for this node, only the ready endpoints
///   hinted for this node; otherwise, when every ready endpoint carries zone
///   hints and one is for this node's zone, only those hinted for the zone;
///   otherwise all. Only ready endpoints count, and the terminating fallback
///   ignores hints. Hints are used whenever present, as kube-proxy does: it
///   reads neither `trafficDistribution` nor the topology-mode annotation,
///   which only tell the EndpointSlice controller to write hints.
/// - `internalTrafficPolicy: Local` (cluster IPs) and
///   `externalTrafficPolicy: Local` (external frontends) use only this node's
///   endpoints, with the same ready-then-terminating fallback; with none, the
///   frontend drops new connections.
/// - Every listed endpoint stays a backend, so established connections to a
///   not-ready or terminating endpoint continue until it leaves the slice; only
///   selected ones are in the Maglev table.
/// - A frontend with no endpoints is kept with no backends, so the data path
///   stops its packets rather than passing them on to nowhere: it refuses
///   new connections (ICMP port unreachable) when the Service port has no
///   usable endpoint anywhere, and drops them when it has some, but none
///   this frontend may use (a `Local` policy without a local endpoint), as
///   kube-proxy's REJECT and DROP rules do.
/// - A frontend several Services claim belongs to one of them, as
///   [`crate::claims`] orders them (a cluster IP first, then the oldest).
#[must_use]
pub fn desired_state(cluster: &Cluster, node: &NodeInfo) -> (DesiredState, Vec<String>) {
    let index = SliceIndex::build(cluster);
    let mut claims = Claims::<SocketAddrV4>::default();
    for (name, service) in &cluster.services {
        for (frontend, want) in service_state(cluster, &index, name, node) {
            claims.insert(service, frontend, want);
        }
    }
    (claims.desired(), index.warnings(cluster))
}

/// Whether `service` is balanced in `family`: it balances (not headless or
/// ExternalName) and has that family.
#[must_use]
pub fn serves(service: &ServiceSpec, family: IpFamily) -> bool {
    !matches!(
        service.kind,
        ServiceKind::Headless | ServiceKind::ExternalName
    ) && service.ip_families.contains(family)
}

/// The IPv4 frontends of one Service as the rules above say (none when the
/// Service is absent, headless, ExternalName or without IPv4).
#[must_use]
pub fn service_state(
    cluster: &Cluster,
    index: &SliceIndex,
    name: &ObjectName,
    node: &NodeInfo,
) -> Vec<(Frontend, DesiredFrontend)> {
    let Some(service) = cluster.services.get(name) else {
        return Vec::new();
    };
    if !serves(service, IpFamily::V4) {
        return Vec::new();
    }
    // Every slice labelled for the Service counts, mirrored or not (kube-proxy
    // takes their union).
    let slices: Vec<&SliceSpec> = index
        .slices_of(name)
        .filter_map(|s| cluster.slices.get(s).map(AsRef::as_ref))
        .filter(|s| s.address_type == AddressType::Ipv4)
        .collect();
    let mut out = Vec::new();
    for port in &service.ports {
        let endpoints: Vec<(u16, &[EndpointSpec])> = slices
            .iter()
            .filter_map(|s| Some((s.port_for(port)?, s.endpoints.as_slice())))
            .collect();
        out.extend(port_state(
            service,
            port,
            &endpoints,
            frontends(service, port),
            node,
            |frontend| source_ranges::of_frontend(service, frontend, node),
        ));
    }
    out
}

/// A frontend of the family of endpoint addresses `A`.
type FrontendOf<A> = <<A as FamilyIp>::Socket as AddrFamily>::Frontend;
/// A source range of the family of endpoint addresses `A`.
type RangeOf<A> = <<A as FamilyIp>::Socket as AddrFamily>::Range;

/// The desired state of one Service port's `frontends` (each with the
/// policies it follows for outside clients and for pods) in the family of
/// `A`, from the port's `endpoints`: each slice's endpoints with the
/// slice's number of the port (slices without the port left out).
/// `ranges` gives each frontend's source ranges.
fn port_state<A: FamilyIp>(
    service: &ServiceSpec,
    port: &ServicePort,
    endpoints: &[(u16, &[EndpointSpec<A>])],
    frontends: Vec<(FrontendOf<A>, TrafficPolicy, TrafficPolicy)>,
    node: &NodeInfo,
    ranges: impl Fn(FrontendOf<A>) -> Vec<RangeOf<A>>,
) -> Vec<(FrontendOf<A>, DesiredFrontend<A::Socket>)> {
    let candidates = endpoints_for(endpoints, node);
    let all: Vec<&Candidate<'_, A>> = candidates.iter().collect();
    let has_endpoints = !usable(&all).is_empty();
    let uses_local = frontends
        .iter()
        .any(|(_, policy, pods)| *policy == TrafficPolicy::Local || *pods == TrafficPolicy::Local);
    let backends = choose(&candidates, uses_local, node);
    frontends
        .into_iter()
        .map(|(frontend, policy, pods_policy)| {
            let node_port_addrs = if A::Socket::is_node_port(&frontend) {
                A::Socket::node_port_addrs(node)
            } else {
                Vec::new()
            };
            let want = DesiredFrontend {
                service: service.name.clone(),
                port_name: port.name.clone(),
                backends: backends.clone(),
                policy,
                pods_policy,
                affinity_timeout: service.affinity_timeout.unwrap_or(0),
                has_endpoints,
                source_ranges: ranges(frontend),
                node_port_addrs,
            };
            (frontend, want)
        })
        .collect()
}

/// The frontends of one Service port, each with the traffic policy it
/// follows for clients from outside the cluster and the one it follows for
/// pods: an external frontend sends pods to the cluster-wide endpoints
/// whatever its `externalTrafficPolicy` (kube-proxy's short-circuit of
/// in-cluster traffic), a cluster IP follows `internalTrafficPolicy` for all.
fn frontends(
    service: &ServiceSpec,
    port: &ServicePort,
) -> Vec<(Frontend, TrafficPolicy, TrafficPolicy)> {
    let at = |addr: Ipv4Addr, port_number: u16| Frontend {
        addr,
        port: port_number,
        proto: port.protocol,
    };
    let internal = service.internal_policy;
    let external = service.external_policy;
    let mut out: Vec<(Frontend, TrafficPolicy, TrafficPolicy)> = service
        .cluster_ips
        .iter()
        .map(|&ip| (at(ip, port.port), internal, internal))
        .collect();
    for &ip in service
        .external_ips
        .iter()
        .chain(&service.load_balancer_ips)
    {
        out.push((at(ip, port.port), external, TrafficPolicy::Cluster));
    }
    if let Some(node_port) = port.node_port {
        out.push((
            Frontend::node_port(node_port, port.protocol),
            external,
            TrafficPolicy::Cluster,
        ));
    }
    out
}

/// One endpoint of a Service port, merged over slices.
#[derive(Debug)]
struct Candidate<'a, A: FamilyIp> {
    addr: A::Socket,
    endpoint: &'a EndpointSpec<A>,
    local: bool,
}

/// The candidates of one Service port: each slice's endpoints (with the
/// slice's number of the port), each address once.
fn endpoints_for<'a, A: FamilyIp>(
    slices: &[(u16, &'a [EndpointSpec<A>])],
    node: &NodeInfo,
) -> Vec<Candidate<'a, A>> {
    let mut seen: BTreeMap<A::Socket, Candidate<'a, A>> = BTreeMap::new();
    for &(number, endpoints) in slices {
        for endpoint in endpoints {
            let Some(&ip) = endpoint.addresses.first() else {
                continue;
            };
            let addr = A::Socket::new(ip, number);
            let candidate = Candidate {
                addr,
                endpoint,
                local: is_local(endpoint, ip, node),
            };
            // One address in several slices counts once: the first found,
            // unless a later one is not terminating and it is (kube-proxy
            // prefers the running endpoint of a reused address).
            match seen.entry(addr) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(candidate);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if e.get().endpoint.is_terminating() && !endpoint.is_terminating() {
                        e.insert(candidate);
                    }
                }
            }
        }
    }
    seen.into_values().collect()
}

/// Whether an endpoint at `ip` runs on this node: its `nodeName` is this
/// node's, or its address is one of the node's (a hostNetwork endpoint or
/// the `kubernetes` Service's, which has no `nodeName`).
#[must_use]
pub fn is_local<A: FamilyIp>(endpoint: &EndpointSpec<A>, ip: A, node: &NodeInfo) -> bool {
    endpoint.node_name.as_deref() == Some(node.name.as_str()) || ip.owned_by(node)
}

/// Every candidate as a backend of the Service port, with whether each
/// policy selects it; without a frontend that follows `Local`
/// (`uses_local`), `Local` selects as `Cluster` does (so the port keeps one
/// table).
fn choose<A: FamilyIp>(
    candidates: &[Candidate<'_, A>],
    uses_local: bool,
    node: &NodeInfo,
) -> BTreeMap<A::Socket, BackendInfo> {
    let for_cluster = selection(candidates, TrafficPolicy::Cluster, node);
    let for_local = if uses_local {
        selection(candidates, TrafficPolicy::Local, node)
    } else {
        for_cluster.clone()
    };
    candidates
        .iter()
        .map(|c| {
            let info = BackendInfo {
                local: c.local,
                for_cluster: for_cluster.contains(&c.addr),
                for_local: for_local.contains(&c.addr),
            };
            (c.addr, info)
        })
        .collect()
}

/// The candidates that take new connections under `policy`.
fn selection<A: FamilyIp>(
    candidates: &[Candidate<'_, A>],
    policy: TrafficPolicy,
    node: &NodeInfo,
) -> BTreeSet<A::Socket> {
    let pool: Vec<&Candidate<'_, A>> = match policy {
        TrafficPolicy::Local => candidates.iter().filter(|c| c.local).collect(),
        TrafficPolicy::Cluster => candidates.iter().collect(),
    };
    let mut selected = usable(&pool);
    // Hints steer only ready endpoints: the terminating fallback (no ready
    // endpoint anywhere) ignores topology, as kube-proxy does.
    if policy == TrafficPolicy::Cluster && selected.iter().all(|c| c.endpoint.ready) {
        selected = topology(&selected, node);
    }
    selected.iter().map(|c| c.addr).collect()
}

/// Ready endpoints; when none is ready, the serving and terminating ones.
fn usable<'c, 'a, A: FamilyIp>(pool: &[&'c Candidate<'a, A>]) -> Vec<&'c Candidate<'a, A>> {
    let ready: Vec<_> = pool.iter().copied().filter(|c| c.endpoint.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    pool.iter()
        .copied()
        .filter(|c| c.endpoint.is_serving() && c.endpoint.is_terminating())
        .collect()
}

/// Topology-aware filtering by hints, with kube-proxy's fallbacks.
fn topology<'c, 'a, A: FamilyIp>(
    selected: &[&'c Candidate<'a, A>],
    node: &NodeInfo,
) -> Vec<&'c Candidate<'a, A>> {
    let for_node: Vec<_> = selected
        .iter()
        .copied()
        .filter(|c| c.endpoint.node_hints.contains(&node.name))
        .collect();
    if !selected.is_empty()
        && selected.iter().all(|c| !c.endpoint.node_hints.is_empty())
        && !for_node.is_empty()
    {
        return for_node;
    }
    let Some(zone) = &node.zone else {
        return selected.to_vec();
    };
    if selected.is_empty() || selected.iter().any(|c| c.endpoint.zone_hints.is_empty()) {
        // A missing hint means the hints are not usable (kube-proxy falls back).
        return selected.to_vec();
    }
    let for_zone: Vec<_> = selected
        .iter()
        .copied()
        .filter(|c| c.endpoint.zone_hints.contains(zone))
        .collect();
    if for_zone.is_empty() {
        selected.to_vec()
    } else {
        for_zone
    }
}

pub mod family;
mod index;

pub use self::index::{other_address_type, SliceIndex};
#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod kube_proxy_tests;
#[cfg(test)]
mod mirror;
#[cfg(test)]
mod node_backend_tests;
#[cfg(test)]
mod tests;
