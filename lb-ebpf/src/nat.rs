//! Address translation decisions: the reverse-NAT entries and the SNAT port.

use lb_common::{
    flow_hash_of, Event, FlowKey, RevNatEntry, SNAT_PORT_ATTEMPTS, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::{conntrack, counters, maps::REVNAT, parse::Flow, select::Chosen};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only; fails when the key exists (claims a port atomically).
const BPF_NOEXIST: u64 = 1;

/// New source and destination of a packet, raw network-order words.
#[derive(Clone, Copy)]
pub struct Rewrite {
    /// New source address.
    pub src: u32,
    /// New source port.
    pub sport: u16,
    /// New destination address.
    pub dst: u32,
    /// New destination port.
    pub dport: u16,
}

/// What a client's packet becomes: destination the backend, source the client
/// or, with SNAT, the node.
#[inline(always)]
pub fn forward(flow: &Flow, chosen: &Chosen, snat_addr: u32, snat_port: u16) -> Rewrite {
    let (src, sport) = if snat_port == 0 {
        (flow.src, flow.sport)
    } else {
        (snat_addr, snat_port)
    };
    Rewrite {
        src,
        sport,
        dst: chosen.backend.addr,
        dport: chosen.backend.port,
    }
}

/// What a reply becomes: source the service, destination the client.
#[inline(always)]
pub fn reverse(rev: &RevNatEntry) -> Rewrite {
    Rewrite {
        src: rev.svc_addr,
        sport: rev.svc_port,
        dst: rev.client_addr,
        dport: rev.client_port,
    }
}

/// The reverse-NAT key of the reply to `flow` once translated to `chosen`
/// (reply source: backend; reply destination: the client, or the node with SNAT).
#[inline(always)]
fn reply_key(flow: &Flow, chosen: &Chosen, dst_addr: u32, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: chosen.backend.addr,
        dst_addr,
        src_port: chosen.backend.port,
        dst_port,
        proto: flow.proto,
        pad: [0; 3],
    }
}

#[inline(always)]
fn rev_entry(flow: &Flow) -> RevNatEntry {
    RevNatEntry {
        svc_addr: flow.dst,
        client_addr: flow.src,
        svc_port: flow.dport,
        client_port: flow.sport,
    }
}

/// Records how to restore replies of a flow that keeps the client's address.
#[inline(always)]
pub fn record_reverse(flow: &Flow, chosen: &Chosen) -> bool {
    let key = reply_key(flow, chosen, flow.src, flow.sport);
    let entry = rev_entry(flow);
    if REVNAT.insert(key, entry, BPF_NOEXIST).is_ok() {
        counters::event(Event::RevNatCreated);
        return true;
    }
    // The same reply flow already had an entry (a reused 5-tuple): replace it.
    REVNAT.insert(key, entry, BPF_ANY).is_ok()
}

/// Claims a free node port for a translated flow and records its reverse entry.
/// Returns the port (network order), or `None` when every probed port is taken.
#[inline(always)]
pub fn claim_snat_port(flow: &Flow, chosen: &Chosen, node_addr: u32) -> Option<u16> {
    const RANGE: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let entry = rev_entry(flow);
    let start = flow_hash_of(flow.src, flow.dst, flow.sport, flow.dport, flow.proto) % RANGE;
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        // The sum is at most SNAT_PORT_MAX, so the truncation is exact.
        #[allow(clippy::cast_possible_truncation)]
        let port = (u32::from(SNAT_PORT_MIN) + (start + attempt) % RANGE) as u16;
        let key = reply_key(flow, chosen, node_addr, port.to_be());
        if REVNAT.insert(key, entry, BPF_NOEXIST).is_ok() {
            counters::event(Event::RevNatCreated);
            return Some(port.to_be());
        }
        // Taken: reuse it if the flow holding it is gone or closed long enough.
        // SAFETY: the LRU value is copied out at once.
        if let Some(holder) = unsafe { REVNAT.get(key) }.copied() {
            if conntrack::release_snat_port(
                &conntrack::client_key(&holder, flow.proto),
                port.to_be(),
            ) && REVNAT.insert(key, entry, BPF_ANY).is_ok()
            {
                return Some(port.to_be());
            }
        }
    }
    None
}
