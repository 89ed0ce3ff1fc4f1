//! The SNAT port pool. A flow whose source is translated (to the node
//! address, or to another port of its own address after a reply-tuple
//! clash) holds one port of the pool per (backend, translated address): its
//! reverse-NAT entry, keyed by the reply tuple, is the claim. A new flow
//! probes random ports of the pool; it takes a free one with an atomic
//! insert, the port of a flow that is gone (expired, or whose conntrack entry
//! moved on) with an atomic swap of the claim tag, and, when the pool is
//! full, the port of the longest-idle flow that is not assured (early drop:
//! unanswered SYNs and single datagrams give way first). Assured flows keep
//! their ports until they expire.
//!
//! The probes run in `bpf_loop` (the verifier checks one round, not all),
//! and their state lives in a per-CPU scratch slot rather than on the stack,
//! which the rest of the program has nearly used up.

// Keys are passed as references into the scratch slot on purpose: by value
// they would be copied onto the stack, which has no room to spare.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
};
use lb_common::{
    conntrack::{assured, expired, timeout_s, CtState, CtTimeouts, EARLY_DROP_IDLE_S},
    BackendKey, CtEntry, Event, FlowKey, NodeConfig, RevNatEntry, SnatExhaustion, CLAIM_GRACE_S,
    CT_F_SNAT, SNAT_PORT_PROBES, SNAT_PROBES_BEFORE_EARLY_DROP, SNAT_PROBES_WHEN_EXHAUSTED,
};

use crate::{
    counters,
    maps::{CONNTRACK, PROBES, REVNAT, SNAT_EXHAUSTED},
    mem::copy,
    select::Chosen,
};

/// `BPF_NOEXIST`: create only; fails when the key exists (claims a port atomically).
const BPF_NOEXIST: u64 = 1;

/// What holds a reply tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A live flow that keeps it.
    Live,
    /// A live flow that is not assured, idle this many seconds (at least
    /// [`EARLY_DROP_IDLE_S`]): it gives way when the pool is full.
    Idle(u32),
    /// Nobody: the flow expired, or its conntrack entry is gone or moved on.
    Gone,
}

/// A claim's working state, in this CPU's slot of [`PROBES`] (XDP and TC
/// run with bottom halves off, so nothing else on this CPU uses the slot
/// while a program runs).
#[repr(C)]
pub struct Probes {
    /// The idle timeouts (a copy, for judging holders).
    timeouts: CtTimeouts,
    /// The claiming flow's reverse entry.
    entry: RevNatEntry,
    /// The reply tuple judged (the port filled in per probe).
    key: FlowKey,
    /// The conntrack key of that tuple's holder (written by [`judge`]).
    holder: FlowKey,
    /// The holder's claim tag when judged (what [`take_over`] swaps).
    seen_claim: u64,
    /// First port of the pool, host order.
    min: u32,
    /// Ports in the pool.
    range: u32,
    /// The port taken (network order), 0 while none.
    found: u16,
    /// The best early-drop candidate so far (network order).
    victim: u16,
    /// How long it has been idle (0: no candidate).
    victim_idle: u32,
}

/// Whether the conntrack entry `ct` of flow `holder` sends its replies to the tuple `key`.
#[inline(always)]
fn points_at(ct: *const CtEntry, holder: &FlowKey, key: &FlowKey) -> bool {
    // SAFETY: `ct` is a live map value; fields are read one at a time.
    unsafe {
        if (*ct).backend_addr != key.src_addr || (*ct).backend_port != key.src_port {
            return false;
        }
        if (*ct).flags & CT_F_SNAT != 0 {
            (*ct).snat_addr == key.dst_addr && (*ct).snat_port == key.dst_port
        } else {
            holder.src_addr == key.dst_addr && holder.src_port == key.dst_port
        }
    }
}

/// Judges who holds `p.key`, whose reverse entry is at `rev`, at the claim's time.
#[inline(always)]
fn judge(p: &mut Probes, rev: *const RevNatEntry) -> Holder {
    let now = p.entry.created_s;
    // SAFETY: `rev` is a live map value; fields are read one at a time.
    let (created, replied) = unsafe {
        p.holder.src_addr = (*rev).client_addr;
        p.holder.dst_addr = (*rev).svc_addr;
        p.holder.src_port = (*rev).client_port;
        p.holder.dst_port = (*rev).svc_port;
        p.seen_claim = (*rev).claim;
        ((*rev).created_s, (*rev).last_seen_s)
    };
    p.holder.proto = p.key.proto;
    let ct = CONNTRACK
        .get_ptr(&p.holder)
        .filter(|&ct| points_at(ct, &p.holder, &p.key));
    let Some(ct) = ct else {
        // A claim in progress writes its conntrack entry right after this one.
        return if now.wrapping_sub(created) < CLAIM_GRACE_S {
            Holder::Live
        } else {
            Holder::Gone
        };
    };
    // SAFETY: as above.
    let (state, flags, last) = unsafe {
        (
            CtState::from_u8((*ct).state),
            (*ct).flags,
            (*ct).last_seen_s,
        )
    };
    let last = last.max(replied);
    if expired(now, last, timeout_s(state, flags, &p.timeouts)) {
        return Holder::Gone;
    }
    let idle = now.saturating_sub(last);
    if !assured(state, flags) && idle >= EARLY_DROP_IDLE_S {
        Holder::Idle(idle)
    } else {
        Holder::Live
    }
}

/// Takes over the reverse entry at `rev` (judged by [`judge`] just before)
/// for `p.entry`: only one of racing CPUs swaps the claim tag; the winner
/// then writes the rest. The previous holder's conntrack entry, if it still
/// points at this tuple, is removed, so a late packet of it never uses the port.
#[inline(always)]
fn take_over(p: &Probes, rev: *mut RevNatEntry) -> bool {
    // SAFETY: `rev` is a live map value for this RCU section; `claim` is an
    // aligned u64, swapped atomically; the winner alone writes the other fields.
    unsafe {
        let (_, swapped) = core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(&raw mut (*rev).claim, p.seen_claim, p.entry.claim);
        if !swapped {
            return false;
        }
        (*rev).svc_addr = p.entry.svc_addr;
        (*rev).client_addr = p.entry.client_addr;
        (*rev).svc_port = p.entry.svc_port;
        (*rev).client_port = p.entry.client_port;
        (*rev).created_s = p.entry.created_s;
        (*rev).last_seen_s = 0;
        (*rev).ifindex = 0;
    }
    if CONNTRACK
        .get_ptr(&p.holder)
        .is_some_and(|ct| points_at(ct, &p.holder, &p.key))
    {
        let _ = CONNTRACK.remove(&p.holder);
    }
    true
}

/// The reply tuple of a flow to `chosen` translated to `addr`:`port`.
#[inline(always)]
pub fn reply_key(chosen: &Chosen, addr: u32, port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: chosen.backend.addr,
        dst_addr: addr,
        src_port: chosen.backend.port,
        dst_port: port,
        proto,
        pad: [0, 0, 0],
    }
}

/// This CPU's scratch slot, filled for a claim of `key`'s tuples by `entry`.
#[inline(always)]
fn scratch(key: &FlowKey, entry: &RevNatEntry, cfg: &NodeConfig) -> Option<&'static mut Probes> {
    let p = PROBES.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot (see `Probes`), used by one claim at a time.
    let p = unsafe { &mut *p };
    copy(&mut p.timeouts, &cfg.timeouts);
    copy(&mut p.entry, entry);
    copy(&mut p.key, key);
    p.found = 0;
    p.victim = 0;
    p.victim_idle = 0;
    Some(p)
}

/// `bpf_loop` callback: one random probe; 1 stops the loop (a port was
/// taken, or enough probes found a flow that may give way).
#[inline(never)]
extern "C" fn probe(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(p) = PROBES.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, filled by `claim` just before the loop.
    let p = unsafe { &mut *p };
    if p.victim_idle > 0 && index >= u64::from(SNAT_PROBES_BEFORE_EARLY_DROP) {
        return 1;
    }
    // Read once: a local the compiler knows is not zero below.
    let (min, range) = (p.min, p.range);
    if range == 0 {
        return 1;
    }
    // SAFETY: helper without preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    // min + (random % range) <= max <= 65535.
    #[allow(clippy::cast_possible_truncation)]
    let port = ((min + random % range) as u16).to_be();
    p.key.dst_port = port;
    let Some(rev) = REVNAT.get_ptr_mut(&p.key) else {
        if REVNAT.insert(&p.key, &p.entry, BPF_NOEXIST).is_ok() {
            counters::event(Event::RevNatCreated);
            p.found = port;
            return 1;
        }
        return 0;
    };
    match judge(p, rev) {
        Holder::Gone => {
            if take_over(p, rev) {
                counters::event(Event::SnatReclaimed);
                p.found = port;
                return 1;
            }
        }
        Holder::Idle(idle) if idle > p.victim_idle => {
            p.victim = port;
            p.victim_idle = idle;
        }
        Holder::Idle(_) | Holder::Live => {}
    }
    0
}

/// Claims a pool port for a flow to `chosen` translated to `addr` and writes
/// its reverse entry `entry`. Returns the port (network order), or `None`
/// when the pool holds no port this flow may take (counted per backend).
#[inline(always)]
pub fn claim(
    chosen: &Chosen,
    addr: u32,
    proto: u8,
    entry: &RevNatEntry,
    cfg: &NodeConfig,
) -> Option<u16> {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if max < min {
        return None;
    }
    let backend = backend_key(chosen, proto);
    // A pool exhausted this very second is probed lightly: a flood's every
    // packet would otherwise cost all the probes.
    // SAFETY: only the stamp is read.
    let probes =
        if unsafe { SNAT_EXHAUSTED.get(backend) }.is_some_and(|e| e.last_s == entry.created_s) {
            SNAT_PROBES_WHEN_EXHAUSTED
        } else {
            SNAT_PORT_PROBES
        };
    let p = scratch(&reply_key(chosen, addr, 0, proto), entry, cfg)?;
    p.min = min;
    p.range = max - min + 1;
    // SAFETY: `probe` has bpf_loop's callback signature; it takes no context.
    unsafe {
        bpf_loop(probes, probe as *mut c_void, core::ptr::null_mut(), 0);
    }
    if p.found != 0 {
        return Some(p.found);
    }
    if p.victim_idle > 0 {
        p.key.dst_port = p.victim;
        if let Some(rev) = REVNAT.get_ptr_mut(&p.key) {
            if judge(p, rev) != Holder::Live && take_over(p, rev) {
                counters::event(Event::SnatEarlyDrop);
                return Some(p.victim);
            }
        }
    }
    exhausted(&backend, entry.created_s);
    None
}

/// Takes the tuple `key` for `entry` if its reverse entry's holder is gone
/// (a flow keeping the client's address whose tuple an old flow still names).
#[inline(always)]
pub fn take_if_gone(key: &FlowKey, entry: &RevNatEntry, cfg: &NodeConfig) -> bool {
    let Some(p) = scratch(key, entry, cfg) else {
        return false;
    };
    let Some(rev) = REVNAT.get_ptr_mut(&p.key) else {
        return false;
    };
    judge(p, rev) == Holder::Gone && take_over(p, rev)
}

/// Gives back a port claimed by `entry` for a flow that did not happen (another
/// CPU recorded the flow first), unless it was taken over meanwhile.
#[inline(always)]
pub fn release(reply: &FlowKey, entry: &RevNatEntry) {
    // SAFETY: only the claim tag is read.
    if unsafe { REVNAT.get(reply) }.is_some_and(|rev| rev.claim == entry.claim) {
        let _ = REVNAT.remove(reply);
    }
}

/// The key of a backend's exhaustion counter.
#[inline(always)]
fn backend_key(chosen: &Chosen, proto: u8) -> BackendKey {
    BackendKey {
        addr: chosen.backend.addr,
        port: chosen.backend.port,
        proto,
        pad: 0,
    }
}

/// Counts a failed claim at `now`, per backend (the agent reports and logs it).
#[inline(always)]
fn exhausted(backend: &BackendKey, now: u32) {
    counters::event(Event::SnatExhausted);
    if let Some(e) = SNAT_EXHAUSTED.get_ptr_mut(backend) {
        // SAFETY: a live map value shared by all CPUs: an atomic add, and a
        // plain store of the time (racing stores write the same second).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut (*e).count,
                1,
            );
            (*e).last_s = now;
        }
        return;
    }
    let first = SnatExhaustion {
        count: 1,
        last_s: now,
        pad: 0,
    };
    // Losing a race with another CPU's first count loses this one.
    let _ = SNAT_EXHAUSTED.insert(backend, first, BPF_NOEXIST);
}
