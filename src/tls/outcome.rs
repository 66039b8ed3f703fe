//! The closed set of handshake outcomes (SPEC section 6), shared by logs and metrics.

use std::fmt;
use std::sync::Arc;

use rustls::{CertificateError, OtherError};

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
    /// Release 2 (SPEC 9.4): a `deny:` entry matched the admitted certificate.
    DenyListed,
    /// SPEC 9.5: a SPIFFE ID of a trust domain bound to another source, or outside the
    /// admitting source's own bindings.
    TrustDomainMismatch,
}

impl Outcome {
    /// Every outcome, in the order SPEC section 6 lists them, then those of section 9.
    pub const ALL: [Outcome; 18] = [
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
        Outcome::DenyListed,
        Outcome::TrustDomainMismatch,
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
            Outcome::DenyListed => "deny_listed",
            Outcome::TrustDomainMismatch => "trust_domain_mismatch",
        }
    }
}

impl Outcome {
    /// Classify a certificate error by its variant (never by its text).
    ///
    /// Errors our own verifiers wrap in [`CertificateError::Other`] carry their outcome and
    /// are unwrapped here; other `Other` errors are `invalid_cert`.
    pub fn from_certificate_error(err: &CertificateError) -> Outcome {
        #[allow(deprecated)]
        match err {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Outcome::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Outcome::NotYetValid
            }
            CertificateError::Revoked => Outcome::Revoked,
            CertificateError::UnknownIssuer => Outcome::UnknownIssuer,
            CertificateError::UnknownRevocationStatus => Outcome::UnknownRevocationStatus,
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => Outcome::CrlExpired,
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithm
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                Outcome::BadSignature
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Outcome::InvalidUsage
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<OutcomeError>() {
                Some(e) => e.outcome,
                None => Outcome::InvalidCert,
            },
            _ => Outcome::InvalidCert,
        }
    }

    /// Classify a rustls error from a failed handshake by its variant.
    ///
    /// A CRL that cannot be used (bad signature, unsupported feature) leaves the revocation
    /// status undetermined: `unknown_revocation_status`.
    pub fn from_rustls_error(err: &rustls::Error) -> Outcome {
        match err {
            rustls::Error::NoCertificatesPresented => Outcome::NoClientCert,
            rustls::Error::InvalidCertificate(e) => Outcome::from_certificate_error(e),
            rustls::Error::InvalidCertRevocationList(_) => Outcome::UnknownRevocationStatus,
            _ => Outcome::ProtocolError,
        }
    }

    /// The standard certificate error whose TLS alert best describes this outcome, used when
    /// our verifier rejects a client.
    pub fn to_certificate_error(self) -> CertificateError {
        match self {
            Outcome::Expired => CertificateError::Expired,
            Outcome::NotYetValid => CertificateError::NotValidYet,
            // A deny-listed client gets the same alert as a revoked one.
            Outcome::Revoked | Outcome::DenyListed => CertificateError::Revoked,
            Outcome::UnknownIssuer | Outcome::PinMismatch => CertificateError::UnknownIssuer,
            Outcome::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
            Outcome::CrlExpired => CertificateError::ExpiredRevocationList,
            Outcome::BadSignature => CertificateError::BadSignature,
            Outcome::InvalidUsage => CertificateError::InvalidPurpose,
            Outcome::LifetimeExceeded | Outcome::ReviewOverdue | Outcome::TrustDomainMismatch => {
                CertificateError::ApplicationVerificationFailure
            }
            Outcome::InvalidCert => CertificateError::BadEncoding,
            Outcome::Success
            | Outcome::NoClientCert
            | Outcome::Timeout
            | Outcome::ProtocolError => {
                CertificateError::Other(OtherError(Arc::new(OutcomeError { outcome: self })))
            }
        }
    }
}

/// An outcome carried inside [`CertificateError::Other`] by our own verifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client certificate rejected: {outcome}")]
pub struct OutcomeError {
    /// Why the certificate was rejected.
    pub outcome: Outcome,
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
            assert!(o
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!(seen.len(), Outcome::ALL.len());
    }

    #[test]
    fn certificate_error_round_trip() {
        for o in Outcome::ALL {
            if o == Outcome::Success {
                continue;
            }
            assert_eq!(
                Outcome::from_certificate_error(&o.to_certificate_error()),
                match o {
                    Outcome::PinMismatch => Outcome::UnknownIssuer,
                    Outcome::LifetimeExceeded
                    | Outcome::ReviewOverdue
                    | Outcome::TrustDomainMismatch => Outcome::InvalidCert,
                    Outcome::DenyListed => Outcome::Revoked,
                    o => o,
                }
            );
        }
    }
}
