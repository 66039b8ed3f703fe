//! The verified client identity, extracted once per connection from the leaf certificate.

use std::net::IpAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

/// Fields of a client certificate that policy, XFCC, logs and the inventory use.
///
/// Built once per connection (or once per `explain` run) by [`CertInfo::from_chain`]; never
/// re-parsed per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN, RFC 4514 as `openssl -nameopt RFC2253` prints it (last RDN first).
    pub subject: String,
    /// Issuer DN, same form as `subject`.
    pub issuer: String,
    pub cn: Vec<String>,
    pub o: Vec<String>,
    pub ou: Vec<String>,
    /// DNS SANs, lower-cased.
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    pub san_email: Vec<String>,
    pub san_ip: Vec<IpAddr>,
    /// The first `spiffe://` URI SAN, if any.
    pub spiffe_id: Option<String>,
    /// SHA-256 of the leaf DER, lowercase hex without colons.
    pub fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, standard base64 with padding.
    pub spki: String,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// The chain as presented: leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
}

/// A client that passed a trust source: what the certificate says plus who admitted it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Name of the trust source whose verifier admitted the connection.
    pub trust: Arc<str>,
    /// For pinned sources, the name of the pinned entry that matched.
    pub pinned: Option<Arc<str>>,
    pub cert: Arc<CertInfo>,
}

/// The leaf could not be parsed into a [`CertInfo`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no certificate presented")]
    Empty,
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
}
