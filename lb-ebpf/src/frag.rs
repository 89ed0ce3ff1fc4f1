//! IPv4 fragments of datagrams to and from Services. Only a datagram's first
//! fragment carries the L4 header (ports), so the datagram is remembered by
//! what every fragment carries: source, destination, IP identification and
//! protocol (RFC 791), mapped to its ports as they were on the wire before
//! translation (`FRAGMENTS`, layout in `lb_common::FragKey`).
//!
//! - A first fragment is decided like any packet (new flow, recall, or
//!   reply) and translated, its L4 checksum updated incrementally (it covers
//!   the whole datagram, whose other bytes do not change). A translated one
//!   is remembered; any other first fragment forgets what its key named
//!   before (the sender's id came round again on a datagram not ours).
//! - A later fragment takes its datagram's ports from the map and is then
//!   decided as its first fragment was, by recall of the tracked flow or
//!   reverse entry only (never a new flow); only its addresses and IP header
//!   checksum are rewritten.
//! - A later fragment whose first fragment was not seen (out of order, or
//!   its entry evicted) passes untouched: its datagram is lost (a UDP sender
//!   retries), as is every later fragment of a datagram nobody tracks, which
//!   is not ours.
//!
//! The map is not pinned: an agent's upgrade loses the datagrams in flight.

use lb_common::{FragKey, FragPorts};

use crate::{
    maps::FRAGMENTS,
    parse::{Flow, Fragment},
};

/// `BPF_ANY`: create or replace (a newer datagram under a reused id wins).
const BPF_ANY: u64 = 0;

/// The map key of the datagram `flow` is a fragment of.
#[inline(always)]
fn key(flow: &Flow) -> FragKey {
    FragKey {
        src_addr: flow.src,
        dst_addr: flow.dst,
        id: flow.ip_id,
        proto: flow.proto,
        pad: 0,
    }
}

/// Gives a later fragment its datagram's ports, remembered from the first
/// fragment. `false` when no first fragment of it was translated: the
/// fragment is not ours (or its first was not seen) and passes untouched.
/// Any other packet is left as it is.
#[inline(always)]
pub fn complete(flow: &mut Flow) -> bool {
    if flow.fragment != Fragment::Later {
        return true;
    }
    // SAFETY: the LRU value is copied out at once.
    let Some(ports) = (unsafe { FRAGMENTS.get(key(flow)) }).copied() else {
        return false;
    };
    flow.sport = ports.src_port;
    flow.dport = ports.dst_port;
    true
}

/// Notes what became of a first fragment: a translated one's datagram is
/// remembered with its ports as they arrived, so its later fragments
/// follow it; any other's key is forgotten.
#[inline(always)]
pub fn note_first(flow: &Flow, translated: bool) {
    let key = key(flow);
    if translated {
        let ports = FragPorts {
            src_port: flow.sport,
            dst_port: flow.dport,
        };
        // An LRU map makes room for it; on a failure the later fragments pass.
        let _ = FRAGMENTS.insert(key, ports, BPF_ANY);
    } else {
        // Absent almost always.
        let _ = FRAGMENTS.remove(key);
    }
}
