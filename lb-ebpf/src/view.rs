//! Which table a new connection picks its backend from, and which backend
//! flag says a backend takes it. Every frontend of a Service port shares the
//! port's backends and its tables, one per traffic policy in use: a frontend
//! flagged `SERVICE_F_LOCAL` uses the `Local` policy's table (backends
//! flagged `BACKEND_F_SELECTED_LOCAL`), the others the `Cluster` policy's
//! (`BACKEND_F_SELECTED`). Pods reaching a frontend flagged
//! `SERVICE_F_INTERNAL_TABLE` (an external frontend of a Service with
//! `externalTrafficPolicy: Local`) use the `Cluster` policy's table, at the
//! Service port's id in `INTERNAL_TABLES`, which holds every node's
//! endpoints: kube-proxy sends in-cluster traffic to such a frontend to the
//! cluster-wide endpoints.

use lb_common::{
    ServiceEntry, BACKEND_F_SELECTED, BACKEND_F_SELECTED_LOCAL, SERVICE_F_INTERNAL_TABLE,
    SERVICE_F_LOCAL,
};

use crate::{lb::Hook, maps::INTERNAL_TABLES};

/// The frontend as a new connection arriving at `hook` sees it: its entry,
/// with the `Cluster` policy's table in place of its own (and the `Local`
/// flag cleared) for pods when it has one. `None` when that table cannot be
/// read (the caller drops).
#[inline(always)]
pub fn for_client(mut svc: ServiceEntry, hook: Hook) -> Option<ServiceEntry> {
    if hook == Hook::Pod && svc.flags & SERVICE_F_INTERNAL_TABLE != 0 {
        let table = INTERNAL_TABLES.get(svc.id)?;
        svc.backend_count = table.backend_count;
        svc.table_offset = table.table_offset;
        svc.table_size = table.table_size;
        svc.flags &= !SERVICE_F_LOCAL;
    }
    Some(svc)
}

/// The backend flag that says a backend takes new connections through the
/// frontend as [`for_client`] returned it (for affinity, which recalls a
/// backend without the table).
#[inline(always)]
pub fn selected_flag(svc: &ServiceEntry) -> u8 {
    if svc.flags & SERVICE_F_LOCAL != 0 {
        BACKEND_F_SELECTED_LOCAL
    } else {
        BACKEND_F_SELECTED
    }
}
