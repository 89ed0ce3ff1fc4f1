//! The Kubernetes source: Services and EndpointSlices (and this node's Node
//! object, for its zone and addresses) watched with kube-rs' watcher. Each
//! object is validated as it arrives and only its model form is kept (not
//! the Kubernetes object), so memory scales with what balancing needs. A
//! relist (after `410 Gone`, or a restart) replaces a kind whole, so objects
//! that vanished meanwhile are dropped; while the API server is unreachable
//! the watcher retries with backoff and the model, and so the maps, keep the
//! last known state.
//!
//! As kube-proxy does, Services and EndpointSlices are watched with the
//! label selector [`SERVICE_SELECTOR`]: objects of another proxy, and the
//! slices of headless Services, are never seen. An object that gains one of
//! those labels leaves the watch's selection, and the API server sends it as
//! DELETED (ADDED when it loses the label), so the model drops it (takes it
//! back) like any deletion (creation).

use std::{
    collections::{BTreeMap, BTreeSet},
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
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc::UnboundedSender, watch as signal};
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

/// Label of a Service (copied onto its EndpointSlices by their controller)
/// that another proxy serves: not ours, as kube-proxy skips it.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on the slices of a headless
/// Service (no virtual IP to balance): skipped, as kube-proxy does.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label selector of the Service and EndpointSlice watches: neither label
/// (kube-proxy's selector).
pub const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Watches of Services and EndpointSlices in all namespaces.
pub struct KubeSource {
    /// What the watches delivered since the last snapshot.
    pending: Arc<Mutex<Pending>>,
    /// Each watch's "initial list done", by kind.
    listed: Vec<(&'static str, signal::Receiver<bool>)>,
    /// The model, kept up to date change by change.
    cluster: Cluster,
    stats: Arc<SourceStats>,
}

/// What became of one object, as the watch saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update<T> {
    /// Added or changed, and valid.
    Valid(T),
    /// Added or changed, but invalid: why.
    Invalid(String),
    /// Deleted.
    Gone,
}

/// The updates of one kind since the last snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updates<T> {
    /// A relist's complete set of objects, replacing all of this kind.
    pub relisted: Option<BTreeMap<ObjectName, Update<T>>>,
    /// Objects added, changed or removed since (applied after `relisted`).
    pub changed: BTreeMap<ObjectName, Update<T>>,
}

impl<T> Default for Updates<T> {
    fn default() -> Self {
        Self {
            relisted: None,
            changed: BTreeMap::new(),
        }
    }
}

/// What the watches delivered since the last snapshot.
#[derive(Default)]
struct Pending {
    changes: Changes,
    services: Updates<ServiceSpec>,
    slices: Updates<SliceSpec>,
    /// This node's facts, when its Node object was listed or changed (or
    /// `Gone`, when deleted or not listed).
    node: Option<Update<NodeFacts>>,
}

/// One delivery of a watch.
enum Delivery<T> {
    /// An initial list or relist finished: every object of the kind.
    Relisted(BTreeMap<ObjectName, Update<T>>),
    /// One object changed.
    Changed(ObjectName, Update<T>),
}

impl KubeSource {
    /// Starts the watches (Nodes: only `node_name`'s); every change (and
    /// every relist) sends on `changed`.
    #[must_use]
    pub fn start(client: &Client, changed: &UnboundedSender<()>, node_name: &str) -> Self {
        let pending = Arc::new(Mutex::new(Pending {
            changes: Changes::all(),
            ..Pending::default()
        }));
        let stats: Arc<SourceStats> = Arc::default();
        let ours = watcher::Config::default().labels(SERVICE_SELECTOR);
        let services = watch(
            Api::<Service>::all(client.clone()),
            ours.clone(),
            ServiceSpec::from_k8s,
            deliverer(&pending, changed, |p, d| {
                record(&mut p.changes, |c| &mut c.services, &mut p.services, d);
            }),
            stats.clone(),
        );
        let slices = watch(
            Api::<EndpointSlice>::all(client.clone()),
            ours,
            SliceSpec::from_k8s,
            deliverer(&pending, changed, |p, d| {
                record(&mut p.changes, |c| &mut c.slices, &mut p.slices, d);
            }),
            stats.clone(),
        );
        let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let nodes = watch(
            Api::<Node>::all(client.clone()),
            own_node,
            |node| Ok(NodeFacts::from_k8s(node)),
            deliverer(&pending, changed, |p, d| {
                // A change of our Node: recompute everything.
                p.changes.all = true;
                p.node = Some(match d {
                    Delivery::Relisted(nodes) => nodes
                        .into_values()
                        .find(|u| matches!(u, Update::Valid(_)))
                        .unwrap_or(Update::Gone),
                    Delivery::Changed(_, update) => update,
                });
            }),
            stats.clone(),
        );
        Self {
            pending,
            listed: vec![
                ("Service", services),
                ("EndpointSlice", slices),
                ("Node", nodes),
            ],
            cluster: Cluster::default(),
            stats,
        }
    }

    /// Waits for the initial list of every watched kind.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        for (kind, listed) in &self.listed {
            let mut listed = listed.clone();
            listed
                .wait_for(|done| *done)
                .await
                .map_err(|_| anyhow::anyhow!("the {kind} watch ended before its first list"))?;
        }
        Ok(())
    }
}

impl Source for KubeSource {
    fn snapshot(&mut self) -> (&Cluster, Changes) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("pending changes"));
        let rejected = &self.stats.rejected;
        fold(
            "Service",
            &mut self.cluster.services,
            pending.services,
            rejected,
        );
        fold(
            "EndpointSlice",
            &mut self.cluster.slices,
            pending.slices,
            rejected,
        );
        match pending.node {
            Some(Update::Valid(facts)) => self.cluster.node = Some(facts),
            Some(_) => self.cluster.node = None,
            None => {}
        }
        (&self.cluster, pending.changes)
    }

    fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }
}

/// A watch's delivery callback: records into `pending` with `fold`, then
/// sends on `changed`.
fn deliverer<T: 'static>(
    pending: &Arc<Mutex<Pending>>,
    changed: &UnboundedSender<()>,
    fold: fn(&mut Pending, Delivery<T>),
) -> impl Fn(Delivery<T>) + Send + 'static {
    let pending = pending.clone();
    let changed = changed.clone();
    move |delivery| {
        {
            let mut p = pending.lock().expect("pending changes");
            p.changes.since.get_or_insert_with(std::time::Instant::now);
            fold(&mut p, delivery);
        }
        let _ = changed.send(());
    }
}

/// Records a delivery of Services or EndpointSlices: a relist replaces what
/// was pending for the kind and changes everything; a change names its object.
fn record<T>(
    changes: &mut Changes,
    names: fn(&mut Changes) -> &mut BTreeSet<ObjectName>,
    updates: &mut Updates<T>,
    delivery: Delivery<T>,
) {
    match delivery {
        Delivery::Relisted(all) => {
            updates.relisted = Some(all);
            updates.changed.clear();
            changes.all = true;
        }
        Delivery::Changed(name, update) => {
            names(changes).insert(name.clone());
            updates.changed.insert(name, update);
        }
    }
}

/// Applies one kind's updates to the model: a relist first (objects it lacks
/// are dropped), then the changes since. An invalid object keeps its
/// previous valid version, if any (logged with its name, and counted).
pub fn fold<T>(
    kind: &str,
    model: &mut BTreeMap<ObjectName, Arc<T>>,
    updates: Updates<T>,
    rejected: &AtomicU64,
) {
    if let Some(listed) = updates.relisted {
        let mut before = std::mem::take(model);
        for (name, update) in listed {
            let previous = before.remove(&name);
            if let Some(spec) = settle(kind, &name, update, previous, rejected) {
                model.insert(name, spec);
            }
        }
    }
    for (name, update) in updates.changed {
        let previous = model.remove(&name);
        if let Some(spec) = settle(kind, &name, update, previous, rejected) {
            model.insert(name, spec);
        }
    }
}

/// What the model holds for an object after `update`: its new valid
/// version, else its previous one (none once deleted).
fn settle<T>(
    kind: &str,
    name: &ObjectName,
    update: Update<T>,
    previous: Option<Arc<T>>,
    rejected: &AtomicU64,
) -> Option<Arc<T>> {
    match update {
        Update::Valid(spec) => Some(Arc::new(spec)),
        Update::Gone => None,
        Update::Invalid(message) => {
            let what = if previous.is_some() {
                "keeping its previous version"
            } else {
                "skipped"
            };
            warn!("{kind} {name}: {message}; {what}");
            rejected.fetch_add(1, Ordering::Relaxed);
            previous
        }
    }
}

/// A watch that retries with backoff, validating each object as it comes;
/// returns its "initial list done" signal.
fn watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    validate: fn(&K) -> Result<T, String>,
    deliver: impl Fn(Delivery<T>) + Send + 'static,
    stats: Arc<SourceStats>,
) -> signal::Receiver<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    T: Send + 'static,
{
    let (listed, ready) = signal::channel(false);
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher::watcher(api, config).default_backoff();
    tokio::spawn(forward(kind, stream, validate, deliver, listed, stats));
    ready
}

async fn forward<K, T, S>(
    kind: String,
    stream: S,
    validate: fn(&K) -> Result<T, String>,
    deliver: impl Fn(Delivery<T>),
    listed: signal::Sender<bool>,
    stats: Arc<SourceStats>,
) where
    K: Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let check = |object: &K| match validate(object) {
        Ok(spec) => Update::Valid(spec),
        Err(message) => Update::Invalid(message),
    };
    let mut listing = BTreeMap::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => {
                stats.lists.fetch_add(1, Ordering::Relaxed);
                info!(kind, "listing");
                listing.clear();
            }
            Ok(Event::InitApply(object)) => {
                if let Ok(name) = object_name(object.meta()) {
                    listing.insert(name, check(&object));
                }
            }
            Ok(Event::InitDone) => {
                info!(kind, "list complete");
                deliver(Delivery::Relisted(std::mem::take(&mut listing)));
                listed.send_replace(true);
            }
            Ok(Event::Apply(object)) => {
                if let Ok(name) = object_name(object.meta()) {
                    deliver(Delivery::Changed(name, check(&object)));
                }
            }
            Ok(Event::Delete(object)) => {
                if let Ok(name) = object_name(object.meta()) {
                    deliver(Delivery::Changed(name, Update::Gone));
                }
            }
            Err(e) => {
                stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                warn!(kind, "watch failed, retrying with backoff: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ObjectName {
        ObjectName {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    fn model(entries: &[(&str, u32)]) -> BTreeMap<ObjectName, Arc<u32>> {
        entries
            .iter()
            .map(|&(n, v)| (name(n), Arc::new(v)))
            .collect()
    }

    #[test]
    fn the_selector_excludes_both_labels() {
        assert_eq!(
            SERVICE_SELECTOR,
            format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")
        );
    }

    #[test]
    fn changes_replace_keep_the_last_valid_version_or_remove() {
        let rejected = AtomicU64::new(0);
        let mut m = model(&[("a", 1), ("b", 2), ("c", 3)]);
        let updates = Updates {
            relisted: None,
            changed: [
                (name("a"), Update::Valid(10)),
                (name("b"), Update::Invalid("bad port".into())),
                (name("c"), Update::Gone),
                (name("d"), Update::Invalid("no name label".into())),
                (name("e"), Update::Valid(5)),
            ]
            .into_iter()
            .collect(),
        };
        fold("Service", &mut m, updates, &rejected);
        assert_eq!(m, model(&[("a", 10), ("b", 2), ("e", 5)]));
        assert_eq!(rejected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_relist_drops_what_vanished_then_later_changes_apply() {
        let rejected = AtomicU64::new(0);
        let mut m = model(&[("a", 1), ("b", 2), ("gone", 3)]);
        let updates = Updates {
            relisted: Some(
                [
                    (name("a"), Update::Valid(1)),
                    (name("b"), Update::Invalid("bad".into())),
                    (name("new"), Update::Valid(4)),
                    (name("bad-new"), Update::Invalid("bad".into())),
                ]
                .into_iter()
                .collect(),
            ),
            changed: [(name("a"), Update::Valid(11))].into_iter().collect(),
        };
        fold("EndpointSlice", &mut m, updates, &rejected);
        assert_eq!(m, model(&[("a", 11), ("b", 2), ("new", 4)]));
        assert_eq!(rejected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_relist_supersedes_the_changes_pending_before_it() {
        let mut changes = Changes::default();
        let mut updates = Updates::default();
        let names: fn(&mut Changes) -> &mut BTreeSet<ObjectName> = |c| &mut c.services;
        record(
            &mut changes,
            names,
            &mut updates,
            Delivery::Changed(name("a"), Update::Gone),
        );
        assert!(!changes.all);
        assert!(changes.services.contains(&name("a")));
        record(
            &mut changes,
            names,
            &mut updates,
            Delivery::Relisted(
                model(&[("a", 1)])
                    .into_iter()
                    .map(|(k, v)| (k, Update::Valid(*v)))
                    .collect(),
            ),
        );
        record(
            &mut changes,
            names,
            &mut updates,
            Delivery::Changed(name("b"), Update::Valid(2)),
        );
        assert!(changes.all);
        let mut m = BTreeMap::new();
        fold("Service", &mut m, updates, &AtomicU64::new(0));
        assert_eq!(m, model(&[("a", 1), ("b", 2)]));
    }
}
