//! Reload: rebuild the whole snapshot from the config file off the request path, swap it in
//! atomically, keep the last good one when anything fails, and publish the lifecycle gauges.

use std::path::Path;

use crate::config::{Config, TrustKind};
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
    let result = build(path, current);
    match result {
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
    }
}

fn build(path: &Path, current: &Current) -> Result<Snapshot, ReloadError> {
    let config = Config::load(path)?;
    let previous = current.load();
    Ok(Snapshot::build(config, current.next_generation(), Some(&previous))?)
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
}

/// Set the gauges that describe a snapshot (generation, CRL nextUpdate, server certificate
/// notAfter, overdue pinned reviews) and log overdue pinned entries.
pub fn publish(metrics: &Metrics, snapshot: &Snapshot) {
    let config = &snapshot.config;
    metrics.set_generation(snapshot.generation);
    metrics.init_trust_sources(config.trust.iter().map(|t| &*t.name));
    let mut crls = Vec::new();
    let mut overdue = Vec::new();
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
                let mut n = 0;
                for entry in &pinned.entries {
                    if let Some(review_by) = entry.review_by.filter(|d| *d < today) {
                        n += 1;
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
                overdue.push((source.name.to_string(), n));
            }
        }
    }
    metrics.set_crl_next_updates(&crls);
    metrics.set_pinned_review_overdue(&overdue);
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
