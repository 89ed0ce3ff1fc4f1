//! Placing a frontend's tables: the slab ranges and ids a rebuild reserves
//! (all or nothing), the backends it writes, its Maglev table and the
//! table pods use, and what the tables it replaces give back.

use super::{
    backend_entry, maglev, ranges, service_flags, AppliedBackend, AppliedFrontend, BTreeMap,
    BackendId, DesiredFrontend, Frontend, Instant, InternalTable, MapOp, Ops, Planner,
    ServiceEntry, SocketAddrV4, SourceRange, MAX_SERVICES,
};

impl Planner {
    /// A new table (in free slab slots) for a frontend whose backend set changed.
    /// Surviving backends keep their ids, so their established flows stay.
    pub(super) fn rebuild(
        &mut self,
        frontend: Frontend,
        want: &DesiredFrontend,
        current: Option<&AppliedFrontend>,
        ops: &mut Ops,
        now: Instant,
    ) -> Result<AppliedFrontend, String> {
        let size = maglev::table_size_for(
            want.backends.values().filter(|b| b.selected).count(),
            current.map_or(0, |c| c.entry.table_size),
        );
        let internal_size = internal_table_size(want, current);
        // Reserve everything first, so a failure changes nothing.
        let offset = self.reserve_slots(size, now)?;
        let internal_offset = match self.reserve_slots(internal_size, now) {
            Ok(at) => at,
            Err(e) => {
                self.slab.free(offset, size, now);
                return Err(e);
            }
        };
        let ranges = [(offset, size), (internal_offset, internal_size)];
        let service_id = if let Some(cur) = current {
            cur.entry.id
        } else {
            let Some(id) = self.service_ids.alloc(now) else {
                self.free_ranges(&ranges, now);
                return Err(format!("more than {MAX_SERVICES} service frontends"));
            };
            id
        };
        let mut backends = BTreeMap::new();
        let mut backend_ops = Vec::new();
        for (addr, info) in &want.backends {
            let entry = backend_entry(*addr, *info, service_id);
            let id = if let Some(kept) = current.and_then(|c| c.backends.get(addr)) {
                if kept.local != info.local
                    || kept.selected != info.selected
                    || kept.selected_internal != info.selected_internal
                {
                    backend_ops.push(MapOp::SetBackend(kept.id, entry));
                }
                kept.id
            } else {
                let Some(id) = self.backend_ids.alloc(now) else {
                    self.undo(&backend_ops, current, &ranges, service_id, now);
                    return Err(format!(
                        "more than {} backends in all (frontends times endpoints): raise --max-backends",
                        self.backend_capacity - 1
                    ));
                };
                backend_ops.push(MapOp::SetBackend(id, entry));
                id
            };
            backends.insert(
                *addr,
                AppliedBackend {
                    id,
                    local: info.local,
                    selected: info.selected,
                    selected_internal: info.selected_internal,
                },
            );
        }
        ops.backends.extend(backend_ops);
        // Only selected backends take new connections; the others keep their
        // entries so that their established flows continue.
        let addrs = selected_addrs(&backends, |b| b.selected);
        if size > 0 {
            let ids: Vec<BackendId> = addrs.iter().map(|a| backends[a].id).collect();
            let table = match self.prebuilt.remove(&frontend) {
                Some((built, table)) if built == size => table,
                _ => maglev::build_table(&addrs, size),
            };
            let slots = table.into_iter().map(|i| ids[i as usize]).collect();
            ops.tables.push(MapOp::SetTable { offset, slots });
        }
        let internal = want
            .has_internal_table()
            .then(|| internal_table(service_id, &backends, (internal_offset, internal_size), ops));
        let entry = ServiceEntry {
            id: service_id,
            backend_count: u32::try_from(addrs.len()).expect("fewer than 2^32 backends"),
            table_offset: offset,
            table_size: size,
            affinity_timeout: want.affinity_timeout,
            flags: service_flags(want),
        };
        let had: &[SourceRange] = current.map_or(&[], |c| &c.source_ranges);
        ranges::update(service_id, had, &want.source_ranges, ops);
        ops.services.push(MapOp::SetService(frontend.key(), entry));
        if current.is_none_or(|c| c.service != want.service) {
            ops.services
                .push(MapOp::SetLabel(service_id, want.service.to_string()));
        }
        Ok(AppliedFrontend {
            frontend,
            service: want.service.clone(),
            port_name: want.port_name.clone(),
            entry,
            backends,
            source_ranges: want.source_ranges.clone(),
            internal,
            node_port_addrs: want.node_port_addrs.clone(),
        })
    }

    fn reserve_slots(&mut self, size: u32, now: Instant) -> Result<u32, String> {
        if size == 0 {
            return Ok(0);
        }
        self.slab.alloc(size, now).ok_or_else(|| {
            format!(
                "the Maglev slab has no {size} free contiguous slots ({} free of {}): raise --maglev-slab-slots",
                self.slab.free_slots(),
                self.slab.total()
            )
        })
    }

    /// Frees slab ranges (offset, size) that `rebuild` reserved.
    fn free_ranges(&mut self, ranges: &[(u32, u32)], now: Instant) {
        for &(offset, size) in ranges {
            self.slab.free(offset, size, now);
        }
    }

    /// Gives back what `rebuild` reserved before it failed.
    fn undo(
        &mut self,
        backend_ops: &[MapOp],
        current: Option<&AppliedFrontend>,
        ranges: &[(u32, u32)],
        service_id: u32,
        now: Instant,
    ) {
        for op in backend_ops {
            if let MapOp::SetBackend(id, _) = op {
                if current.is_none_or(|c| c.backends.values().all(|b| b.id != *id)) {
                    self.backend_ids.free(*id, now);
                }
            }
        }
        self.free_ranges(ranges, now);
        if current.is_none() {
            self.service_ids.free(service_id, now);
        }
    }

    /// Clears the backends `old` had and `new` has not, and frees `old`'s table.
    pub(super) fn retire(
        &mut self,
        old: &AppliedFrontend,
        new: &AppliedFrontend,
        ops: &mut Ops,
        now: Instant,
    ) {
        for (addr, applied) in &old.backends {
            if !new.backends.contains_key(addr) {
                ops.clears.push(MapOp::ClearBackend(applied.id));
                self.backend_ids.free(applied.id, now);
            }
        }
        self.slab
            .free(old.entry.table_offset, old.entry.table_size, now);
        if let Some(table) = old.internal {
            self.slab.free(table.table_offset, table.table_size, now);
        }
    }
}

/// The size of the table pods use that `want` needs (0 without one), given
/// the one applied as `current` (whose size a table keeps while it fits).
pub(super) fn internal_table_size(
    want: &DesiredFrontend,
    current: Option<&AppliedFrontend>,
) -> u32 {
    if !want.has_internal_table() {
        return 0;
    }
    maglev::table_size_for(
        want.backends
            .values()
            .filter(|b| b.selected_internal)
            .count(),
        current.and_then(|c| c.internal).map_or(0, |t| t.table_size),
    )
}

/// Queues the table pods use (at `(offset, size)` of the slab, reserved) of
/// service id `service_id` over `backends` selected for pods, and its
/// in-cluster entry, before the service entry that turns it on.
fn internal_table(
    service_id: u32,
    backends: &BTreeMap<SocketAddrV4, AppliedBackend>,
    (offset, size): (u32, u32),
    ops: &mut Ops,
) -> InternalTable {
    let addrs = selected_addrs(backends, |b| b.selected_internal);
    if size > 0 {
        let table = maglev::build_table(&addrs, size);
        let slots = table
            .into_iter()
            .map(|i| backends[&addrs[i as usize]].id)
            .collect();
        ops.tables.push(MapOp::SetTable { offset, slots });
    }
    let table = InternalTable {
        backend_count: u32::try_from(addrs.len()).expect("fewer than 2^32 backends"),
        table_offset: offset,
        table_size: size,
    };
    ops.tables.push(MapOp::SetInternalTable(service_id, table));
    table
}

/// The addresses of `backends` that `pick` selects, in order: a table's members.
fn selected_addrs(
    backends: &BTreeMap<SocketAddrV4, AppliedBackend>,
    pick: fn(&AppliedBackend) -> bool,
) -> Vec<SocketAddrV4> {
    backends
        .iter()
        .filter(|(_, b)| pick(b))
        .map(|(a, _)| *a)
        .collect()
}
