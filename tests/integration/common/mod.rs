//! Shared test fixtures: an rcgen PKI generated per test, the proxy started in-process on
//! 127.0.0.1:0 from a real config file, a real upstream, and real TLS clients.
#![allow(dead_code)]

pub mod client;
pub mod crl_server;
pub mod ocsp;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certguard::config::Config;
use certguard::devpki::{LeafSpec, TestCa, TestCert};
use certguard::Proxy;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

pub use client::{empty, read, tls_config, Conn};
pub use upstream::Upstream;

/// Every certificate the tests need, generated fresh.
pub struct Pki {
    pub root: TestCa,
    pub inter: TestCa,
    pub server: TestCert,
    pub alice: TestCert,
    pub bob: TestCert,
    pub revoked: TestCert,
    pub expired: TestCert,
    pub not_yet_valid: TestCert,
    pub server_auth_only: TestCert,
    pub long_lived: TestCert,
    /// Issued by a CA nobody trusts.
    pub stranger: TestCert,
    /// Self-signed, not pinned anywhere.
    pub rogue: TestCert,
    /// Self-signed, pinned as `ci-runner` in configs that want it.
    pub ci: TestCert,
}

impl Pki {
    pub fn new() -> Pki {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let root = TestCa::root("test root").unwrap();
        let inter = root.intermediate("test intermediate").unwrap();
        let mut server = LeafSpec::server("localhost");
        server.ips = vec!["127.0.0.1".parse().unwrap()];
        let server = inter.issue(&server).unwrap();
        let mut alice = LeafSpec::client("alice");
        alice.ou = Some("payments".into());
        alice.uris = vec!["spiffe://test.local/ns/default/sa/alice".into()];
        alice.dns = vec!["alice.billing.svc.cluster.local".into()];
        let alice = inter.issue(&alice).unwrap();
        let mut bob = LeafSpec::client("bob");
        bob.uris = vec!["spiffe://test.local/ns/default/sa/bob".into()];
        let bob = inter.issue(&bob).unwrap();
        let revoked = inter.issue(&LeafSpec::client("revoked")).unwrap();
        let mut expired = LeafSpec::client("expired");
        expired.not_before = now - day * 30;
        expired.not_after = now - day;
        let expired = inter.issue(&expired).unwrap();
        let mut nyv = LeafSpec::client("not-yet-valid");
        nyv.not_before = now + day;
        nyv.not_after = now + day * 30;
        let not_yet_valid = inter.issue(&nyv).unwrap();
        let mut sa = LeafSpec::client("server-auth-only");
        sa.eku = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_auth_only = inter.issue(&sa).unwrap();
        let mut ll = LeafSpec::client("long-lived");
        ll.not_after = now + day * 400;
        let long_lived = inter.issue(&ll).unwrap();
        let other = TestCa::root("other root").unwrap();
        let stranger = other.issue(&LeafSpec::client("stranger")).unwrap();
        let rogue = TestCert::self_signed(&LeafSpec::client("rogue")).unwrap();
        let ci = TestCert::self_signed(&LeafSpec::client("ci-runner")).unwrap();
        Pki {
            root,
            inter,
            server,
            alice,
            bob,
            revoked,
            expired,
            not_yet_valid,
            server_auth_only,
            long_lived,
            stranger,
            rogue,
            ci,
        }
    }
}

/// A test environment: a temp directory with the PKI written out, and a running upstream.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub upstream: Upstream,
}

impl Env {
    pub async fn new() -> Env {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let env = Env {
            dir,
            pki,
            upstream: Upstream::start().await,
        };
        let p = &env.pki;
        env.write("ca.crt", &p.root.cert_pem);
        let mut server_chain = p.server.cert_pem.clone();
        server_chain.push_str(&p.inter.cert_pem);
        env.write("server.crt", &server_chain);
        env.write("server.key", &p.server.key_pem);
        env.write("ci-runner.crt", &p.ci.cert_pem);
        env.write_crls(&[&p.revoked]);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file atomically (write a temp file, then rename over the target).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// (Re)write intermediate.crl listing `revoked`, and an empty ca.crl.
    pub fn write_crls(&self, revoked: &[&TestCert]) {
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::days(30);
        let serials: Vec<&[u8]> = revoked.iter().map(|c| c.serial.as_slice()).collect();
        let earlier = now - time::Duration::minutes(5);
        self.write(
            "intermediate.crl",
            &self.pki.inter.crl_pem(&serials, earlier, later).unwrap(),
        );
        self.write(
            "ca.crl",
            &self.pki.root.crl_pem(&[], earlier, later).unwrap(),
        );
    }

    /// A complete config: the standard listen/trust/upstream sections plus `routes`
    /// (a YAML block for the `routes:` key) and any `extra` top-level YAML.
    pub fn yaml(&self, routes: &str, extra: &str) -> String {
        format!(
            r#"listen:
  address: "127.0.0.1:0"
  cert: server.crt
  key: server.key
  handshake_timeout: 5s
trust:
  internal:
    ca: ca.crt
    crl: [intermediate.crl, ca.crl]
routes:
{routes}
upstreams:
  app:
    url: http://{up}
    connect_timeout: 1s
    timeout: 2s
admin:
  address: "127.0.0.1:0"
reload:
  watch: false
{extra}
"#,
            up = self.upstream.addr
        )
    }

    /// Write `yaml` as certguard.yaml and start the proxy on it.
    pub async fn start(&self, yaml: &str) -> Proxy {
        let path = self.write("certguard.yaml", yaml);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("config rejected:\n{e}"));
        Proxy::start(config).await.expect("proxy failed to start")
    }

    /// A client config presenting `cert` (with its chain), trusting the test root.
    pub fn client(&self, cert: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        tls_config(&self.pki.root.cert, Some(identity(cert)), alpn)
    }

    /// A client config presenting no certificate.
    pub fn anonymous(&self) -> Arc<rustls::ClientConfig> {
        tls_config(&self.pki.root.cert, None, &[b"http/1.1"])
    }

    /// Write a client's cert and key as PEM files (for curl) and return their paths.
    pub fn client_files(&self, name: &str, cert: &TestCert) -> (PathBuf, PathBuf) {
        let mut chain = String::new();
        for c in &cert.chain {
            chain.push_str(&pem(c));
        }
        (
            self.write(&format!("{name}.crt"), &chain),
            self.write(&format!("{name}.key"), &cert.key_pem),
        )
    }
}

pub fn identity(cert: &TestCert) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        cert.chain.clone(),
        PrivateKeyDer::Pkcs8(cert.key_der.clone_key()),
    )
}

pub fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    upstream::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// Scrape the admin /metrics text.
pub async fn scrape(proxy: &Proxy) -> String {
    admin_get(proxy, "/metrics").await.1
}

/// GET an admin path over plain HTTP.
pub async fn admin_get(proxy: &Proxy, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one metric series, e.g. `metric(&text, "certguard_requests_total", &[("code", "200")])`:
/// sums every series of that name whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Every `certguard_tls_handshakes_total` series in a scrape, keyed by (trust, outcome).
pub fn handshake_counts(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix("certguard_tls_handshakes_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let mut trust = None;
        let mut outcome = None;
        // Label values come from config names and fixed sets: no commas or quotes inside.
        for pair in labels.split(',') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"').to_owned();
            match k {
                "trust" => trust = Some(v),
                "outcome" => outcome = Some(v),
                _ => {}
            }
        }
        let (Some(trust), Some(outcome)) = (trust, outcome) else {
            panic!("handshake series without trust/outcome: {line}");
        };
        out.insert((trust, outcome), value.parse().unwrap());
    }
    out
}

/// Scrape until the proxy has counted at least `n` handshakes more than in `before` (for up
/// to 10 s: the server counts a failure after sending its alert, so the client may see the
/// verdict first), then return every (trust, outcome) series that changed, with its delta.
pub async fn handshakes_since(proxy: &Proxy, before: &str, n: f64) -> Vec<(String, String, f64)> {
    let before = handshake_counts(before);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = handshake_counts(&scrape(proxy).await);
        let counted: f64 = after.values().sum::<f64>() - before.values().sum::<f64>();
        if counted >= n || std::time::Instant::now() > deadline {
            return after
                .into_iter()
                .filter_map(|((trust, outcome), count)| {
                    let delta = count - before.get(&(trust.clone(), outcome.clone()))?;
                    (delta != 0.0).then_some((trust, outcome, delta))
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Assert that the proxy refuses the client `config` presents, and counts exactly that one
/// handshake as `certguard_tls_handshakes_total{trust, outcome}`.
pub async fn assert_rejected(
    proxy: &Proxy,
    config: &rustls::ClientConfig,
    trust: &str,
    outcome: &str,
    what: &str,
) {
    let before = scrape(proxy).await;
    let verdict = client::admitted(proxy.listen_addr, config, "localhost").await;
    assert!(verdict.is_err(), "{what}: the proxy admitted the client");
    assert_eq!(
        handshakes_since(proxy, &before, 1.0).await,
        vec![(trust.to_owned(), outcome.to_owned(), 1.0)],
        "{what}: expected one handshake counted as trust={trust} outcome={outcome}"
    );
}

/// What the live proxy made of one (certificate, request) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The handshake failed, counted with this trust source and outcome label.
    Rejected { trust: String, outcome: String },
    /// The handshake succeeded and the request got this status.
    Status(u16),
}

/// Send `req` on a fresh connection presenting what `config` presents, and report the
/// status, or the handshake failure as the proxy counted it.
pub async fn verdict(
    proxy: &Proxy,
    config: Arc<rustls::ClientConfig>,
    req: http::Request<client::ReqBody>,
) -> Verdict {
    let before = scrape(proxy).await;
    let result = client::request_once(proxy.listen_addr, config, "localhost", req).await;
    let counted = handshakes_since(proxy, &before, 1.0).await;
    let [(trust, outcome, delta)] = &counted[..] else {
        panic!("expected exactly one handshake to be counted, got {counted:?} ({result:?})");
    };
    assert_eq!(*delta, 1.0, "{counted:?}");
    match result {
        Ok(status) => {
            assert_eq!(outcome, "success", "a response after a failed handshake");
            Verdict::Status(status)
        }
        Err(e) => {
            assert_ne!(
                outcome, "success",
                "the request failed after a successful handshake: {e}"
            );
            Verdict::Rejected {
                trust: trust.clone(),
                outcome: outcome.clone(),
            }
        }
    }
}

/// An external tool the tests need: `$VAR`, else `name` on the PATH. `None` (skip) only
/// outside CI; in CI (.ci/run installs them) a missing tool fails the test.
pub fn tool(var: &str, name: &str, probe: &[&str]) -> Option<String> {
    let found = std::env::var(var)
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| Some(name.to_owned()))
        .filter(|cmd| {
            std::process::Command::new(cmd)
                .args(probe)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "{name} is required in CI (.ci/run installs it)"
        );
        eprintln!("{name} not available: skipping (run .ci/run to install it)");
    }
    found
}

/// The lines `child` writes to its (piped) stdout, as they come, read on a thread of their own.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}
