//! Revocation that keeps itself fresh (SPEC 9.2 and 9.3): CRLs fetched over HTTP (configured
//! URLs and allowed distribution points) and client OCSP. Everything here runs off the request
//! path; a handshake waits only for a first fetch it cannot do without, within its deadline.
//!
//! [`Revocation`] is the state that outlives snapshots: a reload keeps the CRLs already
//! fetched, and a newly fetched CRL makes a new snapshot (`crate::refresh`).

pub mod crl;
pub mod ocsp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

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
    client: OnceLock<crl::HttpClient>,
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
