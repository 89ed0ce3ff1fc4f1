//! One family's side of the planner: its frontends and Service ports
//! ([`FamilyPlan`]), and the planning of its frontends with the shared
//! allocators lent ([`Side`]): placing a frontend in its Service port,
//! removing it, and dropping a port with its last frontend.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

use lb_common::{ServiceEntry, SERVICE_F_INTERNAL_TABLE};

use super::{
    backend_entry, ranges, shared::Shared, AppliedFrontend, AppliedPort, FamilyOps, MapOp, Ops,
    Plan, PlanError, PortName,
};
use crate::{
    desired::{DesiredFrontend, TrafficPolicy},
    filter::{self, FilterWrites},
};

/// A Maglev table built ahead: its size, its members, and the member index
/// of each slot.
pub(super) type Prebuilt<S> = (u32, Vec<S>, Vec<u32>);

/// A frontend as the planner records it.
#[derive(Clone, Debug)]
pub(super) struct PlacedFrontend<S: FamilyOps> {
    /// Its Service port's id.
    pub port: u32,
    /// Its entry as written, if any.
    pub entry: Option<ServiceEntry>,
    /// The policy it follows for clients from outside.
    pub policy: TrafficPolicy,
    /// The policy it follows for pods.
    pub pods_policy: TrafficPolicy,
    /// Its source ranges (load-balancer IPs only), sorted.
    pub source_ranges: Vec<S::Range>,
    /// A node port's node-port addresses.
    pub node_port_addrs: Vec<S::Ip>,
    /// Adopted, its policies read from its entry's flags, which do not say
    /// a policy that selects as `Cluster` does: taken from the desired
    /// state at the next plan, before any port is synced.
    pub guessed: bool,
}

/// One family's applied state.
#[derive(Debug)]
pub(super) struct FamilyPlan<S: FamilyOps> {
    /// Its frontends.
    pub frontends: BTreeMap<S::Frontend, PlacedFrontend<S>>,
    /// Its Service ports, by id.
    pub ports: BTreeMap<u32, AppliedPort<S>>,
    /// Its named Service ports' ids.
    pub by_name: HashMap<PortName, u32>,
    /// Maglev tables built ahead for the plan under way: (port, policy) ->
    /// (size, members, backend indices).
    pub prebuilt: HashMap<(PortName, TrafficPolicy), Prebuilt<S>>,
    /// Source ranges its map holds, all Service ports together.
    pub source_ranges: usize,
    /// The node-port addresses its map holds.
    pub node_port_addrs: BTreeSet<S::Ip>,
    /// Whether adopted frontends' policies are still guesses.
    pub guesses: bool,
    /// Frontends an earlier agent wrote that could not be adopted (their
    /// ranges or ids collide): deleted by the next plan unless placed.
    pub orphans: BTreeSet<S::Frontend>,
}

impl<S: FamilyOps> Default for FamilyPlan<S> {
    fn default() -> Self {
        Self {
            frontends: BTreeMap::new(),
            ports: BTreeMap::new(),
            by_name: HashMap::new(),
            prebuilt: HashMap::new(),
            source_ranges: 0,
            node_port_addrs: BTreeSet::new(),
            guesses: false,
            orphans: BTreeSet::new(),
        }
    }
}

/// How `place` found the Service port of a frontend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Applied already.
    Applied,
    /// Adopted without a name, named now.
    Claimed,
    /// Created now.
    Created,
}

impl<S: FamilyOps> FamilyPlan<S> {
    /// See [`super::Planner::node_port_addresses`].
    pub fn node_port_addresses(&mut self, want: &[S::Ip]) -> (Plan, Plan) {
        let want: BTreeSet<S::Ip> = want.iter().copied().collect();
        let add = want
            .difference(&self.node_port_addrs)
            .map(|a| S::set_node_port_addr(*a))
            .collect();
        let remove = self
            .node_port_addrs
            .difference(&want)
            .map(|a| S::delete_node_port_addr(*a))
            .collect();
        self.node_port_addrs = want;
        (Plan { ops: add }, Plan { ops: remove })
    }

    /// The frontends as applied, each as one view with its Service port's
    /// backends.
    pub fn frontends(&self) -> impl Iterator<Item = AppliedFrontend<S>> + '_ {
        self.frontends
            .iter()
            .map(|(frontend, placed)| self.view(*frontend, placed))
    }

    fn view(&self, frontend: S::Frontend, placed: &PlacedFrontend<S>) -> AppliedFrontend<S> {
        let port = &self.ports[&placed.port];
        let entry = placed.entry.unwrap_or_default();
        AppliedFrontend {
            frontend,
            service: port.service.clone(),
            port_name: port.name.as_ref().map(|n| n.port.clone()),
            entry,
            backends: port.backends.clone(),
            source_ranges: port.source_ranges.clone(),
            internal: if entry.flags & SERVICE_F_INTERNAL_TABLE == 0 {
                None
            } else {
                port.internal_written.map(Into::into)
            },
            node_port_addrs: placed.node_port_addrs.clone(),
        }
    }

    /// The id of the applied port named `name`.
    pub fn port_named(&self, name: &PortName) -> Option<u32> {
        self.by_name
            .get(name)
            .copied()
            .filter(|id| self.ports.contains_key(id))
    }

    pub fn port_mut(&mut self, id: u32) -> &mut AppliedPort<S> {
        self.ports.get_mut(&id).expect("an applied Service port")
    }

    /// Takes the policies of adopted frontends from `desired` (those it
    /// lacks keep their guesses: they are about to go), so that a port
    /// synced for one of its frontends writes the others' entries as
    /// they are meant, not as their flags looked.
    fn settle_guesses(&mut self, desired: &BTreeMap<S::Frontend, DesiredFrontend<S>>) {
        if !std::mem::take(&mut self.guesses) {
            return;
        }
        for (frontend, placed) in &mut self.frontends {
            if let Some(want) = desired.get(frontend).filter(|_| placed.guessed) {
                placed.policy = want.policy;
                placed.pods_policy = want.pods_policy;
            }
            placed.guessed = false;
        }
    }
}

/// One family's side of the planner with the shared state lent: what
/// plans that family's frontends.
pub(super) struct Side<'a, S: FamilyOps> {
    /// The family's applied state.
    pub fam: &'a mut FamilyPlan<S>,
    /// What both families share.
    pub shared: &'a mut Shared,
}

impl<S: FamilyOps> Side<'_, S> {
    /// See [`super::Planner::plan`].
    pub fn plan(
        &mut self,
        desired: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
        now: Instant,
    ) -> (Plan, Vec<PlanError<S>>) {
        let gone: Vec<S::Frontend> = self
            .fam
            .frontends
            .keys()
            .chain(&self.fam.orphans)
            .filter(|f| !desired.contains_key(f))
            .copied()
            .collect();
        let all = gone.into_iter().chain(desired.keys().copied());
        self.plan_frontends(desired, all, now)
    }

    /// See [`super::Planner::plan_frontends`].
    pub fn plan_frontends(
        &mut self,
        desired: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
        frontends: impl IntoIterator<Item = S::Frontend>,
        now: Instant,
    ) -> (Plan, Vec<PlanError<S>>) {
        self.shared.slab.reclaim(now);
        self.fam.settle_guesses(desired);
        let frontends: Vec<S::Frontend> = frontends.into_iter().collect();
        self.fam.prebuild(desired, &frontends);
        let mut ops = Ops::default();
        let mut errors = Vec::new();
        for frontend in frontends {
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
        }
        self.fam.prebuilt.clear();
        // What this plan freed is cleared by its own trailing operations:
        // reusable only by later plans.
        self.shared.settle();
        let Ops {
            backends,
            tables,
            services,
            deletes,
            clears,
        } = ops;
        // Filter bits are set before anything they cover is written, and
        // cleared only after it is gone.
        let FilterWrites { before, after } = self.shared.filter.writes_at(now);
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

    /// Places `frontend` as `want` says, in its Service port (created, or
    /// claimed from the adopted ones, if need be), and updates what the
    /// port shares. On failure nothing changes.
    fn place(
        &mut self,
        frontend: S::Frontend,
        want: &DesiredFrontend<S>,
        ops: &mut Ops,
        now: Instant,
    ) -> Result<(), String> {
        let name = PortName::of(frontend, want);
        let previous = self.fam.frontends.get(&frontend).cloned();
        if previous.is_none() && self.fam.frontends.len() >= self.shared.service_capacity as usize {
            return Err(format!(
                "more than {} frontends: raise --max-services",
                self.shared.service_capacity
            ));
        }
        let from = previous.as_ref().map(|p| p.port);
        let claimed_from = from.map(|id| self.fam.ports[&id].service.clone());
        let (id, found) = self.find_port(&name, frontend, from, now)?;
        self.fam.frontends.insert(
            frontend,
            PlacedFrontend {
                port: id,
                entry: previous.as_ref().and_then(|p| p.entry),
                policy: want.policy,
                pods_policy: want.pods_policy,
                source_ranges: want.source_ranges.clone(),
                node_port_addrs: want.node_port_addrs.clone(),
                guessed: false,
            },
        );
        self.fam.orphans.remove(&frontend);
        self.fam.port_mut(id).frontends.insert(frontend);
        if let Err(message) = self.sync_port(id, Some(want), ops, now) {
            if let Some(p) = previous {
                self.fam.frontends.insert(frontend, p);
            } else {
                self.fam.frontends.remove(&frontend);
            }
            if from != Some(id) {
                self.fam.port_mut(id).frontends.remove(&frontend);
            }
            match found {
                Found::Applied => {}
                Found::Claimed => {
                    let port = self.fam.port_mut(id);
                    port.name = None;
                    if let Some(service) = claimed_from {
                        port.service = service;
                    }
                    self.fam.by_name.remove(&name);
                }
                Found::Created => {
                    self.fam.ports.remove(&id);
                    self.fam.by_name.remove(&name);
                    self.shared.service_ids.free(id, now);
                }
            }
            return Err(message);
        }
        if found != Found::Applied {
            ops.services.push(MapOp::SetLabel(id, name.label_in::<S>()));
        }
        if let Some(p) = &previous {
            self.shared.filter.remove_at(
                filter::frontend_bits::<S>(frontend, &p.node_port_addrs),
                now,
            );
        }
        self.shared
            .filter
            .add(filter::frontend_bits::<S>(frontend, &want.node_port_addrs));
        if let Some(old) = from.filter(|&old| old != id) {
            self.leave(old, frontend, Some(id), ops, now);
        }
        Ok(())
    }

    /// The id of the Service port `name` (of `frontend`, now in port
    /// `from`): applied, the adopted unnamed one `frontend` is in, or new.
    fn find_port(
        &mut self,
        name: &PortName,
        frontend: S::Frontend,
        from: Option<u32>,
        now: Instant,
    ) -> Result<(u32, Found), String> {
        if let Some(id) = self.fam.port_named(name) {
            return Ok((id, Found::Applied));
        }
        if let Some(id) = from.filter(|id| self.fam.ports[id].name.is_none()) {
            let port = self.fam.port_mut(id);
            port.name = Some(name.clone());
            port.service = name.service.clone();
            self.fam.by_name.insert(name.clone(), id);
            return Ok((id, Found::Claimed));
        }
        let Some(id) = self.shared.service_ids.alloc(now) else {
            return Err(format!(
                "more than {} Service ports: raise --max-services",
                self.shared.service_capacity
            ));
        };
        self.fam.by_name.insert(name.clone(), id);
        self.fam.ports.insert(
            id,
            AppliedPort {
                id,
                name: Some(name.clone()),
                service: name.service.clone(),
                proto: S::proto(&frontend),
                backends: BTreeMap::new(),
                cluster_table: None,
                local_table: None,
                internal_written: None,
                source_ranges: Vec::new(),
                affinity_timeout: 0,
                has_endpoints: false,
                frontends: BTreeSet::new(),
            },
        );
        Ok((id, Found::Created))
    }

    fn remove(&mut self, frontend: S::Frontend, ops: &mut Ops, now: Instant) {
        let Some(placed) = self.fam.frontends.remove(&frontend) else {
            if self.fam.orphans.remove(&frontend) {
                ops.deletes.push(S::delete_service(S::key(&frontend)));
            }
            return;
        };
        ops.deletes.push(S::delete_service(S::key(&frontend)));
        self.shared.filter.remove_at(
            filter::frontend_bits::<S>(frontend, &placed.node_port_addrs),
            now,
        );
        self.leave(placed.port, frontend, None, ops, now);
    }

    /// `frontend` no longer points at Service port `id` (it moved to port
    /// `into`, or went): the port goes with its last frontend, its backends
    /// still in `into` becoming aliases there; else what it shares follows
    /// its remaining frontends.
    fn leave(
        &mut self,
        id: u32,
        frontend: S::Frontend,
        into: Option<u32>,
        ops: &mut Ops,
        now: Instant,
    ) {
        let port = self.fam.port_mut(id);
        port.frontends.remove(&frontend);
        if port.frontends.is_empty() {
            self.drop_port(id, into, ops, now);
        } else if let Err(message) = self.sync_port(id, None, ops, now) {
            // Fewer frontends never need more room.
            log::error!("Service port {id} after its frontend {frontend} left: {message}");
        }
    }

    /// Removes Service port `id`, whose last frontend went (or moved to
    /// port `into`): its entries, label, ranges and tables go; its
    /// backends are cleared after everything else, but those of endpoints
    /// that port `into` has become aliases there (rewritten as that port's
    /// entries, after the frontends point at it), so the flows that use them
    /// continue.
    fn drop_port(&mut self, id: u32, into: Option<u32>, ops: &mut Ops, now: Instant) {
        let Some(port) = self.fam.ports.remove(&id) else {
            return;
        };
        if let Some(name) = &port.name {
            self.fam.by_name.remove(name);
        }
        ops.deletes.push(MapOp::DeleteLabel(id));
        ranges::update::<S>(id, &port.source_ranges, &[], ops);
        self.fam.source_ranges -= port.source_ranges.len();
        self.shared
            .filter
            .remove_at(filter::backend_bits(port.backends.keys(), port.proto), now);
        for (addr, gone) in &port.backends {
            let heir = into
                .and_then(|to| self.fam.ports.get_mut(&to))
                .and_then(|to| Some((to.id, to.backends.get_mut(addr)?)));
            if let Some((heir_id, heir)) = heir {
                let entry = backend_entry(*addr, heir, heir_id);
                for alias in gone.ids() {
                    ops.clears.push(S::set_backend(alias, entry));
                    heir.aliases.push(alias);
                }
            } else {
                for backend in gone.ids() {
                    ops.clears.push(S::clear_backend(backend));
                    self.shared.backend_ids.free(backend, now);
                }
            }
        }
        for table in [port.cluster_table, port.local_table].into_iter().flatten() {
            self.shared.free_slots(table.offset, table.size, now);
        }
        self.shared.service_ids.free(id, now);
    }
}
