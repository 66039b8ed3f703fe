//! The mTLS data path end to end (issue: CA-chain + CRL verification, identity, route policy,
//! forwarding).

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::common::{self, empty, read, Conn, Env};

const ROUTES: &str = r#"  - name: status
    path: /status
    upstream: app
    allow:
      - trust: internal
  - name: admin
    path_prefix: /admin
    upstream: app
    allow:
      - cn: alice
        ou: payments
  - name: api
    path_prefix: /api
    upstream: app
    allow:
      - spiffe_id: "spiffe://test.local/ns/default/sa/alice"
  - name: slow
    path: /slow
    upstream: app
    allow:
      - authenticated: true
  - name: upload
    path: /upload
    upstream: app
    allow:
      - authenticated: true
  - name: trailers
    path: /trailers
    upstream: app
    allow:
      - authenticated: true
  - name: down
    path: /down
    upstream: down
    allow:
      - authenticated: true"#;

fn config(env: &Env, extra: &str) -> String {
    // A second upstream on a port nothing listens on, for 502.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.yaml(ROUTES, extra).replace(
        "admin:\n",
        &format!("  down:\n    url: http://{dead}\n    connect_timeout: 500ms\nadmin:\n"),
    )
}

async fn conn(env: &Env, proxy: &certguard::Proxy, who: &certguard::devpki::TestCert) -> Conn {
    Conn::open(
        proxy.listen_addr,
        env.client(who, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .expect("handshake should succeed")
}

#[tokio::test]
async fn allowed_client_reaches_upstream_with_xfcc() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut c = conn(&env, &proxy, &env.pki.alice).await;
    let (status, _) = c.get("localhost", "/api/orders?id=7").await;
    assert_eq!(status, 200);
    let seen = env.upstream.last();
    assert_eq!(seen.path, "/api/orders?id=7");
    let xfcc = seen
        .headers
        .get("x-forwarded-client-cert")
        .expect("xfcc")
        .to_str()
        .unwrap()
        .to_owned();
    let hash = common::sha256_hex(env.pki.alice.cert.as_ref());
    assert!(xfcc.starts_with(&format!("Hash={hash};")), "xfcc = {xfcc}");
    assert!(
        xfcc.contains("Subject=\"CN=alice,OU=payments\""),
        "xfcc = {xfcc}"
    );
    assert!(
        xfcc.contains("URI=spiffe://test.local/ns/default/sa/alice"),
        "xfcc = {xfcc}"
    );
    assert!(
        xfcc.contains("DNS=alice.billing.svc.cluster.local"),
        "xfcc = {xfcc}"
    );
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), "localhost");
}

#[tokio::test]
async fn authenticated_but_not_allowed_is_403_and_no_route_is_404() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut bob = conn(&env, &proxy, &env.pki.bob).await;
    assert_eq!(
        bob.get("localhost", "/status").await,
        (200, bob_status_body(&env))
    );
    let (status, body) = bob.get("localhost", "/api/orders").await;
    assert_eq!((status, body.as_str()), (403, "forbidden\n"));
    let (status, body) = bob.get("localhost", "/admin").await;
    assert_eq!((status, body.as_str()), (403, "forbidden\n"));
    let (status, body) = bob.get("localhost", "/nothing/here").await;
    assert_eq!((status, body.as_str()), (404, "no route\n"));
    // The denied requests never reached the upstream.
    assert_eq!(env.upstream.seen().len(), 1);
}

fn bob_status_body(env: &Env) -> String {
    // The upstream echoes JSON; only the status code matters here, so fetch what it sent.
    let seen = env.upstream.seen();
    let last = seen.last().expect("upstream saw /status");
    let headers: serde_json::Map<String, serde_json::Value> = last
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    serde_json::json!({ "method": last.method, "path": last.path, "headers": headers }).to_string()
}

#[tokio::test]
async fn bad_certificates_fail_the_handshake() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let p = &env.pki;
    // SPEC 3: a CA source that built a chain reports its own failure under its name; anything
    // else is unknown_issuer with trust="none" (no pinned source here, so a self-signed
    // certificate is unknown_issuer too).
    let cases = [
        ("unknown CA", &p.stranger, "none", "unknown_issuer"),
        ("revoked", &p.revoked, "internal", "revoked"),
        ("expired", &p.expired, "internal", "expired"),
        (
            "not yet valid",
            &p.not_yet_valid,
            "internal",
            "not_yet_valid",
        ),
        (
            "serverAuth-only EKU",
            &p.server_auth_only,
            "internal",
            "invalid_usage",
        ),
        ("self-signed", &p.rogue, "none", "unknown_issuer"),
    ];
    for (what, cert, trust, outcome) in cases {
        let config = env.client(cert, &[b"http/1.1"]);
        common::assert_rejected(&proxy, &config, trust, outcome, what).await;
    }
    common::assert_rejected(
        &proxy,
        &env.anonymous(),
        "none",
        "no_client_cert",
        "no client certificate",
    )
    .await;
    // alice's certificate without alice's key: the handshake signature does not verify.
    let other =
        certguard::devpki::TestCert::self_signed(&certguard::devpki::LeafSpec::client("other"))
            .unwrap();
    let stolen = common::client::mismatched_key_config(
        &p.root.cert,
        p.alice.chain.clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(other.key_der.clone_key()),
    );
    common::assert_rejected(
        &proxy,
        &stolen,
        "internal",
        "bad_signature",
        "certificate without its key",
    )
    .await;
    // Nothing reached the upstream, and a good client still works.
    assert!(env.upstream.seen().is_empty());
    let mut alice = conn(&env, &proxy, &p.alice).await;
    assert_eq!(alice.get("localhost", "/api/x").await.0, 200);
}

#[tokio::test]
async fn max_lifetime_rejects_long_lived_certificates() {
    let env = Env::new().await;
    let yaml = config(&env, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        "    crl: [intermediate.crl, ca.crl]\n    max_lifetime: 90d\n",
    );
    let proxy = env.start(&yaml).await;
    // long_lived lives 401 days, over 90d.
    common::assert_rejected(
        &proxy,
        &env.client(&env.pki.long_lived, &[b"http/1.1"]),
        "internal",
        "lifetime_exceeded",
        "over max_lifetime",
    )
    .await;
    let yaml = config(&env, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        "    crl: [intermediate.crl, ca.crl]\n    max_lifetime: 500d\n",
    );
    let proxy2 = env.start(&yaml).await;
    let mut ok = conn(&env, &proxy2, &env.pki.long_lived).await;
    assert_eq!(ok.get("localhost", "/slow?ms=1").await.0, 200);
}

#[tokio::test]
async fn client_sent_xfcc_never_reaches_upstream() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut c = conn(&env, &proxy, &env.pki.alice).await;
    let req = Request::get("/api/x")
        .header("host", "localhost")
        .header(
            "x-forwarded-client-cert",
            "Hash=deadbeef;Subject=\"CN=admin\"",
        )
        .header("client-cert", ":Zm9v:")
        .header("client-cert-chain", ":Zm9v:")
        .header("x-forwarded-for", "10.0.0.1")
        .body(empty())
        .unwrap();
    let (status, _) = read(c.send(req).await.unwrap()).await;
    assert_eq!(status, 200);
    let seen = env.upstream.last();
    let xfcc: Vec<_> = seen
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .collect();
    assert_eq!(xfcc.len(), 1);
    let xfcc = xfcc[0].to_str().unwrap();
    assert!(
        !xfcc.contains("deadbeef") && !xfcc.contains("CN=admin"),
        "spoofed xfcc leaked: {xfcc}"
    );
    assert!(seen.headers.get("client-cert").is_none());
    assert!(seen.headers.get("client-cert-chain").is_none());
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
}

#[tokio::test]
async fn http2_client_over_alpn() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"h2", b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert!(c.http2, "server should select h2");
    for _ in 0..3 {
        assert_eq!(c.get("localhost", "/api/h2").await.0, 200);
    }
    assert_eq!(c.get("localhost", "/nothing").await.0, 404);
    // gRPC-style trailers survive the proxy.
    let resp = c
        .send(
            Request::get("https://localhost/trailers")
                .header("te", "trailers")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_else(|| {
        panic!(
            "trailers forwarded; upstream saw {:?}",
            env.upstream.last().headers
        )
    });
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn h2c_upstream() {
    let env = Env::new().await;
    let yaml = config(&env, "").replace(
        &format!("url: http://{}", env.upstream.addr),
        &format!("url: h2c://{}", env.upstream.addr),
    );
    let proxy = env.start(&yaml).await;
    let mut c = conn(&env, &proxy, &env.pki.alice).await;
    assert_eq!(c.get("localhost", "/api/via-h2c").await.0, 200);
    let seen = env.upstream.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.path, "/api/via-h2c");
    assert!(seen.headers.get("x-forwarded-client-cert").is_some());
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut c = conn(&env, &proxy, &env.pki.alice).await;
    let (status, body) = c.get("localhost", "/down").await;
    assert_eq!((status, body.as_str()), (502, "bad gateway\n"));
    // The upstream timeout is 2s.
    let (status, body) = c.get("localhost", "/slow?ms=4000").await;
    assert_eq!((status, body.as_str()), (504, "gateway timeout\n"));
    let (status, _) = c.get("localhost", "/slow?ms=10").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn large_streamed_request_body_arrives_intact() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut c = conn(&env, &proxy, &env.pki.alice).await;
    // 12 MiB in 64 KiB chunks of varying content, sent as a stream (chunked).
    let chunk_count = 192;
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut chunks = Vec::with_capacity(chunk_count);
    for i in 0..chunk_count {
        let chunk: Vec<u8> = (0..65536u32)
            .map(|j| ((j * 31 + i as u32 * 7) % 251) as u8)
            .collect();
        hasher.update(&chunk);
        chunks.push(Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))));
    }
    let expected = format!(
        "{} {}",
        chunk_count * 65536,
        common::upstream::hex(hasher.finish().as_ref())
    );
    let stream = futures_util::stream::iter(chunks);
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    let (status, body) = read(c.send(req).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body, expected);
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_allowed_denied_and_rejected() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let ca = env.path("ca.crt");
    let (alice_crt, alice_key) = env.client_files("alice", &env.pki.alice);
    let (bob_crt, bob_key) = env.client_files("bob", &env.pki.bob);
    let (rev_crt, rev_key) = env.client_files("revoked", &env.pki.revoked);
    let port = proxy.listen_addr.port();
    let url = format!("https://localhost:{port}/api/curl");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let run = |crt: Option<(&std::path::Path, &std::path::Path)>| {
        let ca = ca.to_str().unwrap().to_owned();
        let url = url.clone();
        let resolve = resolve.clone();
        let crt = crt.map(|(c, k)| {
            (
                c.to_str().unwrap().to_owned(),
                k.to_str().unwrap().to_owned(),
            )
        });
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "--resolve".to_owned(),
                resolve,
                "--cacert".to_owned(),
                ca,
                "-o".to_owned(),
                "/dev/null".to_owned(),
                "-w".to_owned(),
                "%{http_code}".to_owned(),
            ];
            if let Some((c, k)) = crt {
                args.extend(["--cert".to_owned(), c, "--key".to_owned(), k]);
            }
            args.push(url);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&refs)
        })
    };
    let (code, status) = run(Some((&alice_crt, &alice_key))).await.unwrap();
    assert_eq!((code, status.as_str()), (0, "200"));
    let (code, status) = run(Some((&bob_crt, &bob_key))).await.unwrap();
    assert_eq!((code, status.as_str()), (0, "403"));
    let (code, _) = run(Some((&rev_crt, &rev_key))).await.unwrap();
    assert_ne!(
        code, 0,
        "revoked certificate must fail the handshake under curl"
    );
    let (code, _) = run(None).await.unwrap();
    assert_ne!(
        code, 0,
        "no client certificate must fail the handshake under curl"
    );
    let xfcc = env
        .upstream
        .last()
        .headers
        .get("x-forwarded-client-cert")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(xfcc.starts_with(&format!(
        "Hash={}",
        common::sha256_hex(env.pki.alice.cert.as_ref())
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_allowed_and_denied() {
    let version = std::process::Command::new("curl")
        .arg("-V")
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("HTTP2"),
        "this test needs a curl built with HTTP/2 support"
    );
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let ca = env.path("ca.crt").to_str().unwrap().to_owned();
    let port = proxy.listen_addr.port();
    let mut seen = Vec::new();
    for (name, cert) in [("alice", &env.pki.alice), ("bob", &env.pki.bob)] {
        let (crt, key) = env.client_files(name, cert);
        let args: Vec<String> = [
            "--http2",
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            "--cacert",
            &ca,
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &format!("https://localhost:{port}/api/curl-h2"),
        ]
        .map(str::to_owned)
        .into();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&refs)
        })
        .await
        .unwrap();
        seen.push((name, result));
    }
    assert_eq!(
        seen,
        [
            ("alice", (0, "200 2".to_owned())),
            ("bob", (0, "403 2".to_owned()))
        ],
        "(curl exit code, \"status http-version\")"
    );
    // Only alice's request went through.
    let upstream = env.upstream.seen();
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].path, "/api/curl-h2");
}

#[tokio::test]
async fn check_reports_every_mistake_with_its_key_path() {
    let env = Env::new().await;
    let yaml = config(&env, "")
        .replace("  handshake_timeout: 5s\n", "  handshake_timeout: 5 parsecs\n")
        .replace("      - spiffe_id: \"spiffe://test.local/ns/default/sa/alice\"", "      - spiffe_id: \"spiffe://test.local/ns/default/sa/alice\"\n        trust: nowhere")
        .replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n    colour: blue\n");
    let path = env.write("broken.yaml", &yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen.handshake_timeout",
        "routes[2].allow[0].trust",
        "upstreams.app.colour",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
    // And the valid config passes.
    let good = env.write("good.yaml", &config(&env, ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, "")).await;
    let mut c = conn(&env, &proxy, &env.pki.alice).await;
    for i in 0..20 {
        assert_eq!(c.get("localhost", &format!("/api/{i}")).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(env.upstream.seen().len(), 20);
}
