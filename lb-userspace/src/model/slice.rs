//! EndpointSlice validation.

use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::debug;

use super::{
    object_name, parse_port, parse_protocol, AddressType, EndpointSpec, ServicePort, SlicePort,
    SliceSpec, MANAGED_BY_LABEL, MIRROR_MANAGER, SERVICE_NAME_LABEL, UNSUPPORTED_PROTOCOL,
};

impl SliceSpec {
    /// The number of the slice's port matching the Service port `port` by
    /// name and protocol (a slice without it gives that Service port nothing).
    #[must_use]
    pub fn port_for(&self, port: &ServicePort) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .map(|p| p.port)
    }

    /// Validates an EndpointSlice (endpoints are read for IPv4 and IPv6 slices).
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
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|m| m == MIRROR_MANAGER);
        // Every Vec at its exact length: the model holds one per slice and
        // per endpoint for as long as the object lives.
        let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, Vec::len));
        for port in slice.ports.iter().flatten() {
            let Some(number) = port.port else { continue };
            let number = parse_port("port", number)?;
            let protocol = parse_protocol(port.protocol.as_deref())
                .map_err(|e| format!("port {number}: {e}"))?;
            // An SCTP port is dropped alone: the Service's problem is the
            // warning its owner sees.
            let Some(protocol) = protocol else {
                debug!("EndpointSlice {name}: port {number}/{UNSUPPORTED_PROTOCOL} is not served; dropped");
                continue;
            };
            ports.push(SlicePort {
                name: port.name.clone().unwrap_or_default(),
                port: number,
                protocol,
            });
        }
        let (address_type, endpoints) = match slice.address_type.as_str() {
            "IPv4" => (AddressType::Ipv4, parse_endpoints(&slice.endpoints)?),
            "IPv6" => (
                AddressType::Ipv6(parse_endpoints(&slice.endpoints)?.into_boxed_slice()),
                Vec::new(),
            ),
            other => (AddressType::Other(other.to_string()), Vec::new()),
        };
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

/// An address type an endpoint address parses as (IPv4 or IPv6).
trait EndpointAddr: std::str::FromStr {
    /// The family, for errors.
    const FAMILY: &'static str;
}

impl EndpointAddr for Ipv4Addr {
    const FAMILY: &'static str = "IPv4";
}

impl EndpointAddr for Ipv6Addr {
    const FAMILY: &'static str = "IPv6";
}

/// The endpoints of a slice of family `A`, every address of that family.
fn parse_endpoints<A: EndpointAddr>(
    endpoints: &[k8s_openapi::api::discovery::v1::Endpoint],
) -> Result<Vec<EndpointSpec<A>>, String> {
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let addresses = endpoint
            .addresses
            .iter()
            .map(|addr| {
                addr.parse::<A>().map_err(|_| {
                    format!(
                        "endpoint address {addr:?} is not a valid {} address",
                        A::FAMILY
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        let hints = endpoint.hints.clone().unwrap_or_default();
        out.push(EndpointSpec {
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
    Ok(out)
}
