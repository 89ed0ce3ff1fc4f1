//! Frontends that more than one Service claims, and which Service owns each.
//!
//! Two Services can ask for the same frontend (address, port, protocol): an
//! `externalIPs` entry equal to another Service's cluster IP, two Services
//! listing one external IP, a node port given twice in manifests. Every
//! claim is kept; the owner is, in order:
//! 1. a claim on the Service's own cluster IP, before one through an
//!    external IP, a load-balancer IP or a node port (a user who may create
//!    Services cannot take over cluster DNS with an `externalIPs` entry);
//! 2. the older Service by `creationTimestamp` (a Service without one, as
//!    from manifests, after any that has one);
//! 3. the Service's namespace/name.
//!
//! The owner keeps the frontend while any claimant remains: when it goes,
//! the next claim takes over, with no full resync. Every other claimant is
//! told ([`Claims::problems`]).
//!
//! Each family keeps its own claims (`Claims<SocketAddrV6>` beside the
//! default IPv4 `Claims`): an IPv4 and an IPv6 frontend never meet, and
//! "the Service's own cluster IP" is its cluster IP of that family.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use crate::{
    desired::{AddrFamily, DesiredFrontend},
    ident::ObjectName,
    model::ServiceSpec,
    problem::{ProblemReason, ServiceProblem},
};

/// Where a claim stands among the claims of one frontend (lower wins).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Not the Service's cluster IP (an external IP, load-balancer IP or node port).
    external: bool,
    /// Without a creation time.
    ageless: bool,
    /// Creation time, Unix seconds (0 when ageless).
    created: i64,
    /// The claiming Service.
    service: ObjectName,
}

impl Rank {
    fn of<S: AddrFamily>(service: &ServiceSpec, frontend: &S::Frontend) -> Self {
        Self {
            external: !S::is_cluster_ip(service, frontend),
            ageless: service.created.is_none(),
            created: service.created.unwrap_or(0),
            service: service.name.clone(),
        }
    }
}

/// Every claim on every frontend of family `S` (IPv4 by default), best first.
#[derive(Clone, Debug)]
pub struct Claims<S: AddrFamily = SocketAddrV4> {
    by_frontend: BTreeMap<S::Frontend, Vec<(Rank, DesiredFrontend<S>)>>,
    contested: BTreeSet<S::Frontend>,
}

impl<S: AddrFamily> Default for Claims<S> {
    fn default() -> Self {
        Self {
            by_frontend: BTreeMap::new(),
            contested: BTreeSet::new(),
        }
    }
}

impl<S: AddrFamily> Claims<S> {
    /// Records `service`'s claim on `frontend` (replacing an earlier one of it).
    pub fn insert(
        &mut self,
        service: &ServiceSpec,
        frontend: S::Frontend,
        want: DesiredFrontend<S>,
    ) {
        self.remove(&frontend, &service.name);
        let rank = Rank::of::<S>(service, &frontend);
        let claims = self.by_frontend.entry(frontend).or_default();
        let at = claims.partition_point(|(r, _)| *r < rank);
        // One claim is the rule: no room for more kept per frontend.
        claims.reserve_exact(1);
        claims.insert(at, (rank, want));
        if claims.len() > 1 {
            self.contested.insert(frontend);
        }
    }

    /// Drops `service`'s claim on `frontend`, if any.
    pub fn remove(&mut self, frontend: &S::Frontend, service: &ObjectName) {
        let Some(claims) = self.by_frontend.get_mut(frontend) else {
            return;
        };
        claims.retain(|(rank, _)| rank.service != *service);
        match claims.len() {
            0 => {
                self.by_frontend.remove(frontend);
                self.contested.remove(frontend);
            }
            1 => {
                self.contested.remove(frontend);
            }
            _ => {}
        }
    }

    /// What the owner of `frontend` asks for, if anyone claims it.
    #[must_use]
    pub fn owner(&self, frontend: &S::Frontend) -> Option<&DesiredFrontend<S>> {
        self.by_frontend
            .get(frontend)
            .and_then(|claims| claims.first())
            .map(|(_, want)| want)
    }

    /// The owner's claim of every frontend: the desired state.
    #[must_use]
    pub fn desired(&self) -> BTreeMap<S::Frontend, DesiredFrontend<S>> {
        self.by_frontend
            .iter()
            .filter_map(|(frontend, claims)| Some((*frontend, claims.first()?.1.clone())))
            .collect()
    }

    /// Forgets every claim.
    pub fn clear(&mut self) {
        self.by_frontend.clear();
        self.contested.clear();
    }

    /// Frontends more than one Service claims.
    pub fn contested(&self) -> impl Iterator<Item = &S::Frontend> {
        self.contested.iter()
    }

    /// One problem per Service that claims a frontend another Service owns.
    #[must_use]
    pub fn problems(&self) -> Vec<ServiceProblem> {
        let mut out = Vec::new();
        for frontend in &self.contested {
            let claims = &self.by_frontend[frontend];
            let owner = &claims[0].0;
            for (rank, _) in &claims[1..] {
                let why = if owner.external != rank.external {
                    "it is that Service's cluster IP"
                } else if owner.ageless != rank.ageless || owner.created != rank.created {
                    "that Service is older"
                } else {
                    "that Service's name sorts first"
                };
                out.push(ServiceProblem {
                    service: rank.service.clone(),
                    reason: ProblemReason::FrontendConflict,
                    message: format!(
                        "frontend {frontend} is also claimed by Service {}, which keeps it \
                         ({why}); it is not programmed for this Service",
                        owner.service
                    ),
                });
            }
        }
        out
    }
}
