//! Observability over HTTP: Prometheus metrics, liveness and readiness.
//!
//! `/metrics` serves the verdict counters (summed from the per-CPU map when
//! scraped, so packets cost no userspace work), sync counts and durations,
//! and objects rejected by validation. `/healthz` answers while the process
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
}

/// Labels of the per-service counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// "namespace/name" of the Service.
    pub service: String,
    /// "addr:port/PROTO" of the frontend.
    pub frontend: String,
}

/// The agent's own metrics, updated by the run loop.
pub struct Metrics {
    registry: Mutex<Registry>,
    verdicts: Family<VerdictLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    service_packets: Family<ServiceLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    service_bytes: Family<ServiceLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
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
    ready: AtomicBool,
    pin_dir: PathBuf,
    source: Mutex<Option<Arc<SourceStats>>>,
    lists: Gauge,
    watch_errors: Gauge,
    rejected: Gauge,
    conntrack_entries: Gauge,
    snat_flows: Gauge,
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
            ready: AtomicBool::new(false),
            pin_dir,
            source: Mutex::new(None),
            lists: Gauge::default(),
            watch_errors: Gauge::default(),
            rejected: Gauge::default(),
            conntrack_entries: Gauge::default(),
            snat_flows: Gauge::default(),
        };
        registry.register(
            "change_to_map_seconds",
            "From a watch event reaching the agent to the maps holding it",
            m.change_to_map_seconds.clone(),
        );
        registry.register(
            "source_lists",
            "Lists of the source: the first and every relist (410 Gone, restart)",
            m.lists.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch failures, each retried with backoff",
            m.watch_errors.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects rejected by validation",
            m.rejected.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Flows in connection tracking",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "snat_flows",
            "Tracked flows translated to a node port (SNAT port use)",
            m.snat_flows.clone(),
        );
        registry.register(
            "packets",
            "Packets by data-path verdict (all CPUs)",
            m.verdicts.clone(),
        );
        registry.register(
            "syncs",
            "Syncs of the maps with the source",
            m.syncs.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of a sync, snapshot to maps written",
            m.sync_seconds.clone(),
        );
        registry.register(
            "frontends",
            "Service frontends programmed",
            m.frontends.clone(),
        );
        registry.register("map_operations", "Map writes", m.map_ops.clone());
        registry.register(
            "service_packets",
            "Packets sent to a Service frontend (all CPUs)",
            m.service_packets.clone(),
        );
        registry.register(
            "service_bytes",
            "Bytes sent to a Service frontend, Ethernet header included (all CPUs)",
            m.service_bytes.clone(),
        );
        registry.register(
            "plan_errors",
            "Frontends that could not be placed",
            m.plan_errors.clone(),
        );
        *m.registry.lock().expect("registry") = registry;
        Arc::new(m)
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
        for (verdict, total) in lb_common::Verdict::ALL.iter().zip(maps.verdict_totals()?) {
            self.verdicts
                .get_or_create(&VerdictLabels {
                    verdict: verdict.name().to_string(),
                })
                .set(i64::try_from(total).unwrap_or(i64::MAX));
        }
        self.service_packets.clear();
        self.service_bytes.clear();
        let totals: std::collections::HashMap<u32, lb_common::ServiceStats> =
            maps.service_totals()?.into_iter().collect();
        for (frontend, entry) in crate::status::frontends_by_id(&maps)? {
            let Some(stats) = totals.get(&entry.0) else {
                continue;
            };
            let labels = ServiceLabels {
                service: entry.1,
                frontend,
            };
            self.service_packets
                .get_or_create(&labels)
                .set(i64::try_from(stats.packets).unwrap_or(i64::MAX));
            self.service_bytes
                .get_or_create(&labels)
                .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        }
        if let Some(stats) = self.source.lock().expect("source stats").as_ref() {
            let get = |a: &std::sync::atomic::AtomicU64| {
                i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
            };
            self.lists.set(get(&stats.lists));
            self.watch_errors.set(get(&stats.watch_errors));
            self.rejected.set(get(&stats.rejected));
        }
        // One pass over the conntrack map per scrape, none per packet.
        let flows = crate::conntrack::read(&self.pin_dir)?;
        self.conntrack_entries
            .set(i64::try_from(flows.len()).unwrap_or(i64::MAX));
        let snat = flows.iter().filter(|f| f.snat.is_some()).count();
        self.snat_flows.set(i64::try_from(snat).unwrap_or(i64::MAX));
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().expect("registry"))?;
        Ok(out)
    }
}

/// Serves the metrics and probes on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(metrics_handler))
        .route(HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(READYZ_PATH, get(readyz))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
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
