//! `lb-agent run`: source -> model -> desired state -> plan -> maps, and the
//! loop that repeats it when the manifests change.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{debug, error, info, warn};

use crate::{
    datapath::{Datapath, DatapathConfig, LabelWriter},
    manifest::{self, ManifestCache},
    plan::Planner,
    select,
};

/// How long freed slab ranges and ids wait before reuse (packets in flight may still read them).
pub const REUSE_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for more file events before resyncing.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often to look for new pod interfaces.
const INTERFACE_SCAN: Duration = Duration::from_secs(1);

/// Options of `lb-agent run` with the manifest source.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Directory of manifests.
    pub manifests: PathBuf,
    /// This node's name (decides which endpoints are local).
    pub node_name: String,
    /// Data-path setup.
    pub datapath: DatapathConfig,
}

/// The deciding state kept between syncs: parsed files, applied maps, labels.
pub struct Reconciler {
    dir: PathBuf,
    node_name: String,
    cache: ManifestCache,
    planner: Planner,
    labels: LabelWriter,
}

impl Reconciler {
    /// A reconciler for `dir` whose maps start empty.
    #[must_use]
    pub fn new(dir: PathBuf, node_name: String, slab_slots: u32) -> Self {
        Self {
            dir,
            node_name,
            cache: ManifestCache::default(),
            planner: Planner::new(slab_slots, REUSE_GRACE),
            labels: LabelWriter::default(),
        }
    }

    /// Reads the manifests again and writes what changed into the maps.
    pub fn sync(&mut self, datapath: &mut Datapath) -> Result<()> {
        let started = Instant::now();
        let loaded = manifest::load_dir(&self.dir, &self.cache);
        for e in &loaded.errors {
            error!("{e}");
        }
        let cluster = loaded.cluster();
        self.cache = loaded.cache;
        let (desired, warnings) = select::desired_state(&cluster, &self.node_name);
        for w in &warnings {
            warn!("{w}");
        }
        let (plan, errors) = self.planner.plan(&desired, Instant::now());
        for e in &errors {
            error!("{e}");
        }
        datapath.maps.apply(&plan.ops)?;
        let labels: HashMap<u32, String> = self
            .planner
            .frontends()
            .map(|f| (f.entry.id, f.service.to_string()))
            .collect();
        self.labels.sync(&mut datapath.maps, &labels)?;
        info!(
            frontends = desired.len(),
            ops = plan.ops.len(),
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "synced"
        );
        Ok(())
    }
}

/// Runs the agent until SIGINT or SIGTERM, then detaches and removes its pins.
pub async fn run(options: RunOptions) -> Result<()> {
    let mut datapath = Datapath::load(options.datapath.clone())?;
    let result = serve(&options, &mut datapath).await;
    datapath.shutdown();
    info!("detached and removed pins");
    result
}

async fn serve(options: &RunOptions, datapath: &mut Datapath) -> Result<()> {
    let mut reconciler = Reconciler::new(
        options.manifests.clone(),
        options.node_name.clone(),
        options.datapath.slab_slots,
    );
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .context("creating the file watcher")?;
    watcher
        .watch(&options.manifests, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", options.manifests.display()))?;

    reconciler.sync(datapath)?;
    println!("lb-agent ready");
    info!(manifests = %options.manifests.display(), "ready");

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut scan = tokio::time::interval(INTERFACE_SCAN);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Some(event) = events.recv() => {
                if !is_change(&event, &options.manifests) {
                    continue;
                }
                // Coalesce a burst of events (an editor's save is several) into one sync.
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
                if let Err(e) = reconciler.sync(datapath) {
                    error!("sync failed: {e:#}");
                }
            }
            _ = scan.tick() => {
                if let Err(e) = datapath.attach_new_pod_interfaces() {
                    warn!("scanning interfaces: {e:#}");
                }
            }
        }
    }
    Ok(())
}

/// Whether a watcher event may change the manifests (reads of our own do not).
fn is_change(event: &notify::Result<notify::Event>, dir: &Path) -> bool {
    match event {
        Ok(e) => {
            let relevant = !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths.iter().any(|p| crate::manifest::is_manifest(p));
            if relevant {
                debug!(paths = ?e.paths, kind = ?e.kind, "manifest change");
            }
            relevant
        }
        Err(e) => {
            warn!(dir = %dir.display(), "file watcher error: {e}; resyncing");
            true
        }
    }
}
