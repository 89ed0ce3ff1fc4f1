//! The applied state, as the planner wrote it to the maps: Service ports
//! (each with its id, its backends and its tables) and the frontends that
//! point at them. Read by the planner, the pass-through filter, and from
//! the pins by a restarted agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use lb_common::{BackendId, InternalTable, ServiceEntry, SERVICE_F_INTERNAL_TABLE};

use crate::desired::{
    AddrFamily, BackendInfo, DesiredFrontend, ObjectName, Protocol, TrafficPolicy,
};

/// A backend of a Service port as applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedBackend {
    /// Its id in the backends array.
    pub id: BackendId,
    /// More entries of the same endpoint with the same contents, taken over
    /// from frontends that had entries of their own (layout v5, or a
    /// frontend that moved between Service ports): never in a table, kept
    /// for the established flows that use them, cleared with the backend.
    pub aliases: Vec<BackendId>,
    /// Whether it runs on this node.
    pub local: bool,
    /// Whether it takes new connections under the `Cluster` policy.
    pub for_cluster: bool,
    /// Whether it takes new connections under the `Local` policy.
    pub for_local: bool,
}

impl From<&AppliedBackend> for BackendInfo {
    fn from(b: &AppliedBackend) -> Self {
        BackendInfo {
            local: b.local,
            for_cluster: b.for_cluster,
            for_local: b.for_local,
        }
    }
}

impl AppliedBackend {
    /// Whether it takes new connections under `policy`.
    #[must_use]
    pub fn selected_under(&self, policy: TrafficPolicy) -> bool {
        match policy {
            TrafficPolicy::Cluster => self.for_cluster,
            TrafficPolicy::Local => self.for_local,
        }
    }

    /// Its id and its aliases'.
    pub fn ids(&self) -> impl Iterator<Item = BackendId> + '_ {
        std::iter::once(self.id).chain(self.aliases.iter().copied())
    }
}

/// A Maglev table in the slab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedTable {
    /// First slot.
    pub offset: u32,
    /// Slots (a prime); 0 without backends.
    pub size: u32,
    /// Distinct backends in it.
    pub count: u32,
}

impl From<AppliedTable> for InternalTable {
    fn from(t: AppliedTable) -> Self {
        InternalTable {
            backend_count: t.count,
            table_offset: t.offset,
            table_size: t.size,
        }
    }
}

/// The Service port a set of frontends shares: namespace/name, port name and
/// protocol (a port whose protocol changes is another port: its backends
/// serve another protocol).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortName {
    /// The Service.
    pub service: ObjectName,
    /// The port's name ("" when unnamed).
    pub port: String,
    /// The port's protocol.
    pub proto: Protocol,
}

impl PortName {
    /// The Service port of frontend `frontend` as `want` has it.
    #[must_use]
    pub fn of<S: AddrFamily>(frontend: S::Frontend, want: &DesiredFrontend<S>) -> Self {
        Self {
            service: want.service.clone(),
            port: want.port_name.clone(),
            proto: S::proto(&frontend),
        }
    }

    /// The label of its IPv4 id in the service labels map:
    /// "namespace/name:port" (the protocol is its frontends').
    #[must_use]
    pub fn label(&self) -> String {
        self.label_in::<SocketAddrV4>()
    }

    /// The label of its id in family `S`: IPv4's as [`PortName::label`],
    /// IPv6's with "/IPv6" after it (a port name, a DNS label, has no '/').
    #[must_use]
    pub fn label_in<S: AddrFamily>(&self) -> String {
        format!("{}:{}{}", self.service, self.port, S::LABEL_SUFFIX)
    }

    /// Parses a label of family `S` (see [`PortName::label_in`]); `None`
    /// for another family's, or as [`PortName::from_label`] says.
    #[must_use]
    pub fn from_label_in<S: AddrFamily>(label: &str) -> Option<(ObjectName, String)> {
        let label = if S::LABEL_SUFFIX.is_empty() {
            label
        } else {
            label.strip_suffix(S::LABEL_SUFFIX)?
        };
        let (service, port) = Self::from_label(label)?;
        // What is left of another family's label still has its '/'.
        (!port.contains('/')).then_some((service, port))
    }

    /// Parses a label into the Service and port name; `None` for an earlier
    /// layout's "namespace/name" (one id per frontend, its port unknown) or
    /// a malformed one.
    #[must_use]
    pub fn from_label(label: &str) -> Option<(ObjectName, String)> {
        let (service, port) = label.split_once(':')?;
        let (namespace, name) = service.split_once('/')?;
        let service = ObjectName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        Some((service, port.to_string()))
    }
}

/// A Service port as applied, in family `S` (IPv4 by default): what its
/// frontends share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedPort<S: AddrFamily = SocketAddrV4> {
    /// Its service id (`ServiceEntry::id`).
    pub id: u32,
    /// Which Service port; `None` for one adopted from a layout that did
    /// not say (it is claimed by the first of its frontends placed again).
    pub name: Option<PortName>,
    /// The Service this id was labelled for (status, errors).
    pub service: ObjectName,
    /// The protocol of its frontends (for the filter bits of its backends).
    pub proto: Protocol,
    /// Its backends.
    pub backends: BTreeMap<S, AppliedBackend>,
    /// Its table under the `Cluster` policy, when a frontend uses it.
    pub cluster_table: Option<AppliedTable>,
    /// Its table under the `Local` policy, when a frontend uses it.
    pub local_table: Option<AppliedTable>,
    /// What the in-cluster tables map holds at its id.
    pub internal_written: Option<AppliedTable>,
    /// Source ranges written under its id (its frontends' together), sorted.
    pub source_ranges: Vec<S::Range>,
    /// `sessionAffinity: ClientIP` timeout (0: none).
    pub affinity_timeout: u32,
    /// Whether the Service port has a usable endpoint anywhere.
    pub has_endpoints: bool,
    /// The frontends that point at it.
    pub frontends: BTreeSet<S::Frontend>,
}

impl<S: AddrFamily> AppliedPort<S> {
    /// Its table under `policy`.
    #[must_use]
    pub fn table(&self, policy: TrafficPolicy) -> Option<AppliedTable> {
        match policy {
            TrafficPolicy::Cluster => self.cluster_table,
            TrafficPolicy::Local => self.local_table,
        }
    }

    /// Whether its two policies select differently.
    #[must_use]
    pub fn policies_differ(&self) -> bool {
        self.backends.values().any(|b| b.for_cluster != b.for_local)
    }
}

/// A frontend as applied to the maps: its service entry, and what it shares
/// with the other frontends of its Service port, as one view (for the
/// pass-through filter, `status` and tests), in family `S` (IPv4 by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedFrontend<S: AddrFamily = SocketAddrV4> {
    /// The frontend.
    pub frontend: S::Frontend,
    /// Its Service.
    pub service: ObjectName,
    /// The Service port's name, when known.
    pub port_name: Option<String>,
    /// The service entry as written (its `id` is the Service port's).
    pub entry: ServiceEntry,
    /// The Service port's backends with their ids.
    pub backends: BTreeMap<S, AppliedBackend>,
    /// Source ranges written under the Service port's id, sorted.
    pub source_ranges: Vec<S::Range>,
    /// The table pods use, when it has one of its own.
    pub internal: Option<InternalTable>,
    /// A node port's node-port addresses, as its filter bits cover them.
    pub node_port_addrs: Vec<S::Ip>,
}

impl<S: AddrFamily> AppliedFrontend<S> {
    /// The policy whose backends take new connections from outside
    /// (`pods`: from pods) through it, as its entry's flags say.
    #[must_use]
    pub fn policy_for(&self, pods: bool) -> TrafficPolicy {
        if pods && self.entry.flags & SERVICE_F_INTERNAL_TABLE != 0 {
            TrafficPolicy::Cluster
        } else if self.entry.flags & lb_common::SERVICE_F_LOCAL != 0 {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        }
    }

    /// Whether new connections from outside (`pods`: from pods) may go to
    /// `backend` through it.
    #[must_use]
    pub fn selects(&self, backend: &AppliedBackend, pods: bool) -> bool {
        backend.selected_under(self.policy_for(pods))
    }
}
