//! Host extraction and SNI binding (SPEC 4 step 2).
//!
//! The host that routes match and that is compared with the TLS SNI comes from exactly one
//! place per protocol version, and every disagreement between the places a client can put it
//! (several `Host` headers, `Host` vs. an absolute-form target, `Host` vs. `:authority`) is a
//! 400 rather than a choice, so the upstream cannot see a different host than policy did.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use http::header::HOST;
use http::Version;

/// Why the request's host was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// 400: missing Host on HTTP/1.1, Host and :authority differ, or unparsable.
    #[error("bad host: {0}")]
    Bad(&'static str),
    /// 421: differs from the TLS SNI.
    #[error("host does not match SNI")]
    SniMismatch,
}

/// Lower-case, strip port and trailing dot. `None` if it is not a valid host.
///
/// Accepted: a DNS-style name or IPv4 address made of ASCII letters, digits, `-`, `_` and `.`
/// (no empty labels), or a bracketed IPv6 literal; optionally followed by `:port` (decimal,
/// at most 65535, may be empty as RFC 3986 allows). IPv6 literals keep their brackets and are
/// rewritten in RFC 5952 canonical form (`[0:0::1]:8443` -> `[::1]`), the spelling they have
/// in a URL; zone identifiers are refused. One trailing dot is removed
/// (`Example.COM.:443` -> `example.com`). Refused (`None`): empty, whitespace, userinfo
/// (`@`), percent-escapes and any other character.
pub fn normalize_host(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        if !valid_port_suffix(after) {
            return None;
        }
        // Ipv6Addr parsing refuses zone ids (`%eth0`), spaces and anything non-hex.
        let addr: Ipv6Addr = literal.parse().ok()?;
        return Some(format!("[{addr}]"));
    }
    let (name, port) = match raw.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (raw, None),
    };
    if port.is_some_and(|port| !valid_port(port)) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || name.split('.').any(str::is_empty)
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// The `Host` an HTTP/1 upstream gets (SPEC 4 step 5): `judged`, the normalized host that
/// policy judged ([`request_host`] made it from `raw`), with the port the client sent in `raw`,
/// if it sent one (`Example.COM.:08443` -> `example.com:8443`, `[0:0::1]` -> `[::1]`), so that
/// the upstream and the policy never read two spellings of one host. Borrowed from `raw` when
/// the client already spelled it so (the usual case), so that the request's own `Host` value
/// can be reused.
pub fn upstream_host<'a>(judged: &str, raw: &'a str) -> Cow<'a, str> {
    let port_text = match raw.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(_, after)| after),
        None => raw.split_once(':').map(|(_, port)| port),
    }
    .map(|after| after.trim_start_matches(':'));
    let port = port_text.and_then(|port| port.parse::<u16>().ok());
    // Already in the form built below: the judged host, then `:` and the port in plain
    // decimal digits (no sign, no leading zero).
    let canonical = match port {
        None => raw == judged,
        Some(_) => port_text.is_some_and(|digits| {
            raw.strip_prefix(judged)
                .and_then(|rest| rest.strip_prefix(':'))
                == Some(digits)
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
        }),
    };
    match port {
        _ if canonical => Cow::Borrowed(raw),
        Some(port) => Cow::Owned(format!("{judged}:{port}")),
        None => Cow::Owned(judged.to_owned()),
    }
}

/// `""` or `":"` followed by up to five digits whose value fits a port.
fn valid_port_suffix(after_host: &str) -> bool {
    match after_host.strip_prefix(':') {
        Some(port) => valid_port(port),
        None => after_host.is_empty(),
    }
}

/// What follows the `:`: empty, or up to five digits whose value fits a port.
fn valid_port(port: &str) -> bool {
    port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok())
}

/// Normalize an SNI value for comparison: lower-case, one trailing dot removed.
fn normalize_sni(sni: &str) -> String {
    sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase()
}

/// The single `Host` header, normalized; `Ok(None)` when there is none.
fn host_header(parts: &http::request::Parts) -> Result<Option<String>, HostError> {
    let mut values = parts.headers.get_all(HOST).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HostError::Bad("multiple Host headers"));
    }
    let text = value
        .to_str()
        .map_err(|_| HostError::Bad("Host is not ASCII"))?;
    normalize_host(text)
        .map(Some)
        .ok_or(HostError::Bad("invalid Host"))
}

/// The request-target's (HTTP/1.x absolute-form) or `:authority`'s (HTTP/2) host, normalized.
fn uri_authority(parts: &http::request::Parts) -> Result<Option<String>, HostError> {
    match parts.uri.authority() {
        // `Authority::as_str` includes any userinfo, which `normalize_host` refuses.
        Some(authority) => normalize_host(authority.as_str())
            .map(Some)
            .ok_or(HostError::Bad("invalid authority")),
        None => Ok(None),
    }
}

/// The request's normalized host. `sni` is the (already lower-cased) SNI the client sent,
/// `None` when it sent none; the SNI check applies only when `require_sni_match` is on.
///
/// HTTP/1.x: the `Host` header (more than one is refused). An authority in the request-target
/// (absolute-form) must name the same host. HTTP/1.1 requires `Host`; HTTP/1.0 and 0.9
/// without one use the target's authority if any, else `Ok(None)`.
///
/// HTTP/2 and later: `:authority` (hyper puts it in `parts.uri.authority()`), or the `Host`
/// header when `:authority` is absent; when both are present they must agree after
/// normalization; neither is refused.
///
/// Then, when `require_sni_match` is on and the client sent an SNI, the host must equal it
/// (case-insensitively, ignoring one trailing dot), else [`HostError::SniMismatch`]. A request
/// without a host (HTTP/1.0) has nothing to compare and is not checked.
pub fn request_host(
    parts: &http::request::Parts,
    sni: Option<&str>,
    require_sni_match: bool,
) -> Result<Option<String>, HostError> {
    let header = host_header(parts)?;
    let authority = uri_authority(parts)?;
    let host = match (header, authority) {
        (Some(h), Some(a)) if h != a => {
            return Err(HostError::Bad("Host and request authority differ"));
        }
        (Some(h), _) => Some(h),
        (None, authority) => {
            let http1 = parts.version == Version::HTTP_09
                || parts.version == Version::HTTP_10
                || parts.version == Version::HTTP_11;
            if parts.version == Version::HTTP_11 {
                // RFC 9112 3.2: an HTTP/1.1 request without Host is a 400, even in
                // absolute-form.
                return Err(HostError::Bad("missing Host"));
            }
            if !http1 && authority.is_none() {
                return Err(HostError::Bad("missing :authority and Host"));
            }
            authority
        }
    };
    if require_sni_match {
        if let (Some(sni), Some(host)) = (sni, host.as_deref()) {
            if !sni.is_empty() && normalize_sni(sni) != host {
                return Err(HostError::SniMismatch);
            }
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Uri};

    #[test]
    fn the_upstream_host_is_the_judged_host_with_the_clients_port() {
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("LOCALHOST.:8443", Some("localhost:8443")),
            ("Example.COM.:08443", Some("example.com:8443")),
            ("example.com:", Some("example.com")),
            ("127.0.0.1:80", Some("127.0.0.1:80")),
            ("[0:0::1]", Some("[::1]")),
            ("[0:0::1]:8443", Some("[::1]:8443")),
            ("[FE80::AB]:", Some("[fe80::ab]")),
            ("a..b:80", None),
            ("example.com:65536", None),
            ("user@example.com", None),
        ];
        for (raw, want) in cases {
            let got = normalize_host(raw).map(|judged| upstream_host(&judged, raw));
            assert_eq!(got.as_deref(), *want, "{raw:?}");
        }
    }

    /// The client's own spelling is passed on only when it is exactly what would be built:
    /// any other spelling of the host or the port is rebuilt.
    #[test]
    fn the_clients_host_is_reused_only_when_already_canonical() {
        let cases: &[(&str, &str, bool)] = &[
            ("example.com", "example.com", true),
            ("example.com", "example.com:8443", true),
            ("[::1]", "[::1]:8443", true),
            ("127.0.0.1", "127.0.0.1:0", true),
            ("example.com", "Example.com:8443", false),
            ("example.com", "example.com.:8443", false),
            ("example.com", "example.com:08443", false),
            ("example.com", "example.com:+8443", false),
            ("example.com", "example.com:", false),
            ("example.com", "example.com::8443", false),
            ("[::1]", "[0:0::1]:8443", false),
            ("[::1]", "[::1]:", false),
        ];
        for &(judged, raw, reused) in cases {
            let got = upstream_host(judged, raw);
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                reused,
                "{judged:?} {raw:?}"
            );
            if reused {
                assert_eq!(got, raw);
            } else {
                assert_ne!(
                    got, raw,
                    "{judged:?} {raw:?}: rebuilt yet the same spelling"
                );
            }
        }
    }

    #[test]
    fn normalize_host_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("Example.COM", Some("example.com")),
            ("example.com:8443", Some("example.com")),
            ("example.com:", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("example.com.:443", Some("example.com")),
            ("EXAMPLE.com.:443", Some("example.com")),
            ("localhost", Some("localhost")),
            ("my_host-1.internal", Some("my_host-1.internal")),
            ("127.0.0.1", Some("127.0.0.1")),
            ("127.0.0.1:8443", Some("127.0.0.1")),
            ("[::1]", Some("[::1]")),
            ("[::1]:8443", Some("[::1]")),
            ("[0:0:0:0:0:0:0:1]:8443", Some("[::1]")),
            ("[FE80::AB]", Some("[fe80::ab]")),
            ("[::ffff:10.0.0.1]", Some("[::ffff:10.0.0.1]")),
            ("", None),
            (".", None),
            ("..", None),
            ("example.com..", None),
            (".example.com", None),
            ("a..b", None),
            (":443", None),
            ("example.com:99999", None),
            ("example.com:65536", None),
            ("example.com:-1", None),
            ("example.com:443:443", None),
            ("example.com:0x1bb", None),
            ("example.com:+443", None),
            ("exa mple.com", None),
            (" example.com", None),
            ("example.com\t", None),
            ("user@example.com", None),
            ("user:pw@example.com", None),
            ("example.com/path", None),
            ("example%2Ecom", None),
            ("exämple.com", None),
            ("[::1", None),
            ("::1", None),
            ("[::1]x", None),
            ("[::1]:", Some("[::1]")),
            ("[::1]:99999", None),
            ("[fe80::1%eth0]", None),
            ("[example.com]", None),
            ("[]", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                normalize_host(raw).as_deref(),
                *want,
                "normalize_host({raw:?})"
            );
        }
    }

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut b = Request::builder()
            .version(version)
            .uri(uri.parse::<Uri>().expect("test uri"));
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("test request").into_parts().0
    }

    type Case<'a> = (
        Version,
        &'a str,
        &'a [&'a str],
        Option<&'a str>,
        bool,
        Result<Option<&'a str>, HostError>,
    );

    #[test]
    fn request_host_table() {
        use HostError::*;
        let h1 = Version::HTTP_11;
        let h10 = Version::HTTP_10;
        let h2 = Version::HTTP_2;
        let cases: &[Case] = &[
            // HTTP/1.1
            (
                h1,
                "/",
                &["api.internal"],
                None,
                true,
                Ok(Some("api.internal")),
            ),
            (
                h1,
                "/",
                &["API.internal:8443"],
                None,
                true,
                Ok(Some("api.internal")),
            ),
            (h1, "/", &[], None, true, Err(Bad("missing Host"))),
            (
                h1,
                "/",
                &["a.internal", "a.internal"],
                None,
                true,
                Err(Bad("multiple Host headers")),
            ),
            (
                h1,
                "/",
                &["a.internal", "b.internal"],
                None,
                true,
                Err(Bad("multiple Host headers")),
            ),
            (h1, "/", &[""], None, true, Err(Bad("invalid Host"))),
            (
                h1,
                "/",
                &["evil@a.internal"],
                None,
                true,
                Err(Bad("invalid Host")),
            ),
            (
                h1,
                "http://a.internal/x",
                &["a.internal"],
                None,
                true,
                Ok(Some("a.internal")),
            ),
            (
                h1,
                "http://A.internal:8443/x",
                &["a.internal"],
                None,
                true,
                Ok(Some("a.internal")),
            ),
            (
                h1,
                "http://b.internal/x",
                &["a.internal"],
                None,
                true,
                Err(Bad("Host and request authority differ")),
            ),
            (
                h1,
                "http://b.internal/x",
                &[],
                None,
                true,
                Err(Bad("missing Host")),
            ),
            (
                h1,
                "http://u@a.internal/x",
                &["a.internal"],
                None,
                true,
                Err(Bad("invalid authority")),
            ),
            // SNI binding on HTTP/1.1
            (
                h1,
                "/",
                &["api.internal"],
                Some("api.internal"),
                true,
                Ok(Some("api.internal")),
            ),
            (
                h1,
                "/",
                &["API.internal.:443"],
                Some("api.internal"),
                true,
                Ok(Some("api.internal")),
            ),
            (
                h1,
                "/",
                &["api.internal"],
                Some("Api.Internal."),
                true,
                Ok(Some("api.internal")),
            ),
            (
                h1,
                "/",
                &["other.internal"],
                Some("api.internal"),
                true,
                Err(SniMismatch),
            ),
            (
                h1,
                "/",
                &["other.internal"],
                Some("api.internal"),
                false,
                Ok(Some("other.internal")),
            ),
            (h1, "/", &["127.0.0.1"], None, true, Ok(Some("127.0.0.1"))),
            (
                h1,
                "/",
                &["127.0.0.1"],
                Some("api.internal"),
                true,
                Err(SniMismatch),
            ),
            (h1, "/", &["[::1]:8443"], None, true, Ok(Some("[::1]"))),
            // HTTP/1.0
            (h10, "/", &[], None, true, Ok(None)),
            (h10, "/", &[], Some("api.internal"), true, Ok(None)),
            (
                h10,
                "/",
                &["a.internal"],
                None,
                true,
                Ok(Some("a.internal")),
            ),
            (
                h10,
                "/",
                &["a.internal"],
                Some("b.internal"),
                true,
                Err(SniMismatch),
            ),
            (
                h10,
                "http://a.internal/",
                &[],
                None,
                true,
                Ok(Some("a.internal")),
            ),
            (
                h10,
                "/",
                &["a", "b"],
                None,
                true,
                Err(Bad("multiple Host headers")),
            ),
            // HTTP/2: :authority lives in the Uri.
            (
                h2,
                "https://api.internal/x",
                &[],
                None,
                true,
                Ok(Some("api.internal")),
            ),
            (
                h2,
                "https://api.internal:8443/x",
                &["api.internal"],
                None,
                true,
                Ok(Some("api.internal")),
            ),
            (
                h2,
                "https://api.internal/x",
                &["API.internal."],
                None,
                true,
                Ok(Some("api.internal")),
            ),
            (
                h2,
                "https://api.internal/x",
                &["other.internal"],
                None,
                true,
                Err(Bad("Host and request authority differ")),
            ),
            (
                h2,
                "/x",
                &["api.internal"],
                None,
                true,
                Ok(Some("api.internal")),
            ),
            (
                h2,
                "/x",
                &[],
                None,
                true,
                Err(Bad("missing :authority and Host")),
            ),
            (
                h2,
                "https://api.internal/x",
                &[],
                Some("api.internal"),
                true,
                Ok(Some("api.internal")),
            ),
            (
                h2,
                "https://other.internal/x",
                &[],
                Some("api.internal"),
                true,
                Err(SniMismatch),
            ),
            (
                h2,
                "https://other.internal/x",
                &[],
                Some("api.internal"),
                false,
                Ok(Some("other.internal")),
            ),
            (
                h2,
                "https://u:p@api.internal/x",
                &[],
                None,
                true,
                Err(Bad("invalid authority")),
            ),
            (
                h2,
                "https://api.internal/x",
                &["a", "b"],
                None,
                true,
                Err(Bad("multiple Host headers")),
            ),
        ];
        for (version, uri, hosts, sni, require, want) in cases {
            let p = parts(*version, uri, hosts);
            let got = request_host(&p, *sni, *require);
            let want = want.clone().map(|o| o.map(str::to_owned));
            assert_eq!(
                got, want,
                "{version:?} {uri} host={hosts:?} sni={sni:?} require={require}"
            );
        }
    }

    #[test]
    fn non_ascii_host_header_is_bad() {
        let mut p = parts(Version::HTTP_11, "/", &[]);
        p.headers.insert(
            HOST,
            http::HeaderValue::from_bytes(b"ex\xe4mple.com").expect("obs-text value"),
        );
        assert_eq!(
            request_host(&p, None, true),
            Err(HostError::Bad("Host is not ASCII"))
        );
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of [`normalize_host`]: one spelling per host, whatever the client wrote.

    use super::*;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{1,10}"
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
    }

    fn ipv6() -> impl Strategy<Value = std::net::Ipv6Addr> {
        any::<[u16; 8]>().prop_map(std::net::Ipv6Addr::from)
    }

    fn port() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(":".to_owned()),
            (0u16..=u16::MAX).prop_map(|p| format!(":{p}")),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]

        #[test]
        fn never_panics(raw in "\\PC{0,30}") {
            let _ = normalize_host(&raw);
        }

        /// Whatever is accepted comes out lower-case, without port or trailing dot, made only
        /// of name characters (or a bracketed IPv6 literal), and normalizes to itself.
        #[test]
        fn output_is_canonical(raw in prop_oneof![
            "\\PC{0,30}",
            "[a-zA-Z0-9.:\\[\\]@%_-]{0,30}",
        ]) {
            if let Some(host) = normalize_host(&raw) {
                prop_assert_eq!(normalize_host(&host), Some(host.clone()), "{:?}", raw);
                prop_assert!(!host.ends_with('.'), "{raw:?} -> {host:?}");
                prop_assert_eq!(host.to_ascii_lowercase(), host.clone());
                if let Some(inner) = host.strip_prefix('[') {
                    let literal = inner.strip_suffix(']');
                    prop_assert!(literal.is_some_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok()));
                } else {
                    prop_assert!(host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
                    prop_assert!(!host.split('.').any(str::is_empty), "{raw:?} -> {host:?}");
                }
            }
        }

        /// Case, a valid port and one trailing dot never change the host.
        #[test]
        fn spelling_does_not_change_the_name(name in name(), port in port(), dot in any::<bool>(), upper in any::<bool>()) {
            let want = name.to_ascii_lowercase();
            let mut spelled = if upper { name.to_ascii_uppercase() } else { name.clone() };
            if dot {
                spelled.push('.');
            }
            spelled.push_str(&port);
            prop_assert_eq!(normalize_host(&spelled), Some(want));
        }

        /// Every spelling of one IPv6 address is the same host.
        #[test]
        fn ipv6_spellings_agree(addr in ipv6(), port in port()) {
            let canonical = format!("[{addr}]");
            let full = format!(
                "[{}]{port}",
                addr.segments().map(|s| format!("{s:X}")).join(":")
            );
            prop_assert_eq!(normalize_host(&full), Some(canonical.clone()));
            prop_assert_eq!(normalize_host(&format!("{canonical}{port}")), Some(canonical));
        }

        /// Userinfo, paths, escapes, whitespace, empty labels and bad ports are refused.
        #[test]
        fn ambiguous_hosts_are_refused(
            name in name(),
            bad in prop::sample::select(&["@", "/", "%2E", " ", "\t", "..", "\\", "#", "?", ",", "é"][..]),
            at_start in any::<bool>(),
        ) {
            let raw = if at_start { format!("{bad}{name}") } else { format!("{name}{bad}x") };
            prop_assert_eq!(normalize_host(&raw), None, "{:?}", raw);
            for port in ["99999", "65536", "-1", "+1", "0x1", "1:2", "a"] {
                let with_port = format!("{name}:{port}");
                prop_assert_eq!(normalize_host(&with_port), None, "{:?}", with_port);
            }
        }
    }
}
