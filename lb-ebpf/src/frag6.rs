//! IPv6 fragments of datagrams to and from Services, the twin of
//! [`crate::frag`]: a datagram is remembered by what every fragment carries
//! (source, destination, the fragment header's 32-bit identification,
//! RFC 8200 4.5) and the protocol its fragment header names, mapped to its
//! ports as they were on the wire before translation (`FRAGMENTS6`, layout
//! in `lb_common::maps6::FragKey6`).
//!
//! The semantics are IPv4's. A first fragment is decided like any packet and
//! translated; its L4 checksum covers the whole datagram, and only the
//! pseudo-header (addresses) and ports change, so its incremental update is
//! the datagram's. A later fragment has no L4 header and IPv6 no header
//! checksum: its addresses alone are rewritten. A later fragment whose first
//! was not translated (or not seen) passes untouched. Not pinned.

use lb_common::{maps6::FragKey6, FragPorts};

use crate::{lb6, maps6::FRAGMENTS6, parse::Fragment, parse6::Flow6};

/// `BPF_ANY`: create or replace (a newer datagram under a reused id wins).
const BPF_ANY: u64 = 0;

/// The map key of the datagram `flow` is a fragment of, written into this
/// CPU's scratch slot (40 bytes the stack has no room for).
#[inline(always)]
fn key(flow: &Flow6) -> Option<&'static FragKey6> {
    let s = lb6::scratch()?;
    s.frag = FragKey6 {
        src_addr: flow.src,
        dst_addr: flow.dst,
        id: flow.frag_id,
        proto: flow.proto,
        pad: [0, 0, 0],
    };
    Some(&s.frag)
}

/// Gives a later fragment its datagram's ports, remembered from the first
/// fragment. `false` when no first fragment of it was translated: the
/// fragment passes untouched. Any other packet is left as it is.
#[inline(always)]
pub fn complete(flow: &mut Flow6) -> bool {
    if flow.fragment != Fragment::Later {
        return true;
    }
    let Some(key) = key(flow) else {
        return false;
    };
    // SAFETY: the LRU value is copied out at once.
    let Some(ports) = (unsafe { FRAGMENTS6.get(key) }).copied() else {
        return false;
    };
    flow.sport = ports.src_port;
    flow.dport = ports.dst_port;
    true
}

/// Notes what became of a packet that is a first fragment (any other is
/// left alone): a translated one's datagram is remembered with its ports as
/// they arrived; any other's key is forgotten (the sender's id came round
/// again on a datagram not ours). Called once the packet is written, so its
/// rewrite need not be kept across the map update.
#[inline(always)]
pub fn note_first(flow: &Flow6, translated: bool) {
    if flow.fragment != Fragment::First {
        return;
    }
    let Some(key) = key(flow) else {
        return;
    };
    remember(key, flow, translated);
}

/// [`note_first`] for the packet the new-flow stage decided and wrote: the
/// one left in this CPU's scratch slot (`Scratch6::flow`).
#[inline(always)]
pub fn note_staged(translated: bool) {
    let Some(s) = lb6::scratch() else {
        return;
    };
    if s.flow.fragment != Fragment::First {
        return;
    }
    s.frag = FragKey6 {
        src_addr: s.flow.src,
        dst_addr: s.flow.dst,
        id: s.flow.frag_id,
        proto: s.flow.proto,
        pad: [0, 0, 0],
    };
    remember(&s.frag, &s.flow, translated);
}

/// Remembers the datagram `key` of the first fragment `flow` with its ports
/// if it was `translated`, else forgets it.
#[inline(always)]
fn remember(key: &FragKey6, flow: &Flow6, translated: bool) {
    if translated {
        let ports = FragPorts {
            src_port: flow.sport,
            dst_port: flow.dport,
        };
        // An LRU map makes room for it; on a failure the later fragments pass.
        let _ = FRAGMENTS6.insert(key, ports, BPF_ANY);
    } else {
        // Absent almost always.
        let _ = FRAGMENTS6.remove(key);
    }
}
