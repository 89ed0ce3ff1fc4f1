//! The validated model: Services and EndpointSlices as the agent needs them,
//! built from the Kubernetes objects with every field checked.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::desired::{ObjectName, Protocol};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label value (under `endpointslice.kubernetes.io/managed-by`) of slices mirrored from Endpoints.
pub const MIRROR_MANAGER: &str = "endpointslicemirroring-controller.k8s.io";

/// What kind of Service it is, as far as balancing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP balanced inside the cluster.
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Endpoints on any node.
    #[default]
    Cluster,
    /// Only endpoints on this node (the client address is kept, no SNAT).
    Local,
}

/// A validated Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Namespace and name.
    pub name: ObjectName,
    /// Type.
    pub kind: ServiceKind,
    /// IPv4 cluster IPs.
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
}

/// Address family of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressType {
    /// IPv4, the family the data path serves.
    Ipv4,
    /// Anything else (IPv6, FQDN): ignored with a warning.
    Other(String),
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

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Addresses (the first is the one used; all are kept).
    pub addresses: Vec<Ipv4Addr>,
    /// `conditions.ready` is not false.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: Option<bool>,
    /// `conditions.terminating`.
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

impl EndpointSpec {
    /// `conditions.serving`, which defaults to `ready`.
    #[must_use]
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or(self.ready)
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
    /// Endpoints (empty for a family other than IPv4).
    pub endpoints: Vec<EndpointSpec>,
    /// Mirrored from a legacy Endpoints object.
    pub mirrored: bool,
}

/// Every valid object, by namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Services.
    pub services: BTreeMap<ObjectName, ServiceSpec>,
    /// EndpointSlices (real and mirrored).
    pub slices: BTreeMap<ObjectName, SliceSpec>,
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
}

/// Label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

impl NodeFacts {
    /// Reads the zone label and IPv4 InternalIP/ExternalIP addresses of a Node.
    #[must_use]
    pub fn from_k8s(node: &k8s_openapi::api::core::v1::Node) -> Self {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned();
        let addresses = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
            .collect();
        Self { zone, addresses }
    }
}

/// Namespace ("default" when absent) and name of an object's metadata.
pub fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ObjectName, String> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    Ok(ObjectName {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        name,
    })
}

/// Parses a protocol name; SCTP and unknown names are errors.
pub fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, String> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Err("protocol SCTP is not supported by the data path yet".to_string()),
        other => Err(format!("unknown protocol {other:?} (expected TCP or UDP)")),
    }
}

/// Checks a port number is in 1..=65535.
pub fn parse_port(what: &str, port: i32) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {port} is out of range 1-65535"))
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

fn parse_policy(field: &str, value: Option<&str>) -> Result<TrafficPolicy, String> {
    match value {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(format!(
            "unknown {field} {other:?} (expected Cluster or Local)"
        )),
    }
}

/// The `ClientIP` affinity timeout, or `None` without session affinity.
fn parse_affinity(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Option<u32>, String> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=86_400).contains(t))
                    .map(Some)
                    .ok_or_else(|| format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range 1-86400")),
            }
        }
        Some(other) => Err(format!("unknown sessionAffinity {other:?}")),
    }
}

/// Parses addresses, keeping IPv4 and skipping IPv6; anything else is an error.
fn parse_ipv4_list<'a>(
    field: &str,
    values: impl Iterator<Item = &'a String>,
) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for value in values {
        match value.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => out.push(ip),
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => return Err(format!("{field} {value:?} is not a valid IP address")),
        }
    }
    Ok(out)
}

impl ServiceSpec {
    /// Validates a Service.
    pub fn from_k8s(service: &Service) -> Result<Self, String> {
        let name = object_name(&service.metadata)?;
        let spec = service.spec.clone().unwrap_or_default();
        let mut kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceKind::ClusterIp,
            "NodePort" => ServiceKind::NodePort,
            "LoadBalancer" => ServiceKind::LoadBalancer,
            "ExternalName" => ServiceKind::ExternalName,
            other => return Err(format!("unknown type {other:?}")),
        };
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.clone());
        }
        if ips.iter().any(|ip| ip == "None") {
            kind = ServiceKind::Headless;
        }
        let mut cluster_ips = Vec::new();
        if kind != ServiceKind::Headless && kind != ServiceKind::ExternalName {
            for ip in &ips {
                match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v4)) => cluster_ips.push(v4),
                    Ok(std::net::IpAddr::V6(_)) => {}
                    Err(_) => return Err(format!("clusterIP {ip:?} is not a valid IP address")),
                }
            }
        }
        let external_ips = parse_ipv4_list("externalIP", spec.external_ips.iter().flatten())?;
        let load_balancer_ips = parse_ipv4_list(
            "status.loadBalancer.ingress ip",
            service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter_map(|i| i.ip.as_ref()),
        )?;
        let internal_policy = parse_policy(
            "internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?;
        let external_policy = parse_policy(
            "externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
        let affinity_timeout = parse_affinity(&spec)?;
        let mut ports = Vec::new();
        for port in spec.ports.unwrap_or_default() {
            let port_name = port.name.clone().unwrap_or_default();
            let number = parse_port("port", port.port)?;
            let protocol = parse_protocol(port.protocol.as_deref())
                .map_err(|e| format!("port {number}: {e}"))?;
            let target_port = match &port.target_port {
                None => TargetPort::Number(number),
                Some(IntOrString::Int(n)) => TargetPort::Number(parse_port("targetPort", *n)?),
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(parse_port("targetPort", n)?),
                    Err(_) if s.is_empty() => TargetPort::Number(number),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            if ports
                .iter()
                .any(|p: &ServicePort| p.port == number && p.protocol == protocol)
            {
                return Err(format!("port {number}/{protocol} is listed twice"));
            }
            let node_port = match port.node_port {
                Some(n) if kind == ServiceKind::NodePort || kind == ServiceKind::LoadBalancer => {
                    Some(parse_port("nodePort", n)?)
                }
                _ => None,
            };
            ports.push(ServicePort {
                name: port_name,
                port: number,
                protocol,
                target_port,
                node_port,
            });
        }
        Ok(Self {
            name,
            kind,
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ips,
            internal_policy,
            external_policy,
            affinity_timeout,
        })
    }
}

impl SliceSpec {
    /// Validates an EndpointSlice.
    pub fn from_k8s(slice: &EndpointSlice) -> Result<Self, String> {
        let name = object_name(&slice.metadata)?;
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        let service = labels
            .get(SERVICE_NAME_LABEL)
            .cloned()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!("label {SERVICE_NAME_LABEL} is missing: the slice belongs to no Service")
            })?;
        let mirrored = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
            .is_some_and(|m| m == MIRROR_MANAGER);
        let address_type = if slice.address_type == "IPv4" {
            AddressType::Ipv4
        } else {
            AddressType::Other(slice.address_type.clone())
        };
        let mut ports = Vec::new();
        for port in slice.ports.clone().unwrap_or_default() {
            let Some(number) = port.port else { continue };
            ports.push(SlicePort {
                name: port.name.clone().unwrap_or_default(),
                port: parse_port("port", number)?,
                protocol: parse_protocol(port.protocol.as_deref())?,
            });
        }
        let mut endpoints = Vec::new();
        if address_type == AddressType::Ipv4 {
            for endpoint in &slice.endpoints {
                let mut addresses = Vec::new();
                for addr in &endpoint.addresses {
                    addresses.push(addr.parse::<Ipv4Addr>().map_err(|_| {
                        format!("endpoint address {addr:?} is not a valid IPv4 address")
                    })?);
                }
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                let hints = endpoint.hints.clone().unwrap_or_default();
                endpoints.push(EndpointSpec {
                    addresses,
                    ready: conditions.ready != Some(false),
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                    node_name: endpoint.node_name.clone(),
                    zone: endpoint.zone.clone(),
                    zone_hints: hints
                        .for_zones
                        .iter()
                        .flatten()
                        .map(|z| z.name.clone())
                        .collect(),
                    node_hints: hints
                        .for_nodes
                        .iter()
                        .flatten()
                        .map(|n| n.name.clone())
                        .collect(),
                });
            }
        }
        Ok(Self {
            name,
            service,
            address_type,
            ports,
            endpoints,
            mirrored,
        })
    }
}
