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
