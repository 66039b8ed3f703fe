//! Server-side TLS: the client-certificate verifiers (CA chains with CRLs in `chain.rs`, pinned
//! certificates in `pinned.rs`), handshake outcome classification, and the rustls
//! `ServerConfig` built per snapshot.

pub mod chain;
pub mod outcome;
pub mod pinned;

use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ConfigBuilder, DigitallySignedStruct, WantsVerifier, DistinguishedName, ServerConfig, SignatureScheme};
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

/// One configured trust source, built.
#[derive(Debug)]
enum Source {
    Ca(chain::CaSource),
    Pinned(pinned::PinnedSource),
}

impl Source {
    fn name(&self) -> &Arc<str> {
        match self {
            Source::Ca(s) => s.name(),
            Source::Pinned(s) => s.name(),
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        match self {
            Source::Ca(s) => s.verify(end_entity, intermediates, now),
            Source::Pinned(s) => s.verify(end_entity, now),
        }
    }
}

/// All trust sources of one snapshot behind one rustls client-certificate verifier.
#[derive(Debug)]
pub struct TrustVerifier {
    sources: Vec<Source>,
    /// Subjects of every CA source's anchors (the CertificateRequest hint list).
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl TrustVerifier {
    /// Build every trust source (webpki verifiers with parsed CRLs, decoded pins) once.
    pub fn new(sources: &[config::TrustSource]) -> Result<TrustVerifier, TlsError> {
        let provider = provider();
        let mut built = Vec::with_capacity(sources.len());
        let mut hints = Vec::new();
        for source in sources {
            match &source.kind {
                config::TrustKind::Ca(ca) => {
                    let s = chain::CaSource::new(source.name.clone(), ca, provider.clone())?;
                    hints.extend(s.root_hint_subjects().iter().cloned());
                    built.push(Source::Ca(s));
                }
                config::TrustKind::Pinned(p) => {
                    built.push(Source::Pinned(pinned::PinnedSource::new(source.name.clone(), p)));
                }
            }
        }
        Ok(TrustVerifier {
            sources: built,
            hints,
            provider,
        })
    }

    /// Verify a presented chain against every source in order; the first that admits wins.
    ///
    /// When none admits: the first failure (in config order) of a source that recognised the
    /// certificate (a CA source that built a chain to its anchors, or a pinned entry that
    /// matched) is reported with that source as `trust`; otherwise `pin_mismatch` for a
    /// self-signed certificate when a pinned source exists, else `unknown_issuer` (or
    /// `invalid_cert` when the certificate cannot be parsed), with `trust = None`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        let self_signed = match x509_parser::parse_x509_certificate(end_entity.as_ref()) {
            Ok((_, x509)) => x509.subject().as_raw() == x509.issuer().as_raw(),
            Err(e) => {
                return Err(Rejection {
                    trust: None,
                    outcome: Outcome::InvalidCert,
                    detail: format!("certificate cannot be parsed: {e}"),
                })
            }
        };
        let mut attributed: Option<Rejection> = None;
        let mut unattributed: Vec<Rejection> = Vec::new();
        for source in &self.sources {
            match source.verify(end_entity, intermediates, now) {
                Ok(admission) => return Ok(admission),
                Err(r) if r.trust.is_some() => {
                    if attributed.is_none() {
                        attributed = Some(r);
                    }
                }
                Err(r) => unattributed.push(r),
            }
        }
        if let Some(r) = attributed {
            return Err(r);
        }
        if let Some(r) = unattributed
            .iter()
            .find(|r| r.outcome == Outcome::InvalidCert)
        {
            return Err(r.clone());
        }
        let has_pinned = self
            .sources
            .iter()
            .any(|s| matches!(s, Source::Pinned(_)));
        let outcome = if self_signed && has_pinned {
            Outcome::PinMismatch
        } else {
            Outcome::UnknownIssuer
        };
        let detail = if unattributed.is_empty() {
            "no trust source configured".to_string()
        } else {
            unattributed
                .iter()
                .map(|r| r.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(Rejection {
            trust: None,
            outcome,
            detail,
        })
    }

    /// The verdict of each source separately (for `explain`), in config order.
    pub fn verify_each(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Vec<(Arc<str>, Result<Admission, Rejection>)> {
        self.sources
            .iter()
            .map(|s| (s.name().clone(), s.verify(end_entity, intermediates, now)))
            .collect()
    }

    /// Names of overdue pinned entries per pinned source (for `check`, logs and the
    /// `certguard_pinned_review_overdue` gauge), in config order.
    pub fn overdue_pins(&self, today: time::Date) -> Vec<(Arc<str>, Vec<Arc<str>>)> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                Source::Pinned(p) => Some((p.name().clone(), p.overdue_entries(today))),
                Source::Ca(_) => None,
            })
            .collect()
    }

    /// Subjects of all CA sources' anchors, as sent in the CertificateRequest.
    pub fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
}

/// The crypto provider every verifier and server config of certguard uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What the verifier decided during one connection's handshake.
#[derive(Clone, Debug, Default)]
pub struct HandshakeRecord(Arc<Mutex<Option<Result<Admission, Rejection>>>>);

impl HandshakeRecord {
    /// The decision, if the verifier ran.
    pub fn get(&self) -> Option<Result<Admission, Rejection>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, value: Result<Admission, Rejection>) {
        // A poisoned lock only means another thread panicked mid-write; the value is still
        // a plain Option, so overwrite it.
        let mut guard = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(value);
    }
}

/// The per-connection verifier: delegates to the snapshot's [`TrustVerifier`] and records the
/// decision into that connection's [`HandshakeRecord`].
#[derive(Debug)]
struct RecordingVerifier {
    trust: Arc<TrustVerifier>,
    record: HandshakeRecord,
}

impl RecordingVerifier {
    /// A failed handshake signature means the client does not hold the certificate's key:
    /// overwrite an admission with `bad_signature`, keeping the source that matched.
    fn signature_result(
        &self,
        result: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if let Err(e) = &result {
            let trust = match self.record.get() {
                Some(Ok(a)) => Some(a.trust),
                Some(Err(r)) => r.trust,
                None => None,
            };
            self.record.set(Err(Rejection {
                trust,
                outcome: Outcome::BadSignature,
                detail: format!("handshake signature: {e}"),
            }));
        }
        result
    }
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.trust.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self.trust.verify(end_entity, intermediates, now);
        self.record.set(result.clone());
        match result {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(r) => Err(rustls::Error::InvalidCertificate(
                r.outcome.to_certificate_error(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature_result(rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.trust.provider.signature_verification_algorithms,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature_result(rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.trust.provider.signature_verification_algorithms,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side of one snapshot: a base `ServerConfig` from which each connection gets a
/// copy whose verifier records its decision into that connection's [`HandshakeRecord`].
pub struct ServerTls {
    verifier: Arc<TrustVerifier>,
    /// Provider and protocol versions already validated; cloning it is infallible.
    builder: ConfigBuilder<ServerConfig, WantsVerifier>,
    cert: Arc<CertifiedKey>,
    alpn: Vec<Vec<u8>>,
    /// `Some` only with `session_resumption: true`; owned by this snapshot, never shared.
    resumption: Option<Resumption>,
}

struct Resumption {
    storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl ServerTls {
    /// Load the server certificate and key (checking they match) and fix the protocol
    /// versions, ALPN and session-resumption settings for this snapshot.
    pub fn new(listen: &config::Listen, verifier: Arc<TrustVerifier>) -> Result<ServerTls, TlsError> {
        let provider = verifier.provider.clone();
        if listen.cert_chain.is_empty() {
            return Err(TlsError::ServerCert("no certificate in the chain".into()));
        }
        let cert = CertifiedKey::from_der(
            listen.cert_chain.clone(),
            listen.key.clone_key(),
            &provider,
        )
        .map_err(|e| TlsError::ServerCert(e.to_string()))?;
        let versions = match listen.min_tls_version {
            config::TlsVersion::V1_2 => TLS12_AND_13,
            config::TlsVersion::V1_3 => TLS13_ONLY,
        };
        let resumption = if listen.session_resumption {
            Some(Resumption {
                storage: rustls::server::ServerSessionMemoryCache::new(4096),
                ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            })
        } else {
            None
        };
        let builder =
            ServerConfig::builder_with_provider(provider).with_protocol_versions(versions)?;
        Ok(ServerTls {
            verifier,
            builder,
            cert: Arc::new(cert),
            alpn: listen.alpn.clone(),
            resumption,
        })
    }

    fn build(&self, record: HandshakeRecord) -> ServerConfig {
        let recording = Arc::new(RecordingVerifier {
            trust: self.verifier.clone(),
            record,
        });
        let mut config = self
            .builder
            .clone()
            .with_client_cert_verifier(recording)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.cert.clone())));
        config.alpn_protocols = self.alpn.clone();
        match &self.resumption {
            Some(r) => {
                config.session_storage = r.storage.clone();
                config.ticketer = r.ticketer.clone();
            }
            None => {
                // A resumed session skips the client-certificate verifier (SPEC 5.4).
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
            }
        }
        config
    }

    /// A config for one connection whose verifier records into the returned record.
    ///
    /// rustls keeps the verifier private in `ServerConfig`, so this assembles a new config
    /// from parts built in [`ServerTls::new`] (validated builder, certified key, session store
    /// and ticketer are cloned `Arc`s; nothing is parsed here).
    pub fn for_connection(&self) -> (Arc<ServerConfig>, HandshakeRecord) {
        let record = HandshakeRecord::default();
        let config = self.build(record.clone());
        (Arc::new(config), record)
    }

    /// The snapshot's trust verifier (for the per-request re-check and `explain`).
    pub fn verifier(&self) -> &Arc<TrustVerifier> {
        &self.verifier
    }
}

/// Map a failed handshake to its outcome: the verifier's own record when it rejected the
/// certificate, otherwise the rustls error (no certificate, protocol errors).
pub fn classify_failure(
    record: Option<Result<Admission, Rejection>>,
    err: Option<&rustls::Error>,
) -> (Option<Arc<str>>, Outcome) {
    match (record, err) {
        (Some(Err(r)), _) => (r.trust, r.outcome),
        (Some(Ok(a)), Some(e)) => (Some(a.trust), Outcome::from_rustls_error(e)),
        (None, Some(e)) => (None, Outcome::from_rustls_error(e)),
        (Some(Ok(a)), None) => (Some(a.trust), Outcome::ProtocolError),
        (None, None) => (None, Outcome::ProtocolError),
    }
}

#[allow(dead_code)]
fn _assert_verifier_object_safe(_: &dyn ClientCertVerifier) {}
