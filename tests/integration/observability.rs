//! Observability: exact metric counts after a scripted mix, promtool lint, the identity
//! inventory, readiness, the JSON audit line, and `explain` agreeing with the live proxy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certguard::devpki::TestCert;

use crate::common::{admin_get, client, metric, scrape, verdict, Conn, Env, Verdict};

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
        cn: alice
      - pinned: ci-runner
  - name: down
    path: /down
    upstream: down
    allow:
      - authenticated: true"#;

fn config(env: &Env) -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.yaml(ROUTES, "")
        .replace("admin:\n", &format!("  down:\n    url: http://{dead}\n    connect_timeout: 500ms\nadmin:\n"))
        .replacen(
            "routes:\n",
            "  lab:\n    pinned:\n      - name: ci-runner\n        cert: ci-runner.crt\n        owner: platform\n        review_by: 2020-01-01\nroutes:\n",
            1,
        )
}

async fn wait_for(
    proxy: &certguard::Proxy,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(proxy).await;
        if metric(&text, name, labels) >= want || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counters_match_a_scripted_mix() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env)).await;
    let p = &env.pki;
    let before = scrape(&proxy).await;
    // Zero-initialized series exist before any traffic.
    assert!(
        before.contains("certguard_tls_handshakes_total{outcome=\"revoked\",trust=\"internal\"} 0"),
        "{before}"
    );
    assert!(before.contains("certguard_reloads_total{result=\"failure\"} 0"));
    assert_eq!(
        metric(
            &before,
            "certguard_pinned_review_overdue",
            &[("trust", "lab")]
        ),
        1.0
    );

    let failures: [&TestCert; 4] = [&p.stranger, &p.revoked, &p.expired, &p.rogue];
    for cert in failures {
        let config = env.client(cert, &[b"http/1.1"]);
        assert!(client::admitted(proxy.listen_addr, &config, "localhost")
            .await
            .is_err());
    }
    assert!(
        client::admitted(proxy.listen_addr, &env.anonymous(), "localhost")
            .await
            .is_err()
    );
    let mut alice = Conn::open(
        proxy.listen_addr,
        env.client(&p.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let mut bob = Conn::open(
        proxy.listen_addr,
        env.client(&p.bob, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(alice.get("localhost", "/api/a").await.0, 200);
    assert_eq!(alice.get("localhost", "/api/b").await.0, 200);
    assert_eq!(bob.get("localhost", "/status").await.0, 200);
    assert_eq!(bob.get("localhost", "/api/a").await.0, 403);
    assert_eq!(bob.get("localhost", "/nope").await.0, 404);
    assert_eq!(alice.get("localhost", "/down").await.0, 502);
    assert_eq!(alice.get("other.host", "/api/a").await.0, 421);

    // Every handshake has been counted (failures are counted after the client saw its alert).
    let text = wait_for(&proxy, "certguard_tls_handshakes_total", &[], 7.0).await;
    let hs = |trust: &str, outcome: &str| {
        metric(
            &text,
            "certguard_tls_handshakes_total",
            &[("trust", trust), ("outcome", outcome)],
        )
    };
    assert_eq!(hs("internal", "success"), 2.0);
    assert_eq!(hs("none", "unknown_issuer"), 1.0);
    assert_eq!(hs("internal", "revoked"), 1.0);
    assert_eq!(hs("internal", "expired"), 1.0);
    assert_eq!(hs("none", "pin_mismatch"), 1.0);
    assert_eq!(hs("none", "no_client_cert"), 1.0);
    assert_eq!(
        metric(&text, "certguard_tls_handshakes_total", &[]),
        7.0,
        "no other handshakes were counted"
    );
    let req = |route: &str, decision: &str, reason: &str, code: &str| {
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
    assert_eq!(req("api", "allowed", "ok", "200"), 2.0);
    assert_eq!(req("status", "allowed", "ok", "200"), 1.0);
    assert_eq!(req("api", "denied", "not_allowed", "403"), 1.0);
    assert_eq!(req("none", "denied", "no_route", "404"), 1.0);
    assert_eq!(req("down", "allowed", "upstream_error", "502"), 1.0);
    assert_eq!(req("none", "denied", "sni_mismatch", "421"), 1.0);
    assert_eq!(metric(&text, "certguard_requests_total", &[]), 7.0);
    assert_eq!(
        metric(
            &text,
            "certguard_upstream_errors_total",
            &[("upstream", "down"), ("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(metric(&text, "certguard_connections_active", &[]), 2.0);
    assert_eq!(
        metric(
            &text,
            "certguard_request_duration_seconds_count",
            &[("route", "api")]
        ),
        3.0
    );
    assert!(
        metric(
            &text,
            "certguard_upstream_request_duration_seconds_count",
            &[("upstream", "app")]
        ) >= 3.0
    );
    assert!(
        metric(
            &text,
            "certguard_crl_next_update_timestamp_seconds",
            &[("trust", "internal"), ("file", "intermediate.crl")]
        ) > 1.7e9
    );
    assert!(
        metric(
            &text,
            "certguard_server_cert_not_after_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(metric(&text, "certguard_config_generation", &[]), 1.0);
    // Label values never come from paths or certificate text.
    for leaked in ["/api/a", "/nope", "alice", "CN="] {
        assert!(!text.contains(leaked), "metrics leak {leaked}");
    }

    promtool_lint(&text);
}

fn promtool_lint(text: &str) {
    let promtool = std::env::var("PROMTOOL")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| {
            Command::new("promtool")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| "promtool".into())
        });
    let Some(promtool) = promtool else {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is required in CI (.ci/run installs it)"
        );
        eprintln!("promtool not installed: skipping the metrics lint (run .ci/run to install it)");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn identities_inventory_and_readiness() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env)).await;
    assert_eq!(admin_get(&proxy, "/readyz").await.0, 200);
    assert_eq!(admin_get(&proxy, "/healthz").await.0, 200);
    assert_eq!(admin_get(&proxy, "/nope").await.0, 404);
    let p = &env.pki;
    let mut alice = Conn::open(
        proxy.listen_addr,
        env.client(&p.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(alice.get("localhost", "/api/x").await.0, 200);
    }
    assert_eq!(alice.get("localhost", "/nope").await.0, 404);
    let mut ci = Conn::open(
        proxy.listen_addr,
        env.client(&p.ci, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(ci.get("localhost", "/api/x").await.0, 200);
    assert_eq!(ci.get("localhost", "/status").await.0, 403);

    let (status, body) = admin_get(&proxy, "/identities").await;
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 2, "{body}");
    let find = |fp: &str| {
        list.iter()
            .find(|v| v["fingerprint"] == fp)
            .unwrap_or_else(|| panic!("{fp} missing: {body}"))
            .clone()
    };
    let a = find(&crate::common::sha256_hex(p.alice.cert.as_ref()));
    assert_eq!(a["trust"], "internal");
    assert_eq!(a["pinned"], serde_json::Value::Null);
    assert_eq!(a["subject"], "CN=alice,OU=payments");
    assert_eq!(a["spiffe_id"], "spiffe://test.local/ns/default/sa/alice");
    assert_eq!(a["requests_allowed"], 3);
    assert_eq!(a["requests_denied"], 1);
    let c = find(&crate::common::sha256_hex(p.ci.cert.as_ref()));
    assert_eq!(c["trust"], "lab");
    assert_eq!(c["pinned"], "ci-runner");
    assert_eq!(c["requests_allowed"], 1);
    assert_eq!(c["requests_denied"], 1);
    // The blast radius under the current snapshot (SPEC 9.7).
    assert_eq!(a["routes"], serde_json::json!(["status", "api", "down"]));
    assert_eq!(c["routes"], serde_json::json!(["api", "down"]));
    let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "fingerprint",
            "first_seen",
            "last_seen",
            "not_after",
            "pinned",
            "requests_allowed",
            "requests_denied",
            "routes",
            "san_dns",
            "serial",
            "spiffe_id",
            "subject",
            "trust"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_line_for_a_denied_request_names_route_reason_and_fingerprint() {
    let env = Env::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = config(&env).replace(
        "  address: \"127.0.0.1:0\"\n  cert:",
        &format!("  address: \"127.0.0.1:{port}\"\n  cert:"),
    ) + "logging:\n  format: json\n  level: info\n";
    let path = env.write("certguard.yaml", &yaml);
    let mut child = Command::new(env!("CARGO_BIN_EXE_certguard"))
        .args(["run", "-c"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = crate::common::stdout_lines(&mut child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut bob = None;
    for _ in 0..100 {
        if let Ok(c) = Conn::open(addr, env.client(&env.pki.bob, &[b"http/1.1"]), "localhost").await
        {
            bob = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bob = bob.expect("binary did not start");
    assert_eq!(bob.get("localhost", "/api/secret?token=abc").await.0, 403);
    let revoked = env.client(&env.pki.revoked, &[b"http/1.1"]);
    assert!(client::admitted(addr, &revoked, "localhost").await.is_err());
    let fingerprint = crate::common::sha256_hex(env.pki.bob.cert.as_ref());
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut request_line, mut handshake_line) = (None, None);
    while Instant::now() < deadline && (request_line.is_none() || handshake_line.is_none()) {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            panic!("log line is not JSON: {line}");
        };
        if v["target"] == "certguard::audit" && v["reason"] == "not_allowed" {
            request_line = Some(v);
        } else if v["target"] == "certguard::audit" && v["outcome"] == "revoked" {
            handshake_line = Some(v);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let r = request_line.expect("no audit line for the denied request");
    assert_eq!(r["route"], "api");
    assert_eq!(r["decision"], "denied");
    assert_eq!(r["status"], 403);
    assert_eq!(r["fingerprint"], fingerprint.as_str());
    assert_eq!(r["path"], "/api/secret");
    assert_eq!(r["trust"], "internal");
    for key in [
        "conn_id",
        "peer",
        "sni",
        "subject",
        "method",
        "host",
        "duration_ms",
    ] {
        assert!(r.get(key).is_some(), "audit line lacks {key}: {r}");
    }
    let h = handshake_line.expect("no audit line for the failed handshake");
    assert_eq!(h["trust"], "internal");
    assert!(h.get("peer").is_some() && h.get("sni").is_some(), "{h}");
}

/// What `certguard explain` predicts, read from its exit code and its `decision:` line
/// (src/report.rs): a status code, or the handshake outcome and trust source.
fn explained(stdout: &str, exit: Option<i32>) -> Verdict {
    let decision = stdout
        .lines()
        .find_map(|l| l.strip_prefix("decision: "))
        .unwrap_or_else(|| panic!("no decision line:\n{stdout}"));
    let verdict = if decision.starts_with("ALLOWED") {
        Verdict::Status(200)
    } else if let Some(code) = decision.strip_prefix("DENIED with ") {
        Verdict::Status(code[..3].parse().unwrap())
    } else if let Some(rest) = decision.strip_prefix(
        "DENIED: no trust source admits this certificate; the handshake fails with outcome ",
    ) {
        // "<outcome> (trust <name>)"
        let (outcome, trust) = rest
            .strip_suffix(')')
            .and_then(|r| r.split_once(" (trust "))
            .unwrap_or_else(|| panic!("unexpected decision line: {decision}"));
        Verdict::Rejected {
            trust: trust.to_owned(),
            outcome: outcome.to_owned(),
        }
    } else {
        panic!("unexpected decision line: {decision}");
    };
    let want_exit = if verdict == Verdict::Status(200) {
        0
    } else {
        1
    };
    assert_eq!(
        exit,
        Some(want_exit),
        "exit code for {verdict:?}:\n{stdout}"
    );
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_live_proxy() {
    let env = Env::new().await;
    let yaml = config(&env);
    let proxy = env.start(&yaml).await;
    let config_path = env.path("certguard.yaml");
    let p = &env.pki;
    let clients: [(&str, &TestCert); 7] = [
        ("alice", &p.alice),
        ("bob", &p.bob),
        ("ci", &p.ci),
        ("revoked", &p.revoked),
        ("expired", &p.expired),
        ("rogue", &p.rogue),
        ("stranger", &p.stranger),
    ];
    let requests = [
        ("GET", "/api/x"),
        ("GET", "/status"),
        ("POST", "/api/x"),
        ("GET", "/status/../api/y"),
        ("GET", "/other"),
    ];
    let mut compared = Vec::new();
    for (name, cert) in clients {
        let (crt, _) = env.client_files(name, cert);
        for (method, path) in requests {
            let out = Command::new(env!("CARGO_BIN_EXE_certguard"))
                .args(["explain", "-c"])
                .arg(&config_path)
                .arg("--cert")
                .arg(&crt)
                .args(["--method", method, "--host", "localhost", path])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                matches!(out.status.code(), Some(0 | 1)),
                "explain failed ({:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
            let predicted = explained(&stdout, out.status.code());
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost")
                .body(crate::common::empty())
                .unwrap();
            let live = verdict(&proxy, env.client(cert, &[b"http/1.1"]), req).await;
            assert_eq!(
                predicted, live,
                "{name} {method} {path}: explain and the proxy disagree\n{stdout}"
            );
            compared.push(live);
        }
    }
    assert!(compared.len() >= 10);
    // The pairs cover every kind of result, so agreement is not trivial.
    for want in [
        Verdict::Status(200),
        Verdict::Status(403),
        Verdict::Status(404),
        Verdict::Rejected {
            trust: "internal".into(),
            outcome: "revoked".into(),
        },
        Verdict::Rejected {
            trust: "internal".into(),
            outcome: "expired".into(),
        },
        Verdict::Rejected {
            trust: "none".into(),
            outcome: "pin_mismatch".into(),
        },
        Verdict::Rejected {
            trust: "none".into(),
            outcome: "unknown_issuer".into(),
        },
    ] {
        assert!(compared.contains(&want), "no pair produced {want:?}");
    }
}

#[tokio::test]
async fn stalled_and_garbage_handshakes_are_counted_as_timeout_and_protocol_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let yaml = config(&env).replace("  handshake_timeout: 5s\n", "  handshake_timeout: 500ms\n");
    let proxy = env.start(&yaml).await;
    // A client that connects and never speaks is dropped after handshake_timeout.
    let mut silent = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "silent client must be disconnected"
    );
    // A client that speaks plain HTTP to the TLS port is a protocol error.
    let mut plain = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    let text = wait_for(
        &proxy,
        "certguard_tls_handshakes_total",
        &[("outcome", "protocol_error")],
        1.0,
    )
    .await;
    let hs = |outcome: &str| {
        metric(
            &text,
            "certguard_tls_handshakes_total",
            &[("trust", "none"), ("outcome", outcome)],
        )
    };
    assert_eq!(hs("timeout"), 1.0);
    assert_eq!(hs("protocol_error"), 1.0);
    assert_eq!(
        metric(
            &text,
            "certguard_tls_handshake_duration_seconds_count",
            &[("result", "failure")]
        ),
        2.0
    );
}
