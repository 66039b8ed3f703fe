//! Fault injection: upstreams that fail in the ways real ones do (close mid-response, answer
//! garbage, accept and never answer), certificate material that breaks during a reload (a CRL
//! truncated, deleted or replaced by something else; a server key that does not match its
//! certificate), and clients that break the TLS handshake (a garbage record, a ClientHello and
//! then silence, a close mid-handshake). Each fault must get its own status or outcome label,
//! leave the last good state serving, and leave no connection counted as open.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{client, handshakes_since, metric, scrape, Conn, Env};

/// How a [`FaultyUpstream`] treats every request it receives.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Send half a response head, then close.
    CloseInHead,
    /// Send a complete head announcing 1000 body bytes, send 10, then close.
    CloseInBody,
    /// Answer bytes that are not HTTP.
    Garbage,
    /// Read the request and never answer (keep the socket open).
    Silent,
    /// Close as soon as the request has arrived, without a byte of answer.
    CloseAtOnce,
}

/// A raw TCP "upstream" that misbehaves in one way; it counts the requests it received.
struct FaultyUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyUpstream {
    async fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Sockets of a silent upstream stay open until the test ends.
            let mut held = Vec::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                if !read_head(&mut tcp).await {
                    continue;
                }
                match fault {
                    Fault::CloseInHead => {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
                            .await;
                    }
                    Fault::CloseInBody => {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                            .await;
                        let _ = tcp.flush().await;
                        // Let the proxy relay the head and the first bytes before the close.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Fault::Garbage => {
                        let _ = tcp
                            .write_all(b"\x16\x03\x01\x02\x00\xff\xfe garbage, not HTTP\r\n\r\n")
                            .await;
                    }
                    Fault::Silent => {
                        held.push(tcp);
                        continue;
                    }
                    Fault::CloseAtOnce => {}
                }
                drop(tcp);
            }
        });
        FaultyUpstream { addr, task }
    }
}

/// Read one request head (up to the blank line); false if the peer closed first.
async fn read_head(tcp: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    true
}

const ROUTES: &str = r#"  - name: close-in-head
    path_prefix: /close-in-head
    upstream: close_in_head
    allow:
      - authenticated: true
  - name: close-in-body
    path_prefix: /close-in-body
    upstream: close_in_body
    allow:
      - authenticated: true
  - name: garbage
    path_prefix: /garbage
    upstream: garbage
    allow:
      - authenticated: true
  - name: silent
    path_prefix: /silent
    upstream: silent
    allow:
      - authenticated: true
  - name: close-at-once
    path_prefix: /close-at-once
    upstream: close_at_once
    allow:
      - authenticated: true
  - name: any
    path_prefix: /
    upstream: app
    allow:
      - authenticated: true"#;

/// Poll `f` until it returns true, for up to 10 seconds.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Wait until `certguard_connections_active` is back to 0.
async fn no_connection_open(proxy: &certguard::Proxy) {
    eventually("certguard_connections_active returns to 0", || async {
        metric(&scrape(proxy).await, "certguard_connections_active", &[]) == 0.0
    })
    .await;
}

fn upstream_errors(text: &str, upstream: &str, kind: &str) -> f64 {
    metric(
        text,
        "certguard_upstream_errors_total",
        &[("upstream", upstream), ("kind", kind)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upstreams_get_502_or_504_with_their_kind() {
    let env = Env::new().await;
    let mut upstreams = String::from("upstreams:\n");
    let mut faulty = Vec::new();
    for (name, fault) in [
        ("close_in_head", Fault::CloseInHead),
        ("close_in_body", Fault::CloseInBody),
        ("garbage", Fault::Garbage),
        ("silent", Fault::Silent),
        ("close_at_once", Fault::CloseAtOnce),
    ] {
        let up = FaultyUpstream::start(fault).await;
        upstreams.push_str(&format!(
            "  {name}:\n    url: http://{}\n    connect_timeout: 1s\n    timeout: 700ms\n",
            up.addr
        ));
        faulty.push(up);
    }
    let yaml = env.yaml(ROUTES, "").replacen("upstreams:\n", &upstreams, 1);
    let proxy = env.start(&yaml).await;

    for http2 in [false, true] {
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let proto = if http2 { "h2" } else { "http/1.1" };
        // Each failure is answered by certguard: a fresh connection per request, since an
        // HTTP/1.1 connection may be closed after a 502.
        for (path, upstream, status, kind) in [
            ("/close-in-head", "close_in_head", 502, "reset"),
            ("/garbage", "garbage", 502, "protocol"),
            ("/silent", "silent", 504, "timeout"),
            ("/close-at-once", "close_at_once", 502, "reset"),
        ] {
            let before = upstream_errors(&scrape(&proxy).await, upstream, kind);
            let mut c = Conn::open(
                proxy.listen_addr,
                env.client(&env.pki.alice, alpn),
                "localhost",
            )
            .await
            .unwrap();
            let started = Instant::now();
            let (got, body) = c.get("localhost", path).await;
            assert_eq!(got, status, "{proto} {path}: {body}");
            if status == 504 {
                assert!(
                    started.elapsed() >= Duration::from_millis(600),
                    "504 before the upstream timeout"
                );
            }
            let text = scrape(&proxy).await;
            assert_eq!(
                upstream_errors(&text, upstream, kind),
                before + 1.0,
                "{proto} {path}: one upstream error of kind {kind}"
            );
            // The connection still serves after certguard answered the failure itself.
            if http2 {
                assert_eq!(
                    c.get("localhost", "/ok").await.0,
                    200,
                    "{proto} after {path}"
                );
            }
        }

        // Closed mid-body: the head (200) was already relayed; the client must see the body
        // fail, never a short body that looks complete. The upstream's failure is counted
        // like one before the head.
        let before = upstream_errors(&scrape(&proxy).await, "close_in_body", "reset");
        let mut c = Conn::open(
            proxy.listen_addr,
            env.client(&env.pki.alice, alpn),
            "localhost",
        )
        .await
        .unwrap();
        let req = if http2 {
            http::Request::get("https://localhost/close-in-body")
                .body(crate::common::empty())
                .unwrap()
        } else {
            http::Request::get("/close-in-body")
                .header("host", "localhost")
                .body(crate::common::empty())
                .unwrap()
        };
        let resp = c.send(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{proto}: the head arrives first");
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::collect(resp.into_body()),
        )
        .await
        .expect("the truncated body must end, not hang");
        assert!(
            body.is_err(),
            "{proto}: a body cut by the upstream must fail at the client"
        );
        assert_eq!(
            upstream_errors(&scrape(&proxy).await, "close_in_body", "reset"),
            before + 1.0,
            "{proto}: an upstream that closes mid-body is one upstream error of kind reset"
        );
    }

    // The requests that failed are counted with their route and code.
    let text = scrape(&proxy).await;
    for (route, code) in [
        ("close-in-head", "502"),
        ("garbage", "502"),
        ("silent", "504"),
        ("close-at-once", "502"),
    ] {
        assert_eq!(
            metric(
                &text,
                "certguard_requests_total",
                &[
                    ("route", route),
                    ("decision", "allowed"),
                    ("reason", "upstream_error"),
                    ("code", code)
                ]
            ),
            2.0,
            "{route}: one per protocol"
        );
    }
    drop(faulty);
    no_connection_open(&proxy).await;
}

/// A config whose trust source `internal` uses intermediate.crl (listing `revoked`).
fn crl_config(env: &Env) -> String {
    env.yaml(
        "  - name: any\n    path_prefix: /\n    upstream: app\n    allow:\n      - authenticated: true",
        "",
    )
}

async fn admitted(env: &Env, proxy: &certguard::Proxy, who: &certguard::devpki::TestCert) -> bool {
    client::admitted(
        proxy.listen_addr,
        &env.client(who, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .is_ok()
}

/// Assert that a reload now fails, is counted, keeps the generation, and that the last good
/// trust state still serves: alice admitted, `revoked` still refused.
async fn reload_is_rejected(env: &Env, proxy: &certguard::Proxy, what: &str, expect: &str) {
    let generation = proxy.generation();
    let before = metric(
        &scrape(proxy).await,
        "certguard_reloads_total",
        &[("result", "failure")],
    );
    let err = proxy
        .reload()
        .expect_err(&format!("{what}: the reload must be rejected"))
        .to_string();
    assert!(
        err.contains(expect),
        "{what}: the error names the problem ({expect:?}): {err}"
    );
    assert_eq!(proxy.generation(), generation, "{what}: generation kept");
    let text = scrape(proxy).await;
    assert_eq!(
        metric(&text, "certguard_reloads_total", &[("result", "failure")]),
        before + 1.0,
        "{what}: the failure is counted"
    );
    assert_eq!(
        metric(&text, "certguard_config_generation", &[]),
        generation as f64
    );
    assert!(admitted(env, proxy, &env.pki.alice).await, "{what}: alice");
    assert!(
        !admitted(env, proxy, &env.pki.revoked).await,
        "{what}: the last good CRL still revokes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_crl_is_rejected_on_reload_and_the_last_good_one_keeps_serving() {
    let env = Env::new().await;
    let proxy = env.start(&crl_config(&env)).await;
    assert!(admitted(&env, &proxy, &env.pki.alice).await);
    assert!(!admitted(&env, &proxy, &env.pki.revoked).await);
    let good = std::fs::read_to_string(env.path("intermediate.crl")).unwrap();

    // Truncated mid-file (a writer that was interrupted, a full disk).
    env.write("intermediate.crl", &good[..good.len() / 2]);
    reload_is_rejected(&env, &proxy, "truncated PEM CRL", "intermediate.crl").await;

    // Truncated DER.
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(good.as_bytes()).unwrap()
    };
    std::fs::write(env.path("intermediate.crl"), &der[..der.len() - 7]).unwrap();
    reload_is_rejected(&env, &proxy, "truncated DER CRL", "intermediate.crl").await;

    // Deleted.
    std::fs::remove_file(env.path("intermediate.crl")).unwrap();
    reload_is_rejected(&env, &proxy, "deleted CRL", "intermediate.crl").await;

    // Replaced by something that is not a CRL: a certificate, then plain text.
    env.write("intermediate.crl", &env.pki.alice.cert_pem);
    reload_is_rejected(
        &env,
        &proxy,
        "certificate instead of a CRL",
        "intermediate.crl",
    )
    .await;
    env.write("intermediate.crl", "not a CRL at all\n");
    reload_is_rejected(&env, &proxy, "text instead of a CRL", "intermediate.crl").await;

    // Repaired: the reload goes through, and a new revocation takes effect.
    let generation = proxy.generation();
    env.write_crls(&[&env.pki.revoked, &env.pki.bob]);
    assert!(proxy.reload().unwrap() > generation);
    assert!(!admitted(&env, &proxy, &env.pki.bob).await);
    assert!(admitted(&env, &proxy, &env.pki.alice).await);
    no_connection_open(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_key_that_does_not_match_its_certificate_is_refused() {
    let env = Env::new().await;
    let yaml = crl_config(&env);
    let other = env
        .pki
        .inter
        .issue(&certguard::devpki::LeafSpec::server("localhost"))
        .unwrap();

    // At start: the config is refused with the key path and the reason.
    let good_key = std::fs::read_to_string(env.path("server.key")).unwrap();
    env.write("server.key", &other.key_pem);
    let path = env.write("certguard.yaml", &yaml);
    let err = certguard::config::Config::load(&path)
        .expect_err("a mismatched key must be refused")
        .to_string();
    assert!(
        err.contains("listen.key") && err.contains("does not match"),
        "{err}"
    );
    // The real binary refuses to start, says why, and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(["run", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started with a mismatched key");
    assert!(
        format!("{stderr}{stdout}").contains("does not match the certificate"),
        "the error is stated: {stderr}{stdout}"
    );

    // On reload: rejected, counted, and the running certificate keeps serving.
    env.write("server.key", &good_key);
    let proxy = env.start(&yaml).await;
    let generation = proxy.generation();
    env.write("server.key", &other.key_pem);
    let err = proxy
        .reload()
        .expect_err("a mismatched key must be rejected on reload")
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(proxy.generation(), generation);
    assert_eq!(
        metric(
            &scrape(&proxy).await,
            "certguard_reloads_total",
            &[("result", "failure")]
        ),
        1.0
    );
    let tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned()),
        Some(env.pki.server.cert.clone()),
        "the last good certificate is still presented"
    );
    drop(tls);
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(c.get("localhost", "/x").await.0, 200);
    drop(c);
    no_connection_open(&proxy).await;
}

/// The bytes of a real ClientHello (what rustls sends first) for a client presenting alice.
fn client_hello(env: &Env) -> Vec<u8> {
    let config: Arc<rustls::ClientConfig> = env.client(&env.pki.alice, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_handshakes_get_their_outcome_and_release_their_connection() {
    let env = Env::new().await;
    let yaml =
        crl_config(&env).replace("  handshake_timeout: 5s\n", "  handshake_timeout: 500ms\n");
    let proxy = env.start(&yaml).await;
    let hello = client_hello(&env);

    // (what, bytes to send, then close?, expected outcome)
    let garbage_record: &[u8] = b"\x17\x03\x03\x00\x10AAAAAAAAAAAAAAAA";
    let bad_content_type: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xff";
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "application data record before any handshake",
            garbage_record.to_vec(),
            false,
            "protocol_error",
        ),
        (
            "not a TLS record at all",
            bad_content_type.to_vec(),
            false,
            "protocol_error",
        ),
        (
            "a ClientHello with a corrupted body",
            {
                let mut h = hello.clone();
                for b in h.iter_mut().skip(9).take(40) {
                    *b ^= 0x5a;
                }
                h
            },
            false,
            "protocol_error",
        ),
        (
            "a ClientHello and then silence",
            hello.clone(),
            false,
            "timeout",
        ),
        (
            "half a ClientHello and then silence",
            hello[..hello.len() / 2].to_vec(),
            false,
            "timeout",
        ),
        (
            "half a ClientHello and then close",
            hello[..hello.len() / 2].to_vec(),
            true,
            "protocol_error",
        ),
        (
            "a ClientHello and then close",
            hello.clone(),
            true,
            "protocol_error",
        ),
    ];
    for (what, bytes, close, outcome) in cases {
        let before = scrape(&proxy).await;
        let mut tcp = TcpStream::connect(proxy.listen_addr).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        if close {
            // Let the server take the bytes in before the close (when they are a whole
            // ClientHello it answers with its flight; a close then is mid-handshake).
            if bytes.len() == hello.len() {
                let mut first = [0u8; 5];
                tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut first))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(first[0], 0x16, "{what}: the server's handshake flight");
            }
            drop(tcp);
        } else {
            // Whatever the server answers, it must close the connection by itself.
            let mut sink = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
            assert!(
                closed.is_ok(),
                "{what}: the server must close the connection"
            );
        }
        assert_eq!(
            handshakes_since(&proxy, &before, 1.0).await,
            vec![("none".to_owned(), outcome.to_owned(), 1.0)],
            "{what}"
        );
        no_connection_open(&proxy).await;
    }

    // A real client that gives up in the middle: the server has sent its flight, the client
    // closes instead of sending its certificate.
    let before = scrape(&proxy).await;
    let config = env.client(&env.pki.alice, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(proxy.listen_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.wants_write() {
        conn.write_tls(&mut tcp).unwrap();
    }
    // Read the server's flight until the client would answer with its certificate.
    while !conn.wants_write() {
        conn.read_tls(&mut tcp).unwrap();
        conn.process_new_packets().unwrap();
    }
    drop(tcp);
    assert_eq!(
        handshakes_since(&proxy, &before, 1.0).await,
        vec![("none".to_owned(), "protocol_error".to_owned(), 1.0)],
        "a client that closes instead of sending its certificate"
    );
    no_connection_open(&proxy).await;

    // The listener is unharmed: a real client still gets through.
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(c.get("localhost", "/x").await.0, 200);
    drop(c);
    no_connection_open(&proxy).await;
}

/// The real binary under a low open-file limit (a container runtime's or systemd's): it raises
/// the soft limit to the hard one, and when even that is below what `max_connections` needs,
/// says so at start instead of failing later at `accept`.
#[tokio::test]
async fn a_descriptor_limit_below_max_connections_is_reported_at_start() {
    let env = Env::new().await;
    let routes = "  - name: all\n    upstream: app\n    allow:\n      - authenticated: true";
    let yaml = env.yaml(routes, "").replace(
        "  handshake_timeout: 5s\n",
        "  handshake_timeout: 5s\n  max_connections: 1000\n",
    );
    assert!(yaml.contains("max_connections: 1000"), "{yaml}");
    let path = env.write("certguard.yaml", &yaml);
    let start = |soft: u32, hard: u32| {
        // Soft limit below the hard one: certguard raises it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" run -c \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_certguard"))
            .arg(&path)
            .env("RUST_LOG", "certguard=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rx = crate::common::stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while Instant::now() < deadline && found.is_none() {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                if line.contains("RLIMIT_NOFILE") || line.contains("open-file limit") {
                    found = Some(line);
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        found.expect("a line about the open-file limit")
    };
    // Hard limit 1500 < 2 x 1000 + 256: the warning names the limit it reached and the need.
    let low = start(256, 1500);
    assert!(low.contains("WARN"), "{low}");
    assert!(low.contains("RLIMIT_NOFILE"), "{low}");
    assert!(low.contains("1500") && low.contains("2256"), "{low}");
    // A hard limit above 2256 (4096, or the runner's own if lower): raised from 256 to it,
    // enough; only the debug line.
    let runner_hard: u32 = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX);
    let hard = runner_hard.min(4096);
    if hard < 2256 {
        eprintln!("the runner's hard open-file limit ({hard}) is below 2256: second half skipped");
        return;
    }
    let enough = start(256, hard);
    assert!(!enough.contains("WARN"), "{enough}");
    assert!(enough.contains(&hard.to_string()), "{enough}");
}
