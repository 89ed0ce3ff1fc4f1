//! One family's part of the reconciler: its desired state, every Service's
//! claims on its frontends, and what the last plan could not place
//! ([`FamilyState`]); and what differs between the families
//! ([`ReconcileFamily`]): how a Service's frontends are selected and
//! which of the planner's sides plans them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddrV4, SocketAddrV6},
    time::Instant,
};

use crate::{
    claims::Claims,
    desired::{DesiredFrontend, NodeInfo, ObjectName},
    model::Cluster,
    plan::{FamilyOps, Plan, PlanError, Planner},
    select::{self, SliceIndex},
};

/// A family's desired state: frontend -> what it should balance to.
pub type Desired<S> = BTreeMap<<S as crate::desired::AddrFamily>::Frontend, DesiredFrontend<S>>;

/// What the reconciler does differently per family.
pub trait ReconcileFamily: FamilyOps {
    /// Service `name`'s frontends of this family, as the selection rules say.
    fn service_state(
        cluster: &Cluster,
        index: &SliceIndex,
        name: &ObjectName,
        node: &NodeInfo,
    ) -> Vec<(Self::Frontend, DesiredFrontend<Self>)>;
    /// The Maglev slots planning `frontend` as `want` writes.
    fn slots_to_write(
        planner: &Planner,
        frontend: &Self::Frontend,
        want: &DesiredFrontend<Self>,
    ) -> u32;
    /// Plans `frontends` of this family.
    fn plan_frontends(
        planner: &mut Planner,
        desired: &Desired<Self>,
        frontends: Vec<Self::Frontend>,
        now: Instant,
    ) -> (Plan, Vec<PlanError<Self>>);
    /// The frontends of this family the planner holds.
    fn applied_keys(planner: &Planner) -> Vec<Self::Frontend>;
}

impl ReconcileFamily for SocketAddrV4 {
    fn service_state(
        cluster: &Cluster,
        index: &SliceIndex,
        name: &ObjectName,
        node: &NodeInfo,
    ) -> Vec<(Self::Frontend, DesiredFrontend<Self>)> {
        select::service_state(cluster, index, name, node)
    }

    fn slots_to_write(planner: &Planner, frontend: &Self::Frontend, want: &DesiredFrontend) -> u32 {
        planner.slots_to_write(frontend, want)
    }

    fn plan_frontends(
        planner: &mut Planner,
        desired: &Desired<Self>,
        frontends: Vec<Self::Frontend>,
        now: Instant,
    ) -> (Plan, Vec<PlanError>) {
        planner.plan_frontends(desired, frontends, now)
    }

    fn applied_keys(planner: &Planner) -> Vec<Self::Frontend> {
        planner.frontend_keys().collect()
    }
}

impl ReconcileFamily for SocketAddrV6 {
    fn service_state(
        cluster: &Cluster,
        index: &SliceIndex,
        name: &ObjectName,
        node: &NodeInfo,
    ) -> Vec<(Self::Frontend, DesiredFrontend<Self>)> {
        select::family::service_state_v6(cluster, index, name, node)
    }

    fn slots_to_write(
        planner: &Planner,
        frontend: &Self::Frontend,
        want: &DesiredFrontend<Self>,
    ) -> u32 {
        planner.slots_to_write6(frontend, want)
    }

    fn plan_frontends(
        planner: &mut Planner,
        desired: &Desired<Self>,
        frontends: Vec<Self::Frontend>,
        now: Instant,
    ) -> (Plan, Vec<PlanError<Self>>) {
        planner.plan_frontends6(desired, frontends, now)
    }

    fn applied_keys(planner: &Planner) -> Vec<Self::Frontend> {
        planner.frontend_keys6().collect()
    }
}

/// One family's desired state and claims.
#[derive(Debug)]
pub(super) struct FamilyState<S: ReconcileFamily> {
    /// The desired state as last computed.
    pub desired: Desired<S>,
    /// Every Service's claim on each frontend; `desired` holds the owners'.
    pub claims: Claims<S>,
    /// The frontends each Service claims.
    pub by_service: BTreeMap<ObjectName, Vec<S::Frontend>>,
    /// Frontends the last plan could not place: planned again next time.
    pub failed: BTreeSet<S::Frontend>,
}

impl<S: ReconcileFamily> Default for FamilyState<S> {
    fn default() -> Self {
        Self {
            desired: BTreeMap::new(),
            claims: Claims::default(),
            by_service: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }
}

impl<S: ReconcileFamily> FamilyState<S> {
    /// Records Service `name`'s claims (its frontends into `touched`).
    pub fn add_service(
        &mut self,
        cluster: &Cluster,
        index: &SliceIndex,
        name: &ObjectName,
        node: &NodeInfo,
        touched: &mut BTreeSet<S::Frontend>,
    ) {
        let frontends = S::service_state(cluster, index, name, node);
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

    /// Recomputes the `affected` Services' claims; returns the frontends
    /// to plan (theirs, and those the last plan could not place), each
    /// owned as the claims now say. `changed` sees each frontend's old and
    /// new desired state.
    pub fn update(
        &mut self,
        cluster: &Cluster,
        index: &SliceIndex,
        affected: &BTreeSet<ObjectName>,
        node: &NodeInfo,
        mut changed: impl FnMut(S::Frontend, Option<&DesiredFrontend<S>>, Option<&DesiredFrontend<S>>),
    ) -> BTreeSet<S::Frontend> {
        let mut touched = BTreeSet::new();
        for name in affected {
            for frontend in self.by_service.remove(name).unwrap_or_default() {
                self.claims.remove(&frontend, name);
                touched.insert(frontend);
            }
            self.add_service(cluster, index, name, node, &mut touched);
        }
        // What could not be placed last time is tried again.
        touched.extend(self.failed.iter().copied());
        // A frontend another Service also claims goes to whoever owns it now.
        for frontend in &touched {
            let old = match self.claims.owner(frontend) {
                Some(want) => self.desired.insert(*frontend, want.clone()),
                None => self.desired.remove(frontend),
            };
            changed(*frontend, old.as_ref(), self.desired.get(frontend));
        }
        touched
    }

    /// Recomputes every Service's claims; returns the desired state it
    /// replaces.
    pub fn full(&mut self, cluster: &Cluster, index: &SliceIndex, node: &NodeInfo) -> Desired<S> {
        self.claims.clear();
        self.by_service.clear();
        let mut touched = BTreeSet::new();
        for name in cluster.services.keys() {
            self.add_service(cluster, index, name, node, &mut touched);
        }
        std::mem::replace(&mut self.desired, self.claims.desired())
    }

    /// Every frontend to plan after a full recompute, as `Planner::plan`
    /// orders them: those that go, then every desired one.
    pub fn all_to_plan(&self, planner: &Planner) -> Vec<S::Frontend> {
        let gone = S::applied_keys(planner)
            .into_iter()
            .filter(|f| !self.desired.contains_key(f));
        gone.chain(self.desired.keys().copied()).collect()
    }

    /// Plans `frontends` in groups of about `chunk_slots` new table slots,
    /// handing each group's operations to `apply`; adds to `total` the
    /// operations planned. Stops at the first failed `apply`.
    pub fn plan_chunked<E>(
        &self,
        planner: &mut Planner,
        frontends: Vec<S::Frontend>,
        now: Instant,
        chunk_slots: usize,
        total: &mut usize,
        apply: &mut impl FnMut(Plan) -> Result<(), E>,
    ) -> (Vec<PlanError<S>>, Result<(), E>) {
        let mut errors = Vec::new();
        let mut group = Vec::new();
        let mut slots = 0usize;
        let count = frontends.len();
        for (k, frontend) in frontends.into_iter().enumerate() {
            slots += self.desired.get(&frontend).map_or(0, |want| {
                S::slots_to_write(planner, &frontend, want) as usize
            });
            group.push(frontend);
            if slots < chunk_slots && k + 1 < count {
                continue;
            }
            // A group is planned at once, so its tables are built on every core.
            let (plan, mut failed) =
                S::plan_frontends(planner, &self.desired, std::mem::take(&mut group), now);
            errors.append(&mut failed);
            slots = 0;
            if !plan.ops.is_empty() {
                *total += plan.ops.len();
                if let Err(e) = apply(plan) {
                    return (errors, Err(e));
                }
            }
        }
        (errors, Ok(()))
    }
}
