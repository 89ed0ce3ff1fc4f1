//! Field parsers shared by the validators (and by Endpoints mirroring).

use std::net::{IpAddr, Ipv4Addr};

use super::{SourceRange, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT};
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

/// Parses addresses, keeping IPv4 and putting IPv6 ones in `skipped` (the
/// data path is IPv4 only); anything else is an error.
pub(super) fn parse_ipv4_list<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a String>,
    skipped: &mut Vec<String>,
) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for value in values {
        match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => out.push(ip),
            Ok(IpAddr::V6(_)) => skipped.push(value.clone()),
            Err(_) => return Err(format!("{field} {value:?} is not a valid IP address")),
        }
    }
    Ok(out)
}

/// Parses CIDRs, keeping IPv4 ones (host bits cleared, as kube-proxy reads
/// them) and putting IPv6 ones in `skipped`; anything else is an error.
pub(super) fn parse_ipv4_cidrs<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a str>,
    skipped: &mut Vec<String>,
) -> Result<Vec<SourceRange>, String> {
    let mut out = Vec::new();
    for value in values {
        match SourceRange::parse(value) {
            Ok(Some(range)) if !out.contains(&range) => out.push(range),
            Ok(Some(_)) => {}
            Ok(None) => skipped.push(value.trim().to_string()),
            Err(e) => return Err(format!("{field} {e}")),
        }
    }
    Ok(out)
}
