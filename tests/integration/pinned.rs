//! Pinned self-signed trust next to CA trust on one listener.

use certguard::devpki::{LeafSpec, TestCert};

use rustls::pki_types::PrivateKeyDer;

use crate::common::client::mismatched_key_config;
use crate::common::{assert_rejected, sha256_hex, Conn, Env};

fn spki_b64(cert: &TestCert) -> String {
    use base64::Engine as _;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert.as_ref()).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, parsed.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn colons(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn ca_and_pinned_sources_on_one_listener_are_told_apart() {
    let env = Env::new().await;
    let by_sha = TestCert::self_signed(&LeafSpec::client("legacy-batch")).unwrap();
    let by_sha_colons = TestCert::self_signed(&LeafSpec::client("legacy-colons")).unwrap();
    let by_spki = TestCert::self_signed(&LeafSpec::client("rotating-agent")).unwrap();
    // A lab certificate that copies alice's CN must not pass a route for the CA population.
    let mut fake = LeafSpec::client("alice");
    fake.ou = Some("payments".into());
    let impostor = TestCert::self_signed(&fake).unwrap();
    let trust = format!(
        r#"  lab:
    pinned:
      - name: ci-runner
        cert: ci-runner.crt
      - name: legacy-batch
        sha256: "{}"
      - name: legacy-colons
        sha256: "{}"
      - name: rotating-agent
        spki_sha256: "{}"
      - name: impostor
        sha256: "{}"
routes:
"#,
        sha256_hex(by_sha.cert.as_ref()),
        colons(&sha256_hex(by_sha_colons.cert.as_ref())),
        spki_b64(&by_spki),
        sha256_hex(impostor.cert.as_ref()),
    );
    let routes = r#"  - name: partners
    path_prefix: /partners
    upstream: app
    allow:
      - trust: internal
        cn: alice
  - name: lab
    path_prefix: /lab
    upstream: app
    allow:
      - trust: lab
  - name: deploy
    path: /deploy
    upstream: app
    allow:
      - pinned: ci-runner"#;
    let yaml = env.yaml(routes, "").replacen("routes:\n", &trust, 1);
    let proxy = env.start(&yaml).await;
    let open = |cert: &TestCert| {
        Conn::open(
            proxy.listen_addr,
            env.client(cert, &[b"http/1.1"]),
            "localhost",
        )
    };

    let mut alice = open(&env.pki.alice).await.unwrap();
    assert_eq!(alice.get("localhost", "/partners/x").await.0, 200);
    assert_eq!(alice.get("localhost", "/lab/x").await.0, 403);
    let mut imp = open(&impostor)
        .await
        .expect("the impostor is a pinned client");
    assert_eq!(
        imp.get("localhost", "/partners/x").await.0,
        403,
        "same CN, wrong trust source"
    );
    assert_eq!(imp.get("localhost", "/lab/x").await.0, 200);
    for (name, cert) in [
        ("sha256", &by_sha),
        ("sha256 with colons", &by_sha_colons),
        ("spki", &by_spki),
        ("cert", &env.pki.ci),
    ] {
        let mut c = open(cert)
            .await
            .unwrap_or_else(|e| panic!("pinned by {name} should be admitted: {e}"));
        assert_eq!(c.get("localhost", "/lab/x").await.0, 200, "{name}");
    }
    let mut ci = open(&env.pki.ci).await.unwrap();
    assert_eq!(ci.get("localhost", "/deploy").await.0, 200);
    let mut legacy = open(&by_sha).await.unwrap();
    assert_eq!(
        legacy.get("localhost", "/deploy").await.0,
        403,
        "only the ci-runner pin may deploy"
    );
    assert_rejected(
        &proxy,
        &env.client(&env.pki.rogue, &[b"http/1.1"]),
        "none",
        "pin_mismatch",
        "an unpinned self-signed certificate",
    )
    .await;
    // ci-runner's certificate presented by a client without ci-runner's key.
    let stolen = mismatched_key_config(
        &env.pki.root.cert,
        env.pki.ci.chain.clone(),
        PrivateKeyDer::Pkcs8(by_sha.key_der.clone_key()),
    );
    assert_rejected(
        &proxy,
        &stolen,
        "lab",
        "bad_signature",
        "a pinned certificate without its key",
    )
    .await;
    let xfcc = env.upstream.last();
    assert!(xfcc
        .headers
        .get("x-forwarded-client-cert")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(&format!("Hash={}", sha256_hex(env.pki.ci.cert.as_ref()))));
}

#[tokio::test]
async fn pinned_lifecycle_rules_apply_at_the_handshake() {
    let env = Env::new().await;
    let now = time::OffsetDateTime::now_utc();
    let mut spec = LeafSpec::client("old-tool");
    spec.not_before = now - time::Duration::days(30);
    spec.not_after = now - time::Duration::days(1);
    let expired = TestCert::self_signed(&spec).unwrap();
    let routes =
        "  - name: all\n    path_prefix: /\n    upstream: app\n    allow:\n      - trust: lab";
    let trust = |check_validity: bool, action: &str| {
        format!(
            "  lab:\n    check_validity: {check_validity}\n    on_overdue_review: {action}\n    pinned:\n      - name: old-tool\n        sha256: \"{}\"\n      - name: ci-runner\n        cert: ci-runner.crt\n        review_by: 2020-01-01\nroutes:\n",
            sha256_hex(expired.cert.as_ref())
        )
    };
    let strict = env
        .start(
            &env.yaml(routes, "")
                .replacen("routes:\n", &trust(true, "deny"), 1),
        )
        .await;
    let open = |proxy: &certguard::Proxy, cert: &TestCert| {
        let config = env.client(cert, &[b"http/1.1"]);
        let addr = proxy.listen_addr;
        async move { Conn::open(addr, config, "localhost").await }
    };
    assert_rejected(
        &strict,
        &env.client(&expired, &[b"http/1.1"]),
        "lab",
        "expired",
        "an expired pinned certificate",
    )
    .await;
    assert_rejected(
        &strict,
        &env.client(&env.pki.ci, &[b"http/1.1"]),
        "lab",
        "review_overdue",
        "overdue review with deny",
    )
    .await;
    let lax = env
        .start(
            &env.yaml(routes, "")
                .replacen("routes:\n", &trust(false, "warn"), 1),
        )
        .await;
    let mut c = open(&lax, &expired)
        .await
        .expect("check_validity: false admits the expired pin");
    assert_eq!(c.get("localhost", "/x").await.0, 200);
    let mut c = open(&lax, &env.pki.ci)
        .await
        .expect("overdue review with warn is admitted");
    assert_eq!(c.get("localhost", "/x").await.0, 200);
}
