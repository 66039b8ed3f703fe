//! Governance (SPEC 9.5 to 9.9) with real handshakes and the real binary: SPIFFE trust domains
//! bound to one source, shadow policy and `enforce: false`, the access diff of a reload (log
//! and counter), `certguard diff` and `check --format json` as processes, the expiry gauges,
//! and RFC 9440 client certificate headers.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use certguard::devpki::{LeafSpec, TestCa, TestCert};
use http::Request;

use crate::common::{self, assert_rejected, empty, metric, scrape, Conn, Env};

const ROUTES: &str = r#"  - name: status
    path: /status
    upstream: app
    allow:
      - trust: internal
  - name: api
    path_prefix: /api
    methods: [GET]
    upstream: app
    allow:
      - trust: internal
        cn: alice"#;

/// A client certificate of `ca` with these URI SANs.
fn with_uris(ca: &TestCa, cn: &str, uris: &[&str]) -> TestCert {
    let mut spec = LeafSpec::client(cn);
    spec.uris = uris.iter().map(|u| u.to_string()).collect();
    ca.issue(&spec).unwrap()
}

async fn status(env: &Env, proxy: &certguard::Proxy, cert: &TestCert, path: &str) -> u16 {
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(cert, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    c.get("localhost", path).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ca_minting_an_id_of_a_bound_domain_is_refused() {
    let env = Env::new().await;
    let partner = TestCa::root("partner root").unwrap();
    env.write("partner.crt", &partner.cert_pem);
    let yaml = env.yaml(ROUTES, "").replace(
        "    crl: [intermediate.crl, ca.crl]\n",
        "    crl: [intermediate.crl, ca.crl]\n    spiffe_trust_domains: [test.local]\n  partner:\n    ca: partner.crt\n",
    );
    let proxy = env.start(&yaml).await;
    let before = scrape(&proxy).await;
    assert!(
        before.contains(
            r#"certguard_tls_handshakes_total{outcome="trust_domain_mismatch",trust="partner"} 0"#
        ),
        "the new outcome starts at 0:\n{before}"
    );

    // The bound domain's own source still admits its IDs.
    assert_eq!(status(&env, &proxy, &env.pki.alice, "/status").await, 200);
    // The partner CA mints alice's SPIFFE ID: refused at the handshake, counted for partner.
    let forged = with_uris(
        &partner,
        "alice",
        &["spiffe://test.local/ns/default/sa/alice"],
    );
    assert_rejected(
        &proxy,
        &env.client(&forged, &[b"http/1.1"]),
        "partner",
        "trust_domain_mismatch",
        "a partner certificate with an ID of test.local",
    )
    .await;
    // An ID of its own, unbound domain is the partner's to issue.
    let own = with_uris(&partner, "p", &["spiffe://partner.example/ns/x"]);
    assert!(
        common::client::admitted(
            proxy.listen_addr,
            &env.client(&own, &[b"http/1.1"]),
            "localhost"
        )
        .await
        .is_ok(),
        "partner's own domain is admitted"
    );
    // The bound source refuses IDs outside its domains, and malformed spiffe URIs.
    let outside = with_uris(&env.pki.inter, "o", &["spiffe://partner.example/ns/x"]);
    assert_rejected(
        &proxy,
        &env.client(&outside, &[b"http/1.1"]),
        "internal",
        "trust_domain_mismatch",
        "an internal certificate outside test.local",
    )
    .await;
    let malformed = with_uris(&env.pki.inter, "m", &["spiffe://test.local/ns/../admin"]);
    assert_rejected(
        &proxy,
        &env.client(&malformed, &[b"http/1.1"]),
        "internal",
        "invalid_cert",
        "an internal certificate with a malformed SPIFFE ID",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_false_forwards_a_would_deny_request_and_counts_it() {
    let env = Env::new().await;
    let routes = format!(
        "{ROUTES}
    shadow_allow:
      - trust: internal
        cn: bob
    enforce: false
  - name: strict
    path_prefix: /strict
    upstream: app
    allow:
      - cn: alice
    shadow_allow:
      - cn: bob"
    );
    let proxy = env.start(&env.yaml(&routes, "")).await;
    let shadow = |text: &str, route: &str, enforced: &str, shadow: &str| {
        metric(
            text,
            "certguard_shadow_decisions_total",
            &[("route", route), ("enforced", enforced), ("shadow", shadow)],
        )
    };
    let before = scrape(&proxy).await;
    assert!(
        before.contains(
            r#"certguard_shadow_decisions_total{enforced="denied",route="strict",shadow="allowed"} 0"#
        ),
        "{before}"
    );

    // bob is not in `allow` of api: forwarded anyway, counted as not_enforced.
    assert_eq!(status(&env, &proxy, &env.pki.bob, "/api/orders").await, 200);
    assert_eq!(env.upstream.last().path, "/api/orders");
    assert_eq!(
        status(&env, &proxy, &env.pki.alice, "/api/orders").await,
        200
    );
    // `strict` enforces: bob is refused, and its shadow list would have let him in.
    assert_eq!(status(&env, &proxy, &env.pki.bob, "/strict/x").await, 403);
    assert_eq!(status(&env, &proxy, &env.pki.alice, "/strict/x").await, 200);
    // No route and bad requests are always enforced, whatever enforce says.
    assert_eq!(status(&env, &proxy, &env.pki.bob, "/nowhere").await, 404);
    assert_eq!(status(&env, &proxy, &env.pki.bob, "/api/%2Fx").await, 400);

    let text = scrape(&proxy).await;
    let requests = |route: &str, decision: &str, reason: &str, code: &str| {
        metric(
            &text,
            "certguard_requests_total",
            &[
                ("route", route),
                ("decision", decision),
                ("reason", reason),
                ("code", code),
            ],
        )
    };
    assert_eq!(requests("api", "allowed", "not_enforced", "200"), 1.0);
    assert_eq!(requests("api", "allowed", "ok", "200"), 1.0);
    assert_eq!(requests("strict", "denied", "not_allowed", "403"), 1.0);
    assert_eq!(requests("none", "denied", "no_route", "404"), 1.0);
    assert_eq!(requests("none", "denied", "bad_request", "400"), 1.0);
    assert_eq!(
        shadow(&text, "api", "allowed", "allowed"),
        1.0,
        "bob on api"
    );
    assert_eq!(
        shadow(&text, "api", "allowed", "denied"),
        1.0,
        "alice on api"
    );
    assert_eq!(
        shadow(&text, "strict", "denied", "allowed"),
        1.0,
        "bob on strict"
    );
    assert_eq!(
        shadow(&text, "strict", "allowed", "denied"),
        1.0,
        "alice on strict"
    );
    // The 404 and the 400 reached no route: no shadow verdict.
    let total: f64 = ["allowed", "denied"]
        .iter()
        .flat_map(|e| ["allowed", "denied"].map(|s| (*e, s)))
        .map(|(e, s)| shadow(&text, "api", e, s) + shadow(&text, "strict", e, s))
        .sum();
    assert_eq!(total, 4.0);
}

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary serving `config`, its stdout lines (JSON logs) on a channel.
struct Binary {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Binary {
    fn spawn(config: &Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_certguard"))
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Binary { child, lines }
    }

    /// Every JSON line until `done` holds for the lines so far, or 10 s pass.
    fn lines_until(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while Instant::now() < deadline && !done(&out) {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                out.push(v);
            }
        }
        out
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET an admin path of a proxy that is not in this process.
async fn admin(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_widens_access_logs_access_changed_and_counts_gained() {
    let env = Env::new().await;
    let (port, admin_port) = (free_port(), free_port());
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let yaml = env
        .yaml(ROUTES, "logging:\n  format: json\n  level: info\n")
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1)
        .replacen("127.0.0.1:0", &admin_addr, 1)
        .replace("  watch: false\n", "  watch: true\n  debounce: 100ms\n");
    let path = env.write("certguard.yaml", &yaml);
    let binary = Binary::spawn(&path);
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        if let Some(text) = admin(&admin_addr, "/metrics").await {
            break text;
        }
        assert!(Instant::now() < deadline, "the binary did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let changes = |text: &str, change: &str| {
        metric(
            text,
            "certguard_access_changes_total",
            &[("change", change)],
        )
    };
    assert!(
        before.contains("certguard_access_changes_total{change=\"gained\"} 0"),
        "{before}"
    );

    // bob joins the api route: one (selector, route) pair gained, nothing lost.
    let widened = yaml.replace(
        "      - trust: internal\n        cn: alice",
        "      - trust: internal\n        cn: alice\n      - trust: internal\n        cn: bob",
    );
    env.write("certguard.yaml", &widened);
    let lines = binary.lines_until(|lines| {
        lines
            .iter()
            .any(|l| l["message"] == "access changed" && l["change"] == "gained")
    });
    let changed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "access changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:#?}");
    let line = changed[0];
    assert_eq!(line["target"], "certguard::audit");
    assert_eq!(line["change"], "gained");
    assert_eq!(line["selector"], "trust=internal, cn=bob");
    assert_eq!(line["route"], "api");
    assert_eq!(line["methods"], "GET, HEAD");
    assert_eq!(line["generation"], 2);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = admin(&admin_addr, "/metrics").await.unwrap_or_default();
        if changes(&text, "gained") == 1.0 {
            assert_eq!(changes(&text, "lost"), 0.0, "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "access_changes_total never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiring_clients_gauge_counts_a_certificate_expiring_in_three_days() {
    let env = Env::new().await;
    let routes = "  - name: all\n    path_prefix: /\n    upstream: app\n    allow:\n      - authenticated: true";
    let yaml = env.yaml(routes, "").replacen(
        "routes:\n",
        "  lab:\n    pinned:\n      - name: ci-runner\n        cert: ci-runner.crt\nroutes:\n",
        1,
    );
    let proxy = env.start(&yaml).await;
    let now = time::OffsetDateTime::now_utc();
    let mut spec = LeafSpec::client("short-lived");
    spec.not_after = now + time::Duration::days(3);
    let short = env.pki.inter.issue(&spec).unwrap();
    assert_eq!(status(&env, &proxy, &short, "/x").await, 200);
    // alice's certificate is long-lived: seen, but in no window.
    assert_eq!(status(&env, &proxy, &env.pki.alice, "/x").await, 200);

    let text = scrape(&proxy).await;
    let expiring = |trust: &str, within: &str| {
        metric(
            &text,
            "certguard_client_certificates_expiring",
            &[("trust", trust), ("within", within)],
        )
    };
    assert_eq!(expiring("internal", "1d"), 0.0, "{text}");
    assert_eq!(expiring("internal", "7d"), 1.0, "{text}");
    assert_eq!(expiring("internal", "30d"), 1.0, "{text}");
    assert!(text.contains(r#"certguard_client_certificates_expiring{trust="lab",within="30d"} 0"#));

    let not_after = |der: &[u8]| {
        let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
        x.validity().not_after.timestamp() as f64
    };
    assert_eq!(
        metric(
            &text,
            "certguard_trust_anchor_not_after_timestamp_seconds",
            &[("trust", "internal")]
        ),
        not_after(env.pki.root.cert.as_ref())
    );
    assert_eq!(
        metric(
            &text,
            "certguard_pinned_not_after_timestamp_seconds",
            &[("trust", "lab"), ("pinned", "ci-runner")]
        ),
        not_after(env.pki.ci.cert.as_ref())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_headers_carry_the_leaf_and_the_intermediates_sent() {
    let env = Env::new().await;
    let proxy = env
        .start(&env.yaml(ROUTES, "forward:\n  client_cert_headers: true\n"))
        .await;
    let mut c = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let req = Request::get("/api/x")
        .header("host", "localhost")
        .header("client-cert", ":Zm9yZ2Vk:")
        .header("client-cert-chain", ":Zm9yZ2Vk:")
        .body(empty())
        .unwrap();
    assert_eq!(common::read(c.send(req).await.unwrap()).await.0, 200);
    let seen = env.upstream.last();
    let b64 = |der: &[u8]| {
        use base64::Engine as _;
        format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let get = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(get("client-cert"), [b64(env.pki.alice.cert.as_ref())]);
    assert_eq!(get("client-cert-chain"), [b64(env.pki.inter.cert.as_ref())]);
}

fn run(args: &[&str], dir: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn certguard_diff_exits_0_3_2_and_check_prints_json() {
    let env = Env::new().await;
    let dir = env.dir.path();
    let old = env.yaml(ROUTES, "");
    env.write("old.yaml", &old);
    // Reordering routes that do not overlap, a comment and a timeout: access unchanged.
    let reordered = env.yaml(
        "  - name: api\n    path_prefix: /api\n    methods: [GET]\n    upstream: app\n    allow:\n      # reviewed\n      - cn: alice\n        trust: internal\n  - name: status\n    path: /status\n    upstream: app\n    allow:\n      - trust: internal",
        "",
    ).replace("timeout: 2s", "timeout: 3s");
    env.write("same.yaml", &reordered);
    // A catch-all moved above `status`: status is no longer reached.
    let shadowing = env.yaml(
        &format!("  - name: all\n    path_prefix: /\n    upstream: app\n    allow:\n      - cn: bob\n{ROUTES}"),
        "",
    );
    env.write("new.yaml", &shadowing);

    let (code, stdout, stderr) = run(&["diff", "old.yaml", "same.yaml"], dir);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "access unchanged\n");

    let (code, stdout, stderr) = run(&["diff", "old.yaml", "new.yaml"], dir);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    for line in [
        "  gained: cn=bob -> route all (any method)",
        "  lost:   trust=internal -> route status (any method)",
        "  lost:   trust=internal, cn=alice -> route api (GET, HEAD)",
        "  route_added route all: any host path_prefix=/ any method",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{stdout}"
        );
    }

    let (code, stdout, _) = run(&["diff", "--format", "json", "old.yaml", "new.yaml"], dir);
    assert_eq!(code, Some(3));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["gained"],
        serde_json::json!([{"selector": {"cn": "bob"}, "route": "all", "methods": null}])
    );
    assert_eq!(v["lost"].as_array().unwrap().len(), 2);
    assert_eq!(v["changes"][0]["change"], "route_added");

    let (code, _, stderr) = run(&["diff", "old.yaml", "missing.yaml"], dir);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.yaml"), "{stderr}");

    let (code, stdout, stderr) = run(&["check", "--format", "json", "-c", "new.yaml"], dir);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["matrix", "routes", "trust_sources", "warnings"]);
    assert_eq!(v["trust_sources"][0]["name"], "internal");
    assert_eq!(v["routes"][1]["name"], "status");
    assert_eq!(v["routes"][1]["reached"], false);
    let matrix = v["matrix"].as_array().unwrap();
    assert_eq!(matrix.len(), 3);
    assert_eq!(matrix[0]["rule"], "routes[0].allow[0]");
    assert_eq!(matrix[0]["selector"], serde_json::json!({"cn": "bob"}));
    assert_eq!(
        matrix[0]["routes"],
        serde_json::json!([{"route": "all", "host": null, "path": null, "path_prefix": "/", "methods": null}])
    );
    assert_eq!(
        matrix[1]["routes"],
        serde_json::json!([]),
        "status is shadowed"
    );
    assert!(
        v["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.starts_with("routes[1] (status): never reached"))),
        "{}",
        v["warnings"]
    );
}
