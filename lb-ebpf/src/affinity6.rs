//! Session affinity for IPv6 clients, the twin of [`crate::affinity`]: a
//! client's new flows to a Service port go to the backend its last flow
//! used, while it used it within the timeout (`AFFINITY6`, keyed by service
//! id and client address; the entry and the clock are IPv4's). The key is
//! built in this CPU's scratch slot (see `lb6::Scratch6`).

// The key is passed as a reference into the scratch slot on purpose (see
// `lb6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{maps6::AffinityKey6, AffinityEntry, ServiceEntry};

use crate::{
    affinity::{now, stale, BPF_ANY},
    lb6::Scratch6,
    maps6::AFFINITY6,
    select6::{self, Chosen6},
};

/// Writes the key of `client` (raw network-order words) of Service port
/// `service_id` into `s`.
#[inline(always)]
fn key<'a>(s: &'a mut Scratch6, service_id: u32, client: &[u32; 4]) -> &'a AffinityKey6 {
    s.affinity = AffinityKey6 {
        service_id,
        client_addr: *client,
    };
    &s.affinity
}

/// The remembered backend of `client`, if fresh and still taking new
/// connections from this client (its backend flag `selected` set: see
/// `view::selected_flag`); its time refreshed.
#[inline(always)]
pub fn recall(
    svc: &ServiceEntry,
    s: &mut Scratch6,
    client: &[u32; 4],
    selected: u8,
) -> Option<Chosen6> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    let entry = AFFINITY6.get_ptr_mut(key(s, svc.id, client))?;
    let now = now();
    // SAFETY: a valid map value pointer for this RCU section; a racing writer
    // can only make us see another valid backend id or timestamp.
    let remembered = unsafe { *entry };
    if stale(svc, remembered.last_seen_ns, now) {
        return None;
    }
    let backend = select6::active_backend(remembered.backend_id)?;
    if backend.service_id != svc.id || backend.flags & selected == 0 {
        return None;
    }
    // SAFETY: as above; a plain store of the timestamp.
    unsafe { (*entry).last_seen_ns = now };
    Some(Chosen6 {
        id: remembered.backend_id,
        backend,
    })
}

/// Remembers the backend of a new flow of `client`.
#[inline(always)]
pub fn remember(svc: &ServiceEntry, s: &mut Scratch6, client: &[u32; 4], chosen: &Chosen6) {
    if svc.affinity_timeout == 0 {
        return;
    }
    let entry = AffinityEntry {
        backend_id: chosen.id,
        pad: 0,
        last_seen_ns: now(),
    };
    // On failure (it cannot fail for an LRU map) the next flow just rehashes.
    let _ = AFFINITY6.insert(key(s, svc.id, client), &entry, BPF_ANY);
}

/// Refreshes `client`'s affinity to Service port `service_id` on a packet
/// of an established flow (one that began with affinity) to `chosen`.
#[inline(always)]
pub fn touch(s: &mut Scratch6, service_id: u32, client: &[u32; 4], chosen: &Chosen6) {
    if let Some(entry) = AFFINITY6.get_ptr_mut(key(s, service_id, client)) {
        // SAFETY: a valid map value pointer; plain stores.
        unsafe {
            if (*entry).backend_id == chosen.id {
                (*entry).last_seen_ns = now();
            }
        }
    }
}
