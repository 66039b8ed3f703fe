//! Human-readable reports for `certguard check` and `certguard explain`. `explain` runs the
//! same verifier, normalizer and `authorize` as the running proxy, so both reach the same
//! decision.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::access;
use crate::certs::rfc3339_unix;
use crate::config::{
    Config, Pin, RevocationDepth, TrustKind, Upstream, UpstreamRoots, UpstreamScheme,
};
use crate::identity::{CertInfo, Identity};
use crate::policy::{self, reach, RequestFacts};
use crate::proxy::refusal::Refusal;
use crate::proxy::service;
use crate::request::host;
use crate::request::host::HostError;
use crate::revocation::Revocation;
use crate::tls::TrustVerifier;

/// Warn about certificates and CRLs expiring within this many days.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// Warn about trust anchors, intermediates and pinned certificates expiring within this many
/// days (SPEC 9.8).
const TRUST_EXPIRY_WARNING_DAYS: i64 = 30;

/// How many deny entries `check` prints before it summarizes the rest.
const DENY_ENTRIES_SHOWN: usize = 50;

/// The result of `explain`.
pub struct Explanation {
    pub text: String,
    pub allowed: bool,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Every warning SPEC 1 lists for `check`; warnings never make `check` fail.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let now = now_unix();
    let soon = now + EXPIRY_WARNING_DAYS * 86_400;
    let trust_soon = now + TRUST_EXPIRY_WARNING_DAYS * 86_400;
    if let Some(leaf) = config.listen.cert_chain.first() {
        if let Ok(info) = CertInfo::from_chain(std::slice::from_ref(leaf)) {
            if info.not_after < soon {
                out.push(format!(
                    "listen.cert: server certificate expires {} (within {EXPIRY_WARNING_DAYS} days or already)",
                    rfc3339_unix(info.not_after)
                ));
            }
        }
    }
    for u in &config.upstreams {
        let Some(client) = u.tls.as_ref().and_then(|t| t.client_cert.as_ref()) else {
            continue;
        };
        let Some(leaf) = client.chain.first() else {
            continue;
        };
        if let Ok(info) = CertInfo::from_chain(std::slice::from_ref(leaf)) {
            if info.not_after < soon {
                out.push(format!(
                    "upstreams.{}.client_cert: client certificate expires {} (within {EXPIRY_WARNING_DAYS} days or already)",
                    u.name,
                    rfc3339_unix(info.not_after)
                ));
            }
        }
    }
    out.extend(self_asserted_warnings(config));
    out.extend(unbound_spiffe_warnings(config));
    let reached = reach::reached(&config.policy);
    for (i, route) in config.policy.routes.iter().enumerate() {
        if !reached.get(i).copied().unwrap_or(true) {
            out.push(format!(
                "routes[{i}] ({}): never reached: earlier routes match every request it matches",
                route.name
            ));
        }
        if !route.enforce {
            out.push(format!(
                "routes[{i}] ({}): enforce: false: requests that no allow entry matches are forwarded anyway (counted with reason not_enforced); set enforce: true to enforce the route's policy",
                route.name
            ));
        }
    }
    for source in &config.trust {
        let name = &source.name;
        match &source.kind {
            TrustKind::Ca(ca) => {
                for cert in ca.trusted_certificates() {
                    let Some((subject, not_after)) =
                        crate::certs::subject_and_not_after(cert.as_ref())
                    else {
                        continue;
                    };
                    if not_after < trust_soon {
                        out.push(format!(
                            "trust.{name}.ca: CA certificate '{subject}' expires {} (within {TRUST_EXPIRY_WARNING_DAYS} days or already)",
                            rfc3339_unix(not_after)
                        ));
                    }
                }
                for (i, crl) in ca.crls.iter().enumerate() {
                    match crl.next_update {
                        Some(next) if crl.expired_at(now) => out.push(format!(
                            "trust.{name}.crl[{i}]: {} is past its nextUpdate ({}); handshakes needing it fail with crl_expired unless expired_crl: allow",
                            crl.path.display(),
                            rfc3339_unix(next)
                        )),
                        Some(next) if next < soon => out.push(format!(
                            "trust.{name}.crl[{i}]: {} nextUpdate {} is within {EXPIRY_WARNING_DAYS} days",
                            crl.path.display(),
                            rfc3339_unix(next)
                        )),
                        _ => {}
                    }
                }
                for (i, u) in ca.crl_urls.iter().enumerate() {
                    match &ca.crl_cache_dir {
                        Some(dir) if crate::revocation::crl::read_cache(dir, &u.url).is_none() => {
                            out.push(format!(
                                "trust.{name}.crl_urls[{i}]: {} was never fetched into the cache ({}): certguard is not ready until a first fetch succeeds",
                                u.url,
                                dir.display()
                            ))
                        }
                        Some(_) => {}
                        None => out.push(format!(
                            "trust.{name}.crl_urls[{i}]: no crl_cache_dir: after a restart certguard is not ready until {} is fetched again",
                            u.url
                        )),
                    }
                }
                let online = !ca.crl_urls.is_empty() || !ca.crl_dp_allow.is_empty();
                if ca.crls.is_empty() && !online && ca.ocsp.is_none() {
                    // rustls checks revocation only when at least one CRL is loaded; without
                    // one, `unknown_status: deny` has nothing to act on.
                    out.push(format!(
                        "trust.{name}: no CRLs configured: revocation is not checked for this source"
                    ));
                } else if ca.revocation.depth == RevocationDepth::Chain && !online {
                    for anchor in &ca.anchors {
                        // Compare DER Names, as the verifier does: two DNs can render alike
                        // and still differ (string types, attribute order), or vice versa.
                        let Ok((_, cert)) = x509_parser::parse_x509_certificate(anchor) else {
                            continue;
                        };
                        let raw = cert.subject().as_raw();
                        if !ca.crls.iter().any(|c| c.issuer_raw == raw) {
                            // Rendered the same way (RFC 4514) as CRL issuers in `check`.
                            let shown = CertInfo::from_chain(std::slice::from_ref(anchor))
                                .map(|i| i.subject)
                                .unwrap_or_else(|_| cert.subject().to_string());
                            out.push(format!(
                                "trust.{name}.crl: no CRL issued by CA '{shown}' in the bundle (revocation depth: chain)"
                            ));
                        }
                    }
                }
            }
            TrustKind::Pinned(pinned) => {
                for (i, entry) in pinned.entries.iter().enumerate() {
                    if let Pin::Cert { not_after, .. } = entry.pin {
                        if not_after < trust_soon {
                            out.push(format!(
                                "trust.{name}.pinned[{i}] ({}): pinned certificate expires {} (within {TRUST_EXPIRY_WARNING_DAYS} days or already)",
                                entry.name,
                                rfc3339_unix(not_after)
                            ));
                        }
                    }
                    if let Some(review_by) = entry.review_by.filter(|_| entry.overdue_at(now)) {
                        out.push(format!(
                            "trust.{name}.pinned[{i}] ({}): review_by {review_by} has passed (owner: {}; on_overdue_review: {})",
                            entry.name,
                            entry.owner.as_deref().unwrap_or("-"),
                            match pinned.on_overdue_review {
                                crate::config::OverdueAction::Warn => "warn",
                                crate::config::OverdueAction::Deny => "deny: this client is refused",
                            }
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Allow entries that match on what a certificate says about itself (CN, OU, SANs, SPIFFE ID,
/// serial, ...) without `trust:` or `pinned:`, when a pinned source exists: the holder of a
/// pinned key (an `spki_sha256` pin above all) can mint a self-signed certificate claiming any
/// such value, and the pinned source admits it.
fn self_asserted_warnings(config: &Config) -> Vec<String> {
    let Some(pinned) = config
        .trust
        .iter()
        .find(|s| matches!(s.kind, TrustKind::Pinned(_)))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, route) in config.policy.routes.iter().enumerate() {
        for (j, entry) in route.allow.iter().enumerate() {
            let names_source = entry
                .matchers
                .iter()
                .any(|m| matches!(m, policy::Matcher::Trust(_) | policy::Matcher::Pinned(_)));
            let keys: Vec<&str> = entry
                .matchers
                .iter()
                .filter(|m| m.is_self_asserted())
                .map(|m| m.key())
                .collect();
            if names_source || keys.is_empty() {
                continue;
            }
            out.push(format!(
                "routes[{i}].allow[{j}] ({}): matches {} without `trust:` or `pinned:`; the pinned source '{}' admits self-signed certificates whose holders choose these values themselves (add `trust: <CA source>`)",
                route.name,
                keys.join(", "),
                pinned.name
            ));
        }
    }
    out
}

/// SPEC 9.5: `spiffe_id` rules that name no trust source, for a trust domain no source binds,
/// when more than one CA source could issue that SPIFFE ID.
fn unbound_spiffe_warnings(config: &Config) -> Vec<String> {
    let ca_sources = config
        .trust
        .iter()
        .filter(|s| matches!(s.kind, TrustKind::Ca(_)))
        .count();
    if ca_sources < 2 {
        return Vec::new();
    }
    let bound = |td: &str| {
        config
            .trust
            .iter()
            .any(|s| s.spiffe_trust_domains.iter().any(|d| d == td))
    };
    let mut out = Vec::new();
    for (i, route) in config.policy.routes.iter().enumerate() {
        for (j, entry) in route.allow.iter().enumerate() {
            if config.required_trust(entry).is_some() {
                continue;
            }
            for m in &entry.matchers {
                let policy::Matcher::SpiffeId(p) = m else {
                    continue;
                };
                let Some(td) = p.spiffe_trust_domain().filter(|td| !bound(td)) else {
                    continue;
                };
                out.push(format!(
                    "routes[{i}].allow[{j}] ({}): spiffe_id {p} has no `trust:` and its trust domain `{td}` is not bound: any of the {ca_sources} CA sources can issue it (add `trust: <source>`, or `spiffe_trust_domains: [{td}]` to the source that owns it)",
                    route.name
                ));
            }
        }
    }
    out
}

/// `orders (host=orders.internal path_prefix=/orders methods=GET,HEAD)`.
fn route_ref_text(r: &access::RouteRef) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &r.host {
        parts.push(format!("host={h}"));
    }
    if let Some(p) = &r.path {
        parts.push(format!("path={p}"));
    }
    if let Some(p) = &r.path_prefix {
        parts.push(format!("path_prefix={p}"));
    }
    if let Some(ms) = &r.methods {
        parts.push(format!("methods={}", ms.join(",")));
    }
    if parts.is_empty() {
        r.route.clone()
    } else {
        format!("{} ({})", r.route, parts.join(" "))
    }
}

/// `certguard check --format json` (SPEC 9.7): one object with `trust_sources`, `routes`,
/// `warnings` and `matrix`.
pub fn check_json(config: &Config) -> Result<serde_json::Value, String> {
    use serde_json::json;
    TrustVerifier::new(&config.trust).map_err(|e| e.to_string())?;
    let selectors = |list: &[policy::AllowEntry]| -> Vec<access::Selector> {
        list.iter().map(access::Selector::of).collect()
    };
    let not_after = |der: &CertificateDer<'_>| {
        CertInfo::from_chain(std::slice::from_ref(der))
            .ok()
            .map(|i| (i.subject, rfc3339_unix(i.not_after)))
    };
    let trust_sources: Vec<serde_json::Value> = config
        .trust
        .iter()
        .map(|source| {
            let mut v = match &source.kind {
                TrustKind::Ca(ca) => json!({
                    "name": &*source.name,
                    "kind": "ca",
                    "ca": ca.ca_path.display().to_string(),
                    "anchors": ca.anchors.iter().filter_map(not_after).map(|(subject, not_after)| json!({
                        "subject": subject, "not_after": not_after,
                    })).collect::<Vec<_>>(),
                    "crls": ca.crls.iter().map(|c| json!({
                        "file": c.path.display().to_string(),
                        "issuer": c.issuer,
                        "next_update": c.next_update.map(rfc3339_unix),
                    })).collect::<Vec<_>>(),
                    "revocation": {
                        "depth": match ca.revocation.depth {
                            RevocationDepth::Chain => "chain",
                            RevocationDepth::EndEntity => "end_entity",
                        },
                        "unknown_status": if ca.revocation.allow_unknown_status { "allow" } else { "deny" },
                        "expired_crl": if ca.revocation.allow_expired_crl { "allow" } else { "deny" },
                    },
                    "max_lifetime": ca.max_lifetime.map(duration_text),
                }),
                TrustKind::Pinned(p) => json!({
                    "name": &*source.name,
                    "kind": "pinned",
                    "pinned": p.entries.iter().map(|e| json!({
                        "name": &*e.name,
                        "pin": match &e.pin {
                            Pin::Cert { .. } => "cert",
                            Pin::Sha256(_) => "sha256",
                            Pin::Spki(_) => "spki_sha256",
                        },
                        "owner": e.owner,
                        "purpose": e.purpose,
                        "review_by": e.review_by.map(|d| d.to_string()),
                    })).collect::<Vec<_>>(),
                    "check_validity": p.check_validity,
                    "on_overdue_review": match p.on_overdue_review {
                        crate::config::OverdueAction::Warn => "warn",
                        crate::config::OverdueAction::Deny => "deny",
                    },
                }),
            };
            v["spiffe_trust_domains"] = json!(source.spiffe_trust_domains);
            v
        })
        .collect();
    let reached = reach::reached(&config.policy);
    let routes: Vec<serde_json::Value> = config
        .policy
        .routes
        .iter()
        .zip(&reached)
        .map(|(route, reached)| {
            let r = access::RouteRef::of(route);
            json!({
                "name": r.route,
                "host": r.host,
                "path": r.path,
                "path_prefix": r.path_prefix,
                "methods": r.methods,
                "upstream": &*route.upstream,
                "allow": selectors(&route.allow),
                "shadow_allow": route.shadow_allow.as_ref().map(|s| selectors(s.entries())),
                "enforce": route.enforce,
                "reached": reached,
            })
        })
        .collect();
    Ok(json!({
        "trust_sources": trust_sources,
        "routes": routes,
        "warnings": warnings(config),
        "matrix": access::matrix(&config.policy, &reached),
    }))
}

/// The `check` summary: trust sources, routes, the access matrix and warnings.
pub fn check(config: &Config) -> Result<String, String> {
    // Build the verifier exactly as the proxy would, so `check` catches what `run` would.
    TrustVerifier::new(&config.trust).map_err(|e| e.to_string())?;
    let mut s = String::new();
    let _ = writeln!(s, "configuration {} is valid", config.source.display());
    let _ = writeln!(
        s,
        "\nlisten {} (admin {})",
        config.listen.address, config.admin.address
    );
    if let Some(leaf) = config.listen.cert_chain.first() {
        if let Ok(info) = CertInfo::from_chain(std::slice::from_ref(leaf)) {
            let _ = writeln!(
                s,
                "  server certificate {} (expires {})",
                info.subject,
                rfc3339_unix(info.not_after)
            );
        }
    }
    let _ = writeln!(s, "\ntrust sources:");
    for source in &config.trust {
        match &source.kind {
            TrustKind::Ca(ca) => {
                let _ = writeln!(
                    s,
                    "  {} (CA): {} anchor(s) from {}, {} CRL(s), revocation depth={} unknown_status={} expired_crl={}{}",
                    source.name,
                    ca.anchors.len(),
                    ca.ca_path.display(),
                    ca.crls.len(),
                    match ca.revocation.depth {
                        RevocationDepth::Chain => "chain",
                        RevocationDepth::EndEntity => "end_entity",
                    },
                    if ca.revocation.allow_unknown_status { "allow" } else { "deny" },
                    if ca.revocation.allow_expired_crl { "allow" } else { "deny" },
                    ca.max_lifetime.map(|d| format!(", max_lifetime={}", duration_text(d))).unwrap_or_default(),
                );
                for crl in &ca.crls {
                    let _ = writeln!(
                        s,
                        "    CRL {} by {} (nextUpdate {})",
                        crl.path.display(),
                        crl.issuer,
                        crl.next_update
                            .map(rfc3339_unix)
                            .unwrap_or_else(|| "none".into())
                    );
                }
                if !ca.intermediates.is_empty() {
                    let _ = writeln!(
                        s,
                        "    {} intermediate(s) complete leaf-only chains (never anchors)",
                        ca.intermediates.len()
                    );
                }
                for u in &ca.crl_urls {
                    let cached = ca
                        .crl_cache_dir
                        .as_deref()
                        .and_then(|d| crate::revocation::crl::read_cache(d, &u.url));
                    let _ = writeln!(
                        s,
                        "    CRL URL {} (refresh {}; {})",
                        u.url,
                        duration_text(u.refresh),
                        match (&ca.crl_cache_dir, cached) {
                            (None, _) => "no cache".to_owned(),
                            (Some(d), Some(_)) => format!("cached in {}", d.display()),
                            (Some(d), None) => format!("nothing cached in {} yet", d.display()),
                        }
                    );
                }
                if !ca.crl_dp_allow.is_empty() {
                    let _ = writeln!(
                        s,
                        "    CRL distribution points fetched under: {}",
                        ca.crl_dp_allow.join(", ")
                    );
                }
                if let Some(o) = &ca.ocsp {
                    let _ = writeln!(
                        s,
                        "    OCSP {} (responder {}; timeout {}, cache_max {}, refresh {})",
                        if o.require { "require" } else { "prefer" },
                        o.responder.as_deref().unwrap_or("from each leaf's AIA"),
                        duration_text(o.timeout),
                        duration_text(o.cache_max),
                        duration_text(o.refresh)
                    );
                }
            }
            TrustKind::Pinned(p) => {
                let _ = writeln!(
                    s,
                    "  {} (pinned): {} entr{}, check_validity={}, on_overdue_review={}",
                    source.name,
                    p.entries.len(),
                    if p.entries.len() == 1 { "y" } else { "ies" },
                    p.check_validity,
                    match p.on_overdue_review {
                        crate::config::OverdueAction::Warn => "warn",
                        crate::config::OverdueAction::Deny => "deny",
                    }
                );
                for e in &p.entries {
                    let pin = match &e.pin {
                        Pin::Cert { path, .. } => format!("cert {}", path.display()),
                        Pin::Sha256(_) => "sha256".to_owned(),
                        Pin::Spki(_) => "spki_sha256".to_owned(),
                    };
                    let _ = writeln!(
                        s,
                        "    {}: {pin}; owner={} purpose={} review_by={}",
                        e.name,
                        e.owner.as_deref().unwrap_or("-"),
                        e.purpose.as_deref().unwrap_or("-"),
                        e.review_by
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
    }
    let _ = writeln!(s, "\nupstreams:");
    for u in &config.upstreams {
        let _ = writeln!(s, "  {}", upstream_summary(u)?);
    }
    let reached = reach::reached(&config.policy);
    let _ = writeln!(s, "\nroutes (first match wins):");
    for (i, route) in config.policy.routes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  [{i}] {}: {} -> upstream {}",
            route.name,
            route.describe_match(),
            route.upstream
        );
        if !reached.get(i).copied().unwrap_or(true) {
            let _ = writeln!(
                s,
                "      never reached: earlier routes match every request this route matches"
            );
        }
        if route.allow.is_empty() && route.enforce {
            let _ = writeln!(s, "      (no allow entries: every request is denied)");
        }
        for (j, entry) in route.allow.iter().enumerate() {
            let _ = writeln!(
                s,
                "      allow[{j}] {}  (trust source: {})",
                entry.describe(),
                config.required_trust(entry).unwrap_or("any")
            );
        }
        for (j, entry) in route
            .shadow_allow
            .iter()
            .flat_map(|s| s.entries())
            .enumerate()
        {
            let _ = writeln!(
                s,
                "      shadow_allow[{j}] {}  (counted, never enforced)",
                entry.describe()
            );
        }
        if route
            .shadow_allow
            .as_ref()
            .is_some_and(|s| s.entries().is_empty())
        {
            let _ = writeln!(
                s,
                "      shadow_allow: [] (would deny everyone; counted, never enforced)"
            );
        }
        if !route.enforce {
            let _ = writeln!(
                s,
                "      enforce: false (what no allow entry matches is forwarded: every verified client reaches it)"
            );
        }
    }
    let _ = writeln!(
        s,
        "\naccess matrix (each allow entry and the routes it reaches):"
    );
    for row in access::matrix(&config.policy, &reached) {
        let reaches = if row.routes.is_empty() {
            "nothing (its route is shadowed by earlier routes)".to_owned()
        } else {
            row.routes
                .iter()
                .map(route_ref_text)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(s, "  {} {} -> {reaches}", row.rule, row.selector);
    }
    let deny = config.deny.entries();
    let _ = writeln!(
        s,
        "\ndeny list: {}",
        if deny.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{} entries (checked at the handshake and on every re-check)",
                deny.len()
            )
        }
    );
    for e in deny.iter().take(DENY_ENTRIES_SHOWN) {
        let _ = writeln!(
            s,
            "  deny[{}] {}  (reason: {})",
            e.index,
            e.entry.describe(),
            e.reason.as_deref().unwrap_or("-")
        );
    }
    if deny.len() > DENY_ENTRIES_SHOWN {
        let _ = writeln!(s, "  ... and {} more", deny.len() - DENY_ENTRIES_SHOWN);
    }
    let warnings = warnings(config);
    let _ = writeln!(
        s,
        "\nwarnings: {}",
        if warnings.is_empty() { "none" } else { "" }
    );
    for w in warnings {
        let _ = writeln!(s, "  - {w}");
    }
    Ok(s)
}

/// One line (two for upstream mTLS) about an upstream for `check`. For `https://` the TLS
/// client is built as the proxy builds it, so missing system roots fail `check` as they would
/// fail `run`.
fn upstream_summary(u: &Upstream) -> Result<String, String> {
    let protocol = match u.scheme {
        UpstreamScheme::Http => "HTTP/1.1",
        UpstreamScheme::H2c => "HTTP/2 prior knowledge",
        UpstreamScheme::Https => "HTTP/1.1 over TLS",
    };
    let mut line = format!(
        "{}: {}://{} ({protocol}), connect_timeout={} timeout={} max_requests={}",
        u.name,
        u.scheme.as_str(),
        u.authority,
        duration_text(u.connect_timeout),
        duration_text(u.timeout),
        u.max_requests
    );
    let Some(tls) = &u.tls else {
        return Ok(line);
    };
    crate::upstream::client_config(tls).map_err(|e| format!("upstreams.{}: {e}", u.name))?;
    let name = tls.server_name.to_str();
    let sni = match tls.server_name {
        ServerName::DnsName(_) => format!("SNI {name}"),
        // RFC 6066: SNI carries host names only.
        _ => "no SNI (an IP address)".to_owned(),
    };
    let roots = match &tls.roots {
        UpstreamRoots::System => "the system root certificates".to_owned(),
        UpstreamRoots::Bundle { path, certs } => {
            format!("{} CA certificate(s) from {}", certs.len(), path.display())
        }
    };
    let _ = write!(
        line,
        "\n      TLS: {sni}; certificate must be valid for {name}, verified against {roots}"
    );
    match &tls.client_cert {
        None => line.push_str("; no client certificate"),
        Some(c) => {
            let who = c
                .chain
                .first()
                .and_then(|leaf| CertInfo::from_chain(std::slice::from_ref(leaf)).ok())
                .map(|i| format!("{} (expires {})", i.subject, rfc3339_unix(i.not_after)))
                .unwrap_or_else(|| "unparsed".to_owned());
            let _ = write!(
                line,
                "\n      client certificate {who} from {}, key {}",
                c.cert_path.display(),
                c.key_path.display()
            );
        }
    }
    Ok(line)
}

/// Which mechanism a handshake rejection came from, for `explain`: the deny list, OCSP, or
/// the CRLs of the source (its files and URLs, named).
fn mechanism(config: &Config, r: &crate::tls::Rejection) -> String {
    use crate::tls::Outcome;
    match r.outcome {
        Outcome::DenyListed => "the deny list".to_owned(),
        Outcome::Revoked | Outcome::UnknownRevocationStatus if r.detail.starts_with("OCSP") => {
            "OCSP".to_owned()
        }
        Outcome::Revoked | Outcome::UnknownRevocationStatus | Outcome::CrlExpired => {
            let source = r.trust.as_deref().and_then(|t| {
                config.trust.iter().find_map(|s| match &s.kind {
                    TrustKind::Ca(ca) if &*s.name == t => Some(ca),
                    _ => None,
                })
            });
            let mut crls: Vec<String> = Vec::new();
            if let Some(ca) = source {
                crls.extend(ca.crls.iter().map(|c| format!("file {}", c.path.display())));
                crls.extend(ca.crl_urls.iter().map(|u| format!("URL {}", u.url)));
                crls.extend(
                    ca.crl_dp_allow
                        .iter()
                        .map(|p| format!("distribution points under {p}")),
                );
            }
            if crls.is_empty() {
                "revocation (CRL)".to_owned()
            } else {
                format!("revocation (CRL: {})", crls.join(", "))
            }
        }
        Outcome::PinMismatch | Outcome::ReviewOverdue => "the pinned sources".to_owned(),
        Outcome::TrustDomainMismatch => "the SPIFFE trust-domain bindings".to_owned(),
        _ => "certificate verification".to_owned(),
    }
}

/// Fetch, once, every `crl_urls` entry that the cache did not give a CRL (for `explain`).
fn fetch_crl_urls(config: &Config, revocation: &Arc<Revocation>) {
    for source in &config.trust {
        let TrustKind::Ca(ca) = &source.kind else {
            continue;
        };
        let issuers: Vec<CertificateDer<'static>> = ca.trusted_certificates().cloned().collect();
        for u in &ca.crl_urls {
            if revocation.crls.get(&source.name, &u.url).is_some() {
                continue;
            }
            let (url, issuers) = (u.url.clone(), issuers.clone());
            let fetched = crate::revocation::run_blocking(
                crate::revocation::crl::FETCH_TIMEOUT,
                async move {
                    let client = crate::revocation::crl::client();
                    match crate::revocation::crl::get(&client, &url, None).await? {
                        crate::revocation::crl::Got::Body { body, .. } => {
                            crate::revocation::crl::check(&url, &body, &issuers, None)
                        }
                        crate::revocation::crl::Got::NotModified => {
                            Err(crate::revocation::crl::FetchError::Status(304))
                        }
                    }
                },
            );
            match fetched {
                Some(Ok((crl, signer))) => revocation.crls.put(
                    &source.name,
                    crate::revocation::crl::Fetched {
                        url: u.url.clone(),
                        crl,
                        etag: None,
                        last_modified: None,
                        checked_at: 0,
                        signer,
                    },
                ),
                Some(Err(e)) => eprintln!("certguard explain: {}: {e}", u.url),
                None => eprintln!("certguard explain: {}: no answer in time", u.url),
            }
        }
    }
}

/// The `explain` report for one certificate file and one request.
///
/// Online (the default), it fetches the CRL URLs that have nothing in the cache and asks OCSP
/// responders and distribution points as a handshake would; `offline` uses only files and the
/// CRL cache.
pub fn explain(
    config: &Config,
    cert: &Path,
    method: &str,
    host_arg: Option<&str>,
    target: &str,
    offline: bool,
) -> Result<Explanation, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(format!("{}: no certificate found", cert.display()));
    };
    let info = CertInfo::from_chain(&chain).map_err(|e| format!("{}: {e}", cert.display()))?;
    let method: http::Method = method
        .parse()
        .map_err(|_| format!("invalid method {method:?}"))?;
    let uri: http::Uri = target
        .parse()
        .map_err(|_| format!("invalid request target {target:?}"))?;
    let revocation = Arc::new(Revocation::default());
    crate::refresh::load_cache(config, &revocation);
    if !offline {
        fetch_crl_urls(config, &revocation);
    }
    let verifier = if offline {
        TrustVerifier::offline(&config.trust, &revocation)
    } else {
        TrustVerifier::with_revocation(&config.trust, &revocation, config.listen.handshake_timeout)
    }
    .map_err(|e| e.to_string())?
    .with_deny(config.deny.clone());
    let now = UnixTime::now();

    let mut s = String::new();
    let _ = writeln!(s, "certificate {}", cert.display());
    let _ = writeln!(s, "  subject      {}", info.subject);
    let _ = writeln!(s, "  issuer       {}", info.issuer);
    let _ = writeln!(s, "  serial       {}", info.serial);
    let _ = writeln!(s, "  fingerprint  {}", info.fingerprint);
    let _ = writeln!(s, "  spki         {}", info.spki);
    let _ = writeln!(
        s,
        "  validity     {} .. {}",
        rfc3339_unix(info.not_before),
        rfc3339_unix(info.not_after)
    );
    let _ = writeln!(
        s,
        "  spiffe_id    {}",
        info.spiffe_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(s, "  san_dns      {}", join(&info.san_dns));
    let _ = writeln!(s, "  san_uri      {}", join(&info.san_uri));

    let _ = writeln!(s, "\ntrust sources:");
    for (name, verdict) in verifier.verify_each(leaf, intermediates, now) {
        match verdict {
            Ok(a) => {
                let _ = writeln!(
                    s,
                    "  {name}: admits{}",
                    a.pinned
                        .map(|p| format!(" (pinned entry {p})"))
                        .unwrap_or_default()
                );
            }
            Err(r) => {
                let _ = writeln!(s, "  {name}: rejects: {} ({})", r.outcome, r.detail);
            }
        }
    }

    let _ = writeln!(
        s,
        "\nrequest {method} {target}{}",
        host_arg.map(|h| format!(" host {h}")).unwrap_or_default()
    );
    let denied = |s: &mut String, refusal: &Refusal| {
        let _ = writeln!(
            s,
            "decision: DENIED with {} ({}): {}",
            refusal.status().as_u16(),
            refusal.reason().as_str(),
            refusal.detail()
        );
    };
    let (parts, ()) = http::Request::builder()
        .method(method.clone())
        .uri(uri.clone())
        .body(())
        .map_err(|e| format!("invalid request: {e}"))?
        .into_parts();
    let target = match service::check_target(&parts, false) {
        Ok(t) => t,
        Err(refusal) => {
            denied(&mut s, &refusal);
            return Ok(Explanation {
                text: s,
                allowed: false,
            });
        }
    };
    let host = match host_arg {
        Some(h) => match host::normalize_host(h) {
            Some(h) => Some(h),
            None => {
                denied(&mut s, &Refusal::Host(HostError::Bad("invalid host")));
                return Ok(Explanation {
                    text: s,
                    allowed: false,
                });
            }
        },
        None => None,
    };
    if target.path != uri.path() {
        let _ = writeln!(s, "  normalized path {}", target.path);
    }
    let facts = RequestFacts {
        method: &method,
        host: host.as_deref(),
        path: &target.path,
    };
    let admission = match verifier.verify(leaf, intermediates, now) {
        Ok(a) => a,
        Err(r) => {
            let route = config.policy.find_route(&facts).map(|r| r.name.to_string());
            let _ = writeln!(s, "  route {}", route.as_deref().unwrap_or("none"));
            let _ = writeln!(
                s,
                "decision: DENIED: no trust source admits this certificate; the handshake fails with outcome {} (trust {})",
                r.outcome,
                r.trust.as_deref().unwrap_or("none")
            );
            let _ = writeln!(s, "  decided by {}: {}", mechanism(config, &r), r.detail);
            return Ok(Explanation {
                text: s,
                allowed: false,
            });
        }
    };
    let identity = Identity::new(admission, std::sync::Arc::new(info));
    let _ = writeln!(
        s,
        "  identity     trust={} pinned={}",
        identity.trust,
        identity.pinned.as_deref().unwrap_or("-")
    );
    let allowed = match service::authorize(
        &config.policy,
        &identity,
        &method,
        host.as_deref(),
        &target,
    ) {
        Ok(permit) => {
            let route = permit.route();
            let _ = writeln!(
                s,
                "  route        {} ({})",
                route.name,
                route.describe_match()
            );
            match permit.grant() {
                policy::Grant::Entry(i) => {
                    let _ = writeln!(
                        s,
                        "decision: ALLOWED by allow[{i}] {} -> upstream {}",
                        route.allow[i].describe(),
                        route.upstream
                    );
                }
                policy::Grant::NotEnforced => {
                    let _ = writeln!(
                            s,
                            "decision: ALLOWED (not_enforced: no allow entry matches, and the route has enforce: false) -> upstream {}",
                            route.upstream
                        );
                    explain_entries(&mut s, route, &identity);
                }
            }
            explain_shadow(&mut s, route, &identity);
            true
        }
        Err(refusal) => {
            let route = match &refusal {
                Refusal::NotAllowed { route, .. } => config.policy.route(route),
                _ => None,
            };
            match route {
                Some(r) => {
                    let _ = writeln!(s, "  route        {} ({})", r.name, r.describe_match());
                }
                None => {
                    let _ = writeln!(s, "  route        none");
                }
            }
            denied(&mut s, &refusal);
            if let Some(route) = route {
                explain_entries(&mut s, route, &identity);
                explain_shadow(&mut s, route, &identity);
            }
            false
        }
    };
    Ok(Explanation { text: s, allowed })
}

/// Each allow entry of `route` with the keys that did not match `identity`.
fn explain_entries(s: &mut String, route: &policy::Route, identity: &Identity) {
    if route.allow.is_empty() {
        let _ = writeln!(s, "  the route has no allow entries");
    }
    for (i, entry) in route.allow.iter().enumerate() {
        let _ = writeln!(s, "  allow[{i}] {}:", entry.describe());
        for m in entry.mismatches(identity) {
            let _ = writeln!(s, "    - {m}");
        }
    }
}

/// What the route's `shadow_allow` says about `identity` (never enforced).
fn explain_shadow(s: &mut String, route: &policy::Route, identity: &Identity) {
    let Some(list) = route.shadow_allow.as_ref().map(|s| s.entries()) else {
        return;
    };
    match list.iter().position(|e| e.matches(identity)) {
        Some(i) => {
            let _ = writeln!(
                s,
                "shadow: allowed by shadow_allow[{i}] {} (not enforced)",
                list[i].describe()
            );
        }
        None => {
            let _ = writeln!(
                s,
                "shadow: denied: no shadow_allow entry matches (not enforced)"
            );
            for (i, entry) in list.iter().enumerate() {
                let _ = writeln!(s, "  shadow_allow[{i}] {}:", entry.describe());
                for m in entry.mismatches(identity) {
                    let _ = writeln!(s, "    - {m}");
                }
            }
        }
    }
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// A duration in the largest config unit that writes it exactly (`90d`, `36h`, `1500ms`).
fn duration_text(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use std::fs;

    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::devpki::{LeafSpec, TestCa};

    /// `server.crt` and `server.key` in `d`: a `localhost` server certificate issued by `ca`.
    fn write_server_cert(d: &std::path::Path, ca: &TestCa) {
        let server = ca.issue(&LeafSpec::server("localhost")).unwrap();
        fs::write(d.join("server.crt"), &server.cert_pem).unwrap();
        fs::write(d.join("server.key"), &server.key_pem).unwrap();
    }

    #[test]
    fn crl_warnings() {
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        let now = OffsetDateTime::now_utc();
        let (this, next) = (now - Duration::days(1), now + Duration::days(30));
        let server_ca = TestCa::root("server ca").unwrap();
        write_server_cert(d, &server_ca);
        // `good`: its own CRL. `wrong`: a CRL by another CA only. `nocrl`: no CRL at all.
        // `wrong_leaf_only` checks only leaves, so the anchor's own CRL is not required.
        let good = TestCa::root("good ca").unwrap();
        let wrong = TestCa::root("wrong ca").unwrap();
        let none = TestCa::root("no crl ca").unwrap();
        for (file, ca) in [("good", &good), ("wrong", &wrong), ("none", &none)] {
            fs::write(d.join(format!("{file}.crt")), &ca.cert_pem).unwrap();
        }
        fs::write(d.join("good.crl"), good.crl_pem(&[], this, next).unwrap()).unwrap();
        let yaml = "listen: { cert: server.crt, key: server.key }
trust:
  good: { ca: good.crt, crl: [good.crl] }
  wrong: { ca: wrong.crt, crl: [good.crl] }
  wrong_leaf_only:
    ca: wrong.crt
    crl: [good.crl]
    revocation: { depth: end_entity }
  nocrl: { ca: none.crt }
upstreams:
  app: { url: http://127.0.0.1:9000 }
routes:
  - name: all
    path_prefix: /
    upstream: app
    allow: [{ authenticated: true }]
";
        let config = Config::from_yaml(yaml, &d.join("certguard.yaml")).unwrap();
        let w = warnings(&config);
        assert_eq!(
            w,
            vec![
                format!(
                    "trust.wrong.crl: no CRL issued by CA '{}' in the bundle (revocation depth: chain)",
                    CertInfo::from_chain(std::slice::from_ref(&wrong.cert)).unwrap().subject
                ),
                "trust.nocrl: no CRLs configured: revocation is not checked for this source"
                    .to_string(),
            ],
            "{w:#?}"
        );
    }

    #[test]
    fn check_shows_each_upstream_and_its_tls_settings() {
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        let ca = TestCa::root("ca").unwrap();
        let server = ca.issue(&LeafSpec::server("localhost")).unwrap();
        let upstream_ca = TestCa::root("upstream ca").unwrap();
        let mut soon = LeafSpec::client("gateway");
        soon.not_after = OffsetDateTime::now_utc() + Duration::days(3);
        let gateway = ca.issue(&soon).unwrap();
        for (file, text) in [
            ("server.crt", &server.cert_pem),
            ("server.key", &server.key_pem),
            ("ca.crt", &ca.cert_pem),
            ("upstream-ca.crt", &upstream_ca.cert_pem),
            ("gateway.crt", &gateway.cert_pem),
            ("gateway.key", &gateway.key_pem),
        ] {
            fs::write(d.join(file), text).unwrap();
        }
        let yaml = "listen: { cert: server.crt, key: server.key }
trust:
  internal: { ca: ca.crt }
upstreams:
  plain: { url: 'http://127.0.0.1:9000', timeout: 5s }
  api:
    url: https://api.internal:8443
    ca: upstream-ca.crt
    client_cert: gateway.crt
    client_key: gateway.key
  ip: { url: 'https://10.0.0.7', ca: upstream-ca.crt }
routes:
  - { name: a, path_prefix: /a, upstream: plain, allow: [{ authenticated: true }] }
  - { name: b, path_prefix: /b, upstream: api, allow: [{ authenticated: true }] }
  - { name: c, path_prefix: /c, upstream: ip, allow: [{ authenticated: true }] }
";
        let config = Config::from_yaml(yaml, &d.join("certguard.yaml")).unwrap();
        let text = check(&config).unwrap();
        let bundle = d.join("upstream-ca.crt");
        let want = format!(
            "upstreams:
  plain: http://127.0.0.1:9000 (HTTP/1.1), connect_timeout=2s timeout=5s max_requests=1024
  api: https://api.internal:8443 (HTTP/1.1 over TLS), connect_timeout=2s timeout=30s max_requests=1024
      TLS: SNI api.internal; certificate must be valid for api.internal, verified against 1 CA certificate(s) from {bundle}
      client certificate CN=gateway (expires {expires}) from {cert}, key {key}
  ip: https://10.0.0.7:443 (HTTP/1.1 over TLS), connect_timeout=2s timeout=30s max_requests=1024
      TLS: no SNI (an IP address); certificate must be valid for 10.0.0.7, verified against 1 CA certificate(s) from {bundle}; no client certificate
",
            bundle = bundle.display(),
            expires = rfc3339_unix(
                CertInfo::from_chain(std::slice::from_ref(&gateway.cert))
                    .unwrap()
                    .not_after
            ),
            cert = d.join("gateway.crt").display(),
            key = d.join("gateway.key").display(),
        );
        assert!(text.contains(&want), "{text}");
        let w: Vec<String> = warnings(&config)
            .into_iter()
            .filter(|w| w.starts_with("upstreams."))
            .collect();
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("upstreams.api.client_cert: client certificate expires "),
            "{w:#?}"
        );
    }

    #[test]
    fn self_asserted_keys_without_a_source_warn_when_a_pinned_source_exists() {
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        let ca = TestCa::root("ca").unwrap();
        let ci = crate::devpki::TestCert::self_signed(&LeafSpec::client("ci")).unwrap();
        write_server_cert(d, &ca);
        fs::write(d.join("ca.crt"), &ca.cert_pem).unwrap();
        fs::write(d.join("ci.crt"), &ci.cert_pem).unwrap();
        let routes = "upstreams:
  app: { url: http://127.0.0.1:9000 }
routes:
  - name: a
    path_prefix: /a
    upstream: app
    allow:
      - { cn: alice }
      - { trust: internal, cn: alice }
      - { pinned: ci, cn: ci }
      - { spiffe_id: 'spiffe://x/y', ou: payments }
      - { fingerprint: 'abababababababababababababababababababababababababababababababab' }
      - { authenticated: true }
";
        let head =
            "listen: { cert: server.crt, key: server.key }\ntrust:\n  internal: { ca: ca.crt }\n";
        let self_asserted = |w: &[String]| -> Vec<String> {
            w.iter()
                .filter(|w| w.contains("without `trust:`"))
                .cloned()
                .collect()
        };
        let no_pins = routes.replace("      - { pinned: ci, cn: ci }\n", "");
        let config = Config::from_yaml(&format!("{head}{no_pins}"), &d.join("c.yaml")).unwrap();
        assert_eq!(
            self_asserted(&warnings(&config)),
            Vec::<String>::new(),
            "no pinned source"
        );
        let with_pins =
            format!("{head}  lab:\n    pinned: [{{ name: ci, cert: ci.crt }}]\n{routes}");
        let config = Config::from_yaml(&with_pins, &d.join("c.yaml")).unwrap();
        assert_eq!(
            self_asserted(&warnings(&config)),
            vec![
                "routes[0].allow[0] (a): matches cn without `trust:` or `pinned:`; the pinned source 'lab' admits self-signed certificates whose holders choose these values themselves (add `trust: <CA source>`)".to_string(),
                "routes[0].allow[3] (a): matches ou, spiffe_id without `trust:` or `pinned:`; the pinned source 'lab' admits self-signed certificates whose holders choose these values themselves (add `trust: <CA source>`)".to_string(),
            ]
        );
    }

    #[test]
    fn unbound_spiffe_rules_warn_with_two_ca_sources() {
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        let ca = TestCa::root("ca").unwrap();
        let other = TestCa::root("other").unwrap();
        write_server_cert(d, &ca);
        fs::write(d.join("ca.crt"), &ca.cert_pem).unwrap();
        fs::write(d.join("other.crt"), &other.cert_pem).unwrap();
        let routes = "upstreams:
  app: { url: http://127.0.0.1:9000 }
routes:
  - name: a
    path_prefix: /a
    upstream: app
    allow:
      - { spiffe_id: 'spiffe://example.org/ns/*' }
      - { trust: internal, spiffe_id: 'spiffe://example.org/x' }
      - { spiffe_id: 'spiffe://bound.example/x' }
";
        let spiffe = |yaml: String| -> Vec<String> {
            let config = Config::from_yaml(&yaml, &d.join("c.yaml")).unwrap();
            warnings(&config)
                .into_iter()
                .filter(|w| w.contains("spiffe_id"))
                .collect()
        };
        let head = "listen: { cert: server.crt, key: server.key }
trust:
  internal: { ca: ca.crt, spiffe_trust_domains: [bound.example] }
";
        assert_eq!(
            spiffe(format!("{head}{routes}")),
            Vec::<String>::new(),
            "one CA source"
        );
        let two = format!(
            "{head}  partner: {{ ca: other.crt }}
{routes}"
        );
        assert_eq!(
            spiffe(two),
            vec!["routes[0].allow[0] (a): spiffe_id spiffe://example.org/ns/* has no `trust:` and its trust domain `example.org` is not bound: any of the 2 CA sources can issue it (add `trust: <source>`, or `spiffe_trust_domains: [example.org]` to the source that owns it)".to_string()]
        );
    }

    #[test]
    fn check_json_has_the_four_sections_and_the_text_the_same_matrix() {
        let dir = tempfile::TempDir::new().unwrap();
        crate::devpki::write(&dir.path().join("pki"), false).unwrap();
        let yaml = "listen: { cert: pki/server.crt, key: pki/server.key }
trust:
  internal: { ca: pki/ca.crt, crl: [pki/intermediate.crl, pki/ca.crl], spiffe_trust_domains: [dev.local] }
  lab: { pinned: [{ name: ci-runner, cert: pki/ci-runner.crt }] }
upstreams: { app: { url: 'http://127.0.0.1:9000' } }
routes:
  - name: api
    path_prefix: /api
    methods: [GET]
    upstream: app
    allow: [{ trust: internal, spiffe_id: 'spiffe://dev.local/ns/default/*' }]
    shadow_allow: [{ trust: internal, cn: alice }]
  - name: api-get
    path: /api/x
    methods: [HEAD]
    upstream: app
    allow: [{ pinned: ci-runner }]
  - name: open
    host: '*.internal'
    upstream: app
    allow: []
    enforce: false
";
        let config = Config::from_yaml(yaml, &dir.path().join("c.yaml")).unwrap();
        let v = check_json(&config).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["matrix", "routes", "trust_sources", "warnings"]);
        assert_eq!(v["trust_sources"][0]["kind"], "ca");
        assert_eq!(
            v["trust_sources"][0]["spiffe_trust_domains"],
            serde_json::json!(["dev.local"])
        );
        assert_eq!(v["trust_sources"][1]["pinned"][0]["pin"], "cert");
        assert_eq!(
            v["routes"][0]["methods"],
            serde_json::json!(["GET", "HEAD"])
        );
        assert_eq!(
            v["routes"][0]["shadow_allow"],
            serde_json::json!([{"trust": "internal", "cn": "alice"}])
        );
        assert_eq!(v["routes"][1]["reached"], false);
        assert_eq!(v["routes"][2]["enforce"], false);
        let rules: Vec<(String, usize)> = v["matrix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["rule"].as_str().unwrap().to_owned(),
                    r["routes"].as_array().unwrap().len(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("routes[0].allow[0]".to_owned(), 1),
                ("routes[1].allow[0]".to_owned(), 0),
                ("routes[2].enforce".to_owned(), 1),
            ]
        );
        assert_eq!(
            v["matrix"][2]["routes"][0],
            serde_json::json!({"route": "open", "host": "*.internal", "path": null, "path_prefix": null, "methods": null})
        );
        let warnings: Vec<&str> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w.as_str())
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("routes[1] (api-get): never reached")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("routes[2] (open): enforce: false")),
            "{warnings:?}"
        );

        let text = check(&config).unwrap();
        for line in [
            "  routes[0].allow[0] trust=internal, spiffe_id=spiffe://dev.local/ns/default/* -> api (path_prefix=/api methods=GET,HEAD)",
            "  routes[1].allow[0] pinned=ci-runner -> nothing (its route is shadowed by earlier routes)",
            "  routes[2].enforce authenticated=true -> open (host=*.internal)",
            "      shadow_allow[0] trust=internal, cn=alice  (counted, never enforced)",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn anchors_and_pinned_certificates_expiring_within_30_days_warn() {
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        let now = OffsetDateTime::now_utc();
        let server_ca = TestCa::root("server ca").unwrap();
        write_server_cert(d, &server_ca);
        let soon = TestCa::root_with_validity(
            "soon ca",
            now - Duration::days(1),
            now + Duration::days(20),
        )
        .unwrap();
        let later = TestCa::root_with_validity(
            "later ca",
            now - Duration::days(1),
            now + Duration::days(40),
        )
        .unwrap();
        fs::write(
            d.join("cas.crt"),
            format!("{}{}", later.cert_pem, soon.cert_pem),
        )
        .unwrap();
        let mut spec = LeafSpec::client("ci");
        spec.not_after = now + Duration::days(29);
        let ci = crate::devpki::TestCert::self_signed(&spec).unwrap();
        spec.not_after = now + Duration::days(31);
        let fine = crate::devpki::TestCert::self_signed(&spec).unwrap();
        fs::write(d.join("ci.crt"), &ci.cert_pem).unwrap();
        fs::write(d.join("fine.crt"), &fine.cert_pem).unwrap();
        let yaml = "listen: { cert: server.crt, key: server.key }
trust:
  internal: { ca: cas.crt }
  lab: { pinned: [{ name: fine, cert: fine.crt }, { name: ci, cert: ci.crt }] }
upstreams: { app: { url: 'http://127.0.0.1:9000' } }
routes: [{ name: all, upstream: app, allow: [{ trust: internal }] }]
";
        let config = Config::from_yaml(yaml, &d.join("c.yaml")).unwrap();
        let w: Vec<String> = warnings(&config)
            .into_iter()
            .filter(|w| w.contains("within 30 days"))
            .collect();
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with(
                "trust.internal.ca: CA certificate 'CN=soon ca,O=certguard dev' expires "
            ),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("trust.lab.pinned[1] (ci): pinned certificate expires "),
            "{}",
            w[1]
        );
    }

    #[test]
    fn durations_print_exactly() {
        use std::time::Duration;
        assert_eq!(duration_text(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(duration_text(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::ZERO), "0ms");
    }
}
