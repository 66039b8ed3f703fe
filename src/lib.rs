//! certguard: an mTLS-terminating reverse proxy with identity-based policy enforcement.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library. The data path is:
//! [`server`] accepts and handshakes (verifiers in [`tls`]), [`identity`] turns the verified leaf
//! into an [`identity::Identity`], and [`proxy`] normalizes each request, asks [`policy`] for a
//! permit and forwards permitted requests upstream. Everything that reloads lives in one
//! [`snapshot::Snapshot`].
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod audit;
pub mod certs;
pub mod config;
pub mod conn;
pub mod devpki;
pub mod echo;
pub mod headers;
pub mod identity;
pub mod inventory;
pub mod keyhash;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod report;
pub mod request;
pub mod revocation;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;

/// Settings shared by the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// Property tests with `cases` cases whose failing seeds are kept in
    /// `tests/proptest-regressions/` (mirroring `src/`), not in a directory of their own at the
    /// top of the repository.
    pub fn proptest_config(cases: u32) -> proptest::prelude::ProptestConfig {
        proptest::prelude::ProptestConfig {
            cases,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::SourceParallel(
                    "tests/proptest-regressions",
                ),
            )),
            ..proptest::prelude::ProptestConfig::default()
        }
    }
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::config::Config;
use crate::conn::ProxyState;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::revocation::Revocation;
use crate::snapshot::{Current, Snapshot};

/// Identities kept in the `/identities` inventory.
const INVENTORY_CAPACITY: usize = 10_000;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy: the TLS listener, the admin listener and the shared state.
pub struct Proxy {
    /// Where the TLS listener is bound (useful with port 0).
    pub listen_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    pub state: Arc<ProxyState>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    admin_stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    refresher: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Build the first snapshot, bind both listeners and start serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let listen = config.listen.address;
        let admin_address = config.admin.address;
        let revocation = Arc::new(Revocation::default());
        // A restart serves with the cached CRLs of its URLs before any fetch.
        refresh::load_cache(&config, &revocation);
        let snapshot = Snapshot::build(Arc::new(config), 1, None, &revocation)?;
        let metrics = Arc::new(Metrics::new());
        let observed = metrics.clone();
        revocation
            .ocsp
            .set_observer(move |trust, result| observed.ocsp_response(trust, result));
        reload::publish(&metrics, &snapshot);
        let current = Arc::new(Current::new(snapshot, revocation));
        let inventory = Arc::new(Inventory::new(INVENTORY_CAPACITY));
        let state = Arc::new(ProxyState::new(current, metrics.clone(), inventory.clone()));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let listener = bind("listen.address", listen).await?;
        let admin_listener = bind("admin.address", admin_address).await?;
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let listen_addr = local(&listener, listen);
        let admin_addr = local(&admin_listener, admin_address);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(true));
        let admin_state = Arc::new(AdminState {
            metrics,
            inventory,
            current: state.current.clone(),
            ready: ready.clone(),
        });
        // The admin listener outlives the drain so that /readyz can report 503 meanwhile.
        let (admin_stop, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(admin::serve(admin_listener, admin_state, async move {
            let _ = admin_stop_rx.await;
        }));
        let reload_settings = state.current.load().config.reload.clone();
        let watcher = if reload_settings.watch {
            match reload::spawn_watcher(
                state.current.clone(),
                state.metrics.clone(),
                reload_settings.debounce,
            ) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch configuration files; SIGHUP still reloads");
                    None
                }
            }
        } else {
            None
        };
        let refresher = refresh::spawn(state.current.clone(), state.metrics.clone());
        let server = tokio::spawn(server::serve(listener, state.clone(), shutdown_rx));
        tracing::info!(listen = %listen_addr, admin = %admin_addr, "certguard serving");
        Ok(Proxy {
            listen_addr,
            admin_addr,
            state,
            ready,
            shutdown,
            admin_stop,
            server,
            watcher,
            refresher,
            admin,
        })
    }

    /// Rebuild everything from the config file; on failure the current snapshot stays.
    pub fn reload(&self) -> Result<u64, reload::ReloadError> {
        self.state.reload()
    }

    /// The snapshot generation currently serving.
    pub fn generation(&self) -> u64 {
        self.state.current.load().generation
    }

    /// Stop accepting, turn `/readyz` to 503, ask every connection to finish (GOAWAY for
    /// HTTP/2), and wait up to `grace` for in-flight requests. Returns true if all finished.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        self.refresher.abort();
        if let Some(w) = &self.watcher {
            w.abort();
        }
        let _ = self.server.await;
        let drained = tokio::time::timeout(grace, self.state.drained())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                open = self.state.open_connections(),
                "shutdown_grace elapsed with connections still open"
            );
        }
        let _ = self.admin_stop.send(());
        let _ = self.admin.await;
        drained
    }
}
