//! The end-to-end test bed: the namespace cluster, its pods' servers, a
//! manifest directory and a ready agent on node1, and the check that
//! requests spread over the expected pods.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    agent::{Agent, ManifestDir},
    topology::ClusterTopology,
    traffic::PodServers,
};

/// Topology, servers, manifests and a ready agent. Field order is drop order.
pub struct Cluster {
    /// The agent on node1.
    pub agent: Agent,
    /// Its manifest directory.
    pub manifests: ManifestDir,
    /// The pods' servers.
    pub servers: PodServers,
    /// The namespaces.
    pub topo: ClusterTopology,
}

/// A cluster whose agent reads `manifests`.
#[must_use]
pub fn cluster(manifests: ManifestDir) -> Cluster {
    cluster_with(manifests, &[])
}

/// Like [`cluster`], with more `lb-agent run` arguments.
///
/// # Panics
/// When the topology, the servers or the agent cannot start.
#[must_use]
pub fn cluster_with(manifests: ManifestDir, extra: &[&str]) -> Cluster {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let servers = PodServers::start(&topo).expect("starting pod servers");
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut args = vec!["--manifests", &dir];
    args.extend_from_slice(extra);
    let mut agent = Agent::start_with(&topo.node1, &args).expect("starting lb-agent");
    agent
        .wait_ready(Duration::from_secs(30))
        .expect("lb-agent ready");
    Cluster {
        agent,
        manifests,
        servers,
        topo,
    }
}

/// Asserts that `pods` answered all `total` requests in `counts`, each at
/// least `min_share` of them.
///
/// # Panics
/// When they did not.
pub fn assert_spread(
    counts: &BTreeMap<String, usize>,
    pods: &[&str],
    total: usize,
    min_share: f64,
) {
    for pod in pods {
        let n = counts.get(*pod).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let share = n as f64 / total as f64;
        assert!(share >= min_share, "{pod} got {n} of {total}: {counts:?}");
    }
    let answered: usize = pods
        .iter()
        .map(|p| counts.get(*p).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        answered, total,
        "every request answered by the expected pods: {counts:?}"
    );
}
