//! Which table a new connection picks its backend from: clients inside the
//! cluster (packets from pods) and clients from outside see the same table,
//! but for a frontend flagged `SERVICE_F_INTERNAL_TABLE` (an external
//! frontend of a Service with `externalTrafficPolicy: Local`): pods then use
//! the in-cluster table at the frontend's id in `INTERNAL_TABLES`, which
//! holds every node's endpoints, as kube-proxy sends in-cluster traffic to
//! such a frontend to the cluster-wide endpoints.

use lb_common::{
    ServiceEntry, BACKEND_F_SELECTED, BACKEND_F_SELECTED_INTERNAL, SERVICE_F_INTERNAL_TABLE,
};

use crate::{lb::Hook, maps::INTERNAL_TABLES};

/// The frontend as a new connection arriving at `hook` sees it: its entry,
/// with the in-cluster table in place of its own for pods when it has one.
/// `None` when the in-cluster table cannot be read (the caller drops).
#[inline(always)]
pub fn for_client(mut svc: ServiceEntry, hook: Hook) -> Option<ServiceEntry> {
    if hook == Hook::Pod && svc.flags & SERVICE_F_INTERNAL_TABLE != 0 {
        let table = INTERNAL_TABLES.get(svc.id)?;
        svc.backend_count = table.backend_count;
        svc.table_offset = table.table_offset;
        svc.table_size = table.table_size;
    }
    Some(svc)
}

/// The backend flag that says a backend takes new connections from clients
/// arriving at `hook` (for affinity, which recalls a backend without the table).
#[inline(always)]
pub fn selected_flag(hook: Hook) -> u8 {
    if hook == Hook::Pod {
        BACKEND_F_SELECTED_INTERNAL
    } else {
        BACKEND_F_SELECTED
    }
}
