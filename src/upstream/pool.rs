//! certguard's own pool of HTTP/1.1 connections to a plain `http://` upstream.
//!
//! hyper-util's pooled client is general (any scheme and authority, HTTP/2 sharing, a race
//! between a checkout and a new connection), and a request pays for that: a pool key hashed
//! with SipHash byte by byte, a checkout future, a clone of the client and a lazy connect
//! future built and dropped. An upstream here has one address, so its pool is a stack of idle
//! connections: the most recently used first (its socket is warm), a new connection when none
//! is ready. What hyper-util does that matters is kept: a request that a pooled connection
//! closed before sending it is retried on another connection (hyper gives it back unsent), the
//! connection goes back to the pool only once its response body has been read to the end,
//! an idle connection is closed after [`IDLE_TIMEOUT`], and at most `max_idle_per_host` wait.
//! New connections come from hyper-util's `HttpConnector`, as before (its DNS resolution,
//! connect timeout split over the addresses, and fallback to the other address family).
//! Two differences: a request that finds no idle connection opens one at once instead of
//! also waiting for one to come back (`max_requests` bounds them all the same), and a response
//! dropped before its body was read to the end closes its connection (hyper-util drained it).
//! `https://` and `h2c://` upstreams keep hyper-util's client.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use super::{BoxError, UpstreamBody};

/// How long a connection may wait unused in the pool (hyper-util's setting before).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections past [`IDLE_TIMEOUT`] are looked for when no request comes.
const REAP_EVERY: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why an exchange through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No TCP connection (refused, unreachable, not within `connect_timeout`, no address).
    #[error("{0}")]
    Connect(#[source] BoxError),
    /// The HTTP/1.1 exchange (or the connection's set-up) failed.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

/// The idle connections of one `http://` upstream.
pub struct Pool {
    tcp: HttpConnector,
    /// `http://` + the authority: what the connector connects to.
    target: Uri,
    /// `Host` for a request that has none (hyper-util's `set_host`): the authority without
    /// the default port.
    host_header: HeaderValue,
    max_idle: usize,
    /// [`IDLE_TIMEOUT`] and [`REAP_EVERY`] (shorter in tests).
    idle_timeout: Duration,
    reap_every: Duration,
    /// Most recently returned last.
    idle: Mutex<Vec<Idle>>,
    reaper: Once,
    /// Connections handed back by [`PooledBody`] (tests).
    #[cfg(test)]
    given_back: std::sync::atomic::AtomicUsize,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Pool {
    pub fn new(
        authority: &http::uri::Authority,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Pool, http::Error> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let host_header = if port == 80 {
            HeaderValue::from_str(host)?
        } else {
            HeaderValue::from_str(&format!("{host}:{port}"))?
        };
        let target = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        Ok(Pool {
            tcp,
            target,
            host_header,
            max_idle,
            idle_timeout: IDLE_TIMEOUT,
            reap_every: REAP_EVERY,
            idle: Mutex::new(Vec::new()),
            reaper: Once::new(),
            #[cfg(test)]
            given_back: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Send `req` (its URI origin-form, or absolute: then cut to origin-form) on an idle
    /// connection, or on a new one.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        origin_form(req.uri_mut());
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host_header.clone());
        }
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    // A switched connection belongs to the tunnel from now on.
                    let back = (response.status() != StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (self.clone(), sender));
                    return Ok(response.map(|body| PooledBody {
                        body,
                        back,
                        finished: false,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // The pooled connection was closing: hyper gave the request back unsent.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is ready; closed, expired ones are dropped.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let entry = lock(&self.idle).pop()?;
            if entry.sender.is_ready() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
            // Closed or expired: dropped here, outside the lock (a sender's drop wakes its
            // connection).
        }
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let io = self
            .tcp
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        // As hyper-util does: a connection that fails at once reports its own error.
        sender.ready().await.map_err(PoolError::Exchange)?;
        Ok(sender)
    }

    /// A connection whose exchange ended: back to the pool once it is ready for another.
    fn give_back(self: Arc<Self>, mut sender: SendRequest<UpstreamBody>) {
        #[cfg(test)]
        self.given_back
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        if sender.is_ready() {
            self.keep(sender);
            return;
        }
        // Not ready yet (the connection has not read the end of the exchange, or the request
        // body is still going): wait for it off the request's path, as hyper-util did. The
        // wait does not keep a pool that a reload replaced alive.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&self);
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    if let Some(pool) = pool.upgrade() {
                        pool.keep(sender);
                    }
                }
            });
        }
    }

    fn keep(self: &Arc<Self>, sender: SendRequest<UpstreamBody>) {
        self.reaper.call_once(|| self.start_reaper());
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Close idle connections past [`IDLE_TIMEOUT`] even when no request comes to find them
    /// (so an idle connection closes between 90 and 100 s after its last use).
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = self.reap_every;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap(Instant::now());
            }
        });
    }

    fn reap(&self, now: Instant) {
        // Dropped outside the lock: dropping a sender wakes its connection.
        let expired: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let (keep, gone) = std::mem::take(&mut *idle).into_iter().partition(|e| {
                !e.sender.is_closed() && now.saturating_duration_since(e.since) < self.idle_timeout
            });
            *idle = keep;
            gone
        };
        drop(expired);
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        lock(&self.idle).len()
    }
}

/// The request target as sent on an HTTP/1.1 connection to the upstream itself: origin-form
/// (`/path?query`), never absolute-form.
fn origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    *uri = match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => Uri::from(pq.clone()),
        _ => Uri::default(),
    };
}

/// The body of a response from a pooled connection: the connection goes back to the pool
/// when the body has been read to its end, and is closed when the body is dropped before it.
pub struct PooledBody {
    body: Incoming,
    back: Option<(Arc<Pool>, SendRequest<UpstreamBody>)>,
    finished: bool,
}

impl PooledBody {
    /// A body that belongs to no pool (hyper-util's client, a switched connection).
    pub fn unpooled(body: Incoming) -> PooledBody {
        PooledBody {
            body,
            back: None,
            finished: false,
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        if let Some((pool, sender)) = self.back.take() {
            pool.give_back(sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // (`finish` already took `back` when the body ended while polled.)
        if self.back.is_some() && self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.body).poll_frame(cx);
        match &res {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.finish(),
            // A broken body leaves its connection broken: never pooled.
            Poll::Ready(Some(Err(_))) => {
                this.back = None;
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How a test upstream answers each request of a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `Content-Length: 2`, keep-alive.
        Length,
        /// A chunked body in two chunks, keep-alive.
        Chunked,
        /// `Content-Length: 2`, then the connection is closed (no `Connection: close`).
        LengthThenClose,
        /// A head announcing 100 000 bytes, then 100 000 bytes written slowly.
        Large,
        /// `Content-Length: 2`, with a second, unasked response right behind it in the same
        /// write on a connection's first exchange (a hostile or broken upstream).
        Smuggle,
    }

    /// A raw HTTP/1.1 upstream: counts connections, keeps every request head it read.
    struct Upstream {
        authority: http::uri::Authority,
        accepted: Arc<AtomicUsize>,
        /// Connections the proxy side closed (read returned end of stream).
        closed: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn upstream(answer: Answer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, seen, ends) = (accepted.clone(), heads.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, ends) = (seen.clone(), ends.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut exchanges = 0;
                    loop {
                        exchanges += 1;
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    ends.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head: Vec<u8> = buf.drain(..end).collect();
                        lock(&seen).push(String::from_utf8_lossy(&head).into_owned());
                        let reply: &[u8] = match answer {
                            Answer::Length | Answer::LengthThenClose => {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            }
                            Answer::Chunked => {
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n"
                            }
                            Answer::Large => b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
                            Answer::Smuggle if exchanges == 1 => {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"
                            }
                            Answer::Smuggle => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        };
                        if tcp.write_all(reply).await.is_err() {
                            return;
                        }
                        match answer {
                            Answer::LengthThenClose => return,
                            Answer::Large => {
                                for _ in 0..100 {
                                    if tcp.write_all(&[b'x'; 1000]).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                            Answer::Length | Answer::Chunked | Answer::Smuggle => {}
                        }
                    }
                });
            }
        });
        Upstream {
            authority: addr.to_string().parse().unwrap(),
            accepted,
            closed,
            heads,
            task,
        }
    }

    fn get(uri: &str) -> Request<UpstreamBody> {
        Request::get(uri)
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .unwrap()
    }

    fn pool(up: &Upstream, max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool::new(&up.authority, Duration::from_secs(2), max_idle).unwrap())
    }

    async fn fetch(pool: &Arc<Pool>, uri: &str) -> String {
        let response = pool.send(get(uri)).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Wait (bounded) until `f` holds: the connection task runs on its own.
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_was_read() {
        for answer in [Answer::Length, Answer::Chunked] {
            let up = upstream(answer).await;
            let pool = pool(&up, 8);
            for _ in 0..3 {
                assert_eq!(
                    fetch(&pool, &format!("http://{}/a?b=c", up.authority)).await,
                    "ok"
                );
                eventually("back in the pool", || pool.idle_len() == 1).await;
            }
            assert_eq!(
                up.accepted.load(Ordering::SeqCst),
                1,
                "one connection for three"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_goes_back_only_after_its_body() {
        let up = upstream(Answer::Large).await;
        let pool = pool(&up, 8);
        let response = pool.send(get(&format!("http://{}/", up.authority))).await;
        let mut body = response.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap();
        let mut read = first.into_data().map_or(0, |d| d.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.given_back.load(Ordering::SeqCst), 0, "mid-body");
        assert_eq!(pool.idle_len(), 0, "mid-body");
        while let Some(frame) = body.frame().await {
            read += frame.unwrap().into_data().map_or(0, |d| d.len());
        }
        assert_eq!(read, 100_000, "the whole body");
        assert_eq!(pool.given_back.load(Ordering::SeqCst), 1, "at its end");
        eventually("back in the pool", || pool.idle_len() == 1).await;
        drop(body);
        assert_eq!(pool.given_back.load(Ordering::SeqCst), 1, "once");
    }

    #[test]
    fn host_and_target_for_default_ports_and_ipv6() {
        for (authority, host, target) in [
            ("app:80", "app", "http://app:80/"),
            ("app", "app", "http://app/"),
            ("app:8080", "app:8080", "http://app:8080/"),
            ("[::1]:8080", "[::1]:8080", "http://[::1]:8080/"),
            ("[::1]", "[::1]", "http://[::1]/"),
        ] {
            let pool = Pool::new(&authority.parse().unwrap(), Duration::from_secs(1), 1).unwrap();
            assert_eq!(pool.host_header, host, "{authority}");
            assert_eq!(pool.target, target, "{authority}");
        }
    }

    #[tokio::test]
    async fn requests_go_out_in_origin_form_with_a_host() {
        let up = upstream(Answer::Length).await;
        let pool = pool(&up, 8);
        fetch(&pool, &format!("http://{}/a/b?c=d", up.authority)).await;
        let mut req = get(&format!("http://{}/", up.authority));
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("orders.internal"));
        pool.send(req).await.unwrap();
        let heads = lock(&up.heads).clone();
        assert!(
            heads[0].starts_with("GET /a/b?c=d HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("host: {}\r\n", up.authority)),
            "{}",
            heads[0]
        );
        assert!(heads[1].starts_with("GET / HTTP/1.1\r\n"), "{}", heads[1]);
        assert!(
            heads[1].contains("host: orders.internal\r\n"),
            "{}",
            heads[1]
        );
    }

    /// A response that an upstream sent unasked (bytes after the end of the last one) must
    /// never become the answer to the next request, which may be another client's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_after_a_response_never_answer_the_next_request() {
        let up = upstream(Answer::Smuggle).await;
        let pool = pool(&up, 8);
        for _ in 0..20 {
            assert_eq!(
                fetch(&pool, &format!("http://{}/", up.authority)).await,
                "ok"
            );
        }
        // Every connection that carried the extra response was closed, not reused.
        assert_eq!(up.accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let up = upstream(Answer::LengthThenClose).await;
        let pool = pool(&up, 8);
        for _ in 0..3 {
            assert_eq!(
                fetch(&pool, &format!("http://{}/", up.authority)).await,
                "ok"
            );
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let up = upstream(Answer::Large).await;
        let pool = pool(&up, 8);
        let response = pool.send(get(&format!("http://{}/", up.authority))).await;
        let mut body = response.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.given_back.load(Ordering::SeqCst), 0, "not handed back");
        assert_eq!(
            pool.idle_len(),
            0,
            "a connection with half a body is never pooled"
        );
        // The next request gets a connection of its own, and its whole body.
        let whole = fetch(&pool, &format!("http://{}/", up.authority)).await;
        assert_eq!(whole.len(), 100_000);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_capped_and_expire() {
        let up = upstream(Answer::Length).await;
        let none = pool(&up, 0);
        fetch(&none, &format!("http://{}/", up.authority)).await;
        fetch(&none, &format!("http://{}/", up.authority)).await;
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            2,
            "max_idle 0: no reuse"
        );

        let one = pool(&up, 1);
        // Two requests in flight at once need two connections; only one may wait idle.
        let uri = format!("http://{}/", up.authority);
        let (a, b) = tokio::join!(one.send(get(&uri)), one.send(get(&uri)));
        let (a, b) = (a.unwrap(), b.unwrap());
        a.into_body().collect().await.unwrap();
        b.into_body().collect().await.unwrap();
        eventually("one idle connection", || one.idle_len() == 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(one.idle_len(), 1, "max_idle 1");
        one.reap(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(one.idle_len(), 0, "expired after the idle timeout");
    }

    /// With no request to find them, idle connections are closed by the reaper once they
    /// have waited the idle timeout.
    #[tokio::test]
    async fn the_reaper_closes_idle_connections() {
        let up = upstream(Answer::Length).await;
        let mut fresh = Pool::new(&up.authority, Duration::from_secs(2), 8).unwrap();
        fresh.idle_timeout = Duration::from_millis(300);
        fresh.reap_every = Duration::from_millis(50);
        let pool = Arc::new(fresh);
        fetch(&pool, &format!("http://{}/", up.authority)).await;
        eventually("one idle connection", || pool.idle_len() == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.idle_len(), 1, "kept before its idle timeout");
        eventually("reaped after its idle timeout", || pool.idle_len() == 0).await;
        // Its socket was closed: the upstream sees the end of the connection.
        eventually("the upstream saw the close", || {
            up.closed.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn connect_failures_are_told_apart() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = Arc::new(
            Pool::new(
                &refused.to_string().parse().unwrap(),
                Duration::from_secs(2),
                8,
            )
            .unwrap(),
        );
        let result = pool.send(get(&format!("http://{refused}/"))).await;
        assert!(
            matches!(result, Err(PoolError::Connect(_))),
            "connect refused"
        );
    }
}
