//! IPv6 address translation decisions, the twin of [`crate::nat`]: the
//! rewrites, and the reverse-NAT entry of a flow that keeps the client's
//! address. A reply tuple held by a flow that is gone is taken over; one
//! held by a live flow is a clash, for which the caller claims a pool port
//! of the client's address ([`crate::snat6`]), as `nf_nat` remaps it.

// Keys and entries are passed as references into the scratch slot (or the
// map) on purpose: by value they would be copied onto the stack, which has
// no room to spare (see `lb6::Scratch6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{
    conntrack::{expired, timeout_s, CtState},
    maps6::{CtEntry6, FlowKey6, RevNatEntry6},
    Event, Family, NodeConfig, CLAIM_GRACE_S, CT_F_SNAT,
};

use crate::{
    counters,
    lb6::Scratch6,
    maps6::{CONNTRACK6, REVNAT6},
    mem::copy_to,
    parse6::Flow6,
    select6::Chosen6,
    snat6,
};

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// New source and destination of an IPv6 packet, raw network-order words.
#[derive(Clone, Copy)]
pub struct Rewrite6 {
    /// New source address.
    pub src: [u32; 4],
    /// New source port.
    pub sport: u16,
    /// New destination address.
    pub dst: [u32; 4],
    /// New destination port.
    pub dport: u16,
}

/// What a client's packet of the flow tracked as `ct` becomes: destination
/// the backend, source the client or, with SNAT, the translated address
/// and port.
#[inline(always)]
pub fn forward(flow: &Flow6, ct: &CtEntry6) -> Rewrite6 {
    let (src, sport) = if ct.flags & CT_F_SNAT != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (flow.src, flow.sport)
    };
    Rewrite6 {
        src,
        sport,
        dst: ct.backend_addr,
        dport: ct.backend_port,
    }
}

/// What a reply becomes: source the service, destination the client.
#[inline(always)]
pub fn reverse(rev: &RevNatEntry6) -> Rewrite6 {
    Rewrite6 {
        src: rev.svc_addr,
        sport: rev.svc_port,
        dst: rev.client_addr,
        dport: rev.client_port,
    }
}

/// How a flow that keeps the client's address gets its replies back.
pub enum Reverse6 {
    /// Under its own tuple (backend -> client), now or already recorded for it.
    Kept,
    /// Another live flow has that tuple (the same client port to another
    /// frontend of this backend): the source port must become a pool port.
    Clash,
}

/// The reply tuple of a flow from `flow`'s client to `chosen`.
#[inline(always)]
pub fn reply_key(flow: &Flow6, chosen: &Chosen6) -> FlowKey6 {
    FlowKey6 {
        src_addr: chosen.backend.addr,
        dst_addr: flow.src,
        src_port: chosen.backend.port,
        dst_port: flow.sport,
        proto: flow.proto,
        pad: [0, 0, 0],
    }
}

/// Records the reverse entry `s.rev` of the client flow `s.key` to
/// `chosen` under its reply tuple (into `s.reply`), unless another live
/// flow holds that tuple. `None` when the map fails.
#[inline(always)]
pub fn record_reverse(
    flow: &Flow6,
    chosen: &Chosen6,
    s: &mut Scratch6,
    cfg: &NodeConfig,
) -> Option<Reverse6> {
    s.reply = reply_key(flow, chosen);
    if REVNAT6.insert(&s.reply, &s.rev, BPF_NOEXIST).is_ok() {
        counters::event_in(Family::Ipv6, Event::RevNatCreated);
        return Some(Reverse6::Kept);
    }
    let ptr = REVNAT6.get_ptr_mut(&s.reply)?;
    // SAFETY: a live map value, read in place.
    if unsafe { (*ptr).restores(&s.key) } {
        // This flow's own entry (a racing CPU, or a reopened tuple).
        return Some(Reverse6::Kept);
    }
    if take_if_gone(&s.reply, ptr, &s.rev, &mut s.holder, cfg) {
        return Some(Reverse6::Kept);
    }
    Some(Reverse6::Clash)
}

/// Takes the reply tuple `key`, whose reverse entry is at `rev`, for
/// `entry` if the flow holding it is gone: its conntrack entry is missing
/// (and the claim older than `CLAIM_GRACE_S`), points elsewhere, or has
/// expired. Of racing CPUs only one swaps the claim tag; the winner writes
/// the rest and removes a stale conntrack entry that still points here.
/// `holder` is scratch room for the holder's conntrack key. (`snat6`
/// judges a pool port's holder alike, in its scratch slot; this lean copy
/// of the judgement is what fits `lb_xdp6`'s stack.)
#[inline(always)]
fn take_if_gone(
    key: &FlowKey6,
    rev: *mut RevNatEntry6,
    entry: &RevNatEntry6,
    holder: &mut FlowKey6,
    cfg: &NodeConfig,
) -> bool {
    let now = entry.created_s;
    // SAFETY: `rev` is a live map value; fields are read one at a time.
    let (seen_claim, created, replied) = unsafe {
        *holder = FlowKey6::client_of(&*rev, key.proto);
        ((*rev).claim, (*rev).created_s, (*rev).last_seen_s)
    };
    let holder = &*holder;
    let ct = CONNTRACK6
        .get_ptr(holder)
        .filter(|&ct| snat6::points_at(ct, holder, key));
    let gone = match ct {
        // A claim in progress writes its conntrack entry right after this one.
        None => now.wrapping_sub(created) >= CLAIM_GRACE_S,
        Some(ct) => {
            // SAFETY: as above.
            let (state, flags, last) = unsafe {
                (
                    CtState::from_u8((*ct).state),
                    (*ct).flags,
                    (*ct).last_seen_s,
                )
            };
            expired(
                now,
                last.max(replied),
                timeout_s(state, flags, &cfg.timeouts),
            )
        }
    };
    if !gone {
        return false;
    }
    // SAFETY: `claim` is an aligned u64 of a live map value, swapped
    // atomically; the winner alone writes the other fields.
    unsafe {
        let (_, swapped) = core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(&raw mut (*rev).claim, seen_claim, entry.claim);
        if !swapped {
            return false;
        }
        copy_to(&raw mut (*rev).svc_addr, &entry.svc_addr);
        copy_to(&raw mut (*rev).client_addr, &entry.client_addr);
        (*rev).svc_port = entry.svc_port;
        (*rev).client_port = entry.client_port;
        (*rev).created_s = entry.created_s;
        (*rev).last_seen_s = 0;
        (*rev).ifindex = 0;
    }
    if CONNTRACK6
        .get_ptr(holder)
        .is_some_and(|ct| snat6::points_at(ct, holder, key))
    {
        let _ = CONNTRACK6.remove(holder);
    }
    true
}
