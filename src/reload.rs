//! Reload: rebuild the whole snapshot from the config file off the request path, swap it in
//! atomically, keep the last good one when anything fails, and publish the lifecycle gauges.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, FileDigests, TrustKind};
use crate::metrics::Metrics;
use crate::snapshot::{Current, Snapshot};

/// Why a reload was rejected (the previous snapshot keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Load `path`, build a new snapshot and swap it in. Returns the new generation.
pub fn reload(path: &Path, current: &Current, metrics: &Metrics) -> Result<u64, ReloadError> {
    reload_tracked(path, current, metrics).0
}

/// [`reload`], also returning every file the attempt read with the digest of what it read,
/// whether or not the attempt succeeded: the watcher retries when one of them changes.
pub fn reload_tracked(
    path: &Path,
    current: &Current,
    metrics: &Metrics,
) -> (Result<u64, ReloadError>, FileDigests) {
    let _serialized = current
        .reload_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (loaded, digests) = Config::load_tracked(path);
    let result = loaded
        .and_then(fits_runtime)
        .map_err(ReloadError::from)
        .and_then(|config| {
            let previous = current.load();
            // Reloads are serialized by `reload_lock`, so no other snapshot is stored meanwhile and
            // a failed build uses up no generation number.
            Ok(Snapshot::build(
                Arc::new(config),
                previous.generation + 1,
                Some(&previous),
                &current.revocation,
            )?)
        });
    let result = match result {
        Ok(snapshot) => {
            let generation = snapshot.generation;
            let previous = current.load();
            warn_restart_needed(&previous.config, &snapshot.config);
            publish(metrics, &snapshot);
            current.store(snapshot);
            metrics.reload(true);
            tracing::info!(generation, "configuration reloaded");
            // After the swap: the new snapshot serves while the diff is computed.
            let diff = crate::access::diff(&previous.config, &current.load().config);
            crate::audit::access_changed(&diff, generation);
            metrics.access_changes(diff.gained.len(), diff.lost.len());
            Ok(generation)
        }
        Err(e) => {
            metrics.reload(false);
            metrics.config_loaded(false);
            tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving");
            Err(e)
        }
    };
    (result, digests)
}

/// A reloaded config must suit the runtime that is running, not the one it asks for (which
/// takes effect only after a restart): on one thread, no setting that makes handshakes wait.
fn fits_runtime(config: Config) -> Result<Config, crate::config::ConfigErrors> {
    let single = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
    let waits = config.handshake_waits();
    if !single || waits.is_empty() {
        return Ok(config);
    }
    Err(crate::config::ConfigErrors(
        waits
            .into_iter()
            .map(|key| crate::config::ConfigError {
                file: config.source.clone(),
                key,
                message: format!(
                    "{} (this process runs single-threaded until it restarts)",
                    crate::config::SINGLE_THREAD_WAITS
                ),
            })
            .collect(),
    ))
}

fn warn_restart_needed(old: &Config, new: &Config) {
    if old.listen.address != new.listen.address {
        tracing::warn!(old = %old.listen.address, new = %new.listen.address, "listen.address changed: takes effect only after a restart");
    }
    if old.admin.address != new.admin.address {
        tracing::warn!(old = %old.admin.address, new = %new.admin.address, "admin.address changed: takes effect only after a restart");
    }
    if old.listen.max_connections != new.listen.max_connections {
        tracing::warn!("listen.max_connections changed: takes effect only after a restart");
    }
    // `runtime.shutdown_grace` is read at shutdown time, so it reloads like everything else.
    if old.runtime.worker_threads != new.runtime.worker_threads {
        tracing::warn!(old = ?old.runtime.worker_threads, new = ?new.runtime.worker_threads, "runtime.worker_threads changed: takes effect only after a restart");
    }
    if old.runtime.single_thread != new.runtime.single_thread {
        tracing::warn!(
            old = old.runtime.single_thread,
            new = new.runtime.single_thread,
            "runtime.single_thread changed: takes effect only after a restart"
        );
    }
    if old.reload.watch != new.reload.watch {
        tracing::warn!(
            old = old.reload.watch,
            new = new.reload.watch,
            "reload.watch changed: takes effect only after a restart"
        );
    }
    if old.reload.debounce != new.reload.debounce {
        tracing::warn!(old = ?old.reload.debounce, new = ?new.reload.debounce, "reload.debounce changed: takes effect only after a restart");
    }
    if old.logging.level != new.logging.level {
        tracing::warn!(old = %old.logging.level, new = %new.logging.level, "logging.level changed: takes effect only after a restart");
    }
    if old.logging.format != new.logging.format {
        tracing::warn!(old = ?old.logging.format, new = ?new.logging.format, "logging.format changed: takes effect only after a restart");
    }
}

/// Set the gauges that describe a snapshot about to serve, the first one or a reloaded one
/// (generation, when its configuration was loaded, CRL nextUpdate, server certificate, trust
/// anchor and pinned certificate notAfter, the pinned review dates behind the overdue gauge)
/// and log overdue pinned entries.
/// The overdue gauge itself is computed at scrape time; the log line only here.
pub fn publish(metrics: &Metrics, snapshot: &Snapshot) {
    let config = &snapshot.config;
    metrics.set_generation(snapshot.generation);
    metrics.config_loaded(true);
    metrics.init_trust_sources(config.trust.iter().map(|t| &*t.name));
    metrics.init_shadow_routes(
        config
            .policy
            .routes
            .iter()
            .filter(|r| r.shadow_allow.is_some())
            .map(|r| &*r.name),
    );
    let mut crls: Vec<(String, String, i64)> = Vec::new();
    let mut anchors: Vec<(String, i64)> = Vec::new();
    let mut pins: Vec<(String, String, i64)> = Vec::new();
    let mut reviews = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for source in &config.trust {
        match &source.kind {
            TrustKind::Ca(ca) => {
                metrics.init_crl_fetches(&source.name);
                if ca.ocsp.is_some() {
                    metrics.init_ocsp(&source.name);
                }
                // The gauge shows each file's earliest nextUpdate, the one an alert must fire on.
                crls.extend(
                    ca.next_update_per_file()
                        .into_iter()
                        .map(|(file, next)| (source.name.to_string(), file, next)),
                );
                let earliest = ca
                    .trusted_certificates()
                    .filter_map(|c| crate::certs::subject_and_not_after(c.as_ref()))
                    .map(|(_, not_after)| not_after)
                    .min();
                anchors.extend(earliest.map(|t| (source.name.to_string(), t)));
            }
            TrustKind::Pinned(pinned) => {
                for entry in pinned.entries.iter().filter(|e| e.overdue_at(now)) {
                    tracing::warn!(
                        trust = %source.name,
                        pinned = %entry.name,
                        owner = entry.owner.as_deref().unwrap_or("-"),
                        review_by = ?entry.review_by,
                        action = ?pinned.on_overdue_review,
                        "pinned certificate is past its review_by date"
                    );
                }
                pins.extend(pinned.entries.iter().filter_map(|e| match e.pin {
                    crate::config::Pin::Cert { not_after, .. } => {
                        Some((source.name.to_string(), e.name.to_string(), not_after))
                    }
                    _ => None,
                }));
                let overdue = pinned
                    .entries
                    .iter()
                    .filter_map(|e| e.overdue_from())
                    .collect();
                reviews.push((source.name.to_string(), overdue));
            }
        }
    }
    for (trust, fetched) in &snapshot.fetched {
        if let Some(next) = fetched.crl.next_update {
            crls.push((
                trust.to_string(),
                crate::revocation::crl::label(&fetched.url),
                next,
            ));
        }
    }
    metrics.set_crl_next_updates(&crls);
    metrics.set_trust_anchor_not_after(&anchors);
    metrics.set_pinned_not_after(&pins);
    metrics.set_pinned_reviews(reviews);
    if let Some(not_after) = config
        .listen
        .cert_chain
        .first()
        .and_then(|c| crate::identity::CertInfo::from_chain(std::slice::from_ref(c)).ok())
        .map(|c| c.not_after)
    {
        metrics.set_server_cert_not_after(not_after);
    }
}

/// The debounce waits for `debounce` of quiet, but never longer than this many debounce periods
/// in all: a directory that is never quiet must not postpone a reload forever.
const MAX_WAIT_FACTOR: u32 = 10;
/// While a directory cannot be watched (it does not exist yet, say), the files are compared
/// this often instead.
const UNWATCHED_POLL: Duration = Duration::from_secs(5);

/// Watch the files the last reload attempt read (the config file and every file it names) and
/// reload, debounced, when any of them changes.
///
/// The parent directories are watched rather than the files: editors and Kubernetes replace
/// files by rename or by swapping a `..data` symlink, which a watch on the old inode misses.
/// A change is confirmed by comparing each file with the SHA-256 of the bytes the last attempt
/// read, so a file written while a reload was reading it is reloaded again. After a failed
/// attempt the files *it* read are watched (e.g. a CRL named by the new config that does not
/// exist yet), and after a successful reload from any trigger (SIGHUP too) those of the
/// snapshot now serving.
pub fn spawn_watcher(
    current: Arc<Current>,
    metrics: Arc<Metrics>,
    debounce: Duration,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, events) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event| {
        if let Some(event) = FsEvent::from_notify(event) {
            let _ = tx.send(event);
        }
    })?;
    let mut generations = current.subscribe();
    generations.borrow_and_update();
    let mut task = WatchTask {
        watcher,
        dirs: HashSet::new(),
        failed: HashSet::new(),
        tracked: Tracked::default(),
        events,
        generations,
        own_generation: None,
        current,
        metrics,
        debounce,
    };
    task.track(task.current.load().config.digests.clone());
    Ok(tokio::spawn(task.run()))
}

/// What the watcher needs to know about one notify event.
#[derive(Debug, PartialEq, Eq)]
enum FsEvent {
    /// Something may have changed at these paths.
    Paths(Vec<PathBuf>),
    /// Events were lost or the backend failed: anything may have changed.
    Unknown,
}

impl FsEvent {
    /// `None` for events that cannot be a change: opening or reading a file (which the
    /// watcher's own comparisons and reloads do).
    fn from_notify(event: notify::Result<notify::Event>) -> Option<FsEvent> {
        let Ok(event) = event else {
            return Some(FsEvent::Unknown);
        };
        if event.need_rescan() || event.paths.is_empty() {
            return Some(FsEvent::Unknown);
        }
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return None,
            _ => {}
        }
        Some(FsEvent::Paths(event.paths))
    }
}

/// The files the watcher compares, and the event filter they imply.
#[derive(Default)]
struct Tracked {
    digests: FileDigests,
    /// `(absolute directory, file name)` of every tracked file.
    names: HashSet<(PathBuf, OsString)>,
    /// The directories of `names`.
    dirs: HashSet<PathBuf>,
}

impl Tracked {
    fn new(digests: FileDigests) -> Tracked {
        let names: HashSet<_> = digests
            .paths()
            .filter_map(|p| {
                let (dir, name) = split(p)?;
                Some((absolute(dir), name))
            })
            .collect();
        let dirs = names.iter().map(|(dir, _)| dir.clone()).collect();
        Tracked {
            digests,
            names,
            dirs,
        }
    }

    /// Does `event` restart the debounce? Only events about a tracked file's name, or about a
    /// `..`-prefixed entry (Kubernetes' `..data`, `..data_tmp` and `..<timestamp>`) in a tracked
    /// directory, do; whatever else happens in those directories is ignored.
    fn matches(&self, event: &FsEvent) -> bool {
        let concerns = |path: &PathBuf| {
            let Some((dir, name)) = split(path) else {
                return false;
            };
            let k8s = name.as_encoded_bytes().starts_with(b"..");
            (k8s && self.dirs.contains(dir)) || self.names.contains(&(dir.to_path_buf(), name))
        };
        match event {
            FsEvent::Unknown => true,
            FsEvent::Paths(paths) => paths.iter().any(concerns),
        }
    }
}

/// A file's directory (`.` for a bare name) and name.
fn split(path: &Path) -> Option<(&Path, OsString)> {
    let name = path.file_name()?.to_os_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some((dir, name))
}

/// notify reports events under the absolute form of a relative watch path.
fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// Does any file's content differ from what was read (or its readability)? Blocking.
fn differs_from_disk(digests: &FileDigests) -> bool {
    digests.0.iter().any(|(path, read)| {
        let now = crate::config::read_file(path)
            .ok()
            .map(|b| crate::certs::sha256(&b));
        now != *read
    })
}

/// When the debounce ends: `debounce` after the last relevant event, but no later than
/// `MAX_WAIT_FACTOR` debounce periods after the first. `None`: never (absurd durations).
fn settle_deadline(first: Instant, last: Instant, debounce: Duration) -> Option<Instant> {
    let quiet = last.checked_add(debounce);
    let cap = first.checked_add(debounce.saturating_mul(MAX_WAIT_FACTOR));
    match (quiet, cap) {
        (Some(quiet), Some(cap)) => Some(quiet.min(cap)),
        (quiet, cap) => quiet.or(cap),
    }
}

struct WatchTask {
    watcher: notify::RecommendedWatcher,
    /// Directories watched now.
    dirs: HashSet<PathBuf>,
    /// Tracked directories that could not be watched (already warned about).
    failed: HashSet<PathBuf>,
    tracked: Tracked,
    events: mpsc::UnboundedReceiver<FsEvent>,
    generations: watch::Receiver<u64>,
    /// The generation of this watcher's last successful reload, whose files it tracks already.
    own_generation: Option<u64>,
    current: Arc<Current>,
    metrics: Arc<Metrics>,
    debounce: Duration,
}

impl WatchTask {
    async fn run(mut self) {
        // The files may have changed between being read and being watched: compare once.
        let mut pending = true;
        // Not restarted by unrelated events, so they cannot postpone the poll.
        let mut poll_at = Instant::now() + UNWATCHED_POLL;
        loop {
            if !pending {
                let poll = !self.failed.is_empty();
                pending = tokio::select! {
                    event = self.events.recv() => match event {
                        Some(event) => self.tracked.matches(&event),
                        None => return,
                    },
                    changed = self.generations.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        self.follow_reload()
                    }
                    () = tokio::time::sleep_until(poll_at), if poll => {
                        poll_at = Instant::now() + UNWATCHED_POLL;
                        self.track(self.tracked.digests.clone());
                        true
                    }
                };
                continue;
            }
            if !self.settle().await {
                return;
            }
            pending = false;
            if self.generations.has_changed().unwrap_or(false) {
                self.follow_reload();
            }
            let digests = self.tracked.digests.clone();
            match tokio::task::spawn_blocking(move || differs_from_disk(&digests)).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "comparing configuration files failed");
                    continue;
                }
            }
            tracing::info!("configuration files changed: reloading");
            let path = self.current.load().config.source.clone();
            let (c, m) = (self.current.clone(), self.metrics.clone());
            match tokio::task::spawn_blocking(move || reload_tracked(&path, &c, &m)).await {
                Ok((result, digests)) => {
                    if let Ok(generation) = result {
                        self.own_generation = Some(generation);
                    }
                    self.track(digests);
                    // What was read may have changed before the new watches were in place.
                    pending = true;
                }
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    }

    /// Wait until the tracked files have been quiet for `debounce` (capped). False when the
    /// event source is gone.
    async fn settle(&mut self) -> bool {
        let first = Instant::now();
        let mut last = first;
        loop {
            let event = match settle_deadline(first, last, self.debounce) {
                Some(deadline) => match tokio::time::timeout_at(deadline, self.events.recv()).await
                {
                    Ok(event) => event,
                    Err(_) => return true,
                },
                None => self.events.recv().await,
            };
            match event {
                Some(event) if self.tracked.matches(&event) => last = Instant::now(),
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// A snapshot was stored: track its files, unless it is this watcher's own reload (whose
    /// files it tracks already). True when the files should be compared with the disk.
    fn follow_reload(&mut self) -> bool {
        let generation = *self.generations.borrow_and_update();
        if self.own_generation == Some(generation) {
            return false;
        }
        let digests = self.current.load().config.digests.clone();
        self.track(digests);
        true
    }

    /// Compare `digests` from now on, and watch exactly their directories.
    fn track(&mut self, digests: FileDigests) {
        self.tracked = Tracked::new(digests);
        let want = &self.tracked.dirs;
        for dir in self.dirs.iter().filter(|d| !want.contains(*d)) {
            // Fails only if the directory is gone, which ends its watch anyway.
            let _ = self.watcher.unwatch(dir);
        }
        self.dirs.retain(|d| want.contains(d));
        self.failed.retain(|d| want.contains(d));
        for dir in want {
            if self.dirs.contains(dir) {
                continue;
            }
            match self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir.clone());
                    if self.failed.remove(dir) {
                        tracing::info!(dir = %dir.display(), "watching directory");
                    }
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; comparing its files every 5s instead");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debounce_restarts_on_events_but_is_capped() {
        let debounce = Duration::from_millis(200);
        let first = Instant::now();
        // Quiet since the first event: one debounce period.
        assert_eq!(
            settle_deadline(first, first, debounce),
            Some(first + debounce)
        );
        // A later event restarts the quiet period...
        let later = first + Duration::from_millis(500);
        assert_eq!(
            settle_deadline(first, later, debounce),
            Some(later + debounce)
        );
        // ...but never past ten periods after the first event.
        let busy = first + Duration::from_millis(1950);
        assert_eq!(
            settle_deadline(first, busy, debounce),
            Some(first + debounce * MAX_WAIT_FACTOR)
        );
        // Absurd durations do not panic.
        assert_eq!(settle_deadline(first, first, Duration::MAX), None);
    }

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<notify::Event> {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn reading_files_is_not_an_event() {
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(FsEvent::from_notify(event(open, &["/a/x"])), None);
        assert_eq!(FsEvent::from_notify(event(read, &["/a/x"])), None);
        assert_eq!(
            FsEvent::from_notify(event(written, &["/a/x"])),
            Some(FsEvent::Paths(vec!["/a/x".into()]))
        );
        let rescan = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(FsEvent::from_notify(Ok(rescan)), Some(FsEvent::Unknown));
        assert_eq!(
            FsEvent::from_notify(Err(notify::Error::generic("x"))),
            Some(FsEvent::Unknown)
        );
    }

    #[test]
    fn only_tracked_names_and_kubernetes_entries_in_tracked_dirs_matter() {
        let tracked = Tracked::new(FileDigests(vec![
            ("/etc/cg/certguard.yaml".into(), None),
            ("/etc/cg/tls/tls.crt".into(), Some([0; 32])),
        ]));
        let paths = |p: &[&str]| FsEvent::Paths(p.iter().map(PathBuf::from).collect());
        let relevant = [
            paths(&["/etc/cg/certguard.yaml"]),
            paths(&["/etc/cg/tls/tls.crt"]),
            // An atomic rename names the temporary file and the target.
            paths(&["/etc/cg/.certguard.yaml.tmp", "/etc/cg/certguard.yaml"]),
            // Kubernetes' symlink swap.
            paths(&["/etc/cg/tls/..data_tmp"]),
            paths(&["/etc/cg/tls/..data"]),
            paths(&["/etc/cg/tls/..2024_01_01_00_00_00.123"]),
            FsEvent::Unknown,
        ];
        for e in &relevant {
            assert!(tracked.matches(e), "{e:?}");
        }
        let irrelevant = [
            paths(&["/etc/cg/other.log"]),
            paths(&["/etc/cg/tls/tls.key"]),
            paths(&["/etc/cg/.certguard.yaml.swp"]),
            // Same name, untracked directory.
            paths(&["/var/tmp/certguard.yaml"]),
            paths(&["/var/tmp/..data"]),
        ];
        for e in &irrelevant {
            assert!(!tracked.matches(e), "{e:?}");
        }
    }

    #[test]
    fn relative_paths_match_the_absolute_event_paths() {
        let tracked = Tracked::new(FileDigests(vec![("certguard.yaml".into(), None)]));
        let cwd = std::env::current_dir().unwrap();
        assert!(tracked.matches(&FsEvent::Paths(vec![cwd.join("certguard.yaml")])));
        // notify joins the watched path as given: `/cwd/.` for `.`.
        assert!(tracked.matches(&FsEvent::Paths(vec![cwd.join(".").join("certguard.yaml")])));
    }

    #[test]
    fn differs_from_disk_compares_contents_and_readability() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.crl");
        let missing = dir.path().join("b.crl");
        std::fs::write(&file, "one").unwrap();
        let sha = crate::certs::sha256;
        let digests = FileDigests(vec![
            (file.clone(), Some(sha(b"one"))),
            (missing.clone(), None),
        ]);
        assert!(!differs_from_disk(&digests));
        std::fs::write(&file, "two").unwrap();
        assert!(differs_from_disk(&digests));
        std::fs::write(&file, "one").unwrap();
        std::fs::write(&missing, "").unwrap();
        assert!(differs_from_disk(&digests), "a file that appeared");
    }
}
