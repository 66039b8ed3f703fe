//! The rustls `ServerConfig` of one snapshot, and the per-connection copy whose verifier
//! records which trust source admitted (or refused) the client: rustls keeps verifier results
//! to itself, and SPEC 3 wants the admitting source known exactly, never guessed.

use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    ConfigBuilder, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    WantsVerifier,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{Outcome, Rejection, TlsError, TrustVerifier};
use crate::config;
use crate::identity::{Admission, CertCache};

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
                deny_reason: None,
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
        self.trust.root_hint_subjects()
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
    /// The parsed client chains of this snapshot's connections, shared between connections
    /// that present the same chain.
    certs: CertCache,
}

struct Resumption {
    storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// `provider` with its cipher suites in certguard's order of preference: AES-128-GCM, then
/// AES-256-GCM, then ChaCha20-Poly1305, TLS 1.3 before TLS 1.2 within each. The server picks
/// by this order, not the client's (BoringSSL, and so Envoy, and Go also put AES-128-GCM
/// first): AES-128-GCM with SHA-256 is TLS 1.3's mandatory suite, and its key schedule runs on
/// SHA-256, which current CPUs compute in hardware, where SHA-384 is computed in software
/// (about 9 % of a full mTLS handshake on the benchmark machine). Every suite the provider has
/// stays accepted. [`ServerTls::build`] sets `ignore_client_order` to make this order decide.
fn with_preferred_suites(
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        C::TLS13_AES_256_GCM_SHA384 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 3,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 4,
        _ => 5,
    };
    let mut ordered = (**provider).clone();
    // Stable: suites of one rank keep the provider's order.
    ordered.cipher_suites.sort_by_key(rank);
    Arc::new(ordered)
}

impl ServerTls {
    /// Load the server certificate and key (checking they match) and fix the protocol
    /// versions, ALPN and session-resumption settings for this snapshot.
    pub fn new(
        listen: &config::Listen,
        verifier: Arc<TrustVerifier>,
    ) -> Result<ServerTls, TlsError> {
        let provider = verifier.provider.clone();
        if listen.cert_chain.is_empty() {
            return Err(TlsError::ServerCert("no certificate in the chain".into()));
        }
        let cert =
            CertifiedKey::from_der(listen.cert_chain.clone(), listen.key.clone_key(), &provider)
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
        let builder = ServerConfig::builder_with_provider(with_preferred_suites(&provider))
            .with_protocol_versions(versions)?;
        Ok(ServerTls {
            verifier,
            builder,
            cert: Arc::new(cert),
            alpn: listen.alpn.clone(),
            resumption,
            certs: CertCache::default(),
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
        // The server's suite order decides (`with_preferred_suites`).
        config.ignore_client_order = true;
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

    /// The parsed client chains, shared between the connections that present the same one.
    pub fn certs(&self) -> &CertCache {
        &self.certs
    }
}
