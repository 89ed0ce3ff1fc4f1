//! Session affinity (`sessionAffinity: ClientIP`): a client's new flows go to
//! the backend its last flow used, while it used it within the timeout. A
//! packet's client is its source address; a socket's (socket-level
//! balancing) is its network namespace.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{AffinityEntry, AffinityKey, BackendId, ServiceEntry, SockAffinityKey};

use crate::{
    maps::{AFFINITY, SOCK_AFFINITY},
    parse::Flow,
    select::{self, Chosen},
    select6::{self, Chosen6},
};

/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;
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
fn netns_key(svc: &ServiceEntry, netns_cookie: u64) -> SockAffinityKey {
    SockAffinityKey {
        service_id: svc.id,
        pad: 0,
        netns_cookie,
    }
}

/// The affinity clock: monotonic nanoseconds, at tick resolution.
#[inline(always)]
pub fn now() -> u64 {
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
    fresh(svc, AFFINITY.get_ptr_mut(key(svc, client))?, selected)
}

/// [`recall`] for a socket's client: its network namespace (socket-level
/// balancing decides at `connect`, before the socket has an address).
#[inline(always)]
pub fn recall_netns(svc: &ServiceEntry, netns_cookie: u64, selected: u8) -> Option<Chosen> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    fresh(
        svc,
        SOCK_AFFINITY.get_ptr_mut(netns_key(svc, netns_cookie))?,
        selected,
    )
}

/// [`recall_netns`] for an IPv6 Service port (`SOCK_AFFINITY` is shared:
/// each family's side of a port has its own id): the remembered backend
/// is one of `BACKENDS6`.
#[inline(always)]
pub fn recall_netns6(svc: &ServiceEntry, netns_cookie: u64, selected: u8) -> Option<Chosen6> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    let entry = SOCK_AFFINITY.get_ptr_mut(netns_key(svc, netns_cookie))?;
    let (id, backend) = fresh_by(svc, entry, |id| {
        let backend = select6::active_backend(id)?;
        (backend.service_id == svc.id && backend.flags & selected != 0).then_some(backend)
    })?;
    Some(Chosen6 { id, backend })
}

/// The backend of a remembered `entry`, if fresh and selectable; its time
/// refreshed. ([`fresh_by`] does the same for either family, but IPv4's
/// programs verify in more instructions through it: 343 more for `lb_xdp`.)
#[inline(always)]
fn fresh(svc: &ServiceEntry, entry: *mut AffinityEntry, selected: u8) -> Option<Chosen> {
    let now = now();
    // SAFETY: a valid map value pointer for this RCU section; a racing writer
    // can only make us see another valid backend id or timestamp.
    let remembered = unsafe { *entry };
    if stale(svc, remembered.last_seen_ns, now) {
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

/// Whether an entry of `svc` last used at `last_seen_ns` is older than the
/// Service's affinity timeout at `now` (either family's).
#[inline(always)]
pub fn stale(svc: &ServiceEntry, last_seen_ns: u64, now: u64) -> bool {
    now.saturating_sub(last_seen_ns) > u64::from(svc.affinity_timeout) * NS_PER_SEC
}

/// The id of a remembered `entry` and what `selectable` makes of it, if
/// the entry is fresh and `selectable` takes its backend; its time
/// refreshed then ([`fresh`] for any family's backends).
#[inline(always)]
fn fresh_by<B>(
    svc: &ServiceEntry,
    entry: *mut AffinityEntry,
    selectable: impl FnOnce(BackendId) -> Option<B>,
) -> Option<(BackendId, B)> {
    let now = now();
    // SAFETY: a valid map value pointer for this RCU section; a racing writer
    // can only make us see another valid backend id or timestamp.
    let remembered = unsafe { *entry };
    if stale(svc, remembered.last_seen_ns, now) {
        return None;
    }
    let backend = selectable(remembered.backend_id)?;
    // SAFETY: as above; a plain store of the timestamp.
    unsafe { (*entry).last_seen_ns = now };
    Some((remembered.backend_id, backend))
}

/// A new entry for backend `id`, used now.
#[inline(always)]
fn entry(id: BackendId) -> AffinityEntry {
    AffinityEntry {
        backend_id: id,
        pad: 0,
        last_seen_ns: now(),
    }
}

/// Remembers the backend of a new flow of `client`.
#[inline(always)]
pub fn remember(svc: &ServiceEntry, client: u32, chosen: &Chosen) {
    if svc.affinity_timeout == 0 {
        return;
    }
    // On failure (it cannot fail for an LRU map) the next flow just rehashes.
    let _ = AFFINITY.insert(key(svc, client), entry(chosen.id), BPF_ANY);
}

/// [`remember`] for a socket's network namespace.
#[inline(always)]
pub fn remember_netns(svc: &ServiceEntry, netns_cookie: u64, chosen: &Chosen) {
    remember_netns_id(svc, netns_cookie, chosen.id);
}

/// [`remember_netns`] of backend `id`, of either family.
#[inline(always)]
pub fn remember_netns_id(svc: &ServiceEntry, netns_cookie: u64, id: BackendId) {
    if svc.affinity_timeout == 0 {
        return;
    }
    // As in `remember`.
    let _ = SOCK_AFFINITY.insert(netns_key(svc, netns_cookie), entry(id), BPF_ANY);
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
