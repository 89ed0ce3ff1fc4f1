//! The health endpoints kube-proxy serves, which load balancers and
//! monitoring rely on:
//!
//! - the proxy's `/healthz` and `/livez` (default `0.0.0.0:10256`): 200 while
//!   every change reached the maps within [`HEALTH_TIMEOUT`]; `/healthz` also
//!   503 while this node is being deleted ([`proxy`]);
//! - one listener per `externalTrafficPolicy: Local` LoadBalancer Service on
//!   its `healthCheckNodePort`: 200 while this node has a ready endpoint of
//!   the Service ([`service`]).
//!
//! The servers run on a thread of their own, so they answer (503 when the
//! maps are late) while a long sync holds the agent's thread. A port that
//! cannot be bound (kube-proxy still holds it during a migration) is logged
//! and retried every [`BIND_RETRY`]; nothing else waits for it.

pub mod proxy;
pub mod service;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    desired::NodeInfo,
    ident::ObjectName,
    model::{AddressType, Cluster, ServiceKind, ServiceSpec, TrafficPolicy},
    select::SliceIndex,
    source::Changes,
};

/// kube-proxy's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
/// How long a change may wait for the maps before the proxy is unhealthy:
/// kube-proxy's, twice its default 30 s sync period.
pub const HEALTH_TIMEOUT: Duration = Duration::from_mins(1);
/// How often a port that could not be bound is tried again (kube-proxy
/// restarts its healthz server every 5 s).
pub const BIND_RETRY: Duration = Duration::from_secs(5);

/// Where and how the health endpoints are served.
#[derive(Clone, Debug)]
pub struct HealthOptions {
    /// `/healthz` and `/livez`; `None`: not served.
    pub healthz_addr: Option<SocketAddr>,
    /// The address the health check node ports are bound on (all: unspecified).
    pub service_ip: IpAddr,
    /// See [`HEALTH_TIMEOUT`].
    pub timeout: Duration,
    /// See [`BIND_RETRY`].
    pub retry: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            healthz_addr: parse_bind_address(DEFAULT_HEALTHZ_BIND_ADDRESS).unwrap_or_default(),
            service_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            timeout: HEALTH_TIMEOUT,
            retry: BIND_RETRY,
        }
    }
}

/// Parses `--healthz-bind-address`: `IP:port`, or empty to turn it off.
pub fn parse_bind_address(text: &str) -> Result<Option<SocketAddr>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .with_context(|| format!("{text:?} is not IP:port (or \"\" to turn it off)"))
}

/// An HTTP answer, decided without I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers besides the framing ones.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

/// Headers of every kube-proxy health answer.
fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".into()),
        ("X-Content-Type-Options", "nosniff".into()),
    ]
}

/// The Services that get a health check node port, as kube-proxy decides:
/// LoadBalancer with `externalTrafficPolicy: Local` and a
/// `healthCheckNodePort`, served by this proxy (an IPv4 cluster IP and a port).
#[must_use]
pub fn health_check_ports(cluster: &Cluster) -> BTreeMap<ObjectName, u16> {
    cluster
        .services
        .values()
        .filter_map(|s| Some((s.name.clone(), health_check_port(s)?)))
        .collect()
}

/// The health check node port of one Service, if it has one to serve.
fn health_check_port(s: &ServiceSpec) -> Option<u16> {
    (s.kind == ServiceKind::LoadBalancer
        && s.external_policy == TrafficPolicy::Local
        && !s.cluster_ips.is_empty()
        && !s.ports.is_empty())
    .then_some(s.health_check_node_port?)
}

/// Brings `ports` (the [`health_check_ports`] of an earlier `cluster`) up
/// to date with `cluster` after `changes`: only the changed Services are
/// looked at, so a sync at 100,000 Services does not walk them all.
pub fn update_health_check_ports(
    ports: &mut BTreeMap<ObjectName, u16>,
    cluster: &Cluster,
    changes: &Changes,
) {
    if changes.all {
        *ports = health_check_ports(cluster);
        return;
    }
    for name in &changes.services {
        match cluster
            .services
            .get(name)
            .and_then(|s| health_check_port(s))
        {
            Some(port) => {
                ports.insert(name.clone(), port);
            }
            None => {
                ports.remove(name);
            }
        }
    }
}

/// Ready endpoints on `node` of each of `services`, as kube-proxy counts
/// them for health checks: every slice labelled for the Service (mirrored
/// ones too) that has a port, endpoints whose `ready` condition is not false
/// and whose nodeName is `node`; an address counts once however many ports
/// and slices list it. Serving-but-terminating endpoints do not count: a node
/// left with only those should fail the check. Services without one are absent.
#[must_use]
pub fn local_ready_endpoints<'a>(
    cluster: &Cluster,
    index: &SliceIndex,
    node: &NodeInfo,
    services: impl IntoIterator<Item = &'a ObjectName>,
) -> BTreeMap<ObjectName, usize> {
    let mut counts = BTreeMap::new();
    for service in services {
        // Only this Service's slices (the index): a sync costs what the
        // health-checked Services have, not every slice of the cluster.
        let local: BTreeSet<Ipv4Addr> = index
            .slices_of(service)
            .filter_map(|name| cluster.slices.get(name))
            .filter(|slice| !slice.ports.is_empty() && slice.address_type == AddressType::Ipv4)
            .flat_map(|slice| &slice.endpoints)
            .filter(|e| e.ready)
            .filter_map(|e| e.addresses.first().map(|&addr| (e, addr)))
            .filter(|&(e, addr)| crate::select::is_local(e, addr, node))
            .map(|(_, addr)| addr)
            .collect();
        if !local.is_empty() {
            counts.insert(service.clone(), local.len());
        }
    }
    counts
}

/// Whether this node may take load-balancer traffic (kube-proxy's "node
/// eligible"): not when its Node has a deletionTimestamp or the autoscaler's
/// deletion taint, nor once the Node we saw is gone. Without any Node (a
/// manifest source, or before it is listed) it is.
#[must_use]
pub fn node_eligible(cluster: &Cluster, had_node: bool) -> bool {
    match &cluster.node {
        Some(node) => !node.being_deleted,
        None => !had_node,
    }
}

/// When the maps last took every change, and since when one waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The last successful sync (wall clock, for the answers).
    pub last_updated: Option<SystemTime>,
    /// The oldest change not yet in the maps.
    pub pending_since: Option<Instant>,
}

impl SyncState {
    /// kube-proxy's rule: healthy unless a change has waited `timeout` or
    /// more since a sync succeeded (before the first one: healthy).
    #[must_use]
    pub fn healthy(&self, now: Instant, timeout: Duration) -> bool {
        match (self.last_updated, self.pending_since) {
            (Some(_), Some(since)) => now.saturating_duration_since(since) < timeout,
            _ => true,
        }
    }
}

/// Whether a port is being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// Listening here.
    Bound(SocketAddr),
    /// The last attempt failed with this error (tried again later).
    Failed(String),
}

/// The listeners, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    /// `/healthz` and `/livez` (`None`: not served, or not tried yet).
    pub healthz: Option<Bind>,
    /// Each Service's health check node port.
    pub services: BTreeMap<ObjectName, (u16, Bind)>,
}

/// What the servers read.
#[derive(Debug, Default)]
struct State {
    sync: SyncState,
    node_eligible: bool,
    had_node: bool,
    /// Local ready endpoints of each Service with a health check port.
    local: BTreeMap<ObjectName, usize>,
    listening: Listening,
}

/// State shared between the agent and the servers' thread.
#[derive(Debug)]
struct Shared {
    options: HealthOptions,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The proxy's health, ignoring the node.
    fn proxy_healthy(&self) -> bool {
        self.state()
            .sync
            .healthy(Instant::now(), self.options.timeout)
    }
}

/// The health endpoints: a handle the agent updates after each sync; the
/// servers stop when it is dropped.
#[derive(Debug)]
pub struct Health {
    shared: Arc<Shared>,
    node_name: String,
    /// The health check ports of the Services the agent has seen, kept up
    /// to date change by change ([`Health::observe`]); `None` until the
    /// first change, when every sync computes them afresh.
    ports: Mutex<Option<BTreeMap<ObjectName, u16>>>,
    desired: Option<watch::Sender<BTreeMap<ObjectName, u16>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Health {
    /// Starts the servers' thread; `node_name` tells local endpoints apart.
    pub fn start(options: HealthOptions, node_name: &str) -> Result<Self> {
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(State {
                node_eligible: true,
                ..State::default()
            }),
        });
        let (desired, ports) = watch::channel(BTreeMap::new());
        let on_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lb-health".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!("health endpoints not served: no runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    if let Some(addr) = on_thread.options.healthz_addr {
                        tokio::spawn(proxy::serve(on_thread.clone(), addr));
                    }
                    service::manage(on_thread, ports).await;
                });
                // Dropping the runtime cancels the servers: their ports close.
            })
            .context("starting the health servers' thread")?;
        Ok(Self {
            shared,
            node_name: node_name.to_string(),
            ports: Mutex::new(None),
            desired: Some(desired),
            thread: Some(thread),
        })
    }

    /// A change reached the agent at `at` (kept if an older one waits).
    pub fn queued(&self, at: Instant) {
        self.shared.state().sync.pending_since.get_or_insert(at);
    }

    /// The source's `cluster` after `changes` (every snapshot, whether its
    /// sync succeeds or not): the health check ports follow them, Service
    /// by Service; they are served once a sync succeeds.
    pub fn observe(&self, cluster: &Cluster, changes: &Changes) {
        let mut ports = self
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match ports.as_mut() {
            Some(ports) => update_health_check_ports(ports, cluster, changes),
            None => *ports = Some(health_check_ports(cluster)),
        }
    }

    /// The maps hold `cluster` now: the proxy is up to date, and the health
    /// check ports and local endpoint counts follow it.
    /// `index` holds the slices of each Service in `cluster`.
    pub fn synced(&self, cluster: &Cluster, index: &SliceIndex) {
        let node = NodeInfo {
            name: self.node_name.clone(),
            ..NodeInfo::default()
        };
        self.synced_on(cluster, index, &node.merged(cluster.node.as_ref()));
    }

    /// [`Health::synced`] on `node` as the agent knows it (its addresses
    /// tell endpoints that are the node itself, listed without `nodeName`).
    pub fn synced_on(&self, cluster: &Cluster, index: &SliceIndex, node: &NodeInfo) {
        let observed = self
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let ports = observed.unwrap_or_else(|| health_check_ports(cluster));
        let local = local_ready_endpoints(cluster, index, node, ports.keys());
        {
            let mut state = self.shared.state();
            state.sync = SyncState {
                last_updated: Some(SystemTime::now()),
                pending_since: None,
            };
            state.had_node |= cluster.node.is_some();
            state.node_eligible = node_eligible(cluster, state.had_node);
            state.local = local;
        }
        if let Some(desired) = &self.desired {
            desired.send_if_modified(|current| {
                let changed = *current != ports;
                *current = ports;
                changed
            });
        }
    }

    /// The listeners now.
    #[must_use]
    pub fn listening(&self) -> Listening {
        self.shared.state().listening.clone()
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        // Closing the channel ends the manager, then the thread's runtime.
        self.desired = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Logs a failed bind of `what`: the first of a run of failures as a
/// warning, the retries at debug (kube-proxy may hold the port for hours).
fn log_bind_failure(what: &str, addr: SocketAddr, error: &std::io::Error, first: bool) {
    if first {
        tracing::warn!(
            %addr,
            "{what}: cannot listen ({error}); retrying every few seconds (kube-proxy still running?)"
        );
    } else {
        tracing::debug!(%addr, "{what}: still cannot listen ({error})");
    }
}
