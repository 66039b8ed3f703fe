//! Request-path hardening: one normalized path for policy and upstream, Host/SNI binding,
//! limits, request smuggling, and WebSocket relaying.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{client, empty, Conn, Env};

const ROUTES: &str = r#"  - name: status
    path: /status
    upstream: app
    allow:
      - authenticated: true
  - name: admin
    path_prefix: /admin
    upstream: app
    allow:
      - cn: alice
  - name: ws
    path: /ws
    upstream: app
    allow:
      - cn: alice
  - name: other
    path_prefix: /
    upstream: app
    allow:
      - cn: alice"#;

/// The ROUTES config with `keys` (`"idle_timeout: 1s"`, ...) added to its `listen` section.
fn with_listen(env: &Env, keys: &[&str]) -> String {
    let added: String = keys.iter().map(|k| format!("  {k}\n")).collect();
    env.yaml(ROUTES, "").replace(
        "  handshake_timeout: 5s\n",
        &format!("  handshake_timeout: 5s\n{added}"),
    )
}

async fn alice(env: &Env, proxy: &certguard::Proxy) -> Conn {
    Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap()
}

/// Send raw bytes over a fresh mTLS connection as alice and read until close or `wait`.
async fn raw_exchange(
    env: &Env,
    proxy: &certguard::Proxy,
    request: &[u8],
    wait: Duration,
) -> String {
    let mut tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tls.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn dot_segments_are_judged_and_forwarded_normalized() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    // bob may use /status but not /admin: /status/../admin is /admin for policy too.
    let mut bob = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.bob, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(bob.get("localhost", "/status").await.0, 200);
    assert_eq!(bob.get("localhost", "/status/../admin").await.0, 403);
    assert_eq!(bob.get("localhost", "/status/%2e%2e/admin").await.0, 403);
    let mut a = alice(&env, &proxy).await;
    assert_eq!(a.get("localhost", "/status/../admin").await.0, 200);
    assert_eq!(env.upstream.last().path, "/admin");
    assert_eq!(a.get("localhost", "/a/./b//c?x=1").await.0, 200);
    assert_eq!(env.upstream.last().path, "/a/b/c?x=1");
    let before = env.upstream.seen().len();
    for bad in [
        "/admin%2Fsecret",
        "/a%5Cb",
        "/%00",
        "/%zz",
        "/../etc/passwd",
    ] {
        assert_eq!(a.get("localhost", bad).await.0, 400, "{bad}");
    }
    assert_eq!(
        env.upstream.seen().len(),
        before,
        "rejected targets must not reach the upstream"
    );
}

#[tokio::test]
async fn host_must_match_sni_over_http1_and_http2() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let mut a = alice(&env, &proxy).await;
    assert_eq!(a.get("localhost", "/x").await.0, 200);
    assert_eq!(
        a.get("LOCALHOST.:8443", "/x").await.0,
        200,
        "case, port and trailing dot are ignored"
    );
    // The upstream reads the host policy judged, not another spelling of it (SPEC 4 step 5).
    let seen = env.upstream.last();
    assert_eq!(seen.headers["host"], "localhost:8443");
    assert_eq!(seen.headers["x-forwarded-host"], "LOCALHOST.:8443");
    let (status, body) = a.get("other.internal", "/x").await;
    assert_eq!((status, body.as_str()), (421, "misdirected request\n"));
    // HTTP/2: a connection for localhost must not be reused for another host.
    let mut h2 = Conn::open(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"h2"]),
        "localhost",
    )
    .await
    .unwrap();
    assert!(h2.http2);
    assert_eq!(h2.get("localhost", "/x").await.0, 200);
    assert_eq!(h2.get("LocalHost.:08443", "/x").await.0, 200);
    assert_eq!(env.upstream.last().headers["host"], "localhost:8443");
    assert_eq!(h2.get("other.internal", "/x").await.0, 421);
    // A missing Host on HTTP/1.1 is a 400.
    let resp = raw_exchange(
        &env,
        &proxy,
        b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let env = Env::new().await;
    let proxy = env
        .start(&with_listen(&env, &["max_header_bytes: 16384"]))
        .await;
    let mut a = alice(&env, &proxy).await;
    let req = Request::get("/x")
        .header("host", "localhost")
        .header("x-big", "a".repeat(20_000))
        .body(empty())
        .unwrap();
    let status = a.send(req).await.map(|r| r.status().as_u16());
    assert_eq!(status.ok(), Some(431));
    let mut b = alice(&env, &proxy).await;
    assert_eq!(b.get("localhost", "/x").await.0, 200);
    // hyper answers the 431 itself; it is still counted, once, as a denied request.
    let text = crate::common::scrape(&proxy).await;
    let labels = [
        ("route", "none"),
        ("decision", "denied"),
        ("reason", "bad_request"),
        ("code", "431"),
    ];
    assert_eq!(
        crate::common::metric(&text, "certguard_requests_total", &labels),
        1.0
    );
}

#[tokio::test]
async fn smuggling_framing_is_rejected_with_400_and_close() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let cases: [&[u8]; 3] = [
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for (i, raw) in cases.iter().enumerate() {
        let resp = raw_exchange(&env, &proxy, raw, Duration::from_secs(3)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "case {i}: {resp}");
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "case {i}: the connection must close after the 400: {resp}"
        );
    }
    assert!(
        env.upstream.seen().is_empty(),
        "the upstream must never see an ambiguous request"
    );
    // The same conflict in a pipelined second request, and with bare-LF line ends (which
    // hyper accepts): the first request is answered, the smuggling one gets 400 and the close.
    let pipelined: [&[u8]; 2] = [
        b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /x HTTP/1.1\r\nHost: localhost\r\n\
          Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhelloGET /status HTTP/1.1\nHost: localhost\n\
          Content-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
    ];
    for (i, raw) in pipelined.iter().enumerate() {
        let resp = raw_exchange(&env, &proxy, raw, Duration::from_secs(3)).await;
        let statuses: Vec<&str> = resp
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| resp.get(at + 9..at + 12))
            .collect();
        assert_eq!(statuses, ["200", "400"], "pipelined case {i}: {resp}");
    }
    let seen: Vec<String> = env.upstream.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        seen,
        ["/status", "/upload"],
        "only the unambiguous requests are relayed"
    );
    // Invalid chunking in an otherwise fine request.
    let resp = raw_exchange(
        &env,
        &proxy,
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "invalid chunking must get 400: {resp}"
    );
    let text = crate::common::scrape(&proxy).await;
    assert_eq!(
        crate::common::metric(&text, "certguard_upstream_errors_total", &[]),
        0.0,
        "a client's bad body is not an upstream error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_idle_timeout() {
    let env = Env::new().await;
    let yaml = with_listen(&env, &["idle_timeout: 1s"]);
    let proxy = env.start(&yaml).await;
    let mut tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    // Ask for 256 MiB and never read: the proxy's writes block once the socket buffers fill.
    tls.write_all(b"GET /big?mb=256 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = crate::common::scrape(&proxy).await;
        if crate::common::metric(&text, "certguard_connections_active", &[]) == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tls);
    let mut other = alice(&env, &proxy).await;
    assert_eq!(other.get("localhost", "/x").await.0, 200);
}

#[tokio::test]
async fn stalled_request_is_cut_off_while_others_are_served() {
    let env = Env::new().await;
    let yaml = with_listen(&env, &["header_read_timeout: 1s"]);
    let proxy = env.start(&yaml).await;
    let mut slow = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    slow.write_all(b"GET /x HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut other = alice(&env, &proxy).await;
    for _ in 0..3 {
        assert_eq!(other.get("localhost", "/x").await.0, 200);
    }
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled connection must be closed, got {n:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(8),
        "closed too late: {elapsed:?}"
    );
    assert_eq!(other.get("localhost", "/x").await.0, 200);
}

/// An HTTP/1.1 connection of alice's that has had one request answered with a 200 and is
/// kept alive.
async fn after_one_request(
    env: &Env,
    proxy: &certguard::Proxy,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tls
}

/// The header-read timer also runs for a head that starts on a connection that has already
/// served a request, long before `idle_timeout` (the connection's timer is armed at the end
/// of the first exchange, and a partial head must not wait for it).
#[tokio::test]
async fn a_head_trickled_after_a_request_is_cut_off_at_header_read_timeout() {
    let env = Env::new().await;
    let yaml = with_listen(&env, &["idle_timeout: 30s", "header_read_timeout: 1s"]);
    let proxy = env.start(&yaml).await;
    let mut tls = after_one_request(&env, &proxy).await;
    // Well inside idle_timeout, a second head that never ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
    let elapsed = started.elapsed();
    assert!(r.is_ok(), "the trickled head was not cut off within 10s");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed before header_read_timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "closed too late for header_read_timeout: {elapsed:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let env = Env::new().await;
    let yaml = with_listen(&env, &["idle_timeout: 1s", "header_read_timeout: 30s"]);
    let proxy = env.start(&yaml).await;
    let mut tls = after_one_request(&env, &proxy).await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "idle connection was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed before idle_timeout"
    );
}

/// A new client gets no handshake while every `max_connections` slot is held.
async fn assert_refused_at_the_cap(env: &Env, proxy: &certguard::Proxy) {
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        Conn::open(
            proxy.listen_addr,
            env.client(&env.pki.alice, &[b"http/1.1"]),
            "localhost",
        ),
    )
    .await;
    assert!(
        matches!(third, Ok(Err(_))),
        "third connection should be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_and_serving_continues() {
    let env = Env::new().await;
    let yaml = with_listen(&env, &["max_connections: 2"]);
    let proxy = env.start(&yaml).await;
    let mut first = alice(&env, &proxy).await;
    let mut second = alice(&env, &proxy).await;
    assert_eq!(first.get("localhost", "/x").await.0, 200);
    assert_eq!(second.get("localhost", "/x").await.0, 200);
    // A third connection gets no handshake while both slots are held.
    assert_refused_at_the_cap(&env, &proxy).await;
    // Existing connections keep working, and a slot freed is usable again.
    assert_eq!(first.get("localhost", "/x").await.0, 200);
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = alice(&env, &proxy).await;
    assert_eq!(again.get("localhost", "/x").await.0, 200);
}

#[tokio::test]
async fn handshakes_that_never_finish_give_way_at_max_connections() {
    let env = Env::new().await;
    let yaml = with_listen(&env, &["max_connections: 2"]);
    let proxy = env.start(&yaml).await;
    // A client with no certificate holds both slots with TCP connections that send nothing
    // (handshake_timeout is 5 s here).
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(
            tokio::net::TcpStream::connect(proxy.listen_addr)
                .await
                .unwrap(),
        );
    }
    // Older than EVICT_HANDSHAKES_AFTER (1 s), younger than the handshake timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Real clients still get in: each takes the slot of the oldest idle handshake.
    let mut a = alice(&env, &proxy).await;
    assert_eq!(a.get("localhost", "/x").await.0, 200);
    let mut b = alice(&env, &proxy).await;
    assert_eq!(b.get("localhost", "/x").await.0, 200);
    for mut s in idle {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the idle handshake was closed: {read:?}"
        );
    }
    let text = crate::common::scrape(&proxy).await;
    let timeouts = crate::common::metric(
        &text,
        "certguard_tls_handshakes_total",
        &[("trust", "none"), ("outcome", "timeout")],
    );
    assert_eq!(timeouts, 2.0, "{text}");
    // Established connections are never evicted: with both slots serving, a third client
    // is refused, and both keep working.
    assert_refused_at_the_cap(&env, &proxy).await;
    assert_eq!(a.get("localhost", "/x").await.0, 200);
    assert_eq!(b.get("localhost", "/x").await.0, 200);
}

type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// alice opens a WebSocket to the upstream's echo at /ws through the proxy.
async fn open_websocket(
    env: &Env,
    proxy: &certguard::Proxy,
) -> (
    WebSocket,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("websocket handshake")
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let (mut ws, resp) = open_websocket(&env, &proxy).await;
    assert_eq!(resp.status().as_u16(), 101);
    // The tunnel holds its connection's slot: it is still an open connection after the 101.
    let text = crate::common::scrape(&proxy).await;
    assert_eq!(
        crate::common::metric(&text, "certguard_connections_active", &[]),
        1.0
    );
    for msg in ["hello", "through", "certguard"] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(msg.into()))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap(), msg);
    }
    // bob is not allowed on /ws: the upgrade request itself is denied.
    let tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.bob, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let denied = tokio_tungstenite::client_async("wss://localhost/ws", tls).await;
    match denied {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// A tunnel that moves no byte for `idle_timeout` is closed and gives back its connection
/// slot; one that keeps talking stays open past it.
#[tokio::test]
async fn idle_websocket_tunnels_are_closed() {
    use tokio_tungstenite::tungstenite::Message;
    let env = Env::new().await;
    let proxy = env.start(&with_listen(&env, &["idle_timeout: 1s"])).await;
    let (mut busy, _) = open_websocket(&env, &proxy).await;
    let (mut idle, _) = open_websocket(&env, &proxy).await;
    // The idle tunnel works, then falls silent.
    idle.send(Message::Text("once".into())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), idle.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap(), "once");
    let silent_since = std::time::Instant::now();
    let closed = tokio::spawn(async move {
        let ended = idle.next().await;
        (silent_since.elapsed(), ended)
    });
    // The busy tunnel sends every 300 ms for 3 s (three idle timeouts): every message echoes.
    for i in 0..10 {
        busy.send(Message::Text(format!("m{i}"))).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), busy.next())
            .await
            .expect("busy tunnel answers")
            .expect("busy tunnel still open")
            .expect("busy tunnel frame");
        assert_eq!(echoed.into_text().unwrap(), format!("m{i}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The idle tunnel was closed after idle_timeout (checked once a second), not before.
    let (after, ended) = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("idle tunnel closed within 10 s")
        .unwrap();
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{ended:?}"
    );
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_millis(3500),
        "closed {after:?} after falling silent"
    );
    // Its slot is free again: only the busy tunnel is an open connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = crate::common::scrape(&proxy).await;
        let active = crate::common::metric(&text, "certguard_connections_active", &[]);
        if active == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{active} connections active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn only_websocket_upgrades_are_relayed() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    // h2c upgrade (the "h2c smuggling" trick): forwarded as a plain request, without the
    // upgrade headers, so the upstream cannot open a tunnel past per-request policy.
    let h2c = b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let reply = raw_exchange(&env, &proxy, h2c, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = env.upstream.last();
    assert_eq!(seen.path, "/status");
    for h in ["upgrade", "http2-settings"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    // An HTTP2-Settings header not named in Connection is still never relayed.
    let sneaky = b"GET /status HTTP/1.1\r\nHost: localhost\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let reply = raw_exchange(&env, &proxy, sneaky, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(env.upstream.last().headers.get("http2-settings").is_none());

    // An upstream that answers 101 to anything: certguard refuses to open the tunnel.
    let ask =
        b"GET /switch HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let reply = raw_exchange(&env, &proxy, ask, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    let plain = b"GET /switch HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(&env, &proxy, plain, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    let text = crate::common::scrape(&proxy).await;
    assert_eq!(
        crate::common::metric(
            &text,
            "certguard_upstream_errors_total",
            &[("upstream", "app"), ("kind", "protocol")]
        ),
        2.0
    );
}

#[tokio::test]
async fn underscore_spellings_of_identity_headers_never_reach_the_upstream() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let req = b"GET /status HTTP/1.1\r\nHost: localhost\r\nX_Forwarded_Client_Cert: Hash=evil\r\n\
        X_Forwarded_For: 10.9.9.9\r\nClient_Cert: :AAAA:\r\nX_Request_Id: abc\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(&env, &proxy, req, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = env.upstream.last();
    for h in ["x_forwarded_client_cert", "x_forwarded_for", "client_cert"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen.headers["x_request_id"], "abc");
    assert!(!seen.headers["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .contains("evil"));
}

#[tokio::test]
async fn revocation_closes_an_open_websocket_tunnel() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let (mut ws, _) = open_websocket(&env, &proxy).await;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "before".into(),
    ))
    .await
    .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap(), "before");

    // Revoke alice: the tunnel carries no further requests, yet it must not keep working.
    env.write_crls(&[&env.pki.revoked, &env.pki.alice]);
    proxy.reload().expect("reload");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel stayed open after revocation");
    // Its connection slot is released with it (polled: the client may see the close a moment
    // before the tunnel task has finished).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = crate::common::scrape(&proxy).await;
        let active = crate::common::metric(&text, "certguard_connections_active", &[]);
        if active == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {active} active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let env = Env::new().await;
    let yaml = with_listen(&env, &["idle_timeout: 1s"]);
    let proxy = env.start(&yaml).await;
    let tls = client::connect_tls(
        proxy.listen_addr,
        env.client(&env.pki.alice, &[b"h2"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // A client that PINGs every 200 ms, whether or not a request is open.
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let (mut sender, conn) = builder
        .handshake::<_, crate::common::client::ReqBody>(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(Request::get("https://localhost/x").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(crate::common::read(resp).await.0, 200);
    let idle_since = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "a PINGing client kept an idle connection open"
    );
    assert!(
        idle_since.elapsed() >= Duration::from_millis(800),
        "closed before idle_timeout"
    );
}
