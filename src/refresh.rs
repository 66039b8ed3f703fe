//! Keeping revocation data fresh at run time (SPEC 9.2): one task per CRL URL (a source's
//! `crl_urls` and the distribution points met so far) fetches on schedule, hands what passed
//! the checks to the shared store, keeps it in the on-disk cache, and rebuilds the snapshot,
//! so that a new CRL reaches new handshakes and, through the generation, open connections.
//! A failed or refused fetch changes nothing: the last good CRL keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::config::{CaTrust, Config, TrustKind};
use crate::metrics::Metrics;
use crate::revocation::crl::{self, Fetched, Got};
use crate::revocation::Revocation;
use crate::snapshot::{Current, Snapshot};

/// How often a distribution point is refreshed (its source names no `refresh` for it).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// A failed or refused fetch is tried again after this long, or after `refresh` if shorter.
const RETRY: Duration = Duration::from_secs(30);
/// How often the supervisor looks for URLs added or removed, besides reloads and discoveries.
const RESCAN: Duration = Duration::from_secs(60);

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The CA certificates a source's CRLs may be signed by: its anchors and intermediates.
fn issuers(ca: &CaTrust) -> Vec<CertificateDer<'static>> {
    ca.anchors
        .iter()
        .chain(&ca.intermediates)
        .cloned()
        .collect()
}

fn ca_source<'c>(config: &'c Config, source: &str) -> Option<&'c CaTrust> {
    config.trust.iter().find_map(|s| match &s.kind {
        TrustKind::Ca(ca) if &*s.name == source => Some(ca),
        _ => None,
    })
}

/// Load the cached CRL of every URL of every CA source into `revocation` (at start, before
/// the first snapshot: a restart serves with them before any fetch). A cached CRL that does
/// not pass the checks is ignored.
pub fn load_cache(config: &Config, revocation: &Revocation) {
    for source in &config.trust {
        let TrustKind::Ca(ca) = &source.kind else {
            continue;
        };
        let Some(dir) = &ca.crl_cache_dir else {
            continue;
        };
        for url in revocation.urls(&source.name, ca) {
            load_cached(dir, &source.name, ca, &url, revocation);
        }
    }
}

fn load_cached(dir: &Path, source: &str, ca: &CaTrust, url: &str, revocation: &Revocation) {
    if revocation.crls.get(source, url).is_some() {
        return;
    }
    let Some(body) = crl::read_cache(dir, url) else {
        return;
    };
    match crl::check(url, &body, &issuers(ca), None) {
        Ok((crl, signer)) => {
            tracing::info!(trust = source, url, "CRL loaded from the cache");
            revocation.crls.put(
                source,
                Fetched {
                    url: url.to_owned(),
                    crl,
                    etag: None,
                    last_modified: None,
                    checked_at: 0,
                    signer,
                },
            );
        }
        Err(e) => tracing::warn!(trust = source, url, error = %e, "cached CRL ignored"),
    }
}

/// Build a new snapshot from the current config with the revocation data now at hand, and
/// swap it in (serialized with reloads).
pub fn rebuild(current: &Current, metrics: &Metrics) {
    let _serialized = current
        .reload_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let previous = current.load();
    match Snapshot::build(
        previous.config.clone(),
        previous.generation + 1,
        Some(&previous),
        &current.revocation,
    ) {
        Ok(snapshot) => {
            crate::reload::publish(metrics, &snapshot);
            tracing::info!(
                generation = snapshot.generation,
                "revocation data changed: snapshot rebuilt"
            );
            current.store(snapshot);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot rebuild the snapshot with the new revocation data; the previous one keeps serving");
        }
    }
}

/// Start the supervisor: it keeps one fetch task per (source, URL) of the current config and
/// the distribution points discovered, following reloads.
pub fn spawn(current: Arc<Current>, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
        let mut generations = current.subscribe();
        loop {
            let snap = current.load();
            let mut wanted = Vec::new();
            for source in &snap.config.trust {
                if let TrustKind::Ca(ca) = &source.kind {
                    for url in current.revocation.urls(&source.name, ca) {
                        wanted.push((source.name.to_string(), url));
                    }
                    if ca.ocsp.is_some() {
                        wanted.push((source.name.to_string(), OCSP_TASK.to_owned()));
                    }
                }
            }
            drop(snap);
            tasks.retain(|key, task| {
                let keep = wanted.contains(key) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for key in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(key) {
                    let (source, url) = slot.key().clone();
                    let task = if url == OCSP_TASK {
                        tokio::spawn(keep_ocsp_fresh(current.clone(), source))
                    } else {
                        tokio::spawn(keep_fresh(current.clone(), metrics.clone(), source, url))
                    };
                    slot.insert(task);
                }
            }
            tokio::select! {
                changed = generations.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = current.revocation.changed.notified() => {}
                () = current.revocation.rebuild.notified() => {
                    let (current, metrics) = (current.clone(), metrics.clone());
                    let _ = tokio::task::spawn_blocking(move || rebuild(&current, &metrics)).await;
                }
                () = tokio::time::sleep(RESCAN) => {}
            }
        }
        for task in tasks.values() {
            task.abort();
        }
    })
}

/// The supervisor's key for a source's OCSP refresh task (never a URL).
const OCSP_TASK: &str = "ocsp refresh";

/// Ask again, every `ocsp.refresh`, about the certificates of `source` with open connections,
/// until the source no longer uses OCSP.
async fn keep_ocsp_fresh(current: Arc<Current>, source: String) {
    loop {
        let settings = {
            let snap = current.load();
            match ca_source(&snap.config, &source).and_then(|ca| ca.ocsp.clone()) {
                Some(s) => s,
                None => return,
            }
        };
        tokio::time::sleep(settings.refresh).await;
        current.revocation.ocsp.refresh(&source, &settings).await;
    }
}

/// Fetch `url` of `source` on schedule until the source no longer has it.
async fn keep_fresh(current: Arc<Current>, metrics: Arc<Metrics>, source: String, url: String) {
    let label = crl::label(&url);
    loop {
        let snap = current.load();
        let Some(ca) = ca_source(&snap.config, &source) else {
            return;
        };
        let refresh = ca
            .crl_urls
            .iter()
            .find(|u| u.url == url)
            .map_or(DEFAULT_REFRESH, |u| u.refresh);
        let issuers = issuers(ca);
        let cache_dir = ca.crl_cache_dir.clone();
        drop(snap);
        if let Some(dir) = cache_dir.clone() {
            // Reading and checking a cached CRL (up to 64 MiB) blocks: off the runtime's
            // threads (with `runtime.single_thread` there is no other to serve meanwhile).
            let (current, source, url) = (current.clone(), source.clone(), url.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let snap = current.load();
                if let Some(ca) = ca_source(&snap.config, &source) {
                    load_cached(&dir, &source, ca, &url, &current.revocation);
                }
            })
            .await;
        }
        let revocation = &current.revocation;
        let previous = revocation.crls.get(&source, &url);
        // Fetched moments ago (a distribution point fetched inside a handshake): wait out the
        // rest of the refresh interval first.
        if let Some(p) = &previous {
            let age = u64::try_from(now_unix().saturating_sub(p.checked_at)).unwrap_or(0);
            if age < refresh.as_secs() {
                tokio::time::sleep(Duration::from_secs(refresh.as_secs() - age)).await;
                continue;
            }
        }
        // A distribution point's CRL may be signed by an intermediate only clients send (one
        // of a verified path, `tls::chain`): the signer of the CRL in use may sign the next.
        let mut issuers = issuers;
        if let Some(p) = &previous {
            if !issuers.contains(&p.signer) {
                issuers.push(p.signer.clone());
            }
        }
        let result = match crl::get(revocation.client(), &url, previous.as_deref()).await {
            Ok(Got::NotModified) => match &previous {
                Some(p) => {
                    revocation.crls.put(
                        &source,
                        Fetched {
                            url: url.clone(),
                            crl: p.crl.clone(),
                            etag: p.etag.clone(),
                            last_modified: p.last_modified.clone(),
                            checked_at: now_unix(),
                            signer: p.signer.clone(),
                        },
                    );
                    Ok("not_modified")
                }
                // A 304 to an unconditional GET: nothing to use.
                None => Err(crl::FetchError::Status(304)),
            },
            Ok(Got::Body {
                body,
                etag,
                last_modified,
            }) => match check_off_runtime(&url, &body, &issuers, previous.as_ref()).await {
                Ok((crl, signer)) => {
                    let same = previous
                        .as_ref()
                        .is_some_and(|p| p.crl.der.as_ref() == crl.der.as_ref());
                    revocation.crls.put(
                        &source,
                        Fetched {
                            url: url.clone(),
                            crl,
                            etag,
                            last_modified,
                            checked_at: now_unix(),
                            signer,
                        },
                    );
                    if let Some(dir) = cache_dir.clone() {
                        let (source, url) = (source.clone(), url.clone());
                        let _ = tokio::task::spawn_blocking(move || {
                            if let Err(e) = crl::write_cache(&dir, &url, &body) {
                                tracing::warn!(trust = %source, %url, dir = %dir.display(), error = %e, "cannot write the CRL cache");
                            }
                        })
                        .await;
                    }
                    if same {
                        Ok("not_modified")
                    } else {
                        tracing::info!(trust = %source, %url, "new CRL fetched");
                        let (current, metrics) = (current.clone(), metrics.clone());
                        // Building a snapshot parses every CRL: off the runtime's threads.
                        let _ =
                            tokio::task::spawn_blocking(move || rebuild(&current, &metrics)).await;
                        Ok("updated")
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let retry = match result {
            Ok(outcome) => {
                metrics.crl_fetch(&source, outcome);
                metrics.crl_fetched(&source, &label, now_unix());
                false
            }
            Err(e) => {
                metrics.crl_fetch(&source, e.result());
                tracing::warn!(trust = %source, %url, error = %e, "CRL fetch failed; the last good CRL (if any) keeps serving");
                true
            }
        };
        let next_update = revocation
            .crls
            .get(&source, &url)
            .and_then(|f| f.crl.next_update);
        tokio::time::sleep(next_delay(refresh, retry, next_update, now_unix())).await;
    }
}

/// [`crl::check`] on a blocking thread: a large CRL takes a while to parse.
async fn check_off_runtime(
    url: &str,
    body: &bytes::Bytes,
    issuers: &[CertificateDer<'static>],
    previous: Option<&Arc<Fetched>>,
) -> Result<(crate::config::CrlFile, CertificateDer<'static>), crl::FetchError> {
    let (url, body, issuers) = (url.to_owned(), body.clone(), issuers.to_vec());
    let current = previous.map(|p| p.crl.clone());
    tokio::task::spawn_blocking(move || crl::check(&url, &body, &issuers, current.as_ref()))
        .await
        .unwrap_or_else(|e| Err(crl::FetchError::Invalid(format!("check failed: {e}"))))
}

/// When to fetch again: after `refresh` (sooner after a failure), and once the CRL's
/// nextUpdate has passed if that comes first.
fn next_delay(refresh: Duration, failed: bool, next_update: Option<i64>, now: i64) -> Duration {
    let mut delay = if failed { refresh.min(RETRY) } else { refresh };
    if let Some(next) = next_update {
        let until = u64::try_from(next.saturating_sub(now).saturating_add(1)).unwrap_or(0);
        if !failed && until > 0 {
            delay = delay.min(Duration::from_secs(until));
        }
    }
    delay.max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_schedule() {
        let five = Duration::from_secs(300);
        assert_eq!(next_delay(five, false, None, 0), five);
        // Refetched once nextUpdate has passed, if that comes first.
        assert_eq!(
            next_delay(five, false, Some(60), 0),
            Duration::from_secs(61)
        );
        assert_eq!(next_delay(five, false, Some(1_000), 0), five);
        // Failures retry within refresh.
        assert_eq!(next_delay(five, true, Some(60), 0), RETRY);
        assert_eq!(
            next_delay(Duration::from_secs(2), true, None, 0),
            Duration::from_secs(2)
        );
        // A past nextUpdate does not make the loop spin.
        assert_eq!(next_delay(five, false, Some(-10), 0), five);
    }
}
