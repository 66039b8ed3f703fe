//! Header rewriting on the way upstream: hop-by-hop removal, inbound client-cert headers
//! removal, X-Forwarded-*, and the Envoy-compatible XFCC header (SPEC 4.1).
//!
//! Callers run [`strip_hop_by_hop`] first and [`apply_forward`] second, so that a header a
//! client nominates in `Connection` can never remove one certguard adds.

use std::net::IpAddr;

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::certs::pem_certificate;
use crate::config::{Forward, XfccField, XfccMode};
use crate::identity::CertInfo;

/// `x-forwarded-client-cert`.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// `client-cert` (RFC 9440); always removed inbound.
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
/// `client-cert-chain` (RFC 9440); always removed inbound.
pub const CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");
/// `proxy`: no standard request header, but CGI turns it into `HTTP_PROXY`, which many HTTP
/// client libraries take as their outbound proxy ("httpoxy", CVE-2016-5385); always removed
/// inbound, as nginx's and HAProxy's httpoxy advice does.
pub const PROXY: HeaderName = HeaderName::from_static("proxy");
/// `x-forwarded-for`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Connection-specific in an `Upgrade: h2c` request (RFC 7540 3.2.1); never relayed, so an
/// upstream cannot be talked into an h2c upgrade that would bypass per-request policy.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Hop-by-hop headers (RFC 9110 7.6.1, plus the non-standard `keep-alive` and
/// `proxy-connection`), always removed; `te: trailers` is put back by [`strip_hop_by_hop`].
/// `Trailer` is end-to-end (RFC 9110 6.6.2) and is kept: an HTTP/1.1 hop only sends the
/// trailer fields it declares, so removing it would drop gRPC trailers.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HTTP2_SETTINGS,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Headers a client cannot get removed by naming them in `Connection`: the request's own
/// routing and framing. (`te` is handled by its own rule.)
const NOT_NOMINATABLE: [HeaderName; 3] = [HOST, CONTENT_LENGTH, TE];

/// The comma-separated, trimmed, non-empty tokens of every `name` header line. Lines that are
/// not ASCII are skipped (they name nothing certguard could match).
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

/// Remove hop-by-hop headers and every header named in `Connection`. Keeps `te: trailers`
/// (needed by gRPC over HTTP/2).
///
/// `connection`, `keep-alive`, `proxy-connection`, `proxy-authenticate`,
/// `proxy-authorization`, `te`, `trailer`, `transfer-encoding` and `upgrade` are removed, and so
/// is every header named in a `Connection` line (comma lists, case-insensitive), except `host`
/// and `content-length`. If any `te` token is `trailers`, the result has exactly one
/// `te: trailers` (other codings are dropped); otherwise no `te`. For WebSocket and other
/// upgrades, read [`is_upgrade_request`] before calling this and re-add `connection: upgrade`
/// and `upgrade` afterwards.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of them the head carries, in one pass over its names: a removal (a hash and a
    // probe) for each of the nine would cost more, and most heads carry none or one
    // (`connection: keep-alive`). Without `connection` nothing is nominated either.
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let here = |name: &HeaderName| {
        HOP_BY_HOP
            .iter()
            .zip(present)
            .any(|(h, here)| here && h == name)
    };
    let keep_te_trailers =
        here(&TE) && tokens(headers, &TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    // Only names the head carries: the usual tokens (`keep-alive`, `close`) then cost a
    // lookup, not a header name built (and allocated) to remove nothing.
    let nominated: Vec<HeaderName> = if here(&CONNECTION) {
        tokens(headers, &CONNECTION)
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|name| !NOT_NOMINATABLE.contains(name))
            .collect()
    } else {
        Vec::new()
    };
    for name in &nominated {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The `Upgrade` header's value when the request is a WebSocket opening handshake: a GET
/// whose `Connection` contains the token `upgrade` (case-insensitively) and whose only
/// `Upgrade` token is `websocket`. `None` for anything else.
///
/// Only WebSocket is relayed. After a `101` the connection is a raw tunnel that no request
/// policy sees, so an upgrade to another protocol (`h2c` above all, the "h2c smuggling" trick)
/// would let one permitted request open a channel for unchecked ones. Other upgrade requests
/// are forwarded as ordinary requests with `Upgrade` removed (it is hop-by-hop).
pub fn websocket_upgrade(method: &http::Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != http::Method::GET
        || !tokens(headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let mut upgrade = tokens(headers, &UPGRADE);
    match (upgrade.next(), upgrade.next()) {
        (Some(t), None) if t.eq_ignore_ascii_case("websocket") => {
            Some(HeaderValue::from_static("websocket"))
        }
        _ => None,
    }
}

/// Whether the response to a relayed WebSocket request really switched to WebSocket (a
/// `101` whose `Upgrade` is `websocket`). Any other `101` is an upstream protocol error.
pub fn is_websocket_switch(headers: &HeaderMap) -> bool {
    let mut upgrade = tokens(headers, &UPGRADE);
    matches!(
        (upgrade.next(), upgrade.next()),
        (Some(t), None) if t.eq_ignore_ascii_case("websocket")
    )
}

/// Headers that certguard removes or sets itself, or that carry framing and routing. A client
/// header whose name equals one of these once `_` is read as `-` (`X_Forwarded_Client_Cert`)
/// is removed: CGI, WSGI, PHP and Rails-style upstreams fold `_` and `-` together, so it would
/// arrive there as the very header certguard vouches for. (nginx drops every header with an
/// underscore by default; Envoy has `headers_with_underscores_action` for this.)
const PROTECTED: [&str; 16] = [
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "upgrade",
    "http2-settings",
];

/// Headers that other proxies, load balancers and CDNs use to pass a client's address or its
/// certificate to the application (nginx `X-Real-IP`, RFC 7239 `Forwarded`, HAProxy and nginx
/// `X-SSL-Client-*`, Apache `SSL_CLIENT_*`, AWS ALB `X-Amzn-Mtls-Clientcert-*`, Azure
/// `X-ARR-ClientCert`, Cloudflare and Akamai client-IP headers). certguard vouches for none of
/// them, and an application configured for another proxy would believe them: removed inbound
/// unless `forward.strip_identity_headers: false`. Compared after `_` is read as `-`.
const FOREIGN_IDENTITY: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-arr-clientcert",
    "x-client-verify",
    "x-client-dn",
    "x-ssl-cert",
];
/// Name prefixes of [`FOREIGN_IDENTITY`] header families. `x-forwarded-` covers the rest of
/// the family certguard sets (`X-Forwarded-Port`, `-Prefix`, `-Ssl`, `-Scheme`, ...).
const FOREIGN_IDENTITY_PREFIXES: [&str; 5] = [
    "x-forwarded-",
    "x-ssl-client-",
    "ssl-client-",
    "x-client-cert",
    "x-amzn-mtls-clientcert",
];

/// Whether a (lower-case) header name, with `_` read as `-`, is one of [`FOREIGN_IDENTITY`].
fn is_foreign_identity(dashed: &str) -> bool {
    // Every name and prefix below starts with one of these: most names are out at once.
    if !matches!(
        dashed.as_bytes().first(),
        Some(b'c' | b'f' | b's' | b't' | b'x')
    ) {
        return false;
    }
    FOREIGN_IDENTITY.contains(&dashed)
        || FOREIGN_IDENTITY_PREFIXES
            .iter()
            .any(|p| dashed.starts_with(p))
}

/// `name` with `_` read as `-`, borrowed when it has none.
fn dashed(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.contains('_') {
        std::borrow::Cow::Owned(s.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Remove, in one pass over the names: every header whose name contains `_` and reads as a
/// [`PROTECTED`] name or as one of `forward.strip_headers` when `_` is taken for `-`; and, with
/// `forward.strip_identity_headers`, every [`FOREIGN_IDENTITY`] header in either spelling.
fn remove_aliases_and_foreign(headers: &mut HeaderMap, forward: &Forward) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let underscore = name.as_str().contains('_');
            if !underscore && !forward.strip_identity_headers {
                return false;
            }
            let d = dashed(name);
            if !underscore {
                // certguard's own headers have their own rules (`append` keeps an inbound
                // XFCC). Most names are not foreign, so that is asked first.
                return is_foreign_identity(&d) && !PROTECTED.contains(&&*d);
            }
            // Any underscore spelling of certguard's own headers goes.
            PROTECTED.contains(&&*d)
                || (forward.strip_identity_headers && is_foreign_identity(&d))
                || forward.strip_headers.iter().any(|s| s.as_str() == d)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether a request trailer field named `name` is dropped on its way upstream: everything
/// certguard removes from or sets in a request head (identity and forwarding headers in every
/// spelling, `strip_headers`, hop-by-hop headers), and the fields RFC 9110 6.5.1 forbids in
/// trailers because they frame or route the message (`Host`, `Content-Length`,
/// `Transfer-Encoding`, `Trailer`). An upstream that merges trailers into its headers (many
/// do) would otherwise read a client's `x-forwarded-client-cert` trailer as certguard's.
pub fn is_dropped_trailer(name: &HeaderName, forward: &Forward) -> bool {
    let d = dashed(name);
    PROTECTED.contains(&&*d)
        || HOP_BY_HOP.iter().any(|h| h.as_str() == d)
        || d == "trailer"
        || d == "proxy"
        || d.starts_with("x-forwarded-")
        || forward.strip_headers.iter().any(|s| s.as_str() == d)
        || (forward.strip_identity_headers && is_foreign_identity(&d))
}

/// Remove [`is_dropped_trailer`] fields from a request's trailers.
pub fn clean_trailers(trailers: &mut HeaderMap, forward: &Forward) {
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| is_dropped_trailer(name, forward))
        .cloned()
        .collect();
    for name in doomed {
        trailers.remove(name);
    }
}

/// Rewrite a request's `Trailer` header so that it no longer announces fields that
/// [`clean_trailers`] drops; removed when nothing is left. (An HTTP/1.1 hop sends only the
/// trailer fields its `Trailer` header declares.)
pub fn clean_trailer_declaration(headers: &mut HeaderMap, forward: &Forward) {
    if !headers.contains_key(TRAILER) {
        return;
    }
    let declared: Vec<&str> = tokens(headers, &TRAILER).collect();
    let kept: Vec<&str> = declared
        .iter()
        .copied()
        .filter(|t| {
            HeaderName::from_bytes(t.as_bytes()).is_ok_and(|n| !is_dropped_trailer(&n, forward))
        })
        .collect();
    if kept.len() == declared.len() && headers.get_all(TRAILER).iter().count() == 1 {
        return;
    }
    let value = (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join(", ")).ok())
        .flatten();
    headers.remove(TRAILER);
    if let Some(value) = value {
        headers.insert(TRAILER, value);
    }
}

/// Percent-encode every byte that is not RFC 3986 unreserved, uppercase hex (the encoding
/// Envoy applies to `Cert` and `Chain`).
fn url_encode(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len() * 3 / 2);
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Control characters (other than tab) are not allowed in a header value; a certificate field
/// carrying one (an IA5String may) gets it written as `%XX` so the header stays valid.
fn escape_controls(value: &str, out: &mut String) {
    for c in value.chars() {
        if c != '\t' && c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
}

/// `"value"` with `"` and `\` backslash-escaped.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    let mut escaped = String::with_capacity(value.len());
    escape_controls(value, &mut escaped);
    for c in escaped.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The value as is, or [`quoted`] if it contains `,` `;` `=` `"` `\` or whitespace.
fn maybe_quoted(value: &str) -> String {
    let needs_quotes = value
        .chars()
        .any(|c| matches!(c, ',' | ';' | '=' | '"' | '\\') || c.is_whitespace());
    if needs_quotes {
        quoted(value)
    } else {
        let mut out = String::with_capacity(value.len());
        escape_controls(value, &mut out);
        out
    }
}

/// The XFCC element for one client certificate, keys in SPEC 4.1 order.
///
/// Keys, each only when its field is in `fields` (the order of `fields` does not matter):
/// `Hash=<lowercase hex SHA-256 of the leaf DER>`, `Cert="<URL-encoded PEM of the leaf>"`,
/// `Chain="<URL-encoded PEM of the chain as presented, leaf first>"`,
/// `Subject="<RFC 4514 subject>"` (always quoted, present even when empty, as Envoy does),
/// one `URI=` per URI SAN and one `DNS=` per DNS SAN (none when there are none). Pairs are
/// joined with `;`. A `URI`/`DNS` value containing `,` `;` `=` `"` `\` or whitespace is
/// double-quoted; inside quotes `"` and `\` are backslash-escaped. The result is always a valid
/// header value (see `escape_controls`).
pub fn xfcc_element(cert: &CertInfo, fields: &[XfccField]) -> String {
    let has = |f: XfccField| fields.contains(&f);
    let mut pairs: Vec<String> = Vec::new();
    if has(XfccField::Hash) {
        pairs.push(format!(
            "Hash={}",
            maybe_quoted(&cert.fingerprint.to_ascii_lowercase())
        ));
    }
    if has(XfccField::Cert) {
        if let Some(leaf) = cert.chain.first() {
            pairs.push(format!(
                "Cert={}",
                quoted(&url_encode(&pem_certificate(leaf)))
            ));
        }
    }
    if has(XfccField::Chain) && !cert.chain.is_empty() {
        let pem: String = cert.chain.iter().map(|c| pem_certificate(c)).collect();
        pairs.push(format!("Chain={}", quoted(&url_encode(&pem))));
    }
    if has(XfccField::Subject) {
        pairs.push(format!("Subject={}", quoted(&cert.subject)));
    }
    if has(XfccField::Uri) {
        for uri in &cert.san_uri {
            pairs.push(format!("URI={}", maybe_quoted(uri)));
        }
    }
    if has(XfccField::Dns) {
        for dns in &cert.san_dns {
            pairs.push(format!("DNS={}", maybe_quoted(dns)));
        }
    }
    pairs.join(";")
}

/// Apply the `forward` section to a request's headers: remove inbound
/// `x-forwarded-client-cert`/`client-cert`/`client-cert-chain`/`strip_headers` (keeping the
/// inbound XFCC value only for `append`) and their `_` spellings (see [`PROTECTED`]), add XFCC
/// per mode, and X-Forwarded-For/-Proto/-Host.
/// `host` is the Host as the client sent it (for X-Forwarded-Host).
///
/// XFCC modes: `sanitize_set` replaces every inbound XFCC line with ours; `append` joins the
/// inbound lines and ours into one header, `<inbound>,<ours>`; `sanitize` removes them all and
/// adds nothing.
///
/// Inbound `x-forwarded-for`, `x-forwarded-proto` and `x-forwarded-host` are always removed,
/// also when `x_forwarded` is off: certguard cannot vouch for them, and passing them through
/// would let a client spoof its address or scheme to an upstream that trusts them. With
/// `x_forwarded` on, certguard then sets `x-forwarded-for` to the TLS peer's IP (an
/// IPv4-mapped IPv6 peer is written as IPv4), `x-forwarded-proto: https` and, when `host` is
/// given, `x-forwarded-host` to it.
pub fn apply_forward(
    headers: &mut HeaderMap,
    forward: &Forward,
    cert: &CertInfo,
    peer: IpAddr,
    host: Option<&http::HeaderValue>,
) {
    let ours = ClientHeaders::new(forward, cert, peer);
    apply_forward_with(headers, forward, &ours, host);
}

/// [`apply_forward`] with the client's own header values computed beforehand: they depend
/// only on the connection (certificate, peer) and the `forward` settings, so the proxy builds
/// them once per connection and config generation instead of once per request.
pub fn apply_forward_with(
    headers: &mut HeaderMap,
    forward: &Forward,
    ours: &ClientHeaders,
    host: Option<&http::HeaderValue>,
) {
    remove_aliases_and_foreign(headers, forward);
    clean_trailer_declaration(headers, forward);
    // The client-supplied headers below are rare: look for them in one pass over the names
    // instead of removing each (a hash and a probe apiece) on every request.
    if any_of(headers, &[CLIENT_CERT, CLIENT_CERT_CHAIN, PROXY]) {
        headers.remove(CLIENT_CERT);
        headers.remove(CLIENT_CERT_CHAIN);
        headers.remove(PROXY);
    }
    if any_of(headers, &forward.strip_headers) {
        for name in &forward.strip_headers {
            headers.remove(name);
        }
    }
    if let Some(value) = &ours.client_cert {
        headers.insert(CLIENT_CERT, value.clone());
    }
    if let Some(value) = &ours.client_cert_chain {
        headers.insert(CLIENT_CERT_CHAIN, value.clone());
    }

    match forward.xfcc {
        XfccMode::Sanitize => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
        XfccMode::SanitizeSet => match &ours.xfcc {
            // `insert` replaces every inbound line.
            OurXfcc::Element(value) => {
                headers.insert(X_FORWARDED_CLIENT_CERT, value.clone());
            }
            _ => {
                headers.remove(&X_FORWARDED_CLIENT_CERT);
            }
        },
        XfccMode::Append => {
            // Every inbound line, in order (`HeaderMap::remove` would return only the first).
            let inbound: Vec<HeaderValue> = headers
                .get_all(&X_FORWARDED_CLIENT_CERT)
                .iter()
                .cloned()
                .collect();
            headers.remove(&X_FORWARDED_CLIENT_CERT);
            if let Some(value) = appended_xfcc(&inbound, &ours.xfcc) {
                headers.insert(X_FORWARDED_CLIENT_CERT, value);
            }
        }
    }

    if forward.x_forwarded {
        // `insert` replaces every inbound line.
        headers.insert(X_FORWARDED_FOR, ours.forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    } else if any_of(
        headers,
        &[X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST],
    ) {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
}

/// Whether `headers` has any of `names`: one pass over its names, cheaper than a lookup (a
/// hash and a probe) for each when the map is small and the names are usually absent.
fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    !names.is_empty() && headers.keys().any(|k| names.contains(k))
}

/// The header values certguard adds for one client: its XFCC element and its
/// X-Forwarded-For address.
#[derive(Clone, Debug)]
pub struct ClientHeaders {
    xfcc: OurXfcc,
    forwarded_for: HeaderValue,
    /// RFC 9440 `Client-Cert`, with `forward.client_cert_headers`.
    client_cert: Option<HeaderValue>,
    /// RFC 9440 `Client-Cert-Chain`, with `forward.client_cert_headers` and when the client
    /// sent intermediates.
    client_cert_chain: Option<HeaderValue>,
}

/// An RFC 8941 byte sequence: `:` + standard base64 with padding + `:`.
fn byte_sequence(der: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// RFC 9440 `Client-Cert` (the leaf) and `Client-Cert-Chain` (the intermediates the client
/// sent, as an RFC 8941 list; `None` when it sent none). Base64 and `:`, `,` and spaces are
/// always valid header value bytes.
fn rfc9440(cert: &CertInfo) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let Some((leaf, intermediates)) = cert.chain.split_first() else {
        return (None, None);
    };
    let value = |s: String| HeaderValue::from_str(&s).ok();
    let chain = (!intermediates.is_empty()).then(|| {
        intermediates
            .iter()
            .map(|c| byte_sequence(c))
            .collect::<Vec<_>>()
            .join(", ")
    });
    (value(byte_sequence(leaf)), chain.and_then(value))
}

#[derive(Clone, Debug)]
enum OurXfcc {
    /// `xfcc_fields` is empty: no element of ours.
    Nothing,
    Element(HeaderValue),
    /// The element is not a valid header value ([`xfcc_element`] rules that out); then no
    /// XFCC is sent at all, never an inbound one alone.
    Invalid,
}

impl ClientHeaders {
    /// The values for a client presenting `cert` from `peer` under `forward`.
    pub fn new(forward: &Forward, cert: &CertInfo, peer: IpAddr) -> ClientHeaders {
        let element = xfcc_element(cert, &forward.xfcc_fields);
        let xfcc = if element.is_empty() {
            OurXfcc::Nothing
        } else {
            match HeaderValue::from_str(&element) {
                Ok(value) => OurXfcc::Element(value),
                Err(_) => {
                    tracing::warn!("XFCC element is not a valid header value; not sending XFCC");
                    OurXfcc::Invalid
                }
            }
        };
        // An IP address's text form is always a valid header value (an IPv4-mapped IPv6 peer
        // is written as IPv4).
        let forwarded_for = HeaderValue::from_str(&peer.to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let (client_cert, client_cert_chain) = if forward.client_cert_headers {
            rfc9440(cert)
        } else {
            (None, None)
        };
        ClientHeaders {
            xfcc,
            forwarded_for,
            client_cert,
            client_cert_chain,
        }
    }
}

/// With `xfcc: append`, whether every inbound XFCC line is well formed (see
/// [`well_formed_xfcc`]); a request with a malformed one gets 400 before policy runs. Always
/// true in the other modes, which drop the inbound value.
pub fn inbound_xfcc_ok(headers: &HeaderMap, forward: &Forward) -> bool {
    forward.xfcc != XfccMode::Append
        || headers
            .get_all(&X_FORWARDED_CLIENT_CERT)
            .iter()
            .all(|line| well_formed_xfcc(line.as_bytes().trim_ascii()))
}

/// Whether an inbound XFCC line is a list of elements that any parser of Envoy's grammar
/// splits where its sender meant: `key=value` pairs separated by `;`, elements by `,`, each
/// value bare (none of `,` `;` `=` `"` `\`) or double-quoted with `\` escaping the next
/// character. An empty line passes (it is dropped). Anything else (an open quote, a dangling
/// `\`, a trailing separator, an empty element) would let the `,` before certguard's element
/// land inside the client's value, and merge certguard's element into the client's.
fn well_formed_xfcc(line: &[u8]) -> bool {
    let special = |b: &u8| matches!(b, b'=' | b',' | b';' | b'"' | b'\\');
    let bare = |i: &mut usize| {
        while line.get(*i).is_some_and(|b| !special(b)) {
            *i += 1;
        }
    };
    if line.is_empty() {
        return true;
    }
    let mut i = 0;
    loop {
        let key_start = i;
        bare(&mut i);
        if i == key_start || line.get(i) != Some(&b'=') {
            return false;
        }
        i += 1;
        if line.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match line.get(i) {
                    None => return false,
                    Some(b'\\') if i + 1 < line.len() => i += 2,
                    Some(b'\\') => return false,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
        } else {
            bare(&mut i);
        }
        match line.get(i) {
            None => return true,
            Some(b',' | b';') => i += 1,
            Some(_) => return false,
        }
    }
}

/// The `append` value: the non-empty inbound lines and ours, joined with `,`. `None` when there
/// is nothing to send, or when our element is invalid.
fn appended_xfcc(inbound: &[HeaderValue], ours: &OurXfcc) -> Option<HeaderValue> {
    let mut elements: Vec<&[u8]> = inbound
        .iter()
        .map(|line| line.as_bytes().trim_ascii())
        .filter(|line| !line.is_empty())
        .collect();
    match ours {
        OurXfcc::Invalid => return None,
        OurXfcc::Nothing => {}
        OurXfcc::Element(value) => elements.push(value.as_bytes()),
    }
    if elements.is_empty() {
        return None;
    }
    // Inbound lines are header values and so is ours: joined with `,` they still are.
    HeaderValue::from_bytes(&elements.join(&b","[..])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const FP: &str = "3fa2b1c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80";

    fn cert() -> CertInfo {
        CertInfo {
            subject: "CN=alice,OU=payments,O=acme".to_owned(),
            issuer: "CN=intermediate,O=acme".to_owned(),
            cn: vec!["alice".to_owned()],
            o: vec!["acme".to_owned()],
            ou: vec!["payments".to_owned()],
            san_dns: vec!["alice.svc".to_owned(), "alice.example".to_owned()],
            san_uri: vec![
                "spiffe://dev.local/ns/default/sa/alice".to_owned(),
                "https://alice.example/id".to_owned(),
            ],
            san_email: vec![],
            san_ip: vec![],
            spiffe_id: Some("spiffe://dev.local/ns/default/sa/alice".to_owned()),
            fingerprint: FP.to_owned(),
            spki: "AAAA".to_owned(),
            serial: "1a".to_owned(),
            not_before: 0,
            not_after: 1,
            chain_not_after: vec![1],
            chain: vec![
                CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
                CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x02]),
            ],
        }
    }

    pub(super) fn forward(xfcc: XfccMode, x_forwarded: bool) -> Forward {
        Forward {
            xfcc,
            xfcc_fields: vec![
                XfccField::Hash,
                XfccField::Subject,
                XfccField::Uri,
                XfccField::Dns,
            ],
            x_forwarded,
            strip_headers: vec![HeaderName::from_static("x-internal-role")],
            strip_identity_headers: true,
            client_cert_headers: false,
        }
    }

    #[test]
    fn rfc9440_client_cert_headers() {
        let inbound = || {
            map(&[
                ("client-cert", ":Zm9yZ2Vk:"),
                ("client-cert-chain", ":Zm9yZ2Vk:"),
                ("client_cert", ":Zm9yZ2Vk:"),
            ])
        };
        let peer = IpAddr::from(Ipv4Addr::LOCALHOST);
        // Off (the default): inbound copies are removed, nothing is added.
        let mut h = inbound();
        apply_forward(
            &mut h,
            &forward(XfccMode::SanitizeSet, true),
            &cert(),
            peer,
            None,
        );
        assert!(!h.contains_key("client-cert") && !h.contains_key("client-cert-chain"));
        assert!(!h.contains_key("client_cert"));
        // On: the leaf and the intermediates the client sent, as RFC 8941 byte sequences.
        let mut on = forward(XfccMode::Sanitize, false);
        on.client_cert_headers = true;
        let mut h = inbound();
        apply_forward(&mut h, &on, &cert(), peer, None);
        assert_eq!(all(&h, "client-cert"), [":MAMCAQE=:"]);
        assert_eq!(all(&h, "client-cert-chain"), [":MAMCAQI=:"]);
        // Several intermediates form a list; none means no Client-Cert-Chain at all.
        let mut c = cert();
        c.chain
            .push(CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x03]));
        let mut h = inbound();
        apply_forward(&mut h, &on, &c, peer, None);
        assert_eq!(all(&h, "client-cert-chain"), [":MAMCAQI=:, :MAMCAQM=:"]);
        c.chain.truncate(1);
        let mut h = inbound();
        apply_forward(&mut h, &on, &c, peer, None);
        assert_eq!(all(&h, "client-cert"), [":MAMCAQE=:"]);
        assert!(!h.contains_key("client-cert-chain"));
        // Trailers never carry them upstream.
        for name in ["client-cert", "client-cert-chain", "Client_Cert"] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_dropped_trailer(&name, &on), "{name}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    fn all(m: &HeaderMap, name: &str) -> Vec<String> {
        m.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect()
    }

    const DEFAULT_ELEMENT: &str =
        "Hash=3fa2b1c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80;\
        Subject=\"CN=alice,OU=payments,O=acme\";\
        URI=spiffe://dev.local/ns/default/sa/alice;URI=https://alice.example/id;\
        DNS=alice.svc;DNS=alice.example";

    #[test]
    fn xfcc_default_fields() {
        let fields = [
            XfccField::Hash,
            XfccField::Subject,
            XfccField::Uri,
            XfccField::Dns,
        ];
        assert_eq!(xfcc_element(&cert(), &fields), DEFAULT_ELEMENT);
        // The order of `fields` does not change the order of keys.
        let reversed = [
            XfccField::Dns,
            XfccField::Uri,
            XfccField::Subject,
            XfccField::Hash,
        ];
        assert_eq!(xfcc_element(&cert(), &reversed), DEFAULT_ELEMENT);
    }

    #[test]
    fn xfcc_field_selection() {
        let c = cert();
        let leaf = "-----BEGIN%20CERTIFICATE-----%0AMAMCAQE%3D%0A-----END%20CERTIFICATE-----%0A";
        let inter = "-----BEGIN%20CERTIFICATE-----%0AMAMCAQI%3D%0A-----END%20CERTIFICATE-----%0A";
        let cases: &[(&[XfccField], String)] = &[
            (&[], String::new()),
            (&[XfccField::Hash], format!("Hash={FP}")),
            (
                &[XfccField::Subject],
                "Subject=\"CN=alice,OU=payments,O=acme\"".to_owned(),
            ),
            (
                &[XfccField::Dns],
                "DNS=alice.svc;DNS=alice.example".to_owned(),
            ),
            (&[XfccField::Cert], format!("Cert=\"{leaf}\"")),
            (&[XfccField::Chain], format!("Chain=\"{leaf}{inter}\"")),
            (
                &[
                    XfccField::Dns,
                    XfccField::Chain,
                    XfccField::Cert,
                    XfccField::Hash,
                    XfccField::Subject,
                    XfccField::Uri,
                ],
                format!(
                    "Hash={FP};Cert=\"{leaf}\";Chain=\"{leaf}{inter}\";\
                     Subject=\"CN=alice,OU=payments,O=acme\";\
                     URI=spiffe://dev.local/ns/default/sa/alice;URI=https://alice.example/id;\
                     DNS=alice.svc;DNS=alice.example"
                ),
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(&xfcc_element(&c, fields), want, "{fields:?}");
        }
    }

    #[test]
    fn xfcc_no_sans_and_empty_subject() {
        let mut c = cert();
        c.san_dns.clear();
        c.san_uri.clear();
        c.subject.clear();
        let fields = [
            XfccField::Hash,
            XfccField::Subject,
            XfccField::Uri,
            XfccField::Dns,
        ];
        assert_eq!(xfcc_element(&c, &fields), format!("Hash={FP};Subject=\"\""));
    }

    #[test]
    fn xfcc_quoting_and_escaping() {
        let mut c = cert();
        c.subject = r#"CN=Smith\, \"Bob\",O=acme"#.to_owned();
        c.san_uri = vec![
            "https://x.example/?a=b".to_owned(),
            "urn:a;b".to_owned(),
            "urn:a,b".to_owned(),
            "urn:a b".to_owned(),
            "urn:\"q\"".to_owned(),
            "urn:back\\slash".to_owned(),
            "urn:plain:ok/path".to_owned(),
            "urn:ctl\u{1}x".to_owned(),
            "urn:nl\nx".to_owned(),
        ];
        c.san_dns = vec![];
        let got = xfcc_element(&c, &[XfccField::Subject, XfccField::Uri]);
        let want = concat!(
            r#"Subject="CN=Smith\\, \\\"Bob\\\",O=acme";"#,
            r#"URI="https://x.example/?a=b";"#,
            r#"URI="urn:a;b";"#,
            r#"URI="urn:a,b";"#,
            r#"URI="urn:a b";"#,
            r#"URI="urn:\"q\"";"#,
            r#"URI="urn:back\\slash";"#,
            r#"URI=urn:plain:ok/path;"#,
            r#"URI=urn:ctl%01x;"#,
            r#"URI="urn:nl%0Ax""#,
        );
        assert_eq!(got, want);
        assert!(HeaderValue::from_str(&got).is_ok());
    }

    #[test]
    fn url_encode_keeps_only_unreserved() {
        assert_eq!(url_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(url_encode("+/= \n%"), "%2B%2F%3D%20%0A%25");
    }

    #[test]
    fn xfcc_modes() {
        let spoof = "Hash=deadbeef;Subject=\"CN=admin\"";
        let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let cases: &[(XfccMode, &[&str], Vec<String>)] = &[
            (XfccMode::SanitizeSet, &[], vec![DEFAULT_ELEMENT.to_owned()]),
            (
                XfccMode::SanitizeSet,
                &[spoof, spoof],
                vec![DEFAULT_ELEMENT.to_owned()],
            ),
            (XfccMode::Sanitize, &[], vec![]),
            (XfccMode::Sanitize, &[spoof, spoof], vec![]),
            (XfccMode::Append, &[], vec![DEFAULT_ELEMENT.to_owned()]),
            (
                XfccMode::Append,
                &["By=a;Hash=1"],
                vec![format!("By=a;Hash=1,{DEFAULT_ELEMENT}")],
            ),
            (
                XfccMode::Append,
                &["Hash=1", "Hash=2,Hash=3"],
                vec![format!("Hash=1,Hash=2,Hash=3,{DEFAULT_ELEMENT}")],
            ),
        ];
        for (mode, inbound, want) in cases {
            let mut h = HeaderMap::new();
            for v in inbound.iter() {
                h.append(
                    X_FORWARDED_CLIENT_CERT,
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            apply_forward(&mut h, &forward(*mode, true), &cert(), peer, None);
            assert_eq!(
                &all(&h, "x-forwarded-client-cert"),
                want,
                "{mode:?} {inbound:?}"
            );
        }
    }

    #[test]
    fn empty_fields_add_no_element() {
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut fwd = forward(XfccMode::SanitizeSet, true);
        fwd.xfcc_fields.clear();
        let mut h = map(&[("x-forwarded-client-cert", "Hash=1")]);
        apply_forward(&mut h, &fwd, &cert(), peer, None);
        assert!(h.get("x-forwarded-client-cert").is_none());
        fwd.xfcc = XfccMode::Append;
        let mut h = map(&[("x-forwarded-client-cert", "Hash=1")]);
        apply_forward(&mut h, &fwd, &cert(), peer, None);
        assert_eq!(all(&h, "x-forwarded-client-cert"), vec!["Hash=1"]);
    }

    #[test]
    fn append_skips_empty_inbound_lines() {
        let mut h = map(&[("x-forwarded-client-cert", "")]);
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        apply_forward(
            &mut h,
            &forward(XfccMode::Append, true),
            &cert(),
            peer,
            None,
        );
        assert_eq!(all(&h, "x-forwarded-client-cert"), vec![DEFAULT_ELEMENT]);
    }

    #[test]
    fn inbound_cert_headers_and_strip_headers_removed() {
        let h = map(&[
            ("client-cert", ":MIIB:"),
            ("client-cert-chain", ":MIIB:, :MIIC:"),
            ("x-internal-role", "admin"),
            ("x-internal-role", "root"),
            ("authorization", "Bearer t"),
            ("accept", "*/*"),
        ]);
        for mode in [XfccMode::SanitizeSet, XfccMode::Append, XfccMode::Sanitize] {
            let mut h = h.clone();
            apply_forward(
                &mut h,
                &forward(mode, true),
                &cert(),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                None,
            );
            assert!(h.get("client-cert").is_none(), "{mode:?}");
            assert!(h.get("client-cert-chain").is_none(), "{mode:?}");
            assert!(h.get("x-internal-role").is_none(), "{mode:?}");
            assert_eq!(all(&h, "authorization"), vec!["Bearer t"]);
            assert_eq!(all(&h, "accept"), vec!["*/*"]);
        }
    }

    #[test]
    fn the_httpoxy_proxy_header_is_removed_in_every_mode() {
        for mode in [XfccMode::SanitizeSet, XfccMode::Append, XfccMode::Sanitize] {
            let mut h = map(&[("proxy", "http://evil.example:3128"), ("x-keep", "1")]);
            let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
            apply_forward(&mut h, &forward(mode, true), &cert(), v4, None);
            assert!(!h.contains_key("proxy"), "{mode:?}");
            assert_eq!(all(&h, "x-keep"), ["1"]);
        }
        let f = forward(XfccMode::SanitizeSet, true);
        assert!(is_dropped_trailer(&HeaderName::from_static("proxy"), &f));
    }

    #[test]
    fn x_forwarded_headers() {
        let inbound = [
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
        ];
        let host = HeaderValue::from_static("Orders.Internal:8443");
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        type Case<'a> = (
            bool,
            IpAddr,
            Option<&'a HeaderValue>,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (
                true,
                v4,
                Some(&host),
                &["192.0.2.7"],
                &["https"],
                &["Orders.Internal:8443"],
            ),
            (
                true,
                mapped,
                Some(&host),
                &["192.0.2.7"],
                &["https"],
                &["Orders.Internal:8443"],
            ),
            (true, v6, None, &["::1"], &["https"], &[]),
            (false, v4, Some(&host), &[], &[], &[]),
        ];
        for (on, peer, host, xff, xfp, xfh) in cases {
            for with_inbound in [false, true] {
                let mut h = if with_inbound {
                    map(&inbound)
                } else {
                    HeaderMap::new()
                };
                apply_forward(
                    &mut h,
                    &forward(XfccMode::SanitizeSet, *on),
                    &cert(),
                    *peer,
                    *host,
                );
                assert_eq!(all(&h, "x-forwarded-for"), *xff, "{on} {peer}");
                assert_eq!(all(&h, "x-forwarded-proto"), *xfp, "{on} {peer}");
                assert_eq!(all(&h, "x-forwarded-host"), *xfh, "{on} {peer}");
            }
        }
    }

    #[test]
    fn strip_hop_by_hop_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (&[("accept", "*/*")], &[("accept", "*/*")]),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-authorization", "Basic eA=="),
                    ("trailer", "grpc-status"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "websocket"),
                    ("accept", "*/*"),
                ],
                &[("trailer", "grpc-status"), ("accept", "*/*")],
            ),
            // Headers named in Connection are removed (comma lists, several lines, any case).
            (
                &[("connection", "foo"), ("foo", "1"), ("bar", "2")],
                &[("bar", "2")],
            ),
            (
                &[
                    ("connection", "Foo, BAR ,,"),
                    ("connection", "baz"),
                    ("foo", "1"),
                    ("bar", "2"),
                    ("baz", "3"),
                    ("qux", "4"),
                ],
                &[("qux", "4")],
            ),
            (
                &[
                    ("connection", "x-forwarded-client-cert"),
                    ("x-forwarded-client-cert", "x"),
                ],
                &[],
            ),
            // The usual tokens name headers too when the head carries them.
            (
                &[
                    ("connection", "close, Keep-Alive"),
                    ("close", "1"),
                    ("keep-alive", "timeout=5"),
                    ("accept", "*/*"),
                ],
                &[("accept", "*/*")],
            ),
            // Invalid header names in Connection are ignored.
            (&[("connection", "not a name, foo"), ("foo", "1")], &[]),
            // Host and Content-Length cannot be nominated away.
            (
                &[
                    ("connection", "host, content-length"),
                    ("host", "a"),
                    ("content-length", "3"),
                ],
                &[("host", "a"), ("content-length", "3")],
            ),
            // te: only `trailers` survives.
            (&[("te", "trailers")], &[("te", "trailers")]),
            (&[("te", "Trailers")], &[("te", "trailers")]),
            (&[("te", "trailers, deflate;q=0.5")], &[("te", "trailers")]),
            (&[("te", "gzip"), ("te", "trailers")], &[("te", "trailers")]),
            (&[("te", "gzip")], &[]),
            (&[("te", "trailersx")], &[]),
            (
                &[("connection", "te"), ("te", "trailers")],
                &[("te", "trailers")],
            ),
        ];
        for (input, want) in cases {
            let mut h = map(input);
            strip_hop_by_hop(&mut h);
            assert_eq!(h, map(want), "{input:?}");
        }
    }

    #[test]
    fn upgrade_detection() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            (
                "GET",
                &[("connection", "upgrade"), ("upgrade", "websocket")],
                true,
            ),
            (
                "GET",
                &[
                    ("connection", "keep-alive, Upgrade"),
                    ("upgrade", "WebSocket"),
                ],
                true,
            ),
            // Only WebSocket is relayed: h2c (request smuggling past policy) and anything
            // else are not upgrades as far as certguard is concerned.
            (
                "GET",
                &[
                    ("connection", "keep-alive"),
                    ("connection", "UPGRADE, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
                false,
            ),
            (
                "GET",
                &[("connection", "upgrade"), ("upgrade", "websocket, h2c")],
                false,
            ),
            (
                "GET",
                &[
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                    ("upgrade", "h2c"),
                ],
                false,
            ),
            (
                "GET",
                &[("connection", "upgrade"), ("upgrade", "foo/1")],
                false,
            ),
            // WebSocket opens with GET only (RFC 6455 4.1).
            (
                "POST",
                &[("connection", "upgrade"), ("upgrade", "websocket")],
                false,
            ),
            ("GET", &[("upgrade", "websocket")], false),
            ("GET", &[("connection", "upgrade")], false),
            (
                "GET",
                &[("connection", "upgraded"), ("upgrade", "websocket")],
                false,
            ),
            ("GET", &[], false),
        ];
        for (method, input, want) in cases {
            let h = map(input);
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                websocket_upgrade(&method, &h)
                    .as_ref()
                    .map(|v| v.to_str().expect("ascii")),
                want.then_some("websocket"),
                "{method} {input:?}"
            );
        }
        assert!(is_websocket_switch(&map(&[("upgrade", "websocket")])));
        assert!(!is_websocket_switch(&map(&[("upgrade", "h2c")])));
        assert!(!is_websocket_switch(&map(&[])));
    }

    #[test]
    fn h2c_upgrade_headers_are_not_relayed() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, map(&[("accept", "*/*")]));
    }

    #[test]
    fn trailers_lose_what_a_head_would_lose() {
        let f = forward(XfccMode::Append, true);
        let mut t = map(&[
            ("x-forwarded-client-cert", "Hash=evil"),
            ("X_Forwarded_Client_Cert", "Hash=evil"),
            ("client-cert", ":AAAA:"),
            ("client-cert-chain", ":AAAA:"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("x-internal-role", "admin"),
            ("x_internal_role", "admin"),
            ("forwarded", "for=6.6.6.6"),
            ("x-ssl-client-cert", "x"),
            ("host", "evil"),
            ("content-length", "1"),
            ("transfer-encoding", "chunked"),
            ("trailer", "x"),
            ("connection", "close"),
            ("te", "trailers"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
        ]);
        clean_trailers(&mut t, &f);
        assert_eq!(t, map(&[("grpc-status", "0"), ("x-checksum", "abc")]));
    }

    #[test]
    fn trailer_declaration_keeps_only_relayed_fields() {
        let f = forward(XfccMode::SanitizeSet, true);
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["grpc-status"], Some("grpc-status")),
            (
                &["grpc-status, grpc-message"],
                Some("grpc-status, grpc-message"),
            ),
            (
                &["x-forwarded-client-cert, grpc-status", "client-cert"],
                Some("grpc-status"),
            ),
            (&["X-Forwarded-For", "x-internal-role"], None),
            (&["not a name, x-real-ip"], None),
        ];
        for (lines, want) in cases {
            let mut h = HeaderMap::new();
            for l in *lines {
                h.append(TRAILER, HeaderValue::from_str(l).unwrap());
            }
            clean_trailer_declaration(&mut h, &f);
            assert_eq!(
                h.get_all(TRAILER)
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect::<Vec<_>>(),
                want.iter().copied().collect::<Vec<_>>(),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn other_proxies_identity_headers_are_removed_unless_disabled() {
        let inbound = map(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-forwarded-prefix", "/admin"),
            ("x-ssl-client-s-dn", "CN=admin"),
            ("ssl_client_verify", "SUCCESS"),
            ("x-client-cert-dn", "CN=admin"),
            ("x-amzn-mtls-clientcert", "x"),
            ("x-clientside", "kept"),
            ("x-forwarded", "kept: not a family member"),
            ("x-forwarded-client-cert", "By=upstream-proxy"),
        ]);
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut f = forward(XfccMode::Append, false);
        let mut h = inbound.clone();
        apply_forward(&mut h, &f, &cert(), peer, None);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-clientside", "x-forwarded", "x-forwarded-client-cert"]
        );
        assert!(all(&h, "x-forwarded-client-cert")[0].starts_with("By=upstream-proxy,"));
        f.strip_identity_headers = false;
        let mut h = inbound.clone();
        apply_forward(&mut h, &f, &cert(), peer, None);
        assert_eq!(h.len(), inbound.len());
    }

    #[test]
    fn underscore_spellings_of_protected_headers_are_removed() {
        let mut f = forward(XfccMode::Append, true);
        f.strip_headers = vec![HeaderName::from_static("x-internal-role")];
        let mut h = map(&[
            ("x_forwarded_client_cert", "Hash=evil"),
            ("X_Forwarded_For", "10.0.0.1"),
            ("client_cert", ":MIIB:"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("x_internal_role", "admin"),
            ("x_request_id", "kept"),
            ("my_header", "kept"),
        ]);
        apply_forward(&mut h, &f, &cert(), IpAddr::V4(Ipv4Addr::LOCALHOST), None);
        for gone in [
            "x_forwarded_client_cert",
            "x_forwarded_for",
            "client_cert",
            "transfer_encoding",
            "content_length",
            "x_internal_role",
        ] {
            assert!(h.get(gone).is_none(), "{gone} must be removed");
        }
        assert_eq!(all(&h, "x_request_id"), vec!["kept"]);
        assert_eq!(all(&h, "my_header"), vec!["kept"]);
        // `append` keeps only a genuine inbound XFCC, never the underscore spelling.
        assert_eq!(all(&h, "x-forwarded-client-cert").len(), 1);
        assert!(!all(&h, "x-forwarded-client-cert")[0].contains("evil"));
    }
}

#[cfg(test)]
mod proptests {
    //! XFCC round trip: an element built by [`xfcc_element`] and read back with Envoy's
    //! documented rules gives every value back.
    //!
    //! Envoy's grammar (configuration/http/http_conn_man/headers, x-forwarded-client-cert):
    //! the header is a `,`-separated list of elements; an element is a `;`-separated list of
    //! `key=value` pairs; keys are case-insensitive; a value containing `,`, `;` or `=` is
    //! double-quoted, and inside quotes a `"` is written `\"` (we also read `\\` as `\`, as
    //! SPEC 4.1 writes it). `Cert` and `Chain` are URL-encoded PEM.

    use super::*;
    use proptest::prelude::*;
    use rustls_pki_types::CertificateDer;

    /// Split at `sep` outside double quotes (a backslash escapes the next character).
    fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
        let mut parts = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, c) in s.char_indices() {
            if escaped {
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
        }
        parts.push(&s[start..]);
        parts
    }

    /// One value: unquoted as is, or the inside of `"..."` with `\x` read as `x`.
    fn unquote(v: &str) -> Result<String, String> {
        let Some(inner) = v.strip_prefix('"') else {
            if v.contains(['"', ',', ';', '=']) {
                return Err(format!("unquoted value with a special character: {v:?}"));
            }
            return Ok(v.to_owned());
        };
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quote: {v:?}"))?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next().ok_or("dangling backslash")?),
                '"' => return Err(format!("bare quote inside a quoted value: {v:?}")),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    /// The header's elements, each as (lower-case key, value) pairs in order.
    fn parse_xfcc(header: &str) -> Result<Vec<Vec<(String, String)>>, String> {
        split_unquoted(header, ',')
            .into_iter()
            .map(|element| {
                split_unquoted(element, ';')
                    .into_iter()
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').ok_or(format!("no `=` in {pair:?}"))?;
                        Ok((k.to_ascii_lowercase(), unquote(v)?))
                    })
                    .collect()
            })
            .collect()
    }

    fn url_decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        out
    }

    /// Text a certificate field may hold: anything printable, with the XFCC delimiters,
    /// quotes, backslashes and whitespace over-represented.
    fn field() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(&[",", ";", "=", "\"", "\\", " ", "\t", "%", "/", ":", "+", "é", "\u{a0}"][..])
                    .prop_map(str::to_owned),
                3 => "[a-zA-Z0-9.-]{1,6}",
                1 => "\\PC{1,3}",
            ],
            0..8,
        )
        .prop_map(|v| v.concat())
    }

    fn cert() -> impl Strategy<Value = CertInfo> {
        (
            field(),
            prop::collection::vec(field(), 0..3),
            prop::collection::vec(field(), 0..3),
            any::<[u8; 32]>(),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 1..80), 1..3),
        )
            .prop_map(|(subject, san_uri, san_dns, hash, chain)| CertInfo {
                subject,
                issuer: String::new(),
                cn: vec![],
                o: vec![],
                ou: vec![],
                san_dns,
                san_uri,
                san_email: vec![],
                san_ip: vec![],
                spiffe_id: None,
                fingerprint: crate::certs::hex_lower(&hash),
                spki: String::new(),
                serial: String::new(),
                not_before: 0,
                not_after: 0,
                chain_not_after: vec![0],
                chain: chain.into_iter().map(CertificateDer::from).collect(),
            })
    }

    const ALL: &[XfccField] = &[
        XfccField::Hash,
        XfccField::Cert,
        XfccField::Chain,
        XfccField::Subject,
        XfccField::Uri,
        XfccField::Dns,
    ];

    /// The value certguard's escaping leaves for control characters: `%XX`.
    fn controls_escaped(v: &str) -> String {
        let mut out = String::new();
        escape_controls(v, &mut out);
        out
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]

        /// Every value comes back: Hash, Cert and Chain (URL-decoded PEM), Subject, each URI
        /// and DNS SAN in order; the element is one valid header value, and appended after an
        /// inbound element it is still told apart from it.
        #[test]
        fn xfcc_round_trip(cert in cert(), fields in prop::sample::subsequence(ALL, 0..=ALL.len())) {
            let element = xfcc_element(&cert, &fields);
            prop_assert!(HeaderValue::from_str(&element).is_ok(), "{element:?}");
            // Empty when there is nothing to say (no fields, or only URI/DNS and no SANs).
            let pairs = if element.is_empty() {
                Vec::new()
            } else {
                let header = format!("By=\"spiffe://upstream,proxy\";Hash=00,{element}");
                match parse_xfcc(&header).map_err(TestCaseError::fail)?.as_slice() {
                    [_inbound, ours] => ours.clone(),
                    _ => return Err(TestCaseError::fail(format!("not two elements: {header}"))),
                }
            };
            let mut want: Vec<(String, String)> = Vec::new();
            let has = |f| fields.contains(&f);
            if has(XfccField::Hash) {
                want.push(("hash".into(), cert.fingerprint.clone()));
            }
            if has(XfccField::Cert) {
                want.push(("cert".into(), pem_certificate(&cert.chain[0])));
            }
            if has(XfccField::Chain) {
                want.push(("chain".into(), cert.chain.iter().map(|c| pem_certificate(c)).collect()));
            }
            if has(XfccField::Subject) {
                want.push(("subject".into(), controls_escaped(&cert.subject)));
            }
            if has(XfccField::Uri) {
                want.extend(cert.san_uri.iter().map(|u| ("uri".into(), controls_escaped(u))));
            }
            if has(XfccField::Dns) {
                want.extend(cert.san_dns.iter().map(|d| ("dns".into(), controls_escaped(d))));
            }
            let got: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| {
                    let v = if k == "cert" || k == "chain" {
                        String::from_utf8(url_decode(v)).unwrap_or_default()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            prop_assert_eq!(got, want, "{}", element);
        }

        /// Whatever a client sends in `append` mode: when certguard accepts it, an Envoy-grammar
        /// parser reads the client's elements apart and certguard's element, whole, last.
        #[test]
        fn an_accepted_inbound_xfcc_keeps_ours_whole_and_last(
            inbound in "[a-zA-Z=;,\"\\\\ ]{0,24}",
            cert in cert(),
        ) {
            let element = xfcc_element(&cert, ALL);
            let inbound = inbound.trim();
            prop_assume!(!element.is_empty() && !inbound.is_empty());
            if well_formed_xfcc(inbound.as_bytes()) {
                let header = format!("{inbound},{element}");
                let theirs = parse_xfcc(inbound).map_err(TestCaseError::fail)?;
                let ours = parse_xfcc(&element).map_err(TestCaseError::fail)?;
                let all = parse_xfcc(&header).map_err(TestCaseError::fail)?;
                prop_assert_eq!(all.len(), theirs.len() + 1, "{}", header);
                prop_assert_eq!(all.last(), ours.first(), "{}", header);
            }
        }
    }

    #[test]
    fn inbound_xfcc_must_be_well_formed_to_be_appended_to() {
        for ok in [
            "",
            "By=spiffe://a;Hash=00",
            r#"By="spiffe://a,b";Hash=00,Hash=11;URI=spiffe://b"#,
            r#"Subject="CN=a\"b,OU=c""#,
            r#"a=;b="""#,
        ] {
            assert!(well_formed_xfcc(ok.as_bytes()), "{ok}");
        }
        for bad in [
            r#"By=spiffe://x;Hash=ff;Subject=""#,
            r#"Subject="CN=a\"#,
            r#"a="x"y"#,
            r#"a=b"c"#,
            r#"a=b\c"#,
            "a=b=c",
            "Hash",
            "=x",
            "a=b,",
            "a=b;",
            ",a=b",
            "a=b,,c=d",
        ] {
            assert!(!well_formed_xfcc(bad.as_bytes()), "{bad}");
        }
        let mut f = super::tests::forward(XfccMode::Append, true);
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_CLIENT_CERT,
            HeaderValue::from_static("By=a;Hash=00"),
        );
        assert!(inbound_xfcc_ok(&h, &f));
        h.append(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=\"x"));
        assert!(!inbound_xfcc_ok(&h, &f), "a second line with an open quote");
        f.xfcc = XfccMode::SanitizeSet;
        assert!(inbound_xfcc_ok(&h, &f), "dropped anyway in sanitize_set");
    }
}
