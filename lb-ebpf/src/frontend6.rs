//! The IPv6 frontend a packet (or a socket, `sock6`) is addressed to: its
//! exact (address, port, protocol) in `SERVICES6` (cluster, external and
//! load-balancer IPs), else a node port (a frontend of address
//! `NODE_PORT_ADDR6`, `::`) when its destination is one of the IPv6
//! node-port addresses (`NODEPORT_ADDRS6`). An exact frontend wins, as for
//! IPv4 ([`crate::frontend`]); the second lookups happen only for packets
//! the first one missed.

// Keys and entries are passed as references into the scratch slot (or the
// map) on purpose: by value they would be copied onto the stack, which has
// no room to spare (see `lb6::Scratch6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{
    maps6::{ServiceKey6, NODE_PORT_ADDR6},
    ServiceEntry,
};

use crate::{
    maps6::{NODEPORT_ADDRS6, SERVICES6},
    parse6::Flow6,
};

/// A copy of the service entry of the IPv6 frontend `flow` is addressed
/// to; `key` is room for the lookup key (the scratch slot's: the packet
/// programs' stack has none to spare).
#[inline(always)]
pub fn lookup(flow: &Flow6, key: &mut ServiceKey6) -> Option<ServiceEntry> {
    *key = ServiceKey6 {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        pad: 0,
    };
    lookup_key(key)
}

/// A copy of the service entry of the IPv6 frontend at `addr`:`port`
/// (network order) of protocol `proto`, for a socket (`sock6`), whose
/// programs have stack to spare for the key.
#[inline(always)]
pub fn lookup_at(addr: &[u32; 4], port: u16, proto: u8) -> Option<ServiceEntry> {
    let mut key = ServiceKey6 {
        addr: *addr,
        port,
        proto,
        pad: 0,
    };
    lookup_key(&mut key)
}

/// The entry of the frontend `key` names, else of the node port at its
/// port and protocol when its address is a node-port address (`key` then
/// names the node port).
#[inline(always)]
fn lookup_key(key: &mut ServiceKey6) -> Option<ServiceEntry> {
    let svc = SERVICES6.get_ptr(&*key).or_else(|| {
        // A presence check only; nothing is read through the pointer. The
        // key's copy of the destination, not the flow's: taking the flow's
        // address would keep the whole flow on the stack.
        NODEPORT_ADDRS6.get_ptr(&key.addr)?;
        key.addr = NODE_PORT_ADDR6;
        SERVICES6.get_ptr(&*key)
    })?;
    // SAFETY: SERVICES6 has no prealloc (see maps6.rs): the value stays
    // valid for this RCU read section and is copied out at once.
    Some(unsafe { *svc })
}
