//! Connection tracking: recall the backend of an established flow, record a new one.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    CtEntry, Event, FlowKey, RevNatEntry, CT_F_CLOSING, CT_F_FIN_BACKEND, CT_F_FIN_CLIENT,
    CT_F_RST, CT_F_SNAT, SNAT_HOLD_AFTER_BACKEND_FIN_S, SNAT_HOLD_AFTER_CLIENT_FIN_S,
    SNAT_HOLD_AFTER_RST_S,
};

use crate::{
    counters,
    maps::CONNTRACK,
    parse::{Flow, TCP_F_ACK, TCP_F_FIN, TCP_F_RST, TCP_F_SYN},
    select::{self, Chosen},
};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only (tells a new flow's entry from a replaced one).
const BPF_NOEXIST: u64 = 1;

/// The conntrack key of a client flow (as it arrives, before translation).
#[inline(always)]
pub fn key(flow: &Flow) -> FlowKey {
    FlowKey {
        src_addr: flow.src,
        dst_addr: flow.dst,
        src_port: flow.sport,
        dst_port: flow.dport,
        proto: flow.proto,
        pad: [0; 3],
    }
}

/// The flow's tracked entry, if its backend still exists unchanged: active,
/// at the address and port the flow was sent to.
#[inline(always)]
pub fn recall(key: &FlowKey) -> Option<(CtEntry, Chosen)> {
    // SAFETY: LRU values are copied out at once; a concurrent update can at worst
    // make us read a mix, which the backend validation below rejects or accepts
    // only when it names a live backend at the recorded address.
    let ct = *unsafe { CONNTRACK.get(key) }?;
    let backend = select::active_backend(ct.backend_id)?;
    if backend.addr != ct.backend_addr || backend.port != ct.backend_port {
        // The id was reused for another endpoint: the old backend is gone.
        return None;
    }
    Some((
        ct,
        Chosen {
            id: ct.backend_id,
            backend,
        },
    ))
}

/// Records the backend (and SNAT, if any) chosen for a new flow.
#[inline(always)]
pub fn record(key: &FlowKey, chosen: &Chosen, snat_addr: u32, snat_port: u16, flags: u32) -> bool {
    let entry = CtEntry {
        backend_id: chosen.id,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        snat_port,
        snat_addr,
        flags,
        closing_s: 0,
        // SAFETY: helper without preconditions.
        created_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    if CONNTRACK.insert(key, entry, BPF_NOEXIST).is_ok() {
        counters::event(Event::ConntrackCreated);
        return true;
    }
    // A stale entry (its backend is gone): replace it.
    CONNTRACK.insert(key, entry, BPF_ANY).is_ok()
}

/// Monotonic seconds, at least 1 (0 means "open" in `closing_s`).
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: helper without preconditions.
    let s = unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000;
    // Monotonic seconds fit u32 for 136 years of uptime.
    #[allow(clippy::cast_possible_truncation)]
    let s = s as u32;
    if s == 0 {
        1
    } else {
        s
    }
}

/// Notes a FIN or RST on a tracked flow (`from_client`: the packet came from
/// the client), and reopens a closing flow whose client reuses the tuple with
/// a new SYN. Only packets with those flags touch the entry.
#[inline(always)]
pub fn note_flags(key: &FlowKey, tcp_flags: u8, from_client: bool) {
    if tcp_flags & (TCP_F_FIN | TCP_F_RST | TCP_F_SYN) == 0 {
        return;
    }
    let Some(ct) = CONNTRACK.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live LRU value; concurrent writers only set flags and a
    // timestamp, and a lost update only delays the port's reuse.
    let ct = unsafe { &mut *ct };
    if tcp_flags & TCP_F_SYN != 0 && tcp_flags & TCP_F_ACK == 0 {
        if from_client && ct.flags & CT_F_CLOSING != 0 {
            ct.flags &= !CT_F_CLOSING;
            ct.closing_s = 0;
        }
        return;
    }
    let mark = if tcp_flags & TCP_F_RST != 0 {
        CT_F_RST
    } else if ct.flags & CT_F_CLOSING != 0 {
        // The first FIN decides who holds `TIME_WAIT`.
        0
    } else if from_client {
        CT_F_FIN_CLIENT
    } else {
        CT_F_FIN_BACKEND
    };
    if mark != 0 {
        ct.flags |= mark;
        if ct.closing_s == 0 || mark == CT_F_RST {
            ct.closing_s = now_s();
        }
    }
}

/// The conntrack key of the client flow a reverse-NAT entry restores.
#[inline(always)]
pub fn client_key(rev: &RevNatEntry, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: rev.client_addr,
        dst_addr: rev.svc_addr,
        src_port: rev.client_port,
        dst_port: rev.svc_port,
        proto,
        pad: [0; 3],
    }
}

/// Whether the SNAT port `snat_port` held by the flow of `client` can go to a
/// new flow: that flow is gone (evicted, or moved to another port) or closed
/// for longer than its hold. A reclaimed flow's entry is removed, so a late
/// packet of it can never use the port again.
#[inline(always)]
pub fn release_snat_port(client: &FlowKey, snat_port: u16) -> bool {
    // SAFETY: the LRU value is copied out at once.
    let Some(ct) = (unsafe { CONNTRACK.get(client) }).copied() else {
        return true;
    };
    if ct.flags & CT_F_SNAT == 0 || ct.snat_port != snat_port {
        return true;
    }
    if ct.flags & CT_F_CLOSING == 0 {
        return false;
    }
    let hold = if ct.flags & CT_F_RST != 0 {
        SNAT_HOLD_AFTER_RST_S
    } else if ct.flags & CT_F_FIN_BACKEND != 0 {
        SNAT_HOLD_AFTER_BACKEND_FIN_S
    } else {
        SNAT_HOLD_AFTER_CLIENT_FIN_S
    };
    if now_s().wrapping_sub(ct.closing_s) < hold {
        return false;
    }
    CONNTRACK.remove(client).is_ok()
}
