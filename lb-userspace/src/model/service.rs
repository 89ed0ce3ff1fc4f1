//! Service validation.

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};

use super::{
    object_name,
    parse::{parse_affinity, parse_cidrs, parse_ip_list, parse_policy},
    parse_port, parse_protocol, ServiceKind, ServicePort, ServiceSpec, ServiceV6, TargetPort,
    UNSUPPORTED_PROTOCOL,
};
use crate::problem::{ProblemReason, ServiceProblem};

impl ServiceSpec {
    /// Validates a Service. Its families follow [`super::family`]'s rules,
    /// its addresses are kept split by family; SCTP ports are skipped alone and listed in
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
        let families = super::resolve_families(
            spec.cluster_ip.as_deref(),
            spec.cluster_ips.as_deref().unwrap_or_default(),
            spec.ip_families.as_deref().unwrap_or_default(),
            spec.ip_family_policy.as_deref(),
            kind == ServiceKind::ExternalName,
        )?;
        if families.headless {
            kind = ServiceKind::Headless;
        }
        let (external_ips, external_v6) =
            parse_ip_list("externalIP", spec.external_ips.iter().flatten())?;
        // An ingress with `ipMode: Proxy` is an address of a proxying load
        // balancer: in-cluster clients must go through it (kube-proxy skips it).
        let (load_balancer_ips, load_balancer_v6) = parse_ip_list(
            "status.loadBalancer.ingress ip",
            service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter(|i| i.ip_mode.as_deref() != Some(PROXY_IP_MODE))
                .filter_map(|i| i.ip.as_ref()),
        )?;
        // Only the field, as kube-proxy reads it (the annotation of the
        // same meaning is for cloud load balancers).
        let (source_ranges, source_ranges_v6) = parse_cidrs(
            "loadBalancerSourceRanges",
            spec.load_balancer_source_ranges
                .iter()
                .flatten()
                .map(String::as_str),
        )?;
        let v6 = ServiceV6 {
            cluster_ips: families.v6,
            external_ips: external_v6,
            load_balancer_ips: load_balancer_v6,
            source_ranges: source_ranges_v6,
        }
        .boxed_if_any();
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
        Ok(Self {
            name,
            kind,
            cluster_ips: families.v4,
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
            ip_families: families.families,
            ip_family_policy: families.policy,
            v6,
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
