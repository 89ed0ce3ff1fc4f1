//! Where the cluster state comes from: manifests on disk or the API server.
//! A source signals "something changed" on a channel and, when asked, gives a
//! snapshot of the validated model.

pub mod kube;
pub mod manifests;

use crate::model::Cluster;

/// A source of Services and EndpointSlices.
pub trait Source {
    /// The current model (errors in individual objects are logged by the source).
    fn snapshot(&mut self) -> Cluster;
}
