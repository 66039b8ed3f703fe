//! Audit log lines (SPEC 6), target `certguard::audit`. (Placeholder until the observability branch lands.)

use std::net::SocketAddr;

use crate::proxy::Reason;
use crate::tls::Outcome;

/// Fields of one request's audit line.
pub struct RequestAudit<'a> {
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub sni: Option<&'a str>,
    pub trust: Option<&'a str>,
    pub pinned: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub spiffe_id: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub decision: &'a str,
    pub reason: Reason,
    pub status: u16,
    pub duration_ms: f64,
}

pub fn request_line(r: &RequestAudit<'_>) {
    let _ = r;
}

pub fn handshake_failure_line(peer: SocketAddr, sni: Option<&str>, trust: Option<&str>, outcome: Outcome, detail: &str) {
    let _ = (peer, sni, trust, outcome, detail);
}
