//! Prometheus metrics (SPEC sections 6 and 9.10): one struct owning its `Registry`, no global
//! statics. Label values come only from config names and fixed enums.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::tls::Outcome;
use crate::upstream::UpstreamErrorKind;

/// The `trust` label for handshakes no trust source admitted (and no CA source built a chain).
pub const TRUST_NONE: &str = "none";
/// The `route` label for requests answered before routing (400, 421).
pub const ROUTE_NONE: &str = "none";
/// The `reason` label of connections refused at `max_connections`.
const REFUSED_LIMIT: &str = "limit";

/// Handshake duration buckets, seconds: 1ms .. 10s.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Request and upstream duration buckets, seconds: 1ms .. 30s.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Request `reason` label values (SPEC section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Ok,
    NoRoute,
    NotAllowed,
    Revoked,
    BadRequest,
    SniMismatch,
    UpstreamError,
    /// Release 2 (SPEC 9.4).
    DenyListed,
    /// SPEC 9.6: `allow` refused it, and the route has `enforce: false`, so it was forwarded.
    NotEnforced,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Ok,
        Reason::NoRoute,
        Reason::NotAllowed,
        Reason::Revoked,
        Reason::BadRequest,
        Reason::SniMismatch,
        Reason::UpstreamError,
        Reason::DenyListed,
        Reason::NotEnforced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::NoRoute => "no_route",
            Reason::NotAllowed => "not_allowed",
            Reason::Revoked => "revoked",
            Reason::BadRequest => "bad_request",
            Reason::SniMismatch => "sni_mismatch",
            Reason::UpstreamError => "upstream_error",
            Reason::DenyListed => "deny_listed",
            Reason::NotEnforced => "not_enforced",
        }
    }
}

/// `certguard_stream_resets_total{reason}`: why certguard cut a body short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResetReason {
    /// The client let the stream make no progress for `idle_timeout`.
    #[error("stream stalled by the client")]
    Stalled,
    /// The client's identity no longer verifies under the current snapshot.
    #[error("client identity no longer valid")]
    Revoked,
}

impl ResetReason {
    /// `certguard_stream_resets_total{reason}` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Stalled => "client_stalled",
            ResetReason::Revoked => "revoked",
        }
    }

    /// Every label value, for metrics that start at 0.
    pub const ALL: [ResetReason; 2] = [ResetReason::Stalled, ResetReason::Revoked];
}

/// `certguard_ocsp_responses_total{result}` values.
pub const OCSP_RESULTS: [&str; 4] = ["good", "revoked", "unknown", "error"];

/// `certguard_crl_fetches_total{result}` values.
pub const CRL_FETCH_RESULTS: [&str; 4] = ["updated", "not_modified", "failed", "rejected"];
/// The `within` windows of `certguard_client_certificates_expiring`, in seconds.
pub const EXPIRY_WINDOWS: [(&str, i64); 3] =
    [("1d", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400)];

/// A gauge vector whose whole set of series is replaced at once: series missing from the new
/// set are removed, the others are updated in place, so a concurrent scrape never sees them
/// missing.
struct GaugeSet {
    vec: IntGaugeVec,
    labels: Mutex<Vec<Vec<String>>>,
}

impl GaugeSet {
    fn new(vec: IntGaugeVec) -> GaugeSet {
        GaugeSet {
            vec,
            labels: Mutex::new(Vec::new()),
        }
    }

    fn replace(&self, series: Vec<(Vec<String>, i64)>) {
        let mut labels = lock(&self.labels);
        for (values, v) in &series {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            self.vec.with_label_values(&values).set(*v);
        }
        for old in labels.iter() {
            if !series.iter().any(|(values, _)| values == old) {
                let old: Vec<&str> = old.iter().map(String::as_str).collect();
                // Err only means the series was already absent.
                let _ = self.vec.remove_label_values(&old);
            }
        }
        *labels = series.into_iter().map(|(values, _)| values).collect();
    }
}

/// Every certguard metric, registered in `registry`.
///
/// Cheap to call from the data path: every method is a label lookup plus an atomic update.
pub struct Metrics {
    /// The registry every metric below is registered in; `encode()` gathers from it.
    pub registry: Registry,
    tls_handshakes: IntCounterVec,
    tls_handshake_duration: HistogramVec,
    connections_active: IntGauge,
    requests: IntCounterVec,
    shadow_decisions: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_overflow: IntCounterVec,
    stream_resets: IntCounterVec,
    reloads: IntCounterVec,
    crl_fetches: IntCounterVec,
    crl_last_success: IntGaugeVec,
    ocsp_responses: IntCounterVec,
    last_reload_successful: IntGauge,
    last_reload_success_timestamp: Gauge,
    connections_refused: IntCounterVec,
    access_changes: IntCounterVec,
    config_generation: IntGauge,
    crl_next_update: IntGaugeVec,
    /// `(trust, file)` label sets of `crl_next_update` now exported, so that a replacement
    /// removes only the ones that went away (a reset would leave scrapes with no series).
    crl_labels: Mutex<Vec<(String, String)>>,
    server_cert_not_after: IntGauge,
    trust_anchor_not_after: GaugeSet,
    pinned_not_after: GaugeSet,
    clients_expiring: GaugeSet,
    pinned_review_overdue: IntGaugeVec,
    /// `(trust, when each of its pinned entries becomes overdue)` of the current snapshot. The
    /// overdue gauge is computed from these at every scrape, so a date passing on a running
    /// proxy counts.
    pinned_reviews: Mutex<Vec<(String, Vec<i64>)>>,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Lock `m`, ignoring poisoning: the guarded data are label lists, valid after any panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Register `c` in `registry`. The names and label sets are constants of this file, so a failure
/// here is a programming error (duplicate or malformed name), caught by the unit tests.
fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names in metrics.rs are valid and unique");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    register(registry, c)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    register(registry, g)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge definition");
    register(registry, g)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid histogram definition");
    register(registry, h)
}

impl Metrics {
    /// Create and register every SPEC 6 metric in a fresh registry.
    ///
    /// Series with fixed label sets that do not depend on config (reload results, handshake
    /// duration results, and the `none` trust source) start at 0.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            tls_handshakes: counter_vec(
                &r,
                "certguard_tls_handshakes_total",
                "TLS handshakes by the trust source that decided them and their outcome.",
                &["trust", "outcome"],
            ),
            tls_handshake_duration: histogram_vec(
                &r,
                "certguard_tls_handshake_duration_seconds",
                "Time from accept to the end of the TLS handshake, by result.",
                &["result"],
                HANDSHAKE_BUCKETS,
            ),
            connections_active: gauge(
                &r,
                "certguard_connections_active",
                "Client connections currently open.",
            ),
            requests: counter_vec(
                &r,
                "certguard_requests_total",
                "Requests by route, policy decision, reason and response status code.",
                &["route", "decision", "reason", "code"],
            ),
            shadow_decisions: counter_vec(
                &r,
                "certguard_shadow_decisions_total",
                "Requests on routes with shadow_allow, by route, the decision enforced and what \
                 shadow_allow would have decided (each allowed or denied).",
                &["route", "enforced", "shadow"],
            ),
            request_duration: histogram_vec(
                &r,
                "certguard_request_duration_seconds",
                "Time from request head received to response head sent, by route.",
                &["route"],
                REQUEST_BUCKETS,
            ),
            upstream_duration: histogram_vec(
                &r,
                "certguard_upstream_request_duration_seconds",
                "Time until the upstream returned response headers, by upstream.",
                &["upstream"],
                REQUEST_BUCKETS,
            ),
            upstream_errors: counter_vec(
                &r,
                "certguard_upstream_errors_total",
                "Failed upstream requests by upstream and kind (connect, timeout, reset, protocol, tls).",
                &["upstream", "kind"],
            ),
            upstream_overflow: counter_vec(
                &r,
                "certguard_upstream_overflow_total",
                "Requests answered 503 because a concurrency limit (limit=connection: \
                 listen.max_inflight_per_connection; limit=upstream: max_requests; \
                 limit=identity: listen.max_inflight_per_identity) stayed full until the \
                 upstream timeout.",
                &["upstream", "limit"],
            ),
            stream_resets: counter_vec(
                &r,
                "certguard_stream_resets_total",
                "Request or response bodies cut in flight, by reason (client_stalled: no \
                 progress for idle_timeout because of the client; revoked: identity no longer \
                 valid).",
                &["reason"],
            ),
            crl_fetches: counter_vec(
                &r,
                "certguard_crl_fetches_total",
                "CRL fetches from URLs by trust source and result (updated, not_modified, \
                 failed, rejected).",
                &["trust", "result"],
            ),
            ocsp_responses: counter_vec(
                &r,
                "certguard_ocsp_responses_total",
                "OCSP answers fetched for client certificates, by trust source and result (good, \
                 revoked, unknown, error = no valid answer); answers served from the cache are \
                 not counted.",
                &["trust", "result"],
            ),
            crl_last_success: gauge_vec(
                &r,
                "certguard_crl_last_success_timestamp_seconds",
                "When a CRL URL was last fetched successfully (updated or not modified), Unix \
                 seconds, by trust source and file (the URL's last path segment).",
                &["trust", "file"],
            ),
            reloads: counter_vec(
                &r,
                "certguard_reloads_total",
                "Configuration reload attempts by result.",
                &["result"],
            ),
            last_reload_successful: gauge(
                &r,
                "certguard_config_last_reload_successful",
                "1 if the last attempt to load the configuration (at start or reload) succeeded, else 0.",
            ),
            last_reload_success_timestamp: register(
                &r,
                Gauge::with_opts(Opts::new(
                    "certguard_config_last_reload_success_timestamp_seconds",
                    "When the configuration now serving was loaded, Unix seconds.",
                ))
                .expect("valid gauge definition"),
            ),
            connections_refused: counter_vec(
                &r,
                "certguard_connections_refused_total",
                "Client connections closed before their handshake, by reason (limit: max_connections).",
                &["reason"],
            ),
            access_changes: counter_vec(
                &r,
                "certguard_access_changes_total",
                "(selector, route) pairs that gained or lost access in a reload, by change \
                 (gained, lost).",
                &["change"],
            ),
            config_generation: gauge(
                &r,
                "certguard_config_generation",
                "Generation number of the active configuration snapshot.",
            ),
            crl_next_update: gauge_vec(
                &r,
                "certguard_crl_next_update_timestamp_seconds",
                "nextUpdate of each loaded CRL, Unix seconds, by trust source and file base name.",
                &["trust", "file"],
            ),
            crl_labels: Mutex::new(Vec::new()),
            server_cert_not_after: gauge(
                &r,
                "certguard_server_cert_not_after_timestamp_seconds",
                "notAfter of the serving certificate, Unix seconds.",
            ),
            trust_anchor_not_after: GaugeSet::new(gauge_vec(
                &r,
                "certguard_trust_anchor_not_after_timestamp_seconds",
                "Earliest notAfter among a CA trust source's anchors and intermediates, Unix seconds.",
                &["trust"],
            )),
            pinned_not_after: GaugeSet::new(gauge_vec(
                &r,
                "certguard_pinned_not_after_timestamp_seconds",
                "notAfter of each pinned entry that names a certificate file, Unix seconds.",
                &["trust", "pinned"],
            )),
            clients_expiring: GaugeSet::new(gauge_vec(
                &r,
                "certguard_client_certificates_expiring",
                "Inventory identities seen in the last 24 hours whose certificate's notAfter falls \
                 within the window (1d, 7d, 30d; each window counts the shorter ones too).",
                &["trust", "within"],
            )),
            pinned_review_overdue: gauge_vec(
                &r,
                "certguard_pinned_review_overdue",
                "Number of pinned entries past their review_by date, by trust source.",
                &["trust"],
            ),
            pinned_reviews: Mutex::new(Vec::new()),
            registry: r,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
            m.tls_handshake_duration.with_label_values(&[result]);
        }
        for change in ["gained", "lost"] {
            m.access_changes.with_label_values(&[change]);
        }
        for cut in ResetReason::ALL {
            m.stream_resets.with_label_values(&[cut.as_str()]);
        }
        m.connections_refused.with_label_values(&[REFUSED_LIMIT]);
        let build_info = gauge_vec(
            &m.registry,
            "certguard_build_info",
            "Always 1; the version label is the running certguard's version.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        register_process_metrics(&m.registry);
        m.init_trust_sources([]);
        m
    }

    /// Zero-initialise handshake outcome counters for these trust source names (plus `none`)
    /// and the reload counters, so `rate()` works from the first scrape.
    ///
    /// Safe to call again on every reload: existing series keep their counts, new names are
    /// added. Series of trust sources removed from the config stay (counters never go back).
    pub fn init_trust_sources<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names.into_iter().chain(std::iter::once(TRUST_NONE)) {
            for outcome in Outcome::ALL {
                // Looking a series up creates it at 0 if absent and leaves it alone otherwise.
                self.tls_handshakes
                    .with_label_values(&[name, outcome.as_str()]);
            }
        }
        for result in ["success", "failure"] {
            self.reloads.with_label_values(&[result]);
        }
    }

    /// One finished (or failed, or timed out) handshake. `trust` is `None` when no trust source
    /// is responsible for the outcome; it is then counted under `trust="none"`.
    pub fn handshake(&self, trust: Option<&str>, outcome: Outcome, duration: Duration) {
        let trust = trust.unwrap_or(TRUST_NONE);
        self.tls_handshakes
            .with_label_values(&[trust, outcome.as_str()])
            .inc();
        let result = if outcome == Outcome::Success {
            "success"
        } else {
            "failure"
        };
        self.tls_handshake_duration
            .with_label_values(&[result])
            .observe(duration.as_secs_f64());
    }

    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_active.inc();
    }

    /// A client connection was closed (pair with every `connection_opened`).
    pub fn connection_closed(&self) {
        self.connections_active.dec();
    }

    /// One request decision. `route` is `None` for requests answered before routing (400/421).
    pub fn request(
        &self,
        route: Option<&str>,
        allowed: bool,
        reason: Reason,
        code: u16,
        duration: Duration,
    ) {
        let route = route.unwrap_or(ROUTE_NONE);
        let decision = if allowed { "allowed" } else { "denied" };
        let mut buf = [0u8; 5];
        self.requests
            .with_label_values(&[
                route,
                decision,
                reason.as_str(),
                status_label(code, &mut buf),
            ])
            .inc();
        self.request_duration
            .with_label_values(&[route])
            .observe(duration.as_secs_f64());
    }

    /// Zero-initialise the four shadow-decision series of each route that has `shadow_allow`.
    /// Safe to call on every reload: counts are kept.
    pub fn init_shadow_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            for enforced in ["allowed", "denied"] {
                for shadow in ["allowed", "denied"] {
                    self.shadow_decisions
                        .with_label_values(&[route, enforced, shadow]);
                }
            }
        }
    }

    /// One request on a route with `shadow_allow`: what was enforced, what the shadow list
    /// said (true = allowed).
    pub fn shadow_decision(&self, route: &str, enforced: bool, shadow: bool) {
        let word = |allowed: bool| if allowed { "allowed" } else { "denied" };
        self.shadow_decisions
            .with_label_values(&[route, word(enforced), word(shadow)])
            .inc();
    }

    /// Time until `upstream` returned response headers.
    pub fn upstream_duration(&self, upstream: &str, duration: Duration) {
        self.upstream_duration
            .with_label_values(&[upstream])
            .observe(duration.as_secs_f64());
    }

    /// One failed upstream request.
    pub fn upstream_error(&self, upstream: &str, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[upstream, kind.as_str()])
            .inc();
    }

    /// A request refused with 503 because `limit` (`connection` or `upstream`) stayed full.
    pub fn upstream_overflow(&self, upstream: &str, limit: &str) {
        self.upstream_overflow
            .with_label_values(&[upstream, limit])
            .inc();
    }

    /// A body cut in flight.
    pub fn stream_reset(&self, why: ResetReason) {
        self.stream_resets.with_label_values(&[why.as_str()]).inc();
    }

    /// Start the CRL fetch counters of a source at 0.
    pub fn init_crl_fetches(&self, trust: &str) {
        for result in CRL_FETCH_RESULTS {
            self.crl_fetches.with_label_values(&[trust, result]);
        }
    }

    /// Start the OCSP answer counters of a source at 0.
    pub fn init_ocsp(&self, trust: &str) {
        for result in OCSP_RESULTS {
            self.ocsp_responses.with_label_values(&[trust, result]);
        }
    }

    /// One OCSP answer fetched for `trust`, by result.
    pub fn ocsp_response(&self, trust: &str, result: &str) {
        self.ocsp_responses
            .with_label_values(&[trust, result])
            .inc();
    }

    /// One CRL fetch of `trust`, by result.
    pub fn crl_fetch(&self, trust: &str, result: &str) {
        self.crl_fetches.with_label_values(&[trust, result]).inc();
    }

    /// A CRL URL of `trust` (its last path segment `file`) was fetched successfully at `at`.
    pub fn crl_fetched(&self, trust: &str, file: &str, at: i64) {
        self.crl_last_success
            .with_label_values(&[trust, file])
            .set(at);
    }

    /// One reload attempt (SIGHUP or file watch).
    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The outcome of the last attempt to load the configuration, at start or on reload: a
    /// success also records now as the time the serving configuration was loaded. The gauge
    /// stays 0 until a later load succeeds, however long that takes.
    pub fn config_loaded(&self, success: bool) {
        self.last_reload_successful.set(i64::from(success));
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_reload_success_timestamp.set(now);
        }
    }

    /// A client connection was closed before its handshake because `max_connections` were open
    /// and no slot freed up in time.
    pub fn connection_refused_at_limit(&self) {
        self.connections_refused
            .with_label_values(&[REFUSED_LIMIT])
            .inc();
    }

    /// A reload changed access: `gained` and `lost` (selector, route) pairs.
    pub fn access_changes(&self, gained: usize, lost: usize) {
        for (change, n) in [("gained", gained), ("lost", lost)] {
            self.access_changes
                .with_label_values(&[change])
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// Generation of the snapshot now serving.
    pub fn set_generation(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Replace all CRL nextUpdate gauges with these `(trust, file base name, unix seconds)`.
    ///
    /// Series not in `crls` disappear, so CRLs removed by a reload stop being reported. The
    /// others are updated in place: a concurrent scrape never sees them missing.
    pub fn set_crl_next_updates(&self, crls: &[(String, String, i64)]) {
        let mut labels = lock(&self.crl_labels);
        for (trust, file, next_update) in crls {
            self.crl_next_update
                .with_label_values(&[trust.as_str(), file.as_str()])
                .set(*next_update);
        }
        for (trust, file) in labels.iter() {
            if !crls.iter().any(|(t, f, _)| t == trust && f == file) {
                // Err only means the series was already absent.
                let _ = self
                    .crl_next_update
                    .remove_label_values(&[trust.as_str(), file.as_str()]);
            }
        }
        *labels = crls
            .iter()
            .map(|(trust, file, _)| (trust.clone(), file.clone()))
            .collect();
    }

    /// notAfter of the serving certificate (leaf), Unix seconds.
    pub fn set_server_cert_not_after(&self, unix_seconds: i64) {
        self.server_cert_not_after.set(unix_seconds);
    }

    /// Replace the anchor expiry gauge: `(trust, earliest notAfter)` per CA source.
    pub fn set_trust_anchor_not_after(&self, per_trust: &[(String, i64)]) {
        self.trust_anchor_not_after.replace(
            per_trust
                .iter()
                .map(|(t, v)| (vec![t.clone()], *v))
                .collect(),
        );
    }

    /// Replace the pinned certificate expiry gauge: `(trust, pinned name, notAfter)`.
    pub fn set_pinned_not_after(&self, pins: &[(String, String, i64)]) {
        self.pinned_not_after.replace(
            pins.iter()
                .map(|(t, p, v)| (vec![t.clone(), p.clone()], *v))
                .collect(),
        );
    }

    /// Replace the expiring-clients gauge: per trust source, the counts for each of
    /// [`EXPIRY_WINDOWS`] (in that order).
    pub fn set_clients_expiring(&self, per_trust: &[(String, [u64; 3])]) {
        let mut series = Vec::with_capacity(per_trust.len() * EXPIRY_WINDOWS.len());
        for (trust, counts) in per_trust {
            for ((within, _), n) in EXPIRY_WINDOWS.iter().zip(counts) {
                series.push((
                    vec![trust.clone(), (*within).to_owned()],
                    i64::try_from(*n).unwrap_or(i64::MAX),
                ));
            }
        }
        self.clients_expiring.replace(series);
    }

    /// Replace the pinned trust sources behind the overdue-review gauge: `(trust, when each of
    /// its entries becomes overdue, Unix seconds)` (see
    /// [`crate::config::PinnedEntry::overdue_from`]); evaluated at every scrape.
    ///
    /// Series not in `per_trust` disappear, so removed trust sources stop being reported.
    pub fn set_pinned_reviews(&self, per_trust: Vec<(String, Vec<i64>)>) {
        let mut reviews = lock(&self.pinned_reviews);
        let old = std::mem::replace(&mut *reviews, per_trust);
        self.refresh_pinned_review_overdue(&reviews, now_unix());
        for (trust, _) in &old {
            if !reviews.iter().any(|(t, _)| t == trust) {
                // Err only means the series was already absent.
                let _ = self
                    .pinned_review_overdue
                    .remove_label_values(&[trust.as_str()]);
            }
        }
    }

    fn refresh_pinned_review_overdue(&self, reviews: &[(String, Vec<i64>)], now: i64) {
        for (trust, overdue_from) in reviews {
            let overdue = overdue_from.iter().filter(|from| now >= **from).count();
            self.pinned_review_overdue
                .with_label_values(&[trust.as_str()])
                .set(i64::try_from(overdue).unwrap_or(i64::MAX));
        }
    }

    /// A registry with at least one series of every metric, i.e. every name a scrape of a
    /// proxy using every feature shows (vector metrics without series are not exported). For
    /// tests and tools that check dashboards and alert rules against the metric names.
    pub fn with_every_series() -> Metrics {
        let m = Metrics::new();
        m.init_trust_sources(["internal"]);
        m.request(Some("r"), true, Reason::Ok, 200, Duration::from_millis(3));
        m.upstream_duration("orders", Duration::from_millis(2));
        m.upstream_error("orders", UpstreamErrorKind::Connect);
        m.upstream_overflow("orders", "connection");
        m.set_crl_next_updates(&[("internal".into(), "ca.crl".into(), 1)]);
        m.set_pinned_reviews(vec![("lab".into(), vec![])]);
        m.init_shadow_routes(["r"]);
        m.set_trust_anchor_not_after(&[("internal".into(), 1)]);
        m.set_pinned_not_after(&[("lab".into(), "ci".into(), 1)]);
        m.set_clients_expiring(&[("internal".into(), [0, 1, 2])]);
        m.init_crl_fetches("internal");
        m.crl_fetched("internal", "ca.crl", 1);
        m.init_ocsp("internal");
        m
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        self.encode_at(now_unix())
    }

    /// [`Metrics::encode`] as if it were `now` (Unix seconds).
    fn encode_at(&self, now: i64) -> String {
        {
            let reviews = lock(&self.pinned_reviews);
            self.refresh_pinned_review_overdue(&reviews, now);
        }
        let families = self.registry.gather();
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            // Only possible for malformed families, which our fixed definitions exclude; serve
            // what was written rather than failing the scrape.
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The standard `process_*` metrics (CPU, memory, file descriptors, threads, start time), read
/// from `/proc/self` at every scrape. Linux only; elsewhere they are absent.
#[cfg(target_os = "linux")]
fn register_process_metrics(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    registry
        .register(Box::new(collector))
        .expect("process metric names are valid and unique");
}

#[cfg(not(target_os = "linux"))]
fn register_process_metrics(_: &Registry) {}

/// A status code as a label value without allocating (codes are three digits).
fn status_label(code: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = code;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    // ASCII digits only.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample line for `name{labels}`, e.g. `series(&out, "x_total", r#"a="b""#)`.
    fn value(out: &str, name: &str, labels: &str) -> Option<String> {
        let prefix = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        out.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
    }

    #[test]
    fn every_metric_has_its_spec_name_and_type() {
        let out = Metrics::with_every_series().encode();
        let expected = [
            ("certguard_tls_handshakes_total", "counter"),
            ("certguard_tls_handshake_duration_seconds", "histogram"),
            ("certguard_connections_active", "gauge"),
            ("certguard_requests_total", "counter"),
            ("certguard_request_duration_seconds", "histogram"),
            ("certguard_upstream_request_duration_seconds", "histogram"),
            ("certguard_upstream_errors_total", "counter"),
            ("certguard_upstream_overflow_total", "counter"),
            ("certguard_stream_resets_total", "counter"),
            ("certguard_reloads_total", "counter"),
            ("certguard_config_generation", "gauge"),
            ("certguard_crl_next_update_timestamp_seconds", "gauge"),
            ("certguard_server_cert_not_after_timestamp_seconds", "gauge"),
            ("certguard_pinned_review_overdue", "gauge"),
            ("certguard_build_info", "gauge"),
            ("certguard_config_last_reload_successful", "gauge"),
            (
                "certguard_config_last_reload_success_timestamp_seconds",
                "gauge",
            ),
            ("certguard_connections_refused_total", "counter"),
            ("process_cpu_seconds_total", "counter"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_threads", "gauge"),
            ("certguard_shadow_decisions_total", "counter"),
            ("certguard_access_changes_total", "counter"),
            (
                "certguard_trust_anchor_not_after_timestamp_seconds",
                "gauge",
            ),
            ("certguard_pinned_not_after_timestamp_seconds", "gauge"),
            ("certguard_client_certificates_expiring", "gauge"),
            ("certguard_crl_fetches_total", "counter"),
            ("certguard_crl_last_success_timestamp_seconds", "gauge"),
            ("certguard_ocsp_responses_total", "counter"),
        ];
        for (name, ty) in expected {
            let type_line = format!("# TYPE {name} {ty}");
            assert!(
                out.lines().any(|l| l == type_line),
                "missing `{type_line}` in:\n{out}"
            );
            assert!(
                out.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
        let types = out.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, expected.len(), "unexpected extra metrics:\n{out}");
    }

    #[test]
    fn all_outcomes_start_at_zero_for_each_source_and_none() {
        let m = Metrics::new();
        m.init_trust_sources(["internal", "lab"]);
        let out = m.encode();
        for trust in ["internal", "lab", "none"] {
            for o in Outcome::ALL {
                let labels = format!(r#"outcome="{}",trust="{trust}""#, o.as_str());
                assert_eq!(
                    value(&out, "certguard_tls_handshakes_total", &labels).as_deref(),
                    Some("0"),
                    "{labels}"
                );
            }
        }
        for result in ["success", "failure"] {
            let labels = format!(r#"result="{result}""#);
            assert_eq!(
                value(&out, "certguard_reloads_total", &labels).as_deref(),
                Some("0")
            );
        }
    }

    #[test]
    fn reinit_keeps_counts_and_adds_new_sources() {
        let m = Metrics::new();
        m.init_trust_sources(["internal"]);
        m.handshake(Some("internal"), Outcome::Revoked, Duration::from_millis(5));
        m.reload(true);
        m.init_trust_sources(["internal", "lab"]);
        let out = m.encode();
        assert_eq!(
            value(
                &out,
                "certguard_tls_handshakes_total",
                r#"outcome="revoked",trust="internal""#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &out,
                "certguard_tls_handshakes_total",
                r#"outcome="pin_mismatch",trust="lab""#
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&out, "certguard_reloads_total", r#"result="success""#).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn counts_appear_with_exact_labels() {
        let m = Metrics::new();
        m.handshake(Some("internal"), Outcome::Success, Duration::from_millis(4));
        m.handshake(None, Outcome::UnknownIssuer, Duration::from_millis(2));
        m.handshake(None, Outcome::UnknownIssuer, Duration::from_millis(2));
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.request(
            Some("orders-read"),
            true,
            Reason::Ok,
            200,
            Duration::from_millis(12),
        );
        m.request(
            None,
            false,
            Reason::SniMismatch,
            421,
            Duration::from_micros(80),
        );
        m.request(
            Some("orders-read"),
            true,
            Reason::UpstreamError,
            504,
            Duration::from_secs(30),
        );
        m.upstream_error("orders", UpstreamErrorKind::Timeout);
        m.upstream_duration("orders", Duration::from_millis(7));
        m.reload(false);
        m.set_generation(7);
        m.set_server_cert_not_after(1_900_000_000);
        let out = m.encode();
        let cases = [
            (
                "certguard_tls_handshakes_total",
                r#"outcome="success",trust="internal""#,
                "1",
            ),
            (
                "certguard_tls_handshakes_total",
                r#"outcome="unknown_issuer",trust="none""#,
                "2",
            ),
            (
                "certguard_tls_handshake_duration_seconds_count",
                r#"result="failure""#,
                "2",
            ),
            (
                "certguard_tls_handshake_duration_seconds_count",
                r#"result="success""#,
                "1",
            ),
            ("certguard_connections_active", "", "1"),
            (
                "certguard_requests_total",
                r#"code="200",decision="allowed",reason="ok",route="orders-read""#,
                "1",
            ),
            (
                "certguard_requests_total",
                r#"code="421",decision="denied",reason="sni_mismatch",route="none""#,
                "1",
            ),
            (
                "certguard_requests_total",
                r#"code="504",decision="allowed",reason="upstream_error",route="orders-read""#,
                "1",
            ),
            (
                "certguard_request_duration_seconds_count",
                r#"route="orders-read""#,
                "2",
            ),
            (
                "certguard_request_duration_seconds_bucket",
                r#"route="orders-read",le="0.025""#,
                "1",
            ),
            (
                "certguard_request_duration_seconds_bucket",
                r#"route="orders-read",le="30""#,
                "2",
            ),
            (
                "certguard_upstream_errors_total",
                r#"kind="timeout",upstream="orders""#,
                "1",
            ),
            (
                "certguard_upstream_request_duration_seconds_count",
                r#"upstream="orders""#,
                "1",
            ),
            ("certguard_reloads_total", r#"result="failure""#, "1"),
            ("certguard_config_generation", "", "7"),
            (
                "certguard_server_cert_not_after_timestamp_seconds",
                "",
                "1900000000",
            ),
        ];
        for (name, labels, want) in cases {
            assert_eq!(
                value(&out, name, labels).as_deref(),
                Some(want),
                "{name}{{{labels}}} in:\n{out}"
            );
        }
    }

    #[test]
    fn replacing_gauges_drops_removed_series() {
        let m = Metrics::new();
        m.set_crl_next_updates(&[
            ("internal".into(), "ca.crl".into(), 100),
            ("internal".into(), "intermediate.crl".into(), 200),
        ]);
        let past = 1_577_836_800; // 2020-01-01
        m.set_pinned_reviews(vec![
            ("lab".into(), vec![past, past]),
            ("old".into(), vec![past]),
        ]);
        m.set_crl_next_updates(&[("internal".into(), "ca.crl".into(), 300)]);
        m.set_pinned_reviews(vec![("lab".into(), vec![past])]);
        let out = m.encode();
        let crl = "certguard_crl_next_update_timestamp_seconds";
        assert_eq!(
            value(&out, crl, r#"file="ca.crl",trust="internal""#).as_deref(),
            Some("300")
        );
        assert!(!out.contains("intermediate.crl"));
        let pin = "certguard_pinned_review_overdue";
        assert_eq!(value(&out, pin, r#"trust="lab""#).as_deref(), Some("1"));
        assert!(!out.contains(r#"trust="old""#));
    }

    #[test]
    fn replacing_gauges_keeps_the_series_that_stay() {
        let m = Metrics::new();
        m.set_crl_next_updates(&[("internal".into(), "ca.crl".into(), 100)]);
        // A series present before and after a replacement is updated in place, never removed:
        // a scrape between the two steps of a replacement would otherwise see no series. The
        // same vector object must still hold it (removal and re-creation would show up as a
        // new child that never had the old value).
        let before = m
            .crl_next_update
            .get_metric_with_label_values(&["internal", "ca.crl"])
            .unwrap();
        m.set_crl_next_updates(&[
            ("internal".into(), "ca.crl".into(), 300),
            ("internal".into(), "intermediate.crl".into(), 200),
        ]);
        assert_eq!(
            before.get(),
            300,
            "the existing series was updated in place"
        );
    }

    #[test]
    fn overdue_reviews_are_counted_at_scrape_time() {
        let m = Metrics::new();
        let review_by = time::macros::date!(2030 - 06 - 15);
        let later = time::macros::date!(2030 - 06 - 30);
        let from = |d| crate::config::overdue_from(d).unwrap();
        m.set_pinned_reviews(vec![("lab".into(), vec![from(review_by), from(later)])]);
        let pin = "certguard_pinned_review_overdue";
        let on = |day: time::Date| {
            let noon = day.midnight().assume_utc().unix_timestamp() + 43_200;
            value(&m.encode_at(noon), pin, r#"trust="lab""#)
        };
        assert_eq!(
            on(review_by).as_deref(),
            Some("0"),
            "due today is not overdue"
        );
        // No reload in between: only the date moved on.
        let next_day = review_by.next_day().unwrap();
        assert_eq!(on(next_day).as_deref(), Some("1"));
        assert_eq!(on(later.next_day().unwrap()).as_deref(), Some("2"));
        // The public encode() uses the current time.
        m.set_pinned_reviews(vec![(
            "lab".into(),
            vec![from(time::macros::date!(2020 - 01 - 01))],
        )]);
        assert_eq!(
            value(&m.encode(), pin, r#"trust="lab""#).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn operations_metrics_start_with_their_documented_values() {
        let m = Metrics::new();
        let out = m.encode();
        let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            value(&out, "certguard_build_info", &version).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &out,
                "certguard_connections_refused_total",
                r#"reason="limit""#
            )
            .as_deref(),
            Some("0")
        );
        m.connection_refused_at_limit();
        m.connection_refused_at_limit();
        let out = m.encode();
        assert_eq!(
            value(
                &out,
                "certguard_connections_refused_total",
                r#"reason="limit""#
            )
            .as_deref(),
            Some("2")
        );
        // This process's own numbers, read from /proc.
        let threads: f64 = value(&out, "process_threads", "").unwrap().parse().unwrap();
        assert!(threads >= 1.0, "{out}");
        let rss: f64 = value(&out, "process_resident_memory_bytes", "")
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "{out}");
        let start: f64 = value(&out, "process_start_time_seconds", "")
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }

    #[test]
    fn a_failed_load_clears_the_success_gauge_until_a_load_succeeds() {
        let m = Metrics::new();
        let ok = "certguard_config_last_reload_successful";
        let at = "certguard_config_last_reload_success_timestamp_seconds";
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        let before = now();
        m.config_loaded(true);
        let out = m.encode();
        assert_eq!(value(&out, ok, "").as_deref(), Some("1"));
        let first: f64 = value(&out, at, "").unwrap().parse().unwrap();
        assert!(first >= before.floor() && first <= now(), "{first}");
        m.config_loaded(false);
        let out = m.encode();
        assert_eq!(value(&out, ok, "").as_deref(), Some("0"));
        let kept: f64 = value(&out, at, "").unwrap().parse().unwrap();
        assert_eq!(kept, first, "a failure keeps the last success time");
        m.config_loaded(true);
        assert_eq!(value(&m.encode(), ok, "").as_deref(), Some("1"));
    }

    #[test]
    fn shadow_decisions_start_at_zero_and_count_by_both_verdicts() {
        let m = Metrics::new();
        m.init_shadow_routes(["orders"]);
        // (enforced, shadow) per request: tightening (shadow denies what allow allows),
        // agreement both ways, loosening.
        let rows = [
            (true, false),
            (true, false),
            (true, true),
            (false, false),
            (false, true),
            (false, true),
            (false, true),
        ];
        for (enforced, shadow) in rows {
            m.shadow_decision("orders", enforced, shadow);
        }
        m.init_shadow_routes(["orders"]);
        let out = m.encode();
        let name = "certguard_shadow_decisions_total";
        for (enforced, shadow, want) in [
            ("allowed", "allowed", "1"),
            ("allowed", "denied", "2"),
            ("denied", "allowed", "3"),
            ("denied", "denied", "1"),
        ] {
            let labels = format!(r#"enforced="{enforced}",route="orders",shadow="{shadow}""#);
            assert_eq!(
                value(&out, name, &labels).as_deref(),
                Some(want),
                "{labels}"
            );
        }
        let fresh = Metrics::new();
        fresh.init_shadow_routes(["billing"]);
        let out = fresh.encode();
        let zero = value(
            &out,
            name,
            r#"enforced="denied",route="billing",shadow="allowed""#,
        );
        assert_eq!(zero.as_deref(), Some("0"));
    }

    #[test]
    fn expiry_gauges_are_replaced_whole() {
        let m = Metrics::new();
        m.set_trust_anchor_not_after(&[("internal".into(), 100), ("partner".into(), 200)]);
        m.set_pinned_not_after(&[
            ("lab".into(), "ci".into(), 300),
            ("lab".into(), "old".into(), 1),
        ]);
        m.set_clients_expiring(&[("internal".into(), [0, 1, 3])]);
        m.set_trust_anchor_not_after(&[("internal".into(), 150)]);
        m.set_pinned_not_after(&[("lab".into(), "ci".into(), 300)]);
        m.set_clients_expiring(&[("internal".into(), [1, 1, 2]), ("lab".into(), [0, 0, 0])]);
        let out = m.encode();
        let anchor = "certguard_trust_anchor_not_after_timestamp_seconds";
        assert_eq!(
            value(&out, anchor, r#"trust="internal""#).as_deref(),
            Some("150")
        );
        assert_eq!(value(&out, anchor, r#"trust="partner""#), None);
        let pinned = "certguard_pinned_not_after_timestamp_seconds";
        assert_eq!(
            value(&out, pinned, r#"pinned="ci",trust="lab""#).as_deref(),
            Some("300")
        );
        assert_eq!(value(&out, pinned, r#"pinned="old",trust="lab""#), None);
        let clients = "certguard_client_certificates_expiring";
        for (labels, want) in [
            (r#"trust="internal",within="1d""#, "1"),
            (r#"trust="internal",within="7d""#, "1"),
            (r#"trust="internal",within="30d""#, "2"),
            (r#"trust="lab",within="30d""#, "0"),
        ] {
            assert_eq!(
                value(&out, clients, labels).as_deref(),
                Some(want),
                "{labels}"
            );
        }
    }

    #[test]
    fn status_labels() {
        for code in [0u16, 7, 42, 200, 404, 431, 502, 65535] {
            let mut buf = [0u8; 5];
            assert_eq!(status_label(code, &mut buf), code.to_string());
        }
    }
}
