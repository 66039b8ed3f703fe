//! The TLS listener: accept loop, handshake under a timeout inside the per-connection task,
//! connection limits, header-read and idle timeouts, and drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::conn::{
    Activity, ActivityIo, ConnContext, Expiry, Lease, Limits, Peer, ProxyState, Verified,
};
use crate::proxy::service;
use crate::snapshot::Snapshot;
use crate::tls::accept::{Established, Failed};
use crate::tls::{self, Outcome};

/// How long a connection accepted at the `max_connections` cap may wait for a free slot
/// before it is closed.
const CAP_WAIT: Duration = Duration::from_secs(1);
/// At `max_connections`, a new connection ends the oldest handshake that has run this long
/// (see [`crate::listener::Evictable`]).
pub const EVICT_HANDSHAKES_AFTER: Duration = Duration::from_secs(1);
/// How long an idle connection that was asked to close may take to do so.
const IDLE_GOODBYE: Duration = Duration::from_secs(1);
/// HTTP/2 streams per connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Bytes of response an HTTP/2 stream buffers for its client.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

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
        let (tcp, peer) = tokio::select! {
            accepted = crate::listener::accept(&listener, "listen") => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
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
                    // Make room: a connection that has not finished its handshake within a
                    // second gives its slot to this one.
                    let waited = crate::listener::wait_for_place(
                        &slots,
                        &waiting,
                        &state.handshaking,
                        EVICT_HANDSHAKES_AFTER,
                        CAP_WAIT,
                    );
                    let Some(slot) = waited.await else {
                        refused_at_limit(&state, peer);
                        return;
                    };
                    slot
                }
            };
            let snapshot = state.current.load();
            let lease = Lease::new(&state, slot);
            handle_connection(state, snapshot, tcp, peer, lease, shutdown).await;
        });
    }
}

/// At most one warning per this period about connections refused at `max_connections`.
const REFUSED_WARNING_EVERY: Duration = Duration::from_secs(10);

/// A connection closed at `max_connections`: always counted, logged at most once per
/// [`REFUSED_WARNING_EVERY`] (anyone who can connect can repeat it at will).
fn refused_at_limit(state: &ProxyState, peer: SocketAddr) {
    static WARNING: std::sync::LazyLock<crate::logging::Throttle> =
        std::sync::LazyLock::new(|| crate::logging::Throttle::new(REFUSED_WARNING_EVERY));
    state.metrics.connection_refused_at_limit();
    if let Some(held_back) = WARNING.pass() {
        tracing::warn!(
            %peer,
            refused_since_last_warning = held_back,
            "connection refused: max_connections reached (one warning per 10s; \
             certguard_connections_refused_total counts every refusal)"
        );
    }
}

async fn handle_connection(
    state: Arc<ProxyState>,
    snapshot: Arc<Snapshot>,
    tcp: TcpStream,
    peer: SocketAddr,
    lease: Lease,
    shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let verified = Verified::before_handshake(&state);
    let timeout = snapshot.config.listen.handshake_timeout;
    // Not boxed: this task ends with the handshake (below), so the handshake's state is not
    // kept while the connection is open.
    let (entry, evicted) = state.handshaking.enter();
    let accepted = tokio::select! {
        accepted = tls::accept::accept(&snapshot.tls, timeout, tcp) => accepted,
        Ok(()) = evicted => Err(Failed::evicted()),
    };
    drop(entry);
    let established = match accepted {
        Ok(e) => e,
        Err(Failed { sni, rejection }) => {
            let trust = rejection.trust.as_deref();
            state
                .metrics
                .handshake(trust, rejection.outcome, started.elapsed());
            crate::audit::handshake_failure_line(peer, sni.as_deref(), &rejection);
            return;
        }
    };
    // Everything between the handshake and serving happens in a plain function: what it
    // builds and borrows (the TLS stream, the hyper builders) is moved into the boxed
    // connection or dropped there, instead of keeping a slot in this task's future for as long
    // as the connection is open (a local that was ever borrowed keeps its slot until the end
    // of its scope, across every later await).
    let serving = serving(state, snapshot, established, peer, verified, lease, started);
    // The connection is served by a task of its own and this one ends: a future keeps its
    // arguments (here the TCP stream, peer, lease, snapshot moved on long ago) for as long as
    // it lives, and the serving task starts with nothing but what serving needs.
    tokio::spawn(async move {
        let refused = drive(serving.conn, &serving.activity, serving.limits, shutdown).await;
        if let Some(recorder) = serving.recorder {
            service::record_refused(&recorder, refused.as_ref());
        }
    });
}

/// A connection after its handshake, ready to be driven.
struct Serving {
    /// The hyper connection (HTTP/1 or HTTP/2), on the heap at its own size.
    conn: Pin<Box<dyn Drainable>>,
    activity: Arc<Activity>,
    limits: Limits,
    /// The context that records a request hyper refused before it reached the service (an
    /// oversized or malformed HTTP/1 head); `None` for HTTP/2.
    recorder: Option<Arc<ConnContext>>,
}

/// Set up the connection context and the hyper connection for an established TLS stream.
fn serving(
    state: Arc<ProxyState>,
    snapshot: Arc<Snapshot>,
    established: Established<TcpStream>,
    peer: SocketAddr,
    verified: Verified,
    lease: Lease,
    started: Instant,
) -> Serving {
    let Established {
        stream,
        sni,
        identity,
        http2,
    } = established;
    ack_now(stream.get_ref().0);
    state
        .metrics
        .handshake(Some(&identity.trust), Outcome::Success, started.elapsed());
    state.inventory.seen(&identity);

    let listen = &snapshot.config.listen;
    let limits = Limits {
        header_read: (!http2).then_some(listen.header_read_timeout),
        idle: listen.idle_timeout,
    };
    let max_header_bytes = listen.max_header_bytes;
    let peer = Peer {
        addr: peer,
        sni,
        identity,
        http2,
        verified,
    };
    let ctx = ConnContext::new(state, lease, peer, &snapshot);
    drop(snapshot);
    tracing::debug!(
        conn_id = ctx.conn_id,
        peer = %ctx.peer,
        trust = %ctx.handshake_identity().trust,
        fingerprint = %ctx.handshake_identity().cert.fingerprint,
        "handshake complete"
    );
    let activity = ctx.activity.clone();
    let recorder = ctx.clone();
    let io = TokioIo::new(ActivityIo::new(stream, activity.clone()));
    // The request future is boxed per request: hyper's HTTP/1 dispatcher otherwise allocates a
    // slot of the future's full size (2.7 KB) for every connection, idle or not.
    let svc = service_fn(move |req| Box::pin(service::handle(ctx.clone(), req)));
    if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            // What a stream may queue for a client that does not read (hyper's default is
            // 400 KB): 32 relayed streams of a slow reader hold at most 2 MB, not 12.8 MB.
            .max_send_buf_size(H2_MAX_SEND_BUF)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Serving {
            conn: Box::pin(builder.serve_connection(io, svc)),
            activity,
            limits,
            recorder: None,
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Our own header-read timer (below) starts at a request's first byte; hyper's
            // would also cut idle keep-alive connections, which `idle_timeout` governs.
            .header_read_timeout(None)
            .max_buf_size(max_header_bytes.max(8192))
            .max_header_size(max_header_bytes);
        Serving {
            conn: Box::pin(builder.serve_connection(io, svc).with_upgrades()),
            activity,
            limits,
            recorder: Some(recorder),
        }
    }
}

/// Acknowledge the client's last handshake flight now instead of after the delayed-ACK timer.
///
/// In TLS 1.3 the server sends nothing after the client's Finished (no session tickets, as
/// resumption is off), so the kernel holds the ACK of that flight for its delayed-ACK time
/// (40 ms on Linux) hoping to piggyback it on data. A client without TCP_NODELAY (Python's
/// `ssl`, many embedded clients) cannot send its small first request before that ACK (Nagle),
/// so every new connection would stall about 40 ms. `TCP_QUICKACK` sends the pending ACK at
/// once; it changes nothing else (the socket returns to its usual ACK mode by itself).
fn ack_now(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_quickack(true) {
        tracing::debug!(error = %e, "TCP_QUICKACK after the handshake");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

/// A hyper server connection that can be asked to finish in-flight requests and close.
trait Drainable: Future<Output = Result<(), hyper::Error>> + Send {
    fn drain(self: Pin<&mut Self>);
}

impl<I, S, B> Drainable for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Self: Send,
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
    Self: Send,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serve one connection until it ends, applying the header-read and idle timeouts and
/// draining on shutdown.
///
/// `conn` comes boxed: on the heap at its own size, so that an HTTP/1 connection does not
/// reserve room for an HTTP/2 one (or the reverse) in its task, nor the task for either.
async fn drive(
    mut conn: Pin<Box<dyn Drainable>>,
    activity: &Activity,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Option<hyper::Error> {
    let mut draining = false;
    // After an idle connection was asked to close (GOAWAY / `Connection: close`), how long it
    // may take to say goodbye before it is dropped.
    let mut goodbye_until: Option<Instant> = None;
    // One timer for the connection's life. It is pulled in only when a deadline moves earlier
    // (a head starts, writes block), which happens inside `conn`'s own poll, so it is looked
    // at right after each poll instead of waking this task; a later deadline is found when
    // the timer fires. No timer entry, select or wake-up is made per request.
    let timer = tokio::time::sleep_until(activity.deadline(limits).into());
    tokio::pin!(timer);
    loop {
        let woke = {
            let mut shutting_down = std::pin::pin!(shutdown.wait_for(|s| *s));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Ended(res));
                }
                if goodbye_until.is_none() && activity.take_moved_earlier() {
                    let at = tokio::time::Instant::from_std(activity.deadline(limits));
                    if at < timer.deadline() {
                        timer.as_mut().reset(at);
                    }
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                if !draining && shutting_down.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Shutdown);
                }
                Poll::Pending
            })
            .await
        };
        match woke {
            Woke::Ended(Ok(())) => return None,
            Woke::Ended(Err(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                return Some(e);
            }
            Woke::Timer => {
                match drive_timer(
                    &mut conn,
                    activity,
                    limits,
                    &mut draining,
                    &mut goodbye_until,
                ) {
                    Some(at) => timer.as_mut().reset(at.into()),
                    None => return None,
                }
            }
            Woke::Shutdown => {
                conn.as_mut().drain();
                draining = true;
            }
        }
    }
}

/// What woke [`drive`].
enum Woke {
    Ended(Result<(), hyper::Error>),
    Timer,
    Shutdown,
}

/// The connection's timer fired: close the connection (`None`) or say when to look again.
fn drive_timer(
    conn: &mut Pin<Box<dyn Drainable>>,
    activity: &Activity,
    limits: Limits,
    draining: &mut bool,
    goodbye_until: &mut Option<Instant>,
) -> Option<Instant> {
    if let Some(until) = *goodbye_until {
        if Instant::now() < until {
            return Some(until);
        }
        if activity.inflight() == 0 {
            tracing::debug!("idle connection did not close after GOAWAY: dropping it");
            return None;
        }
        // A request slipped in before the GOAWAY: back to the normal timers.
        *goodbye_until = None;
        return Some(activity.deadline(limits));
    }
    match activity.expired(limits, Instant::now()) {
        Some(Expiry::HeaderRead) => {
            tracing::debug!("header_read_timeout: closing connection");
            None
        }
        Some(Expiry::Stalled) => {
            tracing::debug!("client stopped reading for idle_timeout: closing connection");
            None
        }
        Some(Expiry::Idle) => {
            if !*draining {
                conn.as_mut().drain();
                *draining = true;
            }
            let until = Instant::now() + IDLE_GOODBYE;
            *goodbye_until = Some(until);
            Some(until)
        }
        None => Some(activity.deadline(limits)),
    }
}
