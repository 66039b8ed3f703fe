//! Revocation that keeps itself fresh (SPEC 9.2 and 9.3): CRLs fetched over HTTP (configured
//! URLs and allowed distribution points) and client OCSP. Everything here runs off the request
//! path; a handshake waits only for a first fetch it cannot do without, within its deadline.
//!
//! [`Revocation`] is the state that outlives snapshots: a reload keeps the CRLs already
//! fetched, and a newly fetched CRL makes a new snapshot (`crate::refresh`).

pub mod crl;
pub mod ocsp;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;

use crate::config::{CaTrust, MAX_DISTRIBUTION_POINTS};

/// Revocation data shared by every snapshot.
#[derive(Default)]
pub struct Revocation {
    /// The CRLs fetched from URLs (configured and distribution points), per source.
    pub crls: crl::Store,
    /// Distribution-point URLs met in certificates per source, in discovery order, at most
    /// [`MAX_DISTRIBUTION_POINTS`] each; refreshed like `crl_urls` from then on.
    discovered: Mutex<HashMap<String, Vec<String>>>,
    /// Woken when a distribution point is discovered, so that it gets a fetch task.
    pub changed: Notify,
    /// Woken when fetched data changed outside the refresh tasks (a distribution point fetched
    /// inside a handshake), so that the snapshot is rebuilt with it.
    pub rebuild: Notify,
    client: OnceLock<crl::HttpClient>,
    /// Distribution-point fetches in flight: one per URL serves every handshake that waits.
    inflight: Mutex<HashMap<String, Arc<Flight>>>,
}

/// One fetch in flight and the handshakes waiting for it.
#[derive(Default)]
struct Flight {
    done: Mutex<Option<Option<Arc<crl::Fetched>>>>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Revocation {
    /// The HTTP(S) client for fetches (built on first use).
    pub fn client(&self) -> &crl::HttpClient {
        self.client.get_or_init(crl::client)
    }

    /// Every CRL URL of `source` to keep fresh: its `crl_urls`, then the distribution points
    /// discovered so far.
    pub fn urls(&self, source: &str, ca: &CaTrust) -> Vec<String> {
        let mut urls: Vec<String> = ca.crl_urls.iter().map(|u| u.url.clone()).collect();
        if let Some(found) = lock(&self.discovered).get(source) {
            urls.extend(
                found
                    .iter()
                    .filter(|u| !urls.contains(u))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        urls
    }

    /// Remember a distribution point of `source`. False when the source already has
    /// [`MAX_DISTRIBUTION_POINTS`] (the URL is then never fetched).
    pub fn discover(&self, source: &str, url: &str) -> bool {
        let mut discovered = lock(&self.discovered);
        let found = discovered.entry(source.to_owned()).or_default();
        if found.iter().any(|u| u == url) {
            return true;
        }
        if found.len() >= MAX_DISTRIBUTION_POINTS {
            return false;
        }
        found.push(url.to_owned());
        true
    }

    /// The `crl_urls` entries (source, URL) of `config` that have no CRL yet, fetched or
    /// cached: until there are none, certguard is not ready (SPEC 9.2).
    pub fn missing(&self, config: &crate::config::Config) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for source in &config.trust {
            if let crate::config::TrustKind::Ca(ca) = &source.kind {
                for u in &ca.crl_urls {
                    if self.crls.get(&source.name, &u.url).is_none() {
                        out.push((source.name.to_string(), u.url.clone()));
                    }
                }
            }
        }
        out
    }

    /// The CRLs in use for `source` from its URLs (configured and discovered).
    pub fn fetched_crls(&self, source: &str, ca: &CaTrust) -> Vec<Arc<crl::Fetched>> {
        let urls = self.urls(source, ca);
        self.crls.for_urls(source, urls.iter().map(String::as_str))
    }
}

impl Revocation {
    /// The first fetch of distribution point `url` of `source`, from inside a handshake that
    /// needs it (SPEC 9.2): waits at most `limit`, and one fetch serves every handshake that
    /// waits for the same URL. The CRL must be signed by one of `issuers`. `None` when the
    /// fetch failed or took too long (`unknown_status` then decides); a CRL that arrives late
    /// is still kept for the next handshakes.
    pub fn fetch_distribution_point(
        self: &Arc<Self>,
        source: &str,
        url: &str,
        issuers: Vec<CertificateDer<'static>>,
        limit: Duration,
    ) -> Option<Arc<crl::Fetched>> {
        if let Some(f) = self.crls.get(source, url) {
            return Some(f);
        }
        let key = format!("{source}\n{url}");
        let (flight, leader) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    inflight.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if leader {
            let this = self.clone();
            let (source, url) = (source.to_owned(), url.to_owned());
            let fetch = async move {
                let client = crl::client();
                match crl::get(&client, &url, None).await {
                    Ok(crl::Got::Body {
                        body,
                        etag,
                        last_modified,
                    }) => match crl::check(&url, &body, &issuers, None) {
                        Ok((crl, signer)) => {
                            this.crls.put(
                                &source,
                                crl::Fetched {
                                    url: url.clone(),
                                    crl,
                                    etag,
                                    last_modified,
                                    checked_at: time::OffsetDateTime::now_utc().unix_timestamp(),
                                    signer,
                                },
                            );
                            this.rebuild.notify_one();
                            this.crls.get(&source, &url)
                        }
                        Err(e) => {
                            tracing::warn!(trust = %source, %url, error = %e, "distribution point CRL refused");
                            None
                        }
                    },
                    Ok(crl::Got::NotModified) => None,
                    Err(e) => {
                        tracing::warn!(trust = %source, %url, error = %e, "distribution point fetch failed");
                        None
                    }
                }
            };
            let flight = flight.clone();
            let this = self.clone();
            let key = key.clone();
            // The fetch runs on its own thread and finishes even if every handshake that
            // waits for it gives up.
            std::thread::spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()
                    .and_then(|rt| rt.block_on(fetch));
                lock(&this.inflight).remove(&key);
                *lock(&flight.done) = Some(result);
                flight.ready.notify_all();
                // From now on the URL is refreshed like a `crl_urls` entry.
                this.changed.notify_one();
            });
        }
        wait_blocking(|| {
            let deadline = Instant::now() + limit;
            let mut done = lock(&flight.done);
            while done.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                done = flight
                    .ready
                    .wait_timeout(done, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            done.clone().flatten()
        })
    }
}

/// Run `wait`, which blocks, from code that runs on the async runtime (a verifier inside a
/// handshake). On a multi-threaded runtime the worker hands its other tasks over first, so
/// that one handshake waiting for a responder stalls nothing else; elsewhere it just blocks.
pub fn wait_blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// Run `fut` to completion from synchronous code inside a handshake, waiting at most `limit`
/// (see [`wait_blocking`]); `None` when it took longer.
pub fn run_blocking<T: Send + 'static>(
    limit: Duration,
    fut: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| {
                handle.block_on(async { tokio::time::timeout(limit, fut).await.ok() })
            })
        }
        _ => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()
                    .and_then(|rt| {
                        rt.block_on(async { tokio::time::timeout(limit, fut).await.ok() })
                    });
                let _ = tx.send(result);
            });
            rx.recv_timeout(limit + Duration::from_secs(1))
                .ok()
                .flatten()
        }
    }
}

/// The `http://` and `https://` CRL distribution points `cert` names.
pub fn distribution_points(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ext in x509.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    for name in names {
                        if let GeneralName::URI(uri) = name {
                            if uri.starts_with("http://") || uri.starts_with("https://") {
                                out.push((*uri).to_owned());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}
