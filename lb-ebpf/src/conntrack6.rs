//! IPv6 connection tracking, the twin of [`crate::conntrack`] over
//! `CONNTRACK6` and `REVNAT6`: recall a flow's backend and drive its state
//! machine (shared, `lb_common::conntrack`), record a new flow once even
//! when two CPUs see its first packet together, restore a missing reverse
//! entry, note replies.

// Keys and entries are passed as references into the scratch slot (or the
// map) on purpose: by value they would be copied onto the stack, which has
// no room to spare (see `lb6::Scratch6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{
    conntrack::{
        expired, seconds_of, tcp_next, timeout_s, CtState, DATAGRAM_STREAM_AFTER_S, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    maps6::{same, CtEntry6, FlowKey6, RevNatEntry6},
    Event, Family, NodeConfig, CT_F_REPLIED, CT_F_SNAT, CT_F_STREAM, IPPROTO_TCP,
};

use crate::{
    conntrack::{new_claim, now_s},
    counters,
    lb6::Scratch6,
    maps6::{CONNTRACK6, REVNAT6},
    mem::{copy, copy_from},
    parse::Fragment,
    parse6::Flow6,
    select6::{self, Chosen6},
};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only (the first of racing CPUs wins).
const BPF_NOEXIST: u64 = 1;

/// The conntrack key of a client flow (as it arrives, before translation).
#[inline(always)]
pub fn key(flow: &Flow6) -> FlowKey6 {
    FlowKey6 {
        src_addr: flow.src,
        dst_addr: flow.dst,
        src_port: flow.sport,
        dst_port: flow.dport,
        proto: flow.proto,
        pad: [0, 0, 0],
    }
}

/// Whether the flow `key` tracked as `ct` has been idle longer than its
/// state allows at `now` (its last packet either way); `reply` is scratch
/// room for its reply tuple.
#[inline(always)]
pub fn idle_expired(
    key: &FlowKey6,
    ct: &CtEntry6,
    reply: &mut FlowKey6,
    cfg: &NodeConfig,
    now: u32,
) -> bool {
    let timeout = timeout_s(CtState::from_u8(ct.state), ct.flags, &cfg.timeouts);
    if !expired(now, ct.last_seen_s, timeout) {
        return false;
    }
    reply_into(reply, key, ct);
    // SAFETY: only one field is read, at once.
    let replied = match unsafe { REVNAT6.get(&*reply) } {
        Some(rev) if rev.restores(key) => rev.last_seen_s,
        _ => 0,
    };
    expired(now, ct.last_seen_s.max(replied), timeout)
}

/// Writes into `reply` the reply tuple of the client flow `key` tracked as
/// `ct` (`FlowKey6::reply_of`), field by field: a tuple built whole and
/// copied would cost `lb_xdp6` stack it does not have.
#[inline(always)]
fn reply_into(reply: &mut FlowKey6, key: &FlowKey6, ct: &CtEntry6) {
    copy(&mut reply.src_addr, &ct.backend_addr);
    reply.src_port = ct.backend_port;
    if ct.flags & CT_F_SNAT != 0 {
        copy(&mut reply.dst_addr, &ct.snat_addr);
        reply.dst_port = ct.snat_port;
    } else {
        reply.dst_addr = key.src_addr;
        reply.dst_port = key.src_port;
    }
    reply.proto = key.proto;
    reply.pad = [0, 0, 0];
}

/// The backend of a tracked entry, if it still exists unchanged: active, at
/// the address and port the flow was sent to.
#[inline(always)]
fn backend_of(ct: &CtEntry6) -> Option<Chosen6> {
    let backend = select6::active_backend(ct.backend_id)?;
    if !same(&backend.addr, &ct.backend_addr) || backend.port != ct.backend_port {
        // The id was reused for another endpoint: the old backend is gone.
        return None;
    }
    Some(Chosen6 {
        id: ct.backend_id,
        backend,
    })
}

/// The live flow `s.key`, recalled for a packet from its client (see
/// `conntrack::recall`): stamps its time at most once a second (checking
/// expiry and restoring a missing reverse entry then) and moves its TCP
/// state (not on a later fragment, which carries no TCP flags). `None` when the flow must start anew. Uses `s.ct`, `s.reply`
/// and `s.rev`.
#[inline(always)]
pub fn recall(s: &mut Scratch6, flow: &Flow6, cfg: &NodeConfig) -> Option<Chosen6> {
    let key = &s.key;
    let ptr = CONNTRACK6.get_ptr_mut(key)?;
    // SAFETY: a live LRU value, copied out; concurrent writers store single
    // fields (state, flags, time), so a mixed copy holds valid values only.
    unsafe { copy_from(&mut s.ct, ptr) };
    let ct = &mut s.ct;
    let chosen = backend_of(ct)?;
    let now = now_s();
    if ct.last_seen_s != now {
        if idle_expired(key, ct, &mut s.reply, cfg, now) {
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
        restore_reverse(key, ct, &mut s.reply, &mut s.rev, now);
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
    Some(chosen)
}

/// Restores the reverse entry of a live flow when it is missing (evicted
/// from the LRU map): without it the flow's replies would pass untranslated.
/// `reply` and `entry` are scratch room.
#[inline(always)]
fn restore_reverse(
    key: &FlowKey6,
    ct: &CtEntry6,
    reply: &mut FlowKey6,
    entry: &mut RevNatEntry6,
    now: u32,
) {
    reply_into(reply, key, ct);
    // SAFETY: only presence is read.
    if unsafe { REVNAT6.get(&*reply) }.is_some() {
        return;
    }
    *entry = RevNatEntry6::restoring(key, now, new_claim());
    if REVNAT6.insert(&*reply, &*entry, BPF_NOEXIST).is_ok() {
        counters::event_in(Family::Ipv6, Event::RevNatRestored);
    }
}

/// What recording a new IPv6 flow came to.
pub enum Recorded6 {
    /// This packet's entry is the flow's.
    Mine,
    /// Another CPU recorded the flow first: its backend.
    Theirs(Chosen6),
    /// The map refused the entry.
    Failed,
}

/// Records the new flow `s.key` as `s.ct`: the first writer wins
/// (`BPF_NOEXIST`), a later one adopts the winner's backend, and its entry
/// is left in `s.ct`; a dead entry in the way is replaced. Uses `s.reply`.
#[inline(always)]
pub fn record(s: &mut Scratch6, cfg: &NodeConfig) -> Recorded6 {
    if CONNTRACK6.insert(&s.key, &s.ct, BPF_NOEXIST).is_ok() {
        counters::event_in(Family::Ipv6, Event::ConntrackCreated);
        return Recorded6::Mine;
    }
    // SAFETY: a live LRU value, read in place (its fields one at a time).
    if let Some(theirs) = unsafe { CONNTRACK6.get(&s.key) } {
        if let Some(chosen) = backend_of(theirs) {
            if !idle_expired(&s.key, theirs, &mut s.reply, cfg, s.ct.last_seen_s) {
                counters::event_in(Family::Ipv6, Event::ConntrackRaceLost);
                copy(&mut s.ct, theirs);
                return Recorded6::Theirs(chosen);
            }
        }
    }
    if CONNTRACK6.insert(&s.key, &s.ct, BPF_ANY).is_ok() {
        Recorded6::Mine
    } else {
        Recorded6::Failed
    }
}

/// Notes a reply of the flow `rev` restores: the first reply marks the flow
/// replied, and SYN, FIN and RST move its TCP state. `client` is scratch
/// room for the client flow's key.
#[inline(always)]
pub fn on_reply(rev: &RevNatEntry6, client: &mut FlowKey6, flow: &Flow6, first: bool) {
    let tcp = flow.proto == IPPROTO_TCP;
    let moves_state = tcp && flow.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
    if !first && !moves_state {
        return;
    }
    *client = FlowKey6::client_of(rev, flow.proto);
    let Some(ptr) = CONNTRACK6.get_ptr_mut(&*client) else {
        return;
    };
    // SAFETY: a live LRU value; single-field stores (a racing store of the
    // other direction can be lost: it only shortens or lengthens a timeout).
    unsafe {
        if !same(&(*ptr).backend_addr, &flow.src) || (*ptr).backend_port != flow.sport {
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
