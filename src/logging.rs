//! Log output: the tracing subscriber (JSON or text, audit lines always on) and the batching
//! writer every line goes through.
//!
//! Lines are appended to a shared buffer under a mutex, and one background thread writes the
//! buffer to stdout in batches: at most [`FLUSH_EVERY`] after a line arrives, or as soon as
//! [`FLUSH_AT`] bytes are waiting. A request never waits on stdout, and under load a thousand
//! audit lines cost one `write(2)` instead of a thousand, with no thread wake-up per line.
//! Nothing is dropped: when stdout stalls and [`MAX_PENDING`] bytes are waiting, writers wait
//! for the buffer to drain (backpressure rather than lost audit lines).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::config::{LogFormat, Logging};

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that trigger a write at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes at which writers wait for the writer thread.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// Install the global subscriber writing to stdout. Keep the returned guard alive for as long
/// as the process logs: dropping it writes out what is buffered.
pub fn init(logging: &Logging) -> LogGuard {
    let (writer, guard) = BatchWriter::spawn(std::io::stdout(), FLUSH_EVERY);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let audit = crate::audit::TARGET;
    match logging.format {
        LogFormat::Json => {
            // Audit lines (SPEC 6) are a record, not diagnostics: they are written whatever
            // `logging.level` (or RUST_LOG) says, by their own fast JSON layer with the same
            // keys as the diagnostics. `logging.access_log: false` turns the request line off.
            //
            // Both filters give level hints and static interest: a filter closure would leave
            // the global maximum level at TRACE, and every trace span of hyper and h2 would
            // then be built and torn down on every request.
            let filter = match format!("{audit}=off").parse() {
                Ok(directive) => filter.add_directive(directive),
                Err(e) => {
                    eprintln!("certguard: cannot separate the audit log target: {e}");
                    filter
                }
            };
            let diagnostics = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(writer.clone())
                .with_ansi(ansi)
                .with_filter(filter);
            let audit_lines = crate::audit::JsonAuditLayer::new(writer).with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(audit, tracing::level_filters::LevelFilter::INFO),
            );
            let _ = tracing_subscriber::registry()
                .with(diagnostics)
                .with(audit_lines)
                .try_init();
        }
        LogFormat::Text => {
            let filter = match format!("{audit}=info").parse() {
                Ok(directive) => filter.add_directive(directive),
                Err(e) => {
                    eprintln!("certguard: cannot enable the audit log target: {e}");
                    filter
                }
            };
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(ansi)
                .try_init();
        }
    }
    guard
}

/// What the writers and the writer thread share.
struct Shared {
    pending: Mutex<Pending>,
    /// Signals the writer thread: the first line of a batch, a full batch, or closing.
    work: Condvar,
    /// Signals waiting writers: the buffer was taken.
    drained: Condvar,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

impl Shared {
    /// Nothing under this lock can panic but an allocation failure; keep logging anyway.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `MakeWriter` whose writes are appended to the batch (one `write_all` per log line, as
/// tracing's formatters and [`crate::audit::JsonAuditLayer`] do).
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// Start the writer thread over `out`; lines wait at most `flush_every`.
    pub fn spawn<W: Write + Send + 'static>(
        out: W,
        flush_every: Duration,
    ) -> (BatchWriter, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            drained: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("certguard-log".into())
                .spawn(move || write_batches(&shared, out, flush_every))
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Without a thread, write in the caller (see `append`).
                eprintln!("certguard: cannot start the log writer thread: {e}");
                shared.lock().closed = true;
                None
            }
        };
        (
            BatchWriter {
                shared: shared.clone(),
            },
            LogGuard { shared, thread },
        )
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        if pending.closed {
            // After shutdown (or with no writer thread), write directly.
            drop(pending);
            let _ = std::io::stdout().write_all(line);
            return;
        }
        while pending.buf.len() >= MAX_PENDING && !pending.closed {
            pending = self
                .shared
                .drained
                .wait(pending)
                .unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = pending.buf.is_empty();
        pending.buf.extend_from_slice(line);
        let full = pending.buf.len() >= FLUSH_AT;
        drop(pending);
        if was_empty || full {
            self.shared.work.notify_one();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> BatchWriter {
        self.clone()
    }
}

/// The writer thread: sleep until a line arrives, give the batch `flush_every` to fill (or
/// until it is full), take it, write it, repeat; on close, write what is left and stop.
fn write_batches<W: Write>(shared: &Shared, mut out: W, flush_every: Duration) {
    let mut spare = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.buf.is_empty() && !pending.closed {
            pending = shared.work.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        if !pending.closed {
            pending = shared
                .work
                .wait_timeout_while(pending, flush_every, |p| {
                    p.buf.len() < FLUSH_AT && !p.closed
                })
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let closed = pending.closed;
        std::mem::swap(&mut pending.buf, &mut spare);
        drop(pending);
        shared.drained.notify_all();
        // A failed write (stdout closed) has nowhere to be reported; the batch is dropped.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        spare.clear();
        if closed && shared.lock().buf.is_empty() {
            return;
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        self.shared.drained.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lets a warning that a peer can repeat at will (a connection refused at `max_connections`)
/// through at most once per period, and counts the occurrences it held back, so that a flood
/// cannot turn into a flood of log lines. Metrics still count every occurrence.
pub struct Throttle {
    start: Instant,
    period_ms: u64,
    /// Milliseconds since `start` before which nothing passes.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Self {
            start: Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence may be logged, `n` being how many were held back since
    /// the last one that passed; `None` when it is held back.
    pub fn pass(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.period_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Test support: a log output that can be read back.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    /// Collects everything written to it (and counts the writes), while a writer thread or a
    /// subscriber owns a clone.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Capture {
        /// Everything written so far.
        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
        }

        /// How many `write` calls delivered it.
        pub(crate) fn writes(&self) -> usize {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).1
        }
    }

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
            out.0.extend_from_slice(buf);
            out.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Capture;
    use super::*;

    #[test]
    fn a_throttle_passes_one_per_period_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert_eq!(throttle.pass(), Some(0));
        let held = (0..1000).filter(|_| throttle.pass().is_none()).count();
        assert_eq!(held, 1000);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(throttle.pass(), Some(1000));
        assert_eq!(throttle.pass(), None);
        // From many threads at once, still one per period.
        std::thread::sleep(Duration::from_millis(250));
        let passed: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..500).filter(|_| throttle.pass().is_some()).count()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(passed, 1);
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_per_writer() {
        let out = Capture::default();
        let (writer, guard) = BatchWriter::spawn(out.clone(), Duration::from_millis(20));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        w.write_all(format!("{t} {i} {}\n", "x".repeat(i % 300)).as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        drop(guard);
        let (bytes, writes) = (out.bytes(), out.writes());
        let text = String::from_utf8(bytes).expect("utf-8");
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let t: usize = parts.next().and_then(|p| p.parse().ok()).expect("thread");
            let i: usize = parts.next().and_then(|p| p.parse().ok()).expect("index");
            assert_eq!(parts.next().map(str::len), Some(i % 300), "{line}");
            assert_eq!(i, next[t], "lines of one writer stay in order");
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4], "nothing lost");
        assert!(
            writes < 20_000 / 10,
            "batched: {writes} writes for 20000 lines"
        );
    }

    #[test]
    fn a_lone_line_is_written_without_more_traffic() {
        let out = Capture::default();
        let (mut writer, _guard) = BatchWriter::spawn(out.clone(), Duration::from_millis(10));
        writer.write_all(b"only line\n").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.bytes().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never came out"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.bytes(), b"only line\n");
    }
}
