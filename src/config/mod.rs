//! Validated, typed configuration. `raw.rs` is the only place that knows serde_yaml; this module
//! turns the raw structs into types that cannot be invalid, loading every file the config names
//! and collecting every error (with its key path) in one pass.
#![warn(missing_docs)]

mod build;
pub mod pki;
pub mod raw;
mod routes;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::policy::deny::DenyList;
use crate::policy::{AllowEntry, Policy};

/// The whole configuration, every file already read and parsed.
#[derive(Debug)]
pub struct Config {
    /// The config file itself (absolute or as given).
    pub source: PathBuf,
    /// `listen:` the client-facing TLS listener.
    pub listen: Listen,
    /// Trust sources in file order.
    pub trust: Vec<TrustSource>,
    /// Compiled routes; references to trust sources, pinned names and upstreams are checked.
    pub policy: Policy,
    /// Upstreams in file order.
    pub upstreams: Vec<Upstream>,
    /// `forward:` what is added to and stripped from forwarded requests.
    pub forward: Arc<Forward>,
    /// `deny:` (SPEC 9.4), checked at the handshake and on every re-check.
    pub deny: Arc<DenyList>,
    /// `admin:` the metrics/health listener.
    pub admin: Admin,
    /// `reload:` hot reload settings.
    pub reload: Reload,
    /// `logging:` log format and filter.
    pub logging: Logging,
    /// `runtime:` tokio worker threads and shutdown grace.
    pub runtime: Runtime,
    /// The config file, then every file it names (certs, keys, CRLs, pin files), resolved,
    /// with what this load read from each; the watcher compares it with the disk.
    pub digests: FileDigests,
}

/// Every file one load read (the config file first) with the SHA-256 of the bytes it read, or
/// `None` where the file could not be read. Recorded for failed loads too, so the watcher knows
/// which files a retry depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileDigests(pub Vec<(PathBuf, Option<[u8; 32]>)>);

impl FileDigests {
    /// Record what was read from `path`. Only the first read of a path counts: if a file changed
    /// between two reads, the disk no longer matches the first digest and the watcher reloads.
    fn record(&mut self, path: &Path, bytes: Option<&[u8]>) {
        if self.0.iter().all(|(p, _)| p != path) {
            self.0
                .push((path.to_path_buf(), bytes.map(crate::certs::sha256)));
        }
    }

    /// The files, in the order they were first read.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().map(|(p, _)| p.as_path())
    }
}

/// `listen:` the client-facing mTLS listener.
#[derive(Debug)]
pub struct Listen {
    /// Address to bind, default `0.0.0.0:8443`.
    pub address: SocketAddr,
    /// Resolved path of `listen.cert`.
    pub cert_path: PathBuf,
    /// Resolved path of `listen.key`.
    pub key_path: PathBuf,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Private key (secret: never print it; `Debug` of PrivateKeyDer is redacted).
    pub key: Arc<PrivateKeyDer<'static>>,
    /// ALPN protocol ids in preference order, default `[h2, http/1.1]`.
    pub alpn: Vec<Vec<u8>>,
    /// Lowest TLS version offered, default 1.2.
    pub min_tls_version: TlsVersion,
    /// A handshake slower than this is dropped (default 10s).
    pub handshake_timeout: Duration,
    /// From a request's first byte to the end of its headers (default 10s).
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no request in flight (default 60s).
    pub idle_timeout: Duration,
    /// Cap on open client connections (default 10000).
    pub max_connections: usize,
    /// Largest request head accepted; larger gets 431 (default 65536).
    pub max_header_bytes: usize,
    /// Requests of one client connection that may be in flight upstream at once (default
    /// 32); more wait for a place, up to the upstream's `timeout`, then get 503.
    pub max_inflight_per_connection: usize,
    /// Requests of one client identity (certificate fingerprint), over all its connections,
    /// that may be in flight upstream at once; `None` = no such limit (the default). More
    /// wait for a place, up to the upstream's `timeout`, then get 503.
    pub max_inflight_per_identity: Option<usize>,
    /// TLS session resumption (default off: a resumed session skips the verifier).
    pub session_resumption: bool,
    /// Answer 421 when Host differs from SNI (default on).
    pub require_sni_match: bool,
}

/// `listen.min_tls_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// One named entry of `trust:`.
#[derive(Debug)]
pub struct TrustSource {
    /// The name in the config (also the `trust` metric label).
    pub name: Arc<str>,
    /// CA chain or pinned list.
    pub kind: TrustKind,
    /// `spiffe_trust_domains`: SPIFFE trust domains that belong to this source alone (SPEC
    /// 9.5), lower-case, unique across sources.
    pub spiffe_trust_domains: Vec<String>,
}

/// What kind of trust source: decided by `ca` vs `pinned` in the file.
#[derive(Debug)]
// A handful per config, built once: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum TrustKind {
    /// Verified as a chain to the `ca` bundle, with CRLs.
    Ca(CaTrust),
    /// Admitted by exact certificate or public-key pins.
    Pinned(PinnedTrust),
}

/// A CA trust source.
#[derive(Debug)]
pub struct CaTrust {
    /// Resolved path of the `ca` bundle.
    pub ca_path: PathBuf,
    /// Trust anchors from the `ca` bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// `intermediates` (SPEC 9.1): CA certificates that complete the chains of clients that
    /// send only their leaf; never anchors.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// CRLs in `crl:` order.
    pub crls: Vec<CrlFile>,
    /// `crl_urls` (SPEC 9.2): CRLs fetched over HTTP and kept fresh.
    pub crl_urls: Vec<CrlUrl>,
    /// `crl_cache_dir`: where the last good CRL of each URL persists.
    pub crl_cache_dir: Option<PathBuf>,
    /// `crl_distribution_points.allow`: URL prefixes under which certificates' CRL
    /// distribution points are fetched; empty = distribution points are not fetched.
    pub crl_dp_allow: Vec<String>,
    /// `ocsp` (SPEC 9.3); `None` for `mode: off` (the default).
    pub ocsp: Option<Ocsp>,
    /// `revocation:` settings.
    pub revocation: Revocation,
    /// Reject leaves whose notAfter - notBefore is longer.
    pub max_lifetime: Option<Duration>,
}

/// `trust.<source>.ocsp` when its mode is not `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ocsp {
    /// `require`: no valid `good` answer refuses; `prefer`: only `revoked` refuses.
    pub require: bool,
    /// Overrides the leaf's AIA OCSP URL (`http://` only).
    pub responder: Option<String>,
    /// The longest a handshake waits for the responder (default 2s).
    pub timeout: Duration,
    /// An answer is kept until its nextUpdate, at most this long (default 1h).
    pub cache_max: Duration,
    /// Statuses of certificates with open connections are asked again this often (default 5m).
    pub refresh: Duration,
}

/// One `crl_urls` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlUrl {
    /// `http://` or `https://` URL.
    pub url: String,
    /// How often it is fetched (default 5m); also once its CRL's nextUpdate has passed.
    pub refresh: Duration,
}

/// Distribution points fetched per source at most (SPEC 9.2).
pub const MAX_DISTRIBUTION_POINTS: usize = 64;

/// The largest file certguard reads: the config and every file it names (certificates, keys,
/// CRLs, pins). As large as a fetched CRL may be; a path that names `/dev/zero` or a runaway
/// file gets an error instead of filling the memory of a running proxy on reload.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Read a whole file of at most [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// One loaded CRL file (a CRL past nextUpdate still loads).
#[derive(Clone, Debug)]
pub struct CrlFile {
    /// Resolved path.
    pub path: PathBuf,
    /// The CRL DER (PEM input is decoded).
    pub der: CertificateRevocationListDer<'static>,
    /// Issuer DN of the CRL (RFC 4514), for `check` warnings.
    pub issuer: String,
    /// Raw DER of the issuer Name, to compare with CA subjects.
    pub issuer_raw: Vec<u8>,
    /// thisUpdate / nextUpdate as Unix seconds.
    pub this_update: i64,
    /// nextUpdate as Unix seconds, when present.
    pub next_update: Option<i64>,
    /// The CRL number extension, big-endian, when present.
    pub number: Option<Vec<u8>>,
    /// What the CRL covers besides its issuer name: the raw value of its issuing distribution
    /// point extension (empty without one), as the verifier (webpki) decides which CRL covers
    /// a certificate by these two alone. CRLs of one issuer with the same scope supersede each
    /// other (see [`newest_crls`]).
    pub scope: Vec<u8>,
}

impl CrlFile {
    /// The file's base name (the `file` label of the CRL gauges).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Whether this CRL is newer than `other` by its CRL number, or by thisUpdate when either
    /// has none (SPEC 9.2: an older CRL is refused, an equal one changes nothing).
    pub fn is_newer_than(&self, other: &CrlFile) -> bool {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => {
                let strip =
                    |n: &[u8]| -> Vec<u8> { n.iter().skip_while(|b| **b == 0).copied().collect() };
                let (a, b) = (strip(a), strip(b));
                (a.len(), &a) > (b.len(), &b)
            }
            _ => self.this_update > other.this_update,
        }
    }

    /// Whether the CRL is past its nextUpdate at `now` (Unix seconds).
    pub fn expired_at(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }

    /// Whether `other` covers the same certificates: same issuer name and same scope (see
    /// [`CrlFile::scope`]), so that the newer of the two supersedes the older.
    pub fn same_scope(&self, other: &CrlFile) -> bool {
        self.issuer_raw == other.issuer_raw && self.scope == other.scope
    }
}

/// For each (issuer, scope), only the newest of `crls` ([`CrlFile::is_newer_than`]; the first
/// in order when neither is newer); the CRLs of one issuer with different scopes follow one
/// another, the latest thisUpdate first, at the place where that issuer's first CRL was.
///
/// The verifier (webpki) checks a certificate against the FIRST CRL that covers it and
/// ignores the others, so an older CRL kept beside a newer one (a `crl:` file kept as a
/// fallback for a `crl_urls` entry, say) would hide every revocation the newer one adds.
pub fn newest_crls(crls: impl IntoIterator<Item = CrlFile>) -> Vec<CrlFile> {
    let mut out: Vec<CrlFile> = Vec::new();
    for crl in crls {
        match out.iter_mut().find(|kept| kept.same_scope(&crl)) {
            Some(kept) => {
                if crl.is_newer_than(kept) {
                    *kept = crl;
                }
            }
            None => out.push(crl),
        }
    }
    // Scopes may overlap (a full CRL and a partitioned one): newest first within an issuer.
    let issuers: Vec<usize> = out
        .iter()
        .map(|c| {
            out.iter()
                .position(|o| o.issuer_raw == c.issuer_raw)
                .unwrap_or(0)
        })
        .collect();
    let mut keyed: Vec<_> = issuers.into_iter().zip(out).collect();
    keyed.sort_by_key(|(issuer, c)| (*issuer, std::cmp::Reverse(c.this_update)));
    keyed.into_iter().map(|(_, c)| c).collect()
}

impl CaTrust {
    /// Every certificate this source trusts as an issuer: its anchors and its configured
    /// intermediates. The expiry gauge and `check`'s 30-day warnings read them from here.
    pub fn trusted_certificates(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.anchors.iter().chain(&self.intermediates)
    }

    /// `(file base name, earliest nextUpdate)` for each CRL file, in `crl:` order: a PEM
    /// bundle holds several CRLs under one name, and the earliest is the one that matters.
    pub fn next_update_per_file(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = Vec::new();
        for crl in &self.crls {
            let Some(next) = crl.next_update else {
                continue;
            };
            let file = crl.file_name();
            match out.iter_mut().find(|(f, _)| *f == file) {
                Some((_, earliest)) => *earliest = (*earliest).min(next),
                None => out.push((file, next)),
            }
        }
        out
    }
}

/// `trust.X.revocation:`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// `depth:` which certificates are checked against CRLs.
    pub depth: RevocationDepth,
    /// `true` = `unknown_status: allow`.
    pub allow_unknown_status: bool,
    /// `true` = `expired_crl: allow`.
    pub allow_expired_crl: bool,
}

/// `revocation.depth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationDepth {
    /// Every certificate of the chain (default).
    Chain,
    /// Only the leaf.
    EndEntity,
}

/// A pinned trust source.
#[derive(Debug)]
pub struct PinnedTrust {
    /// The pins in file order.
    pub entries: Vec<PinnedEntry>,
    /// Enforce notBefore/notAfter of pinned certificates (default true).
    pub check_validity: bool,
    /// What an entry past `review_by` does (default warn).
    pub on_overdue_review: OverdueAction,
}

/// One `pinned:` entry.
#[derive(Debug)]
pub struct PinnedEntry {
    /// Name, unique across all pinned sources; becomes the identity's `pinned`.
    pub name: Arc<str>,
    /// What is pinned.
    pub pin: Pin,
    /// Free text: who owns the client.
    pub owner: Option<String>,
    /// Free text: what the client is for.
    pub purpose: Option<String>,
    /// Date by which the pin should be reviewed.
    pub review_by: Option<time::Date>,
}

impl PinnedEntry {
    /// The Unix time from which the entry is overdue for review: midnight (UTC) after its
    /// `review_by` date, so that the whole `review_by` day still counts as on time.
    pub fn overdue_from(&self) -> Option<i64> {
        overdue_from(self.review_by?)
    }

    /// Whether the entry is overdue for review at `now` (Unix seconds).
    pub fn overdue_at(&self, now: i64) -> bool {
        self.overdue_from().is_some_and(|from| now >= from)
    }
}

/// When a pin reviewed by `review_by` becomes overdue (see [`PinnedEntry::overdue_from`]).
pub fn overdue_from(review_by: time::Date) -> Option<i64> {
    Some(
        review_by
            .next_day()?
            .midnight()
            .assume_utc()
            .unix_timestamp(),
    )
}

/// A certificate or public-key pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// SHA-256 of the DER of the certificate in `path`.
    Cert {
        /// Resolved path of the pinned certificate file.
        path: PathBuf,
        /// SHA-256 of its DER.
        sha256: [u8; 32],
        /// The certificate's notAfter, Unix seconds (the pinned expiry gauge).
        not_after: i64,
    },
    /// SHA-256 certificate fingerprint given in the config.
    Sha256([u8; 32]),
    /// SHA-256 of the SubjectPublicKeyInfo.
    Spki([u8; 32]),
}

/// `on_overdue_review`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverdueAction {
    /// Admit, but warn in `check` and the overdue gauge.
    Warn,
    /// Reject the handshake with `review_overdue`.
    Deny,
}

/// One named entry of `upstreams:`.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The name routes reference (also the `upstream` metric label).
    pub name: Arc<str>,
    /// Protocol spoken to the upstream.
    pub scheme: UpstreamScheme,
    /// `host:port` of the upstream (port defaulted to 80 when absent).
    pub authority: http::uri::Authority,
    /// TCP connect timeout (default 2s).
    pub connect_timeout: Duration,
    /// Time until response headers (default 30s).
    pub timeout: Duration,
    /// Idle pooled connections kept (default 64).
    pub max_idle_per_host: usize,
    /// Requests in flight to this upstream at once, across all clients (default 1024); for
    /// `http://` and `https://` each uses its own connection. More wait up to `timeout`, then
    /// get 503.
    pub max_requests: usize,
    /// TLS settings: `Some` exactly when `scheme` is [`UpstreamScheme::Https`].
    pub tls: Option<Arc<UpstreamTls>>,
}

/// Scheme of an upstream URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamScheme {
    /// `http://`: HTTP/1.1.
    Http,
    /// `h2c://`: HTTP/2 with prior knowledge.
    H2c,
    /// `https://`: HTTP/1.1 over TLS, the upstream's certificate verified.
    Https,
}

impl UpstreamScheme {
    /// The scheme as written in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamScheme::Http => "http",
            UpstreamScheme::H2c => "h2c",
            UpstreamScheme::Https => "https",
        }
    }
}

/// TLS to an `https://` upstream, with every file it names already loaded (compared whole on
/// reload, so a changed CA bundle or client certificate rebuilds the upstream's client).
#[derive(Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The URL's host: sent as SNI, and the name the upstream's certificate must be valid for.
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// What verifies the upstream's certificate.
    pub roots: UpstreamRoots,
    /// `client_cert` and `client_key`: the certificate presented to the upstream.
    pub client_cert: Option<UpstreamClientCert>,
}

/// The trust anchors for an upstream's certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamRoots {
    /// No `ca`: the system's root certificates, loaded when the client is built.
    System,
    /// `upstreams.<name>.ca`: only the certificates of this PEM bundle.
    Bundle {
        /// Resolved path of the bundle.
        path: PathBuf,
        /// Its certificates, each checked to be usable as a trust anchor.
        certs: Vec<CertificateDer<'static>>,
    },
}

/// A client certificate for upstream mTLS.
#[derive(Debug, PartialEq, Eq)]
pub struct UpstreamClientCert {
    /// Resolved path of `client_cert`.
    pub cert_path: PathBuf,
    /// Resolved path of `client_key`.
    pub key_path: PathBuf,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key, checked to match the leaf (secret: `Debug` of PrivateKeyDer is redacted).
    pub key: PrivateKeyDer<'static>,
}

/// `forward:`
#[derive(Clone, Debug)]
pub struct Forward {
    /// How the XFCC header is treated (default sanitize_set).
    pub xfcc: XfccMode,
    /// XFCC fields, default `[hash, subject, uri, dns]`.
    pub xfcc_fields: Vec<XfccField>,
    /// Set X-Forwarded-For/-Proto/-Host (default true).
    pub x_forwarded: bool,
    /// Extra inbound headers always removed.
    pub strip_headers: Vec<http::HeaderName>,
    /// Remove the client-address and client-certificate headers of other proxies
    /// (`Forwarded`, `X-Real-IP`, `X-SSL-Client-*`, `SSL_CLIENT_*`, ...); default true.
    pub strip_identity_headers: bool,
    /// Add RFC 9440 `Client-Cert` and `Client-Cert-Chain` (SPEC 9.9); default false.
    pub client_cert_headers: bool,
}

/// `forward.xfcc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XfccMode {
    /// Replace any inbound value with ours.
    SanitizeSet,
    /// Keep the inbound value and append ours.
    Append,
    /// Remove the inbound value, add nothing.
    Sanitize,
}

/// One `forward.xfcc_fields` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XfccField {
    /// `Hash=`: SHA-256 of the leaf DER.
    Hash,
    /// `Cert=`: URL-encoded leaf PEM.
    Cert,
    /// `Chain=`: URL-encoded chain PEM.
    Chain,
    /// `Subject=`: RFC 4514 subject.
    Subject,
    /// `URI=` per URI SAN.
    Uri,
    /// `DNS=` per DNS SAN.
    Dns,
}

/// `admin:`
#[derive(Clone, Debug)]
pub struct Admin {
    /// Admin listener address, default `127.0.0.1:9901`.
    pub address: SocketAddr,
}

/// `reload:`
#[derive(Clone, Debug)]
pub struct Reload {
    /// Watch the config and every file it names (default true).
    pub watch: bool,
    /// Quiet time after a change before reloading (default 1s).
    pub debounce: Duration,
}

/// `logging:`
#[derive(Clone, Debug)]
pub struct Logging {
    /// Output format (default json).
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info` or `certguard=debug`.
    pub level: String,
    /// One audit line per request (default true).
    pub access_log: bool,
}

/// `logging.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable lines.
    Text,
}

/// `runtime:`
#[derive(Clone, Debug)]
pub struct Runtime {
    /// `None` = auto (number of CPUs).
    pub worker_threads: Option<usize>,
    /// `single_thread`: one thread runs everything, tasks in the order they were woken (no
    /// work stealing). Refused with settings that make a handshake wait for the network.
    pub single_thread: bool,
    /// Time in-flight requests get on shutdown (default 30s).
    pub shutdown_grace: Duration,
}

impl Config {
    /// The key paths of settings that can make a handshake wait for the network (client OCSP,
    /// CRL distribution points): `runtime.single_thread` cannot have them, because a waiting
    /// handshake would hold the only thread and every connection with it.
    pub fn handshake_waits(&self) -> Vec<String> {
        handshake_waits(&self.trust)
    }
}

pub(crate) fn handshake_waits(trust: &[TrustSource]) -> Vec<String> {
    let mut keys = Vec::new();
    for source in trust {
        if let TrustKind::Ca(ca) = &source.kind {
            if ca.ocsp.is_some() {
                keys.push(format!("trust.{}.ocsp", source.name));
            }
            if !ca.crl_dp_allow.is_empty() {
                keys.push(format!("trust.{}.crl_distribution_points", source.name));
            }
        }
    }
    keys
}

/// What `runtime.single_thread` says about a setting that makes handshakes wait.
pub const SINGLE_THREAD_WAITS: &str = "cannot be used with runtime.single_thread: a handshake \
     that waits for a responder would hold the only thread (set runtime.single_thread: false)";

/// One configuration mistake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file the error is about.
    pub file: PathBuf,
    /// Key path such as `routes[2].allow[0].spiffe_id`; empty for whole-file errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every mistake found in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Which trust source an allow entry requires (for the access matrix): its `trust` key's
    /// value, else the pinned source that defines its `pinned` name; `None` = any source.
    pub fn required_trust<'a>(&'a self, entry: &'a AllowEntry) -> Option<&'a str> {
        if let Some(t) = entry.trust_key() {
            return Some(t);
        }
        let pinned = entry.pinned_key()?;
        self.trust.iter().find_map(|s| match &s.kind {
            TrustKind::Pinned(p) if p.entries.iter().any(|e| &*e.name == pinned) => Some(&*s.name),
            _ => None,
        })
    }

    /// Read, parse and validate `path` and every file it names.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_tracked(path).0
    }

    /// Like [`Config::load`], and also report every file the attempt read, whether or not it
    /// succeeded (on success the same list is in [`Config::digests`]).
    pub fn load_tracked(path: &Path) -> (Result<Config, ConfigErrors>, FileDigests) {
        let unreadable = |message: String, digests| {
            let e = ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                message,
            };
            (Err(ConfigErrors(vec![e])), digests)
        };
        match read_file(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => build::build(&text, path),
                Err(e) => {
                    let mut digests = FileDigests::default();
                    digests.record(path, Some(e.as_bytes()));
                    unreadable(
                        format!("cannot read config file: {}", e.utf8_error()),
                        digests,
                    )
                }
            },
            Err(e) => {
                let mut digests = FileDigests::default();
                digests.record(path, None);
                unreadable(format!("cannot read config file: {e}"), digests)
            }
        }
    }

    /// Parse and validate YAML `text` as if it were the file `path` (relative paths resolve
    /// against `path`'s directory; the files it names are read).
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        build::build(text, path).0
    }

    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// The trust source with this name.
    pub fn trust_source(&self, name: &str) -> Option<&TrustSource> {
        self.trust.iter().find(|t| &*t.name == name)
    }

    /// The pinned source and entry with this pinned name (names are unique across sources).
    pub fn pinned_entry(&self, name: &str) -> Option<(&TrustSource, &PinnedEntry)> {
        self.trust.iter().find_map(|t| match &t.kind {
            TrustKind::Pinned(p) => p.entries.iter().find(|e| &*e.name == name).map(|e| (t, e)),
            TrustKind::Ca(_) => None,
        })
    }
}

/// Where `certguard health` finds the admin listener of the config at `path`: its
/// `admin.address` (default `127.0.0.1:9901`), with an unspecified address (`0.0.0.0`, `[::]`)
/// replaced by loopback of the same family. `None` when the file cannot be read or the address
/// is not an address.
pub fn admin_probe_address(path: &Path) -> Option<SocketAddr> {
    let text = String::from_utf8(read_file(path).ok()?).ok()?;
    let mut addr: SocketAddr = match raw::admin_address(&text) {
        Some(a) => a.parse().ok()?,
        None => SocketAddr::from(([127, 0, 0, 1], 9901)),
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(addr)
}

/// Parse a duration such as `500ms`, `10s`, `5m`, `2h`, `90d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HELP: &str = "expected an integer followed by ms, s, m, h or d (e.g. 500ms, 10s, 90d)";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid duration `{t}`: {HELP}"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{t}`: number too large"))?;
    let secs_per = match unit {
        "ms" => {
            return Some(Duration::from_millis(n))
                .filter(|d| *d <= MAX_DURATION)
                .ok_or_else(|| format!("invalid duration `{t}`: at most 36500d (100 years)"))
        }
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("invalid duration `{t}`: missing unit; {HELP}")),
        _ => {
            return Err(format!(
                "invalid duration `{t}`: unknown unit `{unit}`; {HELP}"
            ))
        }
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("invalid duration `{t}`: at most 36500d (100 years)"))
}

/// The longest duration a config may name. Timeouts are added to the current time, and an
/// absurd value would overflow that addition in every connection task.
const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

#[cfg(test)]
mod tests {
    use std::fs;

    /// Only the selection logic: the verifier-level behaviour is tested in `tls::chain`.
    #[test]
    fn newest_crls_keeps_the_newest_per_issuer_and_scope_newest_first() {
        let crl =
            |name: &str, issuer: &str, scope: &str, this_update: i64, number: Option<u8>| CrlFile {
                path: PathBuf::from(name),
                der: rustls_pki_types::CertificateRevocationListDer::from(Vec::new()),
                issuer: issuer.to_owned(),
                issuer_raw: issuer.as_bytes().to_vec(),
                this_update,
                next_update: None,
                number: number.map(|n| vec![n]),
                scope: scope.as_bytes().to_vec(),
            };
        let names = |crls: Vec<CrlFile>| -> Vec<String> {
            newest_crls(crls).iter().map(|c| c.file_name()).collect()
        };
        // Same issuer and scope: the newer by thisUpdate, in either order.
        let (old, new) = (crl("old", "I", "", 10, None), crl("new", "I", "", 20, None));
        assert_eq!(names(vec![old.clone(), new.clone()]), ["new"]);
        assert_eq!(names(vec![new.clone(), old.clone()]), ["new"]);
        // Numbers decide when both have one, even against thisUpdate.
        let (n5, n7) = (
            crl("n5", "I", "", 30, Some(5)),
            crl("n7", "I", "", 20, Some(7)),
        );
        assert_eq!(names(vec![n5.clone(), n7.clone()]), ["n7"]);
        assert_eq!(names(vec![n7.clone(), n5.clone()]), ["n7"]);
        // A tie keeps the first.
        let twin = crl("twin", "I", "", 20, None);
        assert_eq!(names(vec![new.clone(), twin.clone()]), ["new"]);
        // Other issuers and other scopes are kept; within an issuer the latest thisUpdate
        // comes first, issuers stay where they first appeared.
        let other = crl("other", "J", "", 5, None);
        let part = crl("part", "I", "idp", 15, None);
        assert_eq!(
            names(vec![other.clone(), old.clone(), part.clone(), new.clone()]),
            ["other", "new", "part"]
        );
        assert_eq!(
            names(vec![part, other.clone(), old]),
            ["part", "old", "other"]
        );
    }

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    use tempfile::TempDir;
    use x509_parser::prelude::FromDer;

    use super::*;
    use crate::policy::pattern;

    /// A small PKI written into `dir/pki`: CA, server cert+key, CRLs (PEM, DER, expired), a
    /// self-signed client and a second, unrelated key.
    struct Pki {
        server_key_pem: String,
        pinned_der: Vec<u8>,
        pinned_spki_b64: String,
    }

    fn write_pki(dir: &Path) -> Pki {
        let pki = dir.join("pki");
        fs::create_dir_all(&pki).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::OrganizationName, "certguard test");
        ca.distinguished_name.push(DnType::CommonName, "Test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        fs::write(pki.join("ca.crt"), ca_cert.pem()).unwrap();
        fs::write(pki.join("server.crt"), server.pem() + &ca_cert.pem()).unwrap();
        fs::write(pki.join("server.key"), server_key.serialize_pem()).unwrap();
        fs::write(
            pki.join("other.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();

        let now = time::OffsetDateTime::now_utc();
        let crl = |this: time::OffsetDateTime, next: time::OffsetDateTime| {
            CertificateRevocationListParams {
                this_update: this,
                next_update: next,
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: vec![],
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .unwrap()
        };
        let fresh = crl(
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        fs::write(pki.join("ca.crl"), fresh.pem().unwrap()).unwrap();
        fs::write(pki.join("ca.crl.der"), fresh.der().as_ref()).unwrap();
        let stale = crl(
            now - time::Duration::days(60),
            now - time::Duration::days(30),
        );
        fs::write(pki.join("expired.crl"), stale.pem().unwrap()).unwrap();
        fs::write(
            pki.join("bundle.crl"),
            fresh.pem().unwrap() + &stale.pem().unwrap(),
        )
        .unwrap();

        let pin_key = KeyPair::generate().unwrap();
        let mut pin = CertificateParams::new(Vec::<String>::new()).unwrap();
        pin.distinguished_name.push(DnType::CommonName, "ci-runner");
        let pinned = pin.self_signed(&pin_key).unwrap();
        fs::write(pki.join("ci-runner.crt"), pinned.pem()).unwrap();
        use base64::Engine as _;
        let spki = crate::certs::sha256(&rcgen::PublicKeyData::subject_public_key_info(&pin_key));
        Pki {
            server_key_pem: server_key.serialize_pem(),
            pinned_der: pinned.der().to_vec(),
            pinned_spki_b64: base64::engine::general_purpose::STANDARD.encode(spki),
        }
    }

    const HEAD: &str = "listen:\n  cert: pki/server.crt\n  key: pki/server.key\n";

    /// A complete config with trust sources, upstream and routes appended to `extra`.
    fn full(extra: &str) -> String {
        format!(
            "{HEAD}{extra}
trust:
  internal:
    ca: pki/ca.crt
    crl: [pki/ca.crl, pki/ca.crl.der, pki/expired.crl]
  lab:
    pinned:
      - name: ci-runner
        cert: pki/ci-runner.crt
        owner: platform-team
        review_by: 2027-06-01
upstreams:
  orders:
    url: http://127.0.0.1:9000
routes:
  - name: orders-read
    path_prefix: /orders
    methods: [GET, HEAD]
    upstream: orders
    allow:
      - trust: internal
        spiffe_id: spiffe://example.org/ns/prod/*
      - pinned: ci-runner
  - name: status
    path: /status
    upstream: orders
    allow: []
"
        )
    }

    fn setup() -> (TempDir, Pki) {
        let dir = TempDir::new().unwrap();
        let pki = write_pki(dir.path());
        (dir, pki)
    }

    fn load(dir: &TempDir, yaml: &str) -> Result<Config, ConfigErrors> {
        let path = dir.path().join("certguard.yaml");
        fs::write(&path, yaml).unwrap();
        Config::load(&path)
    }

    fn keys(r: Result<Config, ConfigErrors>) -> Vec<String> {
        match r {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.into_iter().map(|e| e.key).collect(),
        }
    }

    fn error_at(r: Result<Config, ConfigErrors>, key: &str) -> ConfigError {
        match r {
            Ok(_) => panic!("expected an error at {key}"),
            Err(e) => {
                e.0.iter()
                    .find(|e| e.key == key)
                    .cloned()
                    .unwrap_or_else(|| panic!("no error at {key}: {e}"))
            }
        }
    }

    #[test]
    fn every_crl_of_a_pem_bundle_is_loaded() {
        let (dir, _) = setup();
        let yaml = full("").replace(
            "crl: [pki/ca.crl, pki/ca.crl.der, pki/expired.crl]",
            "crl: [pki/bundle.crl]",
        );
        let c = load(&dir, &yaml).unwrap();
        let TrustKind::Ca(ca) = &c.trust[0].kind else {
            panic!()
        };
        assert_eq!(ca.crls.len(), 2, "both blocks of the bundle");
        assert_ne!(ca.crls[0].der, ca.crls[1].der);
        assert!(ca.crls.iter().all(|c| c.path.ends_with("bundle.crl")));

        // A bundle with one broken block is an error at that file's key, not a partial load.
        let pki = dir.path().join("pki");
        let good = fs::read_to_string(pki.join("ca.crl")).unwrap();
        let broken = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        fs::write(pki.join("bundle.crl"), good + broken).unwrap();
        let e = error_at(load(&dir, &yaml), "trust.internal.crl[0]");
        assert!(e.message.contains("CRL #2"), "{}", e.message);
    }

    #[test]
    fn a_file_without_end_is_an_error_at_its_key_not_a_hang() {
        let (dir, _) = setup();
        // /dev/zero never ends; a sparse file just over the cap has a size but no data.
        let huge = dir.path().join("pki/huge.crl");
        fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        for (path, key) in [
            ("/dev/zero", "trust.internal.crl[0]"),
            ("pki/huge.crl", "trust.internal.crl[0]"),
        ] {
            let yaml = full("").replace(
                "crl: [pki/ca.crl, pki/ca.crl.der, pki/expired.crl]",
                &format!("crl: [{path}]"),
            );
            let e = error_at(load(&dir, &yaml), key);
            assert!(e.message.contains("larger than 64 MiB"), "{}", e.message);
        }
        // The config file itself.
        let e = Config::load(Path::new("/dev/zero")).unwrap_err();
        assert!(
            e.0[0].message.contains("larger than 64 MiB"),
            "{}",
            e.0[0].message
        );
    }

    /// A DER TLV.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 128 => out.push(n as u8),
            n => {
                out.push(0x82);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn a_crl_the_verifier_cannot_use_is_a_config_error_at_its_key() {
        // A well-formed v1 CRL without nextUpdate: x509-parser reads it, webpki (and so the
        // verifier) does not. It must be refused at its key, not when the listener starts.
        let alg = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ];
        let name = der(
            0x30,
            &der(
                0x31,
                &der(
                    0x30,
                    &[&[0x06, 0x03, 0x55, 0x04, 0x03][..], &der(0x0c, b"x")].concat(),
                ),
            ),
        );
        let tbs = der(
            0x30,
            &[&alg[..], &name, &der(0x17, b"250101000000Z")].concat(),
        );
        let crl = der(0x30, &[&tbs[..], &alg, &[0x03, 0x02, 0x00, 0x00]].concat());
        assert!(
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).is_ok(),
            "the test CRL must at least parse"
        );
        let (dir, _) = setup();
        fs::write(dir.path().join("pki/v1.crl"), &crl).unwrap();
        let yaml = full("").replace(
            "crl: [pki/ca.crl, pki/ca.crl.der, pki/expired.crl]",
            "crl: [pki/ca.crl, pki/v1.crl]",
        );
        let e = error_at(load(&dir, &yaml), "trust.internal.crl[1]");
        assert!(e.message.contains("not usable"), "{}", e.message);
    }

    #[test]
    fn full_config_loads_with_defaults() {
        let (dir, pki) = setup();
        let c = load(&dir, &full("")).unwrap();
        assert_eq!(
            c.listen.address,
            "0.0.0.0:8443".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.listen.cert_chain.len(), 2);
        assert_eq!(c.listen.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(c.listen.min_tls_version, TlsVersion::V1_2);
        assert_eq!(c.listen.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.listen.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.listen.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.listen.max_connections, 10_000);
        assert_eq!(c.listen.max_header_bytes, 65_536);
        assert!(!c.listen.session_resumption);
        assert!(c.listen.require_sni_match);

        assert_eq!(c.trust.len(), 2);
        let TrustKind::Ca(ca) = &c.trust[0].kind else {
            panic!()
        };
        assert_eq!(ca.anchors.len(), 1);
        assert_eq!(
            ca.revocation,
            Revocation {
                depth: RevocationDepth::Chain,
                allow_unknown_status: false,
                allow_expired_crl: false
            }
        );
        assert_eq!(ca.max_lifetime, None);
        assert_eq!(ca.crls.len(), 3);
        assert_eq!(ca.crls[0].issuer, "CN=Test CA,O=certguard test");
        assert_eq!(
            ca.crls[0].der, ca.crls[1].der,
            "PEM and DER forms of one CRL"
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(ca.crls[0].next_update.unwrap() > now);
        assert!(
            ca.crls[2].next_update.unwrap() < now,
            "a stale CRL still loads"
        );
        assert!(ca.crls[0].this_update < now);
        assert!(!ca.crls[0].issuer_raw.is_empty());

        let TrustKind::Pinned(lab) = &c.trust[1].kind else {
            panic!()
        };
        assert!(lab.check_validity);
        assert_eq!(lab.on_overdue_review, OverdueAction::Warn);
        let e = &lab.entries[0];
        assert_eq!(&*e.name, "ci-runner");
        assert_eq!(e.owner.as_deref(), Some("platform-team"));
        assert_eq!(e.review_by, Some(time::macros::date!(2027 - 06 - 01)));
        match &e.pin {
            Pin::Cert { sha256, .. } => assert_eq!(*sha256, crate::certs::sha256(&pki.pinned_der)),
            other => panic!("{other:?}"),
        }

        let up = c.upstream("orders").unwrap();
        assert_eq!(up.scheme, UpstreamScheme::Http);
        assert_eq!(up.authority.as_str(), "127.0.0.1:9000");
        assert_eq!(up.connect_timeout, Duration::from_secs(2));
        assert_eq!(up.timeout, Duration::from_secs(30));
        assert_eq!(up.max_idle_per_host, 64);

        assert_eq!(c.forward.xfcc, XfccMode::SanitizeSet);
        assert_eq!(
            c.forward.xfcc_fields,
            vec![
                XfccField::Hash,
                XfccField::Subject,
                XfccField::Uri,
                XfccField::Dns
            ]
        );
        assert!(c.forward.x_forwarded);
        assert!(c.forward.strip_headers.is_empty());
        assert_eq!(
            c.admin.address,
            "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
        );
        assert!(c.reload.watch);
        assert_eq!(c.reload.debounce, Duration::from_secs(1));
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.logging.level, "info");
        assert!(c.logging.access_log);
        assert_eq!(c.runtime.worker_threads, None);
        assert_eq!(c.runtime.shutdown_grace, Duration::from_secs(30));

        let routes = &c.policy.routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].allow.len(), 2);
        assert_eq!(c.required_trust(&routes[0].allow[1]), Some("lab"));
        assert_eq!(c.required_trust(&routes[0].allow[0]), Some("internal"));
        assert!(routes[1].allow.is_empty());
        assert_eq!(
            c.pinned_entry("ci-runner").map(|(t, _)| &*t.name),
            Some("lab")
        );

        // The config file first, then every file it names, resolved and deduplicated.
        let base = dir.path();
        assert_eq!(
            c.digests.paths().collect::<Vec<_>>(),
            vec![
                base.join("certguard.yaml"),
                base.join("pki/server.crt"),
                base.join("pki/server.key"),
                base.join("pki/ca.crt"),
                base.join("pki/ca.crl"),
                base.join("pki/ca.crl.der"),
                base.join("pki/expired.crl"),
                base.join("pki/ci-runner.crt"),
            ]
        );
    }

    #[test]
    fn explicit_values_override_defaults() {
        let (dir, pki) = setup();
        let yaml = full(
            "  address: \"[::]:443\"
  alpn: [http/1.1]
  min_tls_version: 1.3
  handshake_timeout: 500ms
  max_connections: 5
  session_resumption: true
forward:
  xfcc: append
  xfcc_fields: [cert, chain]
  x_forwarded: false
  strip_headers: [X-Debug]
admin:
  address: 0.0.0.0:9000
reload: { watch: false, debounce: 250ms }
logging: { format: text, level: certguard=debug, access_log: false }
runtime: { worker_threads: 1, shutdown_grace: 2m }",
        )
        .replace("  lab:\n    pinned:", &format!(
            "  lab:\n    check_validity: false\n    on_overdue_review: deny\n    pinned:\n      - name: by-spki\n        spki_sha256: {}",
            pki.pinned_spki_b64.trim_end_matches('=')
        ));
        let c = load(&dir, &yaml).unwrap();
        assert_eq!(c.listen.address.port(), 443);
        assert_eq!(c.listen.alpn, vec![b"http/1.1".to_vec()]);
        assert_eq!(c.listen.min_tls_version, TlsVersion::V1_3);
        assert_eq!(c.listen.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.listen.max_connections, 5);
        assert!(c.listen.session_resumption);
        assert_eq!(c.forward.xfcc, XfccMode::Append);
        assert_eq!(
            c.forward.xfcc_fields,
            vec![XfccField::Cert, XfccField::Chain]
        );
        assert!(!c.forward.x_forwarded);
        assert_eq!(c.forward.strip_headers[0].as_str(), "x-debug");
        assert!(!c.reload.watch);
        assert_eq!(c.reload.debounce, Duration::from_millis(250));
        assert_eq!(c.logging.format, LogFormat::Text);
        assert_eq!(c.runtime.worker_threads, Some(1));
        assert_eq!(c.runtime.shutdown_grace, Duration::from_secs(120));
        let TrustKind::Pinned(lab) = &c.trust[1].kind else {
            panic!()
        };
        assert!(!lab.check_validity);
        assert_eq!(lab.on_overdue_review, OverdueAction::Deny);
        assert_eq!(&*lab.entries[0].name, "by-spki");
        let want = pattern::spki_bytes(&pki.pinned_spki_b64).unwrap();
        assert_eq!(lab.entries[0].pin, Pin::Spki(want));
    }

    #[test]
    fn three_mistakes_in_three_sections_are_all_reported() {
        let (dir, _) = setup();
        let yaml = full("  handshake_timeout: 10 seconds")
            .replace("http://127.0.0.1:9000", "ftp://127.0.0.1:9000")
            .replace("spiffe://example.org/ns/prod/*", "https://example.org/x");
        let r = load(&dir, &yaml);
        assert_eq!(
            keys(r),
            vec![
                "listen.handshake_timeout",
                "upstreams.orders.url",
                "routes[0].allow[0].spiffe_id"
            ]
        );
        let e = error_at(load(&dir, &yaml), "listen.handshake_timeout");
        assert_eq!(e.file, dir.path().join("certguard.yaml"));
        assert!(e.message.contains("ms, s, m, h or d"), "{}", e.message);
        let shown = load(&dir, &yaml).unwrap_err().to_string();
        assert!(
            shown.contains("certguard.yaml: routes[0].allow[0].spiffe_id: "),
            "{shown}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() {
        let (dir, _) = setup();
        let r = load(&dir, "listen:\n  cert: pki/server.crt\n  key: [oops\n");
        let errs = r.unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].key, "");
        assert!(
            errs[0].message.contains("line ") && errs[0].message.contains(" column "),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        let (dir, _) = setup();
        let yaml = full("  adress: 0.0.0.0:1")
            .replace("    path: /status", "    path: /status\n    method: [GET]")
            .replace(
                "      - pinned: ci-runner",
                "      - pinned: ci-runner\n        colour: red",
            );
        assert_eq!(
            keys(load(&dir, &yaml)),
            vec![
                "listen.adress",
                "routes[0].allow[1].colour",
                "routes[1].method"
            ]
        );
        assert_eq!(
            error_at(load(&dir, &yaml), "listen.adress").message,
            "unknown key"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let (dir, _) = setup();
        let sub = dir.path().join("conf");
        fs::create_dir_all(&sub).unwrap();
        let yaml = full("").replace("pki/", "../pki/");
        let path = sub.join("certguard.yaml");
        fs::write(&path, &yaml).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.listen.cert_path, sub.join("../pki/server.crt"));
        assert!(c.digests.paths().any(|p| p == sub.join("../pki/ca.crt")));

        // The same config one directory up cannot find its files; the error names the resolved
        // path.
        let e = error_at(load(&dir, &yaml), "listen.cert");
        assert!(
            e.message
                .contains(&dir.path().join("../pki/server.crt").display().to_string()),
            "{}",
            e.message
        );
    }

    #[test]
    fn load_tracked_records_the_bytes_read_even_when_the_load_fails() {
        let (dir, _) = setup();
        let path = dir.path().join("certguard.yaml");
        let yaml = full("").replace("pki/expired.crl", "crl/new.crl");
        fs::write(&path, &yaml).unwrap();
        let (result, digests) = Config::load_tracked(&path);
        assert!(result.is_err(), "crl/new.crl does not exist yet");
        let crl = dir.path().join("crl/new.crl");
        let ca = dir.path().join("pki/ca.crt");
        assert_eq!(
            digests.0[0],
            (path.clone(), Some(crate::certs::sha256(yaml.as_bytes())))
        );
        assert!(digests.0.contains(&(crl.clone(), None)));
        let ca_bytes = fs::read(&ca).unwrap();
        assert!(digests
            .0
            .contains(&(ca, Some(crate::certs::sha256(&ca_bytes)))));

        fs::create_dir_all(dir.path().join("crl")).unwrap();
        fs::copy(dir.path().join("pki/ca.crl"), &crl).unwrap();
        let (result, digests) = Config::load_tracked(&path);
        let c = result.unwrap();
        assert_eq!(c.digests, digests);
        let crl_bytes = fs::read(&crl).unwrap();
        assert!(digests
            .0
            .contains(&(crl, Some(crate::certs::sha256(&crl_bytes)))));

        // An unreadable config file is recorded too.
        let missing = dir.path().join("missing.yaml");
        let (result, digests) = Config::load_tracked(&missing);
        assert!(result.is_err());
        assert_eq!(digests.0, vec![(missing, None)]);
    }

    #[test]
    fn files_are_checked() {
        let (dir, pki) = setup();
        let mismatched = full("").replace("pki/server.key", "pki/other.key");
        let e = error_at(load(&dir, &mismatched), "listen.key");
        assert!(e.message.contains("does not match"), "{}", e.message);

        fs::write(
            dir.path().join("pki/junk.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!\n",
        )
        .unwrap();
        fs::write(dir.path().join("pki/empty.pem"), "nothing here\n").unwrap();
        let yaml = full("")
            .replace("ca: pki/ca.crt", "ca: pki/empty.pem")
            .replace("pki/ca.crl.der", "pki/junk.pem")
            .replace("pki/server.key", "pki/server.crt")
            .replace("cert: pki/ci-runner.crt", "cert: pki/missing.crt");
        let r = load(&dir, &yaml);
        assert_eq!(
            keys(r),
            vec![
                "listen.key",
                "trust.internal.ca",
                "trust.internal.crl[1]",
                "trust.lab.pinned[0].cert"
            ]
        );
        // Secrets never appear in errors, even when the key file is the broken one.
        let key_body: String = pki.server_key_pem.lines().nth(1).unwrap().to_string();
        fs::write(
            dir.path().join("pki/bad.key"),
            pki.server_key_pem
                .replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\n#"),
        )
        .unwrap();
        let yaml = full("").replace("pki/server.key", "pki/bad.key");
        let shown = load(&dir, &yaml).unwrap_err().to_string();
        assert!(shown.contains("listen.key"), "{shown}");
        assert!(!shown.contains(&key_body[..20]), "{shown}");
    }

    #[test]
    fn trust_source_shape_errors() {
        let (dir, _) = setup();
        let yaml = format!(
            "{HEAD}trust:
  both: {{ ca: pki/ca.crt, pinned: [] }}
  neither: {{ check_validity: true }}
  none: {{ ca: pki/ca.crt }}
  lab:
    max_lifetime: 90d
    pinned:
      - {{ name: a, sha256: '{fp}' }}
      - {{ name: a, sha256: '{fpc}' }}
      - {{ name: b }}
      - {{ name: c, sha256: '{fp}', spki_sha256: 'AAAA' }}
      - {{ name: d, sha256: 'abc' }}
      - {{ name: e, spki_sha256: 'AAAA' }}
      - {{ sha256: '{fp}', review_by: 'June 1st' }}
",
            fp = "ab".repeat(32),
            fpc = "AB:".repeat(31) + "AB",
        );
        assert_eq!(
            keys(load(&dir, &yaml)),
            vec![
                "trust.both",
                "trust.neither",
                "trust.none",
                "trust.lab.max_lifetime",
                "trust.lab.pinned[1].name",
                "trust.lab.pinned[2]",
                "trust.lab.pinned[3]",
                "trust.lab.pinned[4].sha256",
                "trust.lab.pinned[5].spki_sha256",
                "trust.lab.pinned[6].name",
                "trust.lab.pinned[6].review_by",
            ]
        );
        let missing = load(&dir, HEAD);
        assert_eq!(keys(missing), vec!["trust"]);
        assert_eq!(
            keys(load(&dir, "")),
            vec!["listen.cert", "listen.key", "trust"]
        );
    }

    #[test]
    fn spiffe_trust_domains_are_valid_and_bound_once() {
        let (dir, _) = setup();
        let yaml = format!(
            "{HEAD}trust:
  internal:
    ca: pki/ca.crt
    spiffe_trust_domains: [example.org, corp.example]
  partner:
    ca: pki/ca.crt
    spiffe_trust_domains: [partner.example, Example.COM, 'spiffe://x', corp.example, x:1]
  lab:
    pinned: [{{ name: a, sha256: '{fp}' }}]
    spiffe_trust_domains: [lab.example, lab.example]
",
            fp = "ab".repeat(32),
        );
        let r = load(&dir, &yaml);
        let e = error_at(load(&dir, &yaml), "trust.partner.spiffe_trust_domains[3]");
        assert!(
            e.message
                .contains("already bound at trust.internal.spiffe_trust_domains[1]"),
            "{}",
            e.message
        );
        assert_eq!(
            keys(r),
            vec![
                "trust.partner.spiffe_trust_domains[1]",
                "trust.partner.spiffe_trust_domains[2]",
                "trust.partner.spiffe_trust_domains[3]",
                "trust.partner.spiffe_trust_domains[4]",
                "trust.lab.spiffe_trust_domains[1]",
            ]
        );
        let ok = yaml
            .replace(", Example.COM, 'spiffe://x', corp.example, x:1", "")
            .replace("[lab.example, lab.example]", "[lab.example]");
        let c = load(&dir, &ok).unwrap();
        let domains: Vec<_> = c
            .trust
            .iter()
            .map(|t| t.spiffe_trust_domains.clone())
            .collect();
        assert_eq!(
            domains,
            vec![
                vec!["example.org".to_string(), "corp.example".to_string()],
                vec!["partner.example".to_string()],
                vec!["lab.example".to_string()],
            ]
        );
    }

    #[test]
    fn pins_parse_with_and_without_colons() {
        let (dir, pki) = setup();
        let digest = crate::certs::sha256(&pki.pinned_der);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let colons: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        for (given, form) in [(hex.clone(), "plain"), (colons.join(":"), "colons")] {
            let yaml = full("").replace("cert: pki/ci-runner.crt", &format!("sha256: \"{given}\""));
            let c = load(&dir, &yaml).unwrap();
            let TrustKind::Pinned(lab) = &c.trust[1].kind else {
                panic!()
            };
            assert_eq!(lab.entries[0].pin, Pin::Sha256(digest), "{form}");
        }
    }

    #[test]
    fn methods_connect_and_implied_head() {
        let (dir, _) = setup();
        let yaml = full("").replace(
            "routes:\n",
            "routes:
  - name: get-only
    path: /g
    methods: [GET]
    upstream: orders
    allow: []
  - name: tunnel
    path: /t
    methods: [POST, CONNECT, delete]
    upstream: orders
    allow: []
",
        );
        let errors = load(&dir, &yaml).unwrap_err().0;
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.key.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "routes[1].methods[1]",
                    "CONNECT is not proxied (certguard refuses it with 400)"
                ),
                (
                    "routes[1].methods[2]",
                    "`delete` is not an upper-case HTTP method token (e.g. GET)"
                ),
            ]
        );
        let yaml = yaml.replace("[POST, CONNECT, delete]", "[POST]");
        let c = load(&dir, &yaml).unwrap();
        let methods = |i: usize| c.policy.routes[i].methods.clone().unwrap();
        assert_eq!(methods(0), [http::Method::GET, http::Method::HEAD]);
        assert_eq!(methods(1), [http::Method::POST]);
    }

    #[test]
    fn deny_entries() {
        let (dir, _) = setup();
        let good = full("").replace(
            "upstreams:\n",
            "deny:
  - serial: '00:4F:2A:9C'
    trust: internal
    reason: INC-4711 key leaked
  - spiffe_id: 'spiffe://example.org/ns/legacy/*'
upstreams:
",
        );
        let c = load(&dir, &good).unwrap();
        let entries = c.deny.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].reason.as_deref(), Some("INC-4711 key leaked"));
        assert_eq!(entries[0].entry.describe(), "trust=internal, serial=4f2a9c");
        assert_eq!(entries[1].reason, None);
        let bad = full("").replace(
            "upstreams:\n",
            "deny:
  - authenticated: true
  - reason: nobody in particular
  - {}
  - serial: 'zz'
  - trust: nowhere
    cn: x
  - cn: x
    why: typo
  - 42
upstreams:
",
        );
        assert_eq!(
            keys(load(&dir, &bad)),
            [
                "deny[5].why",
                "deny[6]",
                "deny[0].authenticated",
                "deny[1]",
                "deny[2]",
                "deny[3].serial",
                "deny[4].trust",
            ]
        );
    }

    #[test]
    fn shadow_allow_and_enforce() {
        let (dir, _) = setup();
        let c = load(&dir, &full("")).unwrap();
        assert!(c
            .policy
            .routes
            .iter()
            .all(|r| r.enforce && r.shadow_allow.is_none()));
        let shadowed = full("").replace(
            "      - pinned: ci-runner\n",
            "      - pinned: ci-runner\n    shadow_allow:\n      - trust: internal\n      - pinned: ci-runner\n    enforce: false\n",
        );
        let c = load(&dir, &shadowed).unwrap();
        let r = &c.policy.routes[0];
        assert!(!r.enforce);
        let shadow: Vec<String> = r
            .shadow_allow
            .iter()
            .flat_map(|s| s.entries())
            .map(|e| e.describe())
            .collect();
        assert_eq!(shadow, ["trust=internal", "pinned=ci-runner"]);
        let broken = shadowed
            .replace(
                "      - trust: internal\n      - pinned",
                "      - trust: nowhere\n      - pinned",
            )
            .replace("enforce: false", "enforce: maybe");
        assert_eq!(
            keys(load(&dir, &broken)),
            ["routes[0].enforce", "routes[0].shadow_allow[0].trust"]
        );
    }

    #[test]
    fn concurrency_limits_are_bounded() {
        let (dir, _) = setup();
        let c = load(&dir, &full("")).unwrap();
        assert_eq!(c.listen.max_inflight_per_connection, 32);
        assert_eq!(c.listen.max_inflight_per_identity, None);
        assert_eq!(c.upstreams[0].max_requests, 1024);
        let c = load(&dir, &full("  max_inflight_per_identity: 64\n")).unwrap();
        assert_eq!(c.listen.max_inflight_per_identity, Some(64));
        assert!(c.forward.strip_identity_headers);
        let yaml = full("  max_inflight_per_connection: 0\n  max_inflight_per_identity: 0\n")
            .replace(
                "    url: http://127.0.0.1:9000\n",
                "    url: http://127.0.0.1:9000\n    max_requests: 5000000\n",
            );
        assert_eq!(
            keys(load(&dir, &yaml)),
            [
                "listen.max_inflight_per_connection",
                "listen.max_inflight_per_identity",
                "upstreams.orders.max_requests"
            ]
        );
    }

    #[test]
    fn route_errors() {
        let (dir, _) = setup();
        let yaml = full("").replace(
            "routes:\n",
            "routes:
  - name: both
    path: /a
    path_prefix: /a
    upstream: orders
    allow: [{ authenticated: true }]
  - name: bad-bits
    host: 'a.*.internal'
    methods: [get]
    upstream: nowhere
    allow:
      - {}
      - { trust: external }
      - { pinned: nobody }
      - { san_dns: 'a.*.b' }
      - { cn: 'billing-*', ou: 'pay*' }
      - { trust: internal, pinned: ci-runner }
      - { authenticated: false }
      - { san_ip: 10.0.0.0/8, fingerprint: 'zz' }
  - name: both
    path_prefix: orders
    upstream: orders
  - upstream: orders
    allow: []
",
        );
        assert_eq!(
            keys(load(&dir, &yaml)),
            vec![
                "routes[0].path_prefix",
                "routes[1].host",
                "routes[1].methods[0]",
                "routes[1].upstream",
                "routes[1].allow[0]",
                "routes[1].allow[1].trust",
                "routes[1].allow[2].pinned",
                "routes[1].allow[3].san_dns",
                "routes[1].allow[5].pinned",
                "routes[1].allow[6].authenticated",
                "routes[1].allow[7].fingerprint",
                "routes[2].name",
                "routes[2].path_prefix",
                "routes[2].allow",
                "routes[3].name",
            ]
        );
    }

    #[test]
    fn route_paths_must_be_normalized() {
        let (dir, _) = setup();
        let yaml = full("").replace(
            "routes:\n",
            "routes:
  - name: tilde
    path: /a%7Eb
    upstream: orders
    allow: [{ authenticated: true }]
  - name: lower-hex
    path_prefix: /x%2cy
    upstream: orders
    allow: [{ authenticated: true }]
  - name: params
    path_prefix: /admin;x
    upstream: orders
    allow: [{ authenticated: true }]
",
        );
        let r = load(&dir, &yaml);
        let e = error_at(r, "routes[0].path");
        assert!(e.message.contains("`/a~b`"), "{}", e.message);
        let r = load(&dir, &yaml);
        let e = error_at(r, "routes[1].path_prefix");
        assert!(e.message.contains("`/x%2Cy`"), "{}", e.message);
        let r = load(&dir, &yaml);
        let e = error_at(r, "routes[2].path_prefix");
        assert!(e.message.contains("400"), "{}", e.message);
    }

    #[test]
    fn single_thread_refuses_settings_that_make_handshakes_wait() {
        let (dir, _) = setup();
        let ok = full("runtime: { single_thread: true, worker_threads: 1 }");
        let c = load(&dir, &ok).unwrap();
        assert!(c.runtime.single_thread);
        assert!(!load(&dir, &full("")).unwrap().runtime.single_thread);

        let e = error_at(
            load(
                &dir,
                &full("runtime: { single_thread: true, worker_threads: 2 }"),
            ),
            "runtime.worker_threads",
        );
        assert!(e.message.contains("single_thread"), "{}", e.message);

        // OCSP and distribution points make a handshake wait for the network.
        let waits = full("runtime: { single_thread: true }").replace(
            "    crl: [pki/ca.crl, pki/ca.crl.der, pki/expired.crl]\n",
            "    crl: [pki/ca.crl, pki/ca.crl.der, pki/expired.crl]
    ocsp: { mode: prefer, responder: \"http://127.0.0.1:9/\" }
    crl_distribution_points: { allow: [\"http://127.0.0.1:9/\"] }
",
        );
        assert_eq!(
            keys(load(&dir, &waits)),
            vec![
                "trust.internal.ocsp".to_string(),
                "trust.internal.crl_distribution_points".to_string(),
            ]
        );
        let e = error_at(load(&dir, &waits), "trust.internal.ocsp");
        assert!(e.message.contains("runtime.single_thread"), "{}", e.message);
        // The same settings on the default runtime are fine.
        let multi = waits.replace("runtime: { single_thread: true }", "");
        let c = load(&dir, &multi).unwrap();
        assert_eq!(
            c.handshake_waits(),
            vec![
                "trust.internal.ocsp".to_string(),
                "trust.internal.crl_distribution_points".to_string(),
            ]
        );
    }

    #[test]
    fn other_value_errors() {
        let (dir, _) = setup();
        let yaml = full(
            "  address: localhost:8443
  alpn: [h3]
  min_tls_version: \"1.1\"
  max_connections: 0
forward:
  xfcc: replace
  xfcc_fields: [hash, issuer]
  strip_headers: [\"bad header\"]
admin: { address: nope }
logging: { format: xml, level: '' }
runtime: { worker_threads: 0, shutdown_grace: forever }",
        )
        .replace("http://127.0.0.1:9000", "http://127.0.0.1:9000/api");
        assert_eq!(
            keys(load(&dir, &yaml)),
            vec![
                "listen.address",
                "listen.alpn[0]",
                "listen.min_tls_version",
                "listen.max_connections",
                "upstreams.orders.url",
                "forward.xfcc",
                "forward.xfcc_fields[1]",
                "forward.strip_headers[0]",
                "admin.address",
                "logging.format",
                "logging.level",
                "runtime.worker_threads",
                "runtime.shutdown_grace",
            ]
        );
    }

    #[test]
    fn health_probes_the_configured_admin_address() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("c.yaml");
        for (yaml, want) in [
            ("admin:\n  address: \"127.0.0.1:9999\"\n", "127.0.0.1:9999"),
            ("admin:\n  address: \"0.0.0.0:9901\"\n", "127.0.0.1:9901"),
            ("admin:\n  address: \"[::]:7000\"\n", "[::1]:7000"),
            ("listen:\n  address: \"0.0.0.0:8443\"\n", "127.0.0.1:9901"),
        ] {
            fs::write(&path, yaml).unwrap();
            assert_eq!(
                admin_probe_address(&path).map(|a| a.to_string()).as_deref(),
                Some(want),
                "{yaml}"
            );
        }
        fs::write(&path, "admin:\n  address: nowhere\n").unwrap();
        assert_eq!(admin_probe_address(&path), None);
        assert_eq!(admin_probe_address(&dir.path().join("missing.yaml")), None);
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("0s", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            (" 5m ", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("90d", Duration::from_secs(90 * 86_400)),
            ("36500d", Duration::from_secs(36_500 * 86_400)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "10sec",
            "1w",
            "99999999999999999999d",
            // Fits in a u64 of seconds, but would overflow `Instant + timeout`.
            "18000000000000000000s",
            "36501d",
            "18446744073709551615ms",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
        assert!(parse_duration("10")
            .unwrap_err()
            .contains("ms, s, m, h or d"));
    }

    #[test]
    fn upstream_urls() {
        let ok = [
            (
                "http://127.0.0.1:9000",
                UpstreamScheme::Http,
                "127.0.0.1:9000",
            ),
            ("http://orders", UpstreamScheme::Http, "orders:80"),
            (
                "h2c://grpc.internal:50051/",
                UpstreamScheme::H2c,
                "grpc.internal:50051",
            ),
            ("http://[::1]:8080", UpstreamScheme::Http, "[::1]:8080"),
            (
                "https://api.example.com",
                UpstreamScheme::Https,
                "api.example.com:443",
            ),
            (
                "https://10.0.0.7:8443/",
                UpstreamScheme::Https,
                "10.0.0.7:8443",
            ),
            ("https://[::1]", UpstreamScheme::Https, "[::1]:443"),
        ];
        for (url, scheme, authority) in ok {
            let (s, a) = build::parse_upstream_url(url).unwrap();
            assert_eq!((s, a.as_str()), (scheme, authority), "{url}");
        }
        for bad in [
            "https://x/api",
            "https://x:0",
            "ftp://x",
            "127.0.0.1:9000",
            "http://x/api",
            "http://x?q=1",
            "http://user:pw@x:80",
            "http://:80",
            "http://x:notaport",
            "http://x:0",
        ] {
            assert!(build::parse_upstream_url(bad).is_err(), "{bad}");
        }
    }

    /// `full()` with the `orders` upstream's lines replaced by `lines` (YAML at 4 spaces).
    fn with_upstream(lines: &str) -> String {
        full("").replace("    url: http://127.0.0.1:9000\n", lines)
    }

    #[test]
    fn https_upstreams_load_their_tls_settings() {
        let (dir, _) = setup();
        let yaml = with_upstream(
            "    url: https://orders.internal
    ca: pki/ca.crt
    client_cert: pki/server.crt
    client_key: pki/server.key
",
        );
        let c = load(&dir, &yaml).unwrap();
        let up = c.upstream("orders").unwrap();
        assert_eq!(up.scheme, UpstreamScheme::Https);
        assert_eq!(up.authority.as_str(), "orders.internal:443");
        let tls = up.tls.as_ref().unwrap();
        assert_eq!(tls.server_name.to_str(), "orders.internal");
        assert!(matches!(
            tls.server_name,
            rustls_pki_types::ServerName::DnsName(_)
        ));
        let pki = dir.path().join("pki");
        match &tls.roots {
            UpstreamRoots::Bundle { path, certs } => {
                assert_eq!(path, &pki.join("ca.crt"));
                assert_eq!(certs.len(), 1);
            }
            other => panic!("expected the ca bundle, got {other:?}"),
        }
        let client = tls.client_cert.as_ref().unwrap();
        assert_eq!(client.chain.len(), 2, "leaf and CA of server.crt");
        assert_eq!(client.key_path, pki.join("server.key"));
        // Every file is watched for reloads.
        for f in ["ca.crt", "server.crt", "server.key"] {
            assert!(c.digests.paths().any(|p| p == pki.join(f)), "{f}");
        }

        // No `ca`: the system roots; an IP host is the name the certificate must carry.
        let c = load(&dir, &with_upstream("    url: https://[::1]:8443\n")).unwrap();
        let tls = c.upstream("orders").unwrap().tls.clone().unwrap();
        assert_eq!(tls.roots, UpstreamRoots::System);
        assert_eq!(tls.client_cert, None);
        assert!(matches!(
            tls.server_name,
            rustls_pki_types::ServerName::IpAddress(_)
        ));
        assert_eq!(tls.server_name.to_str(), "::1");

        // Plain upstreams have none.
        let c = load(&dir, &full("")).unwrap();
        assert!(c.upstream("orders").unwrap().tls.is_none());
    }

    #[test]
    fn https_upstream_errors() {
        let (dir, _) = setup();
        let https = "    url: https://orders.internal\n";
        // Both or neither, and the error names the missing key.
        let e = error_at(
            load(
                &dir,
                &with_upstream(&format!("{https}    client_cert: pki/server.crt\n")),
            ),
            "upstreams.orders.client_key",
        );
        assert!(e.message.contains("give both or neither"), "{}", e.message);
        let e = error_at(
            load(
                &dir,
                &with_upstream(&format!("{https}    client_key: pki/server.key\n")),
            ),
            "upstreams.orders.client_cert",
        );
        assert!(e.message.contains("give both or neither"), "{}", e.message);

        // The key must belong to the certificate.
        let mismatched =
            format!("{https}    client_cert: pki/server.crt\n    client_key: pki/other.key\n");
        let r = load(&dir, &with_upstream(&mismatched));
        assert_eq!(
            keys(load(&dir, &with_upstream(&mismatched))),
            ["upstreams.orders.client_key"]
        );
        let e = error_at(r, "upstreams.orders.client_key");
        assert!(
            e.message
                .contains("does not match the certificate in upstreams.orders.client_cert"),
            "{}",
            e.message
        );

        // Unreadable and unusable files, each at its own key, all in one pass.
        let yaml = with_upstream(&format!(
            "{https}    ca: pki/missing.crt\n    client_cert: pki/ca.crl\n    client_key: pki/ca.crt\n"
        ));
        assert_eq!(
            keys(load(&dir, &yaml)),
            [
                "upstreams.orders.ca",
                "upstreams.orders.client_cert",
                "upstreams.orders.client_key"
            ]
        );
        let e = error_at(
            load(
                &dir,
                &with_upstream(&format!("{https}    ca: pki/server.key\n")),
            ),
            "upstreams.orders.ca",
        );
        assert!(
            e.message.contains("no PEM CERTIFICATE block"),
            "{}",
            e.message
        );

        // TLS keys on a plain upstream are mistakes, not silently ignored.
        let yaml = with_upstream(
            "    url: http://127.0.0.1:9000
    ca: pki/ca.crt
    client_cert: pki/server.crt
    client_key: pki/server.key
",
        );
        let r = load(&dir, &yaml);
        assert_eq!(
            keys(load(&dir, &yaml)),
            [
                "upstreams.orders.ca",
                "upstreams.orders.client_cert",
                "upstreams.orders.client_key"
            ]
        );
        assert!(error_at(r, "upstreams.orders.ca")
            .message
            .contains("only valid for https:// upstreams"));
        let yaml = with_upstream("    url: h2c://127.0.0.1:9000\n    ca: pki/ca.crt\n");
        assert_eq!(keys(load(&dir, &yaml)), ["upstreams.orders.ca"]);

        // A host no certificate can name.
        let yaml = with_upstream("    url: https://bad..name\n");
        let e = error_at(load(&dir, &yaml), "upstreams.orders.url");
        assert!(
            e.message.contains("DNS name or IP address"),
            "{}",
            e.message
        );
    }
}
