//! Regression tests for what an attack on a running instance found: lower-case methods that
//! missed method-restricted routes, HEAD beside GET-only routes, CONNECT, identity headers
//! smuggled as trailers, other proxies' identity headers, streams that outlive a revocation
//! or an intermediate's expiry, HTTP/2 clients that never open their window, uploads that
//! outlast their response, the concurrency limits towards upstreams, method-override headers
//! and parameters, and an inbound XFCC crafted to swallow certguard's element (`append`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::client::{self, ReqBody};
use crate::common::{empty, metric, scrape, Conn, Env};

const ROUTES: &str = r#"  - name: orders-write
    path_prefix: /orders
    methods: [POST, PUT, DELETE, PATCH]
    upstream: app
    allow:
      - cn: alice
  - name: reports
    path_prefix: /reports
    methods: [GET]
    upstream: app
    allow:
      - cn: alice
  - name: everything
    path_prefix: /
    upstream: app
    allow:
      - authenticated: true"#;

/// The config with `listen_keys` added to `listen:` and `extra` top-level YAML.
fn config(env: &Env, listen_keys: &[&str], extra: &str) -> String {
    let added: String = listen_keys.iter().map(|k| format!("  {k}\n")).collect();
    env.yaml(ROUTES, extra).replace(
        "  handshake_timeout: 5s\n",
        &format!("  handshake_timeout: 5s\n{added}"),
    )
}

/// Add `h2app`, the same test upstream spoken to over h2c, beside `app`.
fn with_h2c_upstream(env: &Env, yaml: &str) -> String {
    yaml.replace(
        "upstreams:\n",
        &format!(
            "upstreams:\n  h2app:\n    url: h2c://{}\n    timeout: 2s\n",
            env.upstream.addr
        ),
    )
}

fn request(http2: bool, method: &str, path: &str, body: ReqBody) -> Request<ReqBody> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let builder = if http2 {
        Request::builder().uri(format!("https://localhost{path}"))
    } else {
        Request::builder().uri(path).header("host", "localhost")
    };
    builder.method(method).body(body).unwrap()
}

async fn conn(
    env: &Env,
    proxy: &certguard::Proxy,
    who: &certguard::devpki::TestCert,
    h2: bool,
) -> Conn {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let c = Conn::open(proxy.listen_addr, env.client(who, &[alpn]), "localhost")
        .await
        .unwrap();
    assert_eq!(c.http2, h2);
    c
}

/// Evaluate `cond` (it may `.await`) every 50 ms until it holds, failing after `within`.
macro_rules! eventually {
    ($within:expr, $what:expr, $cond:expr) => {{
        let deadline = Instant::now() + $within;
        loop {
            if $cond {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not within {:?}: {}",
                $within,
                $what
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

#[tokio::test]
async fn lower_case_methods_are_refused_not_routed_elsewhere() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    for h2 in [false, true] {
        let mut bob = conn(&env, &proxy, &env.pki.bob, h2).await;
        for method in ["delete", "Delete", "post", "pAtch"] {
            let before = env.upstream.seen().len();
            let resp = bob.send(request(h2, method, "/orders/7", empty())).await;
            let status = resp.map(|r| r.status().as_u16()).unwrap();
            assert_eq!(status, 400, "bob {method} /orders/7 (h2: {h2})");
            assert_eq!(
                env.upstream.seen().len(),
                before,
                "{method} reached the upstream"
            );
        }
        // The real spelling meets the route meant for it.
        let resp = bob.send(request(h2, "DELETE", "/orders/7", empty())).await;
        assert_eq!(resp.unwrap().status(), 403, "bob DELETE (h2: {h2})");
        let resp = bob.send(request(h2, "GET", "/orders/7", empty())).await;
        assert_eq!(
            resp.unwrap().status(),
            200,
            "bob GET reaches the broad route"
        );
    }
    let mut alice = conn(&env, &proxy, &env.pki.alice, false).await;
    let resp = alice
        .send(request(false, "DELETE", "/orders/7", empty()))
        .await;
    assert_eq!(resp.unwrap().status(), 200);
    assert_eq!(env.upstream.last().method, "DELETE");
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[
                ("route", "none"),
                ("reason", "bad_request"),
                ("code", "400")
            ]
        ),
        8.0
    );
}

#[tokio::test]
async fn head_is_judged_by_the_get_route() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    for h2 in [false, true] {
        let mut bob = conn(&env, &proxy, &env.pki.bob, h2).await;
        let resp = bob.send(request(h2, "HEAD", "/reports/q3", empty())).await;
        assert_eq!(
            resp.unwrap().status(),
            403,
            "bob HEAD on the GET-only route"
        );
        let mut alice = conn(&env, &proxy, &env.pki.alice, h2).await;
        let resp = alice
            .send(request(h2, "HEAD", "/reports/q3", empty()))
            .await;
        assert_eq!(
            resp.unwrap().status(),
            200,
            "alice HEAD on the GET-only route"
        );
    }
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[("route", "reports"), ("reason", "not_allowed")]
        ),
        2.0
    );
}

/// Send raw bytes over a fresh mTLS connection as `who` and read until close or `wait`.
async fn raw(
    env: &Env,
    proxy: &certguard::Proxy,
    who: &certguard::devpki::TestCert,
    bytes: &[u8],
    wait: Duration,
) -> String {
    let mut tls = client::connect_tls(
        proxy.listen_addr,
        env.client(who, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tls.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn connect_is_refused_in_every_form() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    for head in [
        "CONNECT /x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        "connect /x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let resp = raw(
            &env,
            &proxy,
            &env.pki.alice,
            head.as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{head:?}: {resp}");
    }
    // HTTP/2 CONNECT (authority only, no :path).
    let mut alice = conn(&env, &proxy, &env.pki.alice, true).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("localhost:443")
        .body(empty())
        .unwrap();
    let status = alice.send(req).await.map(|r| r.status().as_u16());
    assert_eq!(status.unwrap(), 400);
    assert!(
        env.upstream.seen().is_empty(),
        "CONNECT reached the upstream"
    );
}

#[tokio::test]
async fn identity_headers_smuggled_as_trailers_are_dropped() {
    let env = Env::new().await;
    let extra = "forward:\n  strip_headers: [x-internal-role]\n";
    let yaml = with_h2c_upstream(&env, &config(&env, &[], extra));
    // PUT /upload goes to the upstream over h2c, POST /upload over HTTP/1.1.
    let yaml = yaml.replace(
        "  - name: everything\n    path_prefix: /\n    upstream: app",
        "  - name: h2\n    path: /upload\n    methods: [PUT]\n    upstream: h2app\n    allow:\n      - authenticated: true\n  - name: everything\n    path_prefix: /\n    upstream: app",
    );
    let proxy = env.start(&yaml).await;
    let hostile = [
        ("x-forwarded-client-cert", "Hash=evil;Subject=\"CN=admin\""),
        ("client-cert", ":AAAA:"),
        ("client-cert-chain", ":AAAA:"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x_forwarded_client_cert", "Hash=evil"),
        ("x-internal-role", "admin"),
        ("x-real-ip", "6.6.6.6"),
        ("host", "evil.example"),
        ("content-length", "0"),
    ];
    // HTTP/1.1, chunked, with every trailer declared, to an HTTP/1.1 upstream.
    let names: Vec<&str> = hostile.iter().map(|(k, _)| *k).collect();
    let mut raw_req = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Trailer: {}, x-checksum\r\n\r\n5\r\nhello\r\n0\r\n",
        names.join(", ")
    );
    for (k, v) in hostile {
        raw_req.push_str(&format!("{k}: {v}\r\n"));
    }
    raw_req.push_str("x-checksum: abc\r\n\r\n");
    let resp = raw(
        &env,
        &proxy,
        &env.pki.alice,
        raw_req.as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = env.upstream.last();
    assert_eq!(
        seen.headers.get("trailer").map(|v| v.to_str().unwrap()),
        Some("x-checksum"),
        "the Trailer header still announces dropped fields"
    );
    // HTTP/2 with trailers to an h2c upstream (which relays every trailer it is given).
    let mut alice = conn(&env, &proxy, &env.pki.alice, true).await;
    let mut trailers = HeaderMap::new();
    for (k, v) in hostile
        .iter()
        .filter(|(k, _)| *k != "host" && *k != "content-length")
    {
        trailers.insert(*k, v.parse().unwrap());
    }
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames = vec![
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body: ReqBody = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let resp = alice
        .send(request(true, "PUT", "/upload", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = crate::common::read(resp).await;

    let all = env.upstream.trailers();
    assert_eq!(all.len(), 2, "both bodies carried trailers: {all:?}");
    for (i, t) in all.iter().enumerate() {
        let names: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-checksum"],
            "body {i}: the upstream got trailers {t:?}"
        );
    }
}

#[tokio::test]
async fn other_proxies_identity_headers_are_stripped_by_default() {
    let env = Env::new().await;
    let foreign = [
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-ssl-client-cert", "-----BEGIN%20CERTIFICATE-----"),
        ("x-ssl-client-verify", "SUCCESS"),
        ("ssl_client_s_dn", "CN=admin"),
        ("ssl-client-verify", "SUCCESS"),
        ("x-amzn-mtls-clientcert-subject", "CN=admin"),
        ("x-arr-clientcert", "MIIB"),
    ];
    for strip in [true, false] {
        let extra = format!("forward:\n  strip_identity_headers: {strip}\n");
        let proxy = env.start(&config(&env, &[], &extra)).await;
        let mut alice = conn(&env, &proxy, &env.pki.alice, false).await;
        let mut req = request(false, "GET", "/x", empty());
        for (k, v) in foreign {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        req.headers_mut()
            .insert("x-request-id", "kept".parse().unwrap());
        assert_eq!(alice.send(req).await.unwrap().status(), 200);
        let seen = env.upstream.last();
        for (k, _) in foreign {
            assert_eq!(
                seen.headers.contains_key(k),
                !strip,
                "{k} with strip_identity_headers: {strip}"
            );
        }
        assert_eq!(seen.headers["x-request-id"], "kept");
        // certguard's own X-Forwarded-For is always its own.
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        proxy.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn method_overrides_naming_another_method_are_refused() {
    // bob may POST through the broad route; a framework honouring the override would run
    // DELETE, which policy never judged.
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    for h2 in [false, true] {
        let mut bob = conn(&env, &proxy, &env.pki.bob, h2).await;
        let before = env.upstream.seen().len();
        for (name, path) in [
            ("x-http-method-override", "/x"),
            ("x-http-method", "/x"),
            ("x-method-override", "/x"),
            ("x_http_method_override", "/x"),
            ("", "/x?_method=DELETE"),
            ("", "/x?a=1&%5Fmethod=delete"),
            ("", "/x?.method=DELETE"),
        ] {
            let mut req = request(h2, "POST", path, empty());
            if !name.is_empty() {
                req.headers_mut().insert(name, "DELETE".parse().unwrap());
            }
            let status = bob.send(req).await.map(|r| r.status().as_u16());
            assert_eq!(status.unwrap(), 400, "{name} {path} (h2: {h2})");
        }
        assert_eq!(
            env.upstream.seen().len(),
            before,
            "an override reached the upstream"
        );
        // An override that names the request's own method changes nothing and is relayed.
        let mut req = request(h2, "POST", "/x?_method=post", empty());
        req.headers_mut()
            .insert("x-http-method-override", "POST".parse().unwrap());
        assert_eq!(bob.send(req).await.unwrap().status(), 200, "h2: {h2}");
        let seen = env.upstream.last();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.headers["x-http-method-override"], "POST");
    }
    // The raw HTTP/1 spelling with `_`, as Rack reads it.
    let resp = raw(
        &env,
        &proxy,
        &env.pki.bob,
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nX_HTTP_Method_Override: DELETE\r\nContent-Length: 0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[
                ("route", "none"),
                ("reason", "bad_request"),
                ("code", "400")
            ]
        ),
        15.0
    );
}

/// `body` as frames of `size` bytes (a client's DATA frames or chunks).
fn in_frames(body: &[u8], size: usize) -> ReqBody {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = body
        .chunks(size)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

fn multipart_body(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, content) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// Rack (every Rails app), Laravel and Symfony run a POST as the method a `_method` field of
/// its form body names (Laravel: also a `_method` key of its JSON body). The body is read as it streams: such a field gets 400 and the upstream
/// (which, like Rack, reads the whole form before answering) never gets all of it; forms that
/// name POST, other media types and other methods pass byte for byte.
#[tokio::test]
async fn form_bodies_naming_another_method_are_refused() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    let boundary = "----certguardBoundary7MA4YWxk";
    let multipart = format!("multipart/form-data; boundary={boundary}");
    let pattern = b"ab\r\n-_=&%";
    let file: Vec<u8> = (0..200_000).map(|i| pattern[i % pattern.len()]).collect();
    let hostile: Vec<(Option<&str>, Vec<u8>)> = vec![
        (
            Some("application/x-www-form-urlencoded"),
            b"a=1&_method=DELETE".to_vec(),
        ),
        (None, b"note=x&%5Fmethod=delete&b=2".to_vec()),
        (
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"_method=PU".iter().chain(b"T").copied().collect(),
        ),
        (
            Some(multipart.as_str()),
            multipart_body(boundary, &[("upload", &file), ("_method", b"PATCH")]),
        ),
        // Laravel reads `_method` from a JSON body.
        (
            Some("application/json; charset=utf-8"),
            br#"{"items":[1,2,3],"_method":"DELETE"}"#.to_vec(),
        ),
    ];
    for h2 in [false, true] {
        for (i, (content_type, body)) in hostile.iter().enumerate() {
            for size in [1, 7, 1000, 16384] {
                // (h2 ends a connection that sends many tiny DATA frames: small bodies only.)
                if size < 1000 && body.len() > 1000 {
                    continue;
                }
                let mut bob = conn(&env, &proxy, &env.pki.bob, h2).await;
                let mut req = request(h2, "POST", "/upload", in_frames(body, size));
                if let Some(ct) = content_type {
                    req.headers_mut()
                        .insert("content-type", ct.parse().unwrap());
                }
                let resp = bob
                    .send(req)
                    .await
                    .unwrap_or_else(|e| panic!("case {i}, frames of {size} (h2: {h2}): {e:?}"));
                let status = resp.status().as_u16();
                let text =
                    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
                        .to_string();
                assert_eq!(
                    (status, text.as_str()),
                    (400, "bad request\n"),
                    "case {i}, frames of {size} (h2: {h2})"
                );
            }
        }
        // What passes arrives whole: the upstream's byte count and hash of what it got.
        let good: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
            (
                "POST",
                Some("application/x-www-form-urlencoded"),
                b"a=1&_method=POST".to_vec(),
            ),
            ("POST", None, b"_method=+post+&x=%26".to_vec()),
            (
                "POST",
                Some(multipart.as_str()),
                multipart_body(boundary, &[("_method", b"post"), ("upload", &file)]),
            ),
            (
                "POST",
                Some("application/json"),
                br#"{"_method":"POST","note":"_method=DELETE","n":{"_method":"PUT"}}"#.to_vec(),
            ),
            (
                "POST",
                Some("text/plain"),
                br#"{"_method":"DELETE"}"#.to_vec(),
            ),
            (
                "PUT",
                Some("application/x-www-form-urlencoded"),
                b"_method=DELETE".to_vec(),
            ),
        ];
        for (method, content_type, body) in &good {
            for size in [1, 5, 1000, 65536] {
                if size < 1000 && body.len() > 1000 {
                    continue;
                }
                let mut bob = conn(&env, &proxy, &env.pki.bob, h2).await;
                let mut req = request(h2, method, "/upload", in_frames(body, size));
                if let Some(ct) = content_type {
                    req.headers_mut()
                        .insert("content-type", ct.parse().unwrap());
                }
                let resp = bob.send(req).await.unwrap();
                let status = resp.status().as_u16();
                let text =
                    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
                        .to_string();
                let want = format!("{} {}", body.len(), crate::common::sha256_hex(body));
                assert_eq!(
                    (status, text),
                    (200, want),
                    "{method} {content_type:?}, frames of {size} (h2: {h2})"
                );
            }
        }
    }
    // A raw HTTP/1.1 form with Content-Length whose value ends the body: refused before the
    // upstream has every byte.
    let resp = raw(
        &env,
        &proxy,
        &env.pki.bob,
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\n_method=DELETE",
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn append_refuses_an_inbound_xfcc_that_would_swallow_ours() {
    let env = Env::new().await;
    let proxy = env
        .start(&config(&env, &[], "forward:\n  xfcc: append\n"))
        .await;
    let mut alice = conn(&env, &proxy, &env.pki.alice, false).await;
    for (inbound, status) in [
        ("By=spiffe://edge;Hash=ff;Subject=\"", 400),
        ("By=spiffe://edge;Hash=ff;Subject=\"x\\", 400),
        ("By=spiffe://edge,", 400),
        ("By=spiffe://edge;Hash=ff;Subject=\"CN=edge,O=x\"", 200),
    ] {
        let mut req = request(false, "GET", "/x", empty());
        req.headers_mut()
            .insert("x-forwarded-client-cert", inbound.parse().unwrap());
        let got = alice.send(req).await.unwrap().status().as_u16();
        assert_eq!(got, status, "{inbound}");
    }
    // Only the well-formed one reached the upstream, and certguard's element is last.
    let seen = env.upstream.seen();
    assert_eq!(seen.len(), 1);
    let xfcc = seen[0].headers["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_owned();
    let hash = crate::common::sha256_hex(env.pki.alice.cert.as_ref());
    assert!(
        xfcc.starts_with(&format!(
            "By=spiffe://edge;Hash=ff;Subject=\"CN=edge,O=x\",Hash={hash};"
        )),
        "{xfcc}"
    );
}

#[tokio::test]
async fn a_bad_chunked_body_is_counted_without_a_route() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    let resp = raw(
        &env,
        &proxy,
        &env.pki.alice,
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let text = scrape(&proxy).await;
    let count = |route| {
        metric(
            &text,
            "certguard_requests_total",
            &[("route", route), ("code", "400")],
        )
    };
    assert_eq!((count("none"), count("everything")), (1.0, 0.0));
}

#[tokio::test]
async fn an_expiring_intermediate_cuts_open_connections() {
    let env = Env::new().await;
    let now = time::OffsetDateTime::now_utc();
    let short = env
        .pki
        .root
        .intermediate_with_validity(
            "short-lived intermediate",
            now - time::Duration::days(1),
            now + time::Duration::seconds(3),
        )
        .unwrap();
    let carol = short
        .issue(&certguard::devpki::LeafSpec::client("carol"))
        .unwrap();
    // No CRLs: "short" has none, and revocation is not what this test is about.
    let yaml = config(&env, &[], "").replace("    crl: [intermediate.crl, ca.crl]\n", "");
    let proxy = env.start(&yaml).await;
    let mut h1 = conn(&env, &proxy, &carol, false).await;
    let mut h2 = conn(&env, &proxy, &carol, true).await;
    for (c, http2) in [(&mut h1, false), (&mut h2, true)] {
        let resp = c.send(request(http2, "GET", "/x", empty())).await;
        assert_eq!(resp.unwrap().status(), 200);
    }
    // The leaf is valid for years; only the intermediate expires.
    for (c, http2) in [(&mut h1, false), (&mut h2, true)] {
        eventually!(
            Duration::from_secs(10),
            "carol refused once the intermediate expired",
            c.send(request(http2, "GET", "/x", empty()))
                .await
                .map(|r| r.status() == 403)
                .unwrap_or(false)
        );
    }
    let text = scrape(&proxy).await;
    assert!(
        metric(
            &text,
            "certguard_requests_total",
            &[("reason", "revoked"), ("code", "403")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_streaming_responses() {
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &[], "")).await;
    for h2 in [false, true] {
        env.write_crls(&[&env.pki.revoked]);
        proxy.reload().expect("reload");
        let mut alice = conn(&env, &proxy, &env.pki.alice, h2).await;
        let resp = alice
            .send(request(h2, "GET", "/events?n=100&ms=100", empty()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 0\n\n");
        env.write_crls(&[&env.pki.revoked, &env.pki.alice]);
        proxy.reload().expect("reload");
        let revoked_at = Instant::now();
        let mut events = 1;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match body.frame().await {
                    Some(Ok(f)) if f.is_data() => events += 1,
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return,
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the stream kept flowing after revocation (h2: {h2})"
        );
        assert!(
            revoked_at.elapsed() < Duration::from_secs(4) && events < 60,
            "{events} events, ended {:?} after the revocation (h2: {h2})",
            revoked_at.elapsed()
        );
    }
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_stream_resets_total",
            &[("reason", "revoked")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_with_a_closed_window_cannot_pin_upstream_connections() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let env = Env::new().await;
    let proxy = env.start(&config(&env, &["idle_timeout: 2s"], "")).await;
    let tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"h2"]),
        "localhost",
    )
    .await
    .unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE=0 and no WINDOW_UPDATE ever: no DATA can reach it.
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(0).adaptive_window(false);
    let (sender, conn) = builder
        .handshake::<_, ReqBody>(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = sender.clone();
        s.ready().await.unwrap();
        let resp = s
            .send_request(
                Request::get("https://localhost/big?mb=1")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp); // never read
    }
    assert!(env.upstream.open_connections() >= 1);
    eventually!(
        Duration::from_secs(8),
        "stalled streams reset, upstream connections freed",
        {
            let text = scrape(&proxy).await;
            metric(
                &text,
                "certguard_stream_resets_total",
                &[("reason", "client_stalled")],
            ) == 8.0
                && env.upstream.open_connections() == 0
        }
    );
    // With its streams reset the connection is idle, and idle_timeout ends it.
    eventually!(
        Duration::from_secs(8),
        "the stalled client's connection closed",
        {
            let text = scrape(&proxy).await;
            metric(&text, "certguard_connections_active", &[]) == 0.0
        }
    );
    drop(held);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_outlasts_its_response_is_not_cut() {
    let env = Env::new().await;
    let proxy = env
        .start(&config(&env, &["header_read_timeout: 1s"], ""))
        .await;
    let mut tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tls.write_all(b"POST /early HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3000\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&[b'a'; 100]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("early") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the response: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // The rest of the body, slower than header_read_timeout.
    for _ in 0..29 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tls.write_all(&[b'b'; 100]).await.unwrap();
    }
    tls.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut next = String::new();
    while !next.contains("HTTP/1.1 ") || !next.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection was cut during the upload: {next}");
        next.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    assert_eq!(env.upstream.seen().last().unwrap().path, "/status");
    assert!(
        env.upstream.early_bytes() >= 2900,
        "{}",
        env.upstream.early_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_gets_a_bounded_share_of_the_upstream() {
    let env = Env::new().await;
    let proxy = env
        .start(&config(&env, &["max_inflight_per_connection: 2"], ""))
        .await;
    let sender = conn(&env, &proxy, &env.pki.alice, true).await.h2();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            s.ready().await.unwrap();
            let resp = s
                .send_request(
                    Request::get("https://localhost/slow?ms=200")
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            crate::common::read(resp).await.0
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            200,
            "queued requests are served, not refused"
        );
    }
    assert_eq!(env.upstream.max_concurrent_slow(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_outlast_their_responses_keep_their_places() {
    // /early answers before reading the body; the uploads then go on, each keeping an
    // upstream connection busy. They must count against max_inflight_per_connection.
    let env = Env::new().await;
    let proxy = env
        .start(&config(&env, &["max_inflight_per_connection: 2"], ""))
        .await;
    let sender = conn(&env, &proxy, &env.pki.alice, true).await.h2();
    let mut uploads = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(&[b'a'; 100]))))
            .await
            .unwrap();
        uploads.push(tx);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let body: ReqBody = StreamBody::new(frames).boxed();
        let req = Request::post("https://localhost/early")
            .header("content-length", "3000")
            .body(body)
            .unwrap();
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            s.ready().await.unwrap();
            s.send_request(req).await.map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let status = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("every request is answered")
            .unwrap()
            .unwrap();
        statuses.push(status);
    }
    statuses.sort_unstable();
    // Two uploads hold both places for as long as they go on; the other two find none
    // within the upstream's timeout (2 s).
    assert_eq!(statuses, [200, 200, 503, 503], "{statuses:?}");
    // Uploads that end give their places back: the same connection is served again.
    drop(uploads);
    let mut next = None;
    for _ in 0..40 {
        let mut s = sender.clone();
        s.ready().await.unwrap();
        let req = Request::get("https://localhost/x").body(empty()).unwrap();
        next = Some(s.send_request(req).await.unwrap().status().as_u16());
        if next == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next, Some(200));
}

/// One client certificate over many connections (HTTP/1.1 and HTTP/2 alike) gets at most
/// `max_inflight_per_identity` upstream places: it cannot take every place of the upstream and
/// starve the other identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_take_every_upstream_place() {
    let env = Env::new().await;
    let yaml = config(&env, &["max_inflight_per_identity: 2"], "").replace(
        "    timeout: 2s\n",
        "    timeout: 500ms\n    max_requests: 3\n",
    );
    let proxy = env.start(&yaml).await;
    let stream = "/events?n=200&ms=100";
    // alice's two places, taken by long responses on two connections of two protocols.
    let mut a1 = conn(&env, &proxy, &env.pki.alice, true).await;
    let held1 = a1
        .send(request(true, "GET", stream, empty()))
        .await
        .unwrap();
    let mut a2 = conn(&env, &proxy, &env.pki.alice, false).await;
    let held2 = a2
        .send(request(false, "GET", stream, empty()))
        .await
        .unwrap();
    assert_eq!(
        (held1.status().as_u16(), held2.status().as_u16()),
        (200, 200)
    );
    // A third connection of alice finds no place of hers although the upstream has one.
    let mut a3 = conn(&env, &proxy, &env.pki.alice, true).await;
    let resp = a3
        .send(request(true, "GET", stream, empty()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(crate::common::read(resp).await.1, "service unavailable\n");
    // bob still gets the upstream's last place.
    let mut b = conn(&env, &proxy, &env.pki.bob, false).await;
    assert_eq!(b.get("localhost", "/x").await.0, 200);
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "certguard_upstream_overflow_total",
            &[("upstream", "app"), ("limit", "identity")]
        ),
        1.0
    );
    // A place alice gives back is hers again.
    drop(held2);
    drop(a2);
    eventually!(
        Duration::from_secs(5),
        "alice's place freed",
        a3.get("localhost", "/x").await.0 == 200
    );
    drop(held1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_concurrency_limits_answer_503() {
    let env = Env::new().await;
    let yaml = config(&env, &["max_inflight_per_connection: 1"], "").replace(
        "    timeout: 2s\n",
        "    timeout: 500ms\n    max_requests: 2\n",
    );
    let proxy = env.start(&yaml).await;
    // One connection, one place: a stream holds it, the next request waits, then 503.
    let mut a = conn(&env, &proxy, &env.pki.alice, true).await;
    let streaming = a
        .send(request(true, "GET", "/events?n=200&ms=100", empty()))
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    let resp = a.send(request(true, "GET", "/x", empty())).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(crate::common::read(resp).await.1, "service unavailable\n");
    // The upstream's two places: a second streaming client takes the other one.
    let mut b = conn(&env, &proxy, &env.pki.bob, false).await;
    let streaming_b = b
        .send(request(false, "GET", "/events?n=200&ms=100", empty()))
        .await
        .unwrap();
    assert_eq!(streaming_b.status(), 200);
    let mut c = conn(&env, &proxy, &env.pki.alice, false).await;
    assert_eq!(c.get("localhost", "/x").await.0, 503);
    let text = scrape(&proxy).await;
    for limit in ["connection", "upstream"] {
        assert_eq!(
            metric(
                &text,
                "certguard_upstream_overflow_total",
                &[("upstream", "app"), ("limit", limit)]
            ),
            1.0,
            "{limit}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "certguard_requests_total",
            &[("reason", "upstream_error"), ("code", "503")]
        ),
        2.0
    );
    // A finished (dropped) stream gives its place back.
    drop(streaming_b);
    drop(b);
    eventually!(
        Duration::from_secs(5),
        "a place freed",
        c.get("localhost", "/x").await.0 == 200
    );
    drop(streaming);
}
