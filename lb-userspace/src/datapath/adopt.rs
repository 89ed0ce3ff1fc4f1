//! Reading back what an earlier agent left in the pinned maps, so a
//! restarted agent changes only what differs.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::Result;
use lb_common::{
    BACKEND_F_ACTIVE, BACKEND_F_LOCAL, BACKEND_F_SELECTED, BACKEND_F_SELECTED_LOCAL, IPPROTO_TCP,
    IPPROTO_UDP, SERVICE_F_INTERNAL_TABLE,
};

use super::{decode_label, maps::Maps, writer::source_range_of};
use crate::{
    desired::{Frontend, ObjectName, Protocol, SourceRange},
    plan::{AppliedBackend, AppliedFrontend, PortName},
};

impl Maps {
    /// Every frontend the maps hold, each with its Service port's backends
    /// (grouped by service id; more entries of one endpoint become aliases
    /// of the lowest), as the planner records them.
    pub fn applied_frontends(&self) -> Result<Vec<AppliedFrontend>> {
        let mut backends_of: BTreeMap<u32, BTreeMap<SocketAddrV4, AppliedBackend>> =
            BTreeMap::new();
        for (id, backend) in (0u32..).zip(self.backends.iter()) {
            let backend = backend?;
            if backend.flags & BACKEND_F_ACTIVE == 0 {
                continue;
            }
            let addr = SocketAddrV4::new(
                Ipv4Addr::from(backend.addr.to_ne_bytes()),
                u16::from_be(backend.port),
            );
            let port = backends_of.entry(backend.service_id).or_default();
            if let Some(first) = port.get_mut(&addr) {
                first.aliases.push(id);
                continue;
            }
            port.insert(
                addr,
                AppliedBackend {
                    id,
                    aliases: Vec::new(),
                    local: backend.flags & BACKEND_F_LOCAL != 0,
                    for_cluster: backend.flags & BACKEND_F_SELECTED != 0,
                    for_local: backend.flags & BACKEND_F_SELECTED_LOCAL != 0,
                },
            );
        }
        let mut ranges_of: BTreeMap<u32, Vec<SourceRange>> = BTreeMap::new();
        for key in self.source_ranges.keys() {
            let (id, range) = source_range_of(&key?);
            ranges_of.entry(id).or_default().push(range);
        }
        for ranges in ranges_of.values_mut() {
            ranges.sort_unstable();
        }
        let mut node_port_addrs = self.node_port_addresses()?;
        node_port_addrs.sort_unstable();
        let mut frontends = Vec::new();
        for item in &self.services {
            let (key, entry) = item?;
            let proto = match key.proto {
                IPPROTO_TCP => Protocol::Tcp,
                IPPROTO_UDP => Protocol::Udp,
                _ => continue,
            };
            let label = self
                .labels
                .get(&entry.id, 0)
                .map(|l| decode_label(&l))
                .unwrap_or_default();
            // "namespace/name:port" since v6; "namespace/name" before.
            let (service, port_name) = if let Some((service, port)) = PortName::from_label(&label) {
                (service, Some(port))
            } else {
                let (namespace, name) = label.split_once('/').unwrap_or(("", ""));
                let service = ObjectName {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                };
                (service, None)
            };
            frontends.push(AppliedFrontend {
                frontend: Frontend {
                    addr: Ipv4Addr::from(key.addr.to_ne_bytes()),
                    port: u16::from_be(key.port),
                    proto,
                },
                service,
                port_name,
                entry,
                backends: backends_of.get(&entry.id).cloned().unwrap_or_default(),
                node_port_addrs: if key.addr == lb_common::NODE_PORT_ADDR {
                    node_port_addrs.clone()
                } else {
                    Vec::new()
                },
                internal: (entry.flags & SERVICE_F_INTERNAL_TABLE != 0)
                    .then(|| self.internal_tables.get(&entry.id, 0).ok())
                    .flatten(),
                source_ranges: ranges_of.get(&entry.id).cloned().unwrap_or_default(),
            });
        }
        Ok(frontends)
    }
}
