//! Request-target normalization (SPEC 4 step 1): one canonical path for policy and upstream.
//!
//! Policy bypasses such as Envoy CVE-2019-9901 (unnormalized `..`), CVE-2021-29492 (`%2F`
//! treated as a separator by the upstream but not by the proxy) and Traefik CVE-2019-20894 all
//! come from the proxy and the upstream reading one target two ways. Here the target is
//! normalized once, and the normalized path is both what policy matches and what is forwarded;
//! whatever cannot be made unambiguous is refused with 400 instead of being guessed at.
//!
//! The normalized path contains only unreserved characters, sub-delims other than `;`, `:`,
//! `@`, `/` and
//! `%XX` escapes with uppercase hex digits (never of an unreserved byte, `/`, `\` or a control
//! byte). It starts with `/`, has no empty, `.` or `..` segments, and ends with `/` only if the
//! original did (or ended in a `.`/`..` segment).

/// A normalized origin-form target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Normalized path, always starting with `/` (or exactly `*` for `OPTIONS *`).
    pub path: String,
    /// The query string exactly as received, without the `?`.
    pub query: Option<String>,
}

impl Target {
    /// `path?query` as forwarded upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Why a target was refused with 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    /// `%2F` or `%5C` (either case): upstreams disagree on whether it separates segments.
    #[error("encoded slash or backslash")]
    EncodedSeparator,
    /// `%00`-`%1F` or `%7F`.
    #[error("encoded NUL or control byte")]
    EncodedControl,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidPercentEncoding,
    /// A `..` segment that would climb above `/`; refused rather than clamped.
    #[error("dot-segment above the root")]
    AboveRoot,
    /// Absolute-form, authority-form, `*` with a method other than OPTIONS, or anything else
    /// that does not start with `/`.
    #[error("target is not in origin form")]
    NotOriginForm,
    /// A raw backslash, control byte, space or `#` in the path.
    #[error("invalid character in path")]
    InvalidCharacter,
    /// A raw `;` anywhere in the path (`/admin;x/secret`, `/..;/admin`): servlet containers
    /// (Tomcat, Jetty, Spring) strip `;parameters` from each segment before routing and
    /// resolve dot segments afterwards, so the upstream would see a different path than
    /// policy did. An encoded `%3B` is not a separator and is kept as is.
    #[error("path parameters (`;`) in path")]
    PathParameters,
    /// A method that is not one or more of `A-Z`, `_` and `-` (nginx's rule). Methods are
    /// case-sensitive (RFC 9110 9.1) and policy compares them exactly, but many frameworks
    /// (Flask, Express, Rails) upper-case them before routing: `delete` would miss a route
    /// restricted to `DELETE`, match a broader one, and run the DELETE handler.
    #[error("method is not an upper-case token")]
    BadMethod,
    /// `CONNECT` in any form: certguard is a reverse proxy, not a tunnel, and an origin-form
    /// `CONNECT /x` would be judged on `/x` but reach the upstream as a tunnel request.
    #[error("CONNECT is not proxied")]
    Connect,
    /// A method-override header (`X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`, in any case, `_` for `-`) or a `_method` query parameter that names
    /// another method than the request's: Rails, Sinatra, Symfony, Laravel, ASP.NET and
    /// Express's `method-override` would run the named method, while policy judged the
    /// request's own (a `POST` allowed to alice would become her `DELETE`).
    #[error("method override names another method")]
    MethodOverride,
    /// A POST form (urlencoded, multipart, or without a media type) with a `Content-Encoding`:
    /// its `_method` field cannot be read on the way (Express's body parsers inflate it).
    #[error("form body with a Content-Encoding")]
    EncodedForm,
    /// A POST with several `Content-Type` fields: servers join them, and the joined value can
    /// read as another media type (multipart with the other field's boundary).
    #[error("several Content-Type fields")]
    DuplicateContentType,
}

/// Header names by which frameworks let a request stand for another method, compared with
/// `_` read as `-` (Rack sees `X_HTTP_Method_Override` as the dashed name).
const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Refuse ([`BadTarget::MethodOverride`]) a request whose method-override header or `_method`
/// query parameter names a method other than `method` (compared case-insensitively, as the
/// frameworks upper-case it). One that names the request's own method changes nothing and
/// passes. A `_method` field in a form body is found while the body streams
/// ([`super::form`]).
pub fn check_method_override(
    method: &http::Method,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Result<(), BadTarget> {
    let same = |v: &[u8]| {
        v.trim_ascii()
            .eq_ignore_ascii_case(method.as_str().as_bytes())
    };
    for (name, value) in headers {
        let n = name.as_str().as_bytes();
        let is_override = OVERRIDE_HEADERS.iter().any(|o| {
            o.len() == n.len()
                && o.bytes()
                    .zip(n.iter())
                    .all(|(o, &n)| o == n || (o == b'-' && n == b'_'))
        });
        if is_override && !same(value.as_bytes()) {
            return Err(BadTarget::MethodOverride);
        }
    }
    for pair in query.unwrap_or("").split(['&', ';']) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if is_method_parameter(&form_decode(key)) && !same(&form_decode(value)) {
            return Err(BadTarget::MethodOverride);
        }
    }
    Ok(())
}

/// Whether a decoded query key reads as `_method` to a framework: PHP (Symfony, Laravel) ends
/// a name at its first NUL byte (`_method%00x`), drops leading spaces and turns `.` and spaces
/// into `_` (`.method`, `%20_method`); Rack and Express's `qs` drop leading `[` and `]` and a
/// trailing `]` (`[_method]`, `]_method`); `_method[]` is the same field as an array.
pub(crate) fn is_method_parameter(key: &[u8]) -> bool {
    let key = key.split(|&b| b == 0).next().unwrap_or_default();
    let start = key
        .iter()
        .position(|&b| !(b.is_ascii_whitespace() || b == b'[' || b == b']'))
        .unwrap_or(key.len());
    let Some((&first, rest)) = key[start..].split_first() else {
        return false;
    };
    matches!(first, b'_' | b'.')
        && rest.len() >= 6
        && rest[..6].eq_ignore_ascii_case(b"method")
        && matches!(rest.get(6), None | Some(b'[' | b']'))
}

/// `application/x-www-form-urlencoded` decoding of one query key or value: `+` is a space,
/// `%XX` a byte; a malformed escape stays as it is.
pub(crate) fn form_decode(s: impl AsRef<[u8]>) -> Vec<u8> {
    let b = s.as_ref();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|&c| hex_value(c)),
                b.get(i + 2).and_then(|&c| hex_value(c)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Whether `method` may be judged and forwarded: one or more of `A-Z`, `_`, `-`, and not
/// `CONNECT`.
pub fn check_method(method: &http::Method) -> Result<(), BadTarget> {
    let token = method.as_str();
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
    {
        return Err(BadTarget::BadMethod);
    }
    if *method == http::Method::CONNECT {
        return Err(BadTarget::Connect);
    }
    Ok(())
}

/// Normalize the request target of `method` (`uri` as hyper parsed it).
///
/// Only origin-form (`/path?query`) is accepted, plus `*` for `OPTIONS`. A `uri` that carries
/// a scheme or an authority is treated as absolute-form (or authority-form, as used by
/// `CONNECT`) and refused with [`BadTarget::NotOriginForm`]. hyper gives HTTP/2 requests a
/// `Uri` with scheme and authority taken from the pseudo-headers, so for HTTP/2 the caller
/// must pass a `Uri` built from the `:path` (path-and-query) alone.
///
/// The method is checked first ([`check_method`]): anything but an upper-case token, and
/// `CONNECT`, is refused.
///
/// Steps, in this order: percent-decode unreserved characters (so `%2e%2e` is `..`) and
/// uppercase the hex digits of every other escape; percent-encode raw bytes that are not
/// allowed in a path segment (`"`, `{`, `|`, non-ASCII, ...); merge repeated `/`; remove dot
/// segments (RFC 3986 5.2.4), refusing a `..` above the root. The query string is kept
/// byte-for-byte (not decoded, not validated beyond what the `Uri` parser did).
pub fn normalize(method: &http::Method, uri: &http::Uri) -> Result<Target, BadTarget> {
    check_method(method)?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(BadTarget::NotOriginForm);
    }
    let raw_path = uri.path();
    let query = uri.query().map(str::to_owned);
    if raw_path == "*" {
        return if method == http::Method::OPTIONS && query.is_none() {
            Ok(Target {
                path: "*".to_owned(),
                query: None,
            })
        } else {
            Err(BadTarget::NotOriginForm)
        };
    }
    if raw_path.is_empty() {
        return Ok(Target {
            path: "/".to_owned(),
            query,
        });
    }
    if !raw_path.starts_with('/') {
        return Err(BadTarget::NotOriginForm);
    }
    let decoded = decode_path(raw_path.as_bytes())?;
    // The usual path has no `.`, `..` or empty segment (but perhaps a trailing `/`), and
    // removing dot segments would rebuild it byte for byte.
    let path = if decoded.contains("//")
        || decoded
            .split('/')
            .any(|segment| segment == "." || segment == "..")
    {
        remove_dot_segments(&decoded)?
    } else {
        decoded
    };
    Ok(Target { path, query })
}

/// RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Allowed raw in the normalized path: unreserved, sub-delims, ":", "@" and "/" (a raw `;`
/// is refused before this is consulted).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(UPPER_HEX[usize::from(b >> 4)]));
    out.push(char::from(UPPER_HEX[usize::from(b & 0x0f)]));
}

/// Percent-decoding pass: the output is ASCII, with canonical escapes only.
fn decode_path(raw: &[u8]) -> Result<String, BadTarget> {
    // The usual path: every byte allowed raw (no escape, no `;`), so it is its own decoding.
    if raw.iter().all(|&b| b != b';' && is_path_char(b)) {
        if let Ok(path) = std::str::from_utf8(raw) {
            return Ok(path.to_owned());
        }
    }
    decode_path_bytewise(raw)
}

/// [`decode_path`] byte by byte.
fn decode_path_bytewise(raw: &[u8]) -> Result<String, BadTarget> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(BadTarget::InvalidPercentEncoding);
            };
            let byte = (hi << 4) | lo;
            match byte {
                b'/' | b'\\' => return Err(BadTarget::EncodedSeparator),
                0x00..=0x1f | 0x7f => return Err(BadTarget::EncodedControl),
                _ if is_unreserved(byte) => out.push(char::from(byte)),
                _ => push_escape(&mut out, byte),
            }
            i += 3;
            continue;
        }
        match b {
            // Some upstreams (IIS, some Windows file servers) treat `\` as `/`.
            b'\\' | b' ' | b'#' | 0x00..=0x1f | 0x7f => return Err(BadTarget::InvalidCharacter),
            // `;params` are stripped by servlet containers before routing (see PathParameters).
            b';' => return Err(BadTarget::PathParameters),
            _ if is_path_char(b) => out.push(char::from(b)),
            // `"`, `{`, `}`, `[`, `]`, `^`, `|`, `<`, `>`, '`' and non-ASCII bytes: one
            // canonical (escaped) spelling, equivalent for any RFC 3986 upstream.
            _ => push_escape(&mut out, b),
        }
        i += 1;
    }
    Ok(out)
}

/// Merge repeated `/` and resolve `.`/`..`; `path` starts with `/`.
fn remove_dot_segments(path: &str) -> Result<String, BadTarget> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first element is the empty string before the leading `/`.
    for segment in path.split('/').skip(1) {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                if stack.pop().is_none() {
                    return Err(BadTarget::AboveRoot);
                }
                trailing_slash = true;
            }
            _ => {
                stack.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Uri};

    fn norm(method: Method, target: &str) -> Result<String, BadTarget> {
        let uri: Uri = target.parse().expect("test target parses as a Uri");
        normalize(&method, &uri).map(|t| t.path_and_query())
    }

    #[test]
    fn method_overrides_that_name_another_method_are_refused() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let check = |method: Method, h: &[(&str, &str)], q: Option<&str>| {
            check_method_override(&method, &headers(h), q)
        };
        let refused = Err(BadTarget::MethodOverride);
        // Headers, every spelling a framework reads.
        for name in [
            "X-HTTP-Method-Override",
            "x-http-method-override",
            "X_HTTP_Method_Override",
            "X-HTTP-Method",
            "x_http_method",
            "X-Method-Override",
            "x_method-override",
        ] {
            assert_eq!(
                check(Method::POST, &[(name, "DELETE")], None),
                refused,
                "{name}"
            );
            assert_eq!(
                check(Method::POST, &[(name, "delete")], None),
                refused,
                "{name}"
            );
            assert_eq!(
                check(Method::GET, &[(name, "PUT")], None),
                refused,
                "{name}"
            );
            // Naming the request's own method changes nothing.
            assert_eq!(
                check(Method::POST, &[(name, "POST")], None),
                Ok(()),
                "{name}"
            );
            assert_eq!(
                check(Method::POST, &[(name, " post ")], None),
                Ok(()),
                "{name}"
            );
        }
        // A second, differing value behind an agreeing one.
        assert_eq!(
            check(
                Method::POST,
                &[
                    ("x-http-method-override", "POST"),
                    ("x-http-method-override", "DELETE")
                ],
                None
            ),
            refused
        );
        // Other headers that merely look alike are not overrides.
        for name in [
            "x-http-method-overrides",
            "x-http-methods",
            "http-method-override",
        ] {
            assert_eq!(
                check(Method::POST, &[(name, "DELETE")], None),
                Ok(()),
                "{name}"
            );
        }
        // Query parameters, as Symfony/Laravel (PHP) and Rack decode them.
        for q in [
            "_method=DELETE",
            "_method%00anything=DELETE",
            "[_method]=DELETE",
            "]_method=DELETE",
            "_method]=DELETE",
            "[]_method=DELETE",
            "%5B_method%5D=DELETE",
            "a=1&_method=delete",
            "_METHOD=PUT",
            "%5Fmethod=DELETE",
            "%5fmethod=DELETE",
            "_%6Dethod=DELETE",
            ".method=DELETE",
            "%20%20_method=DELETE",
            "_method[]=DELETE",
            "_method=%44ELETE",
            "x=1;_method=PATCH",
            "_method=",
            "_method",
        ] {
            assert_eq!(check(Method::POST, &[], Some(q)), refused, "{q}");
        }
        for q in [
            "_method=POST",
            "_method=post",
            "_methods=DELETE",
            "+method=DELETE",
            "[method=DELETE",
            "my_method=DELETE",
            "method=DELETE",
            "x=_method=DELETE",
            "",
        ] {
            assert_eq!(check(Method::POST, &[], Some(q)), Ok(()), "{q}");
        }
        assert_eq!(check(Method::POST, &[], None), Ok(()));
    }

    #[test]
    fn table() {
        use BadTarget::*;
        let ok = |s: &str| -> Result<String, BadTarget> { Ok(s.to_owned()) };
        let cases: &[(&str, Result<String, BadTarget>)] = &[
            // Plain and trivially normal.
            ("/", ok("/")),
            ("/a", ok("/a")),
            ("/a/", ok("/a/")),
            ("/a/b/c", ok("/a/b/c")),
            ("/orders/123", ok("/orders/123")),
            // Dot segments.
            ("/status/../admin", ok("/admin")),
            ("/a/./b//c", ok("/a/b/c")),
            ("/a/b/..", ok("/a/")),
            ("/a/b/.", ok("/a/b/")),
            ("/a/b/../", ok("/a/")),
            ("/a/..", ok("/")),
            ("/.", ok("/")),
            ("/./", ok("/")),
            ("/a/b/../../c", ok("/c")),
            ("/a/b/../..", ok("/")),
            ("/..", Err(AboveRoot)),
            ("/../admin", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/b/../../..", Err(AboveRoot)),
            ("/a/../../b", Err(AboveRoot)),
            ("//..", Err(AboveRoot)),
            ("/...", ok("/...")),
            ("/a/.../b", ok("/a/.../b")),
            ("/.hidden", ok("/.hidden")),
            ("/a..b/c.", ok("/a..b/c.")),
            // Encoded dots are decoded before dot-segment removal.
            ("/%2e%2e/admin", Err(AboveRoot)),
            ("/a/%2e%2e/b", ok("/b")),
            ("/a/%2E%2E/b", ok("/b")),
            ("/a/.%2e/b", ok("/b")),
            ("/.%2e/", Err(AboveRoot)),
            ("/a/%2e/b", ok("/a/b")),
            ("/a/%2e", ok("/a/")),
            ("/a%2eb", ok("/a.b")),
            // Repeated slashes.
            ("//admin", ok("/admin")),
            ("///a///b///", ok("/a/b/")),
            ("/a//", ok("/a/")),
            ("//", ok("/")),
            // Encoded separators.
            ("/admin%2Fsecret", Err(EncodedSeparator)),
            ("/admin%2fsecret", Err(EncodedSeparator)),
            ("/a%5Cb", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/%2e%2e%2fadmin", Err(EncodedSeparator)),
            // Encoded controls.
            ("/%00", Err(EncodedControl)),
            ("/a%0Ab", Err(EncodedControl)),
            ("/a%0d%0aX-Injected:%201", Err(EncodedControl)),
            ("/a%1f", Err(EncodedControl)),
            ("/a%7F", Err(EncodedControl)),
            ("/a%7f", Err(EncodedControl)),
            // Invalid percent-encoding.
            ("/%zz", Err(InvalidPercentEncoding)),
            ("/%4", Err(InvalidPercentEncoding)),
            ("/%", Err(InvalidPercentEncoding)),
            ("/a%g0", Err(InvalidPercentEncoding)),
            ("/a%%41", Err(InvalidPercentEncoding)),
            // Unreserved escapes are decoded, others kept with uppercase hex.
            ("/%41%42", ok("/AB")),
            ("/%7e%5F%2D%30", ok("/~_-0")),
            ("/a%20b", ok("/a%20b")),
            ("/a%3fb", ok("/a%3Fb")),
            ("/a%23b", ok("/a%23b")),
            ("/a%25b", ok("/a%25b")),
            ("/a%252e%252e", ok("/a%252e%252e")),
            ("/caf%c3%a9", ok("/caf%C3%A9")),
            ("/a%3Bb", ok("/a%3Bb")),
            // Raw characters outside pchar get one canonical escaped spelling.
            ("/a{b}", ok("/a%7Bb%7D")),
            ("/a\"b", ok("/a%22b")),
            ("/a|b", ok("/a%7Cb")),
            ("/a[b]", ok("/a%5Bb%5D")),
            ("/a^b", ok("/a%5Eb")),
            ("/café", ok("/caf%C3%A9")),
            ("/a:b@c!$&'()*+,=d", ok("/a:b@c!$&'()*+,=d")),
            // Raw backslash.
            ("/a\\b", Err(InvalidCharacter)),
            ("/..\\admin", Err(InvalidCharacter)),
            // Path parameters (`;`): servlet containers strip them, so refuse any raw `;`.
            ("/public/..;/admin", Err(PathParameters)),
            ("/..;/admin", Err(PathParameters)),
            ("/public/.;x/admin", Err(PathParameters)),
            ("/public/%2e%2e;/admin", Err(PathParameters)),
            ("/admin;x/secret", Err(PathParameters)),
            ("/a;b", Err(PathParameters)),
            ("/a;b/c", Err(PathParameters)),
            ("/a/..x;/b", Err(PathParameters)),
            ("/a;", Err(PathParameters)),
            // Encoded `;` is not a separator and is kept; `;` in the query is untouched.
            ("/a%3Bb", ok("/a%3Bb")),
            ("/a%3bb", ok("/a%3Bb")),
            ("/a?x=1;2", ok("/a?x=1;2")),
            // Query string kept verbatim.
            ("/a?x=../..", ok("/a?x=../..")),
            ("/a/../b?%2F=%00&y=%zz", ok("/b?%2F=%00&y=%zz")),
            ("/a?", ok("/a?")),
            ("/a?b?c", ok("/a?b?c")),
            ("/%41?%41", ok("/A?%41")),
            // Non-origin forms.
            ("http://example.com/x", Err(NotOriginForm)),
            ("https://example.com/", Err(NotOriginForm)),
            ("example.com:443", Err(NotOriginForm)),
            ("*", Err(NotOriginForm)),
        ];
        assert!(cases.len() >= 50);
        for (target, want) in cases {
            assert_eq!(&norm(Method::GET, target), want, "target {target:?}");
        }
    }

    #[test]
    fn options_star() {
        assert_eq!(norm(Method::OPTIONS, "*"), Ok("*".to_owned()));
        assert_eq!(norm(Method::GET, "*"), Err(BadTarget::NotOriginForm));
        assert_eq!(norm(Method::OPTIONS, "/a/../b"), Ok("/b".to_owned()));
        assert_eq!(
            norm(Method::OPTIONS, "http://h/*"),
            Err(BadTarget::NotOriginForm)
        );
    }

    #[test]
    fn connect_is_refused_in_every_form() {
        for target in ["example.com:443", "/x", "*"] {
            assert_eq!(
                norm(Method::CONNECT, target),
                Err(BadTarget::Connect),
                "{target}"
            );
        }
    }

    #[test]
    fn methods_must_be_upper_case_tokens() {
        for ok in [
            "GET", "HEAD", "DELETE", "PATCH", "PROPFIND", "M-SEARCH", "X_CUSTOM",
        ] {
            let m = Method::from_bytes(ok.as_bytes()).expect("token");
            assert_eq!(check_method(&m), Ok(()), "{ok}");
            assert!(norm(m, "/a").is_ok(), "{ok}");
        }
        for bad in [
            "delete", "Delete", "post", "gEt", "GET2", "G.T", "PUT!", "connect",
        ] {
            let m = Method::from_bytes(bad.as_bytes()).expect("token");
            assert_eq!(check_method(&m), Err(BadTarget::BadMethod), "{bad}");
            assert_eq!(norm(m, "/a"), Err(BadTarget::BadMethod), "{bad}");
        }
    }

    #[test]
    fn http2_style_uri_with_authority_is_refused() {
        let uri = Uri::builder()
            .scheme("https")
            .authority("h.example")
            .path_and_query("/a")
            .build()
            .expect("uri");
        assert_eq!(normalize(&Method::GET, &uri), Err(BadTarget::NotOriginForm));
    }

    #[test]
    fn query_split() {
        let uri: Uri = "/a/./b?q=1&r=%2F".parse().expect("uri");
        let t = normalize(&Method::GET, &uri).expect("ok");
        assert_eq!(t.path, "/a/b");
        assert_eq!(t.query.as_deref(), Some("q=1&r=%2F"));
    }

    #[test]
    fn output_is_a_fixed_point() {
        for target in ["/a/./b//c/", "/%41/%2e/x%20y", "/a{b}/../c", "/caf%c3%a9/"] {
            let once = norm(Method::GET, target).expect("ok");
            assert_eq!(norm(Method::GET, &once), Ok(once.clone()), "{target}");
        }
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of [`normalize`] over generated targets built from the pieces that matter
    //! (dot segments, encoded dots and slashes, repeated `/`, escapes, `;`, non-ASCII, ...).

    use super::*;
    use http::{Method, Uri};
    use proptest::prelude::*;

    /// Fragments an attacker would combine.
    const PIECES: &[&str] = &[
        "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "\\", "%00",
        "%0a", "%7f", "%41", "%7e", "%7E", "%20", "%25", "%252e", "%3b", "%3B", ";", "%c3%a9", "é",
        "{", "}", "|", "^", "`", "[", "]", "\"", "%", "%g", "%4", "a", "b", "admin", "~", "-", "_",
        ":", "@", "!", "$", "&", "'", "(", ")", "*", "+", ",", "=", "?", "?x=../..", "#", " ",
    ];

    /// Segments that normalize (most of the time), so that accepted targets are common.
    const SEGMENTS: &[&str] = &[
        "a",
        "b",
        "admin",
        "",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2E.",
        "...",
        "~x",
        "%41",
        "%7e",
        "caf%c3%a9",
        "é",
        "x{y}",
        "a%20b",
        "%25",
        "%3B",
        ":@!$&'()*+,=",
    ];

    /// `/` followed by segments joined with `/`; some segments are an attacker's fragment
    /// (`%2F`, `;`, `\`, a bad escape, ...) or random characters instead.
    fn target() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                8 => prop::sample::select(SEGMENTS).prop_map(str::to_owned),
                2 => prop::sample::select(PIECES).prop_map(str::to_owned),
                1 => "[a-zA-Z0-9%./;~-]{1,4}",
            ],
            0..10,
        )
        .prop_map(|segments| format!("/{}", segments.join("/")))
    }

    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }

    /// Percent-decode one segment as an RFC 3986 upstream does (an invalid escape stays as is).
    fn decode(segment: &str) -> Vec<u8> {
        let s = segment.as_bytes();
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' && i + 2 < s.len() {
                if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
            }
            out.push(s[i]);
            i += 1;
        }
        out
    }

    /// What a path means to an upstream that splits on `/`, decodes each segment, merges
    /// empty segments and resolves `.`/`..` (decoded): its segments and whether it names a
    /// directory (trailing `/`). `None` if it climbs above the root.
    fn meaning(path: &str) -> Option<(Vec<Vec<u8>>, bool)> {
        let mut stack: Vec<Vec<u8>> = Vec::new();
        let mut dir = false;
        for segment in path.split('/').skip(1) {
            let d = decode(segment);
            match d.as_slice() {
                b"" | b"." => dir = true,
                b".." => {
                    stack.pop()?;
                    dir = true;
                }
                _ => {
                    stack.push(d);
                    dir = false;
                }
            }
        }
        let dir = dir || stack.is_empty();
        Some((stack, dir))
    }

    fn norm(target: &str) -> Option<Result<Target, BadTarget>> {
        let uri: Uri = target.parse().ok()?;
        Some(normalize(&Method::GET, &uri))
    }

    /// Method spellings a hostile client would try: real method names in any mix of case, and
    /// arbitrary tokens (every character RFC 9110 allows in a method).
    fn method_spelling() -> impl Strategy<Value = String> {
        const NAMES: &[&str] = &[
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
        ];
        prop_oneof![
            (prop::sample::select(NAMES), any::<u16>()).prop_map(|(name, flips)| {
                name.chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if flips & (1 << (i % 16)) != 0 {
                            c.to_ascii_lowercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            }),
            "[A-Za-z0-9_\\-!#$%&'*+.^`|~]{1,12}",
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]
        /// The shortcut for paths without escapes decodes exactly as the byte loop does.
        #[test]
        fn decode_path_shortcut_agrees_with_the_byte_loop(
            raw in prop::collection::vec(
                prop_oneof![
                    // Mostly bytes allowed raw (and `;`), so the shortcut is often taken.
                    12 => prop::sample::select(&b"/az09-._~!$&'()*+,=:@;"[..]),
                    1 => prop::sample::select(&b"%\\ #\"{}|^`<>[]\x7f\x00\xc3\xa9"[..]),
                    1 => any::<u8>(),
                ],
                0..24,
            )
        ) {
            prop_assert_eq!(super::decode_path(&raw), super::decode_path_bytewise(&raw));
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]

        /// A method is accepted only if a framework that upper-cases methods before routing
        /// (Flask, Express, Rails) sees the same method that policy judged; `CONNECT` is never
        /// accepted in any spelling; and `normalize` refuses whatever `check_method` refuses.
        #[test]
        fn accepted_methods_are_what_frameworks_route(spelling in method_spelling()) {
            let Ok(method) = Method::from_bytes(spelling.as_bytes()) else { return Ok(()) };
            let verdict = check_method(&method);
            let token = method.as_str();
            if verdict.is_ok() {
                prop_assert_eq!(token.to_ascii_uppercase(), token);
                prop_assert!(token.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-'));
            }
            if token.eq_ignore_ascii_case("CONNECT") {
                prop_assert!(verdict.is_err(), "{token} accepted");
            }
            if token.bytes().any(|b| b.is_ascii_lowercase()) {
                prop_assert_eq!(verdict.clone(), Err(BadTarget::BadMethod));
            }
            let uri: Uri = "/x".parse().unwrap();
            prop_assert_eq!(normalize(&method, &uri).is_ok(), verdict.is_ok());
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]

        /// Any string the `Uri` parser accepts, with any method, normalizes or is refused:
        /// never a panic.
        #[test]
        fn never_panics(raw in "\\PC{0,40}", method in "[A-Za-z]{1,8}") {
            if let (Ok(uri), Ok(m)) = (raw.parse::<Uri>(), Method::from_bytes(method.as_bytes())) {
                let _ = normalize(&m, &uri);
            }
        }

        /// The output is a fixed point, starts with `/`, has no `.`/`..`/empty segment, and
        /// holds only the characters the module promises.
        #[test]
        fn normalized_form(target in target()) {
            let Some(Ok(t)) = norm(&target) else { return Ok(()) };
            let path = &t.path;
            prop_assert!(path.starts_with('/'), "{target:?} -> {path:?}");
            prop_assert!(!path.contains("//"), "{target:?} -> {path:?}");
            let inner = path.strip_suffix('/').unwrap_or(path);
            for segment in inner.split('/').skip(1) {
                prop_assert!(
                    !segment.is_empty() && segment != "." && segment != "..",
                    "{target:?} -> {path:?}"
                );
            }
            let bytes = path.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let b = bytes[i];
                if b == b'%' {
                    let escaped = (hex(bytes[i + 1]).unwrap() << 4) | hex(bytes[i + 2]).unwrap();
                    prop_assert!(
                        bytes[i + 1..i + 3].iter().all(|c| !c.is_ascii_lowercase()),
                        "lower-case escape in {path:?}"
                    );
                    prop_assert!(
                        !is_unreserved(escaped)
                            && !matches!(escaped, b'/' | b'\\')
                            && escaped >= 0x20
                            && escaped != 0x7f,
                        "escape of {escaped:#x} in {path:?}"
                    );
                    i += 3;
                } else {
                    prop_assert!(is_path_char(b) && b != b';', "{b:#x} in {path:?}");
                    i += 1;
                }
            }
            let again = norm(path).map(|r| r.map(|t| t.path));
            prop_assert_eq!(again, Some(Ok(path.clone())), "not idempotent");
        }

        /// A normalized path means to an upstream exactly what the original target meant:
        /// same decoded segments, same trailing slash. (Refused targets reach nobody.)
        #[test]
        fn same_meaning_for_an_upstream(target in target()) {
            let Some(Ok(t)) = norm(&target) else { return Ok(()) };
            let raw_path = target.split(['?', '#']).next().unwrap_or("");
            let before = meaning(raw_path);
            prop_assert!(before.is_some(), "accepted a target above the root: {target:?}");
            prop_assert_eq!(meaning(&t.path), before, "{:?} -> {:?}", target, t.path);
        }

        /// The query string is never touched.
        #[test]
        fn query_is_kept_verbatim(target in target(), query in "[a-zA-Z0-9%./=&;?-]{0,20}") {
            let path = target.split(['?', '#']).next().unwrap_or("/");
            let with_query = format!("{path}?{query}");
            if let Some(Ok(t)) = norm(&with_query) {
                prop_assert_eq!(t.query.as_deref(), Some(query.as_str()));
            }
        }
    }
}
