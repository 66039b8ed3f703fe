//! Reload: rebuild the whole snapshot from the config file off the request path, swap it in
//! atomically, keep the last good one when anything fails, and publish the lifecycle gauges.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;

use crate::config::{Config, FileDigests, TrustKind};
use crate::metrics::Metrics;
use crate::snapshot::{Current, Snapshot};

/// Why a reload was rejected (the previous snapshot keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Load `path`, build a new snapshot and swap it in. Returns the new generation.
pub fn reload(path: &Path, current: &Current, metrics: &Metrics) -> Result<u64, ReloadError> {
    reload_tracked(path, current, metrics).0
}

/// [`reload`], also returning every file the attempt read with the digest of what it read,
/// whether or not the attempt succeeded: the watcher retries when one of them changes.
pub fn reload_tracked(
    path: &Path,
    current: &Current,
    metrics: &Metrics,
) -> (Result<u64, ReloadError>, FileDigests) {
    let _serialized = current
        .reload_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (loaded, digests) = Config::load_tracked(path);
    let result = loaded.map_err(ReloadError::from).and_then(|config| {
        let previous = current.load();
        // Reloads are serialized by `reload_lock`, so no other snapshot is stored meanwhile and
        // a failed build uses up no generation number.
        Ok(Snapshot::build(
            config,
            previous.generation + 1,
            Some(&previous),
        )?)
    });
    let result = match result {
        Ok(snapshot) => {
            let generation = snapshot.generation;
            warn_restart_needed(&current.load().config, &snapshot.config);
            publish(metrics, &snapshot);
            current.store(snapshot);
            metrics.reload(true);
            tracing::info!(generation, "configuration reloaded");
            Ok(generation)
        }
        Err(e) => {
            metrics.reload(false);
            tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving");
            Err(e)
        }
    };
    (result, digests)
}

fn warn_restart_needed(old: &Config, new: &Config) {
    if old.listen.address != new.listen.address {
        tracing::warn!(old = %old.listen.address, new = %new.listen.address, "listen.address changed: takes effect only after a restart");
    }
    if old.admin.address != new.admin.address {
        tracing::warn!(old = %old.admin.address, new = %new.admin.address, "admin.address changed: takes effect only after a restart");
    }
    if old.listen.max_connections != new.listen.max_connections {
        tracing::warn!("listen.max_connections changed: takes effect only after a restart");
    }
    // `runtime.shutdown_grace` is read at shutdown time, so it reloads like everything else.
    if old.runtime.worker_threads != new.runtime.worker_threads {
        tracing::warn!(old = ?old.runtime.worker_threads, new = ?new.runtime.worker_threads, "runtime.worker_threads changed: takes effect only after a restart");
    }
    if old.reload.watch != new.reload.watch {
        tracing::warn!(
            old = old.reload.watch,
            new = new.reload.watch,
            "reload.watch changed: takes effect only after a restart"
        );
    }
    if old.reload.debounce != new.reload.debounce {
        tracing::warn!(old = ?old.reload.debounce, new = ?new.reload.debounce, "reload.debounce changed: takes effect only after a restart");
    }
    if old.logging.level != new.logging.level {
        tracing::warn!(old = %old.logging.level, new = %new.logging.level, "logging.level changed: takes effect only after a restart");
    }
    if old.logging.format != new.logging.format {
        tracing::warn!(old = ?old.logging.format, new = ?new.logging.format, "logging.format changed: takes effect only after a restart");
    }
}

/// Set the gauges that describe a snapshot (generation, CRL nextUpdate, server certificate
/// notAfter, the pinned review dates behind the overdue gauge) and log overdue pinned entries.
/// The overdue gauge itself is computed at scrape time; the log line only here.
pub fn publish(metrics: &Metrics, snapshot: &Snapshot) {
    let config = &snapshot.config;
    metrics.set_generation(snapshot.generation);
    metrics.init_trust_sources(config.trust.iter().map(|t| &*t.name));
    let mut crls = Vec::new();
    let mut reviews = Vec::new();
    let today = time::OffsetDateTime::now_utc().date();
    for source in &config.trust {
        match &source.kind {
            TrustKind::Ca(ca) => {
                for crl in &ca.crls {
                    if let Some(next) = crl.next_update {
                        let file = crl
                            .path
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        crls.push((source.name.to_string(), file, next));
                    }
                }
            }
            TrustKind::Pinned(pinned) => {
                for entry in &pinned.entries {
                    if let Some(review_by) = entry.review_by.filter(|d| *d < today) {
                        tracing::warn!(
                            trust = %source.name,
                            pinned = %entry.name,
                            owner = entry.owner.as_deref().unwrap_or("-"),
                            review_by = %review_by,
                            action = ?pinned.on_overdue_review,
                            "pinned certificate is past its review_by date"
                        );
                    }
                }
                let dates = pinned.entries.iter().filter_map(|e| e.review_by).collect();
                reviews.push((source.name.to_string(), dates));
            }
        }
    }
    metrics.set_crl_next_updates(&crls);
    metrics.set_pinned_reviews(reviews);
    if let Some(not_after) = config
        .listen
        .cert_chain
        .first()
        .and_then(|c| crate::identity::CertInfo::from_chain(std::slice::from_ref(c)).ok())
        .map(|c| c.not_after)
    {
        metrics.set_server_cert_not_after(not_after);
    }
}

/// Watch the config file and every file it names; reload (debounced) when any of them changes.
///
/// The parent directories are watched rather than the files: editors and Kubernetes replace
/// files by rename or by swapping a `..data` symlink, which a watch on the old inode misses.
/// A change is confirmed by comparing the files' contents before reloading, so unrelated
/// events in the same directories cost one read and nothing else.
pub fn spawn_watcher(
    current: Arc<Current>,
    metrics: Arc<Metrics>,
    debounce: Duration,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event.is_ok());
    })?;
    let mut dirs = HashSet::new();
    let files = watched_files(&current);
    update_watches(&mut watcher, &mut dirs, &files);
    let mut last = fingerprint(&files);
    Ok(tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the directories have been quiet for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let files = watched_files(&current);
            let now = fingerprint(&files);
            if now == last {
                continue;
            }
            last = now;
            tracing::info!("configuration files changed: reloading");
            let (c, m) = (current.clone(), metrics.clone());
            let path = current.load().config.source.clone();
            let result = tokio::task::spawn_blocking(move || reload(&path, &c, &m)).await;
            if let Ok(Ok(_)) = result {
                let files = watched_files(&current);
                update_watches(&mut watcher, &mut dirs, &files);
                // Files named only by the new config are part of the baseline from now on.
                last = fingerprint(&files);
            }
        }
    }))
}

fn watched_files(current: &Current) -> Vec<PathBuf> {
    let snapshot = current.load();
    let mut files = vec![snapshot.config.source.clone()];
    files.extend(snapshot.config.files.iter().cloned());
    files.sort();
    files.dedup();
    files
}

fn update_watches(
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut HashSet<PathBuf>,
    files: &[PathBuf],
) {
    for file in files {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dirs.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                dirs.insert(dir);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
}

/// SHA-256 over the names and contents of `files` (a missing file hashes as empty).
fn fingerprint(files: &[PathBuf]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in files {
        ctx.update(file.as_os_str().as_encoded_bytes());
        ctx.update(&[0]);
        match std::fs::read(file) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"<unreadable>"),
        }
    }
    ctx.finish().as_ref().to_vec()
}
