//! IPv6 backend selection: the Maglev slot of a new flow by `flow_hash6`
//! (the slab lookup is IPv4's, [`select::slot_id`]), and the validation of
//! a recalled one against `BACKENDS6`.

use lb_common::{
    flow_hash6, maps6::Backend6, BackendId, NodeConfig, ServiceEntry, BACKEND_F_ACTIVE,
};

use crate::{maps6::BACKENDS6, parse6::Flow6, select};

/// An IPv6 backend chosen for a flow: its id and a copy of its entry.
#[derive(Clone, Copy)]
pub struct Chosen6 {
    /// Index in the backends arrays (an entry of `BACKENDS6`).
    pub id: BackendId,
    /// Copy of the entry.
    pub backend: Backend6,
}

/// Looks up an active IPv6 backend by id.
#[inline(always)]
pub fn active_backend(id: BackendId) -> Option<Backend6> {
    let backend = *BACKENDS6.get(id)?;
    if backend.flags & BACKEND_F_ACTIVE == 0 {
        return None;
    }
    Some(backend)
}

/// Picks the backend of a new flow from the IPv6 frontend's Maglev table,
/// by the flow hash under the cluster's secret key.
#[inline(always)]
pub fn maglev(svc: &ServiceEntry, flow: &Flow6, cfg: &NodeConfig) -> Option<Chosen6> {
    if svc.table_size == 0 {
        return None;
    }
    let hash = flow_hash6(
        &cfg.hash_key,
        &flow.src,
        &flow.dst,
        flow.sport,
        flow.dport,
        flow.proto,
    );
    by_hash(svc, hash)
}

/// Picks the IPv6 backend at `hash`'s slot of the frontend's Maglev table.
#[inline(always)]
pub fn by_hash(svc: &ServiceEntry, hash: u32) -> Option<Chosen6> {
    let id = select::slot_id(svc, hash)?;
    let backend = active_backend(id)?;
    if backend.service_id != svc.id {
        return None;
    }
    Some(Chosen6 { id, backend })
}
