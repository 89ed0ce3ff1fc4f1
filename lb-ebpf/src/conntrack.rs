//! Connection tracking: recall a flow's backend and drive its state machine
//! (the semantics are in `lb_common::conntrack`), and record a new flow
//! exactly once even when two CPUs see its first packet at the same time.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns};
use lb_common::{
    conntrack::{
        expired, seconds_of, tcp_next, timeout_s, CtState, DATAGRAM_STREAM_AFTER_S, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN,
    },
    CtEntry, Event, FlowKey, NodeConfig, RevNatEntry, CT_F_REPLIED, CT_F_STREAM, IPPROTO_TCP,
};

use crate::{
    counters,
    maps::{CONNTRACK, REVNAT},
    parse::{Flow, Fragment},
    select::{self, Chosen},
};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only (the first of racing CPUs wins).
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
        pad: [0, 0, 0],
    }
}

/// Monotonic seconds now, at least 1.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: helper without preconditions.
    seconds_of(unsafe { bpf_ktime_get_coarse_ns() })
}

/// A fresh claim tag for a reverse entry (see `RevNatEntry::claim`).
#[inline(always)]
pub fn new_claim() -> u64 {
    // SAFETY: helpers without preconditions.
    unsafe { (u64::from(bpf_get_prandom_u32()) << 32) | u64::from(bpf_get_prandom_u32()) }
}

/// Whether the flow `key` tracked as `ct` has been idle longer than its
/// state allows at `now`: its last packet from the client, or (looked up only
/// when that alone says so) its last reply.
#[inline(always)]
pub fn idle_expired(key: &FlowKey, ct: &CtEntry, cfg: &NodeConfig, now: u32) -> bool {
    let timeout = timeout_s(CtState::from_u8(ct.state), ct.flags, &cfg.timeouts);
    if !expired(now, ct.last_seen_s, timeout) {
        return false;
    }
    // SAFETY: the LRU value is copied out at once.
    let replied = match unsafe { REVNAT.get(key.reply_of(ct)) } {
        Some(rev) if rev.restores(key) => rev.last_seen_s,
        _ => 0,
    };
    expired(now, ct.last_seen_s.max(replied), timeout)
}

/// The backend of a tracked entry, if it still exists unchanged: active, at
/// the address and port the flow was sent to.
#[inline(always)]
fn backend_of(ct: &CtEntry) -> Option<Chosen> {
    let backend = select::active_backend(ct.backend_id)?;
    if backend.addr != ct.backend_addr || backend.port != ct.backend_port {
        // The id was reused for another endpoint: the old backend is gone.
        return None;
    }
    Some(Chosen {
        id: ct.backend_id,
        backend,
    })
}

/// The live flow `key`, recalled for a packet from its client: its backend is
/// unchanged and it has not expired. Stamps the packet's time (at most once a
/// second per flow, when the expiry is also checked and a missing reverse
/// entry restored) and moves the TCP state (not on a later fragment, which
/// carries no TCP flags). `None` when the flow must start anew.
#[inline(always)]
pub fn recall(key: &FlowKey, flow: &Flow, cfg: &NodeConfig) -> Option<(CtEntry, Chosen)> {
    let ptr = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a live LRU value, copied out; concurrent writers store single
    // fields (state, flags, time), so a mixed copy holds valid values only.
    let mut ct = unsafe { *ptr };
    let chosen = backend_of(&ct)?;
    let now = now_s();
    if ct.last_seen_s != now {
        if idle_expired(key, &ct, cfg, now) {
            return None;
        }
        if ct.state == CtState::Datagram as u8
            && ct.flags & (CT_F_REPLIED | CT_F_STREAM) == CT_F_REPLIED
            && now.wrapping_sub(seconds_of(ct.created_ns)) >= DATAGRAM_STREAM_AFTER_S
        {
            ct.flags |= CT_F_STREAM;
            // SAFETY: a single-field store into the live value.
            unsafe { (*ptr).flags = ct.flags };
        }
        ct.last_seen_s = now;
        // SAFETY: as above.
        unsafe { (*ptr).last_seen_s = now };
        restore_reverse(key, &ct, now);
    }
    if flow.proto == IPPROTO_TCP && flow.fragment != Fragment::Later {
        let state = CtState::from_u8(ct.state);
        let next = tcp_next(state, flow.tcp_flags, true);
        if next != state {
            ct.state = next as u8;
            if next == CtState::SynSent {
                // The client reopened a closed tuple: a new connection.
                ct.flags &= !(CT_F_REPLIED | CT_F_STREAM);
                // SAFETY: single-field stores into the live value.
                unsafe { (*ptr).flags = ct.flags };
            }
            // SAFETY: as above.
            unsafe { (*ptr).state = ct.state };
        }
    }
    Some((ct, chosen))
}

/// Restores the reverse entry of a live flow when it is missing (evicted
/// from the LRU map): without it the flow's replies would pass untranslated.
#[inline(always)]
fn restore_reverse(key: &FlowKey, ct: &CtEntry, now: u32) {
    let reply = key.reply_of(ct);
    // SAFETY: only presence is read.
    if unsafe { REVNAT.get(reply) }.is_some() {
        return;
    }
    let entry = RevNatEntry::restoring(key, now, new_claim());
    if REVNAT.insert(reply, entry, BPF_NOEXIST).is_ok() {
        counters::event(Event::RevNatRestored);
    }
}

/// What recording a new flow came to.
pub enum Recorded {
    /// This packet's entry is the flow's.
    Mine,
    /// Another CPU recorded the flow first: its entry and backend.
    Theirs(CtEntry, Chosen),
    /// The map refused the entry.
    Failed,
}

/// Records a new flow. The first writer wins (`BPF_NOEXIST`); a later one
/// adopts the winner's entry, so one flow never has two backends or two SNAT
/// ports. A dead entry in the way (expired, or its backend gone) is replaced.
#[inline(always)]
pub fn record(key: &FlowKey, entry: &CtEntry, cfg: &NodeConfig) -> Recorded {
    if CONNTRACK.insert(key, entry, BPF_NOEXIST).is_ok() {
        counters::event(Event::ConntrackCreated);
        return Recorded::Mine;
    }
    // SAFETY: the LRU value is copied out at once.
    if let Some(theirs) = unsafe { CONNTRACK.get(key) }.copied() {
        if let Some(chosen) = backend_of(&theirs) {
            if !idle_expired(key, &theirs, cfg, entry.last_seen_s) {
                counters::event(Event::ConntrackRaceLost);
                return Recorded::Theirs(theirs, chosen);
            }
        }
    }
    if CONNTRACK.insert(key, entry, BPF_ANY).is_ok() {
        Recorded::Mine
    } else {
        Recorded::Failed
    }
}

/// Notes a reply of the flow `rev` restores: the first reply marks the flow
/// replied, and SYN, FIN and RST move its TCP state. Other replies do not
/// touch the conntrack entry (their time is stamped in the reverse entry).
#[inline(always)]
pub fn on_reply(rev: &RevNatEntry, flow: &Flow, first: bool) {
    let tcp = flow.proto == IPPROTO_TCP;
    let moves_state = tcp && flow.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
    if !first && !moves_state {
        return;
    }
    let Some(ptr) = CONNTRACK.get_ptr_mut(FlowKey::client_of(rev, flow.proto)) else {
        return;
    };
    // SAFETY: a live LRU value; single-field stores (a racing store of the
    // other direction can be lost: it only shortens or lengthens a timeout).
    unsafe {
        if (*ptr).backend_addr != flow.src || (*ptr).backend_port != flow.sport {
            // The client's tuple now belongs to a flow to another backend.
            return;
        }
        if first {
            (*ptr).flags |= CT_F_REPLIED;
        }
        if tcp {
            let state = CtState::from_u8((*ptr).state);
            let next = tcp_next(state, flow.tcp_flags, false);
            if next != state {
                (*ptr).state = next as u8;
            }
        }
    }
}

/// The state a new flow starts in, from its first packet (`None`: this packet
/// may not start a flow).
#[inline(always)]
pub fn initial_state(flow: &Flow) -> Option<CtState> {
    initial_state_of(flow.proto, flow.tcp_flags)
}

/// [`initial_state`] of a first packet of protocol `proto` with TCP flags
/// `flags` (either family's).
#[inline(always)]
pub fn initial_state_of(proto: u8, flags: u8) -> Option<CtState> {
    if proto != IPPROTO_TCP {
        return Some(CtState::Datagram);
    }
    if flags & TCP_RST != 0 {
        // Nothing to reset.
        return None;
    }
    if flags & TCP_SYN != 0 {
        // A SYN-ACK from a client is not a client opening a connection.
        return (flags & TCP_ACK == 0).then_some(CtState::SynSent);
    }
    // Mid-stream (a flow whose entry was lost): picked up as established,
    // where allowed (see `lb::new_flow`).
    Some(CtState::Established)
}
