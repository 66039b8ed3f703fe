//! Bodies in flight: the client's request body on its way upstream and the upstream's response
//! body on its way back, each watched so that a stalled or revoked stream is cut.
//!
//! A client can hold resources without sending a request: an HTTP/2 client that announces a
//! zero flow-control window (or stops sending WINDOW_UPDATE) never lets a response through,
//! and a client that trickles (or stops) an upload holds the upstream request open. Neither
//! stalls the TCP connection, so the connection-level timers do not see it. Every body that
//! crosses certguard therefore records since when it has been waiting on the client; the
//! connection's watchdog (`service::watchdog`) resets the ones that waited `idle_timeout`
//! and, once a second, re-checks the identity so that a long response (SSE, a gRPC server
//! stream) or a long upload ends when the client is revoked.
//!
//! Resetting a response drops the upstream body (freeing the upstream connection), the
//! request's in-flight count and its concurrency permits at once, even when hyper never polls
//! the body again (it does not while the client's window is closed).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::Forward;
use crate::conn::{InflightGuard, Watched};
use crate::headers;
use crate::metrics::ResetReason;

pub use crate::upstream::{BoxError, ProxyBody};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Since when a body has been waiting on the client, and whether it was cut.
struct Watch {
    epoch: Instant,
    /// 1 + milliseconds since `epoch` since when the body has been waiting on the client;
    /// 0 while it is not.
    waiting: AtomicU64,
    /// 0, or 1 + the index of the [`ResetReason`] in [`ResetReason::ALL`].
    cut: AtomicU8,
    /// The waker of whoever polls the body (hyper).
    waker: AtomicWaker,
}

impl Watch {
    fn new(waiting_now: bool) -> Watch {
        Watch {
            epoch: Instant::now(),
            waiting: AtomicU64::new(u64::from(waiting_now)),
            cut: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }

    fn now(&self) -> u64 {
        1 + u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn start_waiting(&self) {
        if self.cut().is_some() {
            return;
        }
        let now = self.now();
        let _ = self
            .waiting
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    fn stop_waiting(&self) {
        self.waiting.store(0, Ordering::Release);
    }

    fn waited(&self) -> Option<Duration> {
        match self.waiting.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(self.now().saturating_sub(since))),
        }
    }

    fn cut(&self) -> Option<ResetReason> {
        match self.cut.load(Ordering::Acquire) {
            0 => None,
            n => ResetReason::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    /// Record the first cut; false when there already was one. A cut body waits on nobody.
    fn set_cut(&self, why: ResetReason) -> bool {
        let code = match why {
            ResetReason::Stalled => 1,
            ResetReason::Revoked => 2,
        };
        if self
            .cut
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.stop_waiting();
        true
    }
}

/// What a request keeps while its exchange with the upstream is not finished: its place in
/// the connection's in-flight count and its concurrency places.
pub struct Hold {
    /// Shared by the request body and the response body: the connection counts as busy
    /// (no idle or header-read timer) until both are finished.
    pub inflight: Arc<InflightGuard>,
    /// Shared with the request body too ([`RequestState::keep`]).
    pub places: Arc<Places>,
}

/// A request's places under the concurrency limits. They are released when both its response
/// and its request body have ended: an upload that outlasts its response keeps the upstream
/// connection busy, so it keeps its places too (else a client could pin any number of
/// upstream connections with uploads to an endpoint that answers before reading them).
pub struct Places {
    /// A place under `listen.max_inflight_per_connection`.
    pub connection: OwnedSemaphorePermit,
    /// A place under `upstreams.<name>.max_requests`.
    pub upstream: OwnedSemaphorePermit,
    /// A place under `listen.max_inflight_per_identity`, when it is set.
    pub identity: Option<super::identity_places::IdentityPlace>,
}

/// The client's request body on its way upstream.
///
/// Notes when reading it failed (so that the failure is charged to the client, 400, and not
/// to the upstream), drops trailer fields that [`headers::is_dropped_trailer`] names, waits
/// on the client under the watchdog's eye, and keeps the connection busy until it ends.
pub struct RequestBody {
    inner: Incoming,
    state: Arc<RequestState>,
    forward: Arc<Forward>,
    inflight: Option<Arc<InflightGuard>>,
}

/// The shared part of a [`RequestBody`].
pub struct RequestState {
    watch: Watch,
    failed: AtomicBool,
    /// The body's form named another method in a `_method` field (a subset of `failed`).
    method_in_form: AtomicBool,
    /// The body ended (or was empty, cut, dropped): it holds no places any more.
    ended: AtomicBool,
    /// The request's places, while the body is still on its way.
    places: Mutex<Option<Arc<Places>>>,
}

impl RequestState {
    /// Whether reading the client's body failed (malformed chunking, reset, cut).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether the body was cut because its form names another method in `_method`.
    pub fn method_in_form(&self) -> bool {
        self.method_in_form.load(Ordering::Acquire)
    }

    /// The body's form names another method: it fails (the upstream never gets all of it).
    pub fn refuse_method_in_form(&self) {
        self.method_in_form.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.end();
    }

    /// Keep `places` until the body ends (nothing, if it already has).
    pub fn keep(&self, places: &Arc<Places>) {
        let mut kept = lock(&self.places);
        if !self.ended.load(Ordering::Acquire) {
            *kept = Some(places.clone());
        }
    }

    /// The body ended: release its share of the places.
    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let released = lock(&self.places).take();
        drop(released);
    }
}

impl Watched for RequestState {
    fn waited(&self) -> Option<Duration> {
        self.watch.waited()
    }

    fn cut(&self, why: ResetReason) -> bool {
        if !self.watch.set_cut(why) {
            return false;
        }
        self.end();
        self.watch.waker.wake();
        true
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.state.end();
    }
}

impl RequestBody {
    /// Wrap the client's body; `forward` decides which trailer fields are dropped.
    pub fn new(inner: Incoming, forward: Arc<Forward>, inflight: Arc<InflightGuard>) -> Self {
        let ended = inner.is_end_stream();
        RequestBody {
            inner,
            state: Arc::new(RequestState {
                watch: Watch::new(false),
                failed: AtomicBool::new(false),
                method_in_form: AtomicBool::new(false),
                ended: AtomicBool::new(ended),
                places: Mutex::new(None),
            }),
            forward,
            inflight: Some(inflight),
        }
    }

    /// The shared state, for the watchdog and for telling client failures apart.
    pub fn state(&self) -> &Arc<RequestState> {
        &self.state
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.state.watch.waker.register(cx.waker());
        if let Some(why) = this.state.watch.cut() {
            this.state.failed.store(true, Ordering::Release);
            this.state.end();
            this.inflight = None;
            return Poll::Ready(Some(Err(Box::new(why))));
        }
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match res {
            Poll::Pending => {
                this.state.watch.start_waiting();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.state.watch.stop_waiting();
                match frame.into_trailers() {
                    Ok(mut trailers) => {
                        headers::clean_trailers(&mut trailers, &this.forward);
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.watch.stop_waiting();
                this.state.failed.store(true, Ordering::Release);
                this.state.end();
                this.inflight = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.state.watch.stop_waiting();
                this.state.end();
                this.inflight = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response on its way to the client.
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    /// Answered by certguard (fixed bodies) or not streamed (a 101): nothing to watch.
    Local {
        body: ProxyBody,
        _inflight: Arc<InflightGuard>,
    },
    /// Relayed from the upstream.
    Relayed {
        slot: Arc<ResponseSlot>,
        probe: Waker,
    },
}

/// The shared part of a relayed [`ResponseBody`].
pub struct ResponseSlot {
    watch: Watch,
    /// `None` once the body finished or was cut: whatever it held is released.
    held: Mutex<Option<Relayed>>,
}

struct Relayed {
    body: ProxyBody,
    _hold: Hold,
}

impl Watched for ResponseSlot {
    fn waited(&self) -> Option<Duration> {
        self.watch.waited()
    }

    fn cut(&self, why: ResetReason) -> bool {
        if !self.watch.set_cut(why) {
            return false;
        }
        // Dropped outside the lock on `held`: the upstream body's drop may do work.
        let released = lock(&self.held).take();
        drop(released);
        self.watch.waker.wake();
        true
    }
}

/// The waker given to the upstream body: when the upstream has data that hyper will not
/// take (the client's window is closed, so hyper does not poll), the body is waiting on the
/// client from that moment.
impl Wake for ResponseSlot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.watch.start_waiting();
        self.watch.waker.wake();
    }
}

impl ResponseBody {
    /// A response certguard answered itself.
    pub fn local(body: ProxyBody, inflight: Arc<InflightGuard>) -> ResponseBody {
        ResponseBody {
            kind: Kind::Local {
                body,
                _inflight: inflight,
            },
        }
    }

    /// A response relayed from the upstream, holding `hold` until it ends. The returned slot
    /// goes to the connection's [`Streams`].
    pub fn relayed(body: ProxyBody, hold: Hold) -> (ResponseBody, Arc<ResponseSlot>) {
        // Waiting on the client from the start: hyper polls a body only while the client's
        // window has room, and a client that opened with a zero window never lets it.
        let slot = Arc::new(ResponseSlot {
            watch: Watch::new(true),
            held: Mutex::new(Some(Relayed { body, _hold: hold })),
        });
        let probe = Waker::from(slot.clone());
        (
            ResponseBody {
                kind: Kind::Relayed {
                    slot: slot.clone(),
                    probe,
                },
            },
            slot,
        )
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The upstream body may be kept alive by its own connection (which holds `probe`,
        // and so the slot): release it now, so that a client that goes away also frees the
        // upstream connection.
        if let Kind::Relayed { slot, .. } = &self.kind {
            let released = lock(&slot.held).take();
            drop(released);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (slot, probe) = match &mut self.kind {
            Kind::Local { body, .. } => return Pin::new(body).poll_frame(cx),
            Kind::Relayed { slot, probe } => (slot, probe),
        };
        slot.watch.stop_waiting();
        slot.watch.waker.register(cx.waker());
        let mut held = lock(&slot.held);
        let Some(relayed) = held.as_mut() else {
            drop(held);
            return Poll::Ready(slot.watch.cut().map(|why| Err(Box::new(why) as BoxError)));
        };
        let mut probe_cx = Context::from_waker(probe);
        let res = Pin::new(&mut relayed.body).poll_frame(&mut probe_cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() && !relayed.body.is_end_stream() => {
                // hyper takes the next frame only when the client's window has room.
                slot.watch.start_waiting();
            }
            Poll::Ready(None | Some(Err(_))) => {
                let finished = held.take();
                drop(held);
                drop(finished);
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local { body, .. } => body.is_end_stream(),
            Kind::Relayed { slot, .. } => lock(&slot.held)
                .as_ref()
                .map_or(true, |r| r.body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local { body, .. } => body.size_hint(),
            Kind::Relayed { slot, .. } => lock(&slot.held)
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |r| r.body.size_hint()),
        }
    }
}
