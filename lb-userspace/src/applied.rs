//! The applied state of a frontend, as the planner wrote it to the maps:
//! read by the planner and by the pass-through filter.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::{BackendId, InternalTable, ServiceEntry};

use crate::desired::{Frontend, ObjectName, SourceRange};

/// A backend as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedBackend {
    /// Its id in the backends array.
    pub id: BackendId,
    /// Whether it runs on this node.
    pub local: bool,
    /// Whether it is in the Maglev table (takes new connections).
    pub selected: bool,
    /// Whether it takes new connections from pods (see `BackendInfo`).
    pub selected_internal: bool,
}

/// A frontend as applied to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedFrontend {
    /// The frontend.
    pub frontend: Frontend,
    /// Its Service.
    pub service: ObjectName,
    /// The Service port's name.
    pub port_name: String,
    /// The service entry as written (its `id` is the service id).
    pub entry: ServiceEntry,
    /// Backends with their ids.
    pub backends: BTreeMap<SocketAddrV4, AppliedBackend>,
    /// Source ranges written under its service id, sorted.
    pub source_ranges: Vec<SourceRange>,
    /// The table pods use, when it has one of its own.
    pub internal: Option<InternalTable>,
    /// A node port's node-port addresses, as its filter bits cover them.
    pub node_port_addrs: Vec<Ipv4Addr>,
}
