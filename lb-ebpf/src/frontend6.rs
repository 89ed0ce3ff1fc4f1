//! The IPv6 frontend a packet is addressed to: its exact (address, port,
//! protocol) in `SERVICES6` (cluster, external and load-balancer IPs). IPv6
//! node ports (`NODEPORT_ADDRS6`) are not looked up yet: they come with
//! the other frontends (design step 8).

// Keys and entries are passed as references into the scratch slot (or the
// map) on purpose: by value they would be copied onto the stack, which has
// no room to spare (see `lb6::Scratch6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{maps6::ServiceKey6, ServiceEntry};

use crate::{maps6::SERVICES6, parse6::Flow6};

/// A copy of the service entry of the IPv6 frontend `flow` is addressed to.
#[inline(always)]
pub fn lookup(flow: &Flow6) -> Option<ServiceEntry> {
    lookup_at(&flow.dst, flow.dport, flow.proto)
}

/// A copy of the service entry of the IPv6 frontend at `addr`:`port`
/// (network order) of protocol `proto` (a packet's, or a socket's: `sock6`).
#[inline(always)]
pub fn lookup_at(addr: &[u32; 4], port: u16, proto: u8) -> Option<ServiceEntry> {
    let key = ServiceKey6 {
        addr: *addr,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: SERVICES6 has no prealloc (see maps6.rs): the value stays
    // valid for this RCU read section and is copied out at once.
    unsafe { SERVICES6.get(&key) }.copied()
}
