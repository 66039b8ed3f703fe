//! The OCSP protocol layer (SPEC 9.3) against a real responder: `openssl ocsp` behind a small
//! HTTP front on 127.0.0.1 (common/ocsp.rs), driven through certguard's public API: request,
//! ask, check_response and the single-flight cache.

use std::sync::Arc;
use std::time::Duration;

use certguard::devpki::{LeafSpec, TestCa, TestCert};
use certguard::revocation::ocsp::{self, Answer, Cache, CertStatus, Key, OcspError};
use rustls::pki_types::UnixTime;

use crate::common::ocsp::{openssl, refused_url, serial_hex, write, Responder, Signer};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Pki {
    ca: TestCa,
    ca_key: String,
    alice: TestCert,
    bob: TestCert,
    /// Issued by `ca`, EKU OCSPSigning: an authorized delegated responder.
    delegate: TestCert,
    /// Issued by `ca`, EKU clientAuth only.
    not_a_responder: TestCert,
    /// Issued by another CA, EKU OCSPSigning.
    stranger: TestCert,
}

fn responder_spec(cn: &str) -> LeafSpec {
    let mut spec = LeafSpec::client(cn);
    spec.eku = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
    spec
}

impl Pki {
    fn new() -> Pki {
        let root = TestCa::root("ocsp root").unwrap();
        let ca = root.intermediate("ocsp issuing CA").unwrap();
        let other = TestCa::root("other root").unwrap();
        Pki {
            ca_key: ca.key_pem(),
            alice: ca.issue(&LeafSpec::client("alice")).unwrap(),
            bob: ca.issue(&LeafSpec::client("bob")).unwrap(),
            delegate: ca.issue(&responder_spec("ocsp responder")).unwrap(),
            not_a_responder: ca.issue(&LeafSpec::client("ocsp responder")).unwrap(),
            stranger: other.issue(&responder_spec("ocsp responder")).unwrap(),
            ca,
        }
    }
}

/// Ask `url` about `leaf` the way the verifier will: build, POST, check.
async fn status(
    client: &ocsp::HttpClient,
    url: &str,
    leaf: &TestCert,
    issuer: &TestCa,
) -> Result<Answer, OcspError> {
    let req = ocsp::request(&leaf.cert, &issuer.cert)?;
    let body = ocsp::ask(client, url, req, TIMEOUT).await?;
    ocsp::check_response(&body, &leaf.cert, &issuer.cert, UnixTime::now())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn good_revoked_and_unknown_from_the_issuer() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::ca(&p.ca, &p.ca_key), &["-ndays", "1"]).await;
    responder.good(&p.alice);
    let client = ocsp::http_client();
    let url = responder.url();

    let good = status(&client, &url, &p.alice, &p.ca).await.unwrap();
    assert_eq!(good.status, CertStatus::Good);
    assert!(
        (now() - 120..=now() + 5).contains(&good.this_update),
        "{good:?}"
    );
    let next = good.next_update.expect("-ndays 1 sets nextUpdate");
    assert!(
        (now() + 86_000..=now() + 86_500).contains(&next),
        "{good:?}"
    );

    responder.revoke(&p.alice);
    let revoked = status(&client, &url, &p.alice, &p.ca).await.unwrap();
    let CertStatus::Revoked { at } = revoked.status else {
        panic!("expected revoked, got {revoked:?}");
    };
    assert!(
        (now() - 180..=now()).contains(&at),
        "revoked a minute ago: {at}"
    );

    // Not in the index.
    let unknown = status(&client, &url, &p.bob, &p.ca).await.unwrap();
    assert_eq!(unknown.status, CertStatus::Unknown);
    assert_eq!(responder.requests(), 3);
}

#[tokio::test]
async fn without_ndays_there_is_no_next_update() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::ca(&p.ca, &p.ca_key), &[]).await;
    responder.good(&p.alice);
    let answer = status(&ocsp::http_client(), &responder.url(), &p.alice, &p.ca)
        .await
        .unwrap();
    assert_eq!(answer.status, CertStatus::Good);
    assert_eq!(answer.next_update, None);
}

#[tokio::test]
async fn a_delegated_responder_is_accepted() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::cert(&p.delegate), &["-ndays", "1"]).await;
    responder.good(&p.alice);
    responder.revoke(&p.bob);
    let client = ocsp::http_client();
    let alice = status(&client, &responder.url(), &p.alice, &p.ca).await;
    assert_eq!(alice.unwrap().status, CertStatus::Good);
    let bob = status(&client, &responder.url(), &p.bob, &p.ca).await;
    assert!(matches!(bob.unwrap().status, CertStatus::Revoked { .. }));
}

/// An RSA delegated responder made by the openssl CLI (key, CSR, certificate signed by our
/// issuer with EKU OCSPSigning): its PKCS#1 and PSS signatures verify, SHA-1 ones do not.
#[tokio::test]
async fn rsa_responders_pkcs1_and_pss() {
    let p = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "issuer.pem", p.ca.cert_pem.as_bytes());
    write(d, "issuer.key", p.ca_key.as_bytes());
    write(
        d,
        "ext.cnf",
        b"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=OCSPSigning\n",
    );
    write(
        d,
        "leaf.cnf",
        b"authorityInfoAccess=caIssuers;URI:http://ca.test/ca.crt,OCSP;URI:http://ocsp.test:8080/x\n",
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-out",
            "rsa.csr",
            "-subj",
            "/CN=rsa ocsp responder",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "rsa.csr",
            "-CA",
            "issuer.pem",
            "-CAkey",
            "issuer.key",
            "-set_serial",
            "4711",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            "rsa.pem",
        ],
    );
    let cert_pem = std::fs::read_to_string(d.join("rsa.pem")).unwrap();
    // The same CLI adds an AIA OCSP URL to a leaf (rcgen cannot): responder_url finds it.
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "rsa.csr",
            "-CA",
            "issuer.pem",
            "-CAkey",
            "issuer.key",
            "-set_serial",
            "4712",
            "-days",
            "30",
            "-extfile",
            "leaf.cnf",
            "-outform",
            "DER",
            "-out",
            "aia.der",
        ],
    );
    let with_aia =
        rustls::pki_types::CertificateDer::from(std::fs::read(d.join("aia.der")).unwrap());
    assert_eq!(
        ocsp::responder_url(&with_aia).as_deref(),
        Some("http://ocsp.test:8080/x")
    );
    assert_eq!(ocsp::responder_url(&p.alice.cert), None);
    let key_pem = std::fs::read_to_string(d.join("rsa.key")).unwrap();
    let signer = || Signer {
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    };
    let client = ocsp::http_client();
    let pss = [
        "-rsigopt",
        "rsa_padding_mode:pss",
        "-rsigopt",
        "rsa_pss_saltlen:digest",
    ];
    for args in [&["-rmd", "sha256"][..], &["-rmd", "sha384"], &pss] {
        let responder = Responder::start(&p.ca, signer(), args).await;
        responder.revoke(&p.alice);
        // The algorithm openssl really used, as openssl reads it back.
        let req = ocsp::request(&p.alice.cert, &p.ca.cert).unwrap();
        write(d, "resp.der", &responder.respond(&req));
        let text = openssl(
            d,
            &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
        );
        let want = if args == pss {
            "rsassaPss"
        } else {
            "WithRSAEncryption"
        };
        assert!(text.contains(want), "{args:?}: {text}");
        let r = status(&client, &responder.url(), &p.alice, &p.ca).await;
        assert!(
            matches!(
                r,
                Ok(Answer {
                    status: CertStatus::Revoked { .. },
                    ..
                })
            ),
            "{args:?}: {r:?}"
        );
    }
    let responder = Responder::start(&p.ca, signer(), &["-rmd", "sha1"]).await;
    responder.good(&p.alice);
    let r = status(&client, &responder.url(), &p.alice, &p.ca).await;
    assert!(
        matches!(r, Err(OcspError::UnsupportedSignatureAlgorithm)),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_responder_certificate_without_ocsp_signing_is_refused() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::cert(&p.not_a_responder), &[]).await;
    responder.good(&p.alice);
    let r = status(&ocsp::http_client(), &responder.url(), &p.alice, &p.ca).await;
    assert!(
        matches!(
            r,
            Err(OcspError::UnauthorizedSigner(
                webpki::Error::RequiredEkuNotFoundContext(_)
            ))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_response_signed_by_an_unrelated_key_is_refused() {
    let p = Pki::new();
    let client = ocsp::http_client();
    // The signer's certificate (OCSPSigning, but from another CA) comes with the response.
    let with_cert = Responder::start(&p.ca, Signer::cert(&p.stranger), &[]).await;
    with_cert.good(&p.alice);
    let r = status(&client, &with_cert.url(), &p.alice, &p.ca).await;
    assert!(
        matches!(
            r,
            Err(OcspError::UnauthorizedSigner(webpki::Error::UnknownIssuer))
        ),
        "{r:?}"
    );
    // Without it: nothing the signature verifies with.
    let bare = Responder::start(&p.ca, Signer::cert(&p.stranger), &["-resp_no_certs"]).await;
    bare.revoke(&p.alice);
    let r = status(&client, &bare.url(), &p.alice, &p.ca).await;
    assert!(matches!(r, Err(OcspError::BadSignature)), "{r:?}");
    // The delegate of our CA, its certificate left out: unverifiable too.
    let no_chain = Responder::start(&p.ca, Signer::cert(&p.delegate), &["-resp_no_certs"]).await;
    no_chain.good(&p.alice);
    let r = status(&client, &no_chain.url(), &p.alice, &p.ca).await;
    assert!(matches!(r, Err(OcspError::BadSignature)), "{r:?}");
}

#[tokio::test]
async fn responses_are_checked_for_the_certificate_asked_about() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::ca(&p.ca, &p.ca_key), &[]).await;
    responder.revoke(&p.alice);
    let req = ocsp::request(&p.alice.cert, &p.ca.cert).unwrap();
    let body = responder.respond(&req);
    // A valid, signed answer about alice is no answer about bob.
    let r = ocsp::check_response(&body, &p.bob.cert, &p.ca.cert, UnixTime::now());
    assert!(matches!(r, Err(OcspError::NoMatchingResponse)), "{r:?}");
    let r = ocsp::check_response(&body, &p.alice.cert, &p.ca.cert, UnixTime::now());
    assert!(matches!(r.unwrap().status, CertStatus::Revoked { .. }));
    // Truncated anywhere: an error, never a panic or an answer.
    for len in 0..body.len() {
        let r = ocsp::check_response(&body[..len], &p.alice.cert, &p.ca.cert, UnixTime::now());
        assert!(r.is_err(), "truncated to {len}");
    }
}

#[tokio::test]
async fn openssl_reads_our_request() {
    let p = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let req = ocsp::request(&p.alice.cert, &p.ca.cert).unwrap();
    write(dir.path(), "req.der", &req);
    let text = openssl(dir.path(), &["ocsp", "-reqin", "req.der", "-req_text"]);
    assert!(text.contains("Hash Algorithm: sha1"), "{text}");
    assert!(
        text.contains(&format!("Serial Number: {}", serial_hex(&p.alice.serial))),
        "{text}"
    );
}

#[tokio::test]
async fn responder_down_slow_or_failing() {
    let p = Pki::new();
    let client = ocsp::http_client();
    let r = status(&client, &refused_url().await, &p.alice, &p.ca).await;
    assert!(matches!(r, Err(OcspError::Unreachable(_))), "{r:?}");

    let responder = Responder::start(&p.ca, Signer::ca(&p.ca, &p.ca_key), &[]).await;
    responder.good(&p.alice);
    responder.hold();
    let req = ocsp::request(&p.alice.cert, &p.ca.cert).unwrap();
    let started = std::time::Instant::now();
    let r = ocsp::ask(
        &client,
        &responder.url(),
        req.clone(),
        Duration::from_millis(300),
    )
    .await;
    assert!(matches!(r, Err(OcspError::Timeout(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout bounds the wait"
    );
    responder.release();

    let r = ocsp::ask(
        &client,
        &format!("{}missing", responder.url()),
        req.clone(),
        TIMEOUT,
    )
    .await;
    assert!(matches!(r, Err(OcspError::HttpStatus(404))), "{r:?}");
    let https = format!("https://{}/", responder.addr);
    let r = ocsp::ask(&client, &https, req.clone(), TIMEOUT).await;
    assert!(matches!(r, Err(OcspError::BadUrl)), "{r:?}");
    // After all that, the responder still answers.
    let answer = status(&client, &responder.url(), &p.alice, &p.ca).await;
    assert_eq!(answer.unwrap().status, CertStatus::Good);
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // A server that answers every request with 1 MiB + 1 byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let big = bytes::Bytes::from(vec![0u8; ocsp::MAX_RESPONSE_BYTES + 1]);
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(big)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let r = ocsp::ask(
        &ocsp::http_client(),
        &format!("http://{addr}/"),
        vec![0x30, 0x00],
        TIMEOUT,
    )
    .await;
    assert!(matches!(r, Err(OcspError::TooLarge)), "{r:?}");
    server.abort();
}

/// What the verifier's fetch looks like: request, ask, check, as one 'static future.
fn fetch(
    client: &ocsp::HttpClient,
    url: &str,
    leaf: &TestCert,
    issuer: &TestCa,
) -> impl std::future::Future<Output = Result<Answer, OcspError>> + Send + 'static {
    let client = client.clone();
    let url = url.to_owned();
    let leaf = leaf.cert.clone();
    let issuer = issuer.cert.clone();
    async move {
        let req = ocsp::request(&leaf, &issuer)?;
        let body = ocsp::ask(&client, &url, req, TIMEOUT).await?;
        ocsp::check_response(&body, &leaf, &issuer, UnixTime::now())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_share_one_request() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::cert(&p.delegate), &["-ndays", "1"]).await;
    responder.good(&p.alice);
    let client = ocsp::http_client();
    let cache = Cache::new(100, Duration::from_secs(3600), Duration::ZERO);
    let key = Key::new(Arc::from("internal"), &p.alice.cert);

    // The responder holds its answer, so no caller can be served from the cache: all 16 must
    // start or join the one fetch.
    responder.hold();
    let callers = futures_util::future::join_all((0..16).map(|_| {
        let cache = cache.clone();
        let key = key.clone();
        let fetch = fetch(&client, &responder.url(), &p.alice, &p.ca);
        async move { cache.status(&key, fetch).await }
    }));
    let callers = tokio::spawn(callers);
    responder.wait_for_requests(1).await;
    responder.release();
    let results = callers.await.unwrap();
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(a) if a.status == CertStatus::Good)));
    assert_eq!(
        responder.requests(),
        1,
        "one request for 16 concurrent callers"
    );

    // Answered from the cache: no request.
    let again = cache
        .status(&key, fetch(&client, &responder.url(), &p.alice, &p.ca))
        .await;
    assert_eq!(again.unwrap().status, CertStatus::Good);
    assert_eq!(
        cache.get(&key, UnixTime::now()).unwrap().status,
        CertStatus::Good
    );
    assert_eq!(responder.requests(), 1, "a cached answer costs no request");
}

#[tokio::test]
async fn a_revocation_reaches_the_cache_on_refresh() {
    let p = Pki::new();
    let responder = Responder::start(&p.ca, Signer::ca(&p.ca, &p.ca_key), &["-ndays", "1"]).await;
    responder.good(&p.alice);
    let client = ocsp::http_client();
    let cache = Cache::new(100, Duration::from_secs(3600), Duration::ZERO);
    let key = Key::new(Arc::from("internal"), &p.alice.cert);
    let url = responder.url();

    let first = cache
        .status(&key, fetch(&client, &url, &p.alice, &p.ca))
        .await;
    assert_eq!(first.unwrap().status, CertStatus::Good);
    let changes = cache.changes();

    responder.revoke(&p.alice);
    let cached = cache
        .status(&key, fetch(&client, &url, &p.alice, &p.ca))
        .await;
    assert_eq!(cached.unwrap().status, CertStatus::Good, "still cached");
    assert_eq!(responder.requests(), 1);

    assert_eq!(
        cache.keys_due(UnixTime::now(), Duration::ZERO),
        vec![key.clone()]
    );
    let refreshed = cache
        .refresh(&key, fetch(&client, &url, &p.alice, &p.ca))
        .await;
    assert!(matches!(
        refreshed.unwrap().status,
        CertStatus::Revoked { .. }
    ));
    assert_eq!(responder.requests(), 2);
    assert!(matches!(
        cache.get(&key, UnixTime::now()).unwrap().status,
        CertStatus::Revoked { .. }
    ));
    assert!(
        cache.changes() > changes,
        "the change is visible to open connections"
    );
}

#[tokio::test]
async fn responder_down_fails_each_status_without_caching() {
    let p = Pki::new();
    let client = ocsp::http_client();
    let cache = Cache::new(100, Duration::from_secs(3600), Duration::ZERO);
    let key = Key::new(Arc::from("internal"), &p.alice.cert);
    let url = refused_url().await;
    for _ in 0..2 {
        let r = cache
            .status(&key, fetch(&client, &url, &p.alice, &p.ca))
            .await;
        assert!(matches!(r, Err(OcspError::Unreachable(_))), "{r:?}");
    }
    assert_eq!(cache.get(&key, UnixTime::now()), None);
}
