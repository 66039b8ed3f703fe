//! One client connection after its handshake: who it is (the identity, re-checked against
//! the current snapshot), what it holds (its `max_connections` slot, its places towards
//! upstreams), what it is doing (requests and bodies in flight, for the idle and header-read
//! timers), and the watchdog that cuts its bodies in flight when they stall or the client is
//! revoked. The request path reads this; the accept loop (`server.rs`) creates it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls_pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};

use crate::headers;
use crate::identity::{CertInfo, Identity};
use crate::inventory::Inventory;
use crate::metrics::{Metrics, ResetReason};
use crate::request::framing::StreamTracker;
use crate::snapshot::{Current, Snapshot};
use crate::tls::Rejection;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the listener, every connection and every request.
pub struct ProxyState {
    pub current: Arc<Current>,
    pub metrics: Arc<Metrics>,
    pub inventory: Arc<Inventory>,
    /// The connections still in their TLS handshake: at `max_connections`, a new connection
    /// ends the oldest that has run for [`crate::server::EVICT_HANDSHAKES_AFTER`].
    pub handshaking: Arc<crate::listener::Evictable>,
    /// Requests in flight upstream per identity (`listen.max_inflight_per_identity`).
    pub identity_places: Arc<crate::proxy::identity_places::IdentityPlaces>,
    next_conn_id: AtomicU64,
    open: AtomicUsize,
    closed: Notify,
}

impl ProxyState {
    /// Rebuild everything from the config file; on failure the current snapshot stays. It
    /// blocks (file reads, CRL parsing): call it from a blocking thread.
    pub fn reload(&self) -> Result<u64, crate::reload::ReloadError> {
        let path = self.current.load().config.source.clone();
        crate::reload::reload(&path, &self.current, &self.metrics)
    }

    pub fn new(
        current: Arc<Current>,
        metrics: Arc<Metrics>,
        inventory: Arc<Inventory>,
    ) -> ProxyState {
        ProxyState {
            current,
            metrics,
            inventory,
            handshaking: Arc::default(),
            identity_places: Arc::default(),
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

impl Lease {
    /// Count a new connection as open, holding its `max_connections` slot.
    pub fn new(state: &Arc<ProxyState>, slot: tokio::sync::OwnedSemaphorePermit) -> Lease {
        Lease {
            _open: OpenGuard::new(state),
            _slot: slot,
        }
    }
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

/// What a connection's verdict depends on besides its certificate: while it is unchanged, so
/// is the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecheckKey {
    /// The snapshot generation.
    generation: u64,
    /// How many of the snapshot's time deadlines (CRL nextUpdate, pin reviews) have passed.
    snapshot_deadlines: usize,
    /// How many notAfter dates of the certificate chain have passed.
    chain_deadlines: usize,
    /// The OCSP epoch: it moves when a kept OCSP status changed (SPEC 9.3: a revocation
    /// learned later reaches open connections).
    ocsp_epoch: u64,
}

impl RecheckKey {
    fn at(snap: &Snapshot, cert: &CertInfo, ocsp_epoch: u64, now: i64) -> RecheckKey {
        RecheckKey {
            generation: snap.generation,
            snapshot_deadlines: snap.passed_deadlines(now),
            chain_deadlines: cert.chain_not_after.partition_point(|t| *t < now),
            ocsp_epoch,
        }
    }
}

fn unix_now(now: UnixTime) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// What one connection knows about itself, shared by its requests.
pub struct ConnContext {
    pub state: Arc<ProxyState>,
    /// Numbers connections in logs.
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// The SNI the client sent (lower-case, no trailing dot).
    pub sni: Option<String>,
    pub http2: bool,
    /// The identity established at the handshake, under `verified`.
    identity: Identity,
    verified: RecheckKey,
    /// The identity re-verified against a later snapshot (or after a deadline passed), cached
    /// per key.
    rechecked: Mutex<Option<(RecheckKey, Result<Identity, Rejection>)>>,
    pub activity: Arc<Activity>,
    /// Request and response bodies in flight, watched for stalls and revocation.
    streams: Streams,
    /// `listen.max_inflight_per_connection`: places for requests in flight upstream.
    pub inflight_slots: Arc<Semaphore>,
    /// The connection's slot and open-count entry, held until the last holder of this context
    /// (the connection, or an upgraded tunnel that outlives it) is gone.
    _lease: Lease,
    /// The headers certguard adds for this client (XFCC element, X-Forwarded-For), built once
    /// per config generation: they depend only on the certificate, the peer and `forward`.
    client_headers: Mutex<Option<(u64, Arc<headers::ClientHeaders>)>>,
    /// Keeps this connection's certificate in the OCSP refresh while it is open.
    _ocsp_use: Option<crate::revocation::OcspUse>,
}

/// Who is on the other end of a connection, as its handshake established.
pub struct Peer {
    pub addr: SocketAddr,
    pub sni: Option<String>,
    pub identity: Identity,
    pub http2: bool,
    /// When the handshake that verified it began ([`Verified::before_handshake`]).
    pub verified: Verified,
}

/// The clock and OCSP epoch from before a handshake started: what its verifier can have
/// checked at most. A deadline (a notAfter, a CRL's nextUpdate, a pin's review date) or an
/// OCSP status change between this moment and the end of the handshake is seen by the
/// connection's first request, which re-verifies. Taken at the end of the handshake instead,
/// a client that held back its last handshake message across its certificate's notAfter
/// would be counted as verified after that deadline, and never re-checked for it.
#[derive(Clone, Copy, Debug)]
pub struct Verified {
    now: i64,
    ocsp_epoch: u64,
}

impl Verified {
    pub fn before_handshake(state: &ProxyState) -> Verified {
        Verified {
            now: unix_now(UnixTime::now()),
            ocsp_epoch: state.current.revocation.ocsp.epoch(),
        }
    }
}

impl ConnContext {
    /// The context of a connection whose handshake `snapshot` admitted; it keeps `lease`
    /// until the last holder of the context is gone.
    pub fn new(
        state: Arc<ProxyState>,
        lease: Lease,
        peer: Peer,
        snapshot: &Snapshot,
    ) -> Arc<ConnContext> {
        let listen = &snapshot.config.listen;
        let revocation = &state.current.revocation;
        let verified = RecheckKey::at(
            snapshot,
            &peer.identity.cert,
            peer.verified.ocsp_epoch,
            peer.verified.now,
        );
        // A certificate whose OCSP status was asked is asked again while it has connections.
        let ocsp_use = peer.identity.cert.chain.first().and_then(|leaf| {
            crate::revocation::OcspState::open(revocation, &peer.identity.trust, leaf)
        });
        let sniff = (!peer.http2).then_some(listen.max_header_bytes);
        Arc::new(ConnContext {
            conn_id: state.next_conn_id.fetch_add(1, Ordering::Relaxed),
            state,
            peer: peer.addr,
            sni: peer.sni,
            http2: peer.http2,
            identity: peer.identity,
            verified,
            rechecked: Mutex::new(None),
            activity: Arc::new(Activity::new(sniff)),
            streams: Streams::default(),
            inflight_slots: Arc::new(Semaphore::new(listen.max_inflight_per_connection)),
            _lease: lease,
            client_headers: Mutex::new(None),
            _ocsp_use: ocsp_use,
        })
    }

    /// The identity the handshake established.
    pub fn handshake_identity(&self) -> &Identity {
        &self.identity
    }

    /// Put a body in flight under this connection's watchdog, starting it if needed.
    pub fn watch(self: &Arc<Self>, body: Arc<dyn Watched>) {
        if self.streams.register(Arc::downgrade(&body)) {
            tokio::spawn(watchdog(Arc::downgrade(self)));
        }
    }

    /// This client's [`headers::ClientHeaders`] under `snap`'s `forward` settings.
    pub fn client_headers(&self, snap: &Snapshot) -> Arc<headers::ClientHeaders> {
        let mut cached = lock(&self.client_headers);
        match &*cached {
            Some((generation, h)) if *generation == snap.generation => h.clone(),
            _ => {
                let h = Arc::new(headers::ClientHeaders::new(
                    &snap.config.forward,
                    &self.identity.cert,
                    self.peer.ip(),
                ));
                *cached = Some((snap.generation, h.clone()));
                h
            }
        }
    }

    /// SPEC 5.3: the connection's identity as the current snapshot sees it. Re-verifies the
    /// chain only when the generation changed since the handshake, a deadline of the snapshot
    /// passed, or a certificate of the chain (the leaf or an intermediate) expired.
    pub fn current_identity(&self, snap: &Snapshot) -> Result<Identity, Rejection> {
        let now = UnixTime::now();
        let epoch = self.state.current.revocation.ocsp.epoch();
        let key = RecheckKey::at(snap, &self.identity.cert, epoch, unix_now(now));
        if key == self.verified {
            return Ok(self.identity.clone());
        }
        if let Ok(guard) = self.rechecked.lock() {
            if let Some((cached, result)) = guard.as_ref() {
                if *cached == key {
                    return result.clone();
                }
            }
        }
        let chain = &self.identity.cert.chain;
        let result = match chain.split_first() {
            Some((leaf, intermediates)) => snap
                .verifier()
                .verify(leaf, intermediates, now)
                .map(|admission| Identity::new(admission, self.identity.cert.clone())),
            None => Err(Rejection {
                trust: None,
                outcome: crate::tls::Outcome::NoClientCert,
                detail: "connection has no certificate".into(),
                deny_reason: None,
            }),
        };
        if let Ok(mut guard) = self.rechecked.lock() {
            *guard = Some((key, result.clone()));
        }
        result
    }
}

/// A body the connection's watchdog can see and cut.
pub trait Watched: Send + Sync {
    /// How long the body has been waiting on the client, if it is.
    fn waited(&self) -> Option<Duration>;
    /// Cut the body: release what it holds and fail it the next time it is polled. Returns
    /// false when it was already cut.
    fn cut(&self, why: ResetReason) -> bool;
}

/// The bodies of one client connection that are still in flight.
#[derive(Default)]
pub struct Streams {
    inner: Mutex<StreamsInner>,
}

#[derive(Default)]
struct StreamsInner {
    live: Vec<Weak<dyn Watched>>,
    watchdog: bool,
}

impl Streams {
    /// Track `body`. Returns true when no watchdog is running for this connection, in which
    /// case the caller starts one.
    pub fn register(&self, body: Weak<dyn Watched>) -> bool {
        let mut inner = lock(&self.inner);
        if inner.live.len() >= 16 {
            inner.live.retain(|w| w.strong_count() > 0);
        }
        inner.live.push(body);
        !std::mem::replace(&mut inner.watchdog, true)
    }

    /// The bodies still alive. When there are none, the watchdog is marked stopped (under the
    /// same lock as [`Streams::register`], so a body registered meanwhile starts a new one)
    /// and the caller must stop.
    pub fn live(&self) -> Vec<Arc<dyn Watched>> {
        let mut inner = lock(&self.inner);
        inner.live.retain(|w| w.strong_count() > 0);
        let live: Vec<Arc<dyn Watched>> = inner.live.iter().filter_map(Weak::upgrade).collect();
        if live.is_empty() {
            inner.watchdog = false;
        }
        live
    }
}

/// How often a connection's watchdog looks at its bodies in flight.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs while a connection has request or response bodies in flight: once a second it
/// re-checks the identity (SPEC 5.3 for streams that outlive their request: SSE, gRPC
/// streams, long uploads) and cuts every body if it no longer verifies; it cuts a body that
/// has waited on the client for `idle_timeout` (a closed HTTP/2 window, a stalled upload).
/// Holds the connection only weakly, so it never keeps its slot open.
async fn watchdog(ctx: Weak<ConnContext>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        let live = ctx.streams.live();
        if live.is_empty() {
            return;
        }
        let snap = ctx.state.current.load();
        let cut = |body: &Arc<dyn Watched>, why: ResetReason| {
            if body.cut(why) {
                ctx.state.metrics.stream_reset(why);
            }
        };
        match ctx.current_identity(&snap) {
            Err(rejection) => {
                tracing::info!(
                    conn_id = ctx.conn_id,
                    outcome = %rejection.outcome,
                    detail = %rejection.detail,
                    "identity no longer valid under the current snapshot: cutting streams in flight"
                );
                live.iter().for_each(|body| cut(body, ResetReason::Revoked));
            }
            Ok(_) => {
                let limit = snap.config.listen.idle_timeout;
                for body in &live {
                    if body.waited().is_some_and(|waited| waited >= limit) {
                        tracing::info!(
                            conn_id = ctx.conn_id,
                            "stream made no progress for idle_timeout because of the client: resetting it"
                        );
                        cut(body, ResetReason::Stalled);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
pub struct Limits {
    /// `None` for HTTP/2, whose requests are framed and multiplexed.
    pub header_read: Option<Duration>,
    pub idle: Duration,
}

pub enum Expiry {
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
    /// A head started or writes blocked since [`Activity::take_moved_earlier`] last looked:
    /// the connection's deadline may have moved earlier. Both happen while the connection's
    /// own task polls it (reads and writes go through [`ActivityIo`]), so that task looks
    /// after each poll instead of being woken.
    moved_earlier: AtomicBool,
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
            moved_earlier: AtomicBool::new(false),
            stream: sniff_limit.map(|limit| std::sync::Mutex::new(StreamTracker::new(limit))),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stamp `cell` (1 + now in milliseconds) when it is 0: a head started or writes blocked,
    /// so the deadline may have moved earlier. A cell already stamped keeps its time.
    fn stamp_once(&self, cell: &AtomicU64) {
        if cell.load(Ordering::Acquire) == 0
            && cell
                .compare_exchange(0, self.now_ms() + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.moved_earlier.store(true, Ordering::Release);
        }
    }

    fn on_read(&self, data: &[u8]) {
        // A read does not count as activity for `idle_timeout`: only requests do. Otherwise an
        // HTTP/2 client could hold a connection (and its slot) forever with PING or
        // WINDOW_UPDATE frames, and an HTTP/1 client with a head trickled past its timer.
        if self.inflight.load(Ordering::Acquire) == 0 {
            self.stamp_once(&self.head_started);
        }
        if let Some(stream) = &self.stream {
            stream.lock().unwrap_or_else(|p| p.into_inner()).feed(data);
        }
    }

    fn on_write(&self, blocked: bool) {
        if blocked {
            self.stamp_once(&self.write_blocked);
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

    /// Requests whose response (or request body) has not finished.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
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

    /// Whether a head started or writes blocked since the last call: then the deadline may
    /// have moved earlier, and the connection's timer should be pulled in. Every other change
    /// moves it later, which the timer finds out when it fires.
    pub fn take_moved_earlier(&self) -> bool {
        self.moved_earlier.load(Ordering::Acquire)
            && self.moved_earlier.swap(false, Ordering::AcqRel)
    }

    /// The connection's next deadline ([`Activity::expired`] says whether it passed). With a
    /// request in flight and writes moving there is none: then `idle_timeout` from now, when
    /// it is looked at again. Never before now unless it has passed, so the timer never spins.
    pub fn deadline(&self, limits: Limits) -> Instant {
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

    pub fn expired(&self, limits: Limits, now: Instant) -> Option<Expiry> {
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
    pub struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> ActivityIo<T> {
    /// Wrap a connection's stream so that its reads and writes update `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> ActivityIo<T> {
        ActivityIo { inner, activity }
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
    use super::*;

    const H1: Limits = Limits {
        header_read: Some(Duration::from_millis(100)),
        idle: Duration::from_millis(300),
    };

    #[test]
    fn a_head_that_starts_while_idle_pulls_the_deadline_in() {
        let activity = Arc::new(Activity::new(Some(1024)));
        let idle = activity.deadline(H1);
        assert!(!activity.take_moved_earlier());
        activity.on_read(b"GET / HT");
        assert!(activity.take_moved_earlier(), "a head started");
        assert!(!activity.take_moved_earlier(), "said once");
        let head = activity.deadline(H1);
        assert!(head < idle);
        assert!(activity
            .expired(H1, head - Duration::from_millis(1))
            .is_none());
        assert!(matches!(
            activity.expired(H1, head),
            Some(Expiry::HeaderRead)
        ));
        // More of the same head, and the next request once this one is in flight, move
        // nothing.
        activity.on_read(b"TP/1.1\r\n");
        assert!(!activity.take_moved_earlier());
        let guard = activity.request_started();
        activity.on_read(b"GET /next HTTP/1.1\r\n");
        assert!(!activity.take_moved_earlier());
        // The response ends: the idle timer starts again, later.
        drop(guard);
        assert!(!activity.take_moved_earlier());
        assert!(activity.deadline(H1) >= idle);
    }

    #[test]
    fn writes_that_block_during_a_request_pull_the_deadline_in() {
        let activity = Arc::new(Activity::new(None));
        let h2 = Limits {
            header_read: None,
            idle: Duration::from_millis(300),
        };
        let _guard = activity.request_started();
        let moving = activity.deadline(h2);
        activity.on_write(false);
        assert!(!activity.take_moved_earlier());
        activity.on_write(true);
        assert!(activity.take_moved_earlier());
        let stalled = activity.deadline(h2);
        assert!(stalled <= moving);
        assert!(matches!(
            activity.expired(h2, stalled),
            Some(Expiry::Stalled)
        ));
        // Blocked again before any progress: the same stall.
        activity.on_write(true);
        assert!(!activity.take_moved_earlier());
    }

    /// The timer is re-armed at `deadline` whenever it fires without an expiry: that must be
    /// ahead of now, or it would fire again at once, over and over.
    #[test]
    fn a_deadline_not_yet_expired_is_ahead_of_now() {
        let tiny = Limits {
            header_read: Some(Duration::from_millis(1)),
            idle: Duration::from_millis(1),
        };
        let activity = Arc::new(Activity::new(Some(1024)));
        let _guard = activity.request_started();
        for _ in 0..50 {
            let now = Instant::now();
            let at = activity.deadline(tiny);
            assert!(
                at > now || activity.expired(tiny, now).is_some(),
                "{:?} behind",
                now - at
            );
            std::thread::sleep(Duration::from_micros(170));
        }
    }

    #[test]
    fn an_idle_connection_expires_at_idle_timeout() {
        let activity = Activity::new(Some(1024));
        let at_idle = activity.epoch + H1.idle;
        assert_eq!(activity.deadline(H1), at_idle);
        assert!(activity
            .expired(H1, at_idle - Duration::from_millis(1))
            .is_none());
        assert!(matches!(activity.expired(H1, at_idle), Some(Expiry::Idle)));
    }
}
