//! From the desired state to an ordered list of map operations, keeping what
//! is applied: ids, Maglev tables and their place in the slab.
//!
//! Order matters for packets in flight: new backends are written before the
//! tables that point at them, a table before the service entry that publishes
//! it, and a backend is cleared only after no published table points at it.
//! Freed slab ranges and ids wait for a grace period before reuse.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_common::{
    Backend, BackendId, InternalTable, ServiceEntry, ServiceKey, BACKEND_F_ACTIVE, BACKEND_F_LOCAL,
    BACKEND_F_SELECTED, BACKEND_F_SELECTED_INTERNAL, MAX_BACKENDS, MAX_SERVICES,
    SERVICE_F_INTERNAL_TABLE, SERVICE_F_REJECT, SERVICE_F_SOURCE_RANGES,
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
    /// Write the table pods use for a service id (before its entry says so).
    SetInternalTable(u32, InternalTable),
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
    /// Serve node ports on an address.
    SetNodePortAddr(Ipv4Addr),
    /// Stop serving node ports on an address.
    DeleteNodePortAddr(Ipv4Addr),
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
    /// The node-port addresses the maps hold.
    node_port_addrs: BTreeSet<Ipv4Addr>,
    /// Entries of the backends array.
    backend_capacity: u32,
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
        Self::new_sized(slab_slots, MAX_BACKENDS, grace)
    }

    /// [`Planner::new`] for a backends array of `backend_slots` entries
    /// (`--max-backends`).
    #[must_use]
    pub fn new_sized(slab_slots: u32, backend_slots: u32, grace: Duration) -> Self {
        Self {
            backend_capacity: backend_slots,
            frontends: BTreeMap::new(),
            slab: SlabAllocator::new(slab_slots, grace),
            backend_ids: IdAllocator::new(1, backend_slots, grace),
            service_ids: IdAllocator::new(1, MAX_SERVICES + 1, grace),
            filter: FilterBits::default().with_grace(grace),
            prebuilt: HashMap::new(),
            source_ranges: 0,
            node_port_addrs: BTreeSet::new(),
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
        Self::adopt_sized(frontends, filter_words, slab_slots, MAX_BACKENDS, grace)
    }

    /// [`Planner::adopt`] for a backends array of `backend_slots` entries.
    #[must_use]
    pub fn adopt_sized(
        frontends: Vec<AppliedFrontend>,
        filter_words: Vec<u64>,
        slab_slots: u32,
        backend_slots: u32,
        grace: Duration,
    ) -> Self {
        let mut planner = Self::new_sized(slab_slots, backend_slots, grace);
        planner.filter = FilterBits::new(filter_words).with_grace(grace);
        for applied in frontends {
            let ok = planner.service_ids.reserve(applied.entry.id)
                && planner
                    .slab
                    .reserve(applied.entry.table_offset, applied.entry.table_size)
                && applied
                    .internal
                    .is_none_or(|table| planner.slab.reserve(table.table_offset, table.table_size))
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

    /// The planner with the node-port addresses the maps hold (from an
    /// earlier agent).
    #[must_use]
    pub fn with_node_port_addrs(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.node_port_addrs = addrs.into_iter().collect();
        self
    }

    /// The writes that make the node-port addresses `want`: the ones to
    /// add (applied before any frontend that may need them) and the ones
    /// to remove (after every frontend that no longer does). They count as
    /// applied.
    pub fn node_port_addresses(&mut self, want: &[Ipv4Addr]) -> (Plan, Plan) {
        let want: BTreeSet<Ipv4Addr> = want.iter().copied().collect();
        let add = want
            .difference(&self.node_port_addrs)
            .map(|a| MapOp::SetNodePortAddr(*a))
            .collect();
        let remove = self
            .node_port_addrs
            .difference(&want)
            .map(|a| MapOp::DeleteNodePortAddr(*a))
            .collect();
        self.node_port_addrs = want;
        (Plan { ops: add }, Plan { ops: remove })
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
        // What this plan freed is cleared by its own trailing operations:
        // reusable only by later plans.
        self.slab.settle();
        self.backend_ids.settle();
        self.service_ids.settle();
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
            let size = self.main_slots_to_write(*frontend, want);
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
    /// tables' sizes (the pods' table included), or 0 when its tables stay.
    #[must_use]
    pub fn slots_to_write(&self, frontend: &Frontend, want: &DesiredFrontend) -> u32 {
        let current = self.frontends.get(frontend);
        self.main_slots_to_write(*frontend, want)
            + if current.is_some_and(|cur| same_table(cur, want)) {
                0
            } else {
                internal_table_size(want, current)
            }
    }

    /// The size of the main table planning `frontend` as `want` writes, or
    /// 0 when its tables stay.
    fn main_slots_to_write(&self, frontend: Frontend, want: &DesiredFrontend) -> u32 {
        let current = self.frontends.get(&frontend);
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
        if let Some(table) = applied.internal {
            self.slab.free(table.table_offset, table.table_size, now);
        }
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
    let internal = if want.has_internal_table() {
        SERVICE_F_INTERNAL_TABLE
    } else {
        0
    };
    reject | ranges | internal
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
            .all(|((a, applied), (b, info))| {
                a == b
                    && applied.selected == info.selected
                    && applied.selected_internal == info.selected_internal
            })
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
    if cur.node_port_addrs != want.node_port_addrs {
        cur.node_port_addrs.clone_from(&want.node_port_addrs);
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
            | if info.selected { BACKEND_F_SELECTED } else { 0 }
            | if info.selected_internal {
                BACKEND_F_SELECTED_INTERNAL
            } else {
                0
            },
        pad: 0,
        service_id,
    }
}

mod ranges;
mod tables;

use self::tables::internal_table_size;
#[cfg(test)]
mod tests;
