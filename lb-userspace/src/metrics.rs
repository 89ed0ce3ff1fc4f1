//! Observability over HTTP: Prometheus metrics, liveness and readiness.
//!
//! `/metrics` serves the kernel's counters (verdicts, per-service packets and
//! bytes, entries created; summed from the per-CPU maps when scraped, so
//! packets cost no userspace work), conntrack and reverse-NAT entries,
//! flows by state, SNAT ports and their LRU evictions (as the collector's
//! last sweep counted them: a scrape reads neither flow map), sync counts and
//! durations, and objects rejected by validation. `/healthz` answers while the process
//! runs; `/readyz` once the data path is attached and the first sync is done.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{Context, Result};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use lb_common::Event;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracing::{info, warn};

use crate::{datapath::maps::Maps, source::SourceStats};

/// Path of the Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";
/// Path of the liveness probe.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the readiness probe.
pub const READYZ_PATH: &str = "/readyz";

/// Labels of the verdict counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Verdict name (translated, reversed, passed, dropped, error).
    pub verdict: String,
    /// The packets' family: "ipv4" or "ipv6".
    pub family: &'static str,
}

/// Labels of a per-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Flow state (`lb_common::conntrack::CtState` names, or "expired").
    pub state: String,
}

/// Labels of a per-backend series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// "addr:port/PROTO" of the backend.
    pub backend: String,
}

/// Labels of the data-path events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Event name (`lb_common::Event::name`).
    pub event: String,
    /// The family of the packets the event is about: "ipv4" or "ipv6".
    pub family: &'static str,
}

/// Labels of the garbage-collection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    /// `conntrack` or `reverse_nat`.
    pub map: String,
}

/// Labels of the per-service counters: one Service port, all its frontends
/// together (the data path counts by Service port).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// "namespace/name" of the Service.
    pub service: String,
    /// The Service port's name ("" when unnamed).
    pub port: String,
    /// The frontends' family ("ipv4" or "ipv6"): each family's side of a
    /// dual-stack Service port is counted apart.
    pub family: &'static str,
}

/// The agent's own metrics, updated by the run loop.
pub struct Metrics {
    registry: Mutex<Registry>,
    verdicts: Family<VerdictLabels, Counter>,
    service_packets: Family<ServiceLabels, Counter>,
    service_bytes: Family<ServiceLabels, Counter>,
    /// Syncs done (full or incremental).
    pub syncs: Counter,
    /// Duration of a sync, from snapshot to maps written, in seconds.
    pub sync_seconds: Histogram,
    /// Time from a change reaching the agent to the maps holding it, in seconds.
    pub change_to_map_seconds: Histogram,
    /// Frontends programmed.
    pub frontends: Gauge,
    /// Map operations written.
    pub map_ops: Counter,
    /// Frontends the planner could not place.
    pub plan_errors: Counter,
    /// Sockets closed because their backend left their Service (socket-level balancing).
    pub sockets_closed: Counter,
    /// Failures to list or close such sockets.
    pub socket_close_errors: Counter,
    /// Services' problems and the Events about them.
    pub problems: crate::report::ProblemMetrics,
    ready: AtomicBool,
    pin_dir: PathBuf,
    source: Mutex<Option<Arc<SourceStats>>>,
    lists: Counter,
    watch_errors: Counter,
    rejected: Counter,
    conntrack_entries: Gauge,
    conntrack_created: Counter,
    conntrack_evictions: Counter,
    revnat_entries: Gauge,
    revnat_created: Counter,
    revnat_evictions: Counter,
    snat_flows: Gauge,
    flows_by_state: Family<StateLabels, Gauge>,
    snat_ports: Family<BackendLabels, Gauge>,
    snat_exhausted: Family<BackendLabels, Counter>,
    events: Family<EventLabels, Counter>,
    gc_deleted: Family<MapLabels, Counter>,
    /// Sweeps the collector finished: a scrape after it grew shows a fresh census.
    gc_runs: Counter,
    /// Conntrack and reverse-NAT entries the agent's collection deleted, and
    /// reverse-NAT entries it restored.
    gc_totals: [std::sync::atomic::AtomicU64; 3],
    /// The flow maps as the collector's last sweep counted them: scrapes
    /// show it instead of reading both maps again.
    census: Mutex<Option<crate::conntrack::gc::Swept>>,
}

impl Metrics {
    /// Metrics whose verdict counters are read from the maps pinned in `pin_dir`.
    #[must_use]
    pub fn new(pin_dir: PathBuf) -> Arc<Self> {
        let mut registry = Registry::with_prefix("lb");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            verdicts: Family::default(),
            service_packets: Family::default(),
            service_bytes: Family::default(),
            syncs: Counter::default(),
            sync_seconds: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            change_to_map_seconds: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
            frontends: Gauge::default(),
            map_ops: Counter::default(),
            plan_errors: Counter::default(),
            sockets_closed: Counter::default(),
            socket_close_errors: Counter::default(),
            problems: crate::report::ProblemMetrics::default(),
            ready: AtomicBool::new(false),
            pin_dir,
            source: Mutex::new(None),
            lists: Counter::default(),
            watch_errors: Counter::default(),
            rejected: Counter::default(),
            conntrack_entries: Gauge::default(),
            conntrack_created: Counter::default(),
            conntrack_evictions: Counter::default(),
            revnat_entries: Gauge::default(),
            revnat_created: Counter::default(),
            revnat_evictions: Counter::default(),
            snat_flows: Gauge::default(),
            flows_by_state: Family::default(),
            snat_ports: Family::default(),
            snat_exhausted: Family::default(),
            events: Family::default(),
            gc_deleted: Family::default(),
            gc_runs: Counter::default(),
            gc_totals: [
                std::sync::atomic::AtomicU64::new(0),
                std::sync::atomic::AtomicU64::new(0),
                std::sync::atomic::AtomicU64::new(0),
            ],
            census: Mutex::new(None),
        };
        m.register(&mut registry);
        *m.registry.lock().expect("registry") = registry;
        Arc::new(m)
    }

    /// Registers every metric (names get the `lb_` prefix).
    fn register(&self, registry: &mut Registry) {
        self.register_flows(registry);
        self.problems.register(registry);
        registry.register(
            "change_to_map_seconds",
            "From a watch event reaching the agent to the maps holding it",
            self.change_to_map_seconds.clone(),
        );
        registry.register(
            "source_lists",
            "Lists of the source: the first and every relist (410 Gone, restart)",
            self.lists.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch failures, each retried with backoff",
            self.watch_errors.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects rejected by validation",
            self.rejected.clone(),
        );
        registry.register(
            "packets",
            "Packets by data-path verdict (all CPUs)",
            self.verdicts.clone(),
        );
        registry.register(
            "syncs",
            "Syncs of the maps with the source",
            self.syncs.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of a sync, snapshot to maps written",
            self.sync_seconds.clone(),
        );
        registry.register(
            "frontends",
            "Service frontends programmed",
            self.frontends.clone(),
        );
        registry.register("map_operations", "Map writes", self.map_ops.clone());
        registry.register(
            "service_packets",
            "Packets sent to a Service port, all its frontends together (all CPUs)",
            self.service_packets.clone(),
        );
        registry.register(
            "service_bytes",
            "Bytes sent to a Service port, Ethernet header included (all CPUs)",
            self.service_bytes.clone(),
        );
        registry.register(
            "plan_errors",
            "Frontends that could not be placed",
            self.plan_errors.clone(),
        );
        registry.register(
            "sockets_closed",
            "Sockets socket-level balancing had pointed at a backend that left its Service, closed",
            self.sockets_closed.clone(),
        );
        registry.register(
            "socket_close_errors",
            "Failures to list or close the sockets of a backend that left its Service",
            self.socket_close_errors.clone(),
        );
    }

    /// Registers the flow maps' metrics.
    fn register_flows(&self, registry: &mut Registry) {
        registry.register(
            "conntrack_entries",
            "Flows in connection tracking",
            self.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_created",
            "Conntrack entries created for new flows (all CPUs)",
            self.conntrack_created.clone(),
        );
        registry.register(
            "conntrack_evictions",
            "Conntrack entries evicted by the LRU before their flow ended: created minus live",
            self.conntrack_evictions.clone(),
        );
        registry.register(
            "reverse_nat_entries",
            "Reply flows with a reverse-NAT entry",
            self.revnat_entries.clone(),
        );
        registry.register(
            "reverse_nat_created",
            "Reverse-NAT entries created (all CPUs)",
            self.revnat_created.clone(),
        );
        registry.register(
            "reverse_nat_evictions",
            "Reverse-NAT entries evicted by the LRU: created minus live",
            self.revnat_evictions.clone(),
        );
        registry.register(
            "snat_flows",
            "Live tracked flows holding a SNAT port",
            self.snat_flows.clone(),
        );
        registry.register(
            "conntrack_flows",
            "Tracked flows by state (expired: awaiting collection)",
            self.flows_by_state.clone(),
        );
        registry.register(
            "snat_ports_in_use",
            "SNAT ports held by live flows, per backend",
            self.snat_ports.clone(),
        );
        registry.register(
            "snat_exhausted",
            "New flows that found no SNAT port for this backend (dropped)",
            self.snat_exhausted.clone(),
        );
        registry.register(
            "datapath_events",
            "Data-path events (all CPUs): entries created, ports reclaimed or taken early, \
             exhaustion, restored reverse entries, rejected replies, remapped tuples, \
             spoofed node sources, lost creation races",
            self.events.clone(),
        );
        registry.register(
            "conntrack_gc_deleted",
            "Entries the agent's garbage collection deleted (expired or orphaned)",
            self.gc_deleted.clone(),
        );
        registry.register(
            "conntrack_gc_runs",
            "Sweeps of the agent's garbage collection; the flow series are as of the last one",
            self.gc_runs.clone(),
        );
    }

    /// Reads the source's counters at each scrape.
    pub fn set_source(&self, stats: Arc<SourceStats>) {
        *self.source.lock().expect("source stats") = Some(stats);
    }

    /// Marks the agent ready (data path attached, first sync done).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// The metrics in Prometheus text format, verdicts read from the maps now.
    pub fn render(&self) -> Result<String> {
        let maps = Maps::from_pins(&self.pin_dir)?;
        for family in lb_common::Family::ALL {
            for verdict in lb_common::Verdict::ALL {
                self.verdicts
                    .get_or_create(&VerdictLabels {
                        verdict: verdict.name().to_string(),
                        family: family.name(),
                    })
                    .inner()
                    .store(maps.verdict_count(family, verdict)?, Ordering::Relaxed);
            }
        }
        self.service_packets.clear();
        self.service_bytes.clear();
        let totals: std::collections::HashMap<u32, lb_common::ServiceStats> =
            maps.service_totals()?.into_iter().collect();
        for (id, label) in crate::status::ports_by_id(&maps)? {
            let Some(stats) = totals.get(&id) else {
                continue;
            };
            let labels = ServiceLabels {
                service: label.service,
                port: label.port,
                family: label.family.name(),
            };
            self.service_packets
                .get_or_create(&labels)
                .inner()
                .store(stats.packets, Ordering::Relaxed);
            self.service_bytes
                .get_or_create(&labels)
                .inner()
                .store(stats.bytes, Ordering::Relaxed);
        }
        if let Some(stats) = self.source.lock().expect("source stats").as_ref() {
            for (counter, total) in [
                (&self.lists, &stats.lists),
                (&self.watch_errors, &stats.watch_errors),
                (&self.rejected, &stats.rejected),
            ] {
                counter
                    .inner()
                    .store(total.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        self.render_flows(&maps)?;
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().expect("registry"))?;
        Ok(out)
    }
}

impl Metrics {
    /// Takes a collector's sweep: what it deleted and restored, and its
    /// count of the maps, which the flow series show until the next sweep.
    pub fn record_sweep(&self, swept: crate::conntrack::gc::Swept) {
        self.gc_totals[0].fetch_add(swept.conntrack_deleted, Ordering::Relaxed);
        self.gc_totals[1].fetch_add(swept.reverse_deleted, Ordering::Relaxed);
        self.gc_totals[2].fetch_add(swept.restored, Ordering::Relaxed);
        *self.census.lock().expect("census") = Some(swept);
        self.gc_runs.inc();
    }

    /// The flow maps' series, from the last sweep's count (before the first
    /// sweep, from a read of both maps now): a scrape reads no flow map.
    fn render_flows(&self, maps: &Maps) -> Result<()> {
        let census = self.census.lock().expect("census").clone();
        let census = if let Some(swept) = census {
            swept
        } else {
            let collector = crate::conntrack::gc::Collector::new(&self.pin_dir);
            let snapshot = crate::conntrack::Snapshot::read(&self.pin_dir)?;
            crate::conntrack::gc::Swept {
                stats: snapshot.stats(),
                conntrack_live: snapshot.flows.len() as u64,
                reverse_live: snapshot.replies.len() as u64,
                created: collector.created()?,
                ..Default::default()
            }
        };
        let stats = &census.stats;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.conntrack_entries.set(gauge(census.conntrack_live));
        self.revnat_entries.set(gauge(census.reverse_live));
        self.snat_flows.set(gauge(stats.snat_ports.values().sum()));
        self.flows_by_state.clear();
        for state in lb_common::conntrack::CtState::ALL {
            let n = stats.by_state.get(&state).copied().unwrap_or(0);
            self.flows_by_state
                .get_or_create(&StateLabels {
                    state: state.name().to_string(),
                })
                .set(gauge(n));
        }
        self.flows_by_state
            .get_or_create(&StateLabels {
                state: "expired".to_string(),
            })
            .set(gauge(stats.expired));
        self.snat_ports.clear();
        for (backend, n) in &stats.snat_ports {
            self.snat_ports
                .get_or_create(&BackendLabels {
                    backend: crate::conntrack::backend_label(backend),
                })
                .set(gauge(*n));
        }
        let exhausted = crate::conntrack::gc::Collector::new(&self.pin_dir).exhaustion()?;
        for (backend, n) in &exhausted {
            self.snat_exhausted
                .get_or_create(&BackendLabels {
                    backend: backend.clone(),
                })
                .inner()
                .store(*n, Ordering::Relaxed);
        }
        for family in lb_common::Family::ALL {
            for event in Event::ALL {
                self.events
                    .get_or_create(&EventLabels {
                        event: event.name().to_string(),
                        family: family.name(),
                    })
                    .inner()
                    .store(maps.event_count(family, event)?, Ordering::Relaxed);
            }
        }
        let collected = [
            self.gc_totals[0].load(Ordering::Relaxed),
            self.gc_totals[1].load(Ordering::Relaxed),
        ];
        for (name, n) in [("conntrack", collected[0]), ("reverse_nat", collected[1])] {
            self.gc_deleted
                .get_or_create(&MapLabels {
                    map: name.to_string(),
                })
                .inner()
                .store(n, Ordering::Relaxed);
        }
        // The kernel does not report LRU evictions: every entry ever created
        // (restored ones included, by the kernel or the collector) is live,
        // collected or evicted. All three as of the census.
        let restored = self.gc_totals[2].load(Ordering::Relaxed);
        for (created, live, collected, counter, evicted) in [
            (
                census.created.0,
                census.conntrack_live,
                collected[0],
                &self.conntrack_created,
                &self.conntrack_evictions,
            ),
            (
                census.created.1 + restored,
                census.reverse_live,
                collected[1],
                &self.revnat_created,
                &self.revnat_evictions,
            ),
        ] {
            counter.inner().fetch_max(created, Ordering::Relaxed);
            evicted
                .inner()
                .fetch_max(evictions(created, live + collected), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Entries evicted, from those created and those live now. Saturates: the
/// two are read at slightly different moments.
#[must_use]
pub fn evictions(created: u64, live: u64) -> u64 {
    created.saturating_sub(live)
}

/// Binds the metrics address: connections queue from here on, so an agent
/// that says "ready" after this answers its probes.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (see [`bind`]).
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(metrics_handler))
        .route(HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(READYZ_PATH, get(readyz))
        .with_state(metrics);
    let addr = listener.local_addr()?;
    info!(%addr, "serving {METRICS_PATH}, {HEALTHZ_PATH} and {READYZ_PATH}");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.render() {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => {
            warn!("rendering metrics: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"))
        }
    }
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
