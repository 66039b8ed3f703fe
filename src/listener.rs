//! Accepting TCP connections, for the TLS listener and the admin listener alike: an accept
//! error about one connection (it was reset or aborted before it was accepted) is skipped, and
//! any other (out of file descriptors, buffers or memory) backs off before the next attempt,
//! so that the accept loop neither dies nor spins while the condition lasts.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

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

/// Errors that concern only the connection being accepted; the listener itself is fine.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
