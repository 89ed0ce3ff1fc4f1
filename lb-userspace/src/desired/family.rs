//! The address family of the desired state: [`AddrFamily`], one sealed
//! trait over the backend's socket-address type (`SocketAddrV4` or
//! `SocketAddrV6`), names each family's frontend, source range, map key
//! and backends-array entry, so selection and the planner are written once
//! and IPv4 keeps its types (the parameter defaults to `SocketAddrV4`).
//! [`FamilyIp`] is the same family seen from an endpoint's IP address.

use std::{
    fmt,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use lb_common::{
    filter_bit, filter_bit6,
    maps6::{ipv6_words, Backend6, ServiceKey6, NODE_PORT_ADDR6},
    Backend, Family, ServiceKey, FILTER_SEED_BACKEND, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND,
    FILTER_SEED_FRONTEND6,
};

use super::{Frontend, NodeInfo, Protocol};
use crate::model::{ServiceSpec, SourceRange, SourceRangeV6};

mod sealed {
    /// Only the two IP families implement the family traits.
    pub trait Sealed {}
    impl Sealed for std::net::SocketAddrV4 {}
    impl Sealed for std::net::SocketAddrV6 {}
    impl Sealed for std::net::Ipv4Addr {}
    impl Sealed for std::net::Ipv6Addr {}
}

/// Which of the pass-through filter's hashes a bit is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterSeed {
    /// A frontend's (destination address and port).
    Frontend,
    /// A backend's (source address and port of its replies).
    Backend,
}

/// An IP family, named by its backends' socket-address type.
pub trait AddrFamily:
    sealed::Sealed + Copy + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static
{
    /// The family's IP address.
    type Ip: FamilyIp<Socket = Self>;
    /// One frontend (address or node port, port, protocol).
    type Frontend: Copy + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static;
    /// A `loadBalancerSourceRanges` CIDR.
    type Range: Copy + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static;
    /// The services map's key.
    type Key: Copy + Ord + Hash + fmt::Debug + Send + Sync + 'static;
    /// The backends array's value.
    type Entry: Copy + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// The family's block of the per-family counters.
    const FAMILY: Family;
    /// What a Service port's label ends with (`""` for IPv4, so its labels
    /// keep their meaning).
    const LABEL_SUFFIX: &'static str;

    /// The socket address `ip`:`port`.
    fn new(ip: Self::Ip, port: u16) -> Self;
    /// Its address.
    fn ip_of(&self) -> Self::Ip;
    /// Its port.
    fn port_of(&self) -> u16;
    /// The backends-array entry of this endpoint (`flags`: `BACKEND_F_*`).
    fn entry(&self, flags: u8, service_id: u32) -> Self::Entry;

    /// The frontend at `ip`:`port`.
    fn frontend(ip: Self::Ip, port: u16, proto: Protocol) -> Self::Frontend;
    /// The node port `port`, served on every node-port address.
    fn node_port(port: u16, proto: Protocol) -> Self::Frontend;
    /// A frontend's address (`None`: a node port).
    fn frontend_ip(frontend: &Self::Frontend) -> Option<Self::Ip>;
    /// A frontend's port.
    fn frontend_port(frontend: &Self::Frontend) -> u16;
    /// A frontend's protocol.
    fn proto(frontend: &Self::Frontend) -> Protocol;
    /// A frontend's services-map key (a node port's at the family's address 0).
    fn key(frontend: &Self::Frontend) -> Self::Key;
    /// Whether a frontend is a node port.
    fn is_node_port(frontend: &Self::Frontend) -> bool {
        Self::frontend_ip(frontend).is_none()
    }
    /// Whether a frontend is one of `service`'s cluster IPs.
    fn is_cluster_ip(service: &ServiceSpec, frontend: &Self::Frontend) -> bool;

    /// The pass-through filter's bit of `ip`:`port` (host order) for `proto`.
    fn filter_bit(seed: FilterSeed, ip: Self::Ip, port: u16, proto: Protocol) -> u32;

    /// The node's addresses of this family that serve node ports, sorted.
    fn node_port_addrs(node: &NodeInfo) -> Vec<Self::Ip>;
}

/// An IP address of one family: what an endpoint has.
pub trait FamilyIp:
    sealed::Sealed + Copy + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static
{
    /// The family's socket address.
    type Socket: AddrFamily<Ip = Self>;
    /// Whether it is one of `node`'s addresses (see [`NodeInfo::owns`]).
    fn owned_by(self, node: &NodeInfo) -> bool;
}

impl FamilyIp for Ipv4Addr {
    type Socket = SocketAddrV4;

    fn owned_by(self, node: &NodeInfo) -> bool {
        node.owns(self)
    }
}

impl FamilyIp for Ipv6Addr {
    type Socket = SocketAddrV6;

    fn owned_by(self, node: &NodeInfo) -> bool {
        node.owns6(self)
    }
}

impl AddrFamily for SocketAddrV4 {
    type Ip = Ipv4Addr;
    type Frontend = Frontend;
    type Range = SourceRange;
    type Key = ServiceKey;
    type Entry = Backend;

    const FAMILY: Family = Family::Ipv4;
    const LABEL_SUFFIX: &'static str = "";

    fn new(ip: Ipv4Addr, port: u16) -> Self {
        SocketAddrV4::new(ip, port)
    }

    fn ip_of(&self) -> Ipv4Addr {
        *self.ip()
    }

    fn port_of(&self) -> u16 {
        self.port()
    }

    fn entry(&self, flags: u8, service_id: u32) -> Backend {
        Backend {
            addr: u32::from_ne_bytes(self.ip().octets()),
            port: self.port().to_be(),
            flags,
            pad: 0,
            service_id,
        }
    }

    fn frontend(ip: Ipv4Addr, port: u16, proto: Protocol) -> Frontend {
        Frontend {
            addr: ip,
            port,
            proto,
        }
    }

    fn node_port(port: u16, proto: Protocol) -> Frontend {
        Frontend::node_port(port, proto)
    }

    fn frontend_ip(frontend: &Frontend) -> Option<Ipv4Addr> {
        (!frontend.is_node_port()).then_some(frontend.addr)
    }

    fn frontend_port(frontend: &Frontend) -> u16 {
        frontend.port
    }

    fn proto(frontend: &Frontend) -> Protocol {
        frontend.proto
    }

    fn key(frontend: &Frontend) -> ServiceKey {
        frontend.key()
    }

    fn is_cluster_ip(service: &ServiceSpec, frontend: &Frontend) -> bool {
        service.cluster_ips.contains(&frontend.addr)
    }

    fn filter_bit(seed: FilterSeed, ip: Ipv4Addr, port: u16, proto: Protocol) -> u32 {
        let seed = match seed {
            FilterSeed::Frontend => FILTER_SEED_FRONTEND,
            FilterSeed::Backend => FILTER_SEED_BACKEND,
        };
        filter_bit(
            seed,
            u32::from_ne_bytes(ip.octets()),
            port.to_be(),
            proto.number(),
        )
    }

    fn node_port_addrs(node: &NodeInfo) -> Vec<Ipv4Addr> {
        node.node_port_addresses()
    }
}

impl AddrFamily for SocketAddrV6 {
    type Ip = Ipv6Addr;
    type Frontend = FrontendV6;
    type Range = SourceRangeV6;
    type Key = ServiceKey6;
    type Entry = Backend6;

    const FAMILY: Family = Family::Ipv6;
    const LABEL_SUFFIX: &'static str = "/IPv6";

    fn new(ip: Ipv6Addr, port: u16) -> Self {
        SocketAddrV6::new(ip, port, 0, 0)
    }

    fn ip_of(&self) -> Ipv6Addr {
        *self.ip()
    }

    fn port_of(&self) -> u16 {
        self.port()
    }

    fn entry(&self, flags: u8, service_id: u32) -> Backend6 {
        Backend6 {
            addr: ipv6_words(self.ip().octets()),
            port: self.port().to_be(),
            flags,
            pad: 0,
            service_id,
        }
    }

    fn frontend(ip: Ipv6Addr, port: u16, proto: Protocol) -> FrontendV6 {
        FrontendV6 {
            listen: Listen6::Addr(ip, port),
            proto,
        }
    }

    fn node_port(port: u16, proto: Protocol) -> FrontendV6 {
        FrontendV6::node_port(port, proto)
    }

    fn frontend_ip(frontend: &FrontendV6) -> Option<Ipv6Addr> {
        match frontend.listen {
            Listen6::Addr(ip, _) => Some(ip),
            Listen6::NodePort(_) => None,
        }
    }

    fn frontend_port(frontend: &FrontendV6) -> u16 {
        frontend.port()
    }

    fn proto(frontend: &FrontendV6) -> Protocol {
        frontend.proto
    }

    fn key(frontend: &FrontendV6) -> ServiceKey6 {
        frontend.key()
    }

    fn is_cluster_ip(service: &ServiceSpec, frontend: &FrontendV6) -> bool {
        Self::frontend_ip(frontend).is_some_and(|ip| {
            service
                .v6
                .as_ref()
                .is_some_and(|v6| v6.cluster_ips.contains(&ip))
        })
    }

    fn filter_bit(seed: FilterSeed, ip: Ipv6Addr, port: u16, proto: Protocol) -> u32 {
        let seed = match seed {
            FilterSeed::Frontend => FILTER_SEED_FRONTEND6,
            FilterSeed::Backend => FILTER_SEED_BACKEND6,
        };
        filter_bit6(seed, ipv6_words(ip.octets()), port.to_be(), proto.number())
    }

    fn node_port_addrs(node: &NodeInfo) -> Vec<Ipv6Addr> {
        node.node_port_addresses6()
    }
}

/// Where an IPv6 frontend listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Listen6 {
    /// An address (cluster, external or load-balancer IP) and the Service port.
    Addr(Ipv6Addr, u16),
    /// A nodePort on the node's IPv6 addresses.
    NodePort(u16),
}

/// One IPv6 frontend of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendV6 {
    /// Where it listens.
    pub listen: Listen6,
    /// Transport protocol.
    pub proto: Protocol,
}

impl FrontendV6 {
    /// A node port: served on every IPv6 node-port address.
    #[must_use]
    pub fn node_port(port: u16, proto: Protocol) -> Self {
        Self {
            listen: Listen6::NodePort(port),
            proto,
        }
    }

    /// Whether it is a node port.
    #[must_use]
    pub fn is_node_port(&self) -> bool {
        matches!(self.listen, Listen6::NodePort(_))
    }

    /// Its port (the Service port, or the node port).
    #[must_use]
    pub fn port(&self) -> u16 {
        match self.listen {
            Listen6::Addr(_, port) | Listen6::NodePort(port) => port,
        }
    }

    /// The IPv6 services-map key of this frontend (network byte order; a
    /// node port at [`NODE_PORT_ADDR6`]).
    #[must_use]
    pub fn key(&self) -> ServiceKey6 {
        let addr = match self.listen {
            Listen6::Addr(ip, _) => ipv6_words(ip.octets()),
            Listen6::NodePort(_) => NODE_PORT_ADDR6,
        };
        ServiceKey6 {
            addr,
            port: self.port().to_be(),
            proto: self.proto.number(),
            pad: 0,
        }
    }
}

impl fmt::Display for FrontendV6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.listen {
            Listen6::Addr(addr, port) => write!(f, "[{addr}]:{port}/{}", self.proto),
            Listen6::NodePort(port) => write!(f, "node port {port}/{}", self.proto),
        }
    }
}
