//! The reconciler: from the model and what changed in it to the ordered map
//! operations, recomputing only the Services a change touches.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    convert::Infallible,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use self::family::FamilyState;
use crate::{
    desired::{
        AddrFamily, DesiredState, DesiredState6, Frontend, FrontendV6, NodeInfo, ObjectName,
    },
    gone::{self, GoneBackend},
    model::{AddressType, Cluster, ServiceSpec},
    node_ports::NodePortAddresses,
    plan::{Plan, PlanError, Planner},
    problem::{ProblemReason, ServiceProblem},
    select::{self, SliceIndex},
    source::Changes,
};

/// How long freed slab ranges and ids wait before reuse (packets in flight may still read them).
pub const REUSE_GRACE: Duration = Duration::from_secs(2);

/// Maglev slots a chunk of a plan holds before it is applied (1 MiB of
/// tables), so a sync of thousands of Services never holds all their tables.
pub const CHUNK_SLOTS: usize = 1 << 18;

/// The desired state as last computed, and what is applied.
pub struct Reconciler {
    node: NodeInfo,
    /// The node as merged with its Node object at the last full sync.
    merged_node: Option<NodeInfo>,
    planner: Planner,
    index: SliceIndex,
    /// IPv4's desired state and claims.
    v4: FamilyState<SocketAddrV4>,
    /// IPv6's, computed and planned only when [`Reconciler::plan_ipv6`] is on.
    v6: FamilyState<SocketAddrV6>,
    /// Whether IPv6 frontends are planned.
    ipv6: bool,
    /// Warnings already logged, so a lasting condition is logged once.
    warned: HashSet<String>,
    /// Which local addresses serve node ports, and the local addresses.
    node_port_rule: NodePortAddresses,
    local_addresses: Vec<Ipv4Addr>,
    local_addresses6: Vec<Ipv6Addr>,
    /// Whether to find the backends frontends lose ([`Reconciled::gone`]).
    track_gone: bool,
    /// What the update under way found gone, per family.
    gone: Vec<GoneBackend>,
    gone6: Vec<GoneBackend<SocketAddrV6>>,
    /// Each Service's own problems (its spec's and its IPv6 side's), kept
    /// with the changes: a sync walks the Services it touched, not all.
    service_problems: BTreeMap<ObjectName, Vec<ServiceProblem>>,
    /// Whether every Service's problems are recomputed at the next
    /// reconcile (what they say changed: IPv6 turned on or off).
    problems_stale: bool,
}

/// The outcome of one reconcile.
pub struct Reconciled {
    /// Map operations, in order ([`Reconciler::reconcile`]; empty when the
    /// chunks went to [`Reconciler::reconcile_chunked`]'s `apply`).
    pub plan: Plan,
    /// Map operations planned, in all chunks.
    pub ops: usize,
    /// Frontends that could not be placed.
    pub errors: Vec<PlanError>,
    /// IPv6 frontends that could not be placed.
    pub errors6: Vec<PlanError<SocketAddrV6>>,
    /// New warnings about ignored input.
    pub warnings: Vec<String>,
    /// Services that cannot be programmed as they ask, as of this reconcile
    /// (every current one, new or not: the reporter deduplicates).
    pub problems: Vec<ServiceProblem>,
    /// Frontends recomputed (all of them on a full sync).
    pub recomputed: usize,
    /// Backends frontends no longer have, when tracked
    /// ([`Reconciler::track_gone`]); not those of frontends that could not
    /// be placed (their earlier state stays applied).
    pub gone: Vec<GoneBackend>,
    /// The same for IPv6 frontends.
    pub gone6: Vec<GoneBackend<SocketAddrV6>>,
}

impl Reconciler {
    /// A reconciler whose maps start empty.
    #[must_use]
    pub fn new(node: NodeInfo, slab_slots: u32) -> Self {
        Self {
            node,
            merged_node: None,
            planner: Planner::new(slab_slots, REUSE_GRACE),
            index: SliceIndex::default(),
            v4: FamilyState::default(),
            v6: FamilyState::default(),
            ipv6: false,
            warned: HashSet::new(),
            node_port_rule: NodePortAddresses::default(),
            local_addresses: Vec::new(),
            local_addresses6: Vec::new(),
            track_gone: false,
            gone: Vec::new(),
            gone6: Vec::new(),
            service_problems: BTreeMap::new(),
            problems_stale: false,
        }
    }

    /// A reconciler continuing from what `planner` says is applied.
    #[must_use]
    pub fn with_planner(node: NodeInfo, planner: Planner) -> Self {
        Self {
            planner,
            ..Self::new(node, 0)
        }
    }

    /// Finds, at each reconcile, the backends frontends no longer have
    /// (socket-level balancing closes the sockets pointed at them).
    pub fn track_gone(&mut self, on: bool) {
        self.track_gone = on;
    }

    /// Plans IPv6 frontends (off by default: the data path does not read
    /// the IPv6 maps yet). Turning it on or off recomputes everything at
    /// the next reconcile; off, IPv6 frontends already planned are removed.
    pub fn plan_ipv6(&mut self, on: bool) {
        if self.ipv6 != on {
            self.ipv6 = on;
            self.merged_node = None;
            self.problems_stale = true;
        }
    }

    /// Whether IPv6 frontends are planned.
    #[must_use]
    pub fn plans_ipv6(&self) -> bool {
        self.ipv6
    }

    /// Serves node ports where `rule` says (until set: on the node's own
    /// addresses, with no local addresses read).
    pub fn set_node_port_rule(&mut self, rule: NodePortAddresses) {
        self.node_port_rule = rule;
    }

    /// The node's local addresses as last read (sorted here); whether they
    /// changed. A change replans every frontend at the next reconcile.
    pub fn set_local_addresses(&mut self, mut local: Vec<Ipv4Addr>) -> bool {
        local.sort_unstable();
        local.dedup();
        let changed = local != self.local_addresses;
        self.local_addresses = local;
        changed
    }

    /// The node's local IPv6 addresses as last read, as
    /// [`Reconciler::set_local_addresses`] takes IPv4's.
    pub fn set_local_addresses6(&mut self, mut local: Vec<Ipv6Addr>) -> bool {
        local.sort_unstable();
        local.dedup();
        let changed = local != self.local_addresses6;
        self.local_addresses6 = local;
        changed
    }

    /// This node as of the last reconcile: with its Node object's and its
    /// interfaces' addresses.
    #[must_use]
    pub fn node(&self) -> &NodeInfo {
        self.merged_node.as_ref().unwrap_or(&self.node)
    }

    /// The EndpointSlices of each Service, as of the last reconcile.
    #[must_use]
    pub fn slice_index(&self) -> &SliceIndex {
        &self.index
    }

    /// The desired state as last computed.
    #[must_use]
    pub fn desired(&self) -> &DesiredState {
        &self.v4.desired
    }

    /// The desired IPv6 state as last computed (empty unless
    /// [`Reconciler::plan_ipv6`] is on).
    #[must_use]
    pub fn desired6(&self) -> &DesiredState6 {
        &self.v6.desired
    }

    /// The operations that bring the maps from the applied state to what
    /// `cluster` asks, given what `changes` says changed since the last call.
    pub fn reconcile(&mut self, cluster: &Cluster, changes: &Changes, now: Instant) -> Reconciled {
        let mut plan = Plan::default();
        let (mut done, applied) =
            self.reconcile_chunked(cluster, changes, now, usize::MAX, |chunk| {
                plan.ops.extend(chunk.ops);
                Ok::<(), Infallible>(())
            });
        if let Err(never) = applied {
            match never {}
        }
        done.plan = plan;
        done
    }

    /// Like [`Reconciler::reconcile`], handing the operations to `apply` in
    /// chunks of about `chunk_slots` Maglev slots. Each chunk is the plan of
    /// a group of whole frontends, in the planner's order (filter bits,
    /// backends, tables, service entries, then what they no longer use),
    /// and frontends that go are planned first. Stops at the first chunk
    /// `apply` fails and returns its error beside the outcome (the warnings
    /// are new either way); then the planner no longer matches the maps:
    /// see [`Reconciler::recover`].
    pub fn reconcile_chunked<E>(
        &mut self,
        cluster: &Cluster,
        changes: &Changes,
        now: Instant,
        chunk_slots: usize,
        apply: impl FnMut(Plan) -> Result<(), E>,
    ) -> (Reconciled, Result<(), E>) {
        let (frontends, warnings, recomputed) = self.update(cluster, changes);
        let node = self.merged_node.as_ref().unwrap_or(&self.node);
        let (add4, remove4) = self
            .planner
            .node_port_addresses(&node.node_port_addresses());
        let want6 = if self.ipv6 {
            node.node_port_addresses6()
        } else {
            Vec::new()
        };
        let (add6, remove6) = self.planner.node_port_addresses6(&want6);
        let first = Plan {
            ops: [add4.ops, add6.ops].concat(),
        };
        let last = Plan {
            ops: [remove4.ops, remove6.ops].concat(),
        };
        let (ops, (errors, errors6), applied) =
            self.plan_chunked(frontends, now, chunk_slots, first, last, apply);
        self.v4.failed = errors.iter().map(|e| e.frontend).collect();
        self.v6.failed = errors6.iter().map(|e| e.frontend).collect();
        let mut gone = std::mem::take(&mut self.gone);
        gone.retain(|g| !self.v4.failed.contains(&g.frontend));
        let mut gone6 = std::mem::take(&mut self.gone6);
        gone6.retain(|g| !self.v6.failed.contains(&g.frontend));
        self.refresh_service_problems(cluster, changes);
        let mut problems: Vec<ServiceProblem> =
            self.service_problems.values().flatten().cloned().collect();
        problems.extend(self.v4.claims.problems());
        problems.extend(self.v6.claims.problems());
        problems.extend(errors.iter().map(capacity_problem));
        problems.extend(errors6.iter().map(capacity_problem));
        let done = Reconciled {
            plan: Plan::default(),
            ops,
            errors,
            errors6,
            warnings,
            problems,
            recomputed,
            gone,
            gone6,
        };
        (done, applied)
    }

    /// Brings [`Reconciler::service_problems`] up to date: every Service's
    /// after a change of everything, else the changed Services' only (at
    /// 100,000 Services a walk of all of them cost milliseconds a sync).
    fn refresh_service_problems(&mut self, cluster: &Cluster, changes: &Changes) {
        let planned = self.ipv6;
        let problems_of = |service: &ServiceSpec| -> Vec<ServiceProblem> {
            let ipv6 = select::family::ipv6_problem(service, planned);
            service.problems().into_iter().chain(ipv6).collect()
        };
        if changes.all || std::mem::take(&mut self.problems_stale) {
            self.service_problems = cluster
                .services
                .iter()
                .map(|(name, service)| (name.clone(), problems_of(service)))
                .filter(|(_, problems)| !problems.is_empty())
                .collect();
            return;
        }
        for name in &changes.services {
            match cluster
                .services
                .get(name)
                .map(|service| problems_of(service))
            {
                Some(problems) if !problems.is_empty() => {
                    self.service_problems.insert(name.clone(), problems);
                }
                _ => {
                    self.service_problems.remove(name);
                }
            }
        }
    }

    /// After a failed apply: continues from `planner` (rebuilt from what the
    /// maps hold), and the next reconcile recomputes and plans every frontend.
    pub fn recover(&mut self, planner: Planner) {
        self.planner = planner;
        self.merged_node = None;
    }

    /// Brings the desired state up to date; returns the frontends to plan
    /// in order (each family's), the new warnings and how many frontends
    /// were recomputed.
    fn update(&mut self, cluster: &Cluster, changes: &Changes) -> (ToPlan, Vec<String>, usize) {
        let mut node = self.node.merged(cluster.node.as_ref());
        if !self.local_addresses.is_empty() {
            node.node_port_addresses = Some(
                self.node_port_rule
                    .select(&self.local_addresses, &node.addresses),
            );
            node.local_addresses.clone_from(&self.local_addresses);
        }
        // IPv6's addresses matter only while IPv6 is planned (they change
        // more often: temporary addresses must not replan IPv4).
        if self.ipv6 && !self.local_addresses6.is_empty() {
            node.v6.node_port_addresses = Some(
                self.node_port_rule
                    .select6(&self.local_addresses6, &node.v6.addresses),
            );
            node.v6.local_addresses.clone_from(&self.local_addresses6);
        }
        if changes.all || self.merged_node.as_ref() != Some(&node) {
            self.merged_node = Some(node);
            return self.full(cluster);
        }
        let mut affected = changes.services.clone();
        let mut warnings = Vec::new();
        for name in &changes.slices {
            affected.extend(self.index.remove(name));
            if let Some(slice) = cluster.slices.get(name) {
                self.index.insert(slice);
                affected.insert(SliceIndex::service_of(slice));
                if let AddressType::Other(family) = &slice.address_type {
                    warnings.push(select::other_address_type(name, family));
                }
            }
        }
        let node = self.merged_node.as_ref().unwrap_or(&self.node);
        let (track_gone, gone, gone6) = (self.track_gone, &mut self.gone, &mut self.gone6);
        let touched4 = self.v4.update(
            cluster,
            &self.index,
            &affected,
            node,
            |frontend, old, new| {
                if track_gone {
                    gone::gone_from(frontend, old, new, gone);
                }
            },
        );
        let touched6 = if self.ipv6 {
            self.v6.update(
                cluster,
                &self.index,
                &affected,
                node,
                |frontend, old, new| {
                    if track_gone {
                        gone::gone_from(frontend, old, new, gone6);
                    }
                },
            )
        } else {
            BTreeSet::new()
        };
        let warnings = warnings
            .into_iter()
            .filter(|w| self.warned.insert(w.clone()))
            .collect();
        let recomputed = touched4.len() + touched6.len();
        let to_plan = (
            touched4.into_iter().collect(),
            touched6.into_iter().collect(),
        );
        (to_plan, warnings, recomputed)
    }

    /// Plans each family's frontends in groups of about `chunk_slots` new
    /// table slots, IPv4's first, handing each group's operations to
    /// `apply`. `first` (node-port addresses to serve) goes ahead of every
    /// chunk, `last` (those to stop serving) behind them.
    fn plan_chunked<E>(
        &mut self,
        (frontends4, frontends6): ToPlan,
        now: Instant,
        chunk_slots: usize,
        first: Plan,
        last: Plan,
        mut apply: impl FnMut(Plan) -> Result<(), E>,
    ) -> (usize, PlanErrors, Result<(), E>) {
        let mut total = first.ops.len() + last.ops.len();
        let mut errors = (Vec::new(), Vec::new());
        if !first.ops.is_empty() {
            if let Err(e) = apply(first) {
                return (total, errors, Err(e));
            }
        }
        let (e4, applied) = self.v4.plan_chunked(
            &mut self.planner,
            frontends4,
            now,
            chunk_slots,
            &mut total,
            &mut apply,
        );
        errors.0 = e4;
        if applied.is_err() {
            return (total, errors, applied);
        }
        let (e6, applied) = self.v6.plan_chunked(
            &mut self.planner,
            frontends6,
            now,
            chunk_slots,
            &mut total,
            &mut apply,
        );
        errors.1 = e6;
        if applied.is_err() {
            return (total, errors, applied);
        }
        if !last.ops.is_empty() {
            if let Err(e) = apply(last) {
                return (total, errors, Err(e));
            }
        }
        (total, errors, Ok(()))
    }

    fn full(&mut self, cluster: &Cluster) -> (ToPlan, Vec<String>, usize) {
        self.index = SliceIndex::build(cluster);
        let node = self.merged_node.as_ref().unwrap_or(&self.node);
        let old = self.v4.full(cluster, &self.index, node);
        let old6 = if self.ipv6 {
            self.v6.full(cluster, &self.index, node)
        } else {
            std::mem::take(&mut self.v6).desired
        };
        if self.track_gone {
            self.gone = gone::at_full_sync(&old, &self.v4.desired, || self.planner.frontends());
            self.gone6 = gone::at_full_sync(&old6, &self.v6.desired, || self.planner.frontends6());
        }
        let to_plan = (
            self.v4.all_to_plan(&self.planner),
            self.v6.all_to_plan(&self.planner),
        );
        let all = self.index.warnings(cluster);
        let warnings = all
            .iter()
            .filter(|w| !self.warned.contains(*w))
            .cloned()
            .collect();
        self.warned = all.into_iter().collect();
        let recomputed = self.v4.desired.len() + self.v6.desired.len();
        (to_plan, warnings, recomputed)
    }
}

/// The frontends of one reconcile to plan, per family.
type ToPlan = (Vec<Frontend>, Vec<FrontendV6>);

/// The frontends of one reconcile that could not be placed, per family.
type PlanErrors = (Vec<PlanError>, Vec<PlanError<SocketAddrV6>>);

/// The problem of a frontend that could not be placed.
fn capacity_problem<S: AddrFamily>(e: &PlanError<S>) -> ServiceProblem {
    ServiceProblem {
        service: e.service.clone(),
        reason: ProblemReason::Capacity,
        message: format!(
            "frontend {} is not programmed: {} (retried at every sync)",
            e.frontend, e.message
        ),
    }
}

mod family;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v6;
