//! The reconciler: from the model and what changed in it to the ordered map
//! operations, recomputing only the Services a change touches.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    convert::Infallible,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::{
    claims::Claims,
    desired::{DesiredState, Frontend, NodeInfo, ObjectName},
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
    desired: DesiredState,
    /// Every Service's claim on each frontend; `desired` holds the owners'.
    claims: Claims,
    /// The frontends each Service claims.
    by_service: BTreeMap<ObjectName, Vec<Frontend>>,
    /// Warnings already logged, so a lasting condition is logged once.
    warned: HashSet<String>,
    /// Frontends the last plan could not place: planned again next time.
    failed: BTreeSet<Frontend>,
    /// Which local addresses serve node ports, and the local addresses.
    node_port_rule: NodePortAddresses,
    local_addresses: Vec<Ipv4Addr>,
    /// Whether to find the backends frontends lose ([`Reconciled::gone`]).
    track_gone: bool,
    /// What the update under way found gone.
    gone: Vec<GoneBackend>,
    /// Each Service's own problems (its spec's and its IPv6 side's), kept
    /// with the changes: a sync walks the Services it touched, not all.
    service_problems: BTreeMap<ObjectName, Vec<ServiceProblem>>,
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
            desired: DesiredState::new(),
            claims: Claims::default(),
            by_service: BTreeMap::new(),
            warned: HashSet::new(),
            failed: BTreeSet::new(),
            node_port_rule: NodePortAddresses::default(),
            local_addresses: Vec::new(),
            track_gone: false,
            gone: Vec::new(),
            service_problems: BTreeMap::new(),
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
        &self.desired
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
        let node_port_addrs = self
            .merged_node
            .as_ref()
            .unwrap_or(&self.node)
            .node_port_addresses();
        let (add, remove) = self.planner.node_port_addresses(&node_port_addrs);
        let (ops, errors, applied) =
            self.plan_chunked(frontends, now, chunk_slots, add, remove, apply);
        self.failed = errors.iter().map(|e| e.frontend).collect();
        let mut gone = std::mem::take(&mut self.gone);
        gone.retain(|g| !self.failed.contains(&g.frontend));
        self.refresh_service_problems(cluster, changes);
        let mut problems: Vec<ServiceProblem> =
            self.service_problems.values().flatten().cloned().collect();
        problems.extend(self.claims.problems());
        problems.extend(errors.iter().map(|e| ServiceProblem {
            service: e.service.clone(),
            reason: ProblemReason::Capacity,
            message: format!(
                "frontend {} is not programmed: {} (retried at every sync)",
                e.frontend, e.message
            ),
        }));
        let done = Reconciled {
            plan: Plan::default(),
            ops,
            errors,
            warnings,
            problems,
            recomputed,
            gone,
        };
        (done, applied)
    }

    /// Brings [`Reconciler::service_problems`] up to date: every Service's
    /// after a change of everything, else the changed Services' only (at
    /// 100,000 Services a walk of all of them cost milliseconds a sync).
    fn refresh_service_problems(&mut self, cluster: &Cluster, changes: &Changes) {
        fn problems_of(service: &ServiceSpec) -> Vec<ServiceProblem> {
            let ipv6 = select::family::ipv6_problem(service);
            service.problems().into_iter().chain(ipv6).collect()
        }
        if changes.all {
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
    /// in order, the new warnings and how many frontends were recomputed.
    fn update(
        &mut self,
        cluster: &Cluster,
        changes: &Changes,
    ) -> (Vec<Frontend>, Vec<String>, usize) {
        let mut node = self.node.merged(cluster.node.as_ref());
        if !self.local_addresses.is_empty() {
            node.node_port_addresses = Some(
                self.node_port_rule
                    .select(&self.local_addresses, &node.addresses),
            );
            node.local_addresses.clone_from(&self.local_addresses);
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
        let mut touched = BTreeSet::new();
        for name in &affected {
            for frontend in self.by_service.remove(name).unwrap_or_default() {
                self.claims.remove(&frontend, name);
                touched.insert(frontend);
            }
            self.add_service(cluster, name, &mut touched);
        }
        // What could not be placed last time is tried again.
        touched.extend(self.failed.iter().copied());
        // A frontend another Service also claims goes to whoever owns it now.
        for frontend in &touched {
            let old = match self.claims.owner(frontend) {
                Some(want) => self.desired.insert(*frontend, want.clone()),
                None => self.desired.remove(frontend),
            };
            if self.track_gone {
                let new = self.desired.get(frontend);
                gone::gone_from(*frontend, old.as_ref(), new, &mut self.gone);
            }
        }
        let warnings = warnings
            .into_iter()
            .filter(|w| self.warned.insert(w.clone()))
            .collect();
        let recomputed = touched.len();
        (touched.into_iter().collect(), warnings, recomputed)
    }

    /// Plans `frontends` in groups of about `chunk_slots` new table slots,
    /// handing each group's operations to `apply`.
    /// `first` (node-port addresses to serve) goes ahead of every chunk,
    /// `last` (those to stop serving) behind them.
    fn plan_chunked<E>(
        &mut self,
        frontends: Vec<Frontend>,
        now: Instant,
        chunk_slots: usize,
        first: Plan,
        last: Plan,
        mut apply: impl FnMut(Plan) -> Result<(), E>,
    ) -> (usize, Vec<PlanError>, Result<(), E>) {
        let (mut total, mut errors) = (first.ops.len() + last.ops.len(), Vec::new());
        if !first.ops.is_empty() {
            if let Err(e) = apply(first) {
                return (total, errors, Err(e));
            }
        }
        let mut group = Vec::new();
        let mut slots = 0usize;
        let count = frontends.len();
        for (k, frontend) in frontends.into_iter().enumerate() {
            slots += self.desired.get(&frontend).map_or(0, |want| {
                self.planner.slots_to_write(&frontend, want) as usize
            });
            group.push(frontend);
            if slots < chunk_slots && k + 1 < count {
                continue;
            }
            // A group is planned at once, so its tables are built on every core.
            let (plan, mut failed) =
                self.planner
                    .plan_frontends(&self.desired, std::mem::take(&mut group), now);
            errors.append(&mut failed);
            slots = 0;
            if !plan.ops.is_empty() {
                total += plan.ops.len();
                if let Err(e) = apply(plan) {
                    return (total, errors, Err(e));
                }
            }
        }
        if !last.ops.is_empty() {
            if let Err(e) = apply(last) {
                return (total, errors, Err(e));
            }
        }
        (total, errors, Ok(()))
    }

    fn add_service(
        &mut self,
        cluster: &Cluster,
        name: &ObjectName,
        touched: &mut BTreeSet<Frontend>,
    ) {
        let node = self.merged_node.as_ref().unwrap_or(&self.node);
        let frontends = select::service_state(cluster, &self.index, name, node);
        let Some(service) = cluster.services.get(name).filter(|_| !frontends.is_empty()) else {
            return;
        };
        let keys = frontends.iter().map(|(f, _)| *f).collect();
        for (frontend, want) in frontends {
            touched.insert(frontend);
            self.claims.insert(service, frontend, want);
        }
        self.by_service.insert(name.clone(), keys);
    }

    fn full(&mut self, cluster: &Cluster) -> (Vec<Frontend>, Vec<String>, usize) {
        self.index = SliceIndex::build(cluster);
        self.claims.clear();
        self.by_service.clear();
        let mut touched = BTreeSet::new();
        for name in cluster.services.keys() {
            self.add_service(cluster, name, &mut touched);
        }
        let old = std::mem::replace(&mut self.desired, self.claims.desired());
        if self.track_gone {
            self.gone = if old.is_empty() {
                // The first sync: an earlier agent's frontends (adopted) or none.
                let applied = self
                    .planner
                    .frontends()
                    .map(|f| (f.frontend, f.backends.into_keys().collect()));
                gone::gone_since_applied(applied, &self.desired)
            } else {
                gone::gone(&old, &self.desired)
            };
        }
        // As `Planner::plan`: the frontends that go, then every desired one.
        let gone = self
            .planner
            .frontend_keys()
            .filter(|f| !self.desired.contains_key(f));
        let frontends = gone.chain(self.desired.keys().copied()).collect();
        let all = self.index.warnings(cluster);
        let warnings = all
            .iter()
            .filter(|w| !self.warned.contains(*w))
            .cloned()
            .collect();
        self.warned = all.into_iter().collect();
        (frontends, warnings, self.desired.len())
    }
}

#[cfg(test)]
mod tests;
