//! The desired data-path state: what the maps should hold, decided from the model.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

pub mod family;
#[cfg(test)]
mod family_tests;

pub use self::family::{AddrFamily, FamilyIp, FilterSeed, FrontendV6, Listen6};
pub use crate::ident::{ObjectName, Protocol};
pub use crate::model::{SourceRange, SourceRangeV6, TrafficPolicy};

/// One frontend of a Service: the address, port and protocol a client sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// Virtual address (ClusterIP).
    pub addr: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Transport protocol.
    pub proto: Protocol,
}

impl Frontend {
    /// The services-map key of this frontend (network byte order).
    #[must_use]
    pub fn key(&self) -> lb_common::ServiceKey {
        lb_common::ServiceKey {
            addr: u32::from_ne_bytes(self.addr.octets()),
            port: self.port.to_be(),
            proto: self.proto.number(),
            pad: 0,
        }
    }
}

impl Frontend {
    /// A node port: served on every node-port address, keyed at address 0.
    #[must_use]
    pub fn node_port(port: u16, proto: Protocol) -> Self {
        Self {
            addr: Ipv4Addr::UNSPECIFIED,
            port,
            proto,
        }
    }

    /// Whether it is a node port.
    #[must_use]
    pub fn is_node_port(&self) -> bool {
        self.addr.is_unspecified()
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_node_port() {
            write!(f, "*:{}/{}", self.port, self.proto)
        } else {
            write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
        }
    }
}

/// Properties of one endpoint of a Service port, the same for every
/// frontend of the port: where it runs, and whether it takes new
/// connections under each traffic policy. A backend that is listed but not
/// selected (not ready, terminating, filtered by a traffic policy or by
/// topology) keeps only the connections it already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendInfo {
    /// The endpoint runs on this node: keep the client address, no SNAT.
    pub local: bool,
    /// New connections may go to it under the `Cluster` policy (it is in
    /// the Service port's table of that policy).
    pub for_cluster: bool,
    /// New connections may go to it under the `Local` policy.
    pub for_local: bool,
}

impl Default for BackendInfo {
    fn default() -> Self {
        Self {
            local: false,
            for_cluster: true,
            for_local: true,
        }
    }
}

impl BackendInfo {
    /// Whether new connections may go to it under `policy`.
    #[must_use]
    pub fn selected_under(&self, policy: TrafficPolicy) -> bool {
        match policy {
            TrafficPolicy::Cluster => self.for_cluster,
            TrafficPolicy::Local => self.for_local,
        }
    }
}

/// What the agent knows about its own node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name (endpoints' `nodeName`).
    pub name: String,
    /// Its zone (`topology.kubernetes.io/zone`), for topology-aware routing.
    pub zone: Option<String>,
    /// Its own addresses (`--node-ip`, its Node's `InternalIP` and `ExternalIP`).
    pub addresses: Vec<Ipv4Addr>,
    /// Every IPv4 address of its interfaces (the agent's interface scan),
    /// loopback ones included or not: [`NodeInfo::owns`] skips them.
    pub local_addresses: Vec<Ipv4Addr>,
    /// The addresses that serve node ports, sorted (see
    /// [`crate::node_ports`]); `None`: its own addresses.
    pub node_port_addresses: Option<Vec<Ipv4Addr>>,
    /// Its IPv6 addresses, as the fields above are for IPv4.
    pub v6: NodeAddrs6,
}

/// A node's IPv6 addresses: the IPv6 twins of [`NodeInfo`]'s address fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs6 {
    /// Its own IPv6 addresses (its Node's `InternalIP` and `ExternalIP`).
    pub addresses: Vec<Ipv6Addr>,
    /// Every IPv6 address of its interfaces, loopback and link-local ones
    /// included or not: [`NodeInfo::owns6`] skips them.
    pub local_addresses: Vec<Ipv6Addr>,
    /// The IPv6 addresses that serve node ports, sorted (see
    /// [`crate::node_ports`]); `None`: its own IPv6 addresses.
    pub node_port_addresses: Option<Vec<Ipv6Addr>>,
}

impl NodeInfo {
    /// This node with what its Node object adds: the zone when none was
    /// given, and its addresses besides the configured ones.
    #[must_use]
    pub fn merged(&self, facts: Option<&crate::model::NodeFacts>) -> Self {
        let mut node = self.clone();
        if let Some(facts) = facts {
            if node.zone.is_none() {
                node.zone.clone_from(&facts.zone);
            }
            for addr in &facts.addresses {
                if !node.addresses.contains(addr) {
                    node.addresses.push(*addr);
                }
            }
            for addr in &facts.addresses_v6 {
                if !node.v6.addresses.contains(addr) {
                    node.v6.addresses.push(*addr);
                }
            }
        }
        node
    }

    /// Whether `addr` is one of this node's addresses (its own or one of its
    /// interfaces', loopback aside): an endpoint there is the node itself
    /// (a hostNetwork server, the API server of a control-plane node),
    /// local whatever its `nodeName` says.
    #[must_use]
    pub fn owns(&self, addr: Ipv4Addr) -> bool {
        !addr.is_loopback()
            && !addr.is_unspecified()
            && (self.addresses.contains(&addr) || self.local_addresses.contains(&addr))
    }

    /// The addresses that serve node ports: those set, or else its own.
    #[must_use]
    pub fn node_port_addresses(&self) -> Vec<Ipv4Addr> {
        if let Some(chosen) = &self.node_port_addresses {
            chosen.clone()
        } else {
            let mut own = self.addresses.clone();
            own.sort_unstable();
            own.dedup();
            own
        }
    }

    /// Whether `addr` is one of this node's IPv6 addresses, as
    /// [`NodeInfo::owns`] says for IPv4. Link-local addresses are nobody's:
    /// every node may have the same one on a link of its own.
    #[must_use]
    pub fn owns6(&self, addr: Ipv6Addr) -> bool {
        !addr.is_loopback()
            && !addr.is_unspecified()
            && !addr.is_unicast_link_local()
            && (self.v6.addresses.contains(&addr) || self.v6.local_addresses.contains(&addr))
    }

    /// The IPv6 addresses that serve node ports: those set, or else its own.
    #[must_use]
    pub fn node_port_addresses6(&self) -> Vec<Ipv6Addr> {
        if let Some(chosen) = &self.v6.node_port_addresses {
            chosen.clone()
        } else {
            let mut own = self.v6.addresses.clone();
            own.sort_unstable();
            own.dedup();
            own
        }
    }
}

impl<S: AddrFamily> DesiredFrontend<S> {
    /// Whether the two policies select differently (then a frontend that
    /// follows `Local` needs a table of its own policy).
    #[must_use]
    pub fn policies_differ(&self) -> bool {
        self.backends.values().any(|b| b.for_cluster != b.for_local)
    }

    /// The policy whose table the frontend's own entry points at: `Local`
    /// only where it selects otherwise than `Cluster`.
    #[must_use]
    pub fn table_policy(&self) -> TrafficPolicy {
        effective(self.policy, self.policies_differ())
    }

    /// Whether pods use another table than clients from outside (the
    /// `Cluster` policy's, where the frontend's own follows `Local`).
    #[must_use]
    pub fn has_internal_table(&self) -> bool {
        let differ = self.policies_differ();
        effective(self.policy, differ) == TrafficPolicy::Local
            && effective(self.pods_policy, differ) == TrafficPolicy::Cluster
    }

    /// Whether new connections from outside (`pods`: from pods) may go to
    /// the backend `info` of this frontend.
    #[must_use]
    pub fn selects(&self, info: &BackendInfo, pods: bool) -> bool {
        let policy = if pods && self.has_internal_table() {
            TrafficPolicy::Cluster
        } else {
            self.table_policy()
        };
        info.selected_under(policy)
    }
}

/// The policy a frontend following `policy` uses: `Local` only where the
/// two policies select differently (`differ`); else the one table serves.
#[must_use]
pub fn effective(policy: TrafficPolicy, differ: bool) -> TrafficPolicy {
    if differ {
        policy
    } else {
        TrafficPolicy::Cluster
    }
}

/// What one frontend should balance to, in family `S` (named by its
/// backends' socket address; IPv4 by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend<S: AddrFamily = SocketAddrV4> {
    /// The Service this frontend belongs to.
    pub service: ObjectName,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// The Service port's endpoints (address and target port), ordered and
    /// unique: the same for every frontend of the port.
    pub backends: BTreeMap<S, BackendInfo>,
    /// The traffic policy the frontend follows for clients from outside the
    /// cluster: `internalTrafficPolicy` for a cluster IP,
    /// `externalTrafficPolicy` for the others.
    pub policy: TrafficPolicy,
    /// The one it follows for pods: a cluster IP's own, `Cluster` for the
    /// others (kube-proxy's short-circuit of in-cluster traffic).
    pub pods_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
    /// Whether the Service port has a usable endpoint anywhere in the
    /// cluster (ready, or else serving and terminating): kube-proxy's
    /// "has endpoints". Without one, new connections to the frontend are
    /// refused (ICMP port unreachable, kube-proxy's REJECT); with one but no
    /// backend selected here (a `Local` traffic policy on a node without a
    /// local endpoint), they are dropped, as kube-proxy drops them.
    pub has_endpoints: bool,
    /// The clients that may open connections (`loadBalancerSourceRanges`
    /// of a load-balancer IP), sorted and unique; empty: any client.
    pub source_ranges: Vec<S::Range>,
    /// A node port's (address 0) node-port addresses, sorted: where it is
    /// served (for the pass-through filter's bits); empty for other frontends.
    pub node_port_addrs: Vec<S::Ip>,
}

/// The whole desired state: every frontend the maps should hold.
pub type DesiredState = BTreeMap<Frontend, DesiredFrontend>;

/// The whole desired IPv6 state: every IPv6 frontend the maps should hold.
pub type DesiredState6 = BTreeMap<FrontendV6, DesiredFrontend<SocketAddrV6>>;
