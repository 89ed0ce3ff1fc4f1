//! Conversion of flow state pinned by layouts v1 to v3 into layout v4's
//! entries, for a hand-over that keeps every flow (see `layout::CONVERTED_LAYOUTS`).
//!
//! v3 marked closing flows with flags that its own programs set wrongly (a
//! backend's SYN-ACK marked the flow as closed by the backend), so the
//! backend's mark is not trusted: a carried TCP flow is established unless
//! it saw an RST or its client's FIN came first (the first mark decided, and
//! only the backend's could be bogus), and every carried flow counts as
//! answered and seen at the hand-over. A
//! live flow therefore keeps its backend and SNAT port; a dead one expires
//! after its idle timeout. v3's SNAT ports lie outside v4's default pool, so
//! carried flows never crowd new ones out of it.

use lb_common::{
    conntrack::CtState, CtEntry, FlowKey, RevNatEntry, CT_F_AFFINITY, CT_F_REPLIED, CT_F_SNAT,
    CT_F_STREAM, IPPROTO_TCP,
};

/// v3's flag: the source was translated.
const V3_SNAT: u32 = 1;
/// v3's flag: the client sent the first FIN (reliable: v3's bug set only
/// the backend's mark, and the first mark decided).
const V3_FIN_CLIENT: u32 = 2;
/// v3's flag: the backend sent FIN first, or (v3's bug) its SYN-ACK was seen.
const V3_FIN_BACKEND: u32 = 4;
/// v3's flag: either side sent RST.
const V3_RST: u32 = 8;
/// v3's flag: the flow began with session affinity.
const V3_AFFINITY: u32 = 16;

/// A conntrack value of layouts v1 to v3 (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V3CtEntry {
    /// Backend id.
    pub backend_id: u32,
    /// Backend address, network order.
    pub backend_addr: u32,
    /// Backend port, network order.
    pub backend_port: u16,
    /// SNAT port, network order.
    pub snat_port: u16,
    /// SNAT address, network order.
    pub snat_addr: u32,
    /// v3 flags.
    pub flags: u32,
    /// When the flow was seen closing (unreliable in v3).
    pub closing_s: u32,
    /// Creation time, monotonic ns.
    pub created_ns: u64,
}

/// A reverse-NAT value of layouts v1 to v3 (12 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V3RevNatEntry {
    /// Service address, network order.
    pub svc_addr: u32,
    /// Client address, network order.
    pub client_addr: u32,
    /// Service port, network order.
    pub svc_port: u16,
    /// Client port, network order.
    pub client_port: u16,
}

// SAFETY: repr(C) structs of integers without implicit padding: every bit
// pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for V3CtEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for V3RevNatEntry {}

/// The v4 conntrack entry of the v3 flow `key` -> `old`, carried at `now_s`.
#[must_use]
pub fn conntrack(key: &FlowKey, old: &V3CtEntry, now_s: u32) -> CtEntry {
    let mut flags = CT_F_REPLIED;
    if old.flags & V3_SNAT != 0 {
        flags |= CT_F_SNAT;
    }
    if old.flags & V3_AFFINITY != 0 {
        flags |= CT_F_AFFINITY;
    }
    let state = if key.proto != IPPROTO_TCP {
        flags |= CT_F_STREAM;
        CtState::Datagram
    } else if old.flags & V3_RST != 0 {
        CtState::Reset
    } else if old.flags & (V3_FIN_CLIENT | V3_FIN_BACKEND) == V3_FIN_CLIENT {
        CtState::FinClient
    } else {
        CtState::Established
    };
    CtEntry {
        backend_id: old.backend_id,
        backend_addr: old.backend_addr,
        backend_port: old.backend_port,
        snat_port: old.snat_port,
        snat_addr: old.snat_addr,
        flags,
        state: state as u8,
        pad: 0,
        last_seen_s: now_s,
        created_ns: old.created_ns,
    }
}

/// The v4 reverse-NAT entry of a v3 one, carried at `now_s` with claim tag `claim`.
#[must_use]
pub fn reverse_nat(old: &V3RevNatEntry, now_s: u32, claim: u64) -> RevNatEntry {
    RevNatEntry {
        svc_addr: old.svc_addr,
        client_addr: old.client_addr,
        svc_port: old.svc_port,
        client_port: old.client_port,
        created_s: now_s,
        last_seen_s: now_s,
        ifindex: 0,
        claim,
    }
}

#[cfg(test)]
mod tests {
    use lb_common::IPPROTO_UDP;

    use super::*;

    fn key(proto: u8) -> FlowKey {
        FlowKey {
            src_addr: 1,
            dst_addr: 2,
            src_port: 3,
            dst_port: 4,
            proto,
            pad: [0; 3],
        }
    }

    #[test]
    fn v3_closing_marks_are_not_trusted() {
        // What v3 wrote after a SYN and the backend's SYN-ACK: SNAT | FIN_BACKEND.
        let old = V3CtEntry {
            backend_id: 7,
            backend_addr: 9,
            backend_port: 80,
            snat_port: 61_234u16.to_be(),
            snat_addr: 11,
            flags: 0x5,
            closing_s: 100,
            created_ns: 5,
        };
        let new = conntrack(&key(IPPROTO_TCP), &old, 500);
        assert_eq!(new.state, CtState::Established as u8);
        assert_eq!(new.flags, CT_F_SNAT | CT_F_REPLIED);
        assert_eq!(
            (new.snat_addr, new.snat_port, new.last_seen_s),
            (11, old.snat_port, 500)
        );
        assert_eq!(
            (new.backend_id, new.backend_addr, new.created_ns),
            (7, 9, 5)
        );
    }

    #[test]
    fn a_first_fin_of_the_client_is_trusted() {
        let fin = V3CtEntry {
            flags: V3_SNAT | V3_FIN_CLIENT,
            ..V3CtEntry::default()
        };
        assert_eq!(
            conntrack(&key(IPPROTO_TCP), &fin, 1).state,
            CtState::FinClient as u8
        );
        let both = V3CtEntry {
            flags: V3_SNAT | V3_FIN_CLIENT | V3_FIN_BACKEND,
            ..V3CtEntry::default()
        };
        assert_eq!(
            conntrack(&key(IPPROTO_TCP), &both, 1).state,
            CtState::Established as u8
        );
    }

    #[test]
    fn resets_affinity_and_datagrams_carry_over() {
        let rst = V3CtEntry {
            flags: V3_RST | V3_AFFINITY,
            ..V3CtEntry::default()
        };
        let new = conntrack(&key(IPPROTO_TCP), &rst, 1);
        assert_eq!(new.state, CtState::Reset as u8);
        assert_eq!(new.flags, CT_F_AFFINITY | CT_F_REPLIED);
        let udp = conntrack(&key(IPPROTO_UDP), &V3CtEntry::default(), 1);
        assert_eq!(udp.state, CtState::Datagram as u8);
        assert_eq!(udp.flags, CT_F_REPLIED | CT_F_STREAM);
        let rev = reverse_nat(
            &V3RevNatEntry {
                svc_addr: 1,
                client_addr: 2,
                svc_port: 3,
                client_port: 4,
            },
            9,
            42,
        );
        assert_eq!(
            (rev.created_s, rev.last_seen_s, rev.claim, rev.client_port),
            (9, 9, 42, 4)
        );
    }
}
