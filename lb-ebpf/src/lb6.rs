//! The per-packet decision for IPv6, the twin of [`crate::lb`] step for step
//! for what IPv6 serves so far: a TCP or UDP flow to an IPv6 frontend whose
//! backend keeps the client's address (a pod on this node from the uplink,
//! any backend from a pod), translated where it enters the node and back
//! where its replies leave (TC egress), as IPv4 translates such flows.
//!
//! A flow translated to the node's IPv6 address (a backend on another node
//! from the uplink, a pod reaching itself) takes a port of the SNAT pool
//! ([`crate::snat6`]), and its replies, addressed to the node, are
//! translated back where they enter the node; both directions are
//! forwarded past the stack ([`Action6::Forward`], [`crate::forward6`]). A
//! reply-tuple clash is remapped to a pool port of the client's address.
//! A packet that starts a flow is finished in the new-flow stage
//! ([`new_flow_stage`], a program of its own reached by a tail call).
//!
//! A packet of such a flow too big for its route is answered with a
//! Packet Too Big the node originates ([`crate::reject6::too_big_xdp`]).
//! `ICMPv6` errors about such a flow's packets, the client's and the
//! replies, are translated and forwarded ([`crate::icmp6`]). On a node without
//! an IPv6 address of its own, a flow that would be translated to it
//! passes untouched, counted `Ipv6SnatUnserved`. Session affinity is kept as IPv4's
//! ([`crate::affinity6`]); fragments are translated as IPv4's are
//! ([`crate::frag6`]).

// Keys and entries are passed as references into the scratch slot (or the
// map) on purpose: by value they would be copied onto the stack, which has
// no room to spare (see `lb6::Scratch6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, EbpfContext};
use lb_common::{
    conntrack::CtState,
    maps6::{same, AffinityKey6, CtEntry6, FlowKey6, FragKey6, RevNatEntry6, ServiceKey6},
    Event, Family, NodeConfig, ServiceEntry, Verdict, BACKEND_F_LOCAL, CT_F_AFFINITY, CT_F_SNAT,
};

use crate::{
    affinity6, config,
    conntrack::{initial_state_of, new_claim, now_s},
    conntrack6::{self, Recorded6},
    counters, filter6, frontend6,
    lb::{Hook, Ingress},
    maps6::{REVNAT6, SCRATCH6},
    mem::copy_from,
    nat6::{self, Reverse6, Rewrite6},
    parse::Fragment,
    parse6::Flow6,
    ranges6, reject6,
    select6::{self, Chosen6},
    snat6, spoof6, view,
};

/// What to do with an IPv6 packet.
pub enum Action6 {
    /// Not ours (or not served yet): hand it on untouched.
    Pass,
    /// Ours but undeliverable: drop it.
    Drop,
    /// Rewrite addresses and ports, then hand it on.
    Rewrite(Rewrite6),
    /// Rewrite addresses and ports, then forward it past the stack to its
    /// next hop: a packet of a flow translated to the node's address.
    Forward(Rewrite6),
    /// A new flow, left in [`Scratch6`]: on to the new-flow stage, by a
    /// tail call ([`new_flow_stage`]).
    NewFlow,
    /// A new connection to a Service without endpoints: drop it, answering
    /// with an `ICMPv6` port unreachable ([`reject6`]).
    Refuse,
}

/// A packet's working state, in this CPU's slot of `SCRATCH6`: IPv6's keys
/// and entries are too big for the programs' 512-byte stack together (XDP
/// and TC run with bottom halves off, so nothing else on this CPU uses the
/// slot while a program runs).
#[repr(C)]
pub struct Scratch6 {
    /// The packet's flow key (the client flow, or a reply's tuple).
    pub key: FlowKey6,
    /// A reply tuple, or a client flow's key for a reply.
    pub reply: FlowKey6,
    /// The holder of a reply tuple.
    pub holder: FlowKey6,
    /// A conntrack entry: recalled, or the new flow's.
    pub ct: CtEntry6,
    /// A reverse entry: the new flow's, a restored one, or a reply's.
    pub rev: RevNatEntry6,
    /// A new flow for the new-flow stage ([`Action6::NewFlow`]): its packet.
    pub flow: Flow6,
    /// Its frontend's entry.
    pub svc: ServiceEntry,
    /// 1 if it came from a pod, 0 from the uplink.
    pub from_pod: u32,
    /// A frontend's lookup key ([`frontend6::lookup`]).
    pub svc_key: ServiceKey6,
    /// The datagram of a fragment (see [`crate::frag6`]).
    pub frag: FragKey6,
    /// A session-affinity key (see [`crate::affinity6`]).
    pub affinity: AffinityKey6,
}

/// This CPU's scratch slot.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch6> {
    let s = SCRATCH6.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot (see `Scratch6`), used by one packet at a time.
    Some(unsafe { &mut *s })
}

/// Counts one IPv6 packet under `verdict`.
#[inline(always)]
fn count(verdict: Verdict) {
    counters::count_in(Family::Ipv6, verdict);
}

/// Counts one IPv6 `event`.
#[inline(always)]
fn event(event: Event) {
    counters::event_in(Family::Ipv6, event);
}

/// Decides the fate of one parsed IPv6 packet where it enters the node
/// (uplink or pod; a later fragment with its datagram's ports, see
/// [`crate::frag6::complete`]) and counts the verdict (see `lb::decide`). The
/// caller notes a first fragment's fate for the rest of its datagram
/// ([`crate::frag6::note_first`]) once the packet is written. A later
/// fragment only recalls what its first fragment found (the tracked flow):
/// it never starts a flow.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, flow: &Flow6, at: Ingress, cfg: &NodeConfig) -> Action6 {
    let Some(s) = scratch() else {
        return Action6::Pass;
    };
    // Only replies to the node's address are translated where they enter,
    // and only a pool port's can match (a flow is translated to the node's
    // address with a pool port only): a reply to a SNAT port is a reply,
    // even where the port is also a frontend's (see `lb::decide`). Looked
    // up once, first: a second inlined lookup would not fit the stack.
    let to_node = to_node(flow, cfg);
    if to_node && config::in_snat_pool(cfg, flow.dport) {
        if let Some(action) = reply(ctx, flow, s, at, cfg, true) {
            return action;
        }
    }
    if filter6::may_be_frontend(flow) {
        // An established flow keeps its backend while the backend entry
        // exists: its conntrack entry alone decides, without the frontend.
        s.key = conntrack6::key(flow);
        if let Some(chosen) = conntrack6::recall(s, flow, cfg) {
            if s.ct.flags & CT_F_AFFINITY != 0 {
                affinity6::touch(s, chosen.backend.service_id, &flow.src, &chosen);
            }
            return established(flow, &chosen, &s.ct, cfg);
        }
        // A later fragment whose flow is gone is not translated: its first
        // fragment would need the new flow.
        if flow.fragment != Fragment::Later {
            if let Some(svc) = frontend6::lookup(flow, &mut s.svc_key) {
                let Some(svc) = view::for_client(svc, at.hook) else {
                    count(Verdict::Error);
                    return Action6::Drop;
                };
                return to_service(flow, &svc, s, at.hook);
            }
        }
    }
    // The other replies cross the stack untranslated, back at egress, and
    // are counted there.
    if !to_node && filter6::may_be_reply(flow) {
        return if at.hook == Hook::Pod {
            reply_leaving_pod(ctx, flow, s, at, cfg)
        } else {
            Action6::Pass
        };
    }
    count(Verdict::Passed);
    Action6::Pass
}

/// Decides an IPv6 packet leaving the node or on its way into a pod
/// ([`Hook::Egress`]): a reply of a tracked flow is translated back, after
/// the reverse-path check; everything else passes untouched and uncounted
/// (see `lb::decide_reply`). A first fragment's fate is noted as in
/// [`decide`].
#[inline(always)]
pub fn decide_reply<C: EbpfContext>(
    ctx: &C,
    flow: &Flow6,
    at: Ingress,
    cfg: &NodeConfig,
) -> Action6 {
    if to_node(flow, cfg) || !filter6::may_be_reply(flow) {
        return Action6::Pass;
    }
    let Some(s) = scratch() else {
        return Action6::Pass;
    };
    reply(ctx, flow, s, at, cfg, false).unwrap_or(Action6::Pass)
}

/// A packet leaving a pod that may be a reply crossing the stack: if its
/// reverse entry matches, its path is checked here, where the pod's own
/// interface is known, and a reply failing the check is dropped (see
/// `lb::reply_leaving_pod`).
#[inline(always)]
fn reply_leaving_pod<C: EbpfContext>(
    ctx: &C,
    flow: &Flow6,
    s: &mut Scratch6,
    at: Ingress,
    cfg: &NodeConfig,
) -> Action6 {
    s.key = conntrack6::key(flow);
    // SAFETY: only the verified interface is read, at once.
    let Some(verified) = (unsafe { REVNAT6.get(&s.key) }).map(|rev| rev.ifindex) else {
        count(Verdict::Passed);
        return Action6::Pass;
    };
    if spoof6::reply_path_ok(ctx, cfg, &s.key, &at, verified) {
        Action6::Pass
    } else {
        event(Event::ReplyRejected);
        count(Verdict::Invalid);
        Action6::Drop
    }
}

/// A reply of a tracked flow (its reverse entry matches), if it is one:
/// translated back, after the reverse-path check; forwarded past the stack
/// when it was addressed to the node (`via_node`).
#[inline(always)]
fn reply<C: EbpfContext>(
    ctx: &C,
    flow: &Flow6,
    s: &mut Scratch6,
    at: Ingress,
    cfg: &NodeConfig,
    via_node: bool,
) -> Option<Action6> {
    s.key = conntrack6::key(flow);
    let ptr = REVNAT6.get_ptr_mut(&s.key)?;
    // SAFETY: the LRU value is copied out at once; stamps below are single-field stores.
    unsafe { copy_from(&mut s.rev, ptr) };
    let rev = &s.rev;
    // A later fragment is the datagram of a first fragment translated here
    // (`frag6::complete` found it by addresses, 32-bit id and protocol),
    // whose path was checked. Its own interface may not be the datagram's:
    // where the node reassembled and cut it again (a bridge CNI with
    // `br_netfilter`'s conntrack), only the first fragment carries the
    // interface the datagram entered the stack by, each later one the
    // bridge port its original fragment arrived by. It is neither judged
    // nor recorded by it.
    let later = flow.fragment == Fragment::Later;
    if !later && !spoof6::reply_path_ok(ctx, cfg, &s.key, &at, rev.ifindex) {
        event(Event::ReplyRejected);
        count(Verdict::Invalid);
        return Some(Action6::Drop);
    }
    let now = now_s();
    // A packet of the node's own has no interface: the one verified stays.
    let verified = if later || at.ifindex == crate::spoof::NODE_ITSELF {
        rev.ifindex
    } else {
        at.ifindex
    };
    if rev.last_seen_s != now || rev.ifindex != verified {
        // SAFETY: as above.
        unsafe {
            (*ptr).last_seen_s = now;
            (*ptr).ifindex = verified;
        }
    }
    conntrack6::on_reply(rev, &mut s.reply, flow, rev.last_seen_s == 0);
    count(Verdict::Reversed);
    Some(rewrite(nat6::reverse(rev), via_node))
}

/// Whether the packet is addressed to the node's own IPv6 address: a reply
/// of a flow translated to it, if it is a reply.
#[inline(always)]
fn to_node(flow: &Flow6, cfg: &NodeConfig) -> bool {
    !same(&cfg.node_addr6, &[0; 4]) && same(&flow.dst, &cfg.node_addr6)
}

/// The action for a packet rewritten as `rw` whose flow is translated to the
/// node's address (`via_node`): forwarded past the stack, else handed to it.
#[inline(always)]
fn rewrite(rw: Rewrite6, via_node: bool) -> Action6 {
    if via_node {
        Action6::Forward(rw)
    } else {
        Action6::Rewrite(rw)
    }
}

/// A packet of a flow tracked as `ct`: to its backend, with its SNAT if any.
#[inline(always)]
fn established(flow: &Flow6, chosen: &Chosen6, ct: &CtEntry6, cfg: &NodeConfig) -> Action6 {
    count(Verdict::Translated);
    counters::count_service(chosen.backend.service_id, flow.len);
    let via_node = ct.flags & CT_F_SNAT != 0 && same(&ct.snat_addr, &cfg.node_addr6);
    rewrite(nat6::forward(flow, ct), via_node)
}

/// A packet to an IPv6 frontend that no live conntrack entry covers.
#[inline(always)]
fn to_service(flow: &Flow6, svc: &ServiceEntry, s: &mut Scratch6, hook: Hook) -> Action6 {
    if !ranges6::admits(svc, flow.src) {
        event(Event::SourceRangeDenied);
        count(Verdict::Dropped);
        return Action6::Drop;
    }
    if svc.backend_count == 0 {
        count(Verdict::Dropped);
        return if reject6::refuses(flow, svc) {
            Action6::Refuse
        } else {
            Action6::Drop
        };
    }
    // The rest runs in the new-flow stage, a program of its own: this one's
    // stack has no room for it, nor for the SNAT claim's `bpf_loop`
    // callback, whose frame the verifier stacks on its caller's.
    s.flow = *flow;
    s.svc = *svc;
    s.from_pod = u32::from(hook == Hook::Pod);
    Action6::NewFlow
}

/// The new-flow stage: the new flow [`decide`] left in `s`
/// ([`Action6::NewFlow`]), picked, translated, recorded and counted as
/// `lb::new_flow` does. The frame is the one `decide` saw (`s.flow`).
#[inline(always)]
pub fn new_flow_stage(s: &mut Scratch6, cfg: &NodeConfig) -> Action6 {
    let flow = s.flow;
    // Only here, where a flow starts (no reply or tracked flow comes from
    // the node's address): in `decide` the check cost the verifier 13%.
    if spoof6::claims_node_address(cfg, &flow.src) {
        event(Event::NodeSourceSpoofed);
        count(Verdict::Invalid);
        return Action6::Drop;
    }
    let svc = s.svc;
    let hook = if s.from_pod != 0 {
        Hook::Pod
    } else {
        Hook::Uplink
    };
    match new_flow(&flow, &svc, s, hook, cfg) {
        Ok(action) => action,
        Err(verdict) => {
            count(verdict);
            Action6::Drop
        }
    }
}

/// Picks a backend for the flow `s.key`, with no live conntrack entry, and
/// records it (see `lb::new_flow`): a flow IPv4 would translate to the
/// node's address is translated to its IPv6 address, with a pool port; on
/// a node without one it passes untouched, counted `Ipv6SnatUnserved`.
#[inline(always)]
fn new_flow(
    flow: &Flow6,
    svc: &ServiceEntry,
    s: &mut Scratch6,
    hook: Hook,
    cfg: &NodeConfig,
) -> Result<Action6, Verdict> {
    let state = initial_state_of(flow.proto, flow.tcp_flags).ok_or(Verdict::Invalid)?;
    let chosen =
        if let Some(remembered) = affinity6::recall(svc, s, &flow.src, view::selected_flag(svc)) {
            remembered
        } else {
            let picked = select6::maglev(svc, flow, cfg).ok_or(Verdict::Error)?;
            affinity6::remember(svc, s, &flow.src, &picked);
            picked
        };
    let needs_snat = match hook {
        Hook::Uplink => chosen.backend.flags & BACKEND_F_LOCAL == 0,
        // Egress starts no flow (see `decide_reply`): never reached from it.
        Hook::Pod | Hook::Egress => same(&chosen.backend.addr, &flow.src),
    };
    if needs_snat {
        if same(&cfg.node_addr6, &[0; 4]) {
            return Ok(unserved());
        }
        if state == CtState::Established {
            // Mid-stream to a translated backend: the flow's port is long gone.
            return Err(Verdict::Invalid);
        }
    }
    let now = now_s();
    s.rev = RevNatEntry6::restoring(&s.key, now, new_claim());
    s.ct = CtEntry6 {
        backend_id: chosen.id,
        backend_port: chosen.backend.port,
        snat_port: 0,
        backend_addr: chosen.backend.addr,
        snat_addr: [0; 4],
        flags: if svc.affinity_timeout != 0 {
            CT_F_AFFINITY
        } else {
            0
        },
        state: state as u8,
        pad: 0,
        last_seen_s: now,
        // SAFETY: helper without preconditions.
        created_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    let remap = !needs_snat
        && match nat6::record_reverse(flow, &chosen, s, cfg).ok_or(Verdict::Error)? {
            Reverse6::Kept => false,
            Reverse6::Clash => true,
        };
    if needs_snat || remap {
        // A pool port: for the node's address, or the client's after a clash.
        s.ct.snat_addr = if needs_snat { cfg.node_addr6 } else { flow.src };
        let port = snat6::claim(&s.ct, flow.proto, &s.rev, cfg).ok_or(Verdict::Error)?;
        if remap {
            event(Event::TupleRemapped);
        }
        s.ct.snat_port = port;
        s.ct.flags |= CT_F_SNAT;
        // The claim's tuple, to give back if the flow does not happen (the
        // winner's entry then replaces `s.ct`).
        s.holder.src_addr = s.ct.backend_addr;
        s.holder.dst_addr = s.ct.snat_addr;
        s.holder.src_port = s.ct.backend_port;
        s.holder.dst_port = port;
        s.holder.proto = flow.proto;
        s.holder.pad = [0, 0, 0];
    }
    let claimed = needs_snat || remap;
    match conntrack6::record(s, cfg) {
        Recorded6::Mine => {
            count(Verdict::Translated);
            counters::count_service(svc.id, flow.len);
            Ok(rewrite(nat6::forward(flow, &s.ct), needs_snat))
        }
        Recorded6::Theirs(their_backend) => {
            if claimed {
                snat6::release(&s.holder, &s.rev);
            }
            Ok(established(flow, &their_backend, &s.ct, cfg))
        }
        Recorded6::Failed => {
            if claimed {
                snat6::release(&s.holder, &s.rev);
            }
            Err(Verdict::Error)
        }
    }
}

/// A new flow that needs SNAT on a node without an IPv6 address: passed
/// untouched, and counted.
#[inline(always)]
fn unserved() -> Action6 {
    event(Event::Ipv6SnatUnserved);
    count(Verdict::Passed);
    Action6::Pass
}
