//! No first-request stall (issue 12): a client that leaves Nagle's algorithm on (no
//! TCP_NODELAY, like Python's `ssl` and many embedded clients) gets its first response without
//! waiting for the server's delayed ACK of its last handshake flight.
//!
//! In TLS 1.3 the client's first request follows its Finished at once. With Nagle on, the
//! kernel holds that small request until the Finished is acknowledged; a server that sends
//! nothing after the handshake acknowledges it only when its delayed-ACK timer fires (40 ms
//! and more on Linux). certguard acknowledges at once (TCP_QUICKACK), so the first response
//! comes back in about a loopback round trip through the proxy and the upstream.
//!
//! A timing test, made robust: the bound (25 ms) is far above a loopback round trip and far
//! below the delayed-ACK time, and only the fastest of several connections has to meet it, so
//! a busy machine cannot fail it by slowing one connection; without the fix every connection
//! takes 40 ms or more.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::client::connect_tls;
use crate::common::Env;

const ROUTES: &str = r#"  - name: api
    path_prefix: /api
    upstream: app
    allow:
      - cn: alice"#;

/// Well under Linux's minimum delayed-ACK time (40 ms), well over a loopback round trip.
const BOUND: Duration = Duration::from_millis(25);
const ATTEMPTS: usize = 7;

#[tokio::test]
async fn a_client_without_nodelay_gets_its_first_response_without_a_delayed_ack_stall() {
    let env = Env::new().await;
    let proxy = env.start(&env.yaml(ROUTES, "")).await;
    let config = env.client(&env.pki.alice, &[b"http/1.1"]);
    let mut times = Vec::with_capacity(ATTEMPTS);
    for _ in 0..ATTEMPTS {
        let mut tls = connect_tls(proxy.listen_addr, config.clone(), "localhost")
            .await
            .unwrap();
        assert!(
            !tls.get_ref().0.nodelay().unwrap(),
            "the client must leave Nagle's algorithm on"
        );
        // The handshake is complete on the client's side and its Finished is on the wire: the
        // request is a separate small write, as a client sends it.
        let started = Instant::now();
        tls.write_all(b"GET /api/first HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                .await
                .expect("a response within 10 s")
                .unwrap();
            assert!(n > 0, "connection closed before the response head");
            head.extend_from_slice(&buf[..n]);
        }
        times.push(started.elapsed());
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
    }
    let fastest = times.iter().min().copied().unwrap();
    eprintln!("first responses after the handshake: {times:?}");
    assert!(
        fastest < BOUND,
        "the fastest first response took {fastest:?} (all: {times:?}): the client's request \
         waited for the server's delayed ACK"
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}
