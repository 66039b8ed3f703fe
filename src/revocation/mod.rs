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
    /// Distribution-point URLs met in the certificates of verified client paths, per source,
    /// in discovery order, at most [`MAX_DISTRIBUTION_POINTS`] each; refreshed like
    /// `crl_urls` from then on. Only `tls::chain` adds to it, after the path is verified: a
    /// certificate that chains to no anchor of the source never takes a slot.
    discovered: Mutex<HashMap<String, Vec<String>>>,
    /// Woken when a distribution point is discovered, so that it gets a fetch task.
    pub changed: Notify,
    /// Woken when fetched data changed outside the refresh tasks (a distribution point fetched
    /// inside a handshake), so that the snapshot is rebuilt with it.
    pub rebuild: Notify,
    client: OnceLock<crl::HttpClient>,
    /// Distribution-point fetches in flight: one per URL serves every handshake that waits.
    inflight: Mutex<HashMap<String, Arc<Flight>>>,
    /// Distribution-point fetches from a handshake that failed (unreachable, an HTTP error),
    /// and when: for [`FAILED_FETCH_HOLD`] after a failure, handshakes do not ask again (the
    /// refresh task retries in the background), so a client whose distribution point is down
    /// does not make every one of its handshakes a fetch and a wait. A CRL that was fetched but
    /// did not verify is not held: that depends on the path of the handshake that asked.
    failed: Mutex<HashMap<String, Instant>>,
    /// Client OCSP (SPEC 9.3).
    pub ocsp: Arc<OcspState>,
}

/// How long after a failed distribution-point fetch handshakes take "no CRL" without asking
/// again (like the 5 s an OCSP error is cached).
pub const FAILED_FETCH_HOLD: Duration = Duration::from_secs(5);

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

    /// Remember a distribution point of `source`, named by a certificate of a verified path.
    /// False when the source already has [`MAX_DISTRIBUTION_POINTS`] (the URL is then never
    /// fetched).
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
    /// waits for the same URL. The CRL must be signed by one of `issuers` (the source's
    /// anchors and intermediates and the verified path's intermediates, never any other
    /// certificate a client sent). `None` when the
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
        if lock(&self.failed)
            .get(&key)
            .is_some_and(|at| at.elapsed() < FAILED_FETCH_HOLD)
        {
            return None;
        }
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
                            (this.crls.get(&source, &url), false)
                        }
                        Err(e) => {
                            // Whether it verifies depends on the path of the handshake that
                            // asked: not held against the others.
                            tracing::warn!(trust = %source, %url, error = %e, "distribution point CRL refused");
                            (None, false)
                        }
                    },
                    Ok(crl::Got::NotModified) => (None, false),
                    Err(e) => {
                        tracing::warn!(trust = %source, %url, error = %e, "distribution point fetch failed");
                        (None, true)
                    }
                }
            };
            let flight = flight.clone();
            let this = self.clone();
            let key = key.clone();
            // The fetch runs on its own thread and finishes even if every handshake that
            // waits for it gives up.
            std::thread::spawn(move || {
                let (result, unreachable) = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(fetch),
                    Err(_) => (None, false),
                };
                lock(&this.inflight).remove(&key);
                {
                    // At most MAX_DISTRIBUTION_POINTS keys per source: bounded. Only a fetch
                    // that failed (unreachable, an HTTP error) holds: the same for every client.
                    let mut failed = lock(&this.failed);
                    if unreachable {
                        failed.insert(key, Instant::now());
                    } else {
                        failed.remove(&key);
                    }
                }
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

/// How long a failed OCSP fetch is remembered: handshakes of the same certificate meanwhile
/// get the failure at once instead of each waiting for a responder that is down.
const OCSP_ERROR_TTL: Duration = Duration::from_secs(5);
/// OCSP answers kept per trust source at most.
const OCSP_CACHE_CAPACITY: usize = 10_000;

/// Counts fetched OCSP answers: `(trust source, result)`.
type Observer = Box<dyn Fn(&str, &str) + Send + Sync>;

/// What it takes to ask for a certificate's status again (the refresh for open connections).
#[derive(Clone)]
struct OcspTarget {
    leaf: CertificateDer<'static>,
    issuer: CertificateDer<'static>,
    url: String,
    timeout: Duration,
    /// Open connections of this certificate.
    users: usize,
}

/// Client OCSP (SPEC 9.3): the answer caches, the certificates with open connections, and the
/// counter that tells open connections to look again.
#[derive(Default)]
pub struct OcspState {
    /// One cache per trust source, with that source's `cache_max`.
    caches: Mutex<HashMap<String, (Duration, ocsp::Cache)>>,
    client: OnceLock<ocsp::HttpClient>,
    targets: Mutex<HashMap<ocsp::Key, OcspTarget>>,
    /// Moves whenever a kept status changes: connections re-check their identity when it did.
    epoch: std::sync::atomic::AtomicU64,
    /// Called with (trust source, result) for every answer fetched (not for cached ones).
    observer: OnceLock<Observer>,
    /// Whether any status was ever asked (connections skip the bookkeeping until then).
    asked: std::sync::atomic::AtomicBool,
}

/// An open connection's claim on its certificate's status refresh; released when dropped.
pub struct OcspUse {
    state: Arc<Revocation>,
    key: ocsp::Key,
}

impl Drop for OcspUse {
    fn drop(&mut self) {
        let mut targets = lock(&self.state.ocsp.targets);
        if let Some(t) = targets.get_mut(&self.key) {
            t.users = t.users.saturating_sub(1);
        }
    }
}

/// The `result` label of `certguard_ocsp_responses_total` for a fetch's outcome.
fn ocsp_result(r: &Result<ocsp::Answer, ocsp::OcspError>) -> &'static str {
    match r {
        Ok(a) => match a.status {
            ocsp::CertStatus::Good => "good",
            ocsp::CertStatus::Revoked { .. } => "revoked",
            ocsp::CertStatus::Unknown => "unknown",
        },
        Err(_) => "error",
    }
}

impl OcspState {
    /// Count every fetched answer through `f(trust source, result)`.
    pub fn set_observer(&self, f: impl Fn(&str, &str) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(f));
    }

    /// The counter open connections compare to learn that a kept status changed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    fn client(&self) -> ocsp::HttpClient {
        self.client.get_or_init(ocsp::http_client).clone()
    }

    fn cache(&self, trust: &str, cache_max: Duration) -> ocsp::Cache {
        let mut caches = lock(&self.caches);
        match caches.get(trust) {
            Some((max, cache)) if *max == cache_max => cache.clone(),
            _ => {
                let cache = ocsp::Cache::new(OCSP_CACHE_CAPACITY, cache_max, OCSP_ERROR_TTL);
                caches.insert(trust.to_owned(), (cache_max, cache.clone()));
                cache
            }
        }
    }

    /// The fetch of one status: request, POST, checks; counted once when it completes.
    fn fetch(
        self: &Arc<Self>,
        trust: &str,
        target: &OcspTarget,
    ) -> impl Future<Output = Result<ocsp::Answer, ocsp::OcspError>> + Send + 'static {
        let (this, client) = (self.clone(), self.client());
        let (trust, target) = (trust.to_owned(), target.clone());
        async move {
            let result = async {
                let request = ocsp::request(&target.leaf, &target.issuer)?;
                let der = ocsp::ask(&client, &target.url, request, target.timeout).await?;
                ocsp::check_response(
                    &der,
                    &target.leaf,
                    &target.issuer,
                    rustls_pki_types::UnixTime::now(),
                )
            }
            .await;
            if let Err(e) = &result {
                tracing::warn!(%trust, url = %target.url, error = %e, "OCSP: no valid answer");
            }
            if let Some(observe) = this.observer.get() {
                observe(&trust, ocsp_result(&result));
            }
            result
        }
    }

    /// `leaf`'s status for trust source `trust`: the kept answer, or the responder's, waiting
    /// at most `timeout` (one request serves every handshake asking about the same
    /// certificate). Called from inside a handshake.
    pub fn status(
        self: &Arc<Self>,
        trust: &Arc<str>,
        settings: &crate::config::Ocsp,
        leaf: &CertificateDer<'_>,
        issuer: &CertificateDer<'_>,
        url: String,
    ) -> Result<ocsp::Answer, ocsp::OcspError> {
        let key = ocsp::Key::new(trust.clone(), leaf);
        let cache = self.cache(trust, settings.cache_max);
        self.asked.store(true, std::sync::atomic::Ordering::Release);
        let target = {
            let mut targets = lock(&self.targets);
            let t = targets.entry(key.clone()).or_insert_with(|| OcspTarget {
                leaf: leaf.clone().into_owned(),
                issuer: issuer.clone().into_owned(),
                url: url.clone(),
                timeout: settings.timeout,
                users: 0,
            });
            t.url = url;
            t.timeout = settings.timeout;
            t.clone()
        };
        if let Some(answer) = cache.get(&key, rustls_pki_types::UnixTime::now()) {
            return Ok(answer);
        }
        let before = cache.changes();
        let fetch = self.fetch(trust, &target);
        let waited = {
            let (cache, key) = (cache.clone(), key.clone());
            run_blocking(
                settings.timeout,
                async move { cache.status(&key, fetch).await },
            )
        };
        if cache.changes() != before {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        waited.unwrap_or(Err(ocsp::OcspError::Timeout(settings.timeout)))
    }

    /// Mark one open connection of `leaf` (admitted by `trust`) for the status refresh, when
    /// certguard asked about it; released when the returned value is dropped.
    pub fn open(
        state: &Arc<Revocation>,
        trust: &Arc<str>,
        leaf: &CertificateDer<'_>,
    ) -> Option<OcspUse> {
        if !state.ocsp.asked.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let key = ocsp::Key::new(trust.clone(), leaf);
        let mut targets = lock(&state.ocsp.targets);
        let t = targets.get_mut(&key)?;
        t.users += 1;
        Some(OcspUse {
            state: state.clone(),
            key,
        })
    }

    /// Ask again about every certificate of `trust` with open connections whose answer is at
    /// least `refresh` old; a changed status moves the epoch, so open connections see it.
    pub async fn refresh(self: &Arc<Self>, trust: &str, settings: &crate::config::Ocsp) {
        let cache = self.cache(trust, settings.cache_max);
        let due = cache.keys_due(rustls_pki_types::UnixTime::now(), settings.refresh);
        let targets: Vec<(ocsp::Key, OcspTarget)> = {
            let mut all = lock(&self.targets);
            // Forget certificates nobody is connected with and that are no longer cached.
            all.retain(|k, t| {
                t.users > 0 || cache.get(k, rustls_pki_types::UnixTime::now()).is_some()
            });
            due.into_iter()
                .filter_map(|k| {
                    let t = all.get(&k).filter(|t| t.users > 0)?.clone();
                    Some((k, t))
                })
                .collect()
        };
        for (key, target) in targets {
            let before = cache.changes();
            let _ = cache.refresh(&key, self.fetch(trust, &target)).await;
            if cache.changes() != before {
                self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }
}
