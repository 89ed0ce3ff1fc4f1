//! Updating what the frontends of one Service port share: its backends
//! (surviving ones keep their ids, so their established flows stay), its
//! tables (one per traffic policy its frontends use, rebuilt in free slab
//! slots when that policy's selection changes), its source ranges, and
//! then the entry of each of its frontends. Reservations come first, so a
//! failure changes nothing.

use std::collections::HashSet;

use super::{
    backend_entry,
    family::{FamilyPlan, Side},
    ranges, service_flags, AppliedBackend, AppliedPort, AppliedTable, BTreeMap, BTreeSet,
    BackendId, DesiredFrontend, FamilyOps, Instant, MapOp, Ops, PortName, ServiceEntry,
    TrafficPolicy,
};
use crate::{
    desired::{effective, BackendInfo},
    filter, maglev,
};

/// A table to build: its policy, its size and its members, in order.
type Rebuild<S> = (TrafficPolicy, u32, Vec<S>);

impl<S: FamilyOps> Side<'_, S> {
    /// Brings Service port `id` to what `want` (one of its frontends,
    /// placed already) says the port shares, or, without `want`, to what
    /// its remaining frontends need; then rewrites the entries of its
    /// frontends that change.
    pub(super) fn sync_port(
        &mut self,
        id: u32,
        want: Option<&DesiredFrontend<S>>,
        ops: &mut Ops,
        now: Instant,
    ) -> Result<(), String> {
        let mut port = self.fam.ports.remove(&id).expect("an applied Service port");
        let result = self.sync_removed_port(&mut port, want, ops, now);
        self.fam.ports.insert(id, port);
        result
    }

    fn sync_removed_port(
        &mut self,
        port: &mut AppliedPort<S>,
        want: Option<&DesiredFrontend<S>>,
        ops: &mut Ops,
        now: Instant,
    ) -> Result<(), String> {
        let backends: BTreeMap<S, BackendInfo> = match want {
            Some(w) => w.backends.clone(),
            None => port
                .backends
                .iter()
                .map(|(addr, b)| (*addr, BackendInfo::from(b)))
                .collect(),
        };
        let (has_endpoints, affinity_timeout) = want
            .map_or((port.has_endpoints, port.affinity_timeout), |w| {
                (w.has_endpoints, w.affinity_timeout)
            });
        let differ = backends.values().any(|b| b.for_cluster != b.for_local);
        let policies = self.fam.policies_in_use(port.frontends.iter(), differ);
        let ranges = self.fam.ranges_of(&port.frontends);
        let ranges_after = ranges::count_after(
            self.fam.source_ranges,
            port.source_ranges.len(),
            ranges.len(),
        )?;
        let new_ids = self.reserve_ids(&backends, port, now)?;
        let rebuilds = rebuilds(Some(port), &backends, &policies);
        let offsets = match self.reserve_tables(&rebuilds, now) {
            Ok(offsets) => offsets,
            Err(e) => {
                for id in new_ids.values() {
                    self.shared.backend_ids.free(*id, now);
                }
                return Err(e);
            }
        };

        self.write_backends(port, &backends, &new_ids, ops, now);
        self.write_tables(port, rebuilds, &offsets, &policies, ops, now);
        ranges::update::<S>(port.id, &port.source_ranges, &ranges, ops);
        self.fam.source_ranges = ranges_after;
        port.source_ranges = ranges;
        port.has_endpoints = has_endpoints;
        port.affinity_timeout = affinity_timeout;
        self.write_entries(port, differ, ops);
        Ok(())
    }

    /// Ids for the endpoints `port` lacks, all or none.
    fn reserve_ids(
        &mut self,
        backends: &BTreeMap<S, BackendInfo>,
        port: &AppliedPort<S>,
        now: Instant,
    ) -> Result<BTreeMap<S, BackendId>, String> {
        let mut new_ids = BTreeMap::new();
        for addr in backends.keys().filter(|a| !port.backends.contains_key(a)) {
            let Some(id) = self.shared.backend_ids.alloc(now) else {
                for id in new_ids.values() {
                    self.shared.backend_ids.free(*id, now);
                }
                return Err(format!(
                    "more than {} backends in all (endpoints of every Service port): raise --max-backends",
                    self.shared.backend_capacity - 1
                ));
            };
            new_ids.insert(*addr, id);
        }
        Ok(new_ids)
    }

    /// Slab ranges for the tables to build, all or none.
    fn reserve_tables(
        &mut self,
        rebuilds: &[Rebuild<S>],
        now: Instant,
    ) -> Result<Vec<u32>, String> {
        let mut offsets = Vec::new();
        for (_, size, _) in rebuilds {
            match self.shared.reserve_slots(*size, now) {
                Ok(offset) => offsets.push(offset),
                Err(e) => {
                    for ((_, size, _), offset) in rebuilds.iter().zip(&offsets) {
                        self.shared.free_slots(*offset, *size, now);
                    }
                    return Err(e);
                }
            }
        }
        Ok(offsets)
    }

    /// Writes the backends that are new or changed (each with its
    /// aliases), and clears the ones that left, after everything else.
    fn write_backends(
        &mut self,
        port: &mut AppliedPort<S>,
        backends: &BTreeMap<S, BackendInfo>,
        new_ids: &BTreeMap<S, BackendId>,
        ops: &mut Ops,
        now: Instant,
    ) {
        let mut old = std::mem::take(&mut port.backends);
        for (addr, info) in backends {
            let (mut applied, fresh) = match old.remove(addr) {
                Some(kept) => (kept, false),
                None => (
                    AppliedBackend {
                        id: new_ids[addr],
                        aliases: Vec::new(),
                        local: info.local,
                        for_cluster: info.for_cluster,
                        for_local: info.for_local,
                    },
                    true,
                ),
            };
            let changed = applied.local != info.local
                || applied.for_cluster != info.for_cluster
                || applied.for_local != info.for_local;
            if fresh || changed {
                applied.local = info.local;
                applied.for_cluster = info.for_cluster;
                applied.for_local = info.for_local;
                let entry = backend_entry(*addr, &applied, port.id);
                for id in applied.ids() {
                    ops.backends.push(S::set_backend(id, entry));
                }
            }
            port.backends.insert(*addr, applied);
        }
        self.shared
            .filter
            .add(filter::backend_bits(new_ids.keys(), port.proto));
        self.shared
            .filter
            .remove_at(filter::backend_bits(old.keys(), port.proto), now);
        for gone in old.values() {
            for id in gone.ids() {
                ops.clears.push(S::clear_backend(id));
                self.shared.backend_ids.free(id, now);
            }
        }
    }

    /// Writes the rebuilt tables into their reserved slots, frees the ones
    /// they replace and those no policy in use needs, and points the
    /// in-cluster map at the `Cluster` table when a frontend reads it there.
    fn write_tables(
        &mut self,
        port: &mut AppliedPort<S>,
        rebuilt: Vec<Rebuild<S>>,
        offsets: &[u32],
        policies: &BTreeSet<TrafficPolicy>,
        ops: &mut Ops,
        now: Instant,
    ) {
        let name = port.name.clone();
        for ((policy, size, members), offset) in rebuilt.into_iter().zip(offsets) {
            if size > 0 {
                let ids: Vec<BackendId> = members.iter().map(|a| port.backends[a].id).collect();
                let prebuilt = name
                    .as_ref()
                    .and_then(|n| self.fam.prebuilt.remove(&(n.clone(), policy)))
                    .filter(|(built, built_for, _)| *built == size && *built_for == members);
                let table = match prebuilt {
                    Some((_, _, table)) => table,
                    None => maglev::build_table(&members, size),
                };
                let slots = table.into_iter().map(|i| ids[i as usize]).collect();
                ops.tables.push(MapOp::SetTable {
                    offset: *offset,
                    slots,
                });
            }
            let table = AppliedTable {
                offset: *offset,
                size,
                count: u32::try_from(members.len()).expect("fewer than 2^32 backends"),
            };
            if let Some(old) = replace_table(port, policy, Some(table)) {
                self.shared.free_slots(old.offset, old.size, now);
            }
        }
        for policy in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
            if !policies.contains(&policy) {
                if let Some(old) = replace_table(port, policy, None) {
                    self.shared.free_slots(old.offset, old.size, now);
                }
            }
        }
        let differ = port.policies_differ();
        let internal = port.frontends.iter().any(|f| {
            let placed = &self.fam.frontends[f];
            views(placed.policy, placed.pods_policy, differ).1
        });
        if internal {
            let table = port.cluster_table;
            if port.internal_written != table {
                if let Some(table) = table {
                    ops.tables
                        .push(MapOp::SetInternalTable(port.id, table.into()));
                }
                port.internal_written = table;
            }
        }
    }

    /// Rewrites the entry of each frontend of `port` whose entry changes.
    fn write_entries(&mut self, port: &AppliedPort<S>, differ: bool, ops: &mut Ops) {
        for frontend in &port.frontends {
            let placed = self
                .fam
                .frontends
                .get_mut(frontend)
                .expect("a placed frontend");
            let (main, internal) = views(placed.policy, placed.pods_policy, differ);
            let table = port.table(main).unwrap_or_default();
            let entry = ServiceEntry {
                id: port.id,
                backend_count: table.count,
                table_offset: table.offset,
                table_size: table.size,
                affinity_timeout: port.affinity_timeout,
                flags: service_flags(
                    main,
                    internal,
                    table.count,
                    port.has_endpoints,
                    !placed.source_ranges.is_empty(),
                ),
            };
            if placed.entry != Some(entry) {
                ops.services.push(S::set_service(S::key(frontend), entry));
                placed.entry = Some(entry);
            }
        }
    }
}

impl<S: FamilyOps> FamilyPlan<S> {
    /// The policies whose tables `frontends` use: each its own, and the
    /// `Cluster` one for pods where its own follows `Local`.
    fn policies_in_use<'a>(
        &self,
        frontends: impl Iterator<Item = &'a S::Frontend>,
        differ: bool,
    ) -> BTreeSet<TrafficPolicy> {
        let mut policies = BTreeSet::new();
        for frontend in frontends {
            let placed = &self.frontends[frontend];
            let (main, internal) = views(placed.policy, placed.pods_policy, differ);
            policies.insert(main);
            if internal {
                policies.insert(TrafficPolicy::Cluster);
            }
        }
        policies
    }

    /// The source ranges of `frontends` together, sorted and unique.
    fn ranges_of(&self, frontends: &BTreeSet<S::Frontend>) -> Vec<S::Range> {
        let all: BTreeSet<S::Range> = frontends
            .iter()
            .flat_map(|f| self.frontends[f].source_ranges.iter().copied())
            .collect();
        all.into_iter().collect()
    }

    /// Builds, on every core, the Maglev tables the plan of `frontends`
    /// will build (a pure function of the members and the size, which the
    /// plan decides alike), once per Service port and policy.
    pub(super) fn prebuild(
        &mut self,
        desired: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
        frontends: &[S::Frontend],
    ) {
        let mut keys = Vec::new();
        let mut jobs = Vec::new();
        let mut seen = HashSet::new();
        for frontend in frontends {
            let Some(want) = desired.get(frontend) else {
                continue;
            };
            let name = PortName::of(*frontend, want);
            for (policy, size, members) in self.tables_to_build(*frontend, want) {
                if size > 0 && seen.insert((name.clone(), policy)) {
                    keys.push((name.clone(), policy, size, members.clone()));
                    jobs.push((members, size));
                }
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let tables = maglev::build_tables(&jobs, threads);
        self.prebuilt = keys
            .into_iter()
            .zip(tables)
            .map(|((name, policy, size, members), table)| ((name, policy), (size, members, table)))
            .collect();
    }

    /// The Maglev slots planning `frontend` as `want` writes: the sizes of
    /// the tables of its Service port it rebuilds, 0 when they stay.
    pub fn slots_to_write(&self, frontend: S::Frontend, want: &DesiredFrontend<S>) -> u32 {
        self.tables_to_build(frontend, want)
            .iter()
            .map(|(_, size, _)| *size)
            .sum()
    }

    /// The tables of its Service port that placing `frontend` as `want`
    /// rebuilds.
    fn tables_to_build(&self, frontend: S::Frontend, want: &DesiredFrontend<S>) -> Vec<Rebuild<S>> {
        let name = PortName::of(frontend, want);
        let port = self
            .port_named(&name)
            .or_else(|| {
                self.frontends
                    .get(&frontend)
                    .map(|p| p.port)
                    .filter(|id| self.ports[id].name.is_none())
            })
            .map(|id| &self.ports[&id]);
        let differ = want.policies_differ();
        let others = port
            .into_iter()
            .flat_map(|p| p.frontends.iter())
            .filter(|f| **f != frontend);
        let mut policies = self.policies_in_use(others, differ);
        let (main, internal) = views(want.policy, want.pods_policy, differ);
        policies.insert(main);
        if internal {
            policies.insert(TrafficPolicy::Cluster);
        }
        rebuilds(port, &want.backends, &policies)
    }
}

/// The policy of a frontend's own table, and whether pods use the
/// `Cluster` table instead, for a frontend following `policy` and
/// `pods_policy` in a Service port whose policies select alike or not.
fn views(policy: TrafficPolicy, pods_policy: TrafficPolicy, differ: bool) -> (TrafficPolicy, bool) {
    let main = effective(policy, differ);
    let internal =
        main == TrafficPolicy::Local && effective(pods_policy, differ) == TrafficPolicy::Cluster;
    (main, internal)
}

/// The tables among `policies` that `port` lacks or whose members change.
fn rebuilds<S: FamilyOps>(
    port: Option<&AppliedPort<S>>,
    backends: &BTreeMap<S, BackendInfo>,
    policies: &BTreeSet<TrafficPolicy>,
) -> Vec<Rebuild<S>> {
    policies
        .iter()
        .filter_map(|&policy| {
            let members: Vec<S> = backends
                .iter()
                .filter(|(_, b)| b.selected_under(policy))
                .map(|(a, _)| *a)
                .collect();
            let current = port.and_then(|p| p.table(policy));
            let unchanged = current.is_some()
                && port.is_some_and(|p| {
                    p.backends
                        .iter()
                        .filter(|(_, b)| b.selected_under(policy))
                        .map(|(a, _)| a)
                        .eq(members.iter())
                });
            (!unchanged).then(|| {
                let size = maglev::table_size_for(members.len(), current.map_or(0, |t| t.size));
                (policy, size, members)
            })
        })
        .collect()
}

/// Sets `port`'s table of `policy`, returning the one it had.
fn replace_table<S: FamilyOps>(
    port: &mut AppliedPort<S>,
    policy: TrafficPolicy,
    table: Option<AppliedTable>,
) -> Option<AppliedTable> {
    let slot = match policy {
        TrafficPolicy::Cluster => &mut port.cluster_table,
        TrafficPolicy::Local => &mut port.local_table,
    };
    std::mem::replace(slot, table)
}
