//! The map operations of each family: [`FamilyOps`] names the `MapOp`
//! variants that write a family's own maps (services, backends, source
//! ranges, node-port addresses), so the planner is written once. The slab,
//! the pods' tables, labels and filter words are shared: their operations
//! are the same for both.

use std::net::{SocketAddrV4, SocketAddrV6};

use lb_common::BackendId;

use super::MapOp;
use crate::desired::AddrFamily;

/// A family the planner can write: its map operations, and the backend
/// names Maglev hashes.
pub trait FamilyOps: AddrFamily + crate::maglev::Member {
    /// Publish a service entry.
    fn set_service(key: Self::Key, entry: lb_common::ServiceEntry) -> MapOp;
    /// Remove a service entry.
    fn delete_service(key: Self::Key) -> MapOp;
    /// Write a backend entry.
    fn set_backend(id: BackendId, entry: Self::Entry) -> MapOp;
    /// Clear a backend entry.
    fn clear_backend(id: BackendId) -> MapOp;
    /// Allow a client range for a service id.
    fn set_source_range(service_id: u32, range: Self::Range) -> MapOp;
    /// Remove a client range of a service id.
    fn delete_source_range(service_id: u32, range: Self::Range) -> MapOp;
    /// Serve node ports on an address.
    fn set_node_port_addr(addr: Self::Ip) -> MapOp;
    /// Stop serving node ports on an address.
    fn delete_node_port_addr(addr: Self::Ip) -> MapOp;
}

impl FamilyOps for SocketAddrV4 {
    fn set_service(key: Self::Key, entry: lb_common::ServiceEntry) -> MapOp {
        MapOp::SetService(key, entry)
    }
    fn delete_service(key: Self::Key) -> MapOp {
        MapOp::DeleteService(key)
    }
    fn set_backend(id: BackendId, entry: Self::Entry) -> MapOp {
        MapOp::SetBackend(id, entry)
    }
    fn clear_backend(id: BackendId) -> MapOp {
        MapOp::ClearBackend(id)
    }
    fn set_source_range(service_id: u32, range: Self::Range) -> MapOp {
        MapOp::SetSourceRange(service_id, range)
    }
    fn delete_source_range(service_id: u32, range: Self::Range) -> MapOp {
        MapOp::DeleteSourceRange(service_id, range)
    }
    fn set_node_port_addr(addr: Self::Ip) -> MapOp {
        MapOp::SetNodePortAddr(addr)
    }
    fn delete_node_port_addr(addr: Self::Ip) -> MapOp {
        MapOp::DeleteNodePortAddr(addr)
    }
}

impl FamilyOps for SocketAddrV6 {
    fn set_service(key: Self::Key, entry: lb_common::ServiceEntry) -> MapOp {
        MapOp::SetService6(key, entry)
    }
    fn delete_service(key: Self::Key) -> MapOp {
        MapOp::DeleteService6(key)
    }
    fn set_backend(id: BackendId, entry: Self::Entry) -> MapOp {
        MapOp::SetBackend6(id, entry)
    }
    fn clear_backend(id: BackendId) -> MapOp {
        MapOp::ClearBackend6(id)
    }
    fn set_source_range(service_id: u32, range: Self::Range) -> MapOp {
        MapOp::SetSourceRange6(service_id, range)
    }
    fn delete_source_range(service_id: u32, range: Self::Range) -> MapOp {
        MapOp::DeleteSourceRange6(service_id, range)
    }
    fn set_node_port_addr(addr: Self::Ip) -> MapOp {
        MapOp::SetNodePortAddr6(addr)
    }
    fn delete_node_port_addr(addr: Self::Ip) -> MapOp {
        MapOp::DeleteNodePortAddr6(addr)
    }
}
