//! The validated model: Services and EndpointSlices as the agent needs them,
//! built from the Kubernetes objects with every field checked.

pub mod family;
#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod kube_proxy_tests;
mod parse;
mod service;
mod slice;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use crate::ident::{ObjectName, Protocol};

pub use self::family::{
    resolve as resolve_families, Families, IpFamilies, IpFamily, IpFamilyPolicy, ServiceV6,
    SourceRangeV6,
};
pub use self::parse::{object_name, parse_port, parse_protocol, UNSUPPORTED_PROTOCOL};
pub use self::service::PROXY_IP_MODE;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on slices mirrored from Endpoints.
pub const MIRROR_MANAGER: &str = "endpointslicemirroring-controller.k8s.io";

/// What kind of Service it is, as far as balancing goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP balanced inside the cluster.
    #[default]
    ClusterIp,
    /// ClusterIP plus a port on every node.
    NodePort,
    /// NodePort plus an external load balancer.
    LoadBalancer,
    /// A DNS alias: nothing to balance.
    ExternalName,
    /// `clusterIP: None`: DNS only, nothing to balance.
    Headless,
}

/// A Service port's target: a number, or a name resolved through the slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name ("" when unnamed).
    pub name: String,
    /// The port clients use.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Where the endpoints listen.
    pub target_port: TargetPort,
    /// The port on every node (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// Which endpoints a frontend may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficPolicy {
    /// Endpoints on any node.
    #[default]
    Cluster,
    /// Only endpoints on this node (the client address is kept, no SNAT).
    Local,
}

/// A validated Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Namespace and name.
    pub name: ObjectName,
    /// Type.
    pub kind: ServiceKind,
    /// IPv4 cluster IP (one at most); the IPv6 one is in `v6`.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs` (IPv4).
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (IPv4, LoadBalancer Services).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.internalTrafficPolicy`: for cluster IPs.
    pub internal_policy: TrafficPolicy,
    /// `spec.externalTrafficPolicy`: for node ports, external and load-balancer IPs.
    pub external_policy: TrafficPolicy,
    /// `spec.sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// `metadata.creationTimestamp` in Unix seconds (`None` from manifests
    /// without one): the older of two Services claiming a frontend keeps it.
    pub created: Option<i64>,
    /// `spec.healthCheckNodePort` (LoadBalancer Services with
    /// `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges`: the clients a load-balancer IP
    /// accepts; empty: all. IPv4 ranges only.
    pub source_ranges: Vec<SourceRange>,
    /// Ports left out of `ports` because the data path does not serve their
    /// protocol, as "port/protocol" (e.g. "53/SCTP"); the others are served.
    pub skipped_ports: Vec<String>,
    /// `spec.selector` is set (and not empty, which the API server stores
    /// as unset): the EndpointSlice controller writes its slices, and its
    /// Endpoints are not mirrored.
    pub has_selector: bool,
    /// `spec.ipFamilies`, resolved and checked (see [`family`]): the
    /// families it is served in; IPv4 by default.
    pub ip_families: IpFamilies,
    /// `spec.ipFamilyPolicy` (defaulted as the API server does).
    pub ip_family_policy: IpFamilyPolicy,
    /// The IPv6 addresses (cluster IP, externalIPs, load-balancer ingress,
    /// source ranges), boxed and only when there are any: IPv4-only
    /// Services pay one pointer.
    pub v6: Option<Box<ServiceV6>>,
}

/// An IPv4 CIDR of `loadBalancerSourceRanges`, its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0-32.
    pub prefix_len: u8,
}

impl SourceRange {
    /// Parses a CIDR (`10.0.0.0/8`; surrounding spaces allowed): an IPv4
    /// range with its host bits cleared, as kube-proxy reads it, or `None`
    /// for an IPv6 one (a [`SourceRangeV6`]); an error naming the
    /// text when it is no CIDR.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let invalid = || format!("{:?} is not a valid CIDR", text.trim());
        let (addr, len) = text.trim().split_once('/').ok_or_else(invalid)?;
        let len: u8 = len.parse().map_err(|_| invalid())?;
        match addr.parse::<std::net::IpAddr>().map_err(|_| invalid())? {
            std::net::IpAddr::V4(ip) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Ok(Some(Self {
                    addr: Ipv4Addr::from(u32::from(ip) & mask),
                    prefix_len: len,
                }))
            }
            std::net::IpAddr::V6(_) if len <= 128 => Ok(None),
            _ => Err(invalid()),
        }
    }

    /// Whether `ip` falls in the range.
    #[must_use]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

impl std::fmt::Display for SourceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Address family of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressType {
    /// IPv4, the family the data path serves; the endpoints are the slice's
    /// `endpoints`.
    Ipv4,
    /// IPv6, with the slice's endpoints (its `endpoints` field, typed for
    /// IPv4, stays empty: the IPv4 path keeps its types, and a boxed slice
    /// keeps this enum, and so every slice, at its IPv4-only size).
    Ipv6(Box<[EndpointSpec<Ipv6Addr>]>),
    /// Anything else (FQDN): ignored with a warning.
    Other(String),
}

impl AddressType {
    /// The IP family, `None` for another address type.
    #[must_use]
    pub const fn family(&self) -> Option<IpFamily> {
        match self {
            Self::Ipv4 => Some(IpFamily::V4),
            Self::Ipv6(_) => Some(IpFamily::V6),
            Self::Other(_) => None,
        }
    }
}

/// One port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Port name ("" when unnamed), matched with the Service port name.
    pub name: String,
    /// The endpoints' port number.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// One endpoint of an EndpointSlice, of IPv4 addresses unless said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec<A = Ipv4Addr> {
    /// Addresses (the first is the one used; all are kept).
    pub addresses: Vec<A>,
    /// `conditions.ready` is not false (unset is ready, as kube-proxy reads it).
    pub ready: bool,
    /// `conditions.serving` as the slice says it; see [`EndpointSpec::is_serving`].
    pub serving: Option<bool>,
    /// `conditions.terminating` as the slice says it; see [`EndpointSpec::is_terminating`].
    pub terminating: Option<bool>,
    /// The node it runs on.
    pub node_name: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
    /// `hints.forZones`: zones that should use it (topology-aware routing).
    pub zone_hints: Vec<String>,
    /// `hints.forNodes`: nodes that should use it.
    pub node_hints: Vec<String>,
}

impl<A> EndpointSpec<A> {
    /// `conditions.serving`; unset is serving. kube-proxy reads it so
    /// (`endpointslicecache.go`), not as the API's "defer to ready": the two
    /// differ only for a not-ready terminating endpoint with `serving` unset,
    /// which kube-proxy (and so this agent) uses when nothing is ready.
    #[must_use]
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or(true)
    }

    /// `conditions.terminating`, false when absent.
    #[must_use]
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

/// A validated EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    /// Namespace and name.
    pub name: ObjectName,
    /// Name of the Service it belongs to.
    pub service: String,
    /// Address family.
    pub address_type: AddressType,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// IPv4 endpoints (empty for another family: IPv6 ones are in
    /// [`AddressType::Ipv6`]).
    pub endpoints: Vec<EndpointSpec>,
    /// Mirrored from a legacy Endpoints object.
    pub mirrored: bool,
}

/// Every valid object, by namespace and name. Objects are shared (`Arc`):
/// a source that keeps them elsewhere too (the manifest source, by file)
/// holds each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Services.
    pub services: BTreeMap<ObjectName, Arc<ServiceSpec>>,
    /// EndpointSlices (real and mirrored).
    pub slices: BTreeMap<ObjectName, Arc<SliceSpec>>,
    /// What this node's Node object says, when the source has one.
    pub node: Option<NodeFacts>,
}

/// Facts about this node from its Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `InternalIP` and `ExternalIP` addresses (IPv4).
    pub addresses: Vec<Ipv4Addr>,
    /// `InternalIP` and `ExternalIP` addresses (IPv6), kept for the IPv6
    /// node ports; nothing uses them while the data path is IPv4 only.
    pub addresses_v6: Vec<Ipv6Addr>,
    /// A deletionTimestamp or the [`TO_BE_DELETED_TAINT`]: load balancers
    /// should stop sending here (the proxy `/healthz` answers 503).
    pub being_deleted: bool,
}

/// Taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

impl NodeFacts {
    /// Reads the zone label, InternalIP/ExternalIP addresses (by family)
    /// and deletion marks of a Node.
    #[must_use]
    pub fn from_k8s(node: &k8s_openapi::api::core::v1::Node) -> Self {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned();
        let (mut addresses, mut addresses_v6) = (Vec::new(), Vec::new());
        for addr in node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse::<std::net::IpAddr>().ok())
        {
            match addr {
                std::net::IpAddr::V4(v4) => addresses.push(v4),
                std::net::IpAddr::V6(v6) => addresses_v6.push(v6),
            }
        }
        let being_deleted = node.metadata.deletion_timestamp.is_some()
            || node
                .spec
                .iter()
                .flat_map(|s| s.taints.iter().flatten())
                .any(|t| t.key == TO_BE_DELETED_TAINT);
        Self {
            zone,
            addresses,
            addresses_v6,
            being_deleted,
        }
    }
}
