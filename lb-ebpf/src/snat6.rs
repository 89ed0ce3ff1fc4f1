//! The IPv6 SNAT port pool, the twin of [`crate::snat`] over `REVNAT6`,
//! `CONNTRACK6` and `SNAT_EXHAUSTED6`, with the same pool, the same claim
//! rules (a free port by an atomic insert, a gone flow's by an atomic swap
//! of the claim tag, the longest-idle unassured flow's when the pool is
//! full) and the same counters, in IPv6's block. A flow translated to the
//! node's IPv6 address, or remapped to another port of its own address
//! after a reply-tuple clash, holds one port per (backend, translated
//! address): its reverse entry, keyed by the reply tuple, is the claim.
//!
//! The probes run in `bpf_loop`, their state in this CPU's slot of
//! `PROBES6` (IPv6's keys are too big for the stack the rest of the
//! program leaves), and so does the early drop's judgement of its victim.
//! The verifier stacks the callback's frame on its caller's: the claim
//! runs in the SNAT stage programs (`lb6::claimed`), whose frames are
//! small.

// Keys are passed as references into the scratch slot on purpose: by value
// they would be copied onto the stack, which has no room to spare.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
};
use lb_common::{
    conntrack::{assured, expired, timeout_s, CtState, CtTimeouts, EARLY_DROP_IDLE_S},
    maps6::{same, BackendKey6, CtEntry6, FlowKey6, RevNatEntry6},
    Event, Family, NodeConfig, SnatExhaustion, CLAIM_GRACE_S, CT_F_SNAT, SNAT_PORT_PROBES,
    SNAT_PROBES_BEFORE_EARLY_DROP, SNAT_PROBES_WHEN_EXHAUSTED,
};

use crate::{
    counters,
    maps6::{CONNTRACK6, PROBES6, REVNAT6, SNAT_EXHAUSTED6},
    mem::{copy, copy_from, copy_to},
    snat::Holder,
};

/// `BPF_NOEXIST`: create only; fails when the key exists (claims a port atomically).
const BPF_NOEXIST: u64 = 1;

/// [`Probes6::mode`]: probe random ports of the pool.
const MODE_PROBE: u32 = 0;
/// [`Probes6::mode`]: take the tuple `key` over if its holder is gone.
const MODE_TAKE_GONE: u32 = 1;
/// [`Probes6::mode`]: take the tuple `key` over unless its holder is live
/// (the early drop).
const MODE_TAKE_IDLE: u32 = 2;

/// Counts one IPv6 `event`.
#[inline(always)]
fn event(event: Event) {
    counters::event_in(Family::Ipv6, event);
}

/// A claim's working state, in this CPU's slot of `PROBES6` (see
/// `snat::Probes`).
#[repr(C)]
pub struct Probes6 {
    /// The idle timeouts (a copy, for judging holders).
    timeouts: CtTimeouts,
    /// The claiming flow's reverse entry.
    entry: RevNatEntry6,
    /// The reply tuple judged (the port filled in per probe).
    key: FlowKey6,
    /// The conntrack key of that tuple's holder (written by [`judge`]).
    holder: FlowKey6,
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
    /// The claim's backend, the key of its exhaustion counter.
    backend: BackendKey6,
    /// What the callback does (`MODE_*`).
    mode: u32,
    /// 1 once a single judgement took its tuple over.
    taken: u32,
}

/// Whether the conntrack entry `ct` of client flow `holder` sends its
/// replies to the tuple `key`.
#[inline(always)]
pub fn points_at(ct: *const CtEntry6, holder: &FlowKey6, key: &FlowKey6) -> bool {
    // SAFETY: `ct` is a live map value; fields are read one at a time.
    unsafe {
        if !same(&(*ct).backend_addr, &key.src_addr) || (*ct).backend_port != key.src_port {
            return false;
        }
        if (*ct).flags & CT_F_SNAT != 0 {
            same(&(*ct).snat_addr, &key.dst_addr) && (*ct).snat_port == key.dst_port
        } else {
            same(&holder.src_addr, &key.dst_addr) && holder.src_port == key.dst_port
        }
    }
}

/// Judges who holds `p.key`, whose reverse entry is at `rev`, at the claim's time.
#[inline(always)]
fn judge(p: &mut Probes6, rev: *const RevNatEntry6) -> Holder {
    let now = p.entry.created_s;
    // SAFETY: `rev` is a live map value; fields are read one at a time.
    let (created, replied) = unsafe {
        copy_from(&mut p.holder.src_addr, &raw const (*rev).client_addr);
        copy_from(&mut p.holder.dst_addr, &raw const (*rev).svc_addr);
        p.holder.src_port = (*rev).client_port;
        p.holder.dst_port = (*rev).svc_port;
        p.seen_claim = (*rev).claim;
        ((*rev).created_s, (*rev).last_seen_s)
    };
    p.holder.proto = p.key.proto;
    p.holder.pad = [0, 0, 0];
    let ct = CONNTRACK6
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
/// for `p.entry`, as `snat::take_over` does.
#[inline(always)]
fn take_over(p: &Probes6, rev: *mut RevNatEntry6) -> bool {
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
        copy_to(&raw mut (*rev).svc_addr, &p.entry.svc_addr);
        copy_to(&raw mut (*rev).client_addr, &p.entry.client_addr);
        (*rev).svc_port = p.entry.svc_port;
        (*rev).client_port = p.entry.client_port;
        (*rev).created_s = p.entry.created_s;
        (*rev).last_seen_s = 0;
        (*rev).ifindex = 0;
    }
    if CONNTRACK6
        .get_ptr(&p.holder)
        .is_some_and(|ct| points_at(ct, &p.holder, &p.key))
    {
        let _ = CONNTRACK6.remove(&p.holder);
    }
    true
}

/// This CPU's scratch slot, filled for a claim by `entry` (its tuple left
/// for the caller to write).
#[inline(always)]
fn scratch(entry: &RevNatEntry6, cfg: &NodeConfig) -> Option<&'static mut Probes6> {
    let p = PROBES6.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot (see `Probes6`), used by one claim at a time.
    let p = unsafe { &mut *p };
    copy(&mut p.timeouts, &cfg.timeouts);
    copy(&mut p.entry, entry);
    p.found = 0;
    p.victim = 0;
    p.victim_idle = 0;
    p.mode = MODE_PROBE;
    p.taken = 0;
    Some(p)
}

/// Runs the callback `rounds` times at most in `mode`.
#[inline(always)]
fn run(p: &mut Probes6, mode: u32, rounds: u32) {
    p.mode = mode;
    // SAFETY: `probe6` has bpf_loop's callback signature; it takes no context.
    unsafe {
        bpf_loop(rounds, probe6 as *mut c_void, core::ptr::null_mut(), 0);
    }
}

/// One judgement of the tuple `p.key` (`MODE_TAKE_*`): taken over for
/// `p.entry` when its holder may give way.
#[inline(always)]
fn settle(p: &mut Probes6) {
    let Some(rev) = REVNAT6.get_ptr_mut(&p.key) else {
        return;
    };
    let holder = judge(p, rev);
    let gives_way = if p.mode == MODE_TAKE_GONE {
        holder == Holder::Gone
    } else {
        holder != Holder::Live
    };
    if gives_way && take_over(p, rev) {
        p.taken = 1;
    }
}

/// `bpf_loop` callback: one random probe, or one judgement (`Probes6::mode`);
/// 1 stops the loop (a port was taken, enough probes found a flow that may
/// give way, or the judgement is made).
#[inline(never)]
extern "C" fn probe6(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(p) = PROBES6.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, filled by `claim` just before the loop.
    let p = unsafe { &mut *p };
    if p.mode != MODE_PROBE {
        settle(p);
        return 1;
    }
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
    let Some(rev) = REVNAT6.get_ptr_mut(&p.key) else {
        if REVNAT6.insert(&p.key, &p.entry, BPF_NOEXIST).is_ok() {
            event(Event::RevNatCreated);
            p.found = port;
            return 1;
        }
        return 0;
    };
    match judge(p, rev) {
        Holder::Gone => {
            if take_over(p, rev) {
                event(Event::SnatReclaimed);
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

/// Claims a pool port for the new flow tracked as `ct` (its backend, and
/// the address it is translated to in `snat_addr`) and writes its reverse
/// entry `entry`. Returns the port (network order), or `None` when the
/// pool holds no port this flow may take (counted per backend).
#[inline(always)]
pub fn claim(ct: &CtEntry6, proto: u8, entry: &RevNatEntry6, cfg: &NodeConfig) -> Option<u16> {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if max < min {
        return None;
    }
    let p = scratch(entry, cfg)?;
    copy(&mut p.key.src_addr, &ct.backend_addr);
    copy(&mut p.key.dst_addr, &ct.snat_addr);
    p.key.src_port = ct.backend_port;
    p.key.dst_port = 0;
    p.key.proto = proto;
    p.key.pad = [0, 0, 0];
    copy(&mut p.backend.addr, &ct.backend_addr);
    p.backend.port = ct.backend_port;
    p.backend.proto = proto;
    p.backend.pad = 0;
    // A pool exhausted this very second is probed lightly (see `snat::claim`).
    // SAFETY: only the stamp is read.
    let probes = if unsafe { SNAT_EXHAUSTED6.get(&p.backend) }
        .is_some_and(|e| e.last_s == entry.created_s)
    {
        SNAT_PROBES_WHEN_EXHAUSTED
    } else {
        SNAT_PORT_PROBES
    };
    p.min = min;
    p.range = max - min + 1;
    run(p, MODE_PROBE, probes);
    if p.found != 0 {
        return Some(p.found);
    }
    if p.victim_idle > 0 {
        p.key.dst_port = p.victim;
        run(p, MODE_TAKE_IDLE, 1);
        if p.taken != 0 {
            event(Event::SnatEarlyDrop);
            return Some(p.victim);
        }
    }
    exhausted(&p.backend, entry.created_s);
    None
}

/// Gives back a port claimed by `entry` for a flow that did not happen
/// (another CPU recorded the flow first), unless it was taken over meanwhile.
#[inline(always)]
pub fn release(reply: &FlowKey6, entry: &RevNatEntry6) {
    // SAFETY: only the claim tag is read.
    if unsafe { REVNAT6.get(reply) }.is_some_and(|rev| rev.claim == entry.claim) {
        let _ = REVNAT6.remove(reply);
    }
}

/// Counts a failed claim at `now`, per backend (the agent reports and logs it).
#[inline(always)]
fn exhausted(backend: &BackendKey6, now: u32) {
    event(Event::SnatExhausted);
    if let Some(e) = SNAT_EXHAUSTED6.get_ptr_mut(backend) {
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
    let _ = SNAT_EXHAUSTED6.insert(backend, first, BPF_NOEXIST);
}
