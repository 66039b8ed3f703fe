//! Audit log lines (SPEC 6): one per request decision, one per failed handshake.
//!
//! Emitted through `tracing` with target [`TARGET`] as structured fields, so the JSON formatter
//! writes one object per line with the SPEC field names. Only names, DNs, fingerprints and
//! request metadata are logged, never certificates or keys. Fields that do not exist for a
//! request (no SNI, no verified identity, no route) are left out of the line rather than logged
//! as empty strings.

use std::net::SocketAddr;

use crate::access::AccessDiff;
use crate::metrics::Reason;
use crate::tls::Rejection;

/// The `tracing` target of every audit line; filter or route logs on it.
pub const TARGET: &str = "certguard::audit";

/// Everything one request audit line says. Borrowed, so building one costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestAudit<'a> {
    /// Per-process connection number, shared by all requests on one connection.
    pub conn_id: u64,
    /// TCP peer address of the client.
    pub peer: SocketAddr,
    /// TLS SNI the client sent, if any.
    pub sni: Option<&'a str>,
    /// Trust source that admitted the client.
    pub trust: Option<&'a str>,
    /// Pinned entry that matched, for pinned trust sources.
    pub pinned: Option<&'a str>,
    /// Subject DN (RFC 4514).
    pub subject: Option<&'a str>,
    /// The spiffe:// URI SAN.
    pub spiffe_id: Option<&'a str>,
    /// SHA-256 of the leaf DER, lowercase hex.
    pub fingerprint: Option<&'a str>,
    /// Request method.
    pub method: &'a str,
    /// Normalized host (lower case, no port), when the request had one.
    pub host: Option<&'a str>,
    /// Normalized path; the raw target when it could not be normalized (400).
    pub path: &'a str,
    /// Matched route name; `None` when answered before or without routing.
    pub route: Option<&'a str>,
    /// Upstream name, when the route names one.
    pub upstream: Option<&'a str>,
    /// `allowed` or `denied`, as in `certguard_requests_total{decision}`.
    pub decision: &'a str,
    /// As in `certguard_requests_total{reason}`.
    pub reason: Reason,
    /// The route's `shadow_allow` verdict, `allowed` or `denied`, when it has one.
    pub shadow: Option<&'a str>,
    /// Response status sent to the client.
    pub status: u16,
    /// Time from request head to response head, milliseconds.
    pub duration_ms: f64,
    /// For `deny_listed`: the matching deny entry's `reason`.
    pub deny_reason: Option<&'a str>,
}

/// The most bytes of a client-chosen value (method, host, path) an audit line carries.
pub const MAX_CLIENT_FIELD: usize = 1024;

/// `value` cut to [`MAX_CLIENT_FIELD`] bytes (at a character boundary) with `[...]` appended
/// when it was longer: a client could otherwise make every cheap request (a 404 whose 60 KB
/// path HTTP/2 re-sends in a few bytes of HPACK) write a 60 KB line.
pub fn clip(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_CLIENT_FIELD {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut end = MAX_CLIENT_FIELD;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}[...]", &value[..end]))
}

/// Write one request audit line (call only when `logging.access_log` is on).
pub fn request_line(r: &RequestAudit<'_>) {
    let method = clip(r.method);
    let host = r.host.map(clip);
    let path = clip(r.path);
    tracing::info!(
        target: TARGET,
        conn_id = r.conn_id,
        peer = %r.peer,
        sni = r.sni,
        trust = r.trust,
        pinned = r.pinned,
        subject = r.subject,
        spiffe_id = r.spiffe_id,
        fingerprint = r.fingerprint,
        method = &*method,
        host = host.as_deref(),
        path = &*path,
        route = r.route,
        upstream = r.upstream,
        decision = r.decision,
        reason = r.reason.as_str(),
        shadow = r.shadow,
        status = r.status,
        duration_ms = r.duration_ms,
        deny_reason = r.deny_reason,
        "request"
    );
}

/// Write one line for a failed handshake: the source responsible for the outcome (`none` as
/// in the metrics), the outcome, a short `detail` for operators (an error description, never
/// certificate contents) and, for `deny_listed`, the entry's `deny_reason`.
pub fn handshake_failure_line(peer: SocketAddr, sni: Option<&str>, rejection: &Rejection) {
    tracing::info!(
        target: TARGET,
        peer = %peer,
        sni = sni,
        trust = rejection.trust.as_deref().unwrap_or(crate::metrics::TRUST_NONE),
        outcome = rejection.outcome.as_str(),
        detail = rejection.detail.as_str(),
        deny_reason = rejection.deny_reason.as_deref(),
        "handshake failed"
    );
}

/// Write one `access changed` line per change of a reload's [`AccessDiff`] (SPEC 9.7): each
/// (selector, route) pair gained or lost with its methods, then each route and trust source
/// change. `generation` is the snapshot now serving.
pub fn access_changed(diff: &AccessDiff, generation: u64) {
    for (change, list) in [("gained", &diff.gained), ("lost", &diff.lost)] {
        for a in list {
            tracing::info!(
                target: TARGET,
                generation,
                change,
                selector = %a.selector,
                route = %a.route,
                methods = %a.methods_text,
                "access changed"
            );
        }
    }
    for c in &diff.changes {
        tracing::info!(
            target: TARGET,
            generation,
            change = c.change.as_str(),
            route = c.route.as_deref(),
            trust = c.trust.as_deref(),
            detail = %c.detail,
            "access changed"
        );
    }
}

/// A `tracing` layer that writes [`TARGET`] events as JSON lines, with the same keys as
/// `tracing_subscriber`'s JSON formatter with `flatten_event(true)` (`timestamp`, `level`,
/// the event's fields in order, `target`), at a fraction of its cost.
///
/// The audit line is written for every request, and the generic formatter (serde_json through
/// a `fmt::Write` adaptor, a fresh timestamp formatted per line) was the largest single cost
/// of a proxied request in the load benchmark. This one escapes into a reused per-thread
/// buffer and formats the date part of the timestamp once per second.
pub struct JsonAuditLayer<W> {
    make_writer: W,
}

impl<W> JsonAuditLayer<W> {
    /// Audit lines go to `make_writer` (the same writer as every other log line).
    pub fn new(make_writer: W) -> JsonAuditLayer<W> {
        JsonAuditLayer { make_writer }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for JsonAuditLayer<W>
where
    S: tracing::Subscriber,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            write_line(&mut line, event);
            // A failed write has nowhere better to be reported than the log itself.
            let _ = std::io::Write::write_all(&mut self.make_writer.make_writer(), &line);
        });
    }
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// (Unix second, `YYYY-MM-DDTHH:MM:SS` of it).
    static SECOND: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

fn write_line(out: &mut Vec<u8>, event: &tracing::Event<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, std::time::SystemTime::now());
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(event.metadata().level().as_str().as_bytes());
    out.push(b'"');
    event.record(&mut JsonFields { out });
    out.extend_from_slice(b",\"target\":");
    json_str(out, event.metadata().target());
    out.extend_from_slice(b"}\n");
}

/// RFC 3339 UTC with microseconds, as `tracing_subscriber` writes it.
fn timestamp(out: &mut Vec<u8>, now: std::time::SystemTime) {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            cache.1 = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            cache.0 = secs;
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
    let micros = since.subsec_micros();
    out.push(b'.');
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `"text"` as a JSON string.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escape_into(out, text);
    out.push(b'"');
}

/// Appends what is written to it JSON-escaped (for `Debug`/`Display` output).
struct Escaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// `text` JSON-escaped, without quotes.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Writes each field as `,"name":value`.
struct JsonFields<'a> {
    out: &'a mut Vec<u8>,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &tracing::field::Field) {
        self.out.push(b',');
        json_str(self.out, field.name());
        self.out.push(b':');
    }

    fn number(&mut self, field: &tracing::field::Field, value: impl std::fmt::Display) {
        self.key(field);
        let _ = std::io::Write::write_fmt(self.out, format_args!("{value}"));
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        json_str(self.out, value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.key(field);
            self.out.extend_from_slice(b"null");
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        // Formatted straight into the line, escaped piece by piece: no String per field.
        self.out.push(b'"');
        let _ = std::fmt::Write::write_fmt(&mut Escaped(self.out), format_args!("{value:?}"));
        self.out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::testing::Capture;
    use crate::tls::Outcome;

    use serde_json::Value;

    #[test]
    fn client_chosen_fields_are_clipped() {
        let short = "/orders/7";
        assert_eq!(clip(short), short);
        let exact = "a".repeat(MAX_CLIENT_FIELD);
        assert_eq!(clip(&exact), exact);
        let long = format!("/{}", "x".repeat(60_000));
        let clipped = clip(&long);
        assert_eq!(clipped.len(), MAX_CLIENT_FIELD + "[...]".len());
        assert!(clipped.ends_with("[...]") && long.starts_with(&clipped[..MAX_CLIENT_FIELD]));
        // Never inside a character: 'é' is two bytes and straddles the limit.
        let accented = format!("/{}", "é".repeat(MAX_CLIENT_FIELD));
        let clipped = clip(&accented);
        assert!(clipped.len() <= MAX_CLIENT_FIELD + "[...]".len());
        assert!(clipped
            .trim_end_matches("[...]")
            .chars()
            .all(|c| c == '/' || c == 'é'));
    }

    /// Run `f` under a JSON subscriber and return the parsed lines.
    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.bytes();
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    /// Run `f` under the fast audit layer alone and return the parsed lines.
    fn capture_fast(f: impl FnOnce()) -> Vec<Value> {
        use tracing_subscriber::layer::SubscriberExt as _;
        let out = Capture::default();
        let subscriber = tracing_subscriber::registry().with(JsonAuditLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.bytes();
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn sample() -> RequestAudit<'static> {
        RequestAudit {
            conn_id: 42,
            peer: "[2001:db8::1]:50000".parse().expect("addr"),
            sni: Some("localhost"),
            trust: Some("internal"),
            pinned: Some("ci-runner"),
            subject: Some("CN=a \"quoted\" \\ name,OU=pay\u{e9}ments"),
            spiffe_id: None,
            fingerprint: Some("ab12"),
            method: "GET",
            host: None,
            path: "/a\tb/\u{1}/\n",
            route: None,
            upstream: Some("orders"),
            decision: "denied",
            reason: Reason::NotAllowed,
            shadow: Some("allowed"),
            status: 403,
            duration_ms: 0.123_456_789,
            deny_reason: Some("INC-4711 \"key\" leaked"),
        }
    }

    fn rejection(trust: Option<&str>, outcome: Outcome, detail: &str) -> Rejection {
        Rejection {
            trust: trust.map(Into::into),
            outcome,
            detail: detail.to_owned(),
            deny_reason: None,
        }
    }

    #[test]
    fn fast_layer_writes_what_the_generic_formatter_writes() {
        let emit = || {
            request_line(&sample());
            handshake_failure_line(
                "10.0.0.7:4000".parse().expect("addr"),
                None,
                &rejection(Some("lab"), Outcome::PinMismatch, "no pin matches \"x\""),
            );
            handshake_failure_line(
                "10.0.0.7:4000".parse().expect("addr"),
                None,
                &Rejection {
                    deny_reason: Some("INC-1 leaked".into()),
                    ..rejection(Some("lab"), Outcome::DenyListed, "deny[0]")
                },
            );
            tracing::warn!(
                target: TARGET,
                negative = -3i64,
                flag = true,
                ratio = 1.5f64,
                text = "ctrl \u{7f} \u{1f} \r end",
                "a {} message",
                "formatted"
            );
        };
        let generic = capture(emit);
        let fast = capture_fast(emit);
        assert_eq!(generic.len(), 4);
        assert_eq!(fast.len(), 4);
        for (g, f) in generic.iter().zip(&fast) {
            let stamp = f["timestamp"].as_str().expect("timestamp");
            assert!(
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .is_ok()
                    && stamp.len() == g["timestamp"].as_str().expect("timestamp").len(),
                "{stamp} vs {}",
                g["timestamp"]
            );
            let (mut g, mut f) = (g.clone(), f.clone());
            for v in [&mut g, &mut f] {
                v.as_object_mut().expect("object").remove("timestamp");
            }
            assert_eq!(f, g, "the fast layer must write the same line");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u32| {
            let mut out = Vec::new();
            timestamp(
                &mut out,
                std::time::UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000 + 999),
            );
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
        // The per-second cache must not leak one second's date into the next.
        assert_eq!(at(1_700_000_001, 7), "2023-11-14T22:13:21.000007Z");
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_798_761_599, 999_999), "2026-12-31T23:59:59.999999Z");
    }

    #[test]
    fn request_line_has_the_spec_fields() {
        let lines = capture(|| {
            request_line(&RequestAudit {
                conn_id: 42,
                peer: "127.0.0.1:50000".parse().expect("addr"),
                sni: Some("localhost"),
                trust: Some("internal"),
                pinned: None,
                subject: Some("CN=alice,OU=payments"),
                spiffe_id: Some("spiffe://dev.local/ns/default/sa/alice"),
                fingerprint: Some("ab12"),
                method: "GET",
                host: Some("localhost"),
                path: "/orders/1",
                route: Some("orders-read"),
                upstream: Some("orders"),
                decision: "allowed",
                reason: Reason::Ok,
                shadow: Some("denied"),
                status: 200,
                duration_ms: 1.5,
                deny_reason: None,
            })
        });
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["target"], TARGET);
        assert_eq!(l["conn_id"], 42);
        assert_eq!(l["peer"], "127.0.0.1:50000");
        assert_eq!(l["sni"], "localhost");
        assert_eq!(l["trust"], "internal");
        assert!(l.get("pinned").is_none());
        assert_eq!(l["subject"], "CN=alice,OU=payments");
        assert_eq!(l["spiffe_id"], "spiffe://dev.local/ns/default/sa/alice");
        assert_eq!(l["fingerprint"], "ab12");
        assert_eq!(l["method"], "GET");
        assert_eq!(l["host"], "localhost");
        assert_eq!(l["path"], "/orders/1");
        assert_eq!(l["route"], "orders-read");
        assert_eq!(l["upstream"], "orders");
        assert_eq!(l["decision"], "allowed");
        assert_eq!(l["reason"], "ok");
        assert_eq!(l["shadow"], "denied");
        assert_eq!(l["status"], 200);
        assert_eq!(l["duration_ms"], 1.5);
    }

    #[test]
    fn handshake_failure_line_names_outcome_and_trust() {
        let lines = capture(|| {
            handshake_failure_line(
                "10.0.0.7:4000".parse().expect("addr"),
                None,
                &rejection(
                    None,
                    Outcome::UnknownIssuer,
                    "no trust source admitted the certificate",
                ),
            );
            handshake_failure_line(
                "10.0.0.7:4001".parse().expect("addr"),
                Some("localhost"),
                &rejection(Some("internal"), Outcome::Revoked, "certificate revoked"),
            );
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["target"], TARGET);
        assert_eq!(lines[0]["peer"], "10.0.0.7:4000");
        assert!(lines[0].get("sni").is_none());
        assert_eq!(lines[0]["trust"], "none");
        assert_eq!(lines[0]["outcome"], "unknown_issuer");
        assert_eq!(lines[1]["sni"], "localhost");
        assert_eq!(lines[1]["trust"], "internal");
        assert_eq!(lines[1]["outcome"], "revoked");
    }
}
