//! Host extraction and SNI binding (SPEC 4 step 2).

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
pub fn normalize_host(raw: &str) -> Option<String> {
    let _ = raw;
    todo!("proxy helper")
}

/// The request's normalized host. `sni` is the (already lower-cased) SNI the client sent,
/// `None` when it sent none; the SNI check applies only when `require_sni_match` is on.
pub fn request_host(
    parts: &http::request::Parts,
    sni: Option<&str>,
    require_sni_match: bool,
) -> Result<Option<String>, HostError> {
    let _ = (parts, sni, require_sni_match);
    todo!("proxy helper")
}
