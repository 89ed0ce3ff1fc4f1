//! Legacy `v1 Endpoints` to EndpointSlices, as Kubernetes' mirroring controller does.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};
use tracing::debug;

use crate::model::{
    object_name, parse_port, parse_protocol, AddressType, EndpointSpec, SlicePort, SliceSpec,
    UNSUPPORTED_PROTOCOL,
};

/// Label that asks the mirroring controller to leave an Endpoints object alone.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Annotation of leader-election records kept in Endpoints objects (never mirrored).
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The slices mirrored from `endpoints`: per subset, one IPv4 slice (ready
/// `addresses` and not-ready `notReadyAddresses`) and, if it has other
/// addresses, one slice of the other family (ignored by selection). Like the
/// controller, nothing for Endpoints labelled `skip-mirror: "true"` or
/// holding a leader-election record.
pub fn mirror(endpoints: &Endpoints) -> Result<Vec<SliceSpec>, String> {
    let name = object_name(&endpoints.metadata)?;
    let meta = &endpoints.metadata;
    let skip = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SKIP_MIRROR_LABEL))
        .is_some_and(|v| v == "true");
    let leader = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(LEADER_ANNOTATION));
    if skip || leader {
        debug!("Endpoints {name}: not mirrored (skip-mirror label or leader-election record)");
        return Ok(Vec::new());
    }
    let mut slices = Vec::new();
    for (i, subset) in endpoints.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for port in subset.ports.iter().flatten() {
            let number = parse_port("port", port.port)?;
            // An SCTP port is dropped alone, as from an EndpointSlice.
            let Some(protocol) = parse_protocol(port.protocol.as_deref())? else {
                debug!(
                    "Endpoints {name}: port {number}/{UNSUPPORTED_PROTOCOL} is not served; dropped"
                );
                continue;
            };
            ports.push(SlicePort {
                name: port.name.clone().unwrap_or_default(),
                port: number,
                protocol,
            });
        }
        let mut v4 = Vec::new();
        let mut other = false;
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        for (address, is_ready) in ready.chain(not_ready) {
            match parse(address)? {
                Some(ip) => v4.push(EndpointSpec {
                    addresses: vec![ip],
                    ready: is_ready,
                    serving: Some(is_ready),
                    terminating: Some(false),
                    node_name: address.node_name.clone(),
                    zone: None,
                    zone_hints: Vec::new(),
                    node_hints: Vec::new(),
                }),
                None => other = true,
            }
        }
        let slice = |suffix: &str, address_type, endpoints| SliceSpec {
            name: crate::desired::ObjectName {
                namespace: name.namespace.clone(),
                name: format!("{}-mirror-{i}{suffix}", name.name),
            },
            service: name.name.clone(),
            address_type,
            ports: ports.clone(),
            endpoints,
            mirrored: true,
        };
        slices.push(slice("", AddressType::Ipv4, v4));
        if other {
            slices.push(slice("-v6", AddressType::Other("IPv6".into()), Vec::new()));
        }
    }
    Ok(slices)
}

fn parse(address: &EndpointAddress) -> Result<Option<Ipv4Addr>, String> {
    match address.ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => Err(format!(
            "address {:?} is not a valid IP address",
            address.ip
        )),
    }
}
