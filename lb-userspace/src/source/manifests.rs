//! The manifest source: a watched directory of YAML/JSON files.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, warn};

use super::{Changes, Source, SourceStats};
use crate::{
    manifest::{self, ManifestCache},
    model::Cluster,
};

/// Manifests in a directory, re-read on every change.
pub struct ManifestSource {
    dir: PathBuf,
    cache: ManifestCache,
    cluster: Cluster,
    stats: Arc<SourceStats>,
    /// The directory was read by [`ManifestSource::preload`] and not yet
    /// handed out by a snapshot.
    preloaded: bool,
    _watcher: RecommendedWatcher,
}

impl ManifestSource {
    /// Watches `dir`; every change that may matter sends on `changed`.
    pub fn new(dir: PathBuf, changed: UnboundedSender<()>) -> Result<Self> {
        let dir_for_events = dir.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            if is_change(&event, &dir_for_events) {
                let _ = changed.send(());
            }
        })
        .context("creating the file watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(Self {
            dir,
            cache: ManifestCache::default(),
            cluster: Cluster::default(),
            stats: Arc::default(),
            preloaded: false,
            _watcher: watcher,
        })
    }

    /// Reads the directory now; the next snapshot gives what it read (the
    /// watch, started before, reports any change made since).
    pub fn preload(&mut self) {
        self.reload();
        self.preloaded = true;
    }

    fn reload(&mut self) {
        let loaded = manifest::load_dir(&self.dir, &self.cache);
        for e in &loaded.errors {
            error!("{e}");
        }
        self.stats
            .rejected
            .fetch_add(loaded.errors.len() as u64, Ordering::Relaxed);
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        self.cluster = loaded.cluster();
        self.cache = loaded.cache;
    }
}

impl Source for ManifestSource {
    /// Rereads the directory: a few files, so everything counts as changed.
    fn snapshot(&mut self) -> (&Cluster, Changes) {
        if !std::mem::take(&mut self.preloaded) {
            self.reload();
        }
        (&self.cluster, Changes::all())
    }

    fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }
}

/// Whether a watcher event may change the manifests (reads of our own do not).
fn is_change(event: &notify::Result<notify::Event>, dir: &Path) -> bool {
    match event {
        Ok(e) => {
            let relevant = !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths.iter().any(|p| manifest::is_manifest(p));
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
