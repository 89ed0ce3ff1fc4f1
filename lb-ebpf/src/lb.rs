//! The per-packet decision shared by the programs: service lookup, backend
//! selection or recall, NAT bookkeeping ([`decide`]); at TC egress, reverse
//! translation only ([`decide_reply`]). It only decides; the caller writes.
//!
//! Where a flow is translated keeps netfilter's view of it consistent, so
//! that conntrack (and a firewall's `--ctstate INVALID -j DROP`, as
//! kube-proxy's KUBE-FORWARD installs) sees one connection both ways:
//! - A flow that keeps the client's address (to a backend on this node, or
//!   from a pod to any backend) goes through the stack both ways, as
//!   client <-> backend: translated to the backend where it enters the node
//!   (before netfilter), translated back where its replies leave the node
//!   (TC egress of the uplink or of the client pod's interface, after
//!   netfilter). FORWARD rules (an iptables `NetworkPolicy`) apply to it.
//! - A flow translated to the node's own address (a backend on another
//!   node; a pod reaching itself) is forwarded past the stack both ways
//!   ([`Action::Forward`]): its packets carry the node's address, which the
//!   stack would take for its own, so netfilter sees neither direction.
//!   The FORWARD chain of this node does not see it; the backend's node
//!   enforces its pod's policy, on the node's address as source, as with
//!   kube-proxy's masquerade.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, EbpfContext};
use aya_log_ebpf::debug;
use lb_common::{
    conntrack::CtState, CtEntry, Event, FlowKey, NodeConfig, RevNatEntry, ServiceEntry, Verdict,
    BACKEND_F_LOCAL, CT_F_AFFINITY, CT_F_SNAT,
};

use crate::{
    affinity, config,
    conntrack::{self, Recorded},
    counters, filter, frag, frontend,
    maps::REVNAT,
    nat::{self, Reverse, Rewrite},
    parse::{Flow, Fragment},
    ranges, reject,
    select::{self, Chosen},
    snat, spoof, view,
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
    /// TC egress of the uplink or of a pod interface: packets leaving the
    /// node, or on their way into a pod, whatever device they came in by (an
    /// overlay's `vxlan0`, the uplink, another pod, the node itself). Only
    /// replies of flows that keep the client's address are translated there
    /// ([`decide_reply`]), after netfilter saw them; nothing starts a flow.
    Egress,
}

/// What to do with a packet.
pub enum Action {
    /// Not ours: hand it on untouched.
    Pass,
    /// Ours but undeliverable: drop it.
    Drop,
    /// Rewrite addresses and ports, then hand it on.
    Rewrite(Rewrite),
    /// Rewrite addresses and ports, then forward it past the stack to its
    /// next hop: a packet of a flow translated to the node's address.
    Forward(Rewrite),
    /// A new connection to a Service without endpoints: drop it, answering
    /// with an ICMP port unreachable ([`reject`]).
    Refuse,
}

impl Action {
    /// Whether the packet is translated.
    #[inline(always)]
    pub fn rewrites(&self) -> bool {
        matches!(self, Action::Rewrite(_) | Action::Forward(_))
    }
}

/// Where a packet came from: the hook and the interface it arrived on.
#[derive(Clone, Copy)]
pub struct Ingress {
    /// The program's hook.
    pub hook: Hook,
    /// Index of the interface the packet arrived on: the hook's own, or at
    /// [`Hook::Egress`] the one it entered the node by
    /// (`skb->ingress_ifindex`), [`spoof::NODE_ITSELF`] for a packet the
    /// node originated.
    pub ifindex: u32,
    /// The frame's Ethernet source: the neighbour it came from (at
    /// [`Hook::Egress`], the node's own address once routed; a bridged
    /// frame's sender).
    pub src_mac: [u8; 6],
}

/// Whether a packet from outside claims the node's own address as source:
/// dropped before anything else (see [`spoof::claims_node_address`]).
#[inline(always)]
pub fn spoofs_node(cfg: &NodeConfig, src: u32) -> bool {
    if spoof::claims_node_address(cfg, src) {
        counters::event(Event::NodeSourceSpoofed);
        counters::count(Verdict::Invalid);
        return true;
    }
    false
}

/// Decides the fate of one parsed packet (a later fragment with its
/// datagram's ports, see [`frag::complete`]) and counts the verdict. A first
/// fragment's fate is remembered for the rest of its datagram.
///
/// Every fragment from the uplink goes to the stack, translated, also of a
/// flow forwarded past it: a fragment too big for its route (an overlay's
/// smaller MTU) must go there, and a datagram whose fragments took both
/// paths would never be whole where netfilter's conntrack reassembles it.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, flow: &Flow, at: Ingress, cfg: &NodeConfig) -> Action {
    let action = decide_packet(ctx, flow, at, cfg);
    if flow.fragment == Fragment::First {
        frag::note_first(flow, action.rewrites());
    }
    match action {
        Action::Forward(rw) if at.hook == Hook::Uplink && flow.fragment != Fragment::Whole => {
            Action::Rewrite(rw)
        }
        other => other,
    }
}

/// Decides a packet leaving the node or on its way into a pod
/// ([`Hook::Egress`]): a reply of a tracked flow that keeps the client's
/// address, having crossed the stack as backend -> client, is translated
/// back, after the reverse-path check against the interface it entered the
/// node by. Replies to the node's address were translated where they
/// entered (and forwarded past the stack): they carry the Service's address
/// as source and match no reverse entry, so nothing is translated twice.
/// Everything else passes untouched and uncounted: it was counted where it
/// entered, if ours. A first fragment's fate is remembered as in [`decide`].
#[inline(always)]
pub fn decide_reply<C: EbpfContext>(ctx: &C, flow: &Flow, at: Ingress, cfg: &NodeConfig) -> Action {
    let action = if !to_node(flow, cfg) && filter::may_be_reply(flow) {
        reply(ctx, flow, at, cfg)
    } else {
        None
    };
    if flow.fragment == Fragment::First {
        frag::note_first(flow, action.as_ref().is_some_and(Action::rewrites));
    }
    action.unwrap_or(Action::Pass)
}

/// [`decide`] for one packet. A later fragment only recalls what its first
/// fragment found (the tracked flow, or the reverse entry): it never starts
/// a flow.
#[inline(always)]
fn decide_packet<C: EbpfContext>(ctx: &C, flow: &Flow, at: Ingress, cfg: &NodeConfig) -> Action {
    if filter::may_be_frontend(flow) {
        // An established flow keeps its backend while the backend entry
        // exists, also when it takes no new connections (terminating, not
        // ready): its conntrack entry alone decides, without the frontend.
        let ct_key = conntrack::key(flow);
        if let Some((ct, chosen)) = conntrack::recall(&ct_key, flow, cfg) {
            return established(flow, &ct, &chosen, cfg);
        }
        // A reply to a SNAT port is a reply, even where the port is also a
        // frontend's (a node port or an external IP on the node address).
        if flow.dst == cfg.node_addr && config::in_snat_pool(cfg, flow.dport) {
            if let Some(action) = reply(ctx, flow, at, cfg) {
                return action;
            }
        }
        // A later fragment whose flow is gone (expired, or its backend) is
        // not translated: its first fragment would need the new flow.
        if flow.fragment != Fragment::Later {
            if let Some(svc) = frontend::lookup(flow) {
                let Some(svc) = view::for_client(svc, at.hook) else {
                    counters::count(Verdict::Error);
                    return Action::Drop;
                };
                return to_service(ctx, flow, &svc, &ct_key, at.hook, cfg);
            }
        }
    }
    // Only replies to the node's address are translated where they enter:
    // the others cross the stack untranslated, back at egress, and are
    // counted there (a packet that only collides in the filter goes
    // uncounted).
    if filter::may_be_reply(flow) {
        if !to_node(flow, cfg) {
            return if at.hook == Hook::Pod {
                reply_leaving_pod(ctx, flow, at, cfg)
            } else {
                Action::Pass
            };
        }
        if let Some(action) = reply(ctx, flow, at, cfg) {
            return action;
        }
    }
    counters::count(Verdict::Passed);
    Action::Pass
}

/// A packet leaving a pod that may be a reply crossing the stack: if its
/// reverse entry matches, its path is checked here, where the pod's own
/// interface and the frame's sender are known (a bridge CNI's port: at
/// egress the interface it entered by is the bridge, which every pod on it
/// shares), and a reply failing the check is dropped. Egress translates
/// and counts the rest; the cache of the verified interface is egress's.
#[inline(always)]
fn reply_leaving_pod<C: EbpfContext>(
    ctx: &C,
    flow: &Flow,
    at: Ingress,
    cfg: &NodeConfig,
) -> Action {
    let key = conntrack::key(flow);
    // SAFETY: the LRU value is copied out at once.
    let Some(rev) = (unsafe { REVNAT.get(key) }).copied() else {
        counters::count(Verdict::Passed);
        return Action::Pass;
    };
    if spoof::reply_path_ok(ctx, cfg, &key, &at, rev.ifindex) {
        Action::Pass
    } else {
        counters::event(Event::ReplyRejected);
        counters::count(Verdict::Invalid);
        Action::Drop
    }
}

/// Whether the packet is addressed to the node's own address: a reply of a
/// flow translated to it, if it is a reply.
#[inline(always)]
fn to_node(flow: &Flow, cfg: &NodeConfig) -> bool {
    cfg.node_addr != 0 && flow.dst == cfg.node_addr
}

/// The action for a packet rewritten as `rw` whose flow is translated to the
/// node's address (`via_node`): forwarded past the stack, else handed to it.
#[inline(always)]
fn rewrite(rw: Rewrite, via_node: bool) -> Action {
    if via_node {
        Action::Forward(rw)
    } else {
        Action::Rewrite(rw)
    }
}

/// A reply of a tracked flow (its reverse entry matches), if it is one:
/// translated back, after the reverse-path check; forwarded past the stack
/// when it was addressed to the node.
#[inline(always)]
fn reply<C: EbpfContext>(ctx: &C, flow: &Flow, at: Ingress, cfg: &NodeConfig) -> Option<Action> {
    let key = conntrack::key(flow);
    let ptr = REVNAT.get_ptr_mut(key)?;
    // SAFETY: the LRU value is copied out at once; stamps below are single-field stores.
    let rev = unsafe { *ptr };
    if !spoof::reply_path_ok(ctx, cfg, &key, &at, rev.ifindex) {
        counters::event(Event::ReplyRejected);
        counters::count(Verdict::Invalid);
        return Some(Action::Drop);
    }
    let now = conntrack::now_s();
    // A packet of the node's own has no interface: the one verified stays.
    let verified = if at.ifindex == spoof::NODE_ITSELF {
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
    conntrack::on_reply(&rev, flow, rev.last_seen_s == 0);
    counters::count(Verdict::Reversed);
    Some(rewrite(nat::reverse(&rev), to_node(flow, cfg)))
}

/// A packet of a tracked flow: to its backend, with its SNAT if any.
#[inline(always)]
fn established(flow: &Flow, ct: &CtEntry, chosen: &Chosen, cfg: &NodeConfig) -> Action {
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
    let via_node = snat_port != 0 && ct.snat_addr == cfg.node_addr;
    rewrite(
        nat::forward(flow, chosen, ct.snat_addr, snat_port),
        via_node,
    )
}

/// A packet to a service frontend that no live conntrack entry covers.
#[inline(always)]
fn to_service<C: EbpfContext>(
    ctx: &C,
    flow: &Flow,
    svc: &ServiceEntry,
    ct_key: &FlowKey,
    hook: Hook,
    cfg: &NodeConfig,
) -> Action {
    // A client outside the frontend's source ranges learns nothing: dropped
    // before a refusal could tell it the Service has no endpoints.
    if !ranges::admits(svc, flow.src) {
        counters::event(Event::SourceRangeDenied);
        counters::count(Verdict::Dropped);
        return Action::Drop;
    }
    if svc.backend_count == 0 {
        counters::count(Verdict::Dropped);
        return if reject::refuses(flow, svc) {
            Action::Refuse
        } else {
            Action::Drop
        };
    }
    match new_flow(flow, svc, ct_key, hook, cfg) {
        Ok(action) => action,
        Err(verdict) => {
            counters::count(verdict);
            if verdict == Verdict::Error {
                // Off the hot path: only a packet that cannot be translated logs.
                debug!(
                    ctx,
                    "lb: no backend or SNAT port for {:i}:{} -> service {}, dropped",
                    u32::from_be(flow.src),
                    u16::from_be(flow.sport),
                    svc.id
                );
            }
            Action::Drop
        }
    }
}

/// Picks a backend for a flow with no live conntrack entry and records it.
/// A TCP segment without SYN starts a flow only where no source port must be
/// claimed (a picked-up flow to a backend that sees the client's address):
/// it can never take a SNAT port.
#[inline(always)]
fn new_flow(
    flow: &Flow,
    svc: &ServiceEntry,
    ct_key: &FlowKey,
    hook: Hook,
    cfg: &NodeConfig,
) -> Result<Action, Verdict> {
    let state = conntrack::initial_state(flow).ok_or(Verdict::Invalid)?;
    let chosen: Chosen =
        if let Some(remembered) = affinity::recall(svc, flow.src, view::selected_flag(svc)) {
            remembered
        } else {
            let picked = select::maglev(svc, flow, cfg).ok_or(Verdict::Error)?;
            affinity::remember(svc, flow.src, &picked);
            picked
        };
    let needs_snat = match hook {
        Hook::Uplink => chosen.backend.flags & BACKEND_F_LOCAL == 0,
        // Egress starts no flow (see `decide_reply`): never reached from it.
        Hook::Pod | Hook::Egress => chosen.backend.addr == flow.src,
    };
    if needs_snat && state == CtState::Established {
        // Mid-stream to a translated backend: the flow's port is long gone.
        return Err(Verdict::Invalid);
    }
    let now = conntrack::now_s();
    let rev = RevNatEntry::restoring(ct_key, now, conntrack::new_claim());
    let (snat_addr, snat_port) = if needs_snat {
        if cfg.node_addr == 0 {
            return Err(Verdict::Error);
        }
        let port =
            snat::claim(&chosen, cfg.node_addr, flow.proto, &rev, cfg).ok_or(Verdict::Error)?;
        (cfg.node_addr, port)
    } else {
        match nat::record_reverse(flow, ct_key, &chosen, &rev, cfg).ok_or(Verdict::Error)? {
            Reverse::Kept => (0, 0),
            Reverse::Remapped(port) => (flow.src, port),
        }
    };
    let mut flags = if svc.affinity_timeout != 0 {
        CT_F_AFFINITY
    } else {
        0
    };
    if snat_port != 0 {
        flags |= CT_F_SNAT;
    }
    let entry = CtEntry {
        backend_id: chosen.id,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        snat_port,
        snat_addr,
        flags,
        state: state as u8,
        pad: 0,
        last_seen_s: now,
        // SAFETY: helper without preconditions.
        created_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    match conntrack::record(ct_key, &entry, cfg) {
        Recorded::Mine => {
            counters::count(Verdict::Translated);
            counters::count_service(svc.id, flow.len);
            Ok(rewrite(
                nat::forward(flow, &chosen, snat_addr, snat_port),
                needs_snat,
            ))
        }
        Recorded::Theirs(theirs, their_backend) => {
            if snat_port != 0 {
                snat::release(&ct_key.reply_of(&entry), &rev);
            }
            Ok(established(flow, &theirs, &their_backend, cfg))
        }
        Recorded::Failed => {
            if snat_port != 0 {
                snat::release(&ct_key.reply_of(&entry), &rev);
            }
            Err(Verdict::Error)
        }
    }
}
