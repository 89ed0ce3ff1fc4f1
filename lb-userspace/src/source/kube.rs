//! The Kubernetes source: Services and EndpointSlices (and this node's Node
//! object, for its zone and addresses) watched with kube-rs' watcher and
//! reflector. A relist (after `410 Gone`, or a restart) replaces
//! the stores whole, so objects that vanished meanwhile are dropped; while the
//! API server is unreachable the watcher retries with backoff and the stores,
//! and so the maps, keep the last known state.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::{Changes, Source, SourceStats};
use crate::{
    desired::ObjectName,
    model::{object_name, Cluster, NodeFacts, ServiceSpec, SliceSpec},
};

/// The (API group, resource) pairs the source watches: RBAC must allow them.
pub const WATCHED_RESOURCES: [(&str, &str); 3] = [
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "nodes"),
];
/// The verbs the source uses on each watched resource.
pub const WATCH_VERBS: [&str; 2] = ["list", "watch"];

/// Watches of Services and EndpointSlices in all namespaces.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    node_name: String,
    /// Changes seen by the watches since the last snapshot.
    pending: Arc<Mutex<Changes>>,
    /// The model, kept up to date change by change.
    cluster: Cluster,
    stats: Arc<SourceStats>,
    last_good_services: BTreeMap<ObjectName, Validated<ServiceSpec>>,
    last_good_slices: BTreeMap<ObjectName, Validated<SliceSpec>>,
}

/// A validated spec and the resourceVersion it was validated at, so an
/// unchanged object is not validated again on the next snapshot.
#[derive(Clone)]
struct Validated<T> {
    resource_version: Option<String>,
    spec: T,
}

impl KubeSource {
    /// Starts the watches (Nodes: only `node_name`'s); every change (and
    /// every relist) sends on `changed`.
    #[must_use]
    pub fn start(client: &Client, changed: &UnboundedSender<()>, node_name: &str) -> Self {
        let pending = Arc::new(Mutex::new(Changes::all()));
        let stats: Arc<SourceStats> = Arc::default();
        let record = |what: Watched| {
            let pending = pending.clone();
            let changed = changed.clone();
            move |name: Option<ObjectName>| {
                {
                    let mut p = pending.lock().expect("pending changes");
                    p.since.get_or_insert_with(std::time::Instant::now);
                    match (what, name) {
                        (Watched::Services, Some(name)) => {
                            p.services.insert(name);
                        }
                        (Watched::Slices, Some(name)) => {
                            p.slices.insert(name);
                        }
                        // A relist, or a change of our Node: recompute everything.
                        _ => p.all = true,
                    }
                }
                let _ = changed.send(());
            }
        };
        let all = watcher::Config::default();
        let services = watch(
            Api::<Service>::all(client.clone()),
            all.clone(),
            record(Watched::Services),
            stats.clone(),
        );
        let slices = watch(
            Api::<EndpointSlice>::all(client.clone()),
            all,
            record(Watched::Slices),
            stats.clone(),
        );
        let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let nodes = watch(
            Api::<Node>::all(client.clone()),
            own_node,
            record(Watched::Nodes),
            stats.clone(),
        );
        Self {
            services,
            slices,
            nodes,
            node_name: node_name.to_string(),
            pending,
            cluster: Cluster::default(),
            stats,
            last_good_services: BTreeMap::new(),
            last_good_slices: BTreeMap::new(),
        }
    }

    /// Waits for the initial list of every watched kind.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        Ok(())
    }
}

impl Source for KubeSource {
    fn snapshot(&mut self) -> (&Cluster, Changes) {
        let changes = std::mem::take(&mut *self.pending.lock().expect("pending changes"));
        if changes.all {
            self.rebuild();
        } else {
            for name in &changes.services {
                let object = self
                    .services
                    .get(&ObjectRef::new(&name.name).within(&name.namespace));
                let spec = object.and_then(|o| {
                    validated(
                        "Service",
                        o.as_ref(),
                        ServiceSpec::from_k8s,
                        &mut self.last_good_services,
                        &self.stats.rejected,
                    )
                });
                update(
                    &mut self.cluster.services,
                    &mut self.last_good_services,
                    name,
                    spec,
                );
            }
            for name in &changes.slices {
                let object = self
                    .slices
                    .get(&ObjectRef::new(&name.name).within(&name.namespace));
                let spec = object.and_then(|o| {
                    validated(
                        "EndpointSlice",
                        o.as_ref(),
                        SliceSpec::from_k8s,
                        &mut self.last_good_slices,
                        &self.stats.rejected,
                    )
                });
                update(
                    &mut self.cluster.slices,
                    &mut self.last_good_slices,
                    name,
                    spec,
                );
            }
        }
        (&self.cluster, changes)
    }

    fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }
}

impl KubeSource {
    /// Rebuilds the whole model from the stores (first sync, relist).
    fn rebuild(&mut self) {
        let mut cluster = Cluster {
            node: self
                .nodes
                .state()
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()))
                .map(|n| NodeFacts::from_k8s(n)),
            ..Cluster::default()
        };
        for service in self.services.state() {
            if let Some(spec) = validated(
                "Service",
                service.as_ref(),
                ServiceSpec::from_k8s,
                &mut self.last_good_services,
                &self.stats.rejected,
            ) {
                cluster.services.insert(spec.name.clone(), spec);
            }
        }
        for slice in self.slices.state() {
            if let Some(spec) = validated(
                "EndpointSlice",
                slice.as_ref(),
                SliceSpec::from_k8s,
                &mut self.last_good_slices,
                &self.stats.rejected,
            ) {
                cluster.slices.insert(spec.name.clone(), spec);
            }
        }
        // Forget the last good versions of objects that are gone.
        self.last_good_services
            .retain(|name, _| cluster.services.contains_key(name));
        self.last_good_slices
            .retain(|name, _| cluster.slices.contains_key(name));
        self.cluster = cluster;
    }
}

/// Which watch a change came from.
#[derive(Clone, Copy)]
enum Watched {
    Services,
    Slices,
    Nodes,
}

/// Puts an object's current spec into the model, or removes it (and its last
/// good version) when the object is gone.
fn update<T>(
    model: &mut BTreeMap<ObjectName, T>,
    last_good: &mut BTreeMap<ObjectName, Validated<T>>,
    name: &ObjectName,
    spec: Option<T>,
) {
    if let Some(spec) = spec {
        model.insert(name.clone(), spec);
    } else {
        model.remove(name);
        last_good.remove(name);
    }
}

/// The valid spec of an object, validated only when its resourceVersion
/// changed; on a validation error (logged with the object's name) its last
/// valid version, if any.
fn validated<K, T: Clone>(
    kind: &str,
    object: &K,
    validate: impl FnOnce(&K) -> Result<T, String>,
    last_good: &mut BTreeMap<ObjectName, Validated<T>>,
    rejected: &AtomicU64,
) -> Option<T>
where
    K: Resource,
{
    let meta = object.meta();
    let name = object_name(meta).ok()?;
    if let Some(known) = last_good.get(&name) {
        if known.resource_version.is_some() && known.resource_version == meta.resource_version {
            return Some(known.spec.clone());
        }
    }
    match validate(object) {
        Ok(spec) => {
            let entry = Validated {
                resource_version: meta.resource_version.clone(),
                spec: spec.clone(),
            };
            last_good.insert(name, entry);
            Some(spec)
        }
        Err(message) => {
            let kept = last_good.get(&name).map(|k| k.spec.clone());
            let what = if kept.is_some() {
                "keeping its previous version"
            } else {
                "skipped"
            };
            warn!("{kind} {name}: {message}; {what}");
            rejected.fetch_add(1, Ordering::Relaxed);
            kept
        }
    }
}

/// A reflector store fed by a watch that retries with backoff.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    record: impl Fn(Option<ObjectName>) + Send + 'static,
    stats: Arc<SourceStats>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = reflector::reflector(writer, watcher::watcher(api, config)).default_backoff();
    tokio::spawn(forward(kind, stream, record, stats));
    store
}

async fn forward<K, S>(
    kind: String,
    stream: S,
    record: impl Fn(Option<ObjectName>),
    stats: Arc<SourceStats>,
) where
    K: Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => {
                stats.lists.fetch_add(1, Ordering::Relaxed);
                info!(kind, "listing");
            }
            Ok(Event::InitApply(_)) => {}
            Ok(Event::InitDone) => {
                info!(kind, "list complete");
                record(None);
            }
            Ok(Event::Apply(object) | Event::Delete(object)) => {
                record(object_name(object.meta()).ok());
            }
            Err(e) => {
                stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                warn!(kind, "watch failed, retrying with backoff: {e}");
            }
        }
    }
}
