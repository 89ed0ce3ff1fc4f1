//! Session affinity (`sessionAffinity: ClientIP`): a client's new flows go to
//! the backend its last flow used, while it used it within the timeout.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{AffinityEntry, AffinityKey, ServiceEntry};

use crate::{
    maps::AFFINITY,
    parse::Flow,
    select::{self, Chosen},
};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;
/// Nanoseconds per second.
const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn key(svc: &ServiceEntry, client: u32) -> AffinityKey {
    AffinityKey {
        service_id: svc.id,
        client_addr: client,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The remembered backend of `client` (its address, network order), if
/// fresh and still taking new connections from this client (its backend
/// flag `selected` set: see `view::selected_flag`).
#[inline(always)]
pub fn recall(svc: &ServiceEntry, client: u32, selected: u8) -> Option<Chosen> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    let entry = AFFINITY.get_ptr_mut(key(svc, client))?;
    let now = now();
    // SAFETY: a valid map value pointer for this RCU section; a racing writer
    // can only make us see another valid backend id or timestamp.
    let remembered = unsafe { *entry };
    if now.saturating_sub(remembered.last_seen_ns) > u64::from(svc.affinity_timeout) * NS_PER_SEC {
        return None;
    }
    let backend = select::backend(remembered.backend_id, svc.id)?;
    if backend.flags & selected == 0 {
        return None;
    }
    // SAFETY: as above; a plain store of the timestamp.
    unsafe { (*entry).last_seen_ns = now };
    Some(Chosen {
        id: remembered.backend_id,
        backend,
    })
}

/// Remembers the backend of a new flow of `client`.
#[inline(always)]
pub fn remember(svc: &ServiceEntry, client: u32, chosen: &Chosen) {
    if svc.affinity_timeout == 0 {
        return;
    }
    let entry = AffinityEntry {
        backend_id: chosen.id,
        pad: 0,
        last_seen_ns: now(),
    };
    // On failure (it cannot fail for an LRU map) the next flow just rehashes.
    let _ = AFFINITY.insert(key(svc, client), entry, BPF_ANY);
}

/// Refreshes the client's affinity to frontend `service_id` on a packet of
/// an established flow (one that began with affinity).
#[inline(always)]
pub fn touch(service_id: u32, flow: &Flow, chosen: &Chosen) {
    let key = AffinityKey {
        service_id,
        client_addr: flow.src,
    };
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: a valid map value pointer; plain stores.
        unsafe {
            if (*entry).backend_id == chosen.id {
                (*entry).last_seen_ns = now();
            }
        }
    }
}
