//! Accepting TCP connections, for the TLS listener and the admin listener alike: an accept
//! error about one connection (it was reset or aborted before it was accepted) is skipped, and
//! any other (out of file descriptors, buffers or memory) backs off before the next attempt,
//! so that the accept loop neither dies nor spins while the condition lasts. And the set of
//! connections a listener may end to make room for a new one ([`Evictable`]).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pause after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener` (`what` names it in logs). Never fails; cancel-safe.
pub async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) if is_per_connection_error(&e) => {
                tracing::debug!(listener = what, error = %e, "accept failed for one connection");
            }
            Err(e) => {
                tracing::error!(listener = what, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// File descriptors a proxy with `max_connections` may need at its cap: every client
/// connection and its upstream connection, plus room for the admin listener's 64
/// connections, the listeners, config and CRL files, and the runtime.
pub fn fds_needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(256)
}

/// The soft and hard `RLIMIT_NOFILE` after raising the soft limit to the hard one, as Go's
/// runtime does (the usual soft default, 1024, would make `accept` fail with EMFILE long
/// before a `max_connections` of 10,000). `None` means unlimited.
pub fn raise_fd_limit() -> io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((now.current, now.maximum))
}

/// At start: raise the descriptor limit and say so when it is still below what
/// `max_connections` needs (connections past it fail at `accept`, which backs off, instead of
/// being counted at the cap).
pub fn check_fd_limit(max_connections: usize) {
    let needed = fds_needed(max_connections);
    match raise_fd_limit() {
        Ok((Some(soft), _)) if soft < needed => tracing::warn!(
            limit = soft,
            needed,
            max_connections,
            "the open-file limit (RLIMIT_NOFILE) is below what listen.max_connections needs: \
             raise it (ulimit -n, LimitNOFILE=, the container runtime's nofile) or lower \
             max_connections"
        ),
        Ok((soft, hard)) => tracing::debug!(?soft, ?hard, needed, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
}

/// Errors that concern only the connection being accepted; the listener itself is fine.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Connections that may be ended to make room for a new one, oldest first, each with the
/// means to end it.
///
/// A connection that costs its client nothing but a TCP connect (a TLS handshake that sends
/// nothing, an admin connection that sends no request or reads no response) holds a place
/// under its listener's cap: without this, anyone who can connect could keep every place
/// busy. When a new connection finds no free place, it ends the oldest such connection that
/// has run for at least a minimum age (a real client's handshake or scrape takes
/// milliseconds), and takes its place.
#[derive(Default)]
pub struct Evictable {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Member>>,
}

/// One connection in an [`Evictable`] set.
struct Member {
    since: Instant,
    end: tokio::sync::oneshot::Sender<()>,
    /// A request is being answered: not ended for a newer connection.
    busy: Arc<AtomicUsize>,
}

/// A connection's place in [`Evictable`]; it leaves when dropped.
pub struct EvictableEntry {
    set: Arc<Evictable>,
    id: u64,
    busy: Arc<AtomicUsize>,
}

/// While held, the connection answers a request and is not evicted.
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EvictableEntry {
    /// A handle that marks the connection busy, for a service that outlives this borrow.
    pub fn busy_handle(&self) -> BusyHandle {
        BusyHandle(self.busy.clone())
    }
}

/// Marks its connection busy on demand ([`BusyHandle::busy`]).
#[derive(Clone)]
pub struct BusyHandle(Arc<AtomicUsize>);

impl BusyHandle {
    pub fn busy(&self) -> Busy {
        self.0.fetch_add(1, Ordering::AcqRel);
        Busy(self.0.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Evictable {
    /// Enter the set; the receiver resolves if this connection is evicted.
    pub fn enter(self: &Arc<Self>) -> (EvictableEntry, tokio::sync::oneshot::Receiver<()>) {
        let (end, rx) = tokio::sync::oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        lock(&self.open).insert(
            id,
            Member {
                since: Instant::now(),
                end,
                busy: busy.clone(),
            },
        );
        let entry = EvictableEntry {
            set: self.clone(),
            id,
            busy,
        };
        (entry, rx)
    }

    /// End the oldest connection that is not busy, if it has run for at least `min_age`;
    /// whether one was ended.
    pub fn evict_oldest(&self, min_age: Duration) -> bool {
        let mut open = lock(&self.open);
        let oldest = open
            .iter()
            .find(|(_, m)| m.busy.load(Ordering::Acquire) == 0)
            .map(|(&id, m)| (id, m.since));
        let Some((id, since)) = oldest else {
            return false;
        };
        if since.elapsed() < min_age {
            return false;
        }
        open.remove(&id).is_some_and(|m| m.end.send(()).is_ok())
    }
}

/// How often a connection waiting for a place tries again to end an old one.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// A place for a connection that found none free under its listener's cap: end the oldest
/// connection of `open` that is at least `min_age` old and not busy (and try again every
/// 100 ms while every place is still taken, as connections age), and wait up to `wait` for a
/// place, keeping this connection's turn in the queue. At most as many connections wait as
/// `waiting` has permits; `None` when this one cannot wait or no place freed in time.
pub async fn wait_for_place(
    places: &Arc<Semaphore>,
    waiting: &Semaphore,
    open: &Evictable,
    min_age: Duration,
    wait: Duration,
) -> Option<OwnedSemaphorePermit> {
    let _queued = waiting.try_acquire().ok()?;
    let deadline = tokio::time::sleep(wait);
    let place = places.clone().acquire_owned();
    tokio::pin!(deadline, place);
    let mut retry = tokio::time::interval(EVICT_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            got = &mut place => return got.ok(),
            () = &mut deadline => return None,
            _ = retry.tick() => {
                if places.available_permits() == 0 && open.evict_oldest(min_age) {
                    tracing::debug!("a listener at its cap ended its oldest connection");
                }
            }
        }
    }
}

impl Drop for EvictableEntry {
    fn drop(&mut self) {
        lock(&self.set.open).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        // Lower the soft limit a little (harmless for the other tests), then raise it.
        if let Some(soft) = before.current.or(before.maximum) {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(soft - 1),
                    maximum: before.maximum,
                },
            )
            .unwrap();
        }
        let (soft, hard) = raise_fd_limit().unwrap();
        assert_eq!(soft, hard);
        assert_eq!(hard, before.maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, before.maximum);
        assert_eq!(fds_needed(10_000), 20_256);
    }

    #[test]
    fn only_errors_about_one_connection_are_skipped_without_backoff() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
        ] {
            assert!(is_per_connection_error(&io::Error::from(kind)), "{kind:?}");
        }
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener's condition, not one connection's.
        for errno in [24, 23, 105, 12] {
            assert!(!is_per_connection_error(&io::Error::from_raw_os_error(
                errno
            )));
        }
    }
}
