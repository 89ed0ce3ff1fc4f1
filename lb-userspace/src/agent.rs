//! `lb-agent run`: source -> model -> desired state -> plan -> maps, repeated
//! whenever the source says something changed.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    datapath::{Datapath, DatapathConfig},
    desired::NodeInfo,
    health::Health,
    metrics::Metrics,
    node_ports::NodePortAddresses,
    plan::{Capacity, Planner},
    reconcile::{Reconciler, CHUNK_SLOTS, REUSE_GRACE},
    report::Reporter,
    source::{api_server, events::EventSink, kube::KubeSource, manifests::ManifestSource, Source},
};

/// How often to look for new pod interfaces.
const INTERFACE_SCAN: Duration = Duration::from_secs(1);

/// Where the agent takes Services and EndpointSlices from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A watched directory of manifests.
    Manifests(PathBuf),
    /// The API server: in-cluster config, or this kubeconfig file.
    Kube {
        /// Path of a kubeconfig; `None` infers (`~/.kube/config`, then in-cluster).
        kubeconfig: Option<PathBuf>,
        /// The API server's direct address, in place of the config's
        /// (`--api-server`, see [`api_server`]).
        api_server: Option<http::Uri>,
    },
}

/// Options of `lb-agent run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The source.
    pub source: SourceConfig,
    /// This node: its name (which endpoints are local), zone and addresses.
    pub node: NodeInfo,
    /// Which local addresses serve node ports (`--nodeport-addresses`).
    pub node_port_addresses: NodePortAddresses,
    /// Data-path setup.
    pub datapath: DatapathConfig,
    /// Where to serve /metrics, /healthz and /readyz (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often expired flows are collected from the maps.
    pub gc_interval: Duration,
    /// kube-proxy's health endpoints: `/healthz` and the health check node ports.
    pub health: crate::health::HealthOptions,
    /// Whether Services' IPv6 frontends are served (`--ipv6`).
    pub ipv6: bool,
}

/// Reconciles the source's latest model and writes the result into the maps.
/// A planner that continues from what the maps hold.
/// The sizes of the maps the planner fills, as they were created (an
/// earlier agent's pinned maps keep the sizes it gave them).
fn capacity(datapath: &Datapath) -> Capacity {
    let maps = &datapath.maps;
    Capacity {
        slab_slots: maps.slab.slots(),
        // The families share the backend ids: an id must fit both arrays
        // (created alike; a pin dir from before BACKENDS6 gets it at load).
        backend_slots: maps.backends.len().min(maps.backends6.len()),
        // The id-indexed array has a slot for every id and the unused 0.
        service_slots: maps.internal_tables.len().saturating_sub(1),
    }
}

fn adopt_maps(datapath: &Datapath) -> Result<Planner> {
    Ok(Planner::adopt_sized(
        datapath.maps.applied_frontends()?,
        datapath.maps.filter.words(),
        capacity(datapath),
        REUSE_GRACE,
    )
    .adopt6(datapath.maps.applied_frontends6()?)
    .with_node_port_addrs(datapath.maps.node_port_addresses()?)
    .with_node_port_addrs6(datapath.maps.node_port_addresses6()?))
}

fn sync(
    reconciler: &mut Reconciler,
    source: &mut dyn Source,
    datapath: &mut Datapath,
    metrics: &Metrics,
    health: &Health,
    reporter: &mut Reporter,
) -> Result<()> {
    let started = Instant::now();
    let (cluster, changes) = source.snapshot();
    health.queued(changes.since.unwrap_or(started));
    health.observe(cluster, &changes);
    let snapshot = started.elapsed();
    // Chunk by chunk, so the tables of thousands of Services are never all
    // in memory at once.
    let mut applying = Duration::ZERO;
    let (done, applied) =
        reconciler.reconcile_chunked(cluster, &changes, Instant::now(), CHUNK_SLOTS, |chunk| {
            let at = Instant::now();
            let applied = datapath.maps.apply(&chunk.ops);
            applying += at.elapsed();
            applied
        });
    for w in &done.warnings {
        warn!("{w}");
    }
    for e in &done.errors {
        error!("{e}");
    }
    reporter.observe(&done.problems);
    if let Err(e) = applied {
        // The planner counted the failed chunk (and the filter words it
        // set) as applied: start again from what the maps hold.
        reconciler.recover(adopt_maps(datapath)?);
        return Err(e);
    }
    health.synced_on(cluster, reconciler.slice_index(), reconciler.node());
    // The maps no longer offer the gone backends: now their sockets close,
    // and the applications' reconnects land on live backends.
    if let Some(closed) = datapath.close_sockets(&done.gone, &done.gone6) {
        metrics.sockets_closed.inc_by(closed.destroyed);
        metrics.socket_close_errors.inc_by(closed.failed);
    }
    let computed = started.elapsed().saturating_sub(applying);
    metrics.syncs.inc();
    metrics.map_ops.inc_by(done.ops as u64);
    metrics.plan_errors.inc_by(done.errors.len() as u64);
    metrics
        .frontends
        .set(i64::try_from(reconciler.desired().len()).unwrap_or(i64::MAX));
    metrics
        .sync_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Some(since) = changes.since {
        metrics
            .change_to_map_seconds
            .observe(since.elapsed().as_secs_f64());
    }
    info!(
        full = changes.all,
        recomputed = done.recomputed,
        ops = done.ops,
        snapshot_us = micros(snapshot),
        reconcile_us = micros(computed.saturating_sub(snapshot)),
        apply_us = micros(applying),
        elapsed_us = micros(started.elapsed()),
        "synced"
    );
    Ok(())
}

/// The reconciler of this run: it takes over what an earlier agent left in
/// the maps, serves node ports where `--nodeport-addresses` says and knows
/// the node's local addresses.
fn reconciler(options: &RunOptions, datapath: &Datapath) -> Result<Reconciler> {
    let sizes = capacity(datapath);
    let asked = &options.datapath;
    if sizes.service_slots != asked.service_slots || sizes.backend_slots != asked.backend_slots {
        warn!(
            services = sizes.service_slots,
            backends = sizes.backend_slots,
            "the pinned maps keep the sizes an earlier agent gave them: \
             --max-services {} and --max-backends {} take effect after `lb-agent cleanup`",
            asked.service_slots,
            asked.backend_slots
        );
    }
    let planner = if datapath.adopted() {
        let planner = adopt_maps(datapath)?;
        info!(
            frontends = planner.frontend_count(),
            "took over the frontends of an earlier agent"
        );
        planner
    } else {
        Planner::new_sized(sizes, REUSE_GRACE)
    };
    let mut reconciler = Reconciler::with_planner(options.node.clone(), planner);
    reconciler.track_gone(options.datapath.socket_lb_cgroup.is_some());
    reconciler.set_node_port_rule(options.node_port_addresses.clone());
    reconciler.plan_ipv6(options.ipv6);
    scan_local_addresses(&mut reconciler);
    Ok(reconciler)
}

/// Reads this node's local addresses into `reconciler` (where node ports
/// are served); whether they changed. A failure is logged and changes nothing.
fn scan_local_addresses(reconciler: &mut Reconciler) -> bool {
    let v4 = match crate::node_ports::interface_addresses() {
        Ok(found) => {
            reconciler.set_local_addresses(found.into_iter().map(|(_, addr)| addr).collect())
        }
        Err(e) => {
            warn!("listing the node's addresses (node ports keep the last ones): {e}");
            false
        }
    };
    if !reconciler.plans_ipv6() {
        return v4;
    }
    let v6 = match crate::node_ports::interface_addresses6() {
        Ok(found) => {
            reconciler.set_local_addresses6(found.into_iter().map(|(_, addr)| addr).collect())
        }
        Err(e) => {
            warn!("listing the node's IPv6 addresses (node ports keep the last ones): {e}");
            false
        }
    };
    v4 || v6
}

/// How often SNAT exhaustion is logged per backend, at most.
const EXHAUSTION_LOG_INTERVAL: Duration = Duration::from_mins(1);

/// Collects expired flows every `gc_interval`, on a thread of its own (a
/// sweep of a full table takes a while; syncs never wait for it), and logs
/// SNAT exhaustion per backend at most once a minute.
fn spawn_collector(options: &RunOptions, metrics: &std::sync::Arc<Metrics>) {
    let collector = crate::conntrack::gc::Collector::new(&options.datapath.pin_dir);
    let metrics = metrics.clone();
    let interval = options.gc_interval;
    tokio::spawn(async move {
        let mut log = crate::conntrack::gc::ExhaustionLog::new(EXHAUSTION_LOG_INTERVAL);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let collector = std::sync::Arc::new(collector);
        loop {
            tick.tick().await;
            let c = collector.clone();
            let swept = tokio::task::spawn_blocking(move || {
                let swept = c.sweep();
                (swept, c.exhaustion())
            })
            .await;
            let Ok((swept, exhaustion)) = swept else {
                continue;
            };
            match swept {
                Ok(s) => {
                    if s.conntrack_deleted + s.reverse_deleted + s.restored > 0 {
                        tracing::debug!(
                            conntrack = s.conntrack_deleted,
                            reverse_nat = s.reverse_deleted,
                            restored = s.restored,
                            "collected expired flows"
                        );
                    }
                    metrics.record_sweep(s);
                }
                Err(e) => warn!("collecting expired flows: {e:#}"),
            }
            if let Ok(counts) = exhaustion {
                for (backend, failed) in log.observe(Instant::now(), &counts) {
                    warn!(
                        backend = %backend,
                        failed,
                        "SNAT port pool exhausted for this backend: new flows to it were \
                         dropped (raise --snat-port-range, add endpoints, or shorten \
                         --ct-timeout)"
                    );
                }
            }
        }
    });
}

/// Whole microseconds of `d`, for the logs.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the agent until SIGINT or SIGTERM, then detaches and removes its pins.
pub async fn run(options: RunOptions) -> Result<()> {
    let (changed_tx, changed) = mpsc::unbounded_channel();
    // The Kubernetes source's client also posts Events about Services.
    let mut events = None;
    let (source, mut datapath): (Box<dyn Source>, _) = match &options.source {
        SourceConfig::Manifests(dir) => {
            let mut source = ManifestSource::new(dir.clone(), changed_tx)?;
            // The kernel verifies the programs while the manifests are parsed.
            let started = Instant::now();
            let datapath = std::thread::scope(|scope| {
                let loading = scope.spawn(|| {
                    let loaded = Datapath::load(options.datapath.clone());
                    (loaded, started.elapsed())
                });
                source.preload();
                let parsed = started.elapsed();
                let (loaded, load) = loading
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                info!(
                    parse_us = micros(parsed),
                    load_us = micros(load),
                    "manifests parsed while the programs loaded"
                );
                loaded
            })?;
            (Box::new(source), datapath)
        }
        SourceConfig::Kube {
            kubeconfig,
            api_server,
        } => {
            let client = kube_client(kubeconfig.as_ref(), api_server.as_ref()).await?;
            let source = KubeSource::start(&client, &changed_tx, &options.node.name);
            events = Some(client);
            info!("waiting for the initial list of Services and EndpointSlices");
            let datapath = load_while_listing(&source, options.datapath.clone()).await?;
            (Box::new(source), datapath)
        }
    };
    let result = serve(&options, source, events, changed, &mut datapath).await;
    datapath.shutdown();
    info!("detached and removed pins");
    result
}

/// Loads the datapath while `source` lists (the kernel verifies the
/// programs meanwhile, as the manifests path parses meanwhile): a load that
/// fails ends the start at once, lists or not; a source that fails after
/// the load gives the datapath up.
async fn load_while_listing(source: &KubeSource, config: DatapathConfig) -> Result<Datapath> {
    let started = Instant::now();
    let mut loading = tokio::task::spawn_blocking(move || Datapath::load(config));
    let ready = source.wait_until_ready();
    tokio::pin!(ready);
    let mut listed = None;
    let loaded = loop {
        tokio::select! {
            joined = &mut loading => {
                break joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            }
            result = &mut ready, if listed.is_none() => {
                listed = Some((result, started.elapsed()));
            }
        }
    };
    let load = started.elapsed();
    let datapath = loaded?;
    let (listed, listed_after) = match listed {
        Some(done) => done,
        None => ((&mut ready).await, started.elapsed()),
    };
    if let Err(e) = listed {
        give_up(datapath);
        return Err(e);
    }
    info!(
        list_us = micros(listed_after),
        load_us = micros(load),
        "listed while the programs loaded"
    );
    Ok(datapath)
}

/// A datapath loaded for a source that then failed: an earlier agent's
/// adopted maps keep serving (as if this agent had never started); a fresh
/// start leaves no pins behind (as a failed load does).
fn give_up(datapath: Datapath) {
    if datapath.adopted() {
        drop(datapath);
    } else {
        datapath.shutdown();
    }
}

/// The client of the config found (a kubeconfig, or in-cluster), at
/// `api_server` when given: its credentials and CA stay the config's.
async fn kube_client(
    kubeconfig: Option<&PathBuf>,
    api_server: Option<&http::Uri>,
) -> Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig: pass --kubeconfig")?,
    };
    if let Some(server) = api_server {
        info!(%server, replaces = %config.cluster_url, "reaching the API server at --api-server");
        config.cluster_url = server.clone();
    } else if api_server::through_service(
        &config.cluster_url,
        std::env::var(api_server::SERVICE_HOST_ENV).ok().as_deref(),
    ) {
        warn!(
            server = %config.cluster_url,
            "the API server is reached through the kubernetes Service's cluster IP: where this \
             agent replaces kube-proxy, a node booting without pinned maps cannot reach it; \
             pass --api-server with the control plane's address"
        );
    }
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

async fn serve(
    options: &RunOptions,
    mut source: Box<dyn Source>,
    events: Option<kube::Client>,
    mut changed: mpsc::UnboundedReceiver<()>,
    datapath: &mut Datapath,
) -> Result<()> {
    if let Some(logger) = datapath.take_logger() {
        // Kernel log records arrive through `log`, which tracing's
        // subscriber forwards (the programs log at debug level, rarely).
        // SAFETY: the logger owns its ring buffer's fd, which stays open and
        // the same for as long as the AsyncFd holds the logger.
        let mut logger = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| anyhow::anyhow!("watching the kernel log records: {}", e.into_parts().1))?;
        tokio::spawn(async move {
            while let Ok(mut guard) = logger.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
    let metrics = Metrics::new(options.datapath.pin_dir.clone());
    metrics.set_source(source.stats());
    // Before the first sync: healthy while starting, as kube-proxy is.
    let health = Health::start(options.health.clone(), &options.node.name)?;
    let sink = events.map(|client| {
        let node = &options.node.name;
        EventSink::start(
            client,
            node,
            crate::source::events::QUEUE,
            metrics.problems.clone(),
        )
    });
    let mut reporter = Reporter::new(metrics.problems.clone(), sink);
    if let Some(addr) = options.metrics_addr {
        // Bound before "ready": the probes find it listening at once.
        let listener = crate::metrics::bind(addr).await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, metrics).await {
                error!("metrics server: {e:#}");
            }
        });
    }
    let mut reconciler = reconciler(options, datapath)?;
    // Before "ready": a SIGTERM right after it must still detach and clean up.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    sync(
        &mut reconciler,
        source.as_mut(),
        datapath,
        &metrics,
        &health,
        &mut reporter,
    )?;
    // The maps hold the source now: an earlier layout's programs can go.
    if let Err(e) = datapath.finish_handover() {
        error!("finishing the hand-over from an earlier pin layout: {e:#}");
    }
    metrics.set_ready();
    spawn_collector(options, &metrics);
    println!("lb-agent ready");
    info!(source = ?options.source, "ready");

    let mut scan = tokio::time::interval(INTERFACE_SCAN);
    // A failed sync is retried (in full) at the next interface scan.
    let mut retry = false;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Some(()) = changed.recv() => {
                // Sync at once, folding in every change already queued: a
                // burst becomes a few syncs, and a lone change waits for none.
                tokio::task::yield_now().await;
                while changed.try_recv().is_ok() {}
                retry = false;
                if let Err(e) = sync(&mut reconciler, source.as_mut(), datapath, &metrics, &health, &mut reporter) {
                    error!("sync failed (retried at the next interface scan): {e:#}");
                    retry = true;
                }
            }
            _ = scan.tick() => {
                if retry {
                    retry = sync(&mut reconciler, source.as_mut(), datapath, &metrics, &health, &mut reporter)
                        .inspect_err(|e| error!("sync failed again: {e:#}"))
                        .is_err();
                }
                if let Err(e) = datapath.attach_new_pod_interfaces() {
                    warn!("scanning interfaces: {e:#}");
                }
                if scan_local_addresses(&mut reconciler) {
                    // Node ports follow the node's addresses at once.
                    retry = sync(&mut reconciler, source.as_mut(), datapath, &metrics, &health, &mut reporter)
                        .inspect_err(|e| error!("sync failed (retried at the next interface scan): {e:#}"))
                        .is_err();
                }
            }
        }
    }
    Ok(())
}
