//! Connection tracking: recall the backend of an established flow, record a new one.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{CtEntry, Event, FlowKey, ServiceEntry};

use crate::{
    counters,
    maps::CONNTRACK,
    parse::Flow,
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

/// The flow's tracked entry, if its backend still exists unchanged in this service.
#[inline(always)]
pub fn recall(key: &FlowKey, svc: &ServiceEntry) -> Option<(CtEntry, Chosen)> {
    // SAFETY: LRU values are copied out at once; a concurrent update can at worst
    // make us read a mix, which the backend validation below rejects or accepts
    // only when it names a live backend of this service.
    let ct = *unsafe { CONNTRACK.get(key) }?;
    let backend = select::backend(ct.backend_id, svc.id)?;
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
        pad: 0,
        // SAFETY: helper without preconditions.
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    if CONNTRACK.insert(key, entry, BPF_NOEXIST).is_ok() {
        counters::event(Event::ConntrackCreated);
        return true;
    }
    // A stale entry (its backend is gone): replace it.
    CONNTRACK.insert(key, entry, BPF_ANY).is_ok()
}
