//! From the desired state to an ordered list of map operations, keeping what
//! is applied: ids, Maglev tables and their place in the slab.
//!
//! Order matters for packets in flight: new backends are written before the
//! tables that point at them, a table before the service entry that publishes
//! it, and a backend is cleared only after no published table points at it.
//! Freed slab ranges and ids wait for a grace period before reuse.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use lb_common::{
    Backend, BackendId, ServiceEntry, ServiceKey, BACKEND_F_ACTIVE, BACKEND_F_LOCAL,
    BACKEND_F_SELECTED, MAX_BACKENDS, MAX_SERVICES, SERVICE_F_REJECT, SERVICE_F_SOURCE_RANGES,
};

use crate::{
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend, ObjectName, SourceRange},
    filter::{self, FilterBits, FilterWrites},
    maglev,
    slab::{IdAllocator, SlabAllocator},
};

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Write a backend entry.
    SetBackend(BackendId, Backend),
    /// Write a Maglev table into unpublished slab slots.
    SetTable {
        /// First slot.
        offset: u32,
        /// Backend id of each slot.
        slots: Vec<BackendId>,
    },
    /// Publish (create or replace) a service entry.
    SetService(ServiceKey, ServiceEntry),
    /// Remove a service entry.
    DeleteService(ServiceKey),
    /// Clear a backend entry that nothing publishes any more.
    ClearBackend(BackendId),
    /// Name a service id ("namespace/name") for `lb-agent status`.
    SetLabel(u32, String),
    /// Forget a service id's name.
    DeleteLabel(u32),
    /// Write one word of the pass-through filter (index, bits).
    SetFilterWord(u32, u64),
    /// Allow a client range for a service id.
    SetSourceRange(u32, SourceRange),
    /// Remove a client range of a service id.
    DeleteSourceRange(u32, SourceRange),
}

/// The operations of one sync, in the order they must be applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operations, in order.
    pub ops: Vec<MapOp>,
}

/// A frontend that could not be placed; its previous state stays applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// The frontend.
    pub frontend: Frontend,
    /// Its Service.
    pub service: ObjectName,
    /// What ran out.
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Service {} frontend {}: {}",
            self.service, self.frontend, self.message
        )
    }
}

impl std::error::Error for PlanError {}

pub use crate::applied::{AppliedBackend, AppliedFrontend};

/// The applied state, and the planner of changes to it.
#[derive(Debug)]
pub struct Planner {
    frontends: BTreeMap<Frontend, AppliedFrontend>,
    slab: SlabAllocator,
    backend_ids: IdAllocator,
    service_ids: IdAllocator,
    filter: FilterBits,
    /// Maglev tables built ahead for the plan under way: frontend -> (size, backend indices).
    prebuilt: HashMap<Frontend, (u32, Vec<u32>)>,
    /// Source ranges the maps hold, all frontends together.
    source_ranges: usize,
}

#[derive(Default)]
struct Ops {
    backends: Vec<MapOp>,
    tables: Vec<MapOp>,
    services: Vec<MapOp>,
    deletes: Vec<MapOp>,
    clears: Vec<MapOp>,
}

impl Planner {
    /// A planner for empty maps with a slab of `slab_slots`; freed slots and ids wait `grace`.
    #[must_use]
    pub fn new(slab_slots: u32, grace: Duration) -> Self {
        Self {
            frontends: BTreeMap::new(),
            slab: SlabAllocator::new(slab_slots, grace),
            backend_ids: IdAllocator::new(1, MAX_BACKENDS, grace),
            service_ids: IdAllocator::new(1, MAX_SERVICES + 1, grace),
            filter: FilterBits::default().with_grace(grace),
            prebuilt: HashMap::new(),
            source_ranges: 0,
        }
    }

    /// A planner that takes over frontends an earlier agent applied: their
    /// ids and slab ranges count as used, so the next plan changes only what
    /// differs. Frontends whose ranges or ids collide are dropped from the
    /// record (and so rewritten by the next plan). `filter_words` is what the
    /// pass-through filter holds: the next plan sets the bits it lacks.
    #[must_use]
    pub fn adopt(
        frontends: Vec<AppliedFrontend>,
        filter_words: Vec<u64>,
        slab_slots: u32,
        grace: Duration,
    ) -> Self {
        let mut planner = Self::new(slab_slots, grace);
        planner.filter = FilterBits::new(filter_words).with_grace(grace);
        for applied in frontends {
            let ok = planner.service_ids.reserve(applied.entry.id)
                && planner
                    .slab
                    .reserve(applied.entry.table_offset, applied.entry.table_size)
                && applied
                    .backends
                    .values()
                    .all(|b| planner.backend_ids.reserve(b.id));
            if ok {
                planner.source_ranges += applied.source_ranges.len();
                planner.filter.add(filter::bits_of(&applied));
                planner.frontends.insert(applied.frontend, applied);
            }
        }
        planner
    }

    /// The frontends as applied.
    pub fn frontends(&self) -> impl Iterator<Item = &AppliedFrontend> {
        self.frontends.values()
    }

    /// The operations that turn the applied state into `desired`, which then
    /// counts as applied. Frontends that cannot be placed are reported and
    /// keep their previous state; the others are planned regardless.
    pub fn plan(&mut self, desired: &DesiredState, now: Instant) -> (Plan, Vec<PlanError>) {
        let gone: Vec<Frontend> = self
            .frontends
            .keys()
            .filter(|f| !desired.contains_key(f))
            .copied()
            .collect();
        let all = gone.into_iter().chain(desired.keys().copied());
        self.plan_frontends(desired, all, now)
    }

    /// Like [`Planner::plan`] for the given frontends only: each is placed as
    /// `desired` has it, or removed when `desired` lacks it. The caller
    /// vouches that every other frontend is unchanged.
    pub fn plan_frontends(
        &mut self,
        desired: &DesiredState,
        frontends: impl IntoIterator<Item = Frontend>,
        now: Instant,
    ) -> (Plan, Vec<PlanError>) {
        self.slab.reclaim(now);
        let frontends: Vec<Frontend> = frontends.into_iter().collect();
        self.prebuild(desired, &frontends);
        let mut ops = Ops::default();
        let mut errors = Vec::new();
        for frontend in frontends {
            if let Some(old) = self.frontends.get(&frontend) {
                self.filter.remove_at(filter::bits_of(old), now);
            }
            if let Some(want) = desired.get(&frontend) {
                if let Err(message) = self.place(frontend, want, &mut ops, now) {
                    errors.push(PlanError {
                        frontend,
                        service: want.service.clone(),
                        message,
                    });
                }
            } else {
                self.remove(frontend, &mut ops, now);
            }
            if let Some(new) = self.frontends.get(&frontend) {
                self.filter.add(filter::bits_of(new));
            }
        }
        self.prebuilt.clear();
        let Ops {
            backends,
            tables,
            services,
            deletes,
            clears,
        } = ops;
        // Filter bits are set before anything they cover is written, and
        // cleared only after it is gone.
        let FilterWrites { before, after } = self.filter.writes_at(now);
        let word = |&(index, bits)| MapOp::SetFilterWord(index, bits);
        let ops = [
            before.iter().map(word).collect(),
            backends,
            tables,
            services,
            deletes,
            clears,
            after.iter().map(word).collect(),
        ]
        .concat();
        (Plan { ops }, errors)
    }

    /// Builds, on every core, the Maglev tables of the frontends among
    /// `frontends` whose table the plan will rebuild (a pure function of the
    /// selected backends and the size, which `rebuild` decides alike).
    fn prebuild(&mut self, desired: &DesiredState, frontends: &[Frontend]) {
        let mut keys = Vec::new();
        let mut jobs = Vec::new();
        for frontend in frontends {
            let Some(want) = desired.get(frontend) else {
                continue;
            };
            let size = self.slots_to_write(frontend, want);
            if size > 0 {
                let addrs: Vec<SocketAddrV4> = want
                    .backends
                    .iter()
                    .filter(|(_, b)| b.selected)
                    .map(|(a, _)| *a)
                    .collect();
                keys.push((*frontend, size));
                jobs.push((addrs, size));
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let tables = maglev::build_tables(&jobs, threads);
        self.prebuilt = keys
            .into_iter()
            .zip(tables)
            .map(|((frontend, size), table)| (frontend, (size, table)))
            .collect();
    }

    /// The Maglev slots planning `frontend` as `want` writes: its new
    /// table's size, or 0 when its table stays.
    #[must_use]
    pub fn slots_to_write(&self, frontend: &Frontend, want: &DesiredFrontend) -> u32 {
        let current = self.frontends.get(frontend);
        if current.is_some_and(|cur| same_table(cur, want)) {
            return 0;
        }
        maglev::table_size_for(
            want.backends.values().filter(|b| b.selected).count(),
            current.map_or(0, |c| c.entry.table_size),
        )
    }

    fn remove(&mut self, frontend: Frontend, ops: &mut Ops, now: Instant) {
        let Some(applied) = self.frontends.remove(&frontend) else {
            return;
        };
        ops.deletes.push(MapOp::DeleteService(frontend.key()));
        ops.deletes.push(MapOp::DeleteLabel(applied.entry.id));
        ranges::update(applied.entry.id, &applied.source_ranges, &[], ops);
        self.source_ranges -= applied.source_ranges.len();
        for backend in applied.backends.values() {
            ops.clears.push(MapOp::ClearBackend(backend.id));
            self.backend_ids.free(backend.id, now);
        }
        self.slab
            .free(applied.entry.table_offset, applied.entry.table_size, now);
        self.service_ids.free(applied.entry.id, now);
    }

    fn place(
        &mut self,
        frontend: Frontend,
        want: &DesiredFrontend,
        ops: &mut Ops,
        now: Instant,
    ) -> Result<(), String> {
        let had = self
            .frontends
            .get(&frontend)
            .map_or(0, |cur| cur.source_ranges.len());
        let ranges_after = ranges::count_after(self.source_ranges, had, want.source_ranges.len())?;
        match self.frontends.get_mut(&frontend) {
            Some(cur) if same_table(cur, want) => {
                refresh(cur, want, ops);
            }
            current => {
                let current = current.cloned();
                let applied = self.rebuild(frontend, want, current.as_ref(), ops, now)?;
                if let Some(cur) = current {
                    self.retire(&cur, &applied, ops, now);
                }
                self.frontends.insert(frontend, applied);
            }
        }
        self.source_ranges = ranges_after;
        Ok(())
    }

    /// A new table (in free slab slots) for a frontend whose backend set changed.
    /// Surviving backends keep their ids, so their established flows stay.
    fn rebuild(
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
        // Reserve everything first, so a failure changes nothing.
        let offset = self.reserve_slots(size, now)?;
        let service_id = if let Some(cur) = current {
            cur.entry.id
        } else {
            let Some(id) = self.service_ids.alloc(now) else {
                self.slab.free(offset, size, now);
                return Err(format!("more than {MAX_SERVICES} service frontends"));
            };
            id
        };
        let mut backends = BTreeMap::new();
        let mut backend_ops = Vec::new();
        for (addr, info) in &want.backends {
            let entry = backend_entry(*addr, *info, service_id);
            let id = if let Some(kept) = current.and_then(|c| c.backends.get(addr)) {
                if kept.local != info.local || kept.selected != info.selected {
                    backend_ops.push(MapOp::SetBackend(kept.id, entry));
                }
                kept.id
            } else {
                let Some(id) = self.backend_ids.alloc(now) else {
                    self.undo(&backend_ops, current, (offset, size), service_id, now);
                    return Err(format!("more than {MAX_BACKENDS} backends in all"));
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
                },
            );
        }
        ops.backends.extend(backend_ops);
        // Only selected backends take new connections; the others keep their
        // entries so that their established flows continue.
        let addrs: Vec<SocketAddrV4> = backends
            .iter()
            .filter(|(_, b)| b.selected)
            .map(|(a, _)| *a)
            .collect();
        if size > 0 {
            let ids: Vec<BackendId> = addrs.iter().map(|a| backends[a].id).collect();
            let table = match self.prebuilt.remove(&frontend) {
                Some((built, table)) if built == size => table,
                _ => maglev::build_table(&addrs, size),
            };
            let slots = table.into_iter().map(|i| ids[i as usize]).collect();
            ops.tables.push(MapOp::SetTable { offset, slots });
        }
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

    /// Gives back what `rebuild` reserved before it failed.
    fn undo(
        &mut self,
        backend_ops: &[MapOp],
        current: Option<&AppliedFrontend>,
        (offset, size): (u32, u32),
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
        self.slab.free(offset, size, now);
        if current.is_none() {
            self.service_ids.free(service_id, now);
        }
    }

    /// Clears the backends `old` had and `new` has not, and frees `old`'s table.
    fn retire(
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
    }
}

/// The `SERVICE_F_*` bits of a frontend's service entry: it refuses new
/// connections when it has no backend to select because its Service port
/// has no usable endpoint anywhere (not when they are all elsewhere under a
/// `Local` policy: that drops); it checks clients against its source ranges
/// when it has some.
#[must_use]
pub fn service_flags(want: &DesiredFrontend) -> u32 {
    let selected = want.backends.values().any(|b| b.selected);
    let reject = if !selected && !want.has_endpoints {
        SERVICE_F_REJECT
    } else {
        0
    };
    let ranges = if want.source_ranges.is_empty() {
        0
    } else {
        SERVICE_F_SOURCE_RANGES
    };
    reject | ranges
}

/// Whether `want` has the same backends, and the same ones selected, as `cur`,
/// and the same flags but for the source ranges': then the table stays (and
/// the entry, unless the ranges come or go).
fn same_table(cur: &AppliedFrontend, want: &DesiredFrontend) -> bool {
    cur.entry.affinity_timeout == want.affinity_timeout
        && cur.entry.flags & !SERVICE_F_SOURCE_RANGES
            == service_flags(want) & !SERVICE_F_SOURCE_RANGES
        && cur.backends.len() == want.backends.len()
        && cur
            .backends
            .iter()
            .zip(&want.backends)
            .all(|((a, applied), (b, info))| a == b && applied.selected == info.selected)
}

/// Same table: at most `local` flags and names change.
fn refresh(cur: &mut AppliedFrontend, want: &DesiredFrontend, ops: &mut Ops) {
    let service_id = cur.entry.id;
    for (addr, info) in &want.backends {
        let applied = cur.backends.get_mut(addr).expect("same key set");
        if applied.local != info.local {
            applied.local = info.local;
            ops.backends.push(MapOp::SetBackend(
                applied.id,
                backend_entry(*addr, *info, service_id),
            ));
        }
    }
    if cur.service != want.service {
        cur.service.clone_from(&want.service);
        ops.services
            .push(MapOp::SetLabel(service_id, want.service.to_string()));
    }
    if cur.port_name != want.port_name {
        cur.port_name.clone_from(&want.port_name);
    }
    if cur.source_ranges != want.source_ranges {
        ranges::update(service_id, &cur.source_ranges, &want.source_ranges, ops);
        cur.source_ranges.clone_from(&want.source_ranges);
    }
    let flags = service_flags(want);
    if cur.entry.flags != flags {
        cur.entry.flags = flags;
        ops.services
            .push(MapOp::SetService(cur.frontend.key(), cur.entry));
    }
}

/// The backends-array entry of an endpoint of service `service_id`.
#[must_use]
pub fn backend_entry(addr: SocketAddrV4, info: BackendInfo, service_id: u32) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        flags: BACKEND_F_ACTIVE
            | if info.local { BACKEND_F_LOCAL } else { 0 }
            | if info.selected { BACKEND_F_SELECTED } else { 0 },
        pad: 0,
        service_id,
    }
}

mod ranges;
#[cfg(test)]
mod tests;
