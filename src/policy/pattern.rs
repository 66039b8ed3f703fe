//! Parsing and matching of the individual patterns a route or allow entry uses: hosts, paths,
//! `*` globs, DNS and URI patterns, and the canonical hex/base64 forms of SPEC 2.1.
//!
//! Every constructor returns `Err(message)` for input the matcher could not honour (a glob in a
//! place that does not take one, a malformed fingerprint, ...), so an invalid pattern never
//! reaches [`super::authorize`].

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use base64::Engine as _;

use super::{DnsPattern, Glob, HostPattern, Matcher, PathMatch, UriPattern};

/// Every key an allow entry may use, in the order [`super::AllowEntry::describe`] prints them.
pub const ALLOW_KEYS: &[&str] = &[
    "trust",
    "pinned",
    "subject",
    "issuer",
    "cn",
    "o",
    "ou",
    "san_dns",
    "san_uri",
    "spiffe_id",
    "san_email",
    "san_ip",
    "fingerprint",
    "spki",
    "serial",
    "authenticated",
];

fn no_glob(key: &str, value: &str) -> Result<(), String> {
    if value.contains('*') {
        Err(format!("`{key}` does not take a `*` glob"))
    } else {
        Ok(())
    }
}

fn non_empty(value: &str) -> Result<&str, String> {
    let v = value.trim();
    if v.is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(v)
    }
}

/// A DNS name: labels of letters, digits, `-` and `_`, separated by dots.
fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl HostPattern {
    /// Parse a route `host:`: an exact name, or `*.suffix` meaning exactly one extra label.
    /// Lower-cased; a trailing dot is dropped (hosts are compared after the same normalization).
    ///
    /// An IPv6 literal may be given with or without brackets (`[::1]` or `::1`); it is stored
    /// as the bracketed, canonical form that request hosts normalize to (`[::1]`).
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = non_empty(s)?.to_ascii_lowercase();
        if let Some(inner) = s.strip_prefix('[') {
            return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
                Some(Ok(addr)) => Ok(HostPattern::Exact(format!("[{addr}]"))),
                _ => Err(format!(
                    "invalid host `{s}`: brackets take an IPv6 address without a port (`[::1]`)"
                )),
            };
        }
        if let Ok(addr) = s.parse::<Ipv6Addr>() {
            return Ok(HostPattern::Exact(format!("[{addr}]")));
        }
        let s = s.strip_suffix('.').unwrap_or(&s);
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.contains('*') || !valid_dns_name(suffix) {
                return Err(format!(
                    "invalid host pattern `{s}`: only a leading `*.` (one label) is supported"
                ));
            }
            return Ok(HostPattern::Wildcard(suffix.to_string()));
        }
        if s.contains('*') {
            return Err(format!(
                "invalid host pattern `{s}`: only a leading `*.` (one label) is supported"
            ));
        }
        if s.contains(':') && s.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "invalid host `{s}`: give the host without a port (ports are ignored)"
            ));
        }
        if !(valid_dns_name(s) || s.parse::<IpAddr>().is_ok()) {
            return Err(format!("invalid host `{s}`"));
        }
        Ok(HostPattern::Exact(s.to_string()))
    }

    /// Does the normalized request host fit? A request without a host never fits.
    pub fn matches(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Wildcard(suffix) => one_label_below(host, suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// `name` is exactly one non-empty, non-wildcard label followed by `.suffix` (ASCII
/// case-insensitive).
fn one_label_below(name: &str, suffix: &str) -> bool {
    if name.len() <= suffix.len() + 1 {
        return false;
    }
    // Bytes, not str: `name` can come from a client certificate's DNS SAN, which may hold
    // non-ASCII text, and a str split inside a multi-byte character would panic.
    let (head, tail) = name.as_bytes().split_at(name.len() - suffix.len());
    if !tail.eq_ignore_ascii_case(suffix.as_bytes()) {
        return false;
    }
    match head.strip_suffix(b".") {
        Some(label) => !label.is_empty() && !label.contains(&b'.') && !label.contains(&b'*'),
        None => false,
    }
}

fn check_route_path(key: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("`{key}` must start with `/`"));
    }
    if p.contains('*') {
        return Err(format!(
            "`{key}` does not take a `*` glob (path_prefix already matches everything below it)"
        ));
    }
    if p.contains('?') || p.contains('#') {
        return Err(format!("`{key}` must not contain a query or fragment"));
    }
    if p.contains("//") || p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "`{key}` must be a normalized path (no `.`/`..` segments, no repeated `/`): \
             requests are matched after normalization"
        ));
    }
    // Requests are matched after normalization (SPEC 4 step 1), so a route written in any
    // other spelling (`%7E` for `~`, lower-case hex, a raw `;`, ...) could never match.
    let uri: http::Uri = p
        .parse()
        .map_err(|_| format!("`{key}` `{p}` is not a valid request path"))?;
    match crate::request::normalize::normalize(&http::Method::GET, &uri) {
        Ok(t) if t.path == p => Ok(()),
        Ok(t) => Err(format!(
            "`{key}` must be written in normalized form: `{}` (requests are matched after \
             normalization, so `{p}` would never match)",
            t.path
        )),
        Err(e) => Err(format!(
            "`{key}` `{p}` can never match: requests with such a path are refused with 400 ({e})"
        )),
    }
}

impl PathMatch {
    /// `path:`: the normalized path must equal this exactly.
    pub fn exact(p: &str) -> Result<PathMatch, String> {
        check_route_path("path", p)?;
        Ok(PathMatch::Exact(p.to_string()))
    }

    /// `path_prefix:`: matches on segment boundaries; a trailing `/` is ignored.
    pub fn prefix(p: &str) -> Result<PathMatch, String> {
        check_route_path("path_prefix", p)?;
        let trimmed = p.trim_end_matches('/');
        Ok(PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        }))
    }

    /// Does the normalized request path fit?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) if p == "/" => true,
            PathMatch::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }
}

impl Glob {
    /// Does `s` match? `*` matches any run of characters (also none); everything else is literal.
    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
    }
}

/// Iterative wildcard match with single-star backtracking: O(len(p) * len(s)) worst case.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

impl DnsPattern {
    /// Exact DNS name or `*.suffix` (exactly one label); lower-cased.
    pub fn parse(s: &str) -> Result<DnsPattern, String> {
        let s = non_empty(s)?.to_ascii_lowercase();
        let s = s.strip_suffix('.').unwrap_or(&s);
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.contains('*') || !valid_dns_name(suffix) {
                return Err("`san_dns` takes `*` only as a leading `*.` label".to_string());
            }
            return Ok(DnsPattern::Wildcard(suffix.to_string()));
        }
        if s.contains('*') {
            return Err("`san_dns` takes `*` only as a leading `*.` label".to_string());
        }
        if !valid_dns_name(s) {
            return Err(format!("`{s}` is not a DNS name"));
        }
        Ok(DnsPattern::Exact(s.to_string()))
    }

    /// Does the DNS name fit (case-insensitive, trailing dot ignored)?
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        match self {
            DnsPattern::Exact(d) => d.eq_ignore_ascii_case(name),
            DnsPattern::Wildcard(suffix) => one_label_below(name, suffix),
        }
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsPattern::Exact(d) => f.write_str(d),
            DnsPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl UriPattern {
    /// Exact URI, or a prefix ending in `/*` meaning "strictly below"; `key` names the allow key
    /// for error messages.
    pub fn parse(key: &str, s: &str) -> Result<UriPattern, String> {
        let s = non_empty(s)?;
        if s.chars().any(char::is_whitespace) {
            return Err(format!("`{key}` must not contain whitespace"));
        }
        if let Some(prefix) = s.strip_suffix("/*") {
            if prefix.contains('*') {
                return Err(format!("`{key}` takes `*` only as a trailing `/*`"));
            }
            if !prefix.contains("://") || prefix.ends_with("://") {
                return Err(format!(
                    "`{key}` prefix before `/*` must be an absolute URI"
                ));
            }
            return Ok(UriPattern::Below(format!("{prefix}/")));
        }
        if s.contains('*') {
            return Err(format!("`{key}` takes `*` only as a trailing `/*`"));
        }
        if !s.contains(':') {
            return Err(format!("`{key}` must be an absolute URI"));
        }
        Ok(UriPattern::Exact(s.to_string()))
    }

    /// Does the URI fit? `Below` requires at least one character after the prefix.
    pub fn matches(&self, uri: &str) -> bool {
        match self {
            UriPattern::Exact(u) => u == uri,
            UriPattern::Below(prefix) => {
                uri.len() > prefix.len() && uri.starts_with(prefix.as_str())
            }
        }
    }
}

/// A `spiffe_id` pattern must be able to match a SPIFFE ID (SPEC 9.5): an exact one is a valid
/// SPIFFE ID, and the prefix of a `/*` one is a valid SPIFFE ID or a bare trust domain.
fn check_spiffe_pattern(pattern: &UriPattern) -> Result<(), String> {
    let (shown, checked) = match pattern {
        UriPattern::Exact(u) => (
            u.as_str(),
            crate::identity::spiffe_trust_domain(u).map(|_| ()),
        ),
        UriPattern::Below(prefix) => {
            let id = prefix.strip_suffix('/').unwrap_or(prefix);
            let bare = id
                .strip_prefix("spiffe://")
                .filter(|td| crate::identity::valid_trust_domain(td));
            let checked = match bare {
                Some(_) => Ok(()),
                None => crate::identity::spiffe_trust_domain(id).map(|_| ()),
            };
            (prefix.as_str(), checked)
        }
    };
    checked.map_err(|e| {
        format!("`{shown}` can never match: a SPIFFE ID is `spiffe://` + a lower-case trust domain + a path, and this {e}")
    })
}

impl UriPattern {
    /// The trust domain a `spiffe_id` pattern is about (`example.org` for
    /// `spiffe://example.org/ns/*`); `None` for other URIs.
    pub fn spiffe_trust_domain(&self) -> Option<&str> {
        let s = match self {
            UriPattern::Exact(u) => u.as_str(),
            UriPattern::Below(p) => p.as_str(),
        };
        let rest = s.strip_prefix("spiffe://")?;
        Some(&rest[..rest.find('/').unwrap_or(rest.len())])
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriPattern::Exact(u) => f.write_str(u),
            UriPattern::Below(p) => write!(f, "{p}*"),
        }
    }
}

/// Lowercase hex without colons; `Err` unless only hex digits (and colons) were given.
fn normalize_hex(s: &str) -> Result<String, String> {
    let h: String = s
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be hexadecimal (colons allowed)".to_string());
    }
    Ok(h)
}

/// A SHA-256 fingerprint: 64 hex digits, colons optional, any case; lowercase without colons.
pub fn parse_fingerprint(s: &str) -> Result<String, String> {
    let h = normalize_hex(s).map_err(|e| format!("SHA-256 fingerprint {e}"))?;
    if h.len() != 64 {
        return Err(format!(
            "a SHA-256 fingerprint has 64 hex digits, got {}",
            h.len()
        ));
    }
    Ok(h)
}

/// Decode a SHA-256 fingerprint into its 32 bytes.
pub fn fingerprint_bytes(s: &str) -> Result<[u8; 32], String> {
    let h = parse_fingerprint(s)?;
    let mut out = [0u8; 32];
    for (i, chunk) in h.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| "invalid hex".to_string())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| "invalid hex".to_string())?;
    }
    Ok(out)
}

/// A base64 SHA-256 SPKI pin (standard alphabet, padding optional), decoded to its 32 bytes.
pub fn spki_bytes(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim().trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(t)
        .map_err(|_| "must be standard base64 of a SHA-256 digest".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "must be base64 of a 32-byte SHA-256 digest, got {} bytes",
            bytes.len()
        )
    })
}

/// A base64 SPKI pin in canonical form: standard base64 with padding.
pub fn parse_spki(s: &str) -> Result<String, String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(spki_bytes(s)?))
}

/// A serial number: hex, colons and case ignored; canonical lowercase without leading zero bytes.
pub fn parse_serial(s: &str) -> Result<String, String> {
    let mut h = normalize_hex(s).map_err(|e| format!("serial {e}"))?;
    while h.len() > 2 && h.starts_with("00") {
        h.drain(..2);
    }
    Ok(h)
}

/// Compare serials numerically: leading zero digits, case and colons do not matter. Runs per
/// request for every `serial` key tried, so it allocates nothing.
fn serial_eq(canonical: &str, cert: &str) -> bool {
    let a = canonical
        .trim_start_matches('0')
        .bytes()
        .map(|c| c.to_ascii_lowercase());
    let b = cert
        .bytes()
        .filter(|c| *c != b':')
        .skip_while(|c| *c == b'0')
        .map(|c| c.to_ascii_lowercase());
    a.eq(b)
}

/// Compare fingerprints ignoring case and colons.
fn hex_eq(canonical: &str, cert: &str) -> bool {
    let mut b = cert.bytes().filter(|c| *c != b':');
    let mut a = canonical.bytes();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => {}
            _ => return false,
        }
    }
}

/// Email SANs: local part exact, domain case-insensitive.
fn email_eq(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => a == b,
    }
}

/// Parse an IP address or CIDR network.
pub fn parse_ip(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        // Canonical network form: 10.1.2.3/8 means 10.0.0.0/8.
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))
}

impl Matcher {
    /// Compile one string-valued allow key (everything except `authenticated`). `trust` and
    /// `pinned` references are checked by the caller, which knows the trust sources.
    pub fn parse(key: &str, value: &str) -> Result<Matcher, String> {
        let simple = |v: &str| -> Result<String, String> {
            no_glob(key, v)?;
            Ok(non_empty(v)?.to_string())
        };
        Ok(match key {
            "trust" => Matcher::Trust(simple(value)?),
            "pinned" => Matcher::Pinned(simple(value)?),
            "subject" | "issuer" => {
                let v = simple(value)?;
                if !v.contains('=') {
                    return Err(format!(
                        "`{key}` must be a full DN in RFC 4514 form, e.g. CN=alice,OU=payments,O=acme"
                    ));
                }
                if key == "subject" {
                    Matcher::Subject(v)
                } else {
                    Matcher::Issuer(v)
                }
            }
            "cn" => Matcher::Cn(Glob(non_empty(value)?.to_string())),
            "o" => Matcher::O(Glob(non_empty(value)?.to_string())),
            "ou" => Matcher::Ou(Glob(non_empty(value)?.to_string())),
            "san_dns" => Matcher::SanDns(DnsPattern::parse(value)?),
            "san_uri" => Matcher::SanUri(UriPattern::parse(key, value)?),
            "spiffe_id" => {
                if !value.trim().starts_with("spiffe://") {
                    return Err("`spiffe_id` must start with `spiffe://`".to_string());
                }
                let pattern = UriPattern::parse(key, value)?;
                check_spiffe_pattern(&pattern)?;
                Matcher::SpiffeId(pattern)
            }
            "san_email" => {
                let v = simple(value)?;
                if !v.contains('@') {
                    return Err("`san_email` must be an email address".to_string());
                }
                Matcher::SanEmail(v)
            }
            "san_ip" => Matcher::SanIp(parse_ip(value)?),
            "fingerprint" => Matcher::Fingerprint(parse_fingerprint(value)?),
            "spki" => Matcher::Spki(parse_spki(value)?),
            "serial" => Matcher::Serial(parse_serial(value)?),
            "authenticated" => {
                if value.trim() == "true" {
                    Matcher::Authenticated
                } else {
                    return Err("`authenticated` must be `true`".to_string());
                }
            }
            other => return Err(format!("unknown allow key `{other}`")),
        })
    }

    /// The allow key this matcher came from (`spiffe_id`, `cn`, ...).
    pub fn key(&self) -> &'static str {
        match self {
            Matcher::Trust(_) => "trust",
            Matcher::Pinned(_) => "pinned",
            Matcher::Subject(_) => "subject",
            Matcher::Issuer(_) => "issuer",
            Matcher::Cn(_) => "cn",
            Matcher::O(_) => "o",
            Matcher::Ou(_) => "ou",
            Matcher::SanDns(_) => "san_dns",
            Matcher::SanUri(_) => "san_uri",
            Matcher::SpiffeId(_) => "spiffe_id",
            Matcher::SanEmail(_) => "san_email",
            Matcher::SanIp(_) => "san_ip",
            Matcher::Fingerprint(_) => "fingerprint",
            Matcher::Spki(_) => "spki",
            Matcher::Serial(_) => "serial",
            Matcher::Authenticated => "authenticated",
        }
    }

    /// Whether this key matches what a certificate says about itself (names, SANs, serial):
    /// whoever issues the certificate chooses it. (`fingerprint` and `spki` name one
    /// certificate or key; `trust`, `pinned` and `authenticated` are about who admitted it.)
    pub fn is_self_asserted(&self) -> bool {
        !matches!(
            self,
            Matcher::Trust(_)
                | Matcher::Pinned(_)
                | Matcher::Fingerprint(_)
                | Matcher::Spki(_)
                | Matcher::Authenticated
        )
    }

    /// The trust source this matcher requires by name (`trust:`), if any. For `pinned:` the
    /// source is known only with the config: see [`super::AllowEntry::required_trust`].
    pub fn required_trust(&self) -> Option<&str> {
        match self {
            Matcher::Trust(t) => Some(t),
            _ => None,
        }
    }

    /// Does this one key match the identity?
    pub fn matches(&self, id: &crate::identity::Identity) -> bool {
        let c = &id.cert;
        match self {
            Matcher::Trust(t) => &*id.trust == t,
            Matcher::Pinned(p) => id.pinned.as_deref() == Some(p.as_str()),
            Matcher::Subject(dn) => &c.subject == dn,
            Matcher::Issuer(dn) => &c.issuer == dn,
            Matcher::Cn(g) => c.cn.iter().any(|v| g.matches(v)),
            Matcher::O(g) => c.o.iter().any(|v| g.matches(v)),
            Matcher::Ou(g) => c.ou.iter().any(|v| g.matches(v)),
            Matcher::SanDns(p) => c.san_dns.iter().any(|d| p.matches(d)),
            Matcher::SanUri(p) => c.san_uri.iter().any(|u| p.matches(u)),
            Matcher::SpiffeId(p) => c.spiffe_id.as_deref().is_some_and(|u| p.matches(u)),
            Matcher::SanEmail(e) => c.san_email.iter().any(|v| email_eq(e, v)),
            Matcher::SanIp(net) => c.san_ip.iter().any(|ip| net.contains(ip)),
            Matcher::Fingerprint(f) => hex_eq(f, &c.fingerprint),
            Matcher::Spki(s) => s.trim_end_matches('=') == c.spki.trim_end_matches('='),
            Matcher::Serial(s) => serial_eq(s, &c.serial),
            Matcher::Authenticated => true,
        }
    }

    /// What the identity has for this key, for `explain` output.
    pub fn actual(&self, id: &crate::identity::Identity) -> String {
        fn list(v: &[String]) -> String {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        }
        let c = &id.cert;
        match self {
            Matcher::Trust(_) => id.trust.to_string(),
            Matcher::Pinned(_) => id.pinned.as_deref().unwrap_or("none").to_string(),
            Matcher::Subject(_) => c.subject.clone(),
            Matcher::Issuer(_) => c.issuer.clone(),
            Matcher::Cn(_) => list(&c.cn),
            Matcher::O(_) => list(&c.o),
            Matcher::Ou(_) => list(&c.ou),
            Matcher::SanDns(_) => list(&c.san_dns),
            Matcher::SanUri(_) => list(&c.san_uri),
            Matcher::SpiffeId(_) => c.spiffe_id.clone().unwrap_or_else(|| "none".to_string()),
            Matcher::SanEmail(_) => list(&c.san_email),
            Matcher::SanIp(_) => {
                let ips: Vec<String> = c.san_ip.iter().map(|ip| ip.to_string()).collect();
                list(&ips)
            }
            Matcher::Fingerprint(_) => c.fingerprint.clone(),
            Matcher::Spki(_) => c.spki.clone(),
            Matcher::Serial(_) => c.serial.clone(),
            Matcher::Authenticated => "true".to_string(),
        }
    }
}

impl fmt::Display for Matcher {
    /// `key=pattern`, in the form the config file takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key();
        match self {
            Matcher::Trust(v)
            | Matcher::Pinned(v)
            | Matcher::Subject(v)
            | Matcher::Issuer(v)
            | Matcher::SanEmail(v)
            | Matcher::Fingerprint(v)
            | Matcher::Spki(v)
            | Matcher::Serial(v) => write!(f, "{key}={v}"),
            Matcher::Cn(g) | Matcher::O(g) | Matcher::Ou(g) => write!(f, "{key}={}", g.0),
            Matcher::SanDns(p) => write!(f, "{key}={p}"),
            Matcher::SanUri(p) | Matcher::SpiffeId(p) => write!(f, "{key}={p}"),
            Matcher::SanIp(net) => {
                if net.prefix_len() == net.max_prefix_len() {
                    write!(f, "{key}={}", net.addr())
                } else {
                    write!(f, "{key}={net}")
                }
            }
            Matcher::Authenticated => write!(f, "{key}=true"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let rows: &[(&str, Option<&str>, bool)] = &[
            ("orders.internal", Some("orders.internal"), true),
            ("Orders.Internal.", Some("orders.internal"), true),
            ("orders.internal", Some("x.orders.internal"), false),
            ("orders.internal", None, false),
            ("*.internal", Some("orders.internal"), true),
            ("*.internal", Some("a.b.internal"), false),
            ("*.internal", Some("internal"), false),
            ("*.internal", Some(".internal"), false),
            ("*.internal", Some("xinternal"), false),
            // Non-ASCII where the suffix would start (a DNS SAN can hold any UTF-8): no
            // match, and no panic from splitting inside a character.
            ("*.internal", Some("xé.internal"), true),
            ("*.billing.svc", Some("xéilling.svc"), false),
            ("*.ab", Some("€b"), false),
        ];
        for (pat, host, want) in rows {
            let p = HostPattern::parse(pat).unwrap();
            assert_eq!(p.matches(*host), *want, "{pat} vs {host:?}");
        }
        for bad in [
            "",
            "a.*.internal",
            "*internal",
            "orders*.x",
            "**.x",
            "host:8443",
            "a b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(HostPattern::parse("127.0.0.1").is_ok());
        // IPv6: request hosts normalize to the bracketed canonical form (`[::1]:8443` ->
        // `[::1]`), so route hosts are stored the same way, with or without brackets.
        for given in ["::1", "[::1]", "[0:0:0:0:0:0:0:1]", "0::1"] {
            let p = HostPattern::parse(given).unwrap();
            assert_eq!(p, HostPattern::Exact("[::1]".into()), "{given}");
            assert_eq!(p.to_string(), "[::1]");
            let req = crate::request::host::normalize_host("[::1]:8443");
            assert!(p.matches(req.as_deref()), "{given}");
        }
        assert!(HostPattern::parse("[FE80::AB]")
            .unwrap()
            .matches(crate::request::host::normalize_host("[fe80::ab]").as_deref()));
        for bad in ["[::1]:8443", "[::1", "[example.com]", "[]", "[127.0.0.1]"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn path_patterns() {
        let rows: &[(PathMatch, &str, bool)] = &[
            (PathMatch::prefix("/orders").unwrap(), "/orders", true),
            (PathMatch::prefix("/orders").unwrap(), "/orders/", true),
            (PathMatch::prefix("/orders/").unwrap(), "/orders/x", true),
            (PathMatch::prefix("/orders").unwrap(), "/ordersX", false),
            (PathMatch::prefix("/orders").unwrap(), "/", false),
            (PathMatch::prefix("/").unwrap(), "/anything/at/all", true),
            (PathMatch::exact("/status").unwrap(), "/status", true),
            (PathMatch::exact("/status").unwrap(), "/status/", false),
            (PathMatch::Any, "/x", true),
        ];
        for (p, path, want) in rows {
            assert_eq!(p.matches(path), *want, "{p:?} vs {path}");
        }
        assert_eq!(
            PathMatch::prefix("/").unwrap(),
            PathMatch::Prefix("/".into())
        );
        for bad in ["orders", "/orders/*", "/a//b", "/a/../b", "/a?x=1", ""] {
            assert!(PathMatch::prefix(bad).is_err(), "{bad}");
        }
        // Not in normalized form: would never match a (normalized) request path.
        for (bad, want) in [
            ("/a%7Eb", Some("`/a~b`")),
            ("/a%2cb", Some("`/a%2Cb`")),
            ("/a{b}", Some("`/a%7Bb%7D`")),
            ("/admin;x", None),
            ("/a%2Fb", None),
            ("/a%zz", None),
            ("/a b", None),
        ] {
            for r in [PathMatch::exact(bad), PathMatch::prefix(bad)] {
                let err = r.expect_err(bad);
                if let Some(want) = want {
                    assert!(
                        err.contains("normalized form") && err.contains(want),
                        "{err}"
                    );
                }
            }
        }
        for good in ["/a~b", "/a%2Cb", "/caf%C3%A9", "/a:b@c", "/orders/"] {
            assert!(PathMatch::exact(good).is_ok(), "{good}");
            assert!(PathMatch::prefix(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn globs() {
        let rows = [
            ("billing-*", "billing-client", true),
            ("*-client", "billing-client", true),
            ("b*g*t", "billing-client", true),
            ("*", "", true),
            ("billing", "billing-client", false),
            ("*x", "billing", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ];
        for (g, s, want) in rows {
            assert_eq!(Glob(g.into()).matches(s), want, "{g} vs {s}");
        }
    }

    #[test]
    fn dns_and_uri_patterns() {
        let w = DnsPattern::parse("*.billing.svc").unwrap();
        assert!(w.matches("api.billing.svc"));
        assert!(w.matches("API.Billing.SVC"));
        assert!(!w.matches("a.b.billing.svc"));
        assert!(!w.matches("billing.svc"));
        assert!(!w.matches("*.billing.svc"));
        // A certificate's SAN may be any UTF-8; splitting it must not panic.
        assert!(!w.matches("x\u{e9}illing.svc"));
        assert!(DnsPattern::parse("b.svc").unwrap().matches("B.SVC"));
        assert!(!DnsPattern::parse("b.svc").unwrap().matches("\u{e9}.svc"));
        assert!(DnsPattern::parse("a.*.svc").is_err());
        assert!(DnsPattern::parse("api*.svc").is_err());

        let b = UriPattern::parse("spiffe_id", "spiffe://x/ns/prod/*").unwrap();
        assert_eq!(b, UriPattern::Below("spiffe://x/ns/prod/".into()));
        assert!(b.matches("spiffe://x/ns/prod/sa/a"));
        assert!(!b.matches("spiffe://x/ns/prod/"));
        assert!(!b.matches("spiffe://x/ns/prod"));
        assert!(!b.matches("spiffe://x/ns/production/a"));
        assert!(UriPattern::parse("san_uri", "spiffe://x/*/sa").is_err());
        assert!(UriPattern::parse("san_uri", "spiffe://x/a*").is_err());
        assert_eq!(b.to_string(), "spiffe://x/ns/prod/*");
    }

    #[test]
    fn pins_and_hex() {
        let plain = "3fa2".repeat(16);
        let colons = plain
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&plain).unwrap(), plain);
        assert_eq!(parse_fingerprint(&colons).unwrap(), plain);
        assert_eq!(fingerprint_bytes(&colons).unwrap()[..2], [0x3f, 0xa2]);
        assert!(parse_fingerprint("3fa2").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());

        let digest = [7u8; 32];
        let padded = base64::engine::general_purpose::STANDARD.encode(digest);
        assert!(padded.ends_with('='));
        assert_eq!(spki_bytes(&padded).unwrap(), digest);
        assert_eq!(spki_bytes(padded.trim_end_matches('=')).unwrap(), digest);
        assert_eq!(parse_spki(padded.trim_end_matches('=')).unwrap(), padded);
        assert!(spki_bytes("AAAA").is_err());
        assert!(spki_bytes("not base64!").is_err());

        assert_eq!(parse_serial("00:00:AB:cd").unwrap(), "abcd");
        assert_eq!(parse_serial("00").unwrap(), "00");
        assert!(serial_eq("abcd", "00abcd"));
        assert!(serial_eq("0abc", "abc"));
        assert!(!serial_eq("abcd", "abce"));
        assert!(parse_serial("xyz").is_err());
    }

    #[test]
    fn matcher_parse_errors() {
        let rows: &[(&str, &str)] = &[
            ("trust", "inter*"),
            ("pinned", ""),
            ("subject", "alice"),
            ("subject", "CN=*"),
            ("san_dns", "a.*.b"),
            ("san_uri", "spiffe://x/a*"),
            ("spiffe_id", "https://x/y"),
            ("spiffe_id", "spiffe://Example.org/y"),
            ("spiffe_id", "spiffe://x/y/"),
            ("spiffe_id", "spiffe://x"),
            ("spiffe_id", "spiffe://x:8443/y"),
            ("spiffe_id", "spiffe://x/a/../*"),
            ("spiffe_id", "spiffe://x//*"),
            ("san_email", "*@x.org"),
            ("san_email", "alice"),
            ("san_ip", "10.0.0.0/33"),
            ("san_ip", "host"),
            ("fingerprint", "abc"),
            ("spki", "abc"),
            ("serial", "g1"),
            ("authenticated", "false"),
            ("color", "red"),
        ];
        for (k, v) in rows {
            assert!(Matcher::parse(k, v).is_err(), "{k}={v} should be rejected");
        }
        assert!(matches!(
            Matcher::parse("cn", "billing-*"),
            Ok(Matcher::Cn(_))
        ));
        for good in [
            "spiffe://x/y",
            "spiffe://x/*",
            "spiffe://example.org/ns/prod/*",
        ] {
            match Matcher::parse("spiffe_id", good) {
                Ok(Matcher::SpiffeId(p)) => {
                    let td = p.spiffe_trust_domain();
                    assert!(td == Some("x") || td == Some("example.org"), "{good}");
                }
                other => panic!("{good}: {other:?}"),
            }
        }
        assert_eq!(
            Matcher::parse("san_ip", "10.1.2.3/8").unwrap().to_string(),
            "san_ip=10.0.0.0/8"
        );
        assert_eq!(
            Matcher::parse("san_ip", "::1").unwrap().to_string(),
            "san_ip=::1"
        );
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of the matchers against straightforward reference definitions: a `*.` host
    //! or DNS glob covers exactly one label, `path_prefix` stops at segment boundaries, and a
    //! `cn`/`o`/`ou` glob is the usual "`*` = any run" match.

    use super::*;
    use proptest::prelude::*;

    fn dns_label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{1,8}"
    }

    /// Labels a client-controlled name may have: DNS-like, empty, `*`, non-ASCII.
    fn any_label() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => dns_label(),
            1 => Just(String::new()),
            1 => Just("*".to_owned()),
            1 => "\\PC{1,4}",
        ]
    }

    fn suffix() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[a-z0-9-]{1,6}", 1..4)
    }

    /// A candidate name for `*.suffix`: some labels, then the suffix (in any case), a
    /// near miss of it, or something else.
    fn candidate(suffix: Vec<String>) -> impl Strategy<Value = String> {
        let joined = suffix.join(".");
        (
            prop::collection::vec(any_label(), 0..4),
            prop_oneof![
                Just(joined.clone()),
                Just(joined.to_ascii_uppercase()),
                Just(format!("x{joined}")),
                Just(format!("{joined}x")),
                Just(format!("{joined}.")),
                "\\PC{0,10}",
            ],
            prop::sample::select(&["", "."][..]),
        )
            .prop_map(|(head, tail, sep)| {
                if head.is_empty() {
                    format!("{sep}{tail}")
                } else {
                    format!("{}.{tail}", head.join("."))
                }
            })
    }

    /// Reference: `name` (one trailing dot ignored) is exactly one non-empty label without
    /// `.` or `*`, then the suffix's labels, compared ASCII case-insensitively.
    fn one_label_reference(name: &str, suffix: &[String]) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels: Vec<&str> = name.split('.').collect();
        labels.len() == suffix.len() + 1
            && !labels[0].is_empty()
            && !labels[0].contains('*')
            && labels[1..]
                .iter()
                .zip(suffix)
                .all(|(l, s)| l.eq_ignore_ascii_case(s))
    }

    fn segments(p: &str) -> Vec<&str> {
        p.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Reference glob: `*` matches any run of characters, everything else itself.
    fn glob_reference(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| glob_reference(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && glob_reference(rest, &s[1..]),
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]

        /// `host: "*.suffix"` and `san_dns: "*.suffix"` match exactly one extra label, never
        /// two, never none, never a label that merely ends like the suffix.
        #[test]
        fn wildcard_covers_exactly_one_label(
            (suffix, name) in suffix().prop_flat_map(|s| (Just(s.clone()), candidate(s)))
        ) {
            let pattern = format!("*.{}", suffix.join("."));
            let want = one_label_reference(&name, &suffix);
            let host = HostPattern::parse(&pattern).unwrap();
            prop_assert_eq!(host.matches(Some(&name)), want, "{} vs {:?}", pattern, name);
            let dns = DnsPattern::parse(&pattern).unwrap();
            prop_assert_eq!(dns.matches(&name), want, "{} vs {:?}", pattern, name);
        }

        /// Exact host and DNS patterns: equal up to ASCII case and one trailing dot.
        #[test]
        fn exact_names_ignore_only_case_and_a_trailing_dot(
            labels in prop::collection::vec(dns_label(), 1..4),
            other in "\\PC{0,12}",
            dot in any::<bool>(),
        ) {
            let name = labels.join(".");
            let spelled = format!("{}{}", name.to_ascii_uppercase(), if dot { "." } else { "" });
            prop_assert!(HostPattern::parse(&name).unwrap().matches(Some(&spelled)));
            prop_assert!(DnsPattern::parse(&name).unwrap().matches(&spelled));
            let other_trimmed = other.strip_suffix('.').unwrap_or(&other);
            let same = other_trimmed.eq_ignore_ascii_case(&name);
            prop_assert_eq!(HostPattern::parse(&name).unwrap().matches(Some(&other)), same);
            prop_assert_eq!(DnsPattern::parse(&name).unwrap().matches(&other), same);
        }

        /// `path_prefix: /orders` matches `/orders` and what is below it, never a sibling
        /// like `/ordersX`; in general, exactly the paths whose segments start with its
        /// segments. `path:` matches only itself.
        #[test]
        fn path_prefix_stops_at_segment_boundaries(
            prefix in prop::collection::vec("[a-z0-9._~-]{1,5}", 0..4),
            rest in prop::collection::vec("[a-z0-9._~-]{1,5}", 0..3),
            glued in "[a-zA-Z0-9._~%-]{1,5}",
            trailing in any::<bool>(),
        ) {
            let prefix: Vec<String> = prefix.into_iter().filter(|s| s != "." && s != "..").collect();
            let p = format!("/{}", prefix.join("/"));
            let Ok(m) = PathMatch::prefix(&format!("{p}{}", if trailing && p != "/" { "/" } else { "" })) else {
                return Ok(());
            };
            prop_assert!(m.matches(&p));
            let below = format!("{}/{}", p.trim_end_matches('/'), rest.join("/"));
            prop_assert!(m.matches(&below), "{p} vs {below}");
            if p != "/" {
                let sibling = format!("{p}{glued}");
                prop_assert!(!m.matches(&sibling), "{p} matched the sibling {sibling}");
                let sibling_below = format!("{sibling}/{}", rest.join("/"));
                prop_assert!(!m.matches(&sibling_below), "{p} matched {sibling_below}");
            }
            for candidate in [below.as_str(), &format!("{p}{glued}"), &format!("/{glued}"), "/"] {
                let reference = segments(candidate).starts_with(&segments(&p));
                prop_assert_eq!(m.matches(candidate), reference, "{} vs {}", p, candidate);
            }
            if let Ok(exact) = PathMatch::exact(&p) {
                prop_assert!(exact.matches(&p));
                prop_assert_eq!(exact.matches(&below), below == p);
            }
        }

        /// `cn`/`o`/`ou` globs agree with the reference definition; a glob without `*` is
        /// plain equality; `*` anywhere in a value's own spelling still matches it.
        #[test]
        fn cn_glob_matches_like_the_reference(
            pattern in "[ab*]{0,8}",
            value in "[ab*]{0,10}",
            literal in "\\PC{0,10}",
            star_at in any::<prop::sample::Index>(),
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let v: Vec<char> = value.chars().collect();
            prop_assert_eq!(
                Glob(pattern.clone()).matches(&value),
                glob_reference(&p, &v),
                "{:?} vs {:?}", pattern, value
            );
            let plain: String = literal.chars().filter(|c| *c != '*').collect();
            prop_assert!(Glob(plain.clone()).matches(&plain));
            prop_assert_eq!(Glob(plain.clone()).matches(&literal), plain == literal);
            let chars: Vec<char> = plain.chars().collect();
            let at = star_at.index(chars.len() + 1);
            let starred: String = chars[..at].iter().chain(['*'].iter()).chain(&chars[at..]).collect();
            prop_assert!(Glob(starred.clone()).matches(&plain), "{starred:?} vs {plain:?}");
            prop_assert!(Glob("*".into()).matches(&literal));
        }
    }
}
