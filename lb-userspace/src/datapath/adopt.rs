//! Reading back what an earlier agent left in the pinned maps, so a
//! restarted agent changes only what differs.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use anyhow::Result;
use lb_common::{
    maps6::{ipv6_octets, NODE_PORT_ADDR6},
    BackendId, ServiceEntry, BACKEND_F_ACTIVE, BACKEND_F_LOCAL, BACKEND_F_SELECTED,
    BACKEND_F_SELECTED_LOCAL, IPPROTO_TCP, IPPROTO_UDP, SERVICE_F_INTERNAL_TABLE,
};

use super::{
    decode_label,
    maps::Maps,
    writer::{source_range_of, source_range_of6},
};
use crate::{
    desired::{AddrFamily, Frontend, FrontendV6, ObjectName, Protocol},
    plan::{AppliedBackend, AppliedFrontend, PortName},
};

/// Backends by service id, then by address.
type BackendsOf<S> = BTreeMap<u32, BTreeMap<S, AppliedBackend>>;

/// What one family's maps hold per Service port, read once for all its
/// frontends.
struct ByPort<S: AddrFamily> {
    /// Backends, by service id.
    backends: BackendsOf<S>,
    /// Source ranges, by service id, sorted.
    ranges: BTreeMap<u32, Vec<S::Range>>,
    /// Node-port addresses, sorted.
    node_port_addrs: Vec<S::Ip>,
}

impl Maps {
    /// Every frontend the maps hold, each with its Service port's backends
    /// (grouped by service id; more entries of one endpoint become aliases
    /// of the lowest), as the planner records them.
    pub fn applied_frontends(&self) -> Result<Vec<AppliedFrontend>> {
        let mut backends_of: BackendsOf<SocketAddrV4> = BTreeMap::new();
        for (id, backend) in (0u32..).zip(super::batch::read_array(&self.backends)?) {
            let addr = SocketAddrV4::new(
                Ipv4Addr::from(backend.addr.to_ne_bytes()),
                u16::from_be(backend.port),
            );
            group_backend(
                &mut backends_of,
                id,
                addr,
                backend.flags,
                backend.service_id,
            );
        }
        let by_port = ByPort {
            backends: backends_of,
            ranges: ranges_by_id(self.source_ranges.keys().map(|k| Ok(source_range_of(&k?))))?,
            node_port_addrs: sorted(self.node_port_addresses()?),
        };
        let mut frontends = Vec::new();
        for item in &self.services {
            let (key, entry) = item?;
            let Some(proto) = protocol(key.proto) else {
                continue;
            };
            let frontend = Frontend {
                addr: Ipv4Addr::from(key.addr.to_ne_bytes()),
                port: u16::from_be(key.port),
                proto,
            };
            frontends.push(self.applied(&by_port, frontend, entry));
        }
        Ok(frontends)
    }

    /// Every IPv6 frontend the maps hold, as [`Maps::applied_frontends`]
    /// reads IPv4's (the backend ids are of the space both share).
    pub fn applied_frontends6(&self) -> Result<Vec<AppliedFrontend<SocketAddrV6>>> {
        let mut backends_of: BackendsOf<SocketAddrV6> = BTreeMap::new();
        for (id, backend) in (0u32..).zip(super::batch::read_array(&self.backends6)?) {
            let addr = SocketAddrV6::new(
                Ipv6Addr::from(ipv6_octets(backend.addr)),
                u16::from_be(backend.port),
                0,
                0,
            );
            group_backend(
                &mut backends_of,
                id,
                addr,
                backend.flags,
                backend.service_id,
            );
        }
        let by_port = ByPort {
            backends: backends_of,
            ranges: ranges_by_id(
                self.source_ranges6
                    .keys()
                    .map(|k| Ok(source_range_of6(&k?))),
            )?,
            node_port_addrs: sorted(self.node_port_addresses6()?),
        };
        let mut frontends = Vec::new();
        for item in &self.services6 {
            let (key, entry) = item?;
            let Some(proto) = protocol(key.proto) else {
                continue;
            };
            let port = u16::from_be(key.port);
            let frontend = if key.addr == NODE_PORT_ADDR6 {
                FrontendV6::node_port(port, proto)
            } else {
                SocketAddrV6::frontend(Ipv6Addr::from(ipv6_octets(key.addr)), port, proto)
            };
            frontends.push(self.applied(&by_port, frontend, entry));
        }
        Ok(frontends)
    }

    /// The applied view of `frontend`, whose entry is `entry`.
    fn applied<S: AddrFamily>(
        &self,
        by_port: &ByPort<S>,
        frontend: S::Frontend,
        entry: ServiceEntry,
    ) -> AppliedFrontend<S> {
        let (service, port_name) = self.service_of::<S>(&entry);
        AppliedFrontend {
            frontend,
            service,
            port_name,
            entry,
            backends: by_port.backends.get(&entry.id).cloned().unwrap_or_default(),
            node_port_addrs: if S::is_node_port(&frontend) {
                by_port.node_port_addrs.clone()
            } else {
                Vec::new()
            },
            internal: (entry.flags & SERVICE_F_INTERNAL_TABLE != 0)
                .then(|| self.internal_tables.get(&entry.id, 0).ok())
                .flatten(),
            source_ranges: by_port.ranges.get(&entry.id).cloned().unwrap_or_default(),
        }
    }

    /// The Service and port name an entry's id is labelled with in family
    /// `S`: "namespace/name:port" (IPv6's with "/IPv6" after it) since v6;
    /// "namespace/name" before, its port unknown.
    fn service_of<S: AddrFamily>(&self, entry: &ServiceEntry) -> (ObjectName, Option<String>) {
        let label = self
            .labels
            .get(&entry.id, 0)
            .map(|l| decode_label(&l))
            .unwrap_or_default();
        if let Some((service, port)) = PortName::from_label_in::<S>(&label) {
            return (service, Some(port));
        }
        let service = label.split(':').next().unwrap_or_default();
        let (namespace, name) = service.split_once('/').unwrap_or(("", ""));
        let service = ObjectName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        (service, None)
    }
}

/// Source ranges grouped by service id, each group sorted.
fn ranges_by_id<R: Ord>(
    ranges: impl Iterator<Item = Result<(u32, R)>>,
) -> Result<BTreeMap<u32, Vec<R>>> {
    let mut by_id: BTreeMap<u32, Vec<R>> = BTreeMap::new();
    for item in ranges {
        let (id, range) = item?;
        by_id.entry(id).or_default().push(range);
    }
    for group in by_id.values_mut() {
        group.sort_unstable();
    }
    Ok(by_id)
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort_unstable();
    items
}

/// The protocol of a services-map key, if the planner writes it.
fn protocol(number: u8) -> Option<Protocol> {
    match number {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

/// Records backend entry `id` (an endpoint at `addr` of service id
/// `service_id`, flagged `flags`) in its Service port; a second entry of
/// the same endpoint is an alias of the first (lowest id). Inactive
/// entries are skipped.
fn group_backend<S: Ord>(
    backends_of: &mut BackendsOf<S>,
    id: BackendId,
    addr: S,
    flags: u8,
    service_id: u32,
) {
    if flags & BACKEND_F_ACTIVE == 0 {
        return;
    }
    let port = backends_of.entry(service_id).or_default();
    if let Some(first) = port.get_mut(&addr) {
        first.aliases.push(id);
        return;
    }
    port.insert(
        addr,
        AppliedBackend {
            id,
            aliases: Vec::new(),
            local: flags & BACKEND_F_LOCAL != 0,
            for_cluster: flags & BACKEND_F_SELECTED != 0,
            for_local: flags & BACKEND_F_SELECTED_LOCAL != 0,
        },
    );
}
