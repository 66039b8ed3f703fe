//! Upgraded (WebSocket) tunnels: bytes relayed both ways after a `101`, watched for revocation
//! and for idleness.
//!
//! A tunnel carries no further requests, so the per-request identity re-check cannot reach
//! it: a timer re-checks the connection's identity against the current snapshot instead
//! (SPEC 5.3). The same timer closes a tunnel that moved no byte in either direction for
//! `listen.idle_timeout` (like nginx's `proxy_read_timeout` on a WebSocket), so a tunnel
//! whose peers went silent, or whose client stopped reading, does not hold its connection
//! slot and upstream places forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::Hold;
use crate::conn::ConnContext;
use crate::tls::Rejection;

/// How often a tunnel re-checks its connection's identity and its idleness. The identity
/// check is a generation compare unless something changed.
const TUNNEL_CHECK: Duration = Duration::from_secs(1);

/// Relay an upgraded connection until either side closes, the client's identity no longer
/// verifies, or nothing moved for `idle_timeout`. The tunnel holds `ctx`, and with it the
/// connection's slot and open-count entry, and `hold`, the request's upstream places.
pub fn spawn(ctx: Arc<ConnContext>, client: OnUpgrade, upstream: OnUpgrade, hold: Hold) {
    tokio::spawn(async move {
        let _hold = hold;
        let conn_id = ctx.conn_id;
        let (c, u) = match (client.await, upstream.await) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    conn_id,
                    client_ok = c.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade failed"
                );
                return;
            }
        };
        let progress = Arc::new(Progress::new());
        let mut c = Watched::new(TokioIo::new(c), progress.clone());
        let mut u = Watched::new(TokioIo::new(u), progress.clone());
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                if let Err(e) = r {
                    tracing::debug!(conn_id, error = %e, "upgraded tunnel ended");
                }
            }
            end = watch(&ctx, &progress) => match end {
                End::Revoked(rejection) => tracing::info!(
                    conn_id,
                    outcome = %rejection.outcome,
                    detail = %rejection.detail,
                    "identity no longer valid under the current snapshot: closing tunnel"
                ),
                End::Idle(limit) => tracing::debug!(
                    conn_id,
                    idle_timeout = ?limit,
                    "tunnel moved no data for idle_timeout: closing it"
                ),
            }
        }
    });
}

/// Why the watch ended a tunnel.
enum End {
    /// The identity no longer verifies (revoked by a new CRL, pin removed, expired).
    Revoked(Rejection),
    /// No byte moved in either direction for this long (`listen.idle_timeout`).
    Idle(Duration),
}

/// Resolves once the tunnel must close: the connection's identity no longer verifies under
/// the current snapshot, or no byte moved for the current `idle_timeout`.
async fn watch(ctx: &ConnContext, progress: &Progress) -> End {
    let mut tick = tokio::time::interval(TUNNEL_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = ctx.state.current.load();
        if let Err(rejection) = ctx.current_identity(&snap) {
            return End::Revoked(rejection);
        }
        let limit = snap.config.listen.idle_timeout;
        if progress.idle_for() >= limit {
            return End::Idle(limit);
        }
    }
}

/// When a tunnel last moved data: milliseconds since `start`, shared by both directions.
struct Progress {
    start: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One side of a tunnel, noting every read that delivered bytes. Reads are enough: every
/// byte written was read from the other side first, and a side whose writes are blocked (a
/// client that stopped reading) stops the copy from reading, so it goes idle too.
struct Watched<T> {
    inner: T,
    progress: Arc<Progress>,
}

impl<T> Watched<T> {
    fn new(inner: T, progress: Arc<Progress>) -> Self {
        Self { inner, progress }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_that_deliver_bytes_are_progress() {
        let (a, mut b) = tokio::io::duplex(64);
        let progress = Arc::new(Progress::new());
        let mut watched = Watched::new(a, progress.clone());
        std::thread::sleep(Duration::from_millis(30));
        assert!(progress.idle_for() >= Duration::from_millis(30));
        b.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.unwrap();
        assert!(progress.idle_for() < Duration::from_millis(30));
        // Writing through the watched side is not progress on its own.
        std::thread::sleep(Duration::from_millis(30));
        watched.write_all(b"pong").await.unwrap();
        assert!(progress.idle_for() >= Duration::from_millis(30));
    }
}
