//! Where the cluster state comes from: manifests on disk or the API server.
//! A source signals "something changed" on a channel and, when asked, gives
//! its model and what changed since it was last asked.

pub mod api_server;
pub mod events;
pub mod kube;
pub mod manifests;

use std::{
    collections::BTreeSet,
    sync::{atomic::AtomicU64, Arc},
};

use crate::{desired::ObjectName, model::Cluster};

/// What changed since the previous snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Anything may have changed (first snapshot, relist, manifests reread).
    pub all: bool,
    /// Services added, changed or removed.
    pub services: BTreeSet<ObjectName>,
    /// EndpointSlices added, changed or removed.
    pub slices: BTreeSet<ObjectName>,
    /// When the oldest of these changes reached the agent (for the
    /// change-to-map latency), if the source knows.
    pub since: Option<std::time::Instant>,
}

impl Changes {
    /// A change of everything.
    #[must_use]
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }
}

/// Counters a source keeps, for the metrics.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Lists started: the first and every relist (after `410 Gone` or a restart).
    pub lists: AtomicU64,
    /// Watch failures, each retried with backoff.
    pub watch_errors: AtomicU64,
    /// Objects (or files) rejected by validation.
    pub rejected: AtomicU64,
}

/// A source of Services and EndpointSlices.
pub trait Source {
    /// The current model and what changed in it since the last call (errors
    /// in individual objects are logged by the source).
    fn snapshot(&mut self) -> (&Cluster, Changes);

    /// The source's counters.
    fn stats(&self) -> Arc<SourceStats>;
}
