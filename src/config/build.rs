//! Turning the raw document into a [`Config`]: defaults, value checks, reading and parsing every
//! file the config names, and the trust sources. Every error is collected with its key path; the
//! result is either a complete `Config` or all of its errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::raw::{self, RawTrust, Scalar};
use super::*;
use crate::policy::pattern;

/// Collected errors of one load, all for the same config file.
pub(super) struct Errs {
    file: PathBuf,
    list: Vec<ConfigError>,
}

impl Errs {
    /// Record a mistake at `key`.
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// Is there already an error at `key` or below it? Used so that a value that failed to
    /// parse is not reported a second time as missing.
    pub(super) fn has(&self, key: &str) -> bool {
        self.list.iter().any(|e| {
            e.key == key
                || (e.key.starts_with(key)
                    && matches!(e.key.as_bytes().get(key.len()), Some(b'.') | Some(b'[')))
        })
    }

    /// Number of errors so far.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Report `key` as missing unless it already has an error.
    pub(super) fn required(&mut self, key: &str, what: &str) {
        if !self.has(key) {
            self.push(key, format!("required: {what}"));
        }
    }
}

/// Where relative paths resolve and which files were read.
pub(super) struct Files {
    base: PathBuf,
    pub(super) digests: FileDigests,
}

impl Files {
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Read the file `rel` names; an error is reported at `key`.
    pub(super) fn read(
        &mut self,
        errs: &mut Errs,
        key: &str,
        rel: &str,
    ) -> Option<(PathBuf, Vec<u8>)> {
        if rel.trim().is_empty() {
            errs.push(key, "must be a file path");
            return None;
        }
        let path = self.resolve(rel);
        let read = super::read_file(&path);
        self.digests.record(&path, read.as_deref().ok());
        match read {
            Ok(bytes) => Some((path, bytes)),
            Err(e) => {
                errs.push(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }
}

/// What the file declares, whether or not each declaration built: routes are checked against
/// these so one broken trust source does not also make every rule that names it an error.
#[derive(Default)]
pub(super) struct Names {
    /// Trust source names.
    pub(super) trust: Vec<String>,
    /// `(pinned name, its trust source, key path of the definition)`.
    pub(super) pinned: Vec<(String, String, String)>,
    /// Upstream names.
    pub(super) upstreams: Vec<String>,
}

/// Build a config from `text` as if read from `path`. Also returns every file read (`path`
/// first, with the digest of `text`), whether or not the config built.
pub(super) fn build(text: &str, path: &Path) -> (Result<Config, ConfigErrors>, FileDigests) {
    let mut errs = Errs {
        file: path.to_path_buf(),
        list: Vec::new(),
    };
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files = Files {
        base,
        digests: FileDigests::default(),
    };
    files.digests.record(path, Some(text.as_bytes()));
    let parsed = match raw::parse(text) {
        Ok(p) => p,
        Err(e) => {
            errs.push(e.key, e.message);
            return (Err(ConfigErrors(errs.list)), files.digests);
        }
    };
    for e in parsed.errors {
        errs.push(e.key, e.message);
    }
    let rc = parsed.config;

    let listen = listen(&mut errs, &mut files, rc.listen.unwrap_or_default());
    let mut names = Names::default();
    let trust = trust(&mut errs, &mut files, rc.trust, &mut names);
    let upstreams = upstreams(
        &mut errs,
        &mut files,
        rc.upstreams.unwrap_or_default(),
        &mut names,
    );
    let policy = super::routes::compile(&mut errs, rc.routes.unwrap_or_default(), &names);
    let deny = super::routes::compile_deny(&mut errs, rc.deny.unwrap_or_default(), &names);
    let forward = forward(&mut errs, rc.forward.unwrap_or_default());
    let admin = Admin {
        address: socket_addr(
            &mut errs,
            "admin.address",
            rc.admin.unwrap_or_default().address.as_deref(),
            "127.0.0.1:9901",
        ),
    };
    let rl = rc.reload.unwrap_or_default();
    let reload = Reload {
        watch: rl.watch.unwrap_or(true),
        debounce: duration(&mut errs, "reload.debounce", rl.debounce.as_ref(), 1, false),
    };
    let logging = logging(&mut errs, rc.logging.unwrap_or_default());
    let runtime = runtime(&mut errs, rc.runtime.unwrap_or_default());
    if runtime.single_thread {
        for key in super::handshake_waits(&trust) {
            errs.push(key, super::SINGLE_THREAD_WAITS);
        }
    }

    let digests = files.digests;
    let result = match listen {
        Some(listen) if errs.list.is_empty() => Ok(Config {
            source: path.to_path_buf(),
            listen,
            trust,
            policy,
            deny: Arc::new(deny),
            upstreams,
            forward: Arc::new(forward),
            admin,
            reload,
            logging,
            runtime,
            digests: digests.clone(),
        }),
        _ => {
            if errs.list.is_empty() {
                errs.push("listen", "invalid");
            }
            Err(ConfigErrors(errs.list))
        }
    };
    (result, digests)
}

/// A duration with a default in seconds; `nonzero` rejects `0s`.
fn duration(
    errs: &mut Errs,
    key: &str,
    v: Option<&Scalar>,
    default_secs: u64,
    nonzero: bool,
) -> Duration {
    let Some(v) = v else {
        return Duration::from_secs(default_secs);
    };
    match parse_duration(&v.0) {
        Ok(d) if nonzero && d.is_zero() => {
            errs.push(key, "must be greater than 0");
            Duration::from_secs(default_secs)
        }
        Ok(d) => d,
        Err(e) => {
            errs.push(key, e);
            Duration::from_secs(default_secs)
        }
    }
}

/// One of a fixed set of words.
fn choice<T: Copy>(errs: &mut Errs, key: &str, v: Option<&str>, options: &[(&str, T)]) -> T {
    let default = options[0].1;
    let Some(v) = v else { return default };
    match options.iter().find(|(name, _)| *name == v) {
        Some((_, t)) => *t,
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            errs.push(key, format!("`{v}` is not one of: {}", names.join(", ")));
            default
        }
    }
}

fn socket_addr(errs: &mut Errs, key: &str, v: Option<&str>, default: &str) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
    let s = v.unwrap_or(default);
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errs.push(
                key,
                format!("`{s}` is not an IP:PORT socket address (e.g. 0.0.0.0:8443 or [::]:8443)"),
            );
            default.parse().unwrap_or(fallback)
        }
    }
}

fn count(errs: &mut Errs, key: &str, v: Option<u64>, default: usize, min: u64) -> usize {
    let Some(n) = v else { return default };
    if n < min {
        errs.push(key, format!("must be at least {min}"));
        return default;
    }
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Largest concurrency limit accepted (a semaphore's size).
const MAX_LIMIT: u64 = 1_000_000;

/// A concurrency limit: 1 to [`MAX_LIMIT`].
fn bounded_count(errs: &mut Errs, key: &str, v: Option<u64>, default: usize) -> usize {
    match v {
        Some(n) if n > MAX_LIMIT => {
            errs.push(key, format!("must be at most {MAX_LIMIT}"));
            default
        }
        _ => count(errs, key, v, default, 1),
    }
}

fn listen(errs: &mut Errs, files: &mut Files, l: raw::RawListen) -> Option<Listen> {
    let address = socket_addr(errs, "listen.address", l.address.as_deref(), "0.0.0.0:8443");

    let mut cert = None;
    match &l.cert {
        Some(c) => {
            if let Some((path, bytes)) = files.read(errs, "listen.cert", c) {
                match pki::parse_cert_pem(&path, &bytes) {
                    Ok(chain) => cert = Some((path, chain)),
                    Err(e) => errs.push("listen.cert", e),
                }
            }
        }
        None => errs.required(
            "listen.cert",
            "PEM certificate chain of the server, leaf first",
        ),
    }
    let mut key = None;
    match &l.key {
        Some(k) => {
            if let Some((path, bytes)) = files.read(errs, "listen.key", k) {
                let chain = cert.as_ref().map(|(_, c): &(PathBuf, Vec<_>)| c.as_slice());
                match pki::parse_key_pem(&path, &bytes, chain, "listen.cert") {
                    Ok(der) => key = Some((path, der)),
                    Err(e) => errs.push("listen.key", e),
                }
            }
        }
        None => errs.required("listen.key", "PEM private key of the server certificate"),
    }

    let alpn = match l.alpn {
        None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                if p == "h2" || p == "http/1.1" {
                    out.push(p.as_bytes().to_vec());
                } else {
                    errs.push(
                        format!("listen.alpn[{i}]"),
                        format!("unsupported ALPN protocol `{p}` (supported: h2, http/1.1)"),
                    );
                }
            }
            out
        }
    };
    let min_tls_version = choice(
        errs,
        "listen.min_tls_version",
        l.min_tls_version.as_ref().map(|s| s.0.as_str()),
        &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
    );
    let handshake_timeout = duration(
        errs,
        "listen.handshake_timeout",
        l.handshake_timeout.as_ref(),
        10,
        true,
    );
    let header_read_timeout = duration(
        errs,
        "listen.header_read_timeout",
        l.header_read_timeout.as_ref(),
        10,
        true,
    );
    let idle_timeout = duration(
        errs,
        "listen.idle_timeout",
        l.idle_timeout.as_ref(),
        60,
        true,
    );
    let max_connections = count(errs, "listen.max_connections", l.max_connections, 10_000, 1);
    let max_header_bytes = count(
        errs,
        "listen.max_header_bytes",
        l.max_header_bytes,
        65_536,
        1,
    );
    let max_inflight_per_connection = bounded_count(
        errs,
        "listen.max_inflight_per_connection",
        l.max_inflight_per_connection,
        32,
    );
    let max_inflight_per_identity = l
        .max_inflight_per_identity
        .map(|n| bounded_count(errs, "listen.max_inflight_per_identity", Some(n), 1));

    let ((cert_path, cert_chain), (key_path, key)) = (cert?, key?);
    Some(Listen {
        address,
        cert_path,
        key_path,
        cert_chain,
        key: Arc::new(key),
        alpn,
        min_tls_version,
        handshake_timeout,
        header_read_timeout,
        idle_timeout,
        max_connections,
        max_header_bytes,
        max_inflight_per_connection,
        max_inflight_per_identity,
        session_resumption: l.session_resumption.unwrap_or(false),
        require_sni_match: l.require_sni_match.unwrap_or(true),
    })
}

fn trust(
    errs: &mut Errs,
    files: &mut Files,
    t: Option<raw::NamedMap<RawTrust>>,
    names: &mut Names,
) -> Vec<TrustSource> {
    let sources = t.unwrap_or_default().0;
    if sources.is_empty() {
        errs.required(
            "trust",
            "at least one trust source (`ca:` chain or `pinned:` list)",
        );
    }
    let mut out = Vec::new();
    let mut domains = Vec::new();
    for (name, src) in sources {
        let key = format!("trust.{name}");
        names.trust.push(name.clone());
        if errs.has(&key) && src == RawTrust::default() {
            continue; // not a mapping: already reported
        }
        if name.trim().is_empty() {
            errs.push(&key, "trust source names must not be empty");
        } else if name == "none" {
            errs.push(
                &key,
                "`none` is reserved (it is the metric label for no trust source)",
            );
        }
        let kind = match (&src.ca, &src.pinned) {
            (Some(_), Some(_)) => {
                errs.push(
                    &key,
                    "has both `ca` and `pinned`: a trust source is either a CA chain or a pinned list",
                );
                None
            }
            (None, None) => {
                if !errs.has(&format!("{key}.ca")) && !errs.has(&format!("{key}.pinned")) {
                    errs.push(
                        &key,
                        "needs `ca` (a CA bundle) or `pinned` (a list of pinned certificates)",
                    );
                }
                None
            }
            (Some(ca), None) => ca_trust(errs, files, &key, ca, &src).map(TrustKind::Ca),
            (None, Some(p)) => {
                pinned_trust(errs, files, &name, p, &src, &mut names.pinned).map(TrustKind::Pinned)
            }
        };
        let spiffe_trust_domains = trust_domains(
            errs,
            &key,
            src.spiffe_trust_domains.as_deref(),
            &mut domains,
        );
        if let Some(kind) = kind {
            out.push(TrustSource {
                name: Arc::from(name.as_str()),
                kind,
                spiffe_trust_domains,
            });
        }
    }
    out
}

/// `trust.<source>.ocsp`: `None` for `mode: off` (the default).
fn ocsp(errs: &mut Errs, key: &str, o: &raw::RawOcsp) -> Option<Ocsp> {
    #[derive(Clone, Copy)]
    enum Mode {
        Off,
        Prefer,
        Require,
    }
    let mode = choice(
        errs,
        &format!("{key}.mode"),
        o.mode.as_deref(),
        &[
            ("off", Mode::Off),
            ("prefer", Mode::Prefer),
            ("require", Mode::Require),
        ],
    );
    let responder = o
        .responder
        .as_deref()
        .map(str::trim)
        .and_then(|url| match http_url(url) {
            Ok(()) if url.starts_with("http://") => Some(url.to_owned()),
            Ok(()) => {
                errs.push(
                    format!("{key}.responder"),
                    "OCSP is asked over http:// (the answers are signed; RFC 6960 A.1)",
                );
                None
            }
            Err(e) => {
                errs.push(format!("{key}.responder"), e);
                None
            }
        });
    let timeout = duration(errs, &format!("{key}.timeout"), o.timeout.as_ref(), 2, true);
    let cache_max = duration(
        errs,
        &format!("{key}.cache_max"),
        o.cache_max.as_ref(),
        3600,
        true,
    );
    let refresh = duration(
        errs,
        &format!("{key}.refresh"),
        o.refresh.as_ref(),
        300,
        true,
    );
    let require = match mode {
        Mode::Off => return None,
        Mode::Prefer => false,
        Mode::Require => true,
    };
    Some(Ocsp {
        require,
        responder,
        timeout,
        cache_max,
        refresh,
    })
}

/// An absolute `http://` or `https://` URL with a host.
fn http_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(format!("`{url}` is not an http:// or https:// URL")),
    }
}

/// A distribution-point prefix: an `http(s)://` URL whose host is followed by `/`, so that a
/// prefix can never be extended into another host (`http://pki.internal` would also allow
/// `http://pki.internal.evil.example/`).
fn url_prefix(prefix: &str) -> Result<(), String> {
    http_url(prefix)?;
    let after_scheme = prefix.split_once("://").map_or("", |(_, rest)| rest);
    if !after_scheme.contains('/') {
        return Err(format!(
            "`{prefix}` must end its host with `/` (e.g. `{prefix}/`)"
        ));
    }
    Ok(())
}

/// `trust.<name>.spiffe_trust_domains`: valid trust domains, each bound to one source only.
/// `bound` holds `(domain, key path of its binding)` of the sources read so far.
fn trust_domains(
    errs: &mut Errs,
    key: &str,
    list: Option<&[String]>,
    bound: &mut Vec<(String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, d) in list.unwrap_or_default().iter().enumerate() {
        let dk = format!("{key}.spiffe_trust_domains[{i}]");
        let domain = d.trim();
        if !crate::identity::valid_trust_domain(domain) {
            errs.push(
                &dk,
                format!(
                    "`{d}` is not a SPIFFE trust domain (lower-case letters, digits, `.`, `-` \
                     and `_`; no scheme, port or path)"
                ),
            );
            continue;
        }
        if let Some((_, first)) = bound.iter().find(|(b, _)| b == domain) {
            errs.push(
                &dk,
                format!(
                    "trust domain `{domain}` is already bound at {first}; a trust domain belongs \
                     to one trust source"
                ),
            );
            continue;
        }
        bound.push((domain.to_owned(), dk));
        out.push(domain.to_owned());
    }
    out
}

fn ca_trust(
    errs: &mut Errs,
    files: &mut Files,
    key: &str,
    ca: &str,
    src: &RawTrust,
) -> Option<CaTrust> {
    for (set, k) in [
        (src.check_validity.is_some(), "check_validity"),
        (src.on_overdue_review.is_some(), "on_overdue_review"),
    ] {
        if set {
            errs.push(
                format!("{key}.{k}"),
                "only valid for `pinned` trust sources",
            );
        }
    }
    let ca_key = format!("{key}.ca");
    let mut anchors = None;
    let mut ca_path = PathBuf::new();
    if let Some((path, bytes)) = files.read(errs, &ca_key, ca) {
        match pki::parse_cert_pem(&path, &bytes)
            .and_then(|certs| pki::check_anchors(&path, &certs).map(|()| certs))
        {
            Ok(certs) => anchors = Some(certs),
            Err(e) => errs.push(&ca_key, e),
        }
        ca_path = path;
    }
    let mut intermediates = Vec::new();
    if let Some(file) = &src.intermediates {
        let k = format!("{key}.intermediates");
        if let Some((path, bytes)) = files.read(errs, &k, file) {
            match pki::parse_cert_pem(&path, &bytes)
                .and_then(|certs| pki::check_intermediates(&path, &certs).map(|()| certs))
            {
                Ok(certs) => intermediates = certs,
                Err(e) => errs.push(&k, e),
            }
        }
    }
    let mut crls = Vec::new();
    for (i, c) in src.crl.iter().flatten().enumerate() {
        let crl_key = format!("{key}.crl[{i}]");
        if let Some((path, bytes)) = files.read(errs, &crl_key, c) {
            match pki::parse_crls(&path, &bytes) {
                Ok(found) => crls.extend(found),
                Err(e) => errs.push(&crl_key, e),
            }
        }
    }
    let mut crl_urls = Vec::new();
    for (i, u) in src.crl_urls.iter().flatten().enumerate() {
        let k = format!("{key}.crl_urls[{i}]");
        if errs.has(&k) && *u == raw::RawCrlUrl::default() {
            continue; // not a mapping: already reported
        }
        let refresh = duration(errs, &format!("{k}.refresh"), u.refresh.as_ref(), 300, true);
        match u.url.as_deref().map(str::trim) {
            None => errs.required(&format!("{k}.url"), "an http:// or https:// URL"),
            Some(url) => match http_url(url) {
                Ok(()) => crl_urls.push(CrlUrl {
                    url: url.to_owned(),
                    refresh,
                }),
                Err(e) => errs.push(format!("{k}.url"), e),
            },
        }
    }
    let crl_cache_dir = src.crl_cache_dir.as_deref().map(|d| files.resolve(d));
    let mut crl_dp_allow = Vec::new();
    if let Some(dp) = &src.crl_distribution_points {
        let k = format!("{key}.crl_distribution_points.allow");
        match &dp.allow {
            None => errs.required(&k, "a list of URL prefixes (`[\"http://pki.internal/\"]`)"),
            Some(list) if list.is_empty() => errs.push(
                &k,
                "must not be empty (leave crl_distribution_points out to fetch none)",
            ),
            Some(list) => {
                for (i, prefix) in list.iter().enumerate() {
                    match url_prefix(prefix.trim()) {
                        Ok(()) => crl_dp_allow.push(prefix.trim().to_owned()),
                        Err(e) => errs.push(format!("{k}[{i}]"), e),
                    }
                }
            }
        }
    }
    let ocsp = src
        .ocsp
        .as_ref()
        .and_then(|o| ocsp(errs, &format!("{key}.ocsp"), o));
    let r = src.revocation.clone().unwrap_or_default();
    let rk = |k: &str| format!("{key}.revocation.{k}");
    let revocation = Revocation {
        depth: choice(
            errs,
            &rk("depth"),
            r.depth.as_deref(),
            &[
                ("chain", RevocationDepth::Chain),
                ("end_entity", RevocationDepth::EndEntity),
            ],
        ),
        allow_unknown_status: choice(
            errs,
            &rk("unknown_status"),
            r.unknown_status.as_deref(),
            &[("deny", false), ("allow", true)],
        ),
        allow_expired_crl: choice(
            errs,
            &rk("expired_crl"),
            r.expired_crl.as_deref(),
            &[("deny", false), ("allow", true)],
        ),
    };
    let max_lifetime = src
        .max_lifetime
        .as_ref()
        .map(|v| duration(errs, &format!("{key}.max_lifetime"), Some(v), 0, true));
    Some(CaTrust {
        ca_path,
        anchors: anchors?,
        intermediates,
        crls,
        crl_urls,
        crl_cache_dir,
        crl_dp_allow,
        ocsp,
        revocation,
        max_lifetime,
    })
}

fn pinned_trust(
    errs: &mut Errs,
    files: &mut Files,
    source: &str,
    list: &[raw::RawPinned],
    src: &RawTrust,
    names: &mut Vec<(String, String, String)>,
) -> Option<PinnedTrust> {
    let key = &format!("trust.{source}");
    for (set, k) in [
        (src.crl.is_some(), "crl"),
        (src.intermediates.is_some(), "intermediates"),
        (src.crl_urls.is_some(), "crl_urls"),
        (src.crl_cache_dir.is_some(), "crl_cache_dir"),
        (
            src.crl_distribution_points.is_some(),
            "crl_distribution_points",
        ),
        (src.ocsp.is_some(), "ocsp"),
        (src.revocation.is_some(), "revocation"),
        (src.max_lifetime.is_some(), "max_lifetime"),
    ] {
        if set {
            errs.push(format!("{key}.{k}"), "only valid for `ca` trust sources");
        }
    }
    let before = errs.list.len();
    let mut entries = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let ek = format!("{key}.pinned[{i}]");
        if errs.has(&ek) && *p == raw::RawPinned::default() {
            continue;
        }
        let name = match p.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => {
                // Allow rules reference pinned names without a source, so they must be unique
                // across all sources.
                if let Some((_, _, first)) = names.iter().find(|(seen, _, _)| seen == n) {
                    errs.push(
                        format!("{ek}.name"),
                        format!("pinned name `{n}` is already used at {first}; names must be unique across trust sources"),
                    );
                } else {
                    names.push((n.to_string(), source.to_string(), format!("{ek}.name")));
                }
                Some(n)
            }
            Some(_) => {
                errs.push(format!("{ek}.name"), "must not be empty");
                None
            }
            None => {
                errs.required(
                    &format!("{ek}.name"),
                    "the name allow rules use as `pinned:`",
                );
                None
            }
        };
        let given = [
            p.cert.is_some(),
            p.sha256.is_some(),
            p.spki_sha256.is_some(),
        ];
        let pin = match given.iter().filter(|g| **g).count() {
            1 => {
                if let Some(c) = &p.cert {
                    let ck = format!("{ek}.cert");
                    files.read(errs, &ck, c).and_then(|(path, bytes)| {
                        match pki::parse_cert_pem(&path, &bytes) {
                            Ok(certs) => {
                                // parse_cert_pem never returns an empty list.
                                let first = certs.first()?;
                                let sha256 = crate::certs::sha256(first.as_ref());
                                // parse_cert_pem checked that it parses.
                                let (_, not_after) =
                                    crate::certs::subject_and_not_after(first.as_ref())?;
                                if certs.len() > 1 {
                                    errs.push(&ck, format!("{}: holds {} certificates; a pin file holds exactly one", path.display(), certs.len()));
                                }
                                Some(Pin::Cert {
                                    path,
                                    sha256,
                                    not_after,
                                })
                            }
                            Err(e) => {
                                errs.push(&ck, e);
                                None
                            }
                        }
                    })
                } else if let Some(h) = &p.sha256 {
                    pattern::fingerprint_bytes(&h.0)
                        .map(Pin::Sha256)
                        .map_err(|e| errs.push(format!("{ek}.sha256"), e))
                        .ok()
                } else if let Some(b) = &p.spki_sha256 {
                    pattern::spki_bytes(b)
                        .map(Pin::Spki)
                        .map_err(|e| errs.push(format!("{ek}.spki_sha256"), e))
                        .ok()
                } else {
                    None
                }
            }
            0 => {
                if !errs.has(&format!("{ek}.cert"))
                    && !errs.has(&format!("{ek}.sha256"))
                    && !errs.has(&format!("{ek}.spki_sha256"))
                {
                    errs.push(&ek, "needs one of `cert`, `sha256` or `spki_sha256`");
                }
                None
            }
            _ => {
                errs.push(&ek, "give exactly one of `cert`, `sha256` or `spki_sha256`");
                None
            }
        };
        let review_by = p.review_by.as_deref().and_then(|d| {
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(d.trim(), &fmt)
                .map_err(|_| {
                    errs.push(
                        format!("{ek}.review_by"),
                        format!("`{d}` is not a date in YYYY-MM-DD form"),
                    )
                })
                .ok()
        });
        if let (Some(name), Some(pin)) = (name, pin) {
            entries.push(PinnedEntry {
                name: Arc::from(name),
                pin,
                owner: p.owner.clone(),
                purpose: p.purpose.clone(),
                review_by,
            });
        }
    }
    let on_overdue_review = choice(
        errs,
        &format!("{key}.on_overdue_review"),
        src.on_overdue_review.as_deref(),
        &[("warn", OverdueAction::Warn), ("deny", OverdueAction::Deny)],
    );
    (errs.list.len() == before).then_some(PinnedTrust {
        entries,
        check_validity: src.check_validity.unwrap_or(true),
        on_overdue_review,
    })
}

fn upstreams(
    errs: &mut Errs,
    files: &mut Files,
    u: raw::NamedMap<raw::RawUpstream>,
    names: &mut Names,
) -> Vec<Upstream> {
    let mut out = Vec::new();
    for (name, up) in u.0 {
        let key = format!("upstreams.{name}");
        names.upstreams.push(name.clone());
        if errs.has(&key) && up == raw::RawUpstream::default() {
            continue;
        }
        if name.trim().is_empty() {
            errs.push(&key, "upstream names must not be empty");
        }
        let target = match &up.url {
            Some(url) => parse_upstream_url(url)
                .map_err(|e| errs.push(format!("{key}.url"), e))
                .ok(),
            None => {
                errs.required(
                    &format!("{key}.url"),
                    "http://host:port, https://host:port or h2c://host:port",
                );
                None
            }
        };
        let tls = match &target {
            Some((UpstreamScheme::Https, authority)) => {
                upstream_tls(errs, files, &key, &up, authority).map(Arc::new)
            }
            Some(_) => {
                for (set, k) in [
                    (up.ca.is_some(), "ca"),
                    (up.client_cert.is_some(), "client_cert"),
                    (up.client_key.is_some(), "client_key"),
                ] {
                    if set {
                        errs.push(format!("{key}.{k}"), "only valid for https:// upstreams");
                    }
                }
                None
            }
            // The URL is already reported; its TLS keys cannot be judged without it.
            None => None,
        };
        let connect_timeout = duration(
            errs,
            &format!("{key}.connect_timeout"),
            up.connect_timeout.as_ref(),
            2,
            true,
        );
        let timeout = duration(
            errs,
            &format!("{key}.timeout"),
            up.timeout.as_ref(),
            30,
            true,
        );
        let max_idle_per_host = count(
            errs,
            &format!("{key}.max_idle_per_host"),
            up.max_idle_per_host,
            64,
            0,
        );
        let max_requests =
            bounded_count(errs, &format!("{key}.max_requests"), up.max_requests, 1024);
        if let Some((scheme, authority)) = target {
            if scheme == UpstreamScheme::Https && tls.is_none() {
                continue; // its TLS settings are already reported
            }
            out.push(Upstream {
                name: Arc::from(name.as_str()),
                scheme,
                authority,
                connect_timeout,
                timeout,
                max_idle_per_host,
                max_requests,
                tls,
            });
        }
    }
    out
}

/// The TLS settings of the `https://` upstream at `key`: the URL's host as the server name, the
/// `ca` bundle (default: the system roots) and the optional `client_cert`/`client_key` pair.
fn upstream_tls(
    errs: &mut Errs,
    files: &mut Files,
    key: &str,
    up: &raw::RawUpstream,
    authority: &http::uri::Authority,
) -> Option<UpstreamTls> {
    let before = errs.len();
    let host = authority.host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let server_name = rustls_pki_types::ServerName::try_from(bare)
        .map(|n| n.to_owned())
        .map_err(|_| {
            errs.push(
                format!("{key}.url"),
                format!("`{host}` is not a DNS name or IP address a TLS certificate can name"),
            )
        })
        .ok();
    let roots = match &up.ca {
        None => Some(UpstreamRoots::System),
        Some(ca) => {
            let k = format!("{key}.ca");
            files.read(errs, &k, ca).and_then(|(path, bytes)| {
                match pki::parse_cert_pem(&path, &bytes)
                    .and_then(|certs| pki::check_anchors(&path, &certs).map(|()| certs))
                {
                    Ok(certs) => Some(UpstreamRoots::Bundle { path, certs }),
                    Err(e) => {
                        errs.push(&k, e);
                        None
                    }
                }
            })
        }
    };
    let client_cert = match (&up.client_cert, &up.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            errs.required(
                &format!("{key}.client_key"),
                "the PEM private key of client_cert (give both or neither)",
            );
            None
        }
        (None, Some(_)) => {
            errs.required(
                &format!("{key}.client_cert"),
                "the PEM certificate chain of client_key, leaf first (give both or neither)",
            );
            None
        }
        (Some(cert), Some(k)) => {
            let cert_key = format!("{key}.client_cert");
            let key_key = format!("{key}.client_key");
            let chain = files.read(errs, &cert_key, cert).and_then(|(path, bytes)| {
                pki::parse_cert_pem(&path, &bytes)
                    .map(|chain| (path, chain))
                    .map_err(|e| errs.push(&cert_key, e))
                    .ok()
            });
            let private = files.read(errs, &key_key, k).and_then(|(path, bytes)| {
                let leaf = chain.as_ref().map(|(_, c)| c.as_slice());
                pki::parse_key_pem(&path, &bytes, leaf, &cert_key)
                    .map(|key| (path, key))
                    .map_err(|e| errs.push(&key_key, e))
                    .ok()
            });
            match (chain, private) {
                (Some((cert_path, chain)), Some((key_path, key))) => Some(UpstreamClientCert {
                    cert_path,
                    key_path,
                    chain,
                    key,
                }),
                _ => None,
            }
        }
    };
    if errs.len() > before {
        return None;
    }
    Some(UpstreamTls {
        server_name: server_name?,
        roots: roots?,
        client_cert,
    })
}

/// `http://host[:port][/]`, `https://host[:port][/]` or `h2c://host[:port][/]`; the port
/// defaults to 80 (443 for `https://`).
pub(super) fn parse_upstream_url(
    url: &str,
) -> Result<(UpstreamScheme, http::uri::Authority), String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (UpstreamScheme::Http, rest),
        Some(("h2c", rest)) => (UpstreamScheme::H2c, rest),
        Some(("https", rest)) => (UpstreamScheme::Https, rest),
        _ => {
            return Err(format!(
                "`{url}`: expected http://host:port, https://host:port or h2c://host:port"
            ))
        }
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return Err(format!(
            "`{url}`: an upstream URL has no path, query or fragment"
        ));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: user info is not allowed in an upstream URL"
        ));
    }
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("`{url}`: invalid host or port"))?;
    if parsed.host().is_empty() {
        return Err(format!("`{url}`: missing host"));
    }
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if after_host.contains(':') && parsed.port_u16().is_none() {
        return Err(format!("`{url}`: invalid port"));
    }
    let default_port = match scheme {
        UpstreamScheme::Https => 443,
        UpstreamScheme::Http | UpstreamScheme::H2c => 80,
    };
    let port = parsed.port_u16().unwrap_or(default_port);
    if port == 0 {
        return Err(format!("`{url}`: port 0 is not valid"));
    }
    let full = format!("{}:{port}", parsed.host());
    let authority = full
        .parse()
        .map_err(|_| format!("`{url}`: invalid host or port"))?;
    Ok((scheme, authority))
}

fn forward(errs: &mut Errs, f: raw::RawForward) -> Forward {
    let xfcc = choice(
        errs,
        "forward.xfcc",
        f.xfcc.as_deref(),
        &[
            ("sanitize_set", XfccMode::SanitizeSet),
            ("append", XfccMode::Append),
            ("sanitize", XfccMode::Sanitize),
        ],
    );
    let fields = [
        ("hash", XfccField::Hash),
        ("cert", XfccField::Cert),
        ("chain", XfccField::Chain),
        ("subject", XfccField::Subject),
        ("uri", XfccField::Uri),
        ("dns", XfccField::Dns),
    ];
    let xfcc_fields = match f.xfcc_fields {
        None => vec![
            XfccField::Hash,
            XfccField::Subject,
            XfccField::Uri,
            XfccField::Dns,
        ],
        Some(list) => {
            let mut out = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match fields.iter().find(|(n, _)| n == name) {
                    Some((_, field)) if !out.contains(field) => out.push(*field),
                    Some(_) => {}
                    None => errs.push(
                        format!("forward.xfcc_fields[{i}]"),
                        format!("`{name}` is not one of: hash, cert, chain, subject, uri, dns"),
                    ),
                }
            }
            out
        }
    };
    let mut strip_headers = Vec::new();
    for (i, h) in f.strip_headers.unwrap_or_default().iter().enumerate() {
        match http::HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(name) => strip_headers.push(name),
            Err(_) => errs.push(
                format!("forward.strip_headers[{i}]"),
                format!("`{h}` is not a valid header name"),
            ),
        }
    }
    Forward {
        xfcc,
        xfcc_fields,
        x_forwarded: f.x_forwarded.unwrap_or(true),
        strip_headers,
        strip_identity_headers: f.strip_identity_headers.unwrap_or(true),
        client_cert_headers: f.client_cert_headers.unwrap_or(false),
    }
}

fn logging(errs: &mut Errs, l: raw::RawLogging) -> Logging {
    let format = choice(
        errs,
        "logging.format",
        l.format.as_deref(),
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
    );
    let level = match l.level {
        None => "info".to_string(),
        Some(level) if level.trim().is_empty() => {
            errs.push(
                "logging.level",
                "must not be empty (e.g. info, or certguard=debug,info)",
            );
            "info".to_string()
        }
        Some(level) => {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level.trim()) {
                errs.push(
                    "logging.level",
                    format!("invalid filter directive `{level}`: {e}"),
                );
            }
            level.trim().to_string()
        }
    };
    Logging {
        format,
        level,
        access_log: l.access_log.unwrap_or(true),
    }
}

fn runtime(errs: &mut Errs, r: raw::RawRuntime) -> Runtime {
    let worker_threads = match r.worker_threads.as_ref().map(|s| s.0.trim()) {
        None | Some("auto") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                errs.push(
                    "runtime.worker_threads",
                    format!("`{n}`: expected `auto` or an integer >= 1"),
                );
                None
            }
        },
    };
    let single_thread = r.single_thread.unwrap_or(false);
    if single_thread && worker_threads.is_some_and(|n| n != 1) {
        errs.push(
            "runtime.worker_threads",
            "runtime.single_thread runs one thread: leave worker_threads out or set it to 1",
        );
    }
    Runtime {
        worker_threads,
        single_thread,
        shutdown_grace: duration(
            errs,
            "runtime.shutdown_grace",
            r.shutdown_grace.as_ref(),
            30,
            false,
        ),
    }
}
