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
//!
//! Each family has its own frontends, Service ports and maps
//! ([`family::FamilyPlan`]); the Maglev slab, the backend and service ids
//! and the pass-through filter are shared ([`shared::Shared`]), so a
//! dual-stack Service port has one id per family and their tables never
//! overlap. IPv4's methods keep their names; IPv6's end in `6`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use lb_common::{
    maps6::{Backend6, ServiceKey6},
    Backend, BackendId, InternalTable, ServiceEntry, ServiceKey, BACKEND_F_ACTIVE, BACKEND_F_LOCAL,
    BACKEND_F_SELECTED, BACKEND_F_SELECTED_LOCAL, MAX_BACKENDS, MAX_SERVICES,
    SERVICE_F_INTERNAL_TABLE, SERVICE_F_LOCAL, SERVICE_F_REJECT, SERVICE_F_SOURCE_RANGES,
};

pub use self::ops::FamilyOps;
use self::{
    family::{FamilyPlan, Side},
    shared::Shared,
};
use crate::desired::{
    AddrFamily, DesiredFrontend, DesiredState, DesiredState6, Frontend, FrontendV6, ObjectName,
    SourceRange, SourceRangeV6, TrafficPolicy,
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
    /// Allow an IPv6 client range for a service id.
    SetSourceRange6(u32, SourceRangeV6),
    /// Remove an IPv6 client range of a service id.
    DeleteSourceRange6(u32, SourceRangeV6),
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

/// A frontend of family `S` (IPv4 by default) that could not be placed;
/// its previous state stays applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError<S: AddrFamily = SocketAddrV4> {
    /// The frontend.
    pub frontend: S::Frontend,
    /// Its Service.
    pub service: ObjectName,
    /// What ran out.
    pub message: String,
}

impl<S: AddrFamily> fmt::Display for PlanError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Service {} frontend {}: {}",
            self.service, self.frontend, self.message
        )
    }
}

impl<S: AddrFamily> std::error::Error for PlanError<S> {}

pub use crate::applied::{AppliedBackend, AppliedFrontend, AppliedPort, AppliedTable, PortName};

/// The operations of one plan, by the phase they are applied in.
#[derive(Default)]
struct Ops {
    backends: Vec<MapOp>,
    tables: Vec<MapOp>,
    services: Vec<MapOp>,
    deletes: Vec<MapOp>,
    clears: Vec<MapOp>,
}

/// The sizes of the maps a [`Planner`] fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Slots of the Maglev slab (`--maglev-slab-slots`).
    pub slab_slots: u32,
    /// Entries of the backends array, id 0 unused (`--max-backends`); both
    /// families' backends take their ids from this one space.
    pub backend_slots: u32,
    /// Frontends of each family's services map, and Service port ids of
    /// both families together (`--max-services`).
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

/// The applied state of both families, and the planner of changes to it.
#[derive(Debug)]
pub struct Planner {
    /// What the families share: slab, ids, filter.
    shared: Shared,
    /// IPv4's frontends and Service ports.
    v4: FamilyPlan<SocketAddrV4>,
    /// IPv6's frontends and Service ports.
    v6: FamilyPlan<SocketAddrV6>,
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
        Self {
            shared: Shared::new(capacity, grace),
            v4: FamilyPlan::default(),
            v6: FamilyPlan::default(),
        }
    }

    /// IPv4's side, with the shared state lent.
    fn side4(&mut self) -> Side<'_, SocketAddrV4> {
        Side {
            fam: &mut self.v4,
            shared: &mut self.shared,
        }
    }

    /// IPv6's side, with the shared state lent.
    fn side6(&mut self) -> Side<'_, SocketAddrV6> {
        Side {
            fam: &mut self.v6,
            shared: &mut self.shared,
        }
    }

    /// The planner with the node-port addresses the maps hold (from an
    /// earlier agent).
    #[must_use]
    pub fn with_node_port_addrs(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.v4.node_port_addrs = addrs.into_iter().collect();
        self
    }

    /// The planner with the IPv6 node-port addresses the maps hold.
    #[must_use]
    pub fn with_node_port_addrs6(mut self, addrs: impl IntoIterator<Item = Ipv6Addr>) -> Self {
        self.v6.node_port_addrs = addrs.into_iter().collect();
        self
    }

    /// The writes that make the node-port addresses `want`: the ones to
    /// add (applied before any frontend that may need them) and the ones
    /// to remove (after every frontend that no longer does). They count as
    /// applied.
    pub fn node_port_addresses(&mut self, want: &[Ipv4Addr]) -> (Plan, Plan) {
        self.v4.node_port_addresses(want)
    }

    /// [`Planner::node_port_addresses`] for IPv6's.
    pub fn node_port_addresses6(&mut self, want: &[Ipv6Addr]) -> (Plan, Plan) {
        self.v6.node_port_addresses(want)
    }

    /// The IPv4 frontends as applied, each as one view with its Service
    /// port's backends.
    pub fn frontends(&self) -> impl Iterator<Item = AppliedFrontend> + '_ {
        self.v4.frontends()
    }

    /// The IPv6 frontends as applied.
    pub fn frontends6(&self) -> impl Iterator<Item = AppliedFrontend<SocketAddrV6>> + '_ {
        self.v6.frontends()
    }

    /// The applied IPv4 frontends' keys.
    pub fn frontend_keys(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.v4.frontends.keys().copied()
    }

    /// The applied IPv6 frontends' keys.
    pub fn frontend_keys6(&self) -> impl Iterator<Item = FrontendV6> + '_ {
        self.v6.frontends.keys().copied()
    }

    /// How many IPv4 frontends are applied.
    #[must_use]
    pub fn frontend_count(&self) -> usize {
        self.v4.frontends.len()
    }

    /// How many IPv6 frontends are applied.
    #[must_use]
    pub fn frontend_count6(&self) -> usize {
        self.v6.frontends.len()
    }

    /// The IPv4 Service ports as applied.
    pub fn ports(&self) -> impl Iterator<Item = &AppliedPort> {
        self.v4.ports.values()
    }

    /// The IPv6 Service ports as applied.
    pub fn ports6(&self) -> impl Iterator<Item = &AppliedPort<SocketAddrV6>> {
        self.v6.ports.values()
    }

    /// The operations that turn the applied IPv4 state into `desired`,
    /// which then counts as applied. Frontends that cannot be placed are
    /// reported and keep their previous state; the others are planned
    /// regardless.
    pub fn plan(&mut self, desired: &DesiredState, now: Instant) -> (Plan, Vec<PlanError>) {
        self.side4().plan(desired, now)
    }

    /// [`Planner::plan`] for the IPv6 state.
    pub fn plan6(
        &mut self,
        desired: &DesiredState6,
        now: Instant,
    ) -> (Plan, Vec<PlanError<SocketAddrV6>>) {
        self.side6().plan(desired, now)
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
        self.side4().plan_frontends(desired, frontends, now)
    }

    /// [`Planner::plan_frontends`] for IPv6 frontends.
    pub fn plan_frontends6(
        &mut self,
        desired: &DesiredState6,
        frontends: impl IntoIterator<Item = FrontendV6>,
        now: Instant,
    ) -> (Plan, Vec<PlanError<SocketAddrV6>>) {
        self.side6().plan_frontends(desired, frontends, now)
    }

    /// The Maglev slots planning `frontend` as `want` writes: the sizes of
    /// the tables of its Service port it rebuilds, 0 when they stay.
    #[must_use]
    pub fn slots_to_write(&self, frontend: &Frontend, want: &DesiredFrontend) -> u32 {
        self.v4.slots_to_write(*frontend, want)
    }

    /// [`Planner::slots_to_write`] for an IPv6 frontend.
    #[must_use]
    pub fn slots_to_write6(
        &self,
        frontend: &FrontendV6,
        want: &DesiredFrontend<SocketAddrV6>,
    ) -> u32 {
        self.v6.slots_to_write(*frontend, want)
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

/// The backends-array entry (of its family's array) of an endpoint of
/// service id `service_id`.
#[must_use]
pub fn backend_entry<S: AddrFamily>(
    addr: S,
    backend: &AppliedBackend,
    service_id: u32,
) -> S::Entry {
    addr.entry(backend_flags(backend), service_id)
}

/// The `BACKEND_F_*` bits of an applied backend.
fn backend_flags(backend: &AppliedBackend) -> u8 {
    BACKEND_F_ACTIVE
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
        }
}

mod adopt;
mod family;
mod ops;
mod port;
mod ranges;
mod shared;

#[cfg(test)]
mod sharing_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v6;
