//! Server-side TLS: the client-certificate verifiers (CA chains with CRLs in `chain.rs`, pinned
//! certificates in `pinned.rs`), handshake outcome classification, and the rustls
//! `ServerConfig` built per snapshot.

pub mod chain;
pub mod outcome;
pub mod pinned;

use std::sync::{Arc, Mutex};

use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config;
pub use outcome::Outcome;

/// Which trust source (and pinned entry) admitted a client: decided by the verifier itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub trust: Arc<str>,
    pub pinned: Option<Arc<str>>,
}

/// Why no trust source admitted a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The CA source that built a chain and then failed it; `None` is the `none` label.
    pub trust: Option<Arc<str>>,
    pub outcome: Outcome,
    /// Human explanation for logs and `explain` (never sent to the client).
    pub detail: String,
}

/// Errors building TLS state from a config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust source {name}: {reason}")]
    Trust { name: String, reason: String },
    #[error("server certificate/key: {0}")]
    ServerCert(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// All trust sources of one snapshot behind one rustls client-certificate verifier.
#[derive(Debug)]
pub struct TrustVerifier {
    _private: (),
}

impl TrustVerifier {
    pub fn new(sources: &[config::TrustSource]) -> Result<TrustVerifier, TlsError> {
        let _ = sources;
        todo!("tls helper")
    }

    /// Verify a presented chain against every source in order; the first that admits wins.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        let _ = (end_entity, intermediates, now);
        todo!("tls helper")
    }

    /// The verdict of each source separately (for `explain`), in config order.
    pub fn verify_each(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Vec<(Arc<str>, Result<Admission, Rejection>)> {
        let _ = (end_entity, intermediates, now);
        todo!("tls helper")
    }
}

/// What the verifier decided during one connection's handshake.
#[derive(Clone, Debug, Default)]
pub struct HandshakeRecord(Arc<Mutex<Option<Result<Admission, Rejection>>>>);

impl HandshakeRecord {
    pub fn get(&self) -> Option<Result<Admission, Rejection>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// The server side of one snapshot: a base `ServerConfig` from which each connection gets a
/// copy whose verifier records its decision into that connection's [`HandshakeRecord`].
pub struct ServerTls {
    _private: (),
}

impl ServerTls {
    pub fn new(listen: &config::Listen, verifier: Arc<TrustVerifier>) -> Result<ServerTls, TlsError> {
        let _ = (listen, verifier);
        todo!("tls helper")
    }

    pub fn for_connection(&self) -> (Arc<ServerConfig>, HandshakeRecord) {
        todo!("tls helper")
    }

    pub fn verifier(&self) -> &Arc<TrustVerifier> {
        todo!("tls helper")
    }
}

/// Map a failed handshake to its outcome: the verifier's own record when it rejected the
/// certificate, otherwise the rustls error (no certificate, protocol errors).
pub fn classify_failure(
    record: Option<Result<Admission, Rejection>>,
    err: Option<&rustls::Error>,
) -> (Option<Arc<str>>, Outcome) {
    let _ = (record, err);
    todo!("tls helper")
}

#[allow(dead_code)]
fn _assert_verifier_object_safe(_: &dyn ClientCertVerifier) {}
