//! The reconciler: from the model and what changed in it to the ordered map
//! operations, recomputing only the Services a change touches.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    convert::Infallible,
    time::{Duration, Instant},
};

use crate::{
    desired::{DesiredState, Frontend, NodeInfo, ObjectName},
    model::{AddressType, Cluster},
    plan::{Plan, PlanError, Planner},
    problem::ServiceProblem,
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
    /// The frontends each Service produced.
    by_service: BTreeMap<ObjectName, Vec<Frontend>>,
    /// Warnings already logged, so a lasting condition is logged once.
    warned: HashSet<String>,
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
            by_service: BTreeMap::new(),
            warned: HashSet::new(),
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
        let (ops, errors, applied) = self.plan_chunked(frontends, now, chunk_slots, apply);
        let done = Reconciled {
            plan: Plan::default(),
            ops,
            errors,
            warnings,
            problems: Vec::new(),
            recomputed,
        };
        (done, applied)
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
        let node = self.node.merged(cluster.node.as_ref());
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
                    warnings.push(format!(
                        "EndpointSlice {name}: address type {family} is not served (IPv4 only); ignored"
                    ));
                }
            }
        }
        let mut touched = BTreeSet::new();
        for name in &affected {
            for frontend in self.by_service.remove(name).unwrap_or_default() {
                self.desired.remove(&frontend);
                touched.insert(frontend);
            }
            self.add_service(cluster, name, &mut touched);
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
    fn plan_chunked<E>(
        &mut self,
        frontends: Vec<Frontend>,
        now: Instant,
        chunk_slots: usize,
        mut apply: impl FnMut(Plan) -> Result<(), E>,
    ) -> (usize, Vec<PlanError>, Result<(), E>) {
        let (mut total, mut errors) = (0usize, Vec::new());
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
        if frontends.is_empty() {
            return;
        }
        let keys = frontends.iter().map(|(f, _)| *f).collect();
        for (frontend, want) in frontends {
            touched.insert(frontend);
            self.desired.insert(frontend, want);
        }
        self.by_service.insert(name.clone(), keys);
    }

    fn full(&mut self, cluster: &Cluster) -> (Vec<Frontend>, Vec<String>, usize) {
        self.index = SliceIndex::build(cluster);
        self.desired.clear();
        self.by_service.clear();
        let mut touched = BTreeSet::new();
        for name in cluster.services.keys() {
            self.add_service(cluster, name, &mut touched);
        }
        // As `Planner::plan`: the frontends that go, then every desired one.
        let gone = self
            .planner
            .frontends()
            .map(|applied| applied.frontend)
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
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::plan::MapOp;

    /// Maglev slots the `SetTable` operations of `ops` write.
    fn table_slots(ops: &[MapOp]) -> usize {
        ops.iter()
            .map(|op| match op {
                MapOp::SetTable { slots, .. } => slots.len(),
                _ => 0,
            })
            .sum()
    }
    use crate::{
        desired::Protocol,
        model::{
            EndpointSpec, ServiceKind, ServicePort, ServiceSpec, SlicePort, SliceSpec, TargetPort,
            TrafficPolicy,
        },
    };

    fn name(n: &str) -> ObjectName {
        ObjectName {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    fn service(n: &str, last: u8) -> ServiceSpec {
        ServiceSpec {
            name: name(n),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, last)],
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(8080),
                node_port: None,
            }],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_policy: TrafficPolicy::Cluster,
            external_policy: TrafficPolicy::Cluster,
            affinity_timeout: None,
            ..ServiceSpec::default()
        }
    }

    fn slice(n: &str, svc: &str, ips: &[u8]) -> SliceSpec {
        SliceSpec {
            name: name(n),
            service: svc.into(),
            address_type: AddressType::Ipv4,
            ports: vec![SlicePort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            endpoints: ips
                .iter()
                .map(|&i| EndpointSpec {
                    addresses: vec![Ipv4Addr::new(10, 244, 1, i)],
                    ready: true,
                    serving: None,
                    terminating: None,
                    node_name: None,
                    zone: None,
                    zone_hints: vec![],
                    node_hints: vec![],
                })
                .collect(),
            mirrored: false,
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "node1".into(),
            ..NodeInfo::default()
        }
    }

    #[test]
    fn a_change_recomputes_only_its_service_and_matches_a_full_recompute() {
        let mut cluster = Cluster::default();
        for i in 0..50u8 {
            let svc = service(&format!("s{i}"), i + 1);
            cluster.services.insert(svc.name.clone(), svc);
            let sl = slice(&format!("s{i}-1"), &format!("s{i}"), &[i + 1]);
            cluster.slices.insert(sl.name.clone(), sl);
        }
        let mut r = Reconciler::new(node(), 1 << 20);
        let t0 = Instant::now();
        let first = r.reconcile(&cluster, &Changes::all(), t0);
        assert_eq!(first.recomputed, 50);

        // One slice changes: one service recomputed, its frontend only.
        let edited = slice("s7-1", "s7", &[8, 99]);
        cluster.slices.insert(edited.name.clone(), edited);
        let one_slice = Changes {
            slices: [name("s7-1")].into_iter().collect(),
            ..Changes::default()
        };
        let step = r.reconcile(&cluster, &one_slice, t0);
        assert_eq!(step.recomputed, 1);
        assert!(!step.plan.ops.is_empty());

        // A slice moves to another service, a service goes, one comes.
        cluster
            .slices
            .insert(name("s8-1"), slice("s8-1", "s9", &[120]));
        cluster.services.remove(&name("s3"));
        let new = service("new", 200);
        cluster.services.insert(new.name.clone(), new);
        let several = Changes {
            services: [name("s3"), name("new")].into_iter().collect(),
            slices: [name("s8-1")].into_iter().collect(),
            ..Changes::default()
        };
        let step = r.reconcile(&cluster, &several, t0);
        assert_eq!(step.recomputed, 4, "s3 gone, new, s8 and s9");

        // The incremental state equals a full recompute of the same model.
        let (full, _) = select::desired_state(&cluster, &node());
        assert_eq!(r.desired(), &full);
        let mut fresh = Reconciler::new(node(), 1 << 20);
        fresh.reconcile(&cluster, &Changes::all(), t0);
        assert_eq!(fresh.desired(), r.desired());
        // And nothing is left to apply.
        let again = r.reconcile(&cluster, &Changes::all(), t0);
        assert!(again.plan.ops.is_empty(), "{:?}", again.plan.ops);
    }

    #[test]
    fn chunks_hold_bounded_tables_and_add_up_to_the_whole_plan() {
        let mut cluster = Cluster::default();
        for i in 0..40u8 {
            let svc = service(&format!("s{i}"), i + 1);
            cluster.services.insert(svc.name.clone(), svc);
            let sl = slice(&format!("s{i}-1"), &format!("s{i}"), &[i + 1, i + 101]);
            cluster.slices.insert(sl.name.clone(), sl);
        }
        let t0 = Instant::now();
        let mut whole = Reconciler::new(node(), 1 << 20);
        let expected = whole.reconcile(&cluster, &Changes::all(), t0);
        let mut chunked = Reconciler::new(node(), 1 << 20);
        let mut chunks: Vec<Plan> = Vec::new();
        // Two backends get 251-slot tables: a chunk closes at its fourth table.
        let (done, applied) =
            chunked.reconcile_chunked(&cluster, &Changes::all(), t0, 1_000, |chunk| {
                chunks.push(chunk);
                Ok::<(), ()>(())
            });
        applied.unwrap();
        assert_eq!(chunks.len(), 10, "40 tables, 4 per chunk");
        for chunk in &chunks {
            assert!(
                table_slots(&chunk.ops) <= 1_000 + 251,
                "{}",
                table_slots(&chunk.ops)
            );
        }
        let all: Vec<MapOp> = chunks.into_iter().flat_map(|c| c.ops).collect();
        let sorted = |ops: &[MapOp]| {
            let mut ops: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
            ops.sort();
            ops
        };
        assert_eq!(
            sorted(&all),
            sorted(&expected.plan.ops),
            "the same operations (each chunk in its own order)"
        );
        assert_eq!(done.ops, all.len());
        assert_eq!(done.recomputed, expected.recomputed);
        assert_eq!(chunked.desired(), whole.desired());

        // A frontend's table is written before the entry that publishes it.
        for (k, op) in all.iter().enumerate() {
            if let MapOp::SetService(_, entry) = op {
                assert!(all[..k].iter().any(
                    |o| matches!(o, MapOp::SetTable { offset, .. } if *offset == entry.table_offset)
                ));
            }
        }

        // A failing chunk stops the sync there.
        cluster.services.clear();
        let mut calls = 0;
        let (_, failed) = chunked.reconcile_chunked(&cluster, &Changes::all(), t0, 0, |_| {
            calls += 1;
            Err("map full")
        });
        assert_eq!(failed, Err("map full"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn after_a_failed_apply_the_next_sync_plans_what_the_maps_lack() {
        let mut cluster = Cluster::default();
        for i in 0..3u8 {
            let svc = service(&format!("s{i}"), i + 1);
            cluster.services.insert(svc.name.clone(), svc);
            let sl = slice(&format!("s{i}-1"), &format!("s{i}"), &[i + 1]);
            cluster.slices.insert(sl.name.clone(), sl);
        }
        let t0 = Instant::now();
        let sorted = |ops: &[MapOp]| {
            let mut ops: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
            ops.sort();
            ops
        };
        let expected = Reconciler::new(node(), 1 << 20).reconcile(&cluster, &Changes::all(), t0);
        let mut r = Reconciler::new(node(), 1 << 20);
        // The first chunk fails: the maps hold nothing, the planner thinks otherwise.
        let (_, failed) = r.reconcile_chunked(&cluster, &Changes::all(), t0, 0, |_| Err(()));
        assert_eq!(failed, Err(()));
        let mut stale = Reconciler::new(node(), 1 << 20);
        let _ = stale.reconcile_chunked(&cluster, &Changes::all(), t0, 0, |_| Err(()));
        assert!(
            stale
                .reconcile(&cluster, &Changes::default(), t0)
                .plan
                .ops
                .is_empty(),
            "without recovery nothing changed, so nothing is planned"
        );
        r.recover(Planner::new(1 << 20, REUSE_GRACE));
        let next = r.reconcile(&cluster, &Changes::default(), t0);
        assert_eq!(sorted(&next.plan.ops), sorted(&expected.plan.ops));
    }
}
