//! Backend selection: Maglev lookup of a new flow, validation of a recalled one.

use lb_common::{
    flow_hash, Backend, BackendId, NodeConfig, ServiceEntry, BACKEND_F_ACTIVE, SLOTS_PER_SLAB_ENTRY,
};

use crate::{
    maps::{BACKENDS, MAGLEV},
    parse::Flow,
};

/// A backend chosen for a flow: its id and a copy of its entry.
#[derive(Clone, Copy)]
pub struct Chosen {
    /// Index in the backends array.
    pub id: BackendId,
    /// Copy of the entry.
    pub backend: Backend,
}

/// Looks up an active backend by id.
#[inline(always)]
pub fn active_backend(id: BackendId) -> Option<Backend> {
    let backend = *BACKENDS.get(id)?;
    if backend.flags & BACKEND_F_ACTIVE == 0 {
        return None;
    }
    Some(backend)
}

/// Looks up an active backend of service `service_id` by id.
#[inline(always)]
pub fn backend(id: BackendId, service_id: u32) -> Option<Backend> {
    let backend = active_backend(id)?;
    if backend.service_id != service_id {
        return None;
    }
    Some(backend)
}

/// Picks the backend of a new flow from the service's Maglev table, by the
/// flow hash under the cluster's secret key.
#[inline(always)]
pub fn maglev(svc: &ServiceEntry, flow: &Flow, cfg: &NodeConfig) -> Option<Chosen> {
    if svc.table_size == 0 {
        return None;
    }
    let hash = flow_hash(
        &cfg.hash_key,
        flow.src,
        flow.dst,
        flow.sport,
        flow.dport,
        flow.proto,
    );
    by_hash(svc, hash)
}

/// Picks the backend at `hash`'s slot of the service's Maglev table.
#[inline(always)]
pub fn by_hash(svc: &ServiceEntry, hash: u32) -> Option<Chosen> {
    let id = slot_id(svc, hash)?;
    let backend = backend(id, svc.id)?;
    Some(Chosen { id, backend })
}

/// The backend id at `hash`'s slot of the service's Maglev table, in the
/// shared slab: the same lookup for both families (an IPv6 port's table
/// holds ids of `BACKENDS6`).
#[inline(always)]
pub fn slot_id(svc: &ServiceEntry, hash: u32) -> Option<BackendId> {
    if svc.table_size == 0 {
        return None;
    }
    let slot = svc.table_offset.wrapping_add(hash % svc.table_size);
    let pair = MAGLEV.get(slot / SLOTS_PER_SLAB_ENTRY)?;
    Some(pair[(slot % SLOTS_PER_SLAB_ENTRY) as usize])
}
