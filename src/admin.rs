//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/identities` over plain HTTP.
//!
//! Plain HTTP/1.1, meant for loopback or a pod-internal port. Every endpoint is a cheap read of
//! shared state; nothing here can change the proxy's behaviour.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::inventory::Inventory;
use crate::listener::Evictable;
use crate::metrics::Metrics;
use crate::snapshot::Current;

/// Shared state the admin endpoints read.
pub struct AdminState {
    /// Rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Rendered at `/identities`.
    pub inventory: Arc<Inventory>,
    /// The snapshot serving now: `/identities` says which of its routes each identity may
    /// reach, and `/readyz` waits until every `crl_urls` entry has a CRL (SPEC 9.2).
    pub current: Arc<Current>,
    /// True while the listener is bound, a snapshot is active and we are not draining.
    pub ready: Arc<AtomicBool>,
}

impl AdminState {
    /// `/readyz`: serving, not draining, and no CRL URL still without a CRL.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && {
            let c = &self.current;
            let missing = c.revocation.missing(&c.load().config);
            for (trust, url) in &missing {
                tracing::debug!(%trust, %url, "not ready: no CRL yet");
            }
            missing.is_empty()
        }
    }
}

/// Prometheus text exposition format, version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";
/// Bounds how long a client may take to send a request head (slowloris on the admin port).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After `shutdown`, how long open admin connections get to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Open admin connections at most. A new connection past this ends the oldest one that is at
/// least [`EVICT_AFTER`] old and not answering a request, so that a flood of idle connections
/// can neither exhaust file descriptors (which the TLS listener needs) nor lock out probes and
/// scrapes.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection younger than this is never ended for a new one (a probe or a scrape is
/// answered in milliseconds).
const EVICT_AFTER: Duration = Duration::from_millis(250);
/// How long a connection past [`MAX_CONNECTIONS`] waits for a place before it is closed.
const PLACE_WAIT: Duration = Duration::from_secs(1);
/// The longest an admin connection lives: bounds a client that stops reading a response
/// (idle keep-alive connections are closed after [`HEADER_READ_TIMEOUT`] already).
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);
/// `/identities` answers built at once (each walks the whole inventory on a blocking thread);
/// further requests wait their turn.
static IDENTITY_BUILDS: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(2)));

/// Serve admin requests on `listener` until `shutdown` resolves.
///
/// Accept errors are logged and the loop continues; each connection runs in its own task.
/// When `shutdown` resolves the listener is closed, open connections are asked to close after
/// their current request, and this returns once they have (or after a short grace period).
/// To let probes observe `/readyz` 503 while the data plane drains, clear `state.ready` first
/// and resolve `shutdown` only after the drain.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let graceful = GracefulShutdown::new();
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Connections waiting for a place are bounded too.
    let waiting = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = Arc::new(Evictable::default());
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = crate::listener::accept(&listener, "admin") => accepted,
        };
        let watcher = graceful.watcher();
        let state = state.clone();
        let (places, waiting, open) = (places.clone(), waiting.clone(), open.clone());
        tokio::spawn(async move {
            let _place = match places.clone().try_acquire_owned() {
                Ok(place) => place,
                Err(_) => {
                    let waited = crate::listener::wait_for_place(
                        &places,
                        &waiting,
                        &open,
                        EVICT_AFTER,
                        PLACE_WAIT,
                    );
                    let Some(place) = waited.await else {
                        tracing::debug!(%peer, "admin connection closed: {MAX_CONNECTIONS} open");
                        return;
                    };
                    place
                }
            };
            let (entry, evicted) = open.enter();
            let busy = entry.busy_handle();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                // A connection answering a request is not ended for a newer one (one whose
                // client does not read the answer is, once the answer is written).
                let busy = busy.busy();
                async move {
                    let response = respond(state, req.method(), req.uri().path()).await;
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                ended = tokio::time::timeout(MAX_CONNECTION_LIFE, watcher.watch(conn)) => match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                    Err(_) => tracing::debug!(%peer, "admin connection closed after its maximum life"),
                },
                _ = evicted => tracing::debug!(%peer, "admin connection ended for a newer one"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open after the grace period; leaving them");
    }
}

/// The whole admin API as a function of (state, method, path).
///
/// HEAD is answered like GET; hyper omits the body on the wire and keeps Content-Length.
async fn respond(state: Arc<AdminState>, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/identities");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            refresh_clients_expiring(&state);
            with_type(
                StatusCode::OK,
                METRICS_CONTENT_TYPE,
                state.metrics.encode().into(),
            )
        }
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        "/identities" => {
            // Inventory size x routes matches: on a blocking thread, not a runtime worker,
            // and only a few at once.
            let Ok(turn) = IDENTITY_BUILDS.clone().acquire_owned().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            };
            // The turn goes with the walk: a client that disconnects does not free it early.
            let json = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                let snapshot = state.current.load();
                state.inventory.to_json(|id| snapshot.routes_for(id))
            })
            .await;
            match json {
                Ok(json) => with_type(StatusCode::OK, JSON_CONTENT_TYPE, json.into()),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            }
        }
        _ => text(StatusCode::OK, "ok"),
    }
}

/// `certguard_client_certificates_expiring` from the inventory as it is now: every trust
/// source of the current snapshot gets its series (0 without such clients), and so does the
/// source of every counted identity.
fn refresh_clients_expiring(state: &AdminState) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let windows = crate::metrics::EXPIRY_WINDOWS.map(|(_, secs)| secs);
    let mut counts = state.inventory.expiring(now, windows);
    for source in &state.current.load().config.trust {
        counts.entry(source.name.clone()).or_insert([0; 3]);
    }
    let per_trust: Vec<(String, [u64; 3])> = counts
        .into_iter()
        .map(|(trust, n)| (trust.to_string(), n))
        .collect();
    state.metrics.set_clients_expiring(&per_trust);
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        TEXT_CONTENT_TYPE,
        Bytes::from_static(body.as_bytes()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Probes and scrapes must always see the live value.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    struct Running {
        addr: SocketAddr,
        state: Arc<AdminState>,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    /// A snapshot of the development PKI's config with one route.
    fn snapshot() -> crate::snapshot::Snapshot {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::devpki::write(&dir.path().join("pki"), false).expect("pki");
        let yaml = "listen: { cert: pki/server.crt, key: pki/server.key }
trust: { internal: { ca: pki/ca.crt } }
upstreams: { app: { url: 'http://127.0.0.1:9' } }
routes: [{ name: all, upstream: app, allow: [{ trust: internal }] }]
";
        let config =
            crate::config::Config::from_yaml(yaml, &dir.path().join("c.yaml")).expect("config");
        crate::snapshot::Snapshot::build(Arc::new(config), 1, None, &Default::default())
            .expect("snapshot")
    }

    async fn start() -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        metrics.init_trust_sources(["internal"]);
        let state = Arc::new(AdminState {
            metrics,
            inventory: Arc::new(Inventory::new(16)),
            current: Arc::new(Current::new(snapshot(), Default::default())),
            ready: Arc::new(AtomicBool::new(true)),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            state,
            stop: Some(tx),
            task,
        }
    }

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    async fn call(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .expect("response in time")
            .expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("complete head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        Reply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// A flood of connections that send nothing: at most MAX_CONNECTIONS stay open (the
    /// oldest are ended for newer ones), and a probe still gets its answer.
    #[tokio::test]
    async fn idle_connections_are_capped_and_probes_still_get_in() {
        let r = start().await;
        let flood = MAX_CONNECTIONS + 40;
        let mut idle = Vec::new();
        for _ in 0..flood {
            idle.push(TcpStream::connect(r.addr).await.expect("connect"));
        }
        // Old enough to be ended for the probe.
        tokio::time::sleep(EVICT_AFTER * 2).await;
        let probe = call(r.addr, "GET", "/healthz").await;
        assert_eq!((probe.status, probe.body.as_str()), (200, "ok"));
        // Well before HEADER_READ_TIMEOUT (10 s), the server has closed all but at most
        // MAX_CONNECTIONS of the idle ones (waiters that time out are closed too).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let reads: Vec<_> = idle
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    matches!(
                        tokio::time::timeout_at(deadline, s.read(&mut b)).await,
                        Ok(Ok(0) | Err(_))
                    )
                })
            })
            .collect();
        let mut closed = 0;
        for read in reads {
            closed += usize::from(read.await.expect("read task"));
        }
        assert!(
            closed >= flood - MAX_CONNECTIONS,
            "{closed} of {flood} closed"
        );
        assert!(closed < flood, "every idle connection closed: {closed}");
    }

    #[tokio::test]
    async fn endpoints() {
        let r = start().await;

        let health = call(r.addr, "GET", "/healthz").await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));

        let ready = call(r.addr, "GET", "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));

        let m = call(r.addr, "GET", "/metrics").await;
        assert_eq!(m.status, 200);
        assert_eq!(m.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(m
            .body
            .contains("# TYPE certguard_tls_handshakes_total counter"));
        assert!(m
            .body
            .contains(r#"certguard_tls_handshakes_total{outcome="revoked",trust="internal"} 0"#));

        let ids = call(r.addr, "GET", "/identities").await;
        assert_eq!(ids.status, 200);
        assert_eq!(ids.header("content-type"), Some(JSON_CONTENT_TYPE));
        assert_eq!(ids.body, "[]");

        let missing = call(r.addr, "GET", "/nope").await;
        assert_eq!((missing.status, missing.body.as_str()), (404, "not found"));
        let missing = call(r.addr, "POST", "/").await;
        assert_eq!(missing.status, 404);

        let post = call(r.addr, "POST", "/metrics").await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));

        let head = call(r.addr, "HEAD", "/healthz").await;
        assert_eq!(head.status, 200);
        assert_eq!(head.body, "");
        assert_eq!(head.header("content-length"), Some("2"));

        let query = call(r.addr, "GET", "/healthz?verbose=1").await;
        assert_eq!(query.status, 200);
    }

    #[tokio::test]
    async fn readyz_follows_the_flag() {
        let r = start().await;
        assert_eq!(call(r.addr, "GET", "/readyz").await.status, 200);
        r.state.ready.store(false, Ordering::Release);
        let not = call(r.addr, "GET", "/readyz").await;
        assert_eq!((not.status, not.body.as_str()), (503, "not ready"));
        // Liveness is unaffected by readiness.
        assert_eq!(call(r.addr, "GET", "/healthz").await.status, 200);
        r.state.ready.store(true, Ordering::Release);
        assert_eq!(call(r.addr, "GET", "/readyz").await.status, 200);
    }

    #[tokio::test]
    async fn stops_accepting_on_shutdown() {
        let mut r = start().await;
        assert_eq!(call(r.addr, "GET", "/healthz").await.status, 200);
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut r.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve did not panic");
        assert!(TcpStream::connect(r.addr).await.is_err());
    }

    #[tokio::test]
    async fn idle_keep_alive_connection_does_not_block_shutdown() {
        let mut r = start().await;
        let mut s = TcpStream::connect(r.addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        // Well inside SHUTDOWN_GRACE: the idle connection is closed, not waited for.
        tokio::time::timeout(Duration::from_secs(2), &mut r.task)
            .await
            .expect("serve returns promptly")
            .expect("serve did not panic");
    }
}
