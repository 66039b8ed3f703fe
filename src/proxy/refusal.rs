//! Why certguard answered a request itself, and everything that follows from it: the status,
//! the `reason` label, the decision, the fixed body (SPEC 4 step 7: details only in logs), and
//! whether the connection closes. Every exit of the pipeline that is not a relayed response is
//! one [`Refusal`], and `explain` reports the same type.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::metrics::Reason;
use crate::request::framing::FramingError;
use crate::request::host::HostError;
use crate::request::normalize::BadTarget;
use crate::tls::{Outcome, Rejection};
use crate::upstream::{ProxyBody, UpstreamError, UpstreamErrorKind};

/// Why a request was not relayed, or its relay failed.
#[derive(Debug)]
pub enum Refusal {
    /// Ambiguous HTTP/1 framing (SPEC 4 step 2); the connection is closed.
    Framing(FramingError),
    /// A method or target that cannot be made unambiguous (SPEC 4 step 1).
    Target(BadTarget),
    /// A missing, invalid or conflicting Host / `:authority`, or one that differs from the SNI.
    Host(HostError),
    /// With `forward.xfcc: append`, an inbound XFCC that is not well formed: certguard's
    /// element appended to it could not be told apart from the client's.
    MalformedXfcc,
    /// The connection's identity no longer verifies under the current snapshot (SPEC 5.3), or a
    /// deny entry now matches it (SPEC 9.4, reason `deny_listed`).
    Revoked(Rejection),
    /// No route fits host, path and method.
    NoRoute,
    /// A route fits and no allow entry matches.
    NotAllowed {
        /// The route that fits.
        route: Arc<str>,
        /// What the route's `shadow_allow` says (true = allowed); `None` without one.
        shadow: Option<bool>,
    },
    /// The client's request body turned out malformed (invalid chunking); the connection is
    /// closed.
    BadBody(String),
    /// The upstream failed (connect, reset, protocol, no response headers in time).
    Upstream(UpstreamError),
    /// A concurrency limit stayed full until the upstream's timeout.
    Overflow(Limit),
}

/// The concurrency limit behind a [`Refusal::Overflow`] (the `limit` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `listen.max_inflight_per_connection`.
    Connection,
    /// `upstreams.<name>.max_requests`.
    Upstream,
    /// `listen.max_inflight_per_identity`.
    Identity,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connection => "connection",
            Limit::Upstream => "upstream",
            Limit::Identity => "identity",
        }
    }
}

impl Refusal {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Framing(_)
            | Refusal::Target(_)
            | Refusal::BadBody(_)
            | Refusal::MalformedXfcc => StatusCode::BAD_REQUEST,
            Refusal::Host(HostError::Bad(_)) => StatusCode::BAD_REQUEST,
            Refusal::Host(HostError::SniMismatch) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Revoked(_) | Refusal::NotAllowed { .. } => StatusCode::FORBIDDEN,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::Upstream(e) if e.kind == UpstreamErrorKind::Timeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Refusal::Upstream(_) => StatusCode::BAD_GATEWAY,
            Refusal::Overflow(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Framing(_)
            | Refusal::Target(_)
            | Refusal::BadBody(_)
            | Refusal::MalformedXfcc
            | Refusal::Host(HostError::Bad(_)) => Reason::BadRequest,
            Refusal::Host(HostError::SniMismatch) => Reason::SniMismatch,
            Refusal::Revoked(r) if r.outcome == Outcome::DenyListed => Reason::DenyListed,
            Refusal::Revoked(_) => Reason::Revoked,
            Refusal::NoRoute => Reason::NoRoute,
            Refusal::NotAllowed { .. } => Reason::NotAllowed,
            Refusal::Upstream(_) | Refusal::Overflow(_) => Reason::UpstreamError,
        }
    }

    /// Whether policy had permitted the request (the `decision` label is `allowed`): only
    /// failures of the relay itself come after the permit.
    pub fn permitted(&self) -> bool {
        matches!(self, Refusal::Upstream(_) | Refusal::Overflow(_))
    }

    /// Whether the request is counted and logged with its route. Requests refused before a
    /// route was chosen, and every 400 (SPEC 6), carry `route="none"`.
    pub fn has_route(&self) -> bool {
        matches!(
            self,
            Refusal::NotAllowed { .. } | Refusal::Upstream(_) | Refusal::Overflow(_)
        )
    }

    /// Whether the connection must close after the answer: its byte stream can no longer be
    /// trusted to frame the next request.
    pub fn closes(&self) -> bool {
        matches!(self, Refusal::Framing(_) | Refusal::BadBody(_))
    }

    /// The fixed body sent to the client.
    pub fn body(&self) -> &'static str {
        match self {
            Refusal::Framing(_)
            | Refusal::Target(_)
            | Refusal::BadBody(_)
            | Refusal::MalformedXfcc
            | Refusal::Host(HostError::Bad(_)) => "bad request\n",
            Refusal::Host(HostError::SniMismatch) => "misdirected request\n",
            Refusal::Revoked(_) | Refusal::NotAllowed { .. } => "forbidden\n",
            Refusal::NoRoute => "no route\n",
            Refusal::Upstream(e) if e.kind == UpstreamErrorKind::Timeout => "gateway timeout\n",
            Refusal::Upstream(_) => "bad gateway\n",
            Refusal::Overflow(_) => "service unavailable\n",
        }
    }

    /// What the log says about it (never sent to the client).
    pub fn detail(&self) -> String {
        match self {
            Refusal::Framing(e) => format!("ambiguous framing: {e}"),
            Refusal::Target(e) => format!("bad request: {e}"),
            Refusal::Host(e) => e.to_string(),
            Refusal::MalformedXfcc => {
                "malformed inbound x-forwarded-client-cert (xfcc: append)".to_owned()
            }
            Refusal::Revoked(r) => format!(
                "identity no longer valid under the current snapshot: {} ({})",
                r.outcome, r.detail
            ),
            Refusal::NoRoute => "no route fits host, path and method".to_owned(),
            Refusal::NotAllowed { route, .. } => format!("no allow entry of route {route} matches"),
            Refusal::BadBody(e) => format!("client request body failed: {e}"),
            Refusal::Upstream(e) => e.to_string(),
            Refusal::Overflow(limit) => format!(
                "no place under the {} concurrency limit before the upstream timeout",
                limit.as_str()
            ),
        }
    }

    /// The response certguard sends.
    pub fn response(&self) -> Response<ProxyBody> {
        let mut response = Response::new(
            Full::new(Bytes::from_static(self.body().as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.closes() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: UpstreamErrorKind) -> Refusal {
        Refusal::Upstream(UpstreamError {
            kind,
            detail: String::new(),
        })
    }

    #[test]
    fn every_refusal_maps_to_status_reason_decision_route_and_body() {
        let revoked = Refusal::Revoked(Rejection {
            trust: Some("internal".into()),
            outcome: Outcome::Revoked,
            detail: String::new(),
            deny_reason: None,
        });
        type Row = (Refusal, u16, &'static str, bool, bool, bool, &'static str);
        let rows: Vec<Row> = vec![
            (
                Refusal::Framing(FramingError::LengthAndChunked),
                400,
                "bad_request",
                false,
                false,
                true,
                "bad request\n",
            ),
            (
                Refusal::MalformedXfcc,
                400,
                "bad_request",
                false,
                false,
                false,
                "bad request\n",
            ),
            (
                Refusal::Target(BadTarget::BadMethod),
                400,
                "bad_request",
                false,
                false,
                false,
                "bad request\n",
            ),
            (
                Refusal::Host(HostError::Bad("missing Host")),
                400,
                "bad_request",
                false,
                false,
                false,
                "bad request\n",
            ),
            (
                Refusal::Host(HostError::SniMismatch),
                421,
                "sni_mismatch",
                false,
                false,
                false,
                "misdirected request\n",
            ),
            (revoked, 403, "revoked", false, false, false, "forbidden\n"),
            (
                Refusal::Revoked(Rejection {
                    trust: Some("internal".into()),
                    outcome: Outcome::DenyListed,
                    detail: String::new(),
                    deny_reason: Some("INC-1".into()),
                }),
                403,
                "deny_listed",
                false,
                false,
                false,
                "forbidden\n",
            ),
            (
                Refusal::NoRoute,
                404,
                "no_route",
                false,
                false,
                false,
                "no route\n",
            ),
            (
                Refusal::NotAllowed {
                    route: "r".into(),
                    shadow: None,
                },
                403,
                "not_allowed",
                false,
                true,
                false,
                "forbidden\n",
            ),
            (
                Refusal::BadBody("bad chunk".into()),
                400,
                "bad_request",
                false,
                false,
                true,
                "bad request\n",
            ),
            (
                upstream(UpstreamErrorKind::Connect),
                502,
                "upstream_error",
                true,
                true,
                false,
                "bad gateway\n",
            ),
            (
                upstream(UpstreamErrorKind::Timeout),
                504,
                "upstream_error",
                true,
                true,
                false,
                "gateway timeout\n",
            ),
            (
                Refusal::Overflow(Limit::Upstream),
                503,
                "upstream_error",
                true,
                true,
                false,
                "service unavailable\n",
            ),
        ];
        for (refusal, status, reason, permitted, has_route, closes, body) in rows {
            let what = format!("{refusal:?}");
            assert_eq!(refusal.status().as_u16(), status, "{what}");
            assert_eq!(refusal.reason().as_str(), reason, "{what}");
            assert_eq!(refusal.permitted(), permitted, "{what}");
            assert_eq!(refusal.has_route(), has_route, "{what}");
            assert_eq!(refusal.closes(), closes, "{what}");
            assert_eq!(refusal.body(), body, "{what}");
            let response = refusal.response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers().get(CONNECTION).is_some(),
                closes,
                "{what}"
            );
        }
    }
}
