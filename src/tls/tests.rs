//! In-memory handshakes (client and server `Connection`s exchanging bytes directly): what
//! the recording verifier records for each kind of client, session resumption per snapshot,
//! and server config errors.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection, SignatureScheme,
};
use rustls_pki_types::{PrivateKeyDer, ServerName};

use super::accept::classify_failure;
use super::server_config::HandshakeRecord;
use super::testing::*;
use super::{provider, ServerTls, TlsError};
use crate::config;

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
        max_inflight_per_identity: None,
        session_resumption: false,
        require_sni_match: true,
    }
}

fn client_config(chain: Vec<CertificateDer<'static>>, key: &TestCert, tls12: bool) -> ClientConfig {
    client_config_offering(chain, key, tls12, provider())
}

/// A client config whose cipher suites (in their order of preference) are `provider`'s.
fn client_config_offering(
    chain: Vec<CertificateDer<'static>>,
    key: &TestCert,
    tls12: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> ClientConfig {
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

/// The suite a client offering `offered` (in its order of preference) ends up with.
fn negotiated(s: &Setup, tls12: bool, offered: &[rustls::CipherSuite]) -> rustls::CipherSuite {
    let mut offering = (*provider()).clone();
    offering.cipher_suites = offered
        .iter()
        .filter_map(|c| {
            offering
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *c)
                .copied()
        })
        .collect();
    assert_eq!(offering.cipher_suites.len(), offered.len(), "{offered:?}");
    let client = client_config_offering(s.alice.chain.clone(), &s.alice, tls12, Arc::new(offering));
    let (server_config, _record) = s.tls.for_connection();
    let mut server = ServerConnection::new(server_config).unwrap();
    let mut client =
        ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let err = handshake(&mut client, &mut server);
    assert!(err.is_none(), "{offered:?}: {err:?}");
    server.negotiated_cipher_suite().unwrap().suite()
}

#[test]
fn the_server_prefers_aes_128_gcm_and_still_accepts_every_other_suite() {
    use rustls::CipherSuite as C;
    let s = setup(config::TlsVersion::V1_2);
    // A client that prefers AES-256 (rustls' and OpenSSL's default order) gets AES-128.
    let all13 = [
        C::TLS13_AES_256_GCM_SHA384,
        C::TLS13_CHACHA20_POLY1305_SHA256,
        C::TLS13_AES_128_GCM_SHA256,
    ];
    assert_eq!(negotiated(&s, false, &all13), C::TLS13_AES_128_GCM_SHA256);
    let all12 = [
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated(&s, true, &all12),
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    // Without AES-128, the next in the server's order; a single suite is taken as it is.
    assert_eq!(
        negotiated(&s, false, &all13[..2]),
        C::TLS13_AES_256_GCM_SHA384
    );
    for only in all13 {
        assert_eq!(negotiated(&s, false, &[only]), only);
    }
    for only in all12 {
        assert_eq!(negotiated(&s, true, &[only]), only);
    }
}
