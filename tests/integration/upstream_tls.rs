//! TLS to upstreams (SPEC 9.10): `https://` upstream URLs verified against `ca` or the system
//! roots, SNI from the URL's host, upstream mTLS with `client_cert`/`client_key`, and failed
//! upstream handshakes answered 502 and counted as `kind="tls"`. The upstream is the test
//! upstream behind tokio-rustls, with a PKI of its own (unrelated to the clients' CA).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certguard::devpki::{LeafSpec, TestCa, TestCert};
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::SupportedProtocolVersion;

use crate::common::{self, identity, pem, Conn, Env, Upstream};

const ROUTES: &str = "  - name: all
    path_prefix: /
    upstream: app
    allow:
      - authenticated: true";

/// The upstream's PKI: its server certificate's CA, and the CA it requires client
/// certificates from, with two client certificates for certguard.
struct UpstreamPki {
    root: TestCa,
    server: TestCert,
    gateway_root: TestCa,
    gateway: TestCert,
    rotated: TestCert,
}

impl UpstreamPki {
    /// Generate it and write `upstream-ca.crt`, `gateway.crt` and `gateway.key` into `env`.
    fn new(env: &Env) -> UpstreamPki {
        let root = TestCa::root("upstream root").unwrap();
        let mut spec = LeafSpec::server("localhost");
        spec.ips = vec!["127.0.0.1".parse().unwrap()];
        let server = root.issue(&spec).unwrap();
        let gateway_root = TestCa::root("gateway root").unwrap();
        let gateway = gateway_root
            .issue(&LeafSpec::client("certguard-gateway"))
            .unwrap();
        let rotated = gateway_root
            .issue(&LeafSpec::client("certguard-gateway-rotated"))
            .unwrap();
        let pki = UpstreamPki {
            root,
            server,
            gateway_root,
            gateway,
            rotated,
        };
        env.write("upstream-ca.crt", &pki.root.cert_pem);
        pki.write_client(env, &pki.gateway);
        pki
    }

    /// (Re)write `gateway.crt` and `gateway.key` as `cert`.
    fn write_client(&self, env: &Env, cert: &TestCert) {
        let chain: String = cert.chain.iter().map(|c| pem(c)).collect();
        env.write("gateway.crt", &chain);
        env.write("gateway.key", &cert.key_pem);
    }

    /// The upstream's TLS config: its server certificate, ALPN h2 and http/1.1, and when
    /// `client_ca` is given a client certificate from it required.
    fn server_config(
        &self,
        client_ca: Option<&TestCa>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.clone()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let (chain, key) = identity(&self.server);
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The standard test config with the upstream `app` replaced by `upstream` (YAML lines at
/// four spaces, `url` first).
fn config(env: &Env, upstream: &str) -> String {
    let plain = format!("    url: http://{}\n", env.upstream.addr);
    let yaml = env.yaml(ROUTES, "");
    assert!(yaml.contains(&plain));
    yaml.replace(&plain, upstream)
}

/// GET `path` through the proxy as alice, connecting by IP address (so the client sends no SNI
/// and its Host may be anything) with Host `host`.
async fn get(env: &Env, proxy: &certguard::Proxy, host: &str, path: &str) -> (u16, String) {
    let mut conn = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "127.0.0.1",
    )
    .await
    .expect("the proxy admits alice");
    conn.get(host, path).await
}

/// `certguard_upstream_errors_total{upstream="app", kind}`.
async fn upstream_errors(proxy: &certguard::Proxy, kind: &str) -> f64 {
    let text = common::scrape(proxy).await;
    common::metric(
        &text,
        "certguard_upstream_errors_total",
        &[("upstream", "app"), ("kind", kind)],
    )
}

/// Assert that the only upstream errors counted so far are `tls` ones, `n` of them.
async fn assert_tls_errors(proxy: &certguard::Proxy, n: f64) {
    assert_eq!(upstream_errors(proxy, "tls").await, n, "kind=tls");
    for other in ["connect", "reset", "protocol", "timeout"] {
        assert_eq!(upstream_errors(proxy, other).await, 0.0, "kind={other}");
    }
}

#[tokio::test]
async fn verified_upstream_gets_the_request_with_sni_from_the_url_host() {
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    let upstream = Upstream::start_tls(pki.server_config(None, &[&TLS13, &TLS12])).await;
    let yaml = config(
        &env,
        &format!(
            "    url: https://localhost:{}\n    ca: upstream-ca.crt\n",
            upstream.addr.port()
        ),
    );
    let proxy = env.start(&yaml).await;
    let (status, body) = get(&env, &proxy, "orders.example", "/orders/7?x=1").await;
    assert_eq!(status, 200, "{body}");
    let seen = upstream.last();
    assert_eq!(seen.path, "/orders/7?x=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
    // Host is the one policy judged (SPEC 4.5); SNI is the URL's host, not the client's.
    assert_eq!(seen.headers["host"], "orders.example");
    assert!(seen.headers.contains_key("x-forwarded-client-cert"));
    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    let h = &handshakes[0];
    assert_eq!(h.sni.as_deref(), Some("localhost"));
    assert_eq!(h.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(h.client_chain.is_empty(), "no client_cert configured");

    // A second request reuses the pooled TLS connection.
    assert_eq!(get(&env, &proxy, "orders.example", "/again").await.0, 200);
    assert_eq!(upstream.handshakes().len(), 1);
    assert_eq!(upstream.last().path, "/again");
    assert_tls_errors(&proxy, 0.0).await;
}

#[tokio::test]
async fn an_ip_address_url_sends_no_sni_and_is_checked_against_the_ip_san() {
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    let upstream = Upstream::start_tls(pki.server_config(None, &[&TLS13])).await;
    let yaml = config(
        &env,
        &format!(
            "    url: https://{}\n    ca: upstream-ca.crt\n",
            upstream.addr
        ),
    );
    let proxy = env.start(&yaml).await;
    assert_eq!(get(&env, &proxy, "localhost", "/ip").await.0, 200);
    assert_eq!(upstream.handshakes()[0].sni, None);

    // The same upstream under a certificate without that IP SAN is refused.
    let mut spec = LeafSpec::server("localhost");
    spec.ips.clear();
    let dns_only = pki.root.issue(&spec).unwrap();
    let (chain, key) = identity(&dns_only);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let other = Upstream::start_tls(Arc::new(config)).await;
    let yaml = config_for(&env, &format!("https://{}", other.addr));
    let proxy = env.start(&yaml).await;
    assert_eq!(get(&env, &proxy, "localhost", "/ip").await.0, 502);
    assert_tls_errors(&proxy, 1.0).await;
    assert!(other.seen().is_empty());
}

/// [`config`] for `url` verified with `upstream-ca.crt`.
fn config_for(env: &Env, url: &str) -> String {
    config(env, &format!("    url: {url}\n    ca: upstream-ca.crt\n"))
}

#[tokio::test]
async fn an_upstream_certificate_from_another_ca_is_a_502_counted_as_tls() {
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    let upstream = Upstream::start_tls(pki.server_config(None, &[&TLS13, &TLS12])).await;
    // ca.crt is the clients' root: it did not issue the upstream's certificate.
    let yaml = config(
        &env,
        &format!(
            "    url: https://localhost:{}\n    ca: ca.crt\n",
            upstream.addr.port()
        ),
    );
    let proxy = env.start(&yaml).await;
    let (status, body) = get(&env, &proxy, "localhost", "/secret").await;
    assert_eq!(status, 502);
    // The client learns nothing about why.
    assert!(!body.contains("certificate"), "{body}");
    assert_tls_errors(&proxy, 1.0).await;
    let text = common::scrape(&proxy).await;
    assert_eq!(
        common::metric(
            &text,
            "certguard_requests_total",
            &[
                ("route", "all"),
                ("decision", "allowed"),
                ("reason", "upstream_error"),
                ("code", "502")
            ]
        ),
        1.0
    );
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");
    assert!(upstream.handshakes().is_empty());
    // certguard aborted the handshake (with an alert the upstream reports).
    wait_for(|| !upstream.failed_handshakes().is_empty()).await;
}

#[tokio::test]
async fn upstream_mtls_presents_the_configured_client_certificate() {
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    let upstream =
        Upstream::start_tls(pki.server_config(Some(&pki.gateway_root), &[&TLS13, &TLS12])).await;
    let url = format!("https://localhost:{}", upstream.addr.port());
    let yaml = config(
        &env,
        &format!(
            "    url: {url}\n    ca: upstream-ca.crt\n    client_cert: gateway.crt\n    client_key: gateway.key\n"
        ),
    );
    let proxy = env.start(&yaml).await;
    let (status, body) = get(&env, &proxy, "localhost", "/mtls").await;
    assert_eq!(status, 200, "{body}");
    let h = &upstream.handshakes()[0];
    assert_eq!(h.client_chain.first(), Some(&pki.gateway.cert));
    assert_eq!(h.sni.as_deref(), Some("localhost"));
    assert_eq!(upstream.last().path, "/mtls");
    assert_tls_errors(&proxy, 0.0).await;
}

/// Without `client_cert`, an upstream that requires one refuses the handshake: 502 with
/// `kind="tls"`, under TLS 1.3 (the refusal arrives as an alert after certguard's side of the
/// handshake is done, on its first read) and TLS 1.2 (during the handshake).
#[tokio::test]
async fn an_upstream_requiring_a_client_certificate_refuses_certguard_without_one() {
    for (version, name) in [(&TLS13, "TLS 1.3"), (&TLS12, "TLS 1.2")] {
        let env = Env::new().await;
        let pki = UpstreamPki::new(&env);
        let upstream =
            Upstream::start_tls(pki.server_config(Some(&pki.gateway_root), &[version])).await;
        let yaml = config_for(&env, &format!("https://localhost:{}", upstream.addr.port()));
        let proxy = env.start(&yaml).await;
        let (status, _) = get(&env, &proxy, "localhost", "/mtls").await;
        assert_eq!(status, 502, "{name}");
        assert_tls_errors(&proxy, 1.0).await;
        assert!(upstream.seen().is_empty(), "{name}: no request got through");
        wait_for(|| !upstream.failed_handshakes().is_empty()).await;
        assert!(upstream.handshakes().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn an_upstream_that_never_completes_the_handshake_is_a_502_after_connect_timeout() {
    let env = Env::new().await;
    // Accepts TCP connections and never answers the ClientHello.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    // connect_timeout 1s (also the handshake's limit), timeout 2s (would be a 504).
    let yaml = config(&env, &format!("    url: https://{addr}\n    ca: ca.crt\n"));
    let proxy = env.start(&yaml).await;
    let started = Instant::now();
    let (status, _) = get(&env, &proxy, "localhost", "/").await;
    let took = started.elapsed();
    held.abort();
    assert_eq!(status, 502);
    // Cut at connect_timeout: a 502, where waiting for `timeout` would have been a 504.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert_tls_errors(&proxy, 1.0).await;
}

/// A reload that changes the contents of `ca`, `client_cert` or `client_key` (same paths)
/// rebuilds the upstream's client: new connections use the new material at once.
#[tokio::test]
async fn reload_rebuilds_the_client_when_the_tls_files_change() {
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    let upstream = Upstream::start_tls(pki.server_config(Some(&pki.gateway_root), &[&TLS13])).await;
    let yaml = config(
        &env,
        &format!(
            "    url: https://localhost:{}\n    ca: upstream-ca.crt\n    client_cert: gateway.crt\n    client_key: gateway.key\n",
            upstream.addr.port()
        ),
    );
    let proxy = env.start(&yaml).await;
    assert_eq!(get(&env, &proxy, "localhost", "/one").await.0, 200);
    // A reload that changes nothing keeps the pool: no new handshake.
    proxy.reload().unwrap();
    assert_eq!(get(&env, &proxy, "localhost", "/same").await.0, 200);
    assert_eq!(upstream.handshakes().len(), 1);

    pki.write_client(&env, &pki.rotated);
    proxy.reload().unwrap();
    assert_eq!(get(&env, &proxy, "localhost", "/two").await.0, 200);
    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 2, "{handshakes:?}");
    assert_eq!(handshakes[1].client_chain.first(), Some(&pki.rotated.cert));

    // The CA bundle now names a CA that did not issue the upstream's certificate.
    env.write("upstream-ca.crt", &env.pki.root.cert_pem);
    proxy.reload().unwrap();
    assert_eq!(get(&env, &proxy, "localhost", "/three").await.0, 502);
    assert_tls_errors(&proxy, 1.0).await;
    assert_eq!(upstream.last().path, "/two");
}

/// Without `ca` the system roots verify the upstream: the binary with SSL_CERT_FILE (which
/// replaces the system store for rustls-native-certs, as for OpenSSL) naming the upstream's CA
/// reaches it, and with no usable roots at all `check` and `run` refuse the config.
#[tokio::test]
async fn without_ca_the_system_roots_verify_the_upstream() {
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    let upstream = Upstream::start_tls(pki.server_config(None, &[&TLS13])).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = config(
        &env,
        &format!("    url: https://localhost:{}\n", upstream.addr.port()),
    )
    .replace(
        "  address: \"127.0.0.1:0\"\n  cert:",
        &format!("  address: \"127.0.0.1:{port}\"\n  cert:"),
    );
    let path = env.write("certguard.yaml", &yaml);
    let bin = env!("CARGO_BIN_EXE_certguard");

    // No usable roots: a config error `check` reports, and `run` does not start.
    let empty = env.write("no-roots.pem", "");
    for command in ["check", "run"] {
        let mut child = Command::new(bin)
            .args([command, "-c"])
            .arg(&path)
            .env("SSL_CERT_FILE", &empty)
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("`certguard {command}` without system roots did not exit");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{command}: {text}");
        assert!(
            text.contains("upstream") && text.contains("no usable system root certificates"),
            "{command}: {text}"
        );
    }

    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(&path)
        .env("SSL_CERT_FILE", env.path("upstream-ca.crt"))
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("verified against the system root certificates"),
        "{text}"
    );

    for (roots, want) in [
        (env.path("upstream-ca.crt"), 200),
        // The clients' root did not issue the upstream's certificate.
        (env.path("ca.crt"), 502),
    ] {
        let mut child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&path)
            .env("SSL_CERT_FILE", &roots)
            .env_remove("SSL_CERT_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match Conn::open(
                addr,
                env.client(&env.pki.alice, &[b"http/1.1"]),
                "127.0.0.1",
            )
            .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("binary did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (status, _) = conn.get("localhost", "/system").await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status, want, "roots {}", roots.display());
    }
    assert_eq!(upstream.seen().len(), 1);
}

/// `openssl s_server -www` on 127.0.0.1, killed on drop.
struct SServer {
    child: std::process::Child,
    port: u16,
}

impl SServer {
    fn start(dir: &std::path::Path, args: &[&str]) -> SServer {
        use std::io::BufRead as _;
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-www"])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("ACCEPT ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(10)) else {
            let _ = child.kill();
            panic!("openssl s_server {args:?} did not start");
        };
        let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        SServer { child, port }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OpenSSL as the upstream (`openssl s_server -www` answers with a status page that shows the
/// client certificate it got), requiring a client certificate from the gateway root: with
/// `client_cert` the page names certguard's certificate; without, a 502 counted as `tls`.
#[tokio::test]
async fn openssl_s_server_as_the_upstream() {
    common::ocsp::openssl_available();
    let env = Env::new().await;
    let pki = UpstreamPki::new(&env);
    env.write("upstream.crt", &pki.server.cert_pem);
    env.write("upstream.key", &pki.server.key_pem);
    env.write("gateway-root.crt", &pki.gateway_root.cert_pem);
    for version in ["-tls1_3", "-tls1_2"] {
        let server = SServer::start(
            env.dir.path(),
            &[
                version,
                "-cert",
                "upstream.crt",
                "-key",
                "upstream.key",
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
                "gateway-root.crt",
            ],
        );
        let url = format!("https://localhost:{}", server.port);
        let with_cert = config(
            &env,
            &format!(
                "    url: {url}\n    ca: upstream-ca.crt\n    client_cert: gateway.crt\n    client_key: gateway.key\n"
            ),
        );
        let proxy = env.start(&with_cert).await;
        let (status, body) = get(&env, &proxy, "localhost", "/").await;
        assert_eq!(status, 200, "{version}: {body}");
        assert!(body.contains("Client certificate"), "{version}: {body}");
        assert!(
            body.contains("Subject: CN=certguard-gateway"),
            "{version}: {body}"
        );
        assert_tls_errors(&proxy, 0.0).await;

        let proxy = env.start(&config_for(&env, &url)).await;
        let (status, body) = get(&env, &proxy, "localhost", "/").await;
        assert_eq!(status, 502, "{version}: {body}");
        assert_tls_errors(&proxy, 1.0).await;
    }
}

/// Poll `done` until it holds, for at most 5 seconds.
async fn wait_for(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in 5s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
