//! Field parsers shared by the validators (and by Endpoints mirroring).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{SourceRange, SourceRangeV6, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT};
use crate::ident::{ObjectName, Protocol};

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

/// Parses a protocol name (TCP when absent): `None` for SCTP, a Kubernetes
/// protocol the data path does not serve (its port is skipped alone);
/// unknown names are errors.
pub fn parse_protocol(protocol: Option<&str>) -> Result<Option<Protocol>, String> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(Some(Protocol::Tcp)),
        "UDP" => Ok(Some(Protocol::Udp)),
        UNSUPPORTED_PROTOCOL => Ok(None),
        other => Err(format!(
            "unknown protocol {other:?} (expected TCP, UDP or SCTP)"
        )),
    }
}

/// The Kubernetes protocol the data path does not serve.
pub const UNSUPPORTED_PROTOCOL: &str = "SCTP";

/// Checks a port number is in 1..=65535.
pub fn parse_port(what: &str, port: i32) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {port} is out of range 1-65535"))
}

pub(super) fn parse_policy(field: &str, value: Option<&str>) -> Result<TrafficPolicy, String> {
    match value {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(format!(
            "unknown {field} {other:?} (expected Cluster or Local)"
        )),
    }
}

/// The `ClientIP` affinity timeout, or `None` without session affinity.
pub(super) fn parse_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
) -> Result<Option<u32>, String> {
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

/// Parses addresses, split by family; anything else is an error.
pub(super) fn parse_ip_list<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), String> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for value in values {
        match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => v4.push(ip),
            Ok(IpAddr::V6(ip)) => v6.push(ip),
            Err(_) => return Err(format!("{field} {value:?} is not a valid IP address")),
        }
    }
    Ok((v4, v6))
}

/// Parses CIDRs split by family, host bits cleared (as kube-proxy reads
/// them), each once; anything else is an error.
pub(super) fn parse_cidrs<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<(Vec<SourceRange>, Vec<SourceRangeV6>), String> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for value in values {
        match SourceRange::parse(value) {
            Ok(Some(range)) if !v4.contains(&range) => v4.push(range),
            Ok(Some(_)) => {}
            Ok(None) => {
                // `SourceRange::parse` has checked it is an IPv6 CIDR.
                let range = value
                    .trim()
                    .split_once('/')
                    .and_then(|(a, l)| Some(SourceRangeV6::new(a.parse().ok()?, l.parse().ok()?)))
                    .ok_or_else(|| format!("{field} {value:?} is not a valid CIDR"))?;
                if !v6.contains(&range) {
                    v6.push(range);
                }
            }
            Err(e) => return Err(format!("{field} {e}")),
        }
    }
    Ok((v4, v6))
}
