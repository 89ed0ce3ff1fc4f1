//! Legacy `v1 Endpoints` to EndpointSlices, as Kubernetes' mirroring controller does.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Endpoints;
use tracing::debug;

use crate::{
    desired::ObjectName,
    model::{
        object_name, parse_port, parse_protocol, AddressType, EndpointSpec, ServiceSpec, SlicePort,
        SliceSpec, UNSUPPORTED_PROTOCOL,
    },
};

/// Label that asks the mirroring controller to leave an Endpoints object alone.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Annotation of leader-election records kept in Endpoints objects (never mirrored).
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// Addresses mirrored per subset at most, ready ones first: the
/// controller's default `--mirroring-max-endpoints-per-subset`.
pub const MAX_ENDPOINTS_PER_SUBSET: usize = 1_000;

/// What mirroring one Endpoints object gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrored {
    /// The slices.
    pub slices: Vec<SliceSpec>,
    /// What was left out, one sentence each (an invalid address, addresses
    /// over the cap), for the log.
    pub skipped: Vec<String>,
}

/// The slices mirrored from `endpoints`, as the mirroring controller makes
/// them: per subset and per family of its addresses, one slice (ready
/// `addresses`, then not-ready `notReadyAddresses`, with only `ready` set):
/// `<name>-mirror-<i>` for IPv4, `<name>-mirror-<i>-v6` for IPv6; a subset
/// without addresses keeps its empty IPv4 slice. A subset gives at most
/// [`MAX_ENDPOINTS_PER_SUBSET`] valid addresses over both families, ready
/// ones first; an address that is not an IP is skipped alone. An SCTP port
/// is dropped alone. Nothing for Endpoints labelled `skip-mirror: "true"` or
/// holding a leader-election record. Whether the Service exists without a
/// selector is checked by the caller ([`super::LoadResult::cluster`]).
///
/// Subsets with the same ports stay separate slices here; the controller
/// merges them into one slice of at most the cap.
pub fn mirror(endpoints: &Endpoints) -> Result<Mirrored, String> {
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
        return Ok(Mirrored::default());
    }
    let mut out = Mirrored::default();
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
        let mut v6 = Vec::new();
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        let (mut added, mut over) = (0usize, 0usize);
        for (address, is_ready) in ready.chain(not_ready) {
            if added >= MAX_ENDPOINTS_PER_SUBSET {
                over += 1;
                continue;
            }
            match address.ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => v4.push(mirrored_endpoint(ip, is_ready, address)),
                Ok(IpAddr::V6(ip)) => v6.push(mirrored_endpoint(ip, is_ready, address)),
                Err(_) => {
                    out.skipped.push(format!(
                        "address {:?} is not a valid IP address; not mirrored",
                        address.ip
                    ));
                    continue;
                }
            }
            added += 1;
        }
        if over > 0 {
            out.skipped.push(format!(
                "subset {i} has more than {MAX_ENDPOINTS_PER_SUBSET} addresses; {over} not mirrored (ready ones first)"
            ));
        }
        let slice = |suffix: &str, address_type, endpoints| SliceSpec {
            name: ObjectName {
                namespace: name.namespace.clone(),
                name: format!("{}-mirror-{i}{suffix}", name.name),
            },
            service: name.name.clone(),
            address_type,
            ports: ports.clone(),
            endpoints,
            mirrored: true,
        };
        // One slice per family that has addresses; a subset without any
        // keeps its (empty) IPv4 slice.
        if !v4.is_empty() || v6.is_empty() {
            out.slices.push(slice("", AddressType::Ipv4, v4));
        }
        if !v6.is_empty() {
            out.slices.push(slice(
                "-v6",
                AddressType::Ipv6(v6.into_boxed_slice()),
                Vec::new(),
            ));
        }
    }
    Ok(out)
}

/// Whether the Endpoints `name` are mirrored given the `services` there
/// are: the controller mirrors only the Endpoints of a Service that exists
/// and has no selector (the EndpointSlice controller serves the others).
/// Mirrored slices follow their Service on the next load: the manifest
/// model is rebuilt whole from every file, and the manifest source reports
/// every load as a change of everything, so slices appear and go with no
/// change list of their own.
pub(super) fn wanted(
    name: &ObjectName,
    services: &BTreeMap<ObjectName, std::sync::Arc<ServiceSpec>>,
) -> bool {
    match services.get(name) {
        None => {
            debug!("Endpoints {name}: not mirrored (no Service of that name)");
            false
        }
        Some(service) if service.has_selector => {
            debug!("Endpoints {name}: not mirrored (its Service has a selector)");
            false
        }
        Some(_) => true,
    }
}

/// An endpoint mirrored from an Endpoints address: only `ready` set, as the
/// controller writes it.
fn mirrored_endpoint<A>(
    ip: A,
    ready: bool,
    address: &k8s_openapi::api::core::v1::EndpointAddress,
) -> EndpointSpec<A> {
    EndpointSpec {
        addresses: vec![ip],
        ready,
        serving: None,
        terminating: None,
        node_name: address.node_name.clone(),
        zone: None,
        zone_hints: Vec::new(),
        node_hints: Vec::new(),
    }
}
