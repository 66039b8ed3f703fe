//! Audit log lines (SPEC 6): one per request decision, one per failed handshake.
//!
//! Emitted through `tracing` with target [`TARGET`] as structured fields, so the JSON formatter
//! writes one object per line with the SPEC field names. Only names, DNs, fingerprints and
//! request metadata are logged, never certificates or keys. Fields that do not exist for a
//! request (no SNI, no verified identity, no route) are left out of the line rather than logged
//! as empty strings.

use std::net::SocketAddr;

use crate::proxy::Reason;
use crate::tls::Outcome;

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
    /// Response status sent to the client.
    pub status: u16,
    /// Time from request head to response head, milliseconds.
    pub duration_ms: f64,
}

/// Write one request audit line (call only when `logging.access_log` is on).
pub fn request_line(r: &RequestAudit<'_>) {
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
        method = r.method,
        host = r.host,
        path = r.path,
        route = r.route,
        upstream = r.upstream,
        decision = r.decision,
        reason = r.reason.as_str(),
        status = r.status,
        duration_ms = r.duration_ms,
        "request"
    );
}

/// Write one line for a failed handshake. `trust` is the source responsible for the outcome,
/// `None` meaning `none` as in the metrics; `detail` is a short reason for operators (an error
/// description, never certificate contents).
pub fn handshake_failure_line(
    peer: SocketAddr,
    sni: Option<&str>,
    trust: Option<&str>,
    outcome: Outcome,
    detail: &str,
) {
    tracing::info!(
        target: TARGET,
        peer = %peer,
        sni = sni,
        trust = trust.unwrap_or(crate::metrics::TRUST_NONE),
        outcome = outcome.as_str(),
        detail = detail,
        "handshake failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    /// A `MakeWriter` collecting everything into one buffer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
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

    /// Run `f` under a JSON subscriber and return the parsed lines.
    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
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
                status: 200,
                duration_ms: 1.5,
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
        assert_eq!(l["status"], 200);
        assert_eq!(l["duration_ms"], 1.5);
    }

    #[test]
    fn handshake_failure_line_names_outcome_and_trust() {
        let lines = capture(|| {
            handshake_failure_line(
                "10.0.0.7:4000".parse().expect("addr"),
                None,
                None,
                Outcome::UnknownIssuer,
                "no trust source admitted the certificate",
            );
            handshake_failure_line(
                "10.0.0.7:4001".parse().expect("addr"),
                Some("localhost"),
                Some("internal"),
                Outcome::Revoked,
                "certificate revoked",
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
