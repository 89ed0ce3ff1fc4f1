//! The frontend a packet is addressed to: its exact (address, port,
//! protocol) in `SERVICES`, else a node port (a frontend of address
//! `NODE_PORT_ADDR`) when its destination is one of the node-port addresses
//! (`NODE_PORT_ADDRS`). An exact frontend wins, as kube-proxy matches
//! cluster, external and load-balancer IPs before node ports; the second
//! lookups happen only for packets the first one missed.

use lb_common::{ServiceEntry, ServiceKey, NODE_PORT_ADDR};

use crate::{
    maps::{NODE_PORT_ADDRS, SERVICES},
    parse::Flow,
};

/// A copy of the service entry of the frontend `flow` is addressed to.
#[inline(always)]
pub fn lookup(flow: &Flow) -> Option<ServiceEntry> {
    lookup_at(flow.dst, flow.dport, flow.proto)
}

/// A copy of the service entry of the frontend at `addr`:`port` (network
/// order) of protocol `proto`.
#[inline(always)]
pub fn lookup_at(addr: u32, port: u16, proto: u8) -> Option<ServiceEntry> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: SERVICES has no prealloc (see maps.rs): the value stays valid
    // for this RCU read section and is copied out at once.
    if let Some(svc) = unsafe { SERVICES.get(key) } {
        return Some(*svc);
    }
    // SAFETY: a presence check only; nothing is read through the pointer.
    unsafe { NODE_PORT_ADDRS.get(addr) }?;
    key.addr = NODE_PORT_ADDR;
    // SAFETY: as above.
    unsafe { SERVICES.get(key) }.copied()
}
