//! The per-request pipeline: normalize, bind Host to SNI, re-check the identity, authorize,
//! forward. Header rewriting lives in `headers.rs`, upstream clients in `forward.rs`; the
//! request-level rules (normalization, Host, framing) in [`crate::request`].

pub mod forward;
pub mod headers;
pub mod service;
pub mod stream;

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
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Ok,
        Reason::NoRoute,
        Reason::NotAllowed,
        Reason::Revoked,
        Reason::BadRequest,
        Reason::SniMismatch,
        Reason::UpstreamError,
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
        }
    }
}

/// `certguard_upstream_errors_total{kind}` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}
