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
use rustls::{
    ConfigBuilder, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    WantsVerifier,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config;
use crate::identity::Admission;
pub use outcome::Outcome;

/// Why no trust source admitted a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The CA source that built a chain and then failed it; `None` is the `none` label.
    pub trust: Option<Arc<str>>,
    /// The handshake outcome label.
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
    ///
    /// CRLs are parsed here, once per snapshot (never per connection).
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
                    built.push(Source::Pinned(pinned::PinnedSource::new(
                        source.name.clone(),
                        p,
                    )));
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
        let has_pinned = self.sources.iter().any(|s| matches!(s, Source::Pinned(_)));
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration as StdDuration;

    use rcgen::ExtendedKeyUsagePurpose;
    use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
    use rustls::client::ResolvesClientCert;
    use rustls::{ClientConfig, ClientConnection, ServerConnection};
    use rustls_pki_types::{CertificateRevocationListDer, PrivateKeyDer, ServerName};
    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::certs::sha256;
    use crate::config::{
        CaTrust, CrlFile, OverdueAction, Pin, PinnedEntry, PinnedTrust, Revocation,
        RevocationDepth, TrustKind, TrustSource,
    };
    use crate::devpki::{LeafSpec, TestCa, TestCert};

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn crl_file(der: CertificateRevocationListDer<'static>) -> CrlFile {
        CrlFile {
            path: PathBuf::from("test.crl"),
            der,
            issuer: String::new(),
            issuer_raw: Vec::new(),
            this_update: 0,
            next_update: None,
        }
    }

    fn ca_source(
        name: &str,
        ca: &TestCa,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> TrustSource {
        ca_source_with(name, ca, crls, default_revocation(), None)
    }

    fn default_revocation() -> Revocation {
        Revocation {
            depth: RevocationDepth::Chain,
            allow_unknown_status: false,
            allow_expired_crl: false,
        }
    }

    fn ca_source_with(
        name: &str,
        ca: &TestCa,
        crls: Vec<CertificateRevocationListDer<'static>>,
        revocation: Revocation,
        max_lifetime: Option<StdDuration>,
    ) -> TrustSource {
        TrustSource {
            name: name.into(),
            kind: TrustKind::Ca(CaTrust {
                ca_path: PathBuf::from("ca.crt"),
                anchors: vec![ca.cert.clone()],
                crls: crls.into_iter().map(crl_file).collect(),
                revocation,
                max_lifetime,
            }),
        }
    }

    fn entry(name: &str, pin: Pin, review_by: Option<time::Date>) -> PinnedEntry {
        PinnedEntry {
            name: name.into(),
            pin,
            owner: None,
            purpose: None,
            review_by,
        }
    }

    fn pinned_source(
        name: &str,
        entries: Vec<PinnedEntry>,
        check_validity: bool,
        on_overdue: OverdueAction,
    ) -> TrustSource {
        TrustSource {
            name: name.into(),
            kind: TrustKind::Pinned(PinnedTrust {
                entries,
                check_validity,
                on_overdue_review: on_overdue,
            }),
        }
    }

    fn cert_pin(c: &TestCert) -> Pin {
        Pin::Cert {
            path: PathBuf::from("pinned.crt"),
            sha256: sha256(c.cert.as_ref()),
        }
    }

    fn spki_pin(c: &TestCert) -> Pin {
        let (_, x) = x509_parser::parse_x509_certificate(c.cert.as_ref()).unwrap();
        Pin::Spki(sha256(x.public_key().raw))
    }

    fn verify(v: &TrustVerifier, c: &TestCert) -> Result<Admission, Rejection> {
        v.verify(&c.chain[0], &c.chain[1..], now())
    }

    fn rejected(v: &TrustVerifier, c: &TestCert) -> (Option<String>, Outcome) {
        let r = verify(v, c).expect_err("should be rejected");
        (r.trust.map(|t| t.to_string()), r.outcome)
    }

    fn ca_admits(v: &TrustVerifier, c: &TestCert, name: &str) {
        let a = verify(v, c).expect("should be admitted");
        assert_eq!(&*a.trust, name);
        assert_eq!(a.pinned, None);
    }

    struct Pki {
        root: TestCa,
        inter: TestCa,
    }

    fn pki() -> Pki {
        let root = TestCa::root("test root").unwrap();
        let inter = root.intermediate("test intermediate").unwrap();
        Pki { root, inter }
    }

    fn past() -> (OffsetDateTime, OffsetDateTime) {
        let n = OffsetDateTime::now_utc();
        (n - Duration::days(30), n - Duration::days(1))
    }

    #[test]
    fn ca_without_crls_admits_valid_client() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        ca_admits(
            &v,
            &p.inter.issue(&LeafSpec::client("alice")).unwrap(),
            "internal",
        );
        assert_eq!(v.root_hint_subjects().len(), 1);
    }

    #[test]
    fn ca_with_crls_admits_valid_client() {
        let p = pki();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        let crls = vec![
            p.root.crl(&[], a, b).unwrap(),
            p.inter.crl(&[], a, b).unwrap(),
        ];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls)]).unwrap();
        ca_admits(
            &v,
            &p.inter.issue(&LeafSpec::client("alice")).unwrap(),
            "internal",
        );
    }

    #[test]
    fn unknown_issuer() {
        let p = pki();
        let other = TestCa::root("other root").unwrap();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let c = other.issue(&LeafSpec::client("mallory")).unwrap();
        assert_eq!(rejected(&v, &c), (None, Outcome::UnknownIssuer));
        // A self-signed certificate with no pinned source is unknown_issuer too.
        let rogue = TestCert::self_signed(&LeafSpec::client("rogue")).unwrap();
        assert_eq!(rejected(&v, &rogue), (None, Outcome::UnknownIssuer));
        // An expired certificate from an unrelated CA is not this source's failure.
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let c = other.issue(&spec).unwrap();
        assert_eq!(rejected(&v, &c), (None, Outcome::UnknownIssuer));
    }

    #[test]
    fn bad_signature() {
        // Same subject DN as the trusted root, different key: the issuer name matches an
        // anchor but the signature does not verify.
        let p = pki();
        let impostor = TestCa::root("test root").unwrap();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let c = impostor.issue(&LeafSpec::client("mallory")).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::BadSignature)
        );
    }

    #[test]
    fn expired() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let c = p.inter.issue(&spec).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::Expired)
        );
    }

    #[test]
    fn not_yet_valid() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let mut spec = LeafSpec::client("future");
        spec.not_before = OffsetDateTime::now_utc() + Duration::days(1);
        spec.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let c = p.inter.issue(&spec).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::NotYetValid)
        );
    }

    #[test]
    fn revoked() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("revoked")).unwrap();
        let ok = p.inter.issue(&LeafSpec::client("ok")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        let crls = vec![
            p.root.crl(&[], a, b).unwrap(),
            p.inter.crl(&[&c.serial], a, b).unwrap(),
        ];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls)]).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::Revoked)
        );
        ca_admits(&v, &ok, "internal");
    }

    #[test]
    fn unknown_revocation_status_and_allow() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        // Only the root's CRL: the leaf's issuer (the intermediate) has none.
        let crls = vec![p.root.crl(&[], a, b).unwrap()];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls.clone())]).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::UnknownRevocationStatus)
        );

        let mut rev = default_revocation();
        rev.allow_unknown_status = true;
        let v =
            TrustVerifier::new(&[ca_source_with("internal", &p.root, crls, rev, None)]).unwrap();
        ca_admits(&v, &c, "internal");
    }

    #[test]
    fn end_entity_depth_skips_intermediate_status() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        // Only the intermediate's CRL: with depth chain the intermediate's own status is unknown.
        let crls = vec![p.inter.crl(&[], a, b).unwrap()];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls.clone())]).unwrap();
        assert_eq!(rejected(&v, &c).1, Outcome::UnknownRevocationStatus);
        let mut rev = default_revocation();
        rev.depth = RevocationDepth::EndEntity;
        let v =
            TrustVerifier::new(&[ca_source_with("internal", &p.root, crls, rev, None)]).unwrap();
        ca_admits(&v, &c, "internal");
    }

    #[test]
    fn crl_expired_and_allow() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = past();
        let crls = vec![
            p.root.crl(&[], a, b).unwrap(),
            p.inter.crl(&[], a, b).unwrap(),
        ];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls.clone())]).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::CrlExpired)
        );

        let mut rev = default_revocation();
        rev.allow_expired_crl = true;
        let v =
            TrustVerifier::new(&[ca_source_with("internal", &p.root, crls, rev, None)]).unwrap();
        ca_admits(&v, &c, "internal");
    }

    #[test]
    fn invalid_usage_server_auth_only() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let mut spec = LeafSpec::client("server-only");
        spec.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let c = p.inter.issue(&spec).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::InvalidUsage)
        );
        // No EKU at all is acceptable for client auth.
        spec.eku = vec![];
        ca_admits(&v, &p.inter.issue(&spec).unwrap(), "internal");
    }

    #[test]
    fn lifetime_exceeded() {
        let p = pki();
        let max = Some(StdDuration::from_secs(90 * 86400));
        let v = TrustVerifier::new(&[ca_source_with(
            "internal",
            &p.root,
            vec![],
            default_revocation(),
            max,
        )])
        .unwrap();
        let long = p.inter.issue(&LeafSpec::client("long")).unwrap(); // 366 days
        assert_eq!(
            rejected(&v, &long),
            (Some("internal".into()), Outcome::LifetimeExceeded)
        );
        let mut spec = LeafSpec::client("short");
        spec.not_after = spec.not_before + Duration::days(30);
        ca_admits(&v, &p.inter.issue(&spec).unwrap(), "internal");
    }

    #[test]
    fn invalid_cert_garbage_der() {
        let p = pki();
        let pin = TestCert::self_signed(&LeafSpec::client("ci")).unwrap();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            pinned_source(
                "lab",
                vec![entry("ci", cert_pin(&pin), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03]);
        let r = v.verify(&garbage, &[], now()).unwrap_err();
        assert_eq!((r.trust, r.outcome), (None, Outcome::InvalidCert));
    }

    #[test]
    fn pinned_by_cert_sha256_and_spki() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let b = TestCert::self_signed(&LeafSpec::client("b")).unwrap();
        let c = TestCert::self_signed(&LeafSpec::client("c")).unwrap();
        let v = TrustVerifier::new(&[pinned_source(
            "lab",
            vec![
                entry("by-cert", cert_pin(&a), None),
                entry("by-sha256", Pin::Sha256(sha256(b.cert.as_ref())), None),
                entry("by-spki", spki_pin(&c), None),
            ],
            true,
            OverdueAction::Warn,
        )])
        .unwrap();
        for (cert, name) in [(&a, "by-cert"), (&b, "by-sha256"), (&c, "by-spki")] {
            let adm = verify(&v, cert).unwrap();
            assert_eq!(&*adm.trust, "lab");
            assert_eq!(adm.pinned.as_deref(), Some(name));
        }
        assert!(v.root_hint_subjects().is_empty());
    }

    #[test]
    fn first_matching_pin_wins() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let v = TrustVerifier::new(&[pinned_source(
            "lab",
            vec![
                entry("first", spki_pin(&a), None),
                entry("second", cert_pin(&a), None),
            ],
            true,
            OverdueAction::Warn,
        )])
        .unwrap();
        assert_eq!(verify(&v, &a).unwrap().pinned.as_deref(), Some("first"));
    }

    #[test]
    fn pin_mismatch() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let rogue = TestCert::self_signed(&LeafSpec::client("rogue")).unwrap();
        let p = pki();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            pinned_source(
                "lab",
                vec![entry("a", cert_pin(&a), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        assert_eq!(rejected(&v, &rogue), (None, Outcome::PinMismatch));
        // Not self-signed and no chain: unknown_issuer even with a pinned source.
        let other = TestCa::root("other").unwrap();
        let c = other.issue(&LeafSpec::client("x")).unwrap();
        assert_eq!(rejected(&v, &c), (None, Outcome::UnknownIssuer));
    }

    #[test]
    fn pinned_expired_and_check_validity_off() {
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let old = TestCert::self_signed(&spec).unwrap();
        let entries = || vec![entry("old", cert_pin(&old), None)];
        let v = TrustVerifier::new(&[pinned_source("lab", entries(), true, OverdueAction::Warn)])
            .unwrap();
        assert_eq!(rejected(&v, &old), (Some("lab".into()), Outcome::Expired));
        let v = TrustVerifier::new(&[pinned_source("lab", entries(), false, OverdueAction::Warn)])
            .unwrap();
        assert_eq!(verify(&v, &old).unwrap().pinned.as_deref(), Some("old"));

        let mut spec = LeafSpec::client("future");
        spec.not_before = OffsetDateTime::now_utc() + Duration::days(2);
        let future = TestCert::self_signed(&spec).unwrap();
        let v = TrustVerifier::new(&[pinned_source(
            "lab",
            vec![entry("future", cert_pin(&future), None)],
            true,
            OverdueAction::Warn,
        )])
        .unwrap();
        assert_eq!(
            rejected(&v, &future),
            (Some("lab".into()), Outcome::NotYetValid)
        );
    }

    #[test]
    fn review_overdue_warn_and_deny() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let today = OffsetDateTime::now_utc().date();
        let overdue = Some(today - Duration::days(1));
        let entries = || {
            vec![
                entry("a", cert_pin(&a), overdue),
                entry(
                    "fresh",
                    Pin::Sha256([7; 32]),
                    Some(today + Duration::days(10)),
                ),
                entry("due-today", Pin::Sha256([8; 32]), Some(today)),
            ]
        };
        let warn =
            TrustVerifier::new(&[pinned_source("lab", entries(), true, OverdueAction::Warn)])
                .unwrap();
        assert_eq!(verify(&warn, &a).unwrap().pinned.as_deref(), Some("a"));
        let overdue_names = warn.overdue_pins(today);
        assert_eq!(overdue_names.len(), 1);
        assert_eq!(&*overdue_names[0].0, "lab");
        assert_eq!(
            overdue_names[0]
                .1
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            vec!["a"]
        );

        let deny =
            TrustVerifier::new(&[pinned_source("lab", entries(), true, OverdueAction::Deny)])
                .unwrap();
        assert_eq!(
            rejected(&deny, &a),
            (Some("lab".into()), Outcome::ReviewOverdue)
        );
    }

    #[test]
    fn mixed_sources_admit_by_the_right_source() {
        let p = pki();
        let other = TestCa::root("partner root").unwrap();
        let ci = TestCert::self_signed(&LeafSpec::client("ci-runner")).unwrap();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            ca_source("partner", &other, vec![]),
            pinned_source(
                "lab",
                vec![entry("ci-runner", cert_pin(&ci), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        ca_admits(
            &v,
            &p.inter.issue(&LeafSpec::client("alice")).unwrap(),
            "internal",
        );
        ca_admits(
            &v,
            &other.issue(&LeafSpec::client("bob")).unwrap(),
            "partner",
        );
        let adm = verify(&v, &ci).unwrap();
        assert_eq!(
            (&*adm.trust, adm.pinned.as_deref()),
            ("lab", Some("ci-runner"))
        );
        assert_eq!(v.root_hint_subjects().len(), 2);

        // A failure of the source that built the chain is reported with that source.
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let c = other.issue(&spec).unwrap();
        assert_eq!(rejected(&v, &c), (Some("partner".into()), Outcome::Expired));

        // A CA that copies the partner root's name with another key: its expired or
        // serverAuth-only certificates were never signed by the partner, so the verifier's
        // first complaint (dates, EKU) is not the partner's failure; they are forgeries of its
        // name, `bad_signature`, as when their dates are fine.
        let impostor = TestCa::root("partner root").unwrap();
        let forged = (Some("partner".into()), Outcome::BadSignature);
        let c = impostor.issue(&spec).unwrap();
        assert_eq!(rejected(&v, &c), forged);
        let mut sa = LeafSpec::client("sa");
        sa.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let c = impostor.issue(&sa).unwrap();
        assert_eq!(rejected(&v, &c), forged);
        let c = impostor.issue(&LeafSpec::client("fine-dates")).unwrap();
        assert_eq!(rejected(&v, &c), forged);
        // ...while the real partner's serverAuth-only certificate is the partner's failure.
        let c = other.issue(&sa).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("partner".into()), Outcome::InvalidUsage)
        );

        let each = v.verify_each(&ci.chain[0], &[], now());
        let names: Vec<_> = each.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["internal", "partner", "lab"]);
        assert!(each[0].1.is_err() && each[1].1.is_err() && each[2].1.is_ok());
    }

    #[test]
    fn classify_failure_without_record() {
        assert_eq!(
            classify_failure(None, Some(&rustls::Error::NoCertificatesPresented)),
            (None, Outcome::NoClientCert)
        );
        assert_eq!(
            classify_failure(None, Some(&rustls::Error::DecryptError)),
            (None, Outcome::ProtocolError)
        );
        assert_eq!(classify_failure(None, None), (None, Outcome::ProtocolError));
        assert_eq!(
            classify_failure(
                None,
                Some(&rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked
                ))
            ),
            (None, Outcome::Revoked)
        );
        let rej = Rejection {
            trust: Some("internal".into()),
            outcome: Outcome::LifetimeExceeded,
            detail: String::new(),
        };
        let err =
            rustls::Error::InvalidCertificate(Outcome::LifetimeExceeded.to_certificate_error());
        assert_eq!(
            classify_failure(Some(Err(rej)), Some(&err)),
            (Some("internal".into()), Outcome::LifetimeExceeded)
        );
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
                    Outcome::LifetimeExceeded | Outcome::ReviewOverdue => Outcome::InvalidCert,
                    o => o,
                }
            );
        }
    }

    // ---- in-memory handshakes ----

    /// The client side never checks the server in these tests: they are about client auth.
    #[derive(Debug)]
    struct AcceptAnyServer;

    impl ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// Presents a fixed chain with a (possibly unrelated) key, without the consistency check
    /// `with_client_auth_cert` would do.
    #[derive(Debug)]
    struct FixedClientCert(Arc<CertifiedKey>);

    impl ResolvesClientCert for FixedClientCert {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    fn listen(server: &TestCert, version: config::TlsVersion) -> config::Listen {
        config::Listen {
            address: "127.0.0.1:0".parse().unwrap(),
            cert_path: PathBuf::from("server.crt"),
            key_path: PathBuf::from("server.key"),
            cert_chain: server.chain.clone(),
            key: Arc::new(PrivateKeyDer::Pkcs8(server.key_der.clone_key())),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            min_tls_version: version,
            handshake_timeout: StdDuration::from_secs(10),
            header_read_timeout: StdDuration::from_secs(10),
            idle_timeout: StdDuration::from_secs(60),
            max_connections: 10,
            max_header_bytes: 65536,
            max_inflight_per_connection: 32,
            session_resumption: false,
            require_sni_match: true,
        }
    }

    fn client_config(
        chain: Vec<CertificateDer<'static>>,
        key: &TestCert,
        tls12: bool,
    ) -> ClientConfig {
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.key_der.clone_key()))
            .unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(CertifiedKey::new(
                chain, signing,
            )))))
    }

    /// Pump bytes both ways until both sides are done; returns the server's error, if any.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Option<rustls::Error> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).unwrap();
                if let Err(e) = server.process_new_packets() {
                    return Some(e);
                }
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                client.read_tls(&mut &buf[..]).unwrap();
                // The client may fail on the server's alert; the server's error is what counts.
                let _ = client.process_new_packets();
            }
            if !client.is_handshaking()
                && !server.is_handshaking()
                && !client.wants_write()
                && !server.wants_write()
            {
                return None;
            }
        }
        panic!("handshake did not finish");
    }

    struct Setup {
        tls: ServerTls,
        alice: TestCert,
        ci: TestCert,
    }

    fn setup(version: config::TlsVersion) -> Setup {
        let p = pki();
        let server = p.inter.issue(&LeafSpec::server("localhost")).unwrap();
        let alice = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let ci = TestCert::self_signed(&LeafSpec::client("ci-runner")).unwrap();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            pinned_source(
                "lab",
                vec![entry("ci-runner", cert_pin(&ci), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        let tls = ServerTls::new(&listen(&server, version), Arc::new(v)).unwrap();
        Setup { tls, alice, ci }
    }

    fn run(tls: &ServerTls, client: ClientConfig) -> (HandshakeRecord, Option<rustls::Error>) {
        let (server_config, record) = tls.for_connection();
        assert!(!server_config.session_storage.can_cache());
        let mut server = ServerConnection::new(server_config).unwrap();
        let mut client =
            ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let err = handshake(&mut client, &mut server);
        (record, err)
    }

    #[test]
    fn handshake_valid_client_is_recorded() {
        for (version, tls12) in [
            (config::TlsVersion::V1_2, false),
            (config::TlsVersion::V1_2, true),
            (config::TlsVersion::V1_3, false),
        ] {
            let s = setup(version);
            let (record, err) = run(
                &s.tls,
                client_config(s.alice.chain.clone(), &s.alice, tls12),
            );
            assert!(err.is_none(), "{err:?}");
            let adm = record.get().unwrap().unwrap();
            assert_eq!((&*adm.trust, adm.pinned), ("internal", None));

            let (record, err) = run(&s.tls, client_config(s.ci.chain.clone(), &s.ci, tls12));
            assert!(err.is_none(), "{err:?}");
            let adm = record.get().unwrap().unwrap();
            assert_eq!(
                (&*adm.trust, adm.pinned.as_deref()),
                ("lab", Some("ci-runner"))
            );
        }
    }

    #[test]
    fn handshake_pinned_cert_with_wrong_key_is_rejected() {
        for tls12 in [false, true] {
            let s = setup(config::TlsVersion::V1_2);
            let other = TestCert::self_signed(&LeafSpec::client("other")).unwrap();
            // ci-runner's certificate, signed with another key.
            let (record, err) = run(&s.tls, client_config(s.ci.chain.clone(), &other, tls12));
            let err = err.expect("handshake must fail");
            let (trust, outcome) = classify_failure(record.get(), Some(&err));
            assert_eq!(outcome, Outcome::BadSignature, "{err:?}");
            assert_eq!(trust.as_deref(), Some("lab"));
        }
    }

    #[test]
    fn handshake_rejected_client_gets_outcome() {
        let s = setup(config::TlsVersion::V1_3);
        let rogue = TestCert::self_signed(&LeafSpec::client("rogue")).unwrap();
        let (record, err) = run(&s.tls, client_config(rogue.chain.clone(), &rogue, false));
        let err = err.expect("handshake must fail");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        );
        assert_eq!(
            classify_failure(record.get(), Some(&err)),
            (None, Outcome::PinMismatch)
        );
    }

    #[test]
    fn handshake_without_client_cert() {
        let s = setup(config::TlsVersion::V1_3);
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_no_client_auth();
        let (record, err) = run(&s.tls, client);
        let err = err.expect("handshake must fail");
        assert_eq!(
            classify_failure(record.get(), Some(&err)),
            (None, Outcome::NoClientCert)
        );
    }

    #[test]
    fn session_resumption_store_is_per_snapshot() {
        let p = pki();
        let server = p.inter.issue(&LeafSpec::server("localhost")).unwrap();
        let mut l = listen(&server, config::TlsVersion::V1_2);
        l.session_resumption = true;
        let v = Arc::new(TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap());
        let a = ServerTls::new(&l, v.clone()).unwrap();
        let b = ServerTls::new(&l, v).unwrap();
        let (a1, _) = a.for_connection();
        let (a2, _) = a.for_connection();
        let (b1, _) = b.for_connection();
        assert!(a1.session_storage.can_cache());
        assert!(a1.ticketer.enabled());
        assert!(Arc::ptr_eq(&a1.session_storage, &a2.session_storage));
        assert!(Arc::ptr_eq(&a1.ticketer, &a2.ticketer));
        assert!(!Arc::ptr_eq(&a1.session_storage, &b1.session_storage));
        assert!(!Arc::ptr_eq(&a1.ticketer, &b1.ticketer));
        assert_eq!(
            a1.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn server_key_mismatch_is_an_error() {
        let p = pki();
        let server = p.inter.issue(&LeafSpec::server("localhost")).unwrap();
        let other = p.inter.issue(&LeafSpec::server("localhost")).unwrap();
        let mut l = listen(&server, config::TlsVersion::V1_2);
        l.key = Arc::new(PrivateKeyDer::Pkcs8(other.key_der.clone_key()));
        let v = Arc::new(TrustVerifier::new(&[]).unwrap());
        assert!(matches!(
            ServerTls::new(&l, v),
            Err(TlsError::ServerCert(_))
        ));
    }

    #[test]
    fn tls13_only_refuses_tls12_client() {
        let s = setup(config::TlsVersion::V1_3);
        let (record, err) = run(&s.tls, client_config(s.alice.chain.clone(), &s.alice, true));
        let err = err.expect("handshake must fail");
        assert_eq!(
            classify_failure(record.get(), Some(&err)),
            (None, Outcome::ProtocolError)
        );
    }
}
