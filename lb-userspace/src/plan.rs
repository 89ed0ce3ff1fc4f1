//! From the desired state to an ordered list of map operations, keeping what
//! is applied: ids, Maglev tables and their place in the slab.
//!
//! The frontends of one Service port (its cluster IP, external and
//! load-balancer IPs, node port) share one service id, one backend entry
//! per endpoint, and one Maglev table per traffic policy in use; each
//! frontend's entry points at the table of its policy. So the backends
//! array holds each endpoint once per Service port, however many frontends
//! the port has.
//!
//! Order matters for packets in flight: new backends are written before the
//! tables that point at them, a table before the service entry that publishes
//! it, and a backend is cleared only after no published table points at it.
//! Freed slab ranges and ids wait for a grace period before reuse.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_common::{
    maps6::{Backend6, ServiceKey6},
    Backend, BackendId, InternalTable, ServiceEntry, ServiceKey, BACKEND_F_ACTIVE, BACKEND_F_LOCAL,
    BACKEND_F_SELECTED, BACKEND_F_SELECTED_LOCAL, MAX_BACKENDS, MAX_SERVICES,
    SERVICE_F_INTERNAL_TABLE, SERVICE_F_LOCAL, SERVICE_F_REJECT, SERVICE_F_SOURCE_RANGES,
};

use crate::{
    desired::{DesiredFrontend, DesiredState, Frontend, ObjectName, SourceRange, TrafficPolicy},
    filter::{FilterBits, FilterWrites},
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
    /// Write where a service id's `Cluster` table is, for pods (before an
    /// entry says to read it).
    SetInternalTable(u32, InternalTable),
    /// Publish (create or replace) a service entry.
    SetService(ServiceKey, ServiceEntry),
    /// Remove a service entry.
    DeleteService(ServiceKey),
    /// Clear a backend entry that nothing publishes any more.
    ClearBackend(BackendId),
    /// Name a service id ("namespace/name:port") for `lb-agent status` and
    /// a restarted agent.
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
    /// Write an IPv6 backend entry (its id from the space IPv4's share).
    SetBackend6(BackendId, Backend6),
    /// Publish (create or replace) an IPv6 service entry.
    SetService6(ServiceKey6, ServiceEntry),
    /// Remove an IPv6 service entry.
    DeleteService6(ServiceKey6),
    /// Clear an IPv6 backend entry that nothing publishes any more.
    ClearBackend6(BackendId),
    /// Serve IPv6 node ports on an address.
    SetNodePortAddr6(Ipv6Addr),
    /// Stop serving IPv6 node ports on an address.
    DeleteNodePortAddr6(Ipv6Addr),
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

pub use crate::applied::{AppliedBackend, AppliedFrontend, AppliedPort, AppliedTable, PortName};

/// A Maglev table built ahead: its size, its members, and the member index
/// of each slot.
type Prebuilt = (u32, Vec<SocketAddrV4>, Vec<u32>);

/// A frontend as the planner records it.
#[derive(Clone, Debug)]
struct PlacedFrontend {
    /// Its Service port's id.
    port: u32,
    /// Its entry as written, if any.
    entry: Option<ServiceEntry>,
    /// The policy it follows for clients from outside.
    policy: TrafficPolicy,
    /// The policy it follows for pods.
    pods_policy: TrafficPolicy,
    /// Its source ranges (load-balancer IPs only), sorted.
    source_ranges: Vec<SourceRange>,
    /// A node port's node-port addresses.
    node_port_addrs: Vec<Ipv4Addr>,
    /// Adopted, its policies read from its entry's flags, which do not say
    /// a policy that selects as `Cluster` does: taken from the desired
    /// state at the next plan, before any port is synced.
    guessed: bool,
}

/// The applied state, and the planner of changes to it.
#[derive(Debug)]
pub struct Planner {
    frontends: BTreeMap<Frontend, PlacedFrontend>,
    ports: BTreeMap<u32, AppliedPort>,
    by_name: HashMap<PortName, u32>,
    slab: SlabAllocator,
    backend_ids: IdAllocator,
    service_ids: IdAllocator,
    filter: FilterBits,
    /// Maglev tables built ahead for the plan under way: (port, policy) ->
    /// (size, members, backend indices).
    prebuilt: HashMap<(PortName, TrafficPolicy), Prebuilt>,
    /// Source ranges the maps hold, all Service ports together.
    source_ranges: usize,
    /// The node-port addresses the maps hold.
    node_port_addrs: BTreeSet<Ipv4Addr>,
    /// Entries of the backends array.
    backend_capacity: u32,
    /// Frontends the services map holds, and Service port ids.
    service_capacity: u32,
    /// Whether adopted frontends' policies are still guesses.
    guesses: bool,
    /// Frontends an earlier agent wrote that could not be adopted (their
    /// ranges or ids collide): deleted by the next plan unless placed.
    orphans: BTreeSet<Frontend>,
}

#[derive(Default)]
struct Ops {
    backends: Vec<MapOp>,
    tables: Vec<MapOp>,
    services: Vec<MapOp>,
    deletes: Vec<MapOp>,
    clears: Vec<MapOp>,
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

/// The sizes of the maps a [`Planner`] fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Slots of the Maglev slab (`--maglev-slab-slots`).
    pub slab_slots: u32,
    /// Entries of the backends array, id 0 unused (`--max-backends`).
    pub backend_slots: u32,
    /// Frontends of the services map, and Service port ids (`--max-services`).
    pub service_slots: u32,
}

impl Capacity {
    /// A slab of `slab_slots`, the other maps at their default sizes.
    #[must_use]
    pub fn with_slab(slab_slots: u32) -> Self {
        Self {
            slab_slots,
            backend_slots: MAX_BACKENDS,
            service_slots: MAX_SERVICES,
        }
    }
}

impl Planner {
    /// A planner for empty maps with a slab of `slab_slots`; freed slots and ids wait `grace`.
    #[must_use]
    pub fn new(slab_slots: u32, grace: Duration) -> Self {
        Self::new_sized(Capacity::with_slab(slab_slots), grace)
    }

    /// [`Planner::new`] for maps of the sizes `capacity` gives.
    #[must_use]
    pub fn new_sized(capacity: Capacity, grace: Duration) -> Self {
        let Capacity {
            slab_slots,
            backend_slots,
            service_slots,
        } = capacity;
        Self {
            backend_capacity: backend_slots,
            service_capacity: service_slots,
            frontends: BTreeMap::new(),
            ports: BTreeMap::new(),
            by_name: HashMap::new(),
            slab: SlabAllocator::new(slab_slots, grace),
            backend_ids: IdAllocator::new(1, backend_slots, grace),
            service_ids: IdAllocator::new(1, service_slots.saturating_add(1), grace),
            filter: FilterBits::default().with_grace(grace),
            prebuilt: HashMap::new(),
            source_ranges: 0,
            node_port_addrs: BTreeSet::new(),
            guesses: false,
            orphans: BTreeSet::new(),
        }
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

    /// The frontends as applied, each as one view with its Service port's
    /// backends.
    pub fn frontends(&self) -> impl Iterator<Item = AppliedFrontend> + '_ {
        self.frontends
            .iter()
            .map(|(frontend, placed)| self.view(*frontend, placed))
    }

    /// The applied frontends' keys.
    pub fn frontend_keys(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.frontends.keys().copied()
    }

    /// How many frontends are applied.
    #[must_use]
    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// The Service ports as applied.
    pub fn ports(&self) -> impl Iterator<Item = &AppliedPort> {
        self.ports.values()
    }

    fn view(&self, frontend: Frontend, placed: &PlacedFrontend) -> AppliedFrontend {
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
                port.internal_written.map(InternalTable::from)
            },
            node_port_addrs: placed.node_port_addrs.clone(),
        }
    }

    /// The operations that turn the applied state into `desired`, which then
    /// counts as applied. Frontends that cannot be placed are reported and
    /// keep their previous state; the others are planned regardless.
    pub fn plan(&mut self, desired: &DesiredState, now: Instant) -> (Plan, Vec<PlanError>) {
        let gone: Vec<Frontend> = self
            .frontends
            .keys()
            .chain(&self.orphans)
            .filter(|f| !desired.contains_key(f))
            .copied()
            .collect();
        let all = gone.into_iter().chain(desired.keys().copied());
        self.plan_frontends(desired, all, now)
    }

    /// Like [`Planner::plan`] for the given frontends only: each is placed as
    /// `desired` has it, or removed when `desired` lacks it. The caller
    /// vouches that every other frontend is unchanged (a Service port's
    /// other frontends follow what its placed ones say it shares).
    pub fn plan_frontends(
        &mut self,
        desired: &DesiredState,
        frontends: impl IntoIterator<Item = Frontend>,
        now: Instant,
    ) -> (Plan, Vec<PlanError>) {
        self.slab.reclaim(now);
        self.settle_guesses(desired);
        let frontends: Vec<Frontend> = frontends.into_iter().collect();
        self.prebuild(desired, &frontends);
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

    /// Takes the policies of adopted frontends from `desired` (those it
    /// lacks keep their guesses: they are about to go), so that a port
    /// synced for one of its frontends writes the others' entries as
    /// they are meant, not as their flags looked.
    fn settle_guesses(&mut self, desired: &DesiredState) {
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

    /// Places `frontend` as `want` says, in its Service port (created, or
    /// claimed from the adopted ones, if need be), and updates what the
    /// port shares. On failure nothing changes.
    fn place(
        &mut self,
        frontend: Frontend,
        want: &DesiredFrontend,
        ops: &mut Ops,
        now: Instant,
    ) -> Result<(), String> {
        let name = PortName::of(frontend, want);
        let previous = self.frontends.get(&frontend).cloned();
        if previous.is_none() && self.frontends.len() >= self.service_capacity as usize {
            return Err(format!(
                "more than {} frontends: raise --max-services",
                self.service_capacity
            ));
        }
        let from = previous.as_ref().map(|p| p.port);
        let claimed_from = from.map(|id| self.ports[&id].service.clone());
        let (id, found) = self.find_port(&name, frontend, from, now)?;
        self.frontends.insert(
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
        self.orphans.remove(&frontend);
        self.port_mut(id).frontends.insert(frontend);
        if let Err(message) = self.sync_port(id, Some(want), ops, now) {
            if let Some(p) = previous {
                self.frontends.insert(frontend, p);
            } else {
                self.frontends.remove(&frontend);
            }
            if from != Some(id) {
                self.port_mut(id).frontends.remove(&frontend);
            }
            match found {
                Found::Applied => {}
                Found::Claimed => {
                    let port = self.port_mut(id);
                    port.name = None;
                    if let Some(service) = claimed_from {
                        port.service = service;
                    }
                    self.by_name.remove(&name);
                }
                Found::Created => {
                    self.ports.remove(&id);
                    self.by_name.remove(&name);
                    self.service_ids.free(id, now);
                }
            }
            return Err(message);
        }
        if found != Found::Applied {
            ops.services.push(MapOp::SetLabel(id, name.label()));
        }
        if let Some(p) = &previous {
            self.filter.remove_at(
                crate::filter::frontend_bits(frontend, &p.node_port_addrs),
                now,
            );
        }
        self.filter.add(crate::filter::frontend_bits(
            frontend,
            &want.node_port_addrs,
        ));
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
        frontend: Frontend,
        from: Option<u32>,
        now: Instant,
    ) -> Result<(u32, Found), String> {
        if let Some(id) = self.port_named(name) {
            return Ok((id, Found::Applied));
        }
        if let Some(id) = from.filter(|id| self.ports[id].name.is_none()) {
            let port = self.port_mut(id);
            port.name = Some(name.clone());
            port.service = name.service.clone();
            self.by_name.insert(name.clone(), id);
            return Ok((id, Found::Claimed));
        }
        let Some(id) = self.service_ids.alloc(now) else {
            return Err(format!(
                "more than {} Service ports: raise --max-services",
                self.service_capacity
            ));
        };
        self.by_name.insert(name.clone(), id);
        self.ports.insert(
            id,
            AppliedPort {
                id,
                name: Some(name.clone()),
                service: name.service.clone(),
                proto: frontend.proto,
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

    /// The id of the applied port named `name`.
    fn port_named(&self, name: &PortName) -> Option<u32> {
        self.by_name
            .get(name)
            .copied()
            .filter(|id| self.ports.contains_key(id))
    }

    fn port_mut(&mut self, id: u32) -> &mut AppliedPort {
        self.ports.get_mut(&id).expect("an applied Service port")
    }

    fn remove(&mut self, frontend: Frontend, ops: &mut Ops, now: Instant) {
        let Some(placed) = self.frontends.remove(&frontend) else {
            if self.orphans.remove(&frontend) {
                ops.deletes.push(MapOp::DeleteService(frontend.key()));
            }
            return;
        };
        ops.deletes.push(MapOp::DeleteService(frontend.key()));
        self.filter.remove_at(
            crate::filter::frontend_bits(frontend, &placed.node_port_addrs),
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
        frontend: Frontend,
        into: Option<u32>,
        ops: &mut Ops,
        now: Instant,
    ) {
        let port = self.port_mut(id);
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
        let Some(port) = self.ports.remove(&id) else {
            return;
        };
        if let Some(name) = &port.name {
            self.by_name.remove(name);
        }
        ops.deletes.push(MapOp::DeleteLabel(id));
        ranges::update(id, &port.source_ranges, &[], ops);
        self.source_ranges -= port.source_ranges.len();
        self.filter.remove_at(
            crate::filter::backend_bits(port.backends.keys(), port.proto),
            now,
        );
        for (addr, gone) in &port.backends {
            let heir = into
                .and_then(|to| self.ports.get_mut(&to))
                .and_then(|to| Some((to.id, to.backends.get_mut(addr)?)));
            if let Some((heir_id, heir)) = heir {
                let entry = backend_entry(*addr, heir, heir_id);
                for alias in gone.ids() {
                    ops.clears.push(MapOp::SetBackend(alias, entry));
                    heir.aliases.push(alias);
                }
            } else {
                for backend in gone.ids() {
                    ops.clears.push(MapOp::ClearBackend(backend));
                    self.backend_ids.free(backend, now);
                }
            }
        }
        for table in [port.cluster_table, port.local_table].into_iter().flatten() {
            self.free_slots(table.offset, table.size, now);
        }
        self.service_ids.free(id, now);
    }
}

/// The `SERVICE_F_*` bits of a frontend's service entry, for its table of
/// policy `main` (holding `count` backends), with the `Cluster` table for
/// pods (`internal`), in a Service port with or without endpoints anywhere:
/// it refuses new connections when it has no backend to select because
/// its Service port has no usable endpoint anywhere (not when they are all
/// elsewhere under a `Local` policy: that drops); it checks clients
/// against its source ranges when it has some.
#[must_use]
pub fn service_flags(
    main: TrafficPolicy,
    internal: bool,
    count: u32,
    has_endpoints: bool,
    has_ranges: bool,
) -> u32 {
    let mut flags = 0;
    if count == 0 && !has_endpoints {
        flags |= SERVICE_F_REJECT;
    }
    if has_ranges {
        flags |= SERVICE_F_SOURCE_RANGES;
    }
    if internal {
        flags |= SERVICE_F_INTERNAL_TABLE;
    }
    if main == TrafficPolicy::Local {
        flags |= SERVICE_F_LOCAL;
    }
    flags
}

/// The backends-array entry of an endpoint of service id `service_id`.
#[must_use]
pub fn backend_entry(addr: SocketAddrV4, backend: &AppliedBackend, service_id: u32) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        flags: BACKEND_F_ACTIVE
            | if backend.local { BACKEND_F_LOCAL } else { 0 }
            | if backend.for_cluster {
                BACKEND_F_SELECTED
            } else {
                0
            }
            | if backend.for_local {
                BACKEND_F_SELECTED_LOCAL
            } else {
                0
            },
        pad: 0,
        service_id,
    }
}

mod adopt;
mod port;
mod ranges;

#[cfg(test)]
mod sharing_tests;
#[cfg(test)]
mod tests;
