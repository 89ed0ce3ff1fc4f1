//! The Kubernetes source: Services and EndpointSlices (and this node's Node
//! object, for its zone and addresses) watched with kube-rs' watcher. Each
//! object is validated as it arrives and only its model form is kept (not
//! the Kubernetes object), so memory scales with what balancing needs. A
//! relist (after `410 Gone`, or a restart) is applied object by object as
//! its pages arrive, and when it ends the objects it did not hold are
//! dropped: no second copy of a kind is ever collected, and only objects
//! that differ from the model count as changed (a relist of an unchanged
//! cluster recomputes nothing). While the API server is unreachable the
//! watcher retries with backoff and the model, and so the maps, keep the
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
    /// The names a list (or relist) that ended held, every object of the
    /// kind then: the model drops the others (before `changed`).
    pub listed: Option<BTreeSet<ObjectName>>,
    /// Objects listed, added, changed or removed, the latest of each.
    pub changed: BTreeMap<ObjectName, Update<T>>,
}

impl<T> Default for Updates<T> {
    fn default() -> Self {
        Self {
            listed: None,
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
    /// One object of a list (initial or relist) under way.
    Listed(ObjectName, Update<T>),
    /// A list ended: the names of every object of the kind it held.
    ListDone(BTreeSet<ObjectName>),
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
            deliverer(&pending, changed, |p, d| record(&mut p.services, d)),
            stats.clone(),
        );
        let slices = watch(
            Api::<EndpointSlice>::all(client.clone()),
            ours,
            SliceSpec::from_k8s,
            deliverer(&pending, changed, |p, d| record(&mut p.slices, d)),
            stats.clone(),
        );
        let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let nodes = watch(
            Api::<Node>::all(client.clone()),
            own_node,
            |node| Ok(NodeFacts::from_k8s(node)),
            deliverer(&pending, changed, |p, d| match d {
                Delivery::Listed(_, update) | Delivery::Changed(_, update) => {
                    p.node = Some(update);
                }
                // A list without our Node: it is gone.
                Delivery::ListDone(names) if names.is_empty() => p.node = Some(Update::Gone),
                Delivery::ListDone(_) => {}
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
        let mut changes = pending.changes;
        // What changed is what differs from the model, whatever was delivered.
        changes.services.extend(fold(
            "Service",
            &mut self.cluster.services,
            pending.services,
            rejected,
        ));
        changes.slices.extend(fold(
            "EndpointSlice",
            &mut self.cluster.slices,
            pending.slices,
            rejected,
        ));
        if let Some(update) = pending.node {
            let facts = match update {
                Update::Valid(facts) => Some(facts),
                Update::Invalid(_) | Update::Gone => None,
            };
            // A change of our Node: recompute everything.
            if facts != self.cluster.node {
                self.cluster.node = facts;
                changes.all = true;
            }
        }
        (&self.cluster, changes)
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

/// Records a delivery of Services or EndpointSlices: an object, the latest
/// of each name kept; the end of a list, whose names say what the kind
/// holds (a change pending from before it, of an object it does not hold,
/// is dropped: the object is gone).
fn record<T>(updates: &mut Updates<T>, delivery: Delivery<T>) {
    match delivery {
        Delivery::Listed(name, update) | Delivery::Changed(name, update) => {
            updates.changed.insert(name, update);
        }
        Delivery::ListDone(names) => {
            updates.changed.retain(|name, _| names.contains(name));
            updates.listed = Some(names);
        }
    }
}

/// Applies one kind's updates to the model: the end of a list first
/// (objects it did not hold are dropped), then each object's latest update.
/// An invalid object keeps its previous valid version, if any (logged with
/// its name, and counted). Returns the names whose model entry changed
/// (added, different or dropped): an object delivered again as it was is
/// not a change.
pub fn fold<T: PartialEq>(
    kind: &str,
    model: &mut BTreeMap<ObjectName, Arc<T>>,
    updates: Updates<T>,
    rejected: &AtomicU64,
) -> BTreeSet<ObjectName> {
    let mut changed = BTreeSet::new();
    if let Some(listed) = updates.listed {
        model.retain(|name, _| {
            let keep = listed.contains(name);
            if !keep {
                changed.insert(name.clone());
            }
            keep
        });
    }
    for (name, update) in updates.changed {
        let previous = model.remove(&name);
        let had = previous.is_some();
        let (now, differs) = settle(kind, &name, update, previous, rejected);
        if differs || (had && now.is_none()) {
            changed.insert(name.clone());
        }
        if let Some(spec) = now {
            model.insert(name, spec);
        }
    }
    changed
}

/// What the model holds for an object after `update`: its new valid
/// version (the previous one, shared, when equal), else its previous one
/// (none once deleted); and whether a new version replaced or added one.
fn settle<T: PartialEq>(
    kind: &str,
    name: &ObjectName,
    update: Update<T>,
    previous: Option<Arc<T>>,
    rejected: &AtomicU64,
) -> (Option<Arc<T>>, bool) {
    match update {
        Update::Valid(spec) => match previous {
            Some(previous) if *previous == spec => (Some(previous), false),
            _ => (Some(Arc::new(spec)), true),
        },
        Update::Gone => (None, false),
        Update::Invalid(message) => {
            let what = if previous.is_some() {
                "keeping its previous version"
            } else {
                "skipped"
            };
            warn!("{kind} {name}: {message}; {what}");
            rejected.fetch_add(1, Ordering::Relaxed);
            (previous, false)
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
    // The names the list under way has delivered (not the objects: those
    // go to the model as they come).
    let mut listing = BTreeSet::new();
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
                    listing.insert(name.clone());
                    deliver(Delivery::Listed(name, check(&object)));
                }
            }
            Ok(Event::InitDone) => {
                info!(kind, "list complete");
                deliver(Delivery::ListDone(std::mem::take(&mut listing)));
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
            listed: None,
            changed: [
                (name("a"), Update::Valid(10)),
                (name("b"), Update::Invalid("bad port".into())),
                (name("c"), Update::Gone),
                (name("d"), Update::Invalid("no name label".into())),
                (name("e"), Update::Valid(5)),
                (name("f"), Update::Gone),
            ]
            .into_iter()
            .collect(),
        };
        let changed = fold("Service", &mut m, updates, &rejected);
        assert_eq!(m, model(&[("a", 10), ("b", 2), ("e", 5)]));
        assert_eq!(rejected.load(Ordering::Relaxed), 2);
        let names = BTreeSet::from(["a", "c", "e"].map(name));
        assert_eq!(changed, names, "what the model holds differently");
    }

    #[test]
    fn the_end_of_a_list_drops_what_it_did_not_hold_then_later_changes_apply() {
        let rejected = AtomicU64::new(0);
        let mut m = model(&[("a", 1), ("b", 2), ("gone", 3)]);
        let mut updates = Updates::default();
        for delivery in [
            Delivery::Listed(name("a"), Update::Valid(1)),
            Delivery::Listed(name("b"), Update::Invalid("bad".into())),
            Delivery::Listed(name("new"), Update::Valid(4)),
            Delivery::Listed(name("bad-new"), Update::Invalid("bad".into())),
            Delivery::ListDone(BTreeSet::from(["a", "b", "new", "bad-new"].map(name))),
            Delivery::Changed(name("a"), Update::Valid(11)),
            Delivery::Changed(name("later"), Update::Valid(7)),
        ] {
            record(&mut updates, delivery);
        }
        let changed = fold("EndpointSlice", &mut m, updates, &rejected);
        assert_eq!(m, model(&[("a", 11), ("b", 2), ("later", 7), ("new", 4)]));
        assert_eq!(rejected.load(Ordering::Relaxed), 2);
        let names = BTreeSet::from(["a", "gone", "later", "new"].map(name));
        assert_eq!(changed, names);
    }

    /// A relist of objects that did not change changes nothing: the model
    /// keeps its versions and no Service is recomputed.
    #[test]
    fn a_relist_of_the_same_objects_changes_nothing() {
        let mut m = model(&[("a", 1), ("b", 2)]);
        let before = m[&name("a")].clone();
        let mut updates = Updates::default();
        for delivery in [
            Delivery::Listed(name("a"), Update::Valid(1)),
            Delivery::Listed(name("b"), Update::Valid(2)),
            Delivery::ListDone(BTreeSet::from(["a", "b"].map(name))),
        ] {
            record(&mut updates, delivery);
        }
        let changed = fold("Service", &mut m, updates, &AtomicU64::new(0));
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(m, model(&[("a", 1), ("b", 2)]));
        assert!(
            Arc::ptr_eq(&m[&name("a")], &before),
            "the same version, shared"
        );
    }

    /// A change pending from before a relist, of an object the relist does
    /// not hold, is dropped with it (it was deleted meanwhile); objects
    /// listed before a snapshot are applied then, the rest of the list
    /// after it.
    #[test]
    fn a_relist_supersedes_the_changes_pending_before_it() {
        let mut updates = Updates::default();
        record(
            &mut updates,
            Delivery::Changed(name("deleted"), Update::Valid(9)),
        );
        record(&mut updates, Delivery::Listed(name("a"), Update::Valid(1)));
        let mut m = model(&[("deleted", 8)]);
        let first = fold(
            "Service",
            &mut m,
            std::mem::take(&mut updates),
            &AtomicU64::new(0),
        );
        assert_eq!(m, model(&[("a", 1), ("deleted", 9)]), "mid-list");
        assert_eq!(first, BTreeSet::from(["a", "deleted"].map(name)));
        record(&mut updates, Delivery::Listed(name("b"), Update::Valid(2)));
        record(
            &mut updates,
            Delivery::Changed(name("deleted"), Update::Valid(10)),
        );
        record(
            &mut updates,
            Delivery::ListDone(BTreeSet::from(["a", "b"].map(name))),
        );
        record(&mut updates, Delivery::Changed(name("c"), Update::Valid(3)));
        let second = fold("Service", &mut m, updates, &AtomicU64::new(0));
        assert_eq!(m, model(&[("a", 1), ("b", 2), ("c", 3)]));
        assert_eq!(second, BTreeSet::from(["b", "c", "deleted"].map(name)));
    }
}
