//! The closed set of handshake outcomes (SPEC section 6), shared by logs and metrics.

use std::fmt;

/// Result of one TLS handshake, as counted by `certguard_tls_handshakes_total{outcome}`.
///
/// Every failed handshake maps to exactly one of these; the string forms are part of the
/// metrics contract and must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Success,
    NoClientCert,
    UnknownIssuer,
    BadSignature,
    Expired,
    NotYetValid,
    Revoked,
    UnknownRevocationStatus,
    CrlExpired,
    PinMismatch,
    InvalidUsage,
    LifetimeExceeded,
    ReviewOverdue,
    InvalidCert,
    Timeout,
    ProtocolError,
}

impl Outcome {
    /// Every outcome, in the order SPEC section 6 lists them.
    pub const ALL: [Outcome; 16] = [
        Outcome::Success,
        Outcome::NoClientCert,
        Outcome::UnknownIssuer,
        Outcome::BadSignature,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::Revoked,
        Outcome::UnknownRevocationStatus,
        Outcome::CrlExpired,
        Outcome::PinMismatch,
        Outcome::InvalidUsage,
        Outcome::LifetimeExceeded,
        Outcome::ReviewOverdue,
        Outcome::InvalidCert,
        Outcome::Timeout,
        Outcome::ProtocolError,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NoClientCert => "no_client_cert",
            Outcome::UnknownIssuer => "unknown_issuer",
            Outcome::BadSignature => "bad_signature",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::Revoked => "revoked",
            Outcome::UnknownRevocationStatus => "unknown_revocation_status",
            Outcome::CrlExpired => "crl_expired",
            Outcome::PinMismatch => "pin_mismatch",
            Outcome::InvalidUsage => "invalid_usage",
            Outcome::LifetimeExceeded => "lifetime_exceeded",
            Outcome::ReviewOverdue => "review_overdue",
            Outcome::InvalidCert => "invalid_cert",
            Outcome::Timeout => "timeout",
            Outcome::ProtocolError => "protocol_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            assert!(seen.insert(o.as_str()), "duplicate label {o}");
            assert!(o.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!(seen.len(), 16);
    }
}
