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

/// Wait until `certguard_reloads_total{result="failure"}` reaches `n`.
async fn reload_failures_reach(proxy: &certguard::Proxy, n: u32) {
    eventually(&format!("{n} failed reload(s) counted"), || async {
        metric(
            &scrape(proxy).await,
            "certguard_reloads_total",
            &[("result", "failure")],
        ) >= f64::from(n)
    })
    .await;
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
    reload_failures_reach(&proxy, 1).await;
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
    reload_failures_reach(&proxy, 2).await;
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

/// Write `contents` to `path` atomically (temp file in the same directory, then rename).
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fresh CRL of the test intermediate listing `revoked`.
fn intermediate_crl(env: &Env, revoked: &[&certguard::devpki::TestCert]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let serials: Vec<&[u8]> = revoked.iter().map(|c| c.serial.as_slice()).collect();
    env.pki
        .inter
        .crl_pem(
            &serials,
            now - time::Duration::minutes(5),
            now + time::Duration::days(30),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_a_missing_file_is_retried_when_the_file_appears() {
    let env = Env::new().await;
    let yaml = watching(&env, ROUTES, "");
    let proxy = env.start(&yaml).await;
    let generation = proxy.generation();
    // The Kubernetes case: the ConfigMap names a CRL whose Secret volume has not synced yet.
    std::fs::create_dir_all(env.path("crl")).unwrap();
    env.write(
        "certguard.yaml",
        &yaml.replace(
            "[intermediate.crl, ca.crl]",
            "[crl/intermediate.crl, ca.crl]",
        ),
    );
    reload_failures_reach(&proxy, 1).await;
    assert_eq!(proxy.generation(), generation);
    assert!(handshake_ok(&env, &proxy, &env.pki.bob).await);

    // The file lands, in a directory the serving config never named; no SIGHUP.
    write_atomic(
        &env.path("crl/intermediate.crl"),
        &intermediate_crl(&env, &[&env.pki.revoked, &env.pki.bob]),
    );
    eventually("the retried reload succeeds and revokes bob", || async {
        proxy.generation() > generation && !handshake_ok(&env, &proxy, &env.pki.bob).await
    })
    .await;
    // Generations count successful loads only.
    assert_eq!(proxy.generation(), generation + 1);
    assert!(handshake_ok(&env, &proxy, &env.pki.alice).await);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sighup_reload_the_watcher_follows_files_in_a_new_directory() {
    use std::os::unix::fs::symlink;
    let env = Env::new().await;
    // The config lives in conf.v1/, reached through the symlink conf -> conf.v1, with copies of
    // the files it names. Swapping that symlink in the (unwatched) parent directory changes the
    // config without the watcher seeing any event, so only the SIGHUP reload below can tell the
    // watcher about the new directory.
    let v1 = env.path("conf.v1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in [
        "server.crt",
        "server.key",
        "ca.crt",
        "intermediate.crl",
        "ca.crl",
    ] {
        std::fs::copy(env.path(f), v1.join(f)).unwrap();
    }
    let yaml = watching(&env, ROUTES, "");
    std::fs::write(v1.join("certguard.yaml"), &yaml).unwrap();
    symlink("conf.v1", env.path("conf")).unwrap();
    let config = certguard::config::Config::load(&env.path("conf/certguard.yaml")).unwrap();
    let proxy = certguard::Proxy::start(config).await.unwrap();
    let generation = proxy.generation();

    let v2 = env.path("conf.v2");
    std::fs::create_dir_all(&v2).unwrap();
    for f in ["server.crt", "server.key", "ca.crt", "ca.crl"] {
        std::fs::copy(env.path(f), v2.join(f)).unwrap();
    }
    let crls = env.path("crls");
    std::fs::create_dir_all(&crls).unwrap();
    let crl = crls.join("intermediate.crl");
    std::fs::write(&crl, intermediate_crl(&env, &[&env.pki.revoked])).unwrap();
    std::fs::write(
        v2.join("certguard.yaml"),
        yaml.replace(
            "[intermediate.crl, ca.crl]",
            &format!("[\"{}\", ca.crl]", crl.display()),
        ),
    )
    .unwrap();
    symlink("conf.v2", env.path("conf.tmp")).unwrap();
    std::fs::rename(env.path("conf.tmp"), env.path("conf")).unwrap();
    // What the SIGHUP handler calls.
    assert_eq!(proxy.reload().unwrap(), generation + 1);
    assert!(handshake_ok(&env, &proxy, &env.pki.bob).await);

    write_atomic(
        &crl,
        &intermediate_crl(&env, &[&env.pki.revoked, &env.pki.bob]),
    );
    eventually(
        "the watcher reloads the CRL in the new directory",
        || async { !handshake_ok(&env, &proxy, &env.pki.bob).await },
    )
    .await;
    assert_eq!(proxy.generation(), generation + 2);
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
    health_code(admin) == Some(0)
}

fn health_code(admin: &str) -> Option<i32> {
    Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(["health", "--admin", admin])
        .status()
        .unwrap()
        .code()
}

/// The status of `GET /readyz` on a plain-HTTP admin address, or `None` if it does not answer.
async fn readyz(admin: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf).get(9..12)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let env = Env::new().await;
    let (port, admin_port) = (free_port(), free_port());
    let yaml = env
        .yaml(ROUTES, "runtime:\n  shutdown_grace: 10s\n")
        .replace("    timeout: 2s\n", "    timeout: 8s\n")
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
    // Long enough that the checks below run while it is in flight; `is_finished` proves it.
    let slow = tokio::spawn(async move { c.get("localhost", "/slow?ms=5000").await });
    eventually("the slow request reaches the upstream", || async {
        env.upstream
            .seen()
            .iter()
            .any(|s| s.path.starts_with("/slow"))
    })
    .await;
    assert_eq!(readyz(&admin).await, Some(200));
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Draining: not ready, no new connections, while the slow request is still running.
    eventually("/readyz turns 503", || async {
        readyz(&admin).await == Some(503)
    })
    .await;
    let a = admin.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || health_code(&a))
            .await
            .unwrap(),
        Some(1),
        "`certguard health` fails while draining"
    );
    eventually("new connections are refused while draining", || async {
        Conn::open(
            addr,
            env.client(&env.pki.alice, &[b"http/1.1"]),
            "localhost",
        )
        .await
        .is_err()
    })
    .await;
    assert!(
        !slow.is_finished(),
        "the checks above must run while the request is in flight"
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

/// The records (5-byte header and payload) of a TLS byte stream.
fn tls_records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while bytes.len() >= 5 {
        let len = 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        let (record, rest) = bytes.split_at(len.min(bytes.len()));
        records.push(record);
        bytes = rest;
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_held_open_across_notafter_is_refused_on_its_first_request() {
    // The client sends its certificate while it is valid and holds back its Finished until
    // notAfter has passed: the verifier saw a valid certificate, the connection is set up
    // after the deadline. Its first request must see the expiry.
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let mut spec = LeafSpec::client("straddler");
    spec.not_after = now + time::Duration::seconds(2);
    let short = env.pki.inter.issue(&spec).unwrap();
    let not_after = spec.not_after.unix_timestamp();
    // Small records, so that the Certificate message ends records before the Finished does
    // (rustls would otherwise put the whole flight into one record).
    let mut config = (*env.client(&short, &[b"http/1.1"])).clone();
    config.max_fragment_size = Some(64);
    let config = std::sync::Arc::new(config);
    let addr = proxy.listen_addr;
    let response = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(config, name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tls.write_tls(&mut tcp).unwrap(); // ClientHello
        while !tls.wants_write() {
            tls.read_tls(&mut tcp).unwrap();
            tls.process_new_packets().unwrap();
        }
        let mut flight = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut flight).unwrap();
        }
        let records = tls_records(&flight);
        assert!(records.len() > 10, "{} records", records.len());
        // rustls sends the flight (Certificate, CertificateVerify, Finished) as one stream
        // of 59-byte fragments: the last holds the Finished (36 bytes) and the end of the
        // CertificateVerify (about 80); the Certificate ends records before it.
        let (rest, finished) = records.split_at(records.len() - 1);
        let finished: Vec<u8> = finished.concat();
        // The Certificate now, while it is valid: the verifier runs on it.
        assert!(
            time::OffsetDateTime::now_utc().unix_timestamp() < not_after,
            "too slow to send the certificate before notAfter"
        );
        for record in rest {
            tcp.write_all(record).unwrap();
        }
        while time::OffsetDateTime::now_utc().unix_timestamp() <= not_after {
            std::thread::sleep(Duration::from_millis(50));
        }
        tcp.write_all(&finished).unwrap();
        tls.writer()
            .write_all(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read_tls(&mut tcp) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            tls.process_new_packets().unwrap();
            if let Ok(n) = tls.reader().read(&mut buf) {
                response.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 403"),
        "a certificate expired during its handshake: {response:?}"
    );
    assert!(
        env.upstream.seen().is_empty(),
        "the request reached the upstream"
    );
}

/// The next line of `lines` (JSON log lines) whose text has every one of `needles`, within 10 s.
fn log_line_with(lines: &std::sync::mpsc::Receiver<String>, needles: &[&str]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            if needles.iter().all(|n| line.contains(n)) {
                return Some(line);
            }
        }
    }
    None
}

/// `runtime.single_thread` (the one-thread scheduler): the real binary serves HTTP/1.1 and
/// HTTP/2, a SIGHUP reload runs without a second worker thread to lend, and a reload that would
/// make handshakes wait for the network (OCSP) is refused with its key path while the last
/// good config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_thread_runtime_serves_and_refuses_reloads_that_would_wait() {
    let env = Env::new().await;
    let port = free_port();
    let yaml = env
        .yaml(
            ROUTES,
            "runtime:\n  single_thread: true\nlogging:\n  format: json\n",
        )
        .replace(
            "  address: \"127.0.0.1:0\"\n  cert:",
            &format!("  address: \"127.0.0.1:{port}\"\n  cert:"),
        );
    let config = env.write("certguard.yaml", &yaml);
    let mut child = spawn_binary(&config);
    let lines = crate::common::stdout_lines(&mut child.0);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let serves = |alpn: &'static [u8]| {
        let client = env.client(&env.pki.alice, &[alpn]);
        async move {
            let mut conn = Conn::open(addr, client, "localhost").await.ok()?;
            assert_eq!(conn.http2, alpn == b"h2");
            // Several requests on one connection.
            let mut codes = Vec::new();
            for _ in 0..3 {
                codes.push(conn.get("localhost", "/single").await.0);
            }
            Some(codes)
        }
    };
    eventually("the binary serves", || async {
        serves(b"http/1.1").await.is_some()
    })
    .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        assert_eq!(serves(alpn).await, Some(vec![200; 3]), "{alpn:?}");
    }
    let sighup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap()
            .success());
    };

    // OCSP with `single_thread: false`, a valid config, but the running process keeps its
    // one thread until it restarts.
    let ocsp = yaml
        .replace(
            "    crl: [intermediate.crl, ca.crl]\n",
            "    crl: [intermediate.crl, ca.crl]\n    ocsp: { mode: prefer, responder: \"http://127.0.0.1:9/\" }\n",
        )
        .replace("single_thread: true", "single_thread: false");
    assert!(certguard::config::Config::load(&env.write("multi.yaml", &ocsp)).is_ok());
    env.write("certguard.yaml", &ocsp);
    sighup();
    let refused = log_line_with(
        &lines,
        &[
            "reload rejected",
            "trust.internal.ocsp",
            "until it restarts",
        ],
    );
    assert!(refused.is_some(), "no rejected reload naming the OCSP key");
    assert_eq!(serves(b"h2").await, Some(vec![200; 3]));

    env.write("certguard.yaml", &yaml);
    sighup();
    assert!(
        log_line_with(&lines, &["configuration reloaded"]).is_some(),
        "the SIGHUP reload did not happen"
    );
    assert_eq!(serves(b"http/1.1").await, Some(vec![200; 3]));
    assert!(child.0.try_wait().unwrap().is_none(), "the binary exited");
}
