//! Certificate lifecycle in operation: hot reload of CRLs, pins and the server certificate,
//! revocation reaching open connections, rejected reloads, Kubernetes-style symlink swaps,
//! graceful shutdown of the real binary, and `certguard health`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certguard::devpki::LeafSpec;

use crate::common::{assert_rejected, client, metric, scrape, Conn, Env};

const ROUTES: &str = r#"  - name: any
    path_prefix: /
    upstream: app
    allow:
      - authenticated: true"#;

const WATCH: &str = "reload:\n  watch: true\n  debounce: 200ms\n";

fn watching(env: &Env, routes: &str, extra: &str) -> String {
    env.yaml(routes, extra)
        .replace("reload:\n  watch: false\n", WATCH)
}

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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Whether the proxy admits `cert` (a verdict, never a guess: see [`client::admitted`]).
async fn handshake_ok(
    env: &Env,
    proxy: &certguard::Proxy,
    cert: &certguard::devpki::TestCert,
) -> bool {
    client::admitted(
        proxy.listen_addr,
        &env.client(cert, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_replaced_atomically_revokes_new_and_open_connections() {
    let env = Env::new().await;
    let proxy = env.start(&watching(&env, ROUTES, "")).await;
    let mut open = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.bob, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(open.get("localhost", "/before").await.0, 200);
    let generation = proxy.generation();
    env.write_crls(&[&env.pki.revoked, &env.pki.bob]);
    eventually("new handshakes by bob are refused", || async {
        !handshake_ok(&env, &proxy, &env.pki.bob).await
    })
    .await;
    assert!(proxy.generation() > generation);
    let (status, body) = open.get("localhost", "/after").await;
    assert_eq!((status, body.as_str()), (403, "forbidden\n"));
    // alice is unaffected.
    assert!(handshake_ok(&env, &proxy, &env.pki.alice).await);
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[("reason", "revoked"), ("code", "403")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pin_cuts_off_new_and_open_connections() {
    let env = Env::new().await;
    let pinned =
        "  lab:\n    pinned:\n      - name: ci-runner\n        cert: ci-runner.crt\nroutes:\n";
    let with_pin = watching(&env, ROUTES, "").replacen("routes:\n", pinned, 1);
    let proxy = env.start(&with_pin).await;
    let mut open = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.ci, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(open.get("localhost", "/x").await.0, 200);
    // Remove the pin (the pinned source keeps another entry so the config stays valid).
    let other = certguard::devpki::TestCert::self_signed(&LeafSpec::client("other")).unwrap();
    env.write("other.crt", &other.cert_pem);
    env.write(
        "certguard.yaml",
        &with_pin.replace(
            "      - name: ci-runner\n        cert: ci-runner.crt\n",
            "      - name: other\n        cert: other.crt\n",
        ),
    );
    eventually("new handshakes by ci-runner are refused", || async {
        !handshake_ok(&env, &proxy, &env.pki.ci).await
    })
    .await;
    assert_eq!(open.get("localhost", "/x").await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_rotation_keeps_open_connections() {
    let env = Env::new().await;
    let proxy = env.start(&watching(&env, ROUTES, "")).await;
    let mut open = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(open.get("localhost", "/x").await.0, 200);
    let mut spec = LeafSpec::server("localhost");
    spec.cn = "localhost-rotated".into();
    spec.dns = vec!["localhost".into()];
    let rotated = env.pki.inter.issue(&spec).unwrap();
    // Key first, then cert: in between, the pair does not match and that reload is rejected.
    env.write("server.key", &rotated.key_pem);
    env.write(
        "server.crt",
        &format!("{}{}", rotated.cert_pem, env.pki.inter.cert_pem),
    );
    let want = rotated.cert.clone();
    eventually("new handshakes present the rotated certificate", || {
        let config = env.client(&env.pki.alice, &[b"http/1.1"]);
        let want = want.clone();
        async move {
            match client::connect_tls(proxy.listen_addr, config, "localhost").await {
                Ok(tls) => {
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first().cloned())
                        == Some(want)
                }
                Err(_) => false,
            }
        }
    })
    .await;
    assert_eq!(
        open.get("localhost", "/still").await.0,
        200,
        "the open connection keeps working"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_keeps_the_last_good_snapshot() {
    let env = Env::new().await;
    let yaml = watching(&env, ROUTES, "");
    let proxy = env.start(&yaml).await;
    let generation = proxy.generation();
    env.write("certguard.yaml", "listen: [this is: not valid\n");
    eventually("the failed reload is counted", || async {
        metric(
            &scrape(&proxy).await,
            "certguard_reloads_total",
            &[("result", "failure")],
        ) >= 1.0
    })
    .await;
    assert_eq!(proxy.generation(), generation);
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        c.get("localhost", "/x").await.0,
        200,
        "traffic continues under the old snapshot"
    );
    // A semantically broken config (undefined upstream) is rejected as well.
    env.write(
        "certguard.yaml",
        &yaml.replace("    upstream: app\n", "    upstream: nowhere\n"),
    );
    eventually("the second failure is counted", || async {
        metric(
            &scrape(&proxy).await,
            "certguard_reloads_total",
            &[("result", "failure")],
        ) >= 2.0
    })
    .await;
    assert_eq!(c.get("localhost", "/x").await.0, 200);
    // The fix is picked up: the new config no longer allows anything on /x.
    let fixed = yaml.replace("      - authenticated: true", "      - cn: nobody");
    env.write("certguard.yaml", &fixed);
    eventually("the fixed config is active", || async {
        proxy.generation() > generation
    })
    .await;
    assert_eq!(c.get("localhost", "/x").await.0, 403);
    let text = scrape(&proxy).await;
    assert!(metric(&text, "certguard_reloads_total", &[("result", "success")]) >= 1.0);
    assert_eq!(
        metric(&text, "certguard_config_generation", &[]),
        proxy.generation() as f64
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_symlink_swap_is_detected() {
    use std::os::unix::fs::symlink;
    let env = Env::new().await;
    // The kubelet layout: tls/..v1/{tls.crt,tls.key}, tls/..data -> ..v1, tls/tls.crt -> ..data/tls.crt
    let tls = env.path("tls");
    let v1 = tls.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(env.path("server.crt"), v1.join("tls.crt")).unwrap();
    std::fs::copy(env.path("server.key"), v1.join("tls.key")).unwrap();
    symlink("..v1", tls.join("..data")).unwrap();
    symlink("..data/tls.crt", tls.join("tls.crt")).unwrap();
    symlink("..data/tls.key", tls.join("tls.key")).unwrap();
    let yaml = watching(&env, ROUTES, "").replace(
        "  cert: server.crt\n  key: server.key\n",
        "  cert: tls/tls.crt\n  key: tls/tls.key\n",
    );
    let proxy = env.start(&yaml).await;
    let generation = proxy.generation();

    let rotated = env.pki.inter.issue(&LeafSpec::server("localhost")).unwrap();
    let v2 = tls.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(
        v2.join("tls.crt"),
        format!("{}{}", rotated.cert_pem, env.pki.inter.cert_pem),
    )
    .unwrap();
    std::fs::write(v2.join("tls.key"), &rotated.key_pem).unwrap();
    symlink("..v2", tls.join("..data_tmp")).unwrap();
    std::fs::rename(tls.join("..data_tmp"), tls.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    eventually("the swapped certificate is served", || async {
        proxy.generation() > generation
    })
    .await;
    let c = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(c.get_ref().1.peer_certificates().unwrap()[0], rotated.cert);
}

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_binary(config: &Path) -> Binary {
    Binary(
        Command::new(env!("CARGO_BIN_EXE_certguard"))
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn health(admin: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(["health", "--admin", admin])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let env = Env::new().await;
    let (port, admin_port) = (free_port(), free_port());
    let yaml = env
        .yaml(ROUTES, "runtime:\n  shutdown_grace: 10s\n")
        .replace(
            "  address: \"127.0.0.1:0\"\n  cert:",
            &format!("  address: \"127.0.0.1:{port}\"\n  cert:"),
        )
        .replace(
            "admin:\n  address: \"127.0.0.1:0\"",
            &format!("admin:\n  address: \"127.0.0.1:{admin_port}\""),
        );
    let config = env.write("certguard.yaml", &yaml);
    let mut child = spawn_binary(&config);
    let admin = format!("127.0.0.1:{admin_port}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the binary is ready", || {
        let admin = admin.clone();
        async move {
            tokio::task::spawn_blocking(move || health(&admin))
                .await
                .unwrap()
        }
    })
    .await;
    assert!(
        !health(&format!("127.0.0.1:{}", free_port())),
        "health must fail where nothing listens"
    );

    let mut c = Conn::open(
        addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let slow = tokio::spawn(async move { c.get("localhost", "/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Draining: no new connections, not ready.
    let refused = Conn::open(
        addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await;
    assert!(
        refused.is_err(),
        "new connections must be refused while draining"
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "slow done"),
        "the in-flight request completes"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(!health(&admin), "health fails once the process is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_passing_its_next_update_reaches_open_connections_without_a_reload() {
    let env = Env::new().await;
    let now = time::OffsetDateTime::now_utc();
    let next_update = now + time::Duration::seconds(3);
    let this_update = now - time::Duration::minutes(5);
    let crl = env
        .pki
        .inter
        .crl_pem(&[], this_update, next_update)
        .unwrap();
    env.write("intermediate.crl", &crl);
    // expired_crl: deny is the default.
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let mut open = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.bob, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(open.get("localhost", "/before").await.0, 200);
    let generation = proxy.generation();
    let wait = (next_update - time::OffsetDateTime::now_utc())
        .whole_milliseconds()
        .max(0) as u64
        + 1500;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(proxy.generation(), generation, "no reload happened");
    assert_eq!(
        open.get("localhost", "/after").await.0,
        403,
        "the open connection is re-verified"
    );
    assert_rejected(
        &proxy,
        &env.client(&env.pki.bob, &[b"http/1.1"]),
        "internal",
        "crl_expired",
        "a new handshake after the CRL's nextUpdate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_on_an_open_connection_is_refused_on_its_next_request() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    // X.509 validity has whole seconds; the proxy refuses once now > notAfter.
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let mut spec = LeafSpec::client("short-lived");
    spec.not_after = now + time::Duration::seconds(5);
    let short = env.pki.inter.issue(&spec).unwrap();
    let not_after = spec.not_after.unix_timestamp();
    let mut open = Conn::open(
        proxy.listen_addr,
        env.client(&short, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let (status, _) = open.get("localhost", "/before").await;
    assert_eq!(
        status,
        200,
        "admitted while the certificate is valid (now {}, notAfter {not_after})",
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    // Wait for the wall clock (the proxy's clock) to pass notAfter; no reload happens.
    let generation = proxy.generation();
    let deadline = Instant::now() + Duration::from_secs(20);
    while time::OffsetDateTime::now_utc().unix_timestamp() <= not_after {
        assert!(Instant::now() < deadline, "the clock never passed notAfter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = open.get("localhost", "/after").await;
    assert_eq!(
        (status, body.as_str()),
        (403, "forbidden\n"),
        "SPEC 5.3: expired since the handshake"
    );
    assert_eq!(proxy.generation(), generation, "no reload was involved");
    let text = scrape(&proxy).await;
    let denied = |reason: &str| {
        metric(
            &text,
            "certguard_requests_total",
            &[("decision", "denied"), ("reason", reason), ("code", "403")],
        )
    };
    assert_eq!(denied("revoked"), 1.0, "{text}");
    assert_eq!(denied("not_allowed"), 0.0);
    assert_eq!(
        metric(&text, "certguard_requests_total", &[("code", "200")]),
        1.0
    );
    assert_eq!(
        env.upstream.seen().len(),
        1,
        "the request after expiry never reached the upstream"
    );
    // A new handshake with the same certificate is refused as expired.
    assert_rejected(
        &proxy,
        &env.client(&short, &[b"http/1.1"]),
        "internal",
        "expired",
        "a new handshake after notAfter",
    )
    .await;
}
