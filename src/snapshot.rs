//! Everything that reloads, built once per generation and swapped atomically: server
//! certificate and key, trust sources (CA bundles, CRLs, pins), routes and upstreams.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::revocation::crl::Fetched;
use crate::revocation::Revocation;
use crate::tls::{ServerTls, TlsError, TrustVerifier};
use crate::upstream::Upstreams;

/// One immutable generation of reloadable state.
pub struct Snapshot {
    /// Increases by one with every successful (re)load; starts at 1.
    pub generation: u64,
    /// Shared with the snapshots rebuilt from it when fetched revocation data changes.
    pub config: Arc<Config>,
    pub tls: ServerTls,
    pub upstreams: Upstreams,
    /// For each route (in config order), whether any request reaches it: false when earlier
    /// routes shadow it completely (SPEC 9.7). Computed once per snapshot.
    pub reached: Vec<bool>,
    /// Sorted Unix times at which this snapshot's verdicts change without a reload: CRL
    /// nextUpdate (with `expired_crl: deny`), the notAfter of configured intermediates, and
    /// the day after a pinned `review_by` (with `on_overdue_review: deny`). Open connections are re-verified when one passes.
    deadlines: Vec<i64>,
    /// The CRLs fetched from URLs that this snapshot verifies with, per CA source.
    pub fetched: Vec<(Arc<str>, Arc<Fetched>)>,
}

impl Snapshot {
    /// Build a snapshot from a loaded config. Nothing here touches the request path.
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        previous: Option<&Snapshot>,
        revocation: &Arc<Revocation>,
    ) -> Result<Snapshot, TlsError> {
        let wait = config.listen.handshake_timeout;
        let verifier = Arc::new(
            TrustVerifier::with_revocation(&config.trust, revocation, wait)?
                .with_deny(config.deny.clone()),
        );
        let tls = ServerTls::new(&config.listen, verifier)?;
        let upstreams = Upstreams::new(&config.upstreams, previous.map(|p| &p.upstreams))?;
        let deadlines = deadlines(&config, revocation);
        let fetched = config
            .trust
            .iter()
            .filter_map(|s| match &s.kind {
                crate::config::TrustKind::Ca(ca) => Some((s, ca)),
                _ => None,
            })
            .flat_map(|(s, ca)| {
                revocation
                    .fetched_crls(&s.name, ca)
                    .into_iter()
                    .map(|f| (s.name.clone(), f))
            })
            .collect();
        let reached = crate::policy::reach::reached(&config.policy);
        Ok(Snapshot {
            generation,
            config,
            tls,
            upstreams,
            reached,
            deadlines,
            fetched,
        })
    }

    /// How many of this snapshot's verdict-changing deadlines have passed at `now` (Unix
    /// seconds). A connection verified when this was `n` must be verified again once it is not.
    pub fn passed_deadlines(&self, now: i64) -> usize {
        self.deadlines.partition_point(|d| *d <= now)
    }

    pub fn verifier(&self) -> &Arc<TrustVerifier> {
        self.tls.verifier()
    }

    /// The names of the routes `id` may reach under this snapshot (its blast radius): routes
    /// that some request reaches, with an allow entry that matches `id` or `enforce: false`.
    /// Shadow rules are not counted.
    pub fn routes_for(&self, id: &crate::identity::Identity) -> Vec<Arc<str>> {
        self.config
            .policy
            .routes
            .iter()
            .zip(&self.reached)
            .filter(|(r, reached)| {
                **reached && (!r.enforce || r.allow.iter().any(|e| e.matches(id)))
            })
            .map(|(r, _)| r.name.clone())
            .collect()
    }
}

/// The current snapshot, readable without locks from every connection and request.
pub struct Current {
    snapshot: ArcSwap<Snapshot>,
    /// Revocation data fetched at run time, which every snapshot is built with.
    pub revocation: Arc<Revocation>,
    /// The generation now serving, for tasks that follow reloads from any trigger (the file
    /// watcher refreshes its watches from it).
    generation: watch::Sender<u64>,
    /// Serializes reloads (SIGHUP and the file watcher) so an older build never replaces a
    /// newer one, and so the next generation number is simply the current one plus one.
    pub(crate) reload_lock: std::sync::Mutex<()>,
}

impl Current {
    pub fn new(first: Snapshot, revocation: Arc<Revocation>) -> Current {
        let (generation, _) = watch::channel(first.generation);
        Current {
            snapshot: ArcSwap::from_pointee(first),
            revocation,
            generation,
            reload_lock: std::sync::Mutex::new(()),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swap `snapshot` in, then announce its generation to subscribers.
    pub fn store(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.snapshot.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
    }

    /// Notified after every [`Current::store`], whatever triggered the reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

fn deadlines(config: &Config, revocation: &Revocation) -> Vec<i64> {
    use crate::config::{OverdueAction, TrustKind};
    let mut out = Vec::new();
    for source in &config.trust {
        match &source.kind {
            TrustKind::Ca(ca) => {
                if !ca.revocation.allow_expired_crl {
                    out.extend(ca.crls.iter().filter_map(|c| c.next_update));
                    out.extend(
                        revocation
                            .fetched_crls(&source.name, ca)
                            .iter()
                            .filter_map(|f| f.crl.next_update),
                    );
                }
                // A configured intermediate that expires ends the paths built through it.
                out.extend(ca.intermediates.iter().filter_map(|c| {
                    let (_, x509) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
                    Some(x509.validity().not_after.timestamp())
                }));
            }
            TrustKind::Pinned(p) if p.on_overdue_review == OverdueAction::Deny => {
                out.extend(p.entries.iter().filter_map(|e| e.overdue_from()));
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out
}
