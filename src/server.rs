//! The TLS listener: accept loop, handshake under a timeout inside the per-connection task,
//! connection limits, header-read and idle timeouts, and drain on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::Acceptor;
use rustls_pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::LazyConfigAcceptor;

use crate::identity::{CertInfo, Identity};
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::proxy::framing::StreamTracker;
use crate::proxy::service::{self, ConnContext};
use crate::snapshot::{Current, Snapshot};
use crate::tls::{self, Outcome};

/// How long a connection accepted at the `max_connections` cap may wait for a free slot
/// before it is closed.
const CAP_WAIT: Duration = Duration::from_secs(1);
/// How long an idle connection that was asked to close may take to do so.
const IDLE_GOODBYE: Duration = Duration::from_secs(1);
/// HTTP/2 streams per connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// State shared by the listener, every connection and every request.
pub struct ProxyState {
    pub current: Arc<Current>,
    pub metrics: Arc<Metrics>,
    pub inventory: Arc<Inventory>,
    next_conn_id: AtomicU64,
    open: AtomicUsize,
    closed: Notify,
}

impl ProxyState {
    pub fn new(
        current: Arc<Current>,
        metrics: Arc<Metrics>,
        inventory: Arc<Inventory>,
    ) -> ProxyState {
        ProxyState {
            current,
            metrics,
            inventory,
            next_conn_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
        }
    }

    /// Client connections currently open (handshaking or serving).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Wait until every client connection has closed.
    pub async fn drained(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a connection as open for metrics and drain, until dropped.
struct OpenGuard(Arc<ProxyState>);

/// What one client connection holds while it is open: its `max_connections` slot and its place
/// in the open-connection count. Owned by the connection's context, which an upgraded
/// (WebSocket) tunnel shares, so a tunnel that outlives its HTTP connection keeps both.
pub struct Lease {
    _open: OpenGuard,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl OpenGuard {
    fn new(state: &Arc<ProxyState>) -> OpenGuard {
        state.open.fetch_add(1, Ordering::AcqRel);
        state.metrics.connection_opened();
        OpenGuard(state.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Accept connections until `shutdown` becomes true. Never returns early on accept errors.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = state.current.load().config.listen.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    // Connections waiting for a slot are bounded too, so a flood cannot grow tasks unboundedly.
    let waiting = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if is_resource_exhaustion(&e) {
                    tracing::error!(error = %e, "accept failed: out of resources; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let permit = slots.clone().try_acquire_owned().ok();
        let state = state.clone();
        let slots = slots.clone();
        let waiting = waiting.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let slot = match permit {
                Some(p) => p,
                None => {
                    let Ok(_queued) = waiting.try_acquire_owned() else {
                        state.metrics.connection_refused_at_limit();
                        tracing::warn!(%peer, "connection refused: max_connections reached");
                        return;
                    };
                    match tokio::time::timeout(CAP_WAIT, slots.acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => {
                            state.metrics.connection_refused_at_limit();
                            tracing::warn!(%peer, "connection refused: max_connections reached");
                            return;
                        }
                    }
                }
            };
            let snapshot = state.current.load();
            let lease = Lease {
                _open: OpenGuard::new(&state),
                _slot: slot,
            };
            handle_connection(state, snapshot, tcp, peer, lease, shutdown).await;
        });
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: retrying at once would spin.
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}

/// The result of a successful handshake.
struct Established<IO> {
    stream: tokio_rustls::server::TlsStream<IO>,
    sni: Option<String>,
    identity: Identity,
    http2: bool,
}

/// A failed handshake, classified.
struct Failed {
    sni: Option<String>,
    trust: Option<Arc<str>>,
    outcome: Outcome,
    detail: String,
}

async fn handshake<IO>(snapshot: &Snapshot, tcp: IO) -> Result<Established<IO>, Failed>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = snapshot.config.listen.handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = |sni: Option<String>| Failed {
        sni,
        trust: None,
        outcome: Outcome::Timeout,
        detail: format!("handshake not complete within {timeout:?}"),
    };
    let start =
        match tokio::time::timeout_at(deadline, LazyConfigAcceptor::new(Acceptor::default(), tcp))
            .await
        {
            Err(_) => return Err(timed_out(None)),
            Ok(Err(e)) => {
                let (trust, outcome) = tls::classify_failure(None, rustls_error(&e));
                return Err(Failed {
                    sni: None,
                    trust,
                    outcome,
                    detail: e.to_string(),
                });
            }
            Ok(Ok(start)) => start,
        };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    let (config, record) = snapshot.tls.for_connection();
    let stream = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Err(_) => return Err(timed_out(sni)),
        Ok(Err(e)) => {
            let (trust, outcome) = tls::classify_failure(record.get(), rustls_error(&e));
            let detail = match record.get() {
                Some(Err(rejection)) => rejection.detail,
                _ => e.to_string(),
            };
            return Err(Failed {
                sni,
                trust,
                outcome,
                detail,
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let conn = stream.get_ref().1;
    let http2 = conn.alpn_protocol() == Some(b"h2");
    let chain: Vec<_> = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let fail = |outcome: Outcome, detail: String| Failed {
        sni: sni.clone(),
        trust: None,
        outcome,
        detail,
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(fail(Outcome::NoClientCert, "no client certificate".into()));
    };
    // The verifier recorded which source admitted the client. A resumed session (only when
    // session_resumption is on) skipped the verifier, so verify again against this snapshot.
    let admission = match record.get() {
        Some(Ok(a)) => a,
        _ => snapshot
            .verifier()
            .verify(leaf, intermediates, UnixTime::now())
            .map_err(|r| Failed {
                sni: sni.clone(),
                trust: r.trust,
                outcome: r.outcome,
                detail: r.detail,
            })?,
    };
    let cert =
        CertInfo::from_chain(&chain).map_err(|e| fail(Outcome::InvalidCert, e.to_string()))?;
    Ok(Established {
        stream,
        sni,
        identity: Identity::new(admission, Arc::new(cert)),
        http2,
    })
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

async fn handle_connection(
    state: Arc<ProxyState>,
    snapshot: Arc<Snapshot>,
    tcp: TcpStream,
    peer: SocketAddr,
    lease: Lease,
    shutdown: watch::Receiver<bool>,
) {
    let conn_id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let established = match handshake(&snapshot, tcp).await {
        Ok(e) => e,
        Err(f) => {
            state
                .metrics
                .handshake(f.trust.as_deref(), f.outcome, started.elapsed());
            crate::audit::handshake_failure_line(
                peer,
                f.sni.as_deref(),
                f.trust.as_deref(),
                f.outcome,
                &f.detail,
            );
            return;
        }
    };
    let Established {
        stream,
        sni,
        identity,
        http2,
    } = established;
    state
        .metrics
        .handshake(Some(&identity.trust), Outcome::Success, started.elapsed());
    state.inventory.seen(&identity);
    tracing::debug!(conn_id, %peer, trust = %identity.trust, fingerprint = %identity.cert.fingerprint, "handshake complete");

    let listen = &snapshot.config.listen;
    let limits = Limits {
        header_read: (!http2).then_some(listen.header_read_timeout),
        idle: listen.idle_timeout,
    };
    let max_header_bytes = listen.max_header_bytes;
    let activity = Arc::new(Activity::new((!http2).then_some(max_header_bytes)));
    let ctx = Arc::new(ConnContext::new(
        state.clone(),
        conn_id,
        peer,
        sni,
        http2,
        identity,
        &snapshot,
        activity.clone(),
        lease,
    ));
    let recorder = ctx.clone();
    drop(snapshot);
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    let svc = service_fn(move |req| service::handle(ctx.clone(), req));
    if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        drive(
            builder.serve_connection(io, svc),
            &activity,
            limits,
            shutdown,
        )
        .await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Our own header-read timer (below) starts at a request's first byte; hyper's
            // would also cut idle keep-alive connections, which `idle_timeout` governs.
            .header_read_timeout(None)
            .max_buf_size(max_header_bytes.max(8192))
            .max_header_size(max_header_bytes);
        let refused = drive(
            builder.serve_connection(io, svc).with_upgrades(),
            &activity,
            limits,
            shutdown,
        )
        .await;
        service::record_refused(&recorder, refused.as_ref());
    }
}

/// A hyper server connection that can be asked to finish in-flight requests and close.
trait Drainable: Future {
    fn drain(self: Pin<&mut Self>);
}

impl<I, S, B> Drainable for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Drainable for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[derive(Clone, Copy)]
struct Limits {
    /// `None` for HTTP/2, whose requests are framed and multiplexed.
    header_read: Option<Duration>,
    idle: Duration,
}

/// Serve one connection until it ends, applying the header-read and idle timeouts and
/// draining on shutdown.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Option<hyper::Error>
where
    C: Drainable<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let mut draining = false;
    // After an idle connection was asked to close (GOAWAY / `Connection: close`), how long it
    // may take to say goodbye before it is dropped.
    let mut goodbye_until: Option<Instant> = None;
    loop {
        let deadline = goodbye_until.unwrap_or_else(|| activity.deadline(limits));
        tokio::select! {
            res = conn.as_mut() => {
                return match res {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        Some(e)
                    }
                };
            }
            _ = shutdown.wait_for(|s| *s), if !draining => {
                conn.as_mut().drain();
                draining = true;
            }
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Some(until) = goodbye_until {
                    if Instant::now() >= until {
                        if activity.inflight.load(Ordering::Acquire) == 0 {
                            tracing::debug!("idle connection did not close after GOAWAY: dropping it");
                            return None;
                        }
                        // A request slipped in before the GOAWAY: back to the normal timers.
                        goodbye_until = None;
                    }
                    continue;
                }
                match activity.expired(limits, Instant::now()) {
                    Some(Expiry::HeaderRead) => {
                        tracing::debug!("header_read_timeout: closing connection");
                        return None;
                    }
                    Some(Expiry::Stalled) => {
                        tracing::debug!("client stopped reading for idle_timeout: closing connection");
                        return None;
                    }
                    Some(Expiry::Idle) => {
                        if !draining {
                            conn.as_mut().drain();
                            draining = true;
                        }
                        goodbye_until = Some(Instant::now() + IDLE_GOODBYE);
                    }
                    None => {}
                }
            }
        }
    }
}

enum Expiry {
    HeaderRead,
    Idle,
    /// A response is in flight but the client has not accepted a byte for `idle_timeout`.
    Stalled,
}

/// Per-connection activity, updated by the IO wrapper and by request handling.
pub struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the connection's start or of the end of the last
    /// response: where the idle timer starts.
    last: AtomicU64,
    /// Requests whose response body has not finished.
    inflight: AtomicUsize,
    /// 1 + milliseconds since `epoch` when the first byte of a pending request head arrived;
    /// 0 when no head is pending.
    head_started: AtomicU64,
    /// 1 + milliseconds since `epoch` since when writes to the client have been blocked (the
    /// client stopped reading); 0 while writes make progress.
    write_blocked: AtomicU64,
    /// Wakes the connection's timer when a request head starts or writes block (its deadline
    /// moves earlier).
    changed: Notify,
    /// HTTP/1 only: follows the raw request stream to judge every head's framing (see
    /// [`StreamTracker`]).
    stream: Option<std::sync::Mutex<StreamTracker>>,
}

impl Activity {
    /// `sniff_limit`: for HTTP/1 connections, how many bytes of a request head to inspect.
    fn new(sniff_limit: Option<usize>) -> Activity {
        Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            changed: Notify::new(),
            stream: sniff_limit.map(|limit| std::sync::Mutex::new(StreamTracker::new(limit))),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_read(&self, data: &[u8]) {
        // A read does not count as activity for `idle_timeout`: only requests do. Otherwise an
        // HTTP/2 client could hold a connection (and its slot) forever with PING or
        // WINDOW_UPDATE frames, and an HTTP/1 client with a head trickled past its timer.
        let now = self.now_ms();
        if self.inflight.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
        if let Some(stream) = &self.stream {
            stream.lock().unwrap_or_else(|p| p.into_inner()).feed(data);
        }
    }

    fn on_write(&self, blocked: bool) {
        if blocked {
            let now = self.now_ms();
            if self
                .write_blocked
                .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.changed.notify_one();
            }
        } else {
            self.write_blocked.store(0, Ordering::Release);
        }
    }

    /// Whether the next request's head (in stream order) had both Content-Length and
    /// Transfer-Encoding. Call once per request.
    pub fn take_framing_conflict(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take_verdict())
    }

    /// HTTP/1: the request stream could not be followed (see [`StreamTracker`]), so later
    /// requests on this connection could not be judged for framing.
    pub fn stream_lost(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_lost())
    }

    /// A request head was parsed: the header-read timer stops, the idle timer pauses.
    pub fn request_started(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InflightGuard(self.clone())
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn deadline(&self, limits: Limits) -> Instant {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return match self.write_blocked.load(Ordering::Acquire) {
                0 => Instant::now() + limits.idle,
                since => self.at(since - 1) + limits.idle,
            };
        }
        let head = self.head_started.load(Ordering::Acquire);
        match limits.header_read {
            Some(hr) if head != 0 => self.at(head - 1) + hr,
            _ => self.at(self.last.load(Ordering::Relaxed)) + limits.idle,
        }
    }

    fn expired(&self, limits: Limits, now: Instant) -> Option<Expiry> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return match self.write_blocked.load(Ordering::Acquire) {
                0 => None,
                since => (now >= self.at(since - 1) + limits.idle).then_some(Expiry::Stalled),
            };
        }
        let head = self.head_started.load(Ordering::Acquire);
        if let (Some(hr), true) = (limits.header_read, head != 0) {
            return (now >= self.at(head - 1) + hr).then_some(Expiry::HeaderRead);
        }
        (now >= self.at(self.last.load(Ordering::Relaxed)) + limits.idle).then_some(Expiry::Idle)
    }
}

/// Held by a request until its response body is finished (or dropped).
pub struct InflightGuard(Arc<Activity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last.store(now, Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// The TLS stream, noting every read for the timeouts.
    struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T: AsyncRead> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        this.activity.on_write(res.is_pending());
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        this.activity.on_write(res.is_pending());
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    //! The handshake outcomes that only this module produces (`timeout`, and `protocol_error`
    //! before a ClientHello), in memory over a duplex pipe, with tokio's clock paused.
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn snapshot(dir: &std::path::Path) -> Snapshot {
        crate::devpki::write(&dir.join("pki"), false).expect("dev PKI");
        let yaml =
            "listen:\n  cert: pki/server.crt\n  key: pki/server.key\n  handshake_timeout: 3s\n\
                    trust:\n  internal:\n    ca: pki/ca.crt\n";
        let config = crate::config::Config::from_yaml(yaml, &dir.join("certguard.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Snapshot::build(config, 1, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first flight of a TLS client offering SNI `localhost`.
    fn client_hello() -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    async fn outcome(snap: &Snapshot, first_bytes: &[u8]) -> Failed {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(first_bytes).await.expect("write");
        // `client` stays open and silent: the server must give up on its own.
        match handshake(snap, server).await {
            Ok(_) => panic!("the handshake cannot succeed"),
            Err(f) => f,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = snapshot(dir.path());
        let started = tokio::time::Instant::now();
        let f = outcome(&snap, b"").await;
        assert_eq!((f.outcome, f.trust, f.sni), (Outcome::Timeout, None, None));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stalling_after_its_hello_times_out_with_its_sni() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = snapshot(dir.path());
        let f = outcome(&snap, &client_hello()).await;
        assert_eq!(f.outcome, Outcome::Timeout);
        assert_eq!(f.sni.as_deref(), Some("localhost"));
        assert_eq!(f.outcome.as_str(), "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn plain_http_on_the_tls_port_is_a_protocol_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = snapshot(dir.path());
        let f = outcome(&snap, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert_eq!((f.outcome, f.trust), (Outcome::ProtocolError, None));
        assert_eq!(f.outcome.as_str(), "protocol_error");
    }
}
