//! Prometheus metrics (SPEC section 6): one struct owning its `Registry`, no global statics.
//! Label values come only from config names and fixed enums.

use std::time::Duration;

use crate::proxy::{Reason, UpstreamErrorKind};
use crate::tls::Outcome;

/// Every certguard metric, registered in `registry`.
pub struct Metrics {
    pub registry: prometheus::Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        todo!("metrics helper")
    }

    /// Zero-initialise handshake outcome counters for these trust source names (plus `none`)
    /// and the reload counters, so `rate()` works from the first scrape.
    pub fn init_trust_sources<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let _ = names.into_iter();
        todo!("metrics helper")
    }

    pub fn handshake(&self, trust: Option<&str>, outcome: Outcome, duration: Duration) {
        let _ = (trust, outcome, duration);
        todo!("metrics helper")
    }

    pub fn connection_opened(&self) {
        todo!("metrics helper")
    }

    pub fn connection_closed(&self) {
        todo!("metrics helper")
    }

    /// One request decision. `route` is `None` for requests answered before routing (400/421).
    pub fn request(&self, route: Option<&str>, allowed: bool, reason: Reason, code: u16, duration: Duration) {
        let _ = (route, allowed, reason, code, duration);
        todo!("metrics helper")
    }

    pub fn upstream_duration(&self, upstream: &str, duration: Duration) {
        let _ = (upstream, duration);
        todo!("metrics helper")
    }

    pub fn upstream_error(&self, upstream: &str, kind: UpstreamErrorKind) {
        let _ = (upstream, kind);
        todo!("metrics helper")
    }

    pub fn reload(&self, success: bool) {
        let _ = success;
        todo!("metrics helper")
    }

    pub fn set_generation(&self, generation: u64) {
        let _ = generation;
        todo!("metrics helper")
    }

    /// Replace all CRL nextUpdate gauges with these `(trust, file base name, unix seconds)`.
    pub fn set_crl_next_updates(&self, crls: &[(String, String, i64)]) {
        let _ = crls;
        todo!("metrics helper")
    }

    pub fn set_server_cert_not_after(&self, unix_seconds: i64) {
        let _ = unix_seconds;
        todo!("metrics helper")
    }

    /// Replace the overdue-review gauges: `(trust, number of overdue entries)`.
    pub fn set_pinned_review_overdue(&self, per_trust: &[(String, usize)]) {
        let _ = per_trust;
        todo!("metrics helper")
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        todo!("metrics helper")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
