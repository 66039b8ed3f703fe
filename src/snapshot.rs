//! Everything that reloads, built once per generation and swapped atomically: server
//! certificate and key, trust sources (CA bundles, CRLs, pins), routes and upstreams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::proxy::forward::Upstreams;
use crate::tls::{ServerTls, TlsError, TrustVerifier};

/// One immutable generation of reloadable state.
pub struct Snapshot {
    /// Increases by one with every successful (re)load; starts at 1.
    pub generation: u64,
    pub config: Config,
    pub tls: ServerTls,
    pub upstreams: Upstreams,
}

impl Snapshot {
    /// Build a snapshot from a loaded config. Nothing here touches the request path.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, TlsError> {
        let verifier = Arc::new(TrustVerifier::new(&config.trust)?);
        let tls = ServerTls::new(&config.listen, verifier)?;
        let upstreams = Upstreams::new(&config.upstreams, previous.map(|p| &p.upstreams));
        Ok(Snapshot {
            generation,
            config,
            tls,
            upstreams,
        })
    }

    pub fn verifier(&self) -> &Arc<TrustVerifier> {
        self.tls.verifier()
    }
}

/// The current snapshot, readable without locks from every connection and request.
pub struct Current {
    snapshot: ArcSwap<Snapshot>,
    next_generation: AtomicU64,
    /// Serializes reloads (SIGHUP and the file watcher) so an older build never replaces a
    /// newer one.
    pub(crate) reload_lock: std::sync::Mutex<()>,
}

impl Current {
    pub fn new(first: Snapshot) -> Current {
        let next = first.generation + 1;
        Current {
            snapshot: ArcSwap::from_pointee(first),
            next_generation: AtomicU64::new(next),
            reload_lock: std::sync::Mutex::new(()),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Reserve the generation number for the next snapshot being built.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}
