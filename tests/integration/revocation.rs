//! Release 2 revocation (SPEC 9.1 to 9.4): the deny list, chain completion with configured
//! intermediates, CRLs fetched over HTTP, client OCSP.

use crate::common::upstream::hex;
use crate::common::{assert_rejected, metric, scrape, Conn, Env};

const ROUTES: &str = r#"  - name: all
    path_prefix: /
    upstream: app
    allow:
      - authenticated: true"#;

async fn open(env: &Env, proxy: &certguard::Proxy, h2: bool) -> Conn {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[alpn]),
        "localhost",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_deny_list_refuses_handshakes_and_reaches_open_connections() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let mut h1 = open(&env, &proxy, false).await;
    let mut h2 = open(&env, &proxy, true).await;
    assert_eq!(h1.get("localhost", "/x").await.0, 200);
    assert_eq!(h2.get("localhost", "/x").await.0, 200);

    // 10,000 entries that match nobody, and one for alice's serial.
    let mut deny = String::from("deny:\n");
    for i in 0..10_000u32 {
        deny.push_str(&format!("  - serial: \"ff{i:08x}\"\n"));
    }
    deny.push_str(&format!(
        "  - serial: \"{}\"\n    trust: internal\n    reason: INC-4711 key leaked\n",
        hex(&env.pki.alice.serial)
    ));
    env.write("certguard.yaml", &env.yaml(ROUTES, &deny));
    proxy.reload().expect("reload with the deny list");

    // Open connections: 403 on their next request, reason deny_listed.
    assert_eq!(h1.get("localhost", "/x").await, (403, "forbidden\n".into()));
    assert_eq!(h2.get("localhost", "/x").await.0, 403);
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[
                ("reason", "deny_listed"),
                ("code", "403"),
                ("route", "none")
            ]
        ),
        2.0
    );
    // New handshakes: refused with the admitting source as `trust`.
    assert_rejected(
        &proxy,
        &env.client(&env.pki.alice, &[b"h2"]),
        "internal",
        "deny_listed",
        "alice, deny-listed by serial",
    )
    .await;
    // Everyone else is unaffected.
    let mut bob = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.bob, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(bob.get("localhost", "/x").await.0, 200);

    // Lifting the entry lets alice back in.
    env.write("certguard.yaml", &env.yaml(ROUTES, ""));
    proxy.reload().expect("reload without the deny list");
    let mut again = open(&env, &proxy, false).await;
    assert_eq!(again.get("localhost", "/x").await.0, 200);
}

/// curl presenting `crt`/`key` to `/x`: the status code, or 0 when the handshake failed.
async fn curl_status(env: &Env, proxy: &certguard::Proxy, crt: &str, key: &str) -> u16 {
    let port = proxy.listen_addr.port();
    let args = vec![
        "--silent".to_owned(),
        "--max-time".to_owned(),
        "10".to_owned(),
        "--resolve".to_owned(),
        format!("localhost:{port}:127.0.0.1"),
        "--cacert".to_owned(),
        env.path("ca.crt").to_string_lossy().into_owned(),
        "--cert".to_owned(),
        env.path(crt).to_string_lossy().into_owned(),
        "--key".to_owned(),
        env.path(key).to_string_lossy().into_owned(),
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "-w".to_owned(),
        "%{http_code}".to_owned(),
        format!("https://localhost:{port}/x"),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl must be installed (.ci/run installs it)")
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_intermediates_complete_a_leaf_only_client_for_curl() {
    let env = Env::new().await;
    // alice's leaf alone, as a client that does not send its intermediate.
    env.write("alice-leaf.crt", &crate::common::pem(&env.pki.alice.cert));
    env.write("alice.key", &env.pki.alice.key_pem);
    env.write("intermediates.pem", &env.pki.inter.cert_pem);
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    assert_eq!(
        curl_status(&env, &proxy, "alice-leaf.crt", "alice.key").await,
        0,
        "without intermediates, the leaf alone has no path"
    );
    let yaml = env.yaml(ROUTES, "").replace(
        "    ca: ca.crt\n",
        "    ca: ca.crt\n    intermediates: intermediates.pem\n",
    );
    env.write("certguard.yaml", &yaml);
    proxy.reload().expect("reload with intermediates");
    assert_eq!(
        curl_status(&env, &proxy, "alice-leaf.crt", "alice.key").await,
        200
    );
    // The CRLs still apply to chains completed this way.
    env.write_crls(&[&env.pki.revoked, &env.pki.alice]);
    proxy.reload().expect("reload with alice revoked");
    assert_eq!(
        curl_status(&env, &proxy, "alice-leaf.crt", "alice.key").await,
        0
    );
}
