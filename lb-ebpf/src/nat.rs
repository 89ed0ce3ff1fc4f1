//! Address translation decisions: the rewrites, and the reverse-NAT entry of
//! a flow that keeps the client's address (with a source-port remap when its
//! reply tuple is already another live flow's).

use lb_common::{Event, FlowKey, NodeConfig, RevNatEntry};

use crate::{counters, maps::REVNAT, parse::Flow, select::Chosen, snat};

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// New source and destination of a packet, raw network-order words.
#[derive(Clone, Copy)]
pub struct Rewrite {
    /// New source address.
    pub src: u32,
    /// New source port.
    pub sport: u16,
    /// New destination address.
    pub dst: u32,
    /// New destination port.
    pub dport: u16,
}

/// What a client's packet becomes: destination the backend, source the client
/// or, with SNAT, the translated address and port.
#[inline(always)]
pub fn forward(flow: &Flow, chosen: &Chosen, snat_addr: u32, snat_port: u16) -> Rewrite {
    let (src, sport) = if snat_port == 0 {
        (flow.src, flow.sport)
    } else {
        (snat_addr, snat_port)
    };
    Rewrite {
        src,
        sport,
        dst: chosen.backend.addr,
        dport: chosen.backend.port,
    }
}

/// What a reply becomes: source the service, destination the client.
#[inline(always)]
pub fn reverse(rev: &RevNatEntry) -> Rewrite {
    Rewrite {
        src: rev.svc_addr,
        sport: rev.svc_port,
        dst: rev.client_addr,
        dport: rev.client_port,
    }
}

/// How a flow that keeps the client's address gets its replies back.
pub enum Reverse {
    /// Under its own tuple (backend -> client), now or already recorded for it.
    Kept,
    /// Another live flow has that tuple (the same client port to another
    /// frontend of this backend): the source port becomes this pool port.
    Remapped(u16),
}

/// Records the reverse entry of a flow that keeps the client's address. The
/// tuple backend -> client may be held by another live flow (client:P to two
/// frontends served by one backend): then, as `nf_nat` does, the flow's
/// source port is remapped to a pool port, so replies never cross flows.
#[inline(always)]
pub fn record_reverse(
    flow: &Flow,
    client: &FlowKey,
    chosen: &Chosen,
    entry: &RevNatEntry,
    cfg: &NodeConfig,
) -> Option<Reverse> {
    let key = snat::reply_key(chosen, flow.src, flow.sport, flow.proto);
    if REVNAT.insert(key, entry, BPF_NOEXIST).is_ok() {
        counters::event(Event::RevNatCreated);
        return Some(Reverse::Kept);
    }
    let ptr = REVNAT.get_ptr(key)?;
    // SAFETY: a live map value, read in place.
    if unsafe { (*ptr).restores(client) } {
        // This flow's own entry (a racing CPU, or a reopened tuple).
        return Some(Reverse::Kept);
    }
    if snat::take_if_gone(&key, entry, cfg) {
        return Some(Reverse::Kept);
    }
    let port = snat::claim(chosen, flow.src, flow.proto, entry, cfg)?;
    counters::event(Event::TupleRemapped);
    Some(Reverse::Remapped(port))
}
