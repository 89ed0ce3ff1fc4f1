//! Service validation.

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};
use tracing::warn;

use super::{
    object_name,
    parse::{parse_affinity, parse_ipv4_cidrs, parse_ipv4_list, parse_policy},
    parse_port, parse_protocol, ServiceKind, ServicePort, ServiceSpec, TargetPort,
    UNSUPPORTED_PROTOCOL,
};
use crate::problem::{ProblemReason, ServiceProblem};

impl ServiceSpec {
    /// Validates a Service. IPv6 addresses are skipped with one warning (the
    /// data path is IPv4 only); SCTP ports are skipped alone and listed in
    /// `skipped_ports` (see [`ServiceSpec::problems`]); anything else that is
    /// wrong is an error.
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
        let mut skipped = Vec::new();
        let cluster_ips = if kind == ServiceKind::Headless || kind == ServiceKind::ExternalName {
            Vec::new()
        } else {
            parse_ipv4_list("clusterIP", &ips, &mut skipped)?
        };
        let external_ips = parse_ipv4_list(
            "externalIP",
            spec.external_ips.iter().flatten(),
            &mut skipped,
        )?;
        // An ingress with `ipMode: Proxy` is an address of a proxying load
        // balancer: in-cluster clients must go through it (kube-proxy skips it).
        let load_balancer_ips = parse_ipv4_list(
            "status.loadBalancer.ingress ip",
            service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter(|i| i.ip_mode.as_deref() != Some(PROXY_IP_MODE))
                .filter_map(|i| i.ip.as_ref()),
            &mut skipped,
        )?;
        // Only the field, as kube-proxy reads it (the annotation of the
        // same meaning is for cloud load balancers).
        let source_ranges = parse_ipv4_cidrs(
            "loadBalancerSourceRanges",
            spec.load_balancer_source_ranges
                .iter()
                .flatten()
                .map(String::as_str),
            &mut skipped,
        )?;
        let health_check_node_port = match spec.health_check_node_port {
            Some(port) if kind == ServiceKind::LoadBalancer => {
                Some(parse_port("healthCheckNodePort", port)?)
            }
            _ => None,
        };
        let created = service
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        let internal_policy = parse_policy(
            "internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?;
        let external_policy = parse_policy(
            "externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
        let (ports, skipped_ports) = parse_ports(spec.ports.as_deref().unwrap_or_default(), kind)?;
        if !skipped.is_empty() {
            warn!(
                "Service {name}: IPv6 addresses {} are not served (the data path is IPv4 only); skipped",
                skipped.join(", ")
            );
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
            affinity_timeout: parse_affinity(&spec)?,
            created,
            health_check_node_port,
            source_ranges,
            skipped_ports,
            has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
        })
    }

    /// The problems to report for this Service: one for its skipped ports,
    /// if any (the reporter logs it once and makes it an Event).
    #[must_use]
    pub fn problems(&self) -> Vec<ServiceProblem> {
        if self.skipped_ports.is_empty() {
            return Vec::new();
        }
        let (noun, verb) = if self.skipped_ports.len() == 1 {
            ("port", "is")
        } else {
            ("ports", "are")
        };
        vec![ServiceProblem {
            service: self.name.clone(),
            reason: ProblemReason::UnsupportedPort,
            message: format!(
                "{noun} {} {verb} not served ({UNSUPPORTED_PROTOCOL} is not supported by the data path); its other ports are",
                self.skipped_ports.join(", ")
            ),
        }]
    }
}

/// `status.loadBalancer.ingress[].ipMode` of a proxying load balancer.
pub const PROXY_IP_MODE: &str = "Proxy";

/// Validates a Service's ports: numbers in range, TCP or UDP, each
/// (port, protocol) once; a missing or empty targetPort is the port itself.
/// An SCTP port is skipped alone (after its number is checked) and returned
/// as "port/SCTP" beside the served ones.
fn parse_ports(
    ports: &[k8s_openapi::api::core::v1::ServicePort],
    kind: ServiceKind,
) -> Result<(Vec<ServicePort>, Vec<String>), String> {
    let mut out: Vec<ServicePort> = Vec::new();
    let mut skipped = Vec::new();
    for port in ports {
        let number = parse_port("port", port.port)?;
        let protocol =
            parse_protocol(port.protocol.as_deref()).map_err(|e| format!("port {number}: {e}"))?;
        let Some(protocol) = protocol else {
            skipped.push(format!("{number}/{UNSUPPORTED_PROTOCOL}"));
            continue;
        };
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(parse_port("targetPort", *n)?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(parse_port("targetPort", n)?),
                Err(_) if s.is_empty() => TargetPort::Number(number),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        if out
            .iter()
            .any(|p| p.port == number && p.protocol == protocol)
        {
            return Err(format!("port {number}/{protocol} is listed twice"));
        }
        let node_port = match port.node_port {
            Some(n) if kind == ServiceKind::NodePort || kind == ServiceKind::LoadBalancer => {
                Some(parse_port("nodePort", n)?)
            }
            _ => None,
        };
        out.push(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
            target_port,
            node_port,
        });
    }
    Ok((out, skipped))
}
