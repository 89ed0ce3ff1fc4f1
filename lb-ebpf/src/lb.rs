//! The per-packet decision shared by both programs: service lookup, backend
//! selection or recall, NAT bookkeeping. It only decides; the caller writes.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::debug;
use lb_common::{
    CtEntry, FlowKey, ServiceEntry, Verdict, BACKEND_F_LOCAL, CT_F_AFFINITY, CT_F_SNAT,
};

use crate::{
    affinity, conntrack, counters, filter,
    maps::{CONFIG, REVNAT, SERVICES},
    nat::{self, Rewrite},
    parse::Flow,
    select::{self, Chosen},
};

/// Where the program runs, which decides when the source is translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The node's uplink: clients from outside the node. A backend on another
    /// node gets the packet translated to the node address, so the reply returns here.
    Uplink,
    /// A pod interface: clients are this node's pods, whose addresses are
    /// routable in the cluster, so only a pod reaching itself is translated.
    Pod,
}

/// What to do with a packet.
pub enum Action {
    /// Not ours: hand it on untouched.
    Pass,
    /// Ours but undeliverable: drop it.
    Drop,
    /// Rewrite addresses and ports, then hand it on.
    Rewrite(Rewrite),
}

/// Decides the fate of one parsed packet and counts the verdict.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, flow: &Flow, hook: Hook) -> Action {
    if filter::may_be_frontend(flow) {
        // An established flow keeps its backend while the backend entry
        // exists, also when it takes no new connections (terminating, not
        // ready): its conntrack entry alone decides, without the frontend.
        let ct_key = conntrack::key(flow);
        if let Some((ct, chosen)) = conntrack::recall(&ct_key) {
            return established(flow, &ct_key, &ct, &chosen);
        }
        let key = lb_common::ServiceKey {
            addr: flow.dst,
            port: flow.dport,
            proto: flow.proto,
            pad: 0,
        };
        // SAFETY: SERVICES has no prealloc (see maps.rs): the value stays valid
        // for this RCU read section and is copied out at once.
        if let Some(svc) = unsafe { SERVICES.get(key) } {
            let svc = *svc;
            return to_service(ctx, flow, &svc, &ct_key, hook);
        }
    }
    if filter::may_be_reply(flow) {
        let reply = conntrack::key(flow);
        // SAFETY: the LRU value is copied out at once.
        if let Some(rev) = unsafe { REVNAT.get(reply) } {
            let rev = *rev;
            conntrack::note_flags(
                &conntrack::client_key(&rev, flow.proto),
                flow.tcp_flags,
                false,
            );
            counters::count(Verdict::Reversed);
            return Action::Rewrite(nat::reverse(&rev));
        }
    }
    counters::count(Verdict::Passed);
    Action::Pass
}

/// A packet of a tracked flow: to its backend, with its SNAT if any.
#[inline(always)]
fn established(flow: &Flow, ct_key: &FlowKey, ct: &CtEntry, chosen: &Chosen) -> Action {
    conntrack::note_flags(ct_key, flow.tcp_flags, true);
    counters::count(Verdict::Translated);
    counters::count_service(chosen.backend.service_id, flow.len);
    if ct.flags & CT_F_AFFINITY != 0 {
        affinity::touch(chosen.backend.service_id, flow, chosen);
    }
    let snat_port = if ct.flags & CT_F_SNAT != 0 {
        ct.snat_port
    } else {
        0
    };
    Action::Rewrite(nat::forward(flow, chosen, ct.snat_addr, snat_port))
}

/// A packet to a service frontend that no live conntrack entry covers.
#[inline(always)]
fn to_service<C: EbpfContext>(
    ctx: &C,
    flow: &Flow,
    svc: &ServiceEntry,
    ct_key: &FlowKey,
    hook: Hook,
) -> Action {
    if svc.backend_count == 0 {
        counters::count(Verdict::Dropped);
        return Action::Drop;
    }
    if let Some(rewrite) = new_flow(flow, svc, ct_key, hook) {
        counters::count(Verdict::Translated);
        counters::count_service(svc.id, flow.len);
        Action::Rewrite(rewrite)
    } else {
        counters::count(Verdict::Error);
        // Off the hot path: only a packet that cannot be translated logs.
        debug!(
            ctx,
            "lb: no backend or SNAT port for {:i}:{} -> service {}, dropped",
            u32::from_be(flow.src),
            u16::from_be(flow.sport),
            svc.id
        );
        Action::Drop
    }
}

/// Picks a backend for a flow with no valid conntrack entry and records it.
#[inline(always)]
fn new_flow(flow: &Flow, svc: &ServiceEntry, ct_key: &FlowKey, hook: Hook) -> Option<Rewrite> {
    let chosen: Chosen = if let Some(remembered) = affinity::recall(svc, flow) {
        remembered
    } else {
        let picked = select::maglev(svc, flow)?;
        affinity::remember(svc, flow, &picked);
        picked
    };
    let affinity = if svc.affinity_timeout != 0 {
        CT_F_AFFINITY
    } else {
        0
    };
    let needs_snat = match hook {
        Hook::Uplink => chosen.backend.flags & BACKEND_F_LOCAL == 0,
        Hook::Pod => chosen.backend.addr == flow.src,
    };
    if needs_snat {
        let node_addr = CONFIG.get(0)?.node_addr;
        if node_addr == 0 {
            return None;
        }
        let port = nat::claim_snat_port(flow, &chosen, node_addr)?;
        if !conntrack::record(ct_key, &chosen, node_addr, port, CT_F_SNAT | affinity) {
            return None;
        }
        Some(nat::forward(flow, &chosen, node_addr, port))
    } else {
        if !nat::record_reverse(flow, &chosen)
            || !conntrack::record(ct_key, &chosen, 0, 0, affinity)
        {
            return None;
        }
        Some(nat::forward(flow, &chosen, 0, 0))
    }
}
