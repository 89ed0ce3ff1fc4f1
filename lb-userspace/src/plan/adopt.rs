//! Taking over what an earlier agent applied: its Service ports (grouped by
//! service id) and frontends count as applied, their ids and slab ranges as
//! used, so the next plan changes only what differs.

use lb_common::{SERVICE_F_INTERNAL_TABLE, SERVICE_F_LOCAL, SERVICE_F_REJECT};

use super::{
    family::{PlacedFrontend, Side},
    AppliedBackend, AppliedFrontend, AppliedPort, AppliedTable, BTreeMap, BTreeSet, Capacity,
    Duration, FamilyOps, Instant, Planner, PortName, SocketAddrV6, TrafficPolicy,
};
use crate::filter::{self, FilterBits};

impl Planner {
    /// A planner that takes over frontends an earlier agent applied. Their
    /// ids and slab ranges count as used, so the next plan changes only
    /// what differs. Frontends whose ranges or ids collide are dropped from
    /// the record (and so rewritten by the next plan). `filter_words` is
    /// what the pass-through filter holds: the next plan sets the bits it
    /// lacks.
    #[must_use]
    pub fn adopt(
        frontends: Vec<AppliedFrontend>,
        filter_words: Vec<u64>,
        slab_slots: u32,
        grace: Duration,
    ) -> Self {
        Self::adopt_sized(
            frontends,
            filter_words,
            Capacity::with_slab(slab_slots),
            grace,
        )
    }

    /// [`Planner::adopt`] for maps of the sizes `capacity` gives.
    ///
    /// Frontends of one service id share a Service port. A layout before v6
    /// gave each frontend an id of its own, labelled without the port: such
    /// a port has no name until the first of its frontends is placed again,
    /// which names it or moves into the port of its name (its backends
    /// becoming aliases there). Tables are recorded under the policy their
    /// entry says (`SERVICE_F_LOCAL`), the pods' table under `Cluster`, or
    /// where a slot is free (v5's pods' table beside a main table that
    /// followed `Local` without the flag): the next plan compares each
    /// table's members by the backends' flags, and rebuilds what differs.
    #[must_use]
    pub fn adopt_sized(
        frontends: Vec<AppliedFrontend>,
        filter_words: Vec<u64>,
        capacity: Capacity,
        grace: Duration,
    ) -> Self {
        let mut planner = Self::new_sized(capacity, grace);
        planner.shared.filter = FilterBits::new(filter_words).with_grace(grace);
        planner.side4().adopt(frontends);
        planner
    }

    /// Takes over the IPv6 frontends an earlier agent applied, as
    /// [`Planner::adopt_sized`] takes over IPv4's (after it: their ids and
    /// slab ranges count as used by IPv4's first, so an IPv6 frontend
    /// whose ids collide becomes an orphan, rewritten by the next plan).
    #[must_use]
    pub fn adopt6(mut self, frontends: Vec<AppliedFrontend<SocketAddrV6>>) -> Self {
        self.side6().adopt(frontends);
        self
    }
}

impl<S: FamilyOps> Side<'_, S> {
    /// Records `frontends` as applied (see [`Planner::adopt_sized`]).
    fn adopt(&mut self, frontends: Vec<AppliedFrontend<S>>) {
        for applied in frontends {
            let id = applied.entry.id;
            let known = self.fam.ports.contains_key(&id);
            if !known && !self.adopt_port(&applied) {
                self.fam.orphans.insert(applied.frontend);
                continue;
            }
            if !self.adopt_tables(id, &applied) {
                if !known {
                    // A port of this frontend alone: nothing points at it.
                    self.unadopt_port(id);
                }
                self.fam.orphans.insert(applied.frontend);
                continue;
            }
            let flags = applied.entry.flags;
            let policy = if flags & SERVICE_F_LOCAL != 0 {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            };
            let pods_policy = if flags & SERVICE_F_INTERNAL_TABLE != 0 {
                TrafficPolicy::Cluster
            } else {
                policy
            };
            let source_ranges = if flags & lb_common::SERVICE_F_SOURCE_RANGES != 0 {
                applied.source_ranges.clone()
            } else {
                Vec::new()
            };
            self.shared.filter.add(filter::frontend_bits::<S>(
                applied.frontend,
                &applied.node_port_addrs,
            ));
            self.fam
                .ports
                .get_mut(&id)
                .expect("adopted above")
                .frontends
                .insert(applied.frontend);
            self.fam.frontends.insert(
                applied.frontend,
                PlacedFrontend {
                    port: id,
                    entry: Some(applied.entry),
                    policy,
                    pods_policy,
                    source_ranges,
                    node_port_addrs: applied.node_port_addrs,
                    guessed: true,
                },
            );
            self.fam.guesses = true;
        }
    }

    /// Forgets a port [`Side::adopt_port`] recorded: its name, ids,
    /// ranges and filter bits (kept for the grace: the maps still hold its
    /// backends until the ids are reused).
    fn unadopt_port(&mut self, id: u32) {
        let Some(port) = self.fam.ports.remove(&id) else {
            return;
        };
        let now = Instant::now();
        if let Some(name) = &port.name {
            if self.fam.by_name.get(name) == Some(&id) {
                self.fam.by_name.remove(name);
            }
        }
        self.shared.service_ids.free(id, now);
        for backend in port.backends.values().flat_map(AppliedBackend::ids) {
            self.shared.backend_ids.free(backend, now);
        }
        self.fam.source_ranges -= port.source_ranges.len();
        self.shared
            .filter
            .remove_at(filter::backend_bits(port.backends.keys(), port.proto), now);
    }

    /// Records the Service port of `applied` (not yet known): its id,
    /// backends and ranges; `false` when they collide with what is recorded.
    fn adopt_port(&mut self, applied: &AppliedFrontend<S>) -> bool {
        let id = applied.entry.id;
        let ok = self.shared.service_ids.reserve(id)
            && applied
                .backends
                .values()
                .flat_map(AppliedBackend::ids)
                .all(|b| self.shared.backend_ids.reserve(b));
        if !ok {
            return false;
        }
        let name = applied
            .port_name
            .as_ref()
            .map(|port| PortName {
                service: applied.service.clone(),
                port: port.clone(),
                proto: S::proto(&applied.frontend),
            })
            .filter(|n| !self.fam.by_name.contains_key(n));
        if let Some(name) = &name {
            self.fam.by_name.insert(name.clone(), id);
        }
        self.fam.source_ranges += applied.source_ranges.len();
        self.shared.filter.add(filter::backend_bits(
            applied.backends.keys(),
            S::proto(&applied.frontend),
        ));
        let entry = applied.entry;
        self.fam.ports.insert(
            id,
            AppliedPort {
                id,
                name,
                service: applied.service.clone(),
                proto: S::proto(&applied.frontend),
                backends: applied.backends.clone(),
                cluster_table: None,
                local_table: None,
                internal_written: applied.internal.map(|t| AppliedTable {
                    offset: t.table_offset,
                    size: t.table_size,
                    count: t.backend_count,
                }),
                source_ranges: applied.source_ranges.clone(),
                affinity_timeout: entry.affinity_timeout,
                has_endpoints: entry.backend_count > 0 || entry.flags & SERVICE_F_REJECT == 0,
                frontends: BTreeSet::new(),
            },
        );
        true
    }

    /// Records the tables `applied`'s entry points at in its port; `false`
    /// when they collide with what is recorded.
    fn adopt_tables(&mut self, id: u32, applied: &AppliedFrontend<S>) -> bool {
        let entry = applied.entry;
        let main = AppliedTable {
            offset: entry.table_offset,
            size: entry.table_size,
            count: entry.backend_count,
        };
        let policy = if entry.flags & SERVICE_F_LOCAL != 0 {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        };
        let mut tables = vec![(policy, main)];
        if let Some(t) = applied.internal {
            let pods = AppliedTable {
                offset: t.table_offset,
                size: t.table_size,
                count: t.backend_count,
            };
            tables.push((TrafficPolicy::Cluster, pods));
        }
        let mut taken: BTreeMap<TrafficPolicy, AppliedTable> = BTreeMap::new();
        for (policy, table) in tables {
            let port = &self.fam.ports[&id];
            let recorded = [TrafficPolicy::Cluster, TrafficPolicy::Local]
                .into_iter()
                .any(|p| port.table(p) == Some(table));
            if recorded || taken.values().any(|t| *t == table) {
                continue;
            }
            let slot = [policy, other(policy)]
                .into_iter()
                .find(|p| port.table(*p).is_none() && !taken.contains_key(p));
            let Some(slot) = slot else {
                return false;
            };
            if table.size > 0 && !self.shared.slab.reserve(table.offset, table.size) {
                return false;
            }
            taken.insert(slot, table);
        }
        let port = self.fam.ports.get_mut(&id).expect("adopted");
        for (policy, table) in taken {
            match policy {
                TrafficPolicy::Cluster => port.cluster_table = Some(table),
                TrafficPolicy::Local => port.local_table = Some(table),
            }
        }
        true
    }
}

/// The other policy.
fn other(policy: TrafficPolicy) -> TrafficPolicy {
    match policy {
        TrafficPolicy::Cluster => TrafficPolicy::Local,
        TrafficPolicy::Local => TrafficPolicy::Cluster,
    }
}
