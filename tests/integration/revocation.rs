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

/// The test config with the intermediate's CRL only from distribution points under
/// `allow_prefix` (the root's from its file), and `source_keys` added to the CA source.
fn distribution_point_yaml(env: &Env, allow_prefix: &str, source_keys: &str) -> String {
    env.yaml(ROUTES, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        &format!(
            "    crl: [ca.crl]\n    crl_distribution_points:\n      allow: [\"{allow_prefix}\"]\n{source_keys}"
        ),
    )
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

// ---- CRLs over HTTP (SPEC 9.2) ----

use crate::common::admin_get;
use crate::common::crl_server::CrlServer;
use time::{Duration as TimeDuration, OffsetDateTime};

/// A DER CRL by `ca` listing `revoked`, valid from a minute ago for a day.
fn crl_der(ca: &certguard::devpki::TestCa, revoked: &[&certguard::devpki::TestCert]) -> Vec<u8> {
    let now = OffsetDateTime::now_utc();
    let serials: Vec<&[u8]> = revoked.iter().map(|c| c.serial.as_slice()).collect();
    ca.crl(
        &serials,
        now - TimeDuration::minutes(1),
        now + TimeDuration::days(1),
    )
    .unwrap()
    .as_ref()
    .to_vec()
}

/// The standard config with the internal source's CRLs taken from `server` instead of files.
/// The intermediate is configured so that the signature of its CRL can be checked before use.
fn fetched_crl_config(env: &Env, server: &CrlServer, extra_trust: &str) -> String {
    env.write("intermediates.pem", &env.pki.inter.cert_pem);
    env.yaml(ROUTES, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        &format!(
            "    intermediates: intermediates.pem\n    crl_urls:\n      - {{ url: \"{}\", refresh: 1s }}\n      - {{ url: \"{}\", refresh: 1s }}\n{extra_trust}",
            server.url("pki/intermediate.crl"),
            server.url("pki/ca.crl")
        ),
    )
}

async fn ready(proxy: &certguard::Proxy) -> bool {
    admin_get(proxy, "/readyz").await.0 == 200
}

/// Poll `cond` (it may await) every 50 ms for up to `secs` seconds.
macro_rules! within {
    ($secs:expr, $what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not within {}s: {}",
                $secs,
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_published_over_http_revokes_new_and_open_connections() {
    let env = Env::new().await;
    let server = CrlServer::start().await;
    server.publish(
        "pki/intermediate.crl",
        crl_der(&env.pki.inter, &[&env.pki.revoked]),
    );
    server.publish("pki/ca.crl", crl_der(&env.pki.root, &[]));
    let proxy = env.start(&fetched_crl_config(&env, &server, "")).await;
    within!(10, "ready once both CRLs are fetched", ready(&proxy).await);
    assert_rejected(
        &proxy,
        &env.client(&env.pki.revoked, &[b"h2"]),
        "internal",
        "revoked",
        "revoked by the fetched CRL",
    )
    .await;
    let mut h1 = open(&env, &proxy, false).await;
    let mut h2 = open(&env, &proxy, true).await;
    assert_eq!(h1.get("localhost", "/x").await.0, 200);
    assert_eq!(h2.get("localhost", "/x").await.0, 200);

    // The CA publishes a CRL that revokes alice: open connections are refused within the
    // refresh interval, new handshakes too.
    server.publish(
        "pki/intermediate.crl",
        crl_der(&env.pki.inter, &[&env.pki.revoked, &env.pki.alice]),
    );
    within!(
        10,
        "alice's open HTTP/1.1 connection refused",
        h1.get("localhost", "/x").await.0 == 403
    );
    assert_eq!(h2.get("localhost", "/x").await.0, 403);
    assert_rejected(
        &proxy,
        &env.client(&env.pki.alice, &[b"h2"]),
        "internal",
        "revoked",
        "alice, revoked by the newly fetched CRL",
    )
    .await;

    // ca.crl never changes: its refreshes (every second) are conditional GETs answered 304.
    // Waited for, not assumed: under load the test can get here before the first one.
    within!(10, "a conditional GET answered 304", {
        metric(
            &scrape(&proxy).await,
            "certguard_crl_fetches_total",
            &[("trust", "internal"), ("result", "not_modified")],
        ) >= 1.0
            && server.hits_for("pki/ca.crl").len() >= 2
    });
    let text = scrape(&proxy).await;
    let fetches = |result| {
        metric(
            &text,
            "certguard_crl_fetches_total",
            &[("trust", "internal"), ("result", result)],
        )
    };
    assert!(fetches("updated") >= 3.0, "{text}");
    assert!(
        fetches("not_modified") >= 1.0,
        "conditional GETs answered 304"
    );
    assert_eq!(fetches("failed") + fetches("rejected"), 0.0);
    assert!(
        metric(
            &text,
            "certguard_crl_last_success_timestamp_seconds",
            &[("trust", "internal"), ("file", "intermediate.crl")]
        ) > 0.0
    );
    assert!(
        metric(
            &text,
            "certguard_crl_next_update_timestamp_seconds",
            &[("trust", "internal"), ("file", "ca.crl")]
        ) > 0.0
    );
    // Fetches after the first are conditional.
    let hits = server.hits_for("pki/ca.crl");
    assert!(hits.len() >= 2, "{hits:?}");
    assert!(
        hits[1..]
            .iter()
            .all(|h| h.if_none_match.as_deref() == Some("\"v1\"")),
        "{hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_forged_and_older_crls_are_refused_and_the_last_good_keeps_serving() {
    let env = Env::new().await;
    let server = CrlServer::start().await;
    let older = crl_der(&env.pki.inter, &[]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    server.publish(
        "pki/intermediate.crl",
        crl_der(&env.pki.inter, &[&env.pki.revoked]),
    );
    server.publish("pki/ca.crl", crl_der(&env.pki.root, &[]));
    let proxy = env.start(&fetched_crl_config(&env, &server, "")).await;
    within!(10, "ready", ready(&proxy).await);
    let rejected = |text: &str| {
        metric(
            text,
            "certguard_crl_fetches_total",
            &[("trust", "internal"), ("result", "rejected")],
        )
    };
    // A CA with the intermediate's name but another key.
    let forger = certguard::devpki::TestCa::root("test intermediate").unwrap();
    let bodies: [(&str, Vec<u8>); 3] = [
        ("garbage", b"this is not a CRL".to_vec()),
        ("forged", crl_der(&forger, &[&env.pki.alice])),
        ("older", older),
    ];
    for (i, (what, body)) in bodies.into_iter().enumerate() {
        server.publish("pki/intermediate.crl", body);
        within!(
            10,
            format!("the {what} CRL rejected"),
            rejected(&scrape(&proxy).await) >= (i + 1) as f64
        );
        // The last good CRL keeps serving: revoked refused, alice admitted.
        assert_rejected(
            &proxy,
            &env.client(&env.pki.revoked, &[b"h2"]),
            "internal",
            "revoked",
            what,
        )
        .await;
        let mut alice = open(&env, &proxy, false).await;
        assert_eq!(alice.get("localhost", "/x").await.0, 200, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_crl_and_the_cache_serves_a_restart() {
    let env = Env::new().await;
    // A port with nobody listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cache = env.path("crl-cache");
    let extra = format!("    crl_cache_dir: \"{}\"\n", cache.display());
    let yaml = {
        let stand_in = CrlServer::start().await; // only for its URL shape
        fetched_crl_config(&env, &stand_in, &extra)
            .replace(&stand_in.addr.port().to_string(), &port.to_string())
    };
    let proxy = env.start(&yaml).await;
    for _ in 0..10 {
        assert!(!ready(&proxy).await, "ready without any CRL");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = scrape(&proxy).await;
    assert!(
        metric(
            &text,
            "certguard_crl_fetches_total",
            &[("result", "failed")]
        ) >= 1.0
    );

    let server = CrlServer::start_on(port).await;
    server.publish(
        "pki/intermediate.crl",
        crl_der(&env.pki.inter, &[&env.pki.revoked]),
    );
    server.publish("pki/ca.crl", crl_der(&env.pki.root, &[]));
    within!(10, "ready after the first fetch", ready(&proxy).await);
    proxy.shutdown(std::time::Duration::from_secs(1)).await;
    drop(server);

    // A restart with the CRL server down serves at once from the cache.
    let proxy = env.start(&yaml).await;
    assert!(ready(&proxy).await, "not ready on a restart with a cache");
    assert_rejected(
        &proxy,
        &env.client(&env.pki.revoked, &[b"h2"]),
        "internal",
        "revoked",
        "revoked by the cached CRL",
    )
    .await;
    let mut alice = open(&env, &proxy, false).await;
    assert_eq!(alice.get("localhost", "/x").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_points_are_fetched_only_under_the_allowed_prefixes() {
    let env = Env::new().await;
    let server = CrlServer::start().await;
    let issue = |cn: &str, dp: String| {
        let mut spec = certguard::devpki::LeafSpec::client(cn);
        spec.crl_distribution_points = vec![dp];
        env.pki.inter.issue(&spec).unwrap()
    };
    let carol = issue("carol", server.url("dp/inter.crl"));
    let dave = issue("dave", server.url("dp/inter.crl"));
    let mallory = issue("mallory", server.url("elsewhere/inter.crl"));
    // Another intermediate, whose distribution point answers 404.
    let inter2 = env.pki.root.intermediate("second intermediate").unwrap();
    let missing = {
        let mut spec = certguard::devpki::LeafSpec::client("missing");
        spec.crl_distribution_points = vec![server.url("dp/absent.crl")];
        inter2.issue(&spec).unwrap()
    };
    server.publish("dp/inter.crl", crl_der(&env.pki.inter, &[&dave]));
    server.publish("elsewhere/inter.crl", crl_der(&env.pki.inter, &[]));
    // The root's CRL comes from a file; the intermediate's only from the distribution point
    // (signed by the intermediate the clients send, which the config does not name).
    let yaml = distribution_point_yaml(&env, &server.url("dp/"), "");
    let proxy = env.start(&yaml).await;

    // Outside the prefix: no request at all, and no CRL for the leaf -> unknown status.
    assert_rejected(
        &proxy,
        &env.client(&mallory, &[b"h2"]),
        "internal",
        "unknown_revocation_status",
        "a distribution point outside the allowed prefixes",
    )
    .await;
    assert!(
        server.hits_for("elsewhere/inter.crl").is_empty(),
        "{:?}",
        server.hits()
    );

    // Under the prefix: the first handshake that needs it waits for one fetch.
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&carol, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(c.get("localhost", "/x").await.0, 200);
    assert_eq!(
        server.hits_for("dp/inter.crl").len(),
        1,
        "{:?}",
        server.hits()
    );
    assert_rejected(
        &proxy,
        &env.client(&dave, &[b"h2"]),
        "internal",
        "revoked",
        "dave, revoked by the distribution point's CRL",
    )
    .await;
    // A distribution point that cannot be fetched leaves the status unknown (no CRL of that
    // intermediate at all).
    assert_rejected(
        &proxy,
        &env.client(&missing, &[b"h2"]),
        "internal",
        "unknown_revocation_status",
        "a distribution point that answers 404",
    )
    .await;
    // Its next handshakes do not each fetch it again: a failed fetch holds for 5 s (the
    // refresh task retries in the background; at most one fetch of its own so far).
    for _ in 0..4 {
        assert_rejected(
            &proxy,
            &env.client(&missing, &[b"h2"]),
            "internal",
            "unknown_revocation_status",
            "a distribution point that answers 404, again",
        )
        .await;
    }
    let asked = server.hits_for("dp/absent.crl").len();
    assert!((1..=2).contains(&asked), "{:?}", server.hits());
    // From then on it is refreshed like a crl_urls entry: counted per source.
    within!(10, "the distribution point refreshed", {
        let text = scrape(&proxy).await;
        metric(
            &text,
            "certguard_crl_fetches_total",
            &[("trust", "internal")],
        ) >= 1.0
    });
}

/// The distribution points `source` of `proxy` has discovered so far (the URLs it keeps
/// fresh, besides its `crl_urls`).
fn discovered(proxy: &certguard::Proxy, source: &str) -> Vec<String> {
    let snap = proxy.state.current.load();
    let ca = snap
        .config
        .trust
        .iter()
        .find_map(|s| match &s.kind {
            certguard::config::TrustKind::Ca(ca) if &*s.name == source => Some(ca),
            _ => None,
        })
        .expect("a CA source");
    let mut urls = proxy.state.current.revocation.urls(source, ca);
    urls.retain(|u| !ca.crl_urls.iter().any(|c| &c.url == u));
    urls
}

/// A hostile client: a certificate that does not chain to the source's anchors naming more
/// distribution points under the allowed prefix than the source has slots for, to make
/// certguard fetch them (before the fix, each took one of the 64 slots for good, so that the
/// distribution points of real clients were never fetched again: refused under
/// `unknown_status: deny`, admitted unchecked under `allow`), and a CRL at one of them signed
/// by a CA the client sent. None of it may cause a request, take a slot or let that CA sign
/// CRLs; the real clients' distribution point still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_certificates_cannot_make_distribution_points_fetched_or_fill_the_slots() {
    hostile_distribution_points("deny").await;
}

/// The same under `unknown_status: allow`, where filled slots would have turned revocation
/// off without a sound: dave is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_certificates_cannot_turn_distribution_points_off_under_allow() {
    hostile_distribution_points("allow").await;
}

async fn hostile_distribution_points(unknown_status: &str) {
    let env = Env::new().await;
    let server = CrlServer::start().await;
    let junk = |tag: &str| -> Vec<String> {
        (0..70)
            .map(|i| server.url(&format!("dp/{tag}-{i}.crl")))
            .collect()
    };
    let hostile = |cn: &str, tag: &str| {
        let mut spec = certguard::devpki::LeafSpec::client(cn);
        spec.crl_distribution_points = junk(tag);
        spec
    };
    // 1. Self-signed.
    let rogue = certguard::devpki::TestCert::self_signed(&hostile("rogue", "rogue")).unwrap();
    // 2. An unrelated CA's leaf, sent with that CA's intermediate, which signs a CRL published
    //    at the first of the leaf's distribution points.
    let stranger_root = certguard::devpki::TestCa::root("stranger root").unwrap();
    let stranger = stranger_root.intermediate("stranger intermediate").unwrap();
    let foreign = stranger.issue(&hostile("foreign", "foreign")).unwrap();
    assert_eq!(
        foreign.chain.len(),
        2,
        "leaf and the stranger's intermediate"
    );
    server.publish("dp/foreign-0.crl", crl_der(&stranger, &[]));
    // 3. A leaf signed by a key that is not the intermediate's, under the intermediate's
    //    name, sent with the real intermediate: the names lead to the anchor, the signatures
    //    do not.
    let impostor = certguard::devpki::TestCa::root("test intermediate").unwrap();
    let mut forged = impostor.issue(&hostile("forged", "forged")).unwrap();
    forged.chain.push(env.pki.inter.cert.clone());

    let carol = {
        let mut spec = certguard::devpki::LeafSpec::client("carol");
        spec.crl_distribution_points = vec![server.url("dp/inter.crl")];
        env.pki.inter.issue(&spec).unwrap()
    };
    let dave = {
        let mut spec = certguard::devpki::LeafSpec::client("dave");
        spec.crl_distribution_points = vec![server.url("dp/inter.crl")];
        env.pki.inter.issue(&spec).unwrap()
    };
    server.publish("dp/inter.crl", crl_der(&env.pki.inter, &[&dave]));
    // The intermediate's CRL only from the distribution point.
    let yaml = distribution_point_yaml(
        &env,
        &server.url("dp/"),
        &format!("    revocation:\n      unknown_status: {unknown_status}\n"),
    );
    let proxy = env.start(&yaml).await;

    for round in 0..2 {
        for (client, trust, outcome, what) in [
            (&rogue, "none", "unknown_issuer", "a self-signed leaf"),
            (&foreign, "none", "unknown_issuer", "an unrelated CA's leaf"),
            (
                &forged,
                "internal",
                "bad_signature",
                "a leaf forged under the intermediate's name",
            ),
        ] {
            let started = std::time::Instant::now();
            assert_rejected(
                &proxy,
                &env.client(client, &[b"h2"]),
                trust,
                outcome,
                &format!("{what} (round {round})"),
            )
            .await;
            // Refused at once: nothing was waited for.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "{what}: {:?}",
                started.elapsed()
            );
        }
    }
    let hits = server.hits();
    assert!(
        hits.is_empty(),
        "{} requests to the CRL server, the first: {:?}",
        hits.len(),
        hits.first()
    );
    assert!(discovered(&proxy, "internal").is_empty());

    // A real client's distribution point is still discovered, fetched, and revokes.
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&carol, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(c.get("localhost", "/x").await.0, 200);
    assert_rejected(
        &proxy,
        &env.client(&dave, &[b"h2"]),
        "internal",
        "revoked",
        "dave, revoked by the distribution point's CRL after the attack",
    )
    .await;
    assert_eq!(
        discovered(&proxy, "internal"),
        vec![server.url("dp/inter.crl")]
    );
    // A discovered distribution point gets a refresh task at once. A real client naming
    // another distribution point that answers 404 (so its task asks again at once; frank is
    // admitted on the intermediate's CRL he shares with carol) shows when the tasks have
    // run: by then, nothing but the two real distribution points was ever asked for.
    let frank = {
        let mut spec = certguard::devpki::LeafSpec::client("frank");
        spec.crl_distribution_points = vec![server.url("dp/frank.crl")];
        env.pki.inter.issue(&spec).unwrap()
    };
    let mut f = Conn::open(
        proxy.listen_addr,
        env.client(&frank, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(f.get("localhost", "/x").await.0, 200);
    within!(
        10,
        "frank's distribution point asked again by its refresh task",
        server.hits_for("dp/frank.crl").len() >= 2
    );
    let asked: Vec<String> = server.hits().into_iter().map(|h| h.path).collect();
    assert!(
        asked
            .iter()
            .all(|p| p == "/dp/inter.crl" || p == "/dp/frank.crl"),
        "{asked:?}"
    );
    assert_eq!(
        discovered(&proxy, "internal"),
        vec![server.url("dp/inter.crl"), server.url("dp/frank.crl")]
    );
}

/// A verified client that also sends a CA certificate off its path: a CRL at its
/// distribution point signed by that CA is refused (only anchors, configured intermediates
/// and the verified path sign CRLs), so it cannot be planted as the intermediate's CRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distribution_point_crl_signed_off_the_verified_path_is_refused() {
    let env = Env::new().await;
    let server = CrlServer::start().await;
    let url = server.url("dp/erin.crl");
    let mut erin = {
        let mut spec = certguard::devpki::LeafSpec::client("erin");
        spec.crl_distribution_points = vec![url.clone()];
        env.pki.inter.issue(&spec).unwrap()
    };
    // Same name as the intermediate, another key: its CRL would claim to be the
    // intermediate's.
    let impostor = certguard::devpki::TestCa::root("test intermediate").unwrap();
    erin.chain.push(impostor.cert.clone());
    server.publish("dp/erin.crl", crl_der(&impostor, &[]));
    let yaml = distribution_point_yaml(&env, &server.url("dp/"), "");
    let proxy = env.start(&yaml).await;
    // Fetched (the path is verified), refused: no CRL of the intermediate, status unknown.
    assert_rejected(
        &proxy,
        &env.client(&erin, &[b"h2"]),
        "internal",
        "unknown_revocation_status",
        "erin, whose distribution point serves a CRL signed off her path",
    )
    .await;
    assert_ne!(
        server.hits_for("dp/erin.crl").len(),
        0,
        "{:?}",
        server.hits()
    );
    assert!(proxy
        .state
        .current
        .revocation
        .crls
        .get("internal", &url)
        .is_none());
    // The real intermediate's CRL at the same place is taken, from the path erin sends: once
    // the failed fetch's 5 s hold has passed (until then her handshakes do not ask again; the
    // URL's refresh task may fetch it sooner).
    server.publish("dp/erin.crl", crl_der(&env.pki.inter, &[]));
    let held_until = std::time::Instant::now() + certguard::revocation::FAILED_FETCH_HOLD;
    loop {
        let erin_client = env.client(&erin, &[b"h2"]);
        if crate::common::client::admitted(proxy.listen_addr, &erin_client, "localhost")
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < held_until + std::time::Duration::from_secs(5),
            "erin not admitted after the hold"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

// ---- Several CRLs of one issuer: the newest wins ----

/// alice is revoked only in the NEWER of two CRLs of the intermediate, one a `crl:` file,
/// the other a `crl_urls` entry; whichever is newer and whichever comes first in the config,
/// the newer one decides (the verifier uses only one CRL per issuer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_crl_of_an_issuer_decides_whether_file_or_fetched() {
    let env = Env::new().await;
    let server = CrlServer::start().await;
    let now = OffsetDateTime::now_utc();
    let crl = |revoked: &[&certguard::devpki::TestCert], minutes_ago: i64| {
        let serials: Vec<&[u8]> = revoked.iter().map(|c| c.serial.as_slice()).collect();
        env.pki
            .inter
            .crl(
                &serials,
                now - TimeDuration::minutes(minutes_ago),
                now + TimeDuration::days(1),
            )
            .unwrap()
            .as_ref()
            .to_vec()
    };
    // The intermediate is configured: a fetched CRL must be signed by a certificate of the
    // source.
    env.write("intermediates.pem", &env.pki.inter.cert_pem);
    let file_then_url = env.yaml(ROUTES, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        &format!(
            "    intermediates: intermediates.pem\n    crl: [intermediate.crl, ca.crl]\n    crl_urls:\n      - {{ url: \"{}\", refresh: 1s }}\n",
            server.url("pki/intermediate.crl")
        ),
    );
    let url_then_file = env.yaml(ROUTES, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        &format!(
            "    crl_urls:\n      - {{ url: \"{}\", refresh: 1s }}\n    crl: [intermediate.crl, ca.crl]\n    intermediates: intermediates.pem\n",
            server.url("pki/intermediate.crl")
        ),
    );
    // (what, file CRL, fetched CRL): the older one (made first, earlier thisUpdate, lower
    // CRL number) does not list alice, the newer one does.
    let older_file = crl(&[], 10);
    let newer_fetched = crl(&[&env.pki.alice], 5);
    let older_fetched = crl(&[], 4);
    let newer_file = crl(&[&env.pki.alice], 2);
    let cases = [
        (
            "an older file beside a newer fetched CRL",
            &older_file,
            &newer_fetched,
        ),
        (
            "a newer file beside an older fetched CRL",
            &newer_file,
            &older_fetched,
        ),
    ];
    for (what, file, fetched) in cases {
        for (order, yaml) in [
            ("crl first", &file_then_url),
            ("crl_urls first", &url_then_file),
        ] {
            let what = format!("{what}, {order}");
            std::fs::write(env.path("intermediate.crl"), file).unwrap();
            server.publish("pki/intermediate.crl", fetched.clone());
            let proxy = env.start(yaml).await;
            within!(10, format!("ready: {what}"), ready(&proxy).await);
            assert_rejected(
                &proxy,
                &env.client(&env.pki.alice, &[b"h2"]),
                "internal",
                "revoked",
                &format!("alice, revoked in the newer CRL: {what}"),
            )
            .await;
            // Everyone else is admitted: the root's CRL and the newer one are in use.
            let mut bob = Conn::open(
                proxy.listen_addr,
                env.client(&env.pki.bob, &[b"http/1.1"]),
                "localhost",
            )
            .await
            .unwrap();
            assert_eq!(bob.get("localhost", "/x").await.0, 200, "{what}");
            proxy.shutdown(std::time::Duration::from_secs(1)).await;
        }
    }
}

// ---- OCSP (SPEC 9.3), against `openssl ocsp` as the responder ----

use crate::common::ocsp::{refused_url, Responder, Signer};

/// The standard config with `ocsp:` added to the internal source.
fn ocsp_config(env: &Env, mode: &str, responder: &str, extra: &str) -> String {
    env.yaml(ROUTES, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        &format!(
            "    crl: [intermediate.crl, ca.crl]\n    ocsp:\n      mode: {mode}\n      responder: \"{responder}\"\n      timeout: 2s\n{extra}"
        ),
    )
}

async fn ocsp_responder(env: &Env) -> Responder {
    let key = env.pki.inter.key_pem();
    Responder::start(
        &env.pki.inter,
        Signer::ca(&env.pki.inter, &key),
        &["-ndays", "1"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_good_revoked_unknown_and_a_dead_responder_under_require_and_prefer() {
    let env = Env::new().await;
    let responder = ocsp_responder(&env).await;
    responder.good(&env.pki.alice);
    responder.revoke(&env.pki.bob);
    let proxy = env
        .start(&ocsp_config(&env, "require", &responder.url(), ""))
        .await;
    let mut alice = open(&env, &proxy, false).await;
    assert_eq!(alice.get("localhost", "/x").await.0, 200);
    assert_rejected(
        &proxy,
        &env.client(&env.pki.bob, &[b"h2"]),
        "internal",
        "revoked",
        "bob, revoked by OCSP",
    )
    .await;
    // Not in the responder's index: unknown, refused under require.
    assert_rejected(
        &proxy,
        &env.client(&env.pki.long_lived, &[b"h2"]),
        "internal",
        "unknown_revocation_status",
        "a certificate the responder does not know",
    )
    .await;
    // Answers are kept: more handshakes of alice ask nobody.
    let asked = responder.requests();
    for _ in 0..3 {
        let mut again = open(&env, &proxy, true).await;
        assert_eq!(again.get("localhost", "/x").await.0, 200);
    }
    assert_eq!(
        responder.requests(),
        asked,
        "cached answers are not asked again"
    );
    let text = scrape(&proxy).await;
    let answers = |result| {
        metric(
            &text,
            "certguard_ocsp_responses_total",
            &[("trust", "internal"), ("result", result)],
        )
    };
    assert_eq!(
        (answers("good"), answers("revoked"), answers("unknown")),
        (1.0, 1.0, 1.0)
    );

    // The responder is down: require refuses, prefer admits; both count the error. (A
    // certificate nobody asked about yet: kept answers stay valid whatever the responder does.)
    let dave = env
        .pki
        .inter
        .issue(&certguard::devpki::LeafSpec::client("dave"))
        .unwrap();
    let erin = env
        .pki
        .inter
        .issue(&certguard::devpki::LeafSpec::client("erin"))
        .unwrap();
    let dead = refused_url().await;
    env.write("certguard.yaml", &ocsp_config(&env, "require", &dead, ""));
    proxy.reload().expect("reload");
    assert_rejected(
        &proxy,
        &env.client(&dave, &[b"h2"]),
        "internal",
        "unknown_revocation_status",
        "require with the responder down",
    )
    .await;
    env.write("certguard.yaml", &ocsp_config(&env, "prefer", &dead, ""));
    proxy.reload().expect("reload");
    let mut carol = Conn::open(
        proxy.listen_addr,
        env.client(&erin, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        carol.get("localhost", "/x").await.0,
        200,
        "prefer admits without an answer"
    );
    let text = scrape(&proxy).await;
    assert!(
        metric(
            &text,
            "certguard_ocsp_responses_total",
            &[("result", "error")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ocsp_revocation_learned_later_reaches_open_connections() {
    let env = Env::new().await;
    let responder = ocsp_responder(&env).await;
    responder.good(&env.pki.alice);
    let proxy = env
        .start(&ocsp_config(
            &env,
            "require",
            &responder.url(),
            "      refresh: 1s\n",
        ))
        .await;
    let mut h1 = open(&env, &proxy, false).await;
    let mut h2 = open(&env, &proxy, true).await;
    assert_eq!(h1.get("localhost", "/x").await.0, 200);
    assert_eq!(h2.get("localhost", "/x").await.0, 200);
    responder.revoke(&env.pki.alice);
    within!(
        10,
        "the open HTTP/1.1 connection refused after the refresh",
        h1.get("localhost", "/x").await.0 == 403
    );
    assert_eq!(h2.get("localhost", "/x").await.0, 403);
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[("reason", "revoked"), ("code", "403")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_asks_the_responder_unless_offline() {
    let env = Env::new().await;
    let responder = ocsp_responder(&env).await;
    responder.revoke(&env.pki.alice);
    let yaml = ocsp_config(&env, "require", &responder.url(), "");
    let path = env.write("certguard.yaml", &yaml);
    let (cert, _) = env.client_files("alice", &env.pki.alice);
    let config = certguard::config::Config::load(&path).unwrap();
    let online =
        certguard::report::explain(&config, &cert, "GET", Some("localhost"), "/x", false).unwrap();
    assert!(!online.allowed, "{}", online.text);
    assert!(online.text.contains("decided by OCSP"), "{}", online.text);
    assert_eq!(responder.requests(), 1);
    let offline =
        certguard::report::explain(&config, &cert, "GET", Some("localhost"), "/x", true).unwrap();
    assert!(offline.allowed, "{}", offline.text);
    assert_eq!(responder.requests(), 1, "--offline asks no responder");
}
