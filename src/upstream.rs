//! Upstream side: one pooled hyper-util client per upstream (`http://` = HTTP/1.1, `h2c://` =
//! HTTP/2 prior knowledge), with connect and response-header timeouts and error classification.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{self, UpstreamScheme};

/// Error type of the bodies certguard relays.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body relayed by certguard, either way (boxed).
pub type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// Request body type sent upstream: the client's body, streamed.
pub type UpstreamBody = ProxyBody;

/// `certguard_upstream_errors_total{kind}` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Why an upstream exchange failed, already classified for status code and metrics.
#[derive(Debug, thiserror::Error)]
#[error("upstream {kind:?}: {detail}")]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub detail: String,
}

impl UpstreamError {
    /// 504 when no response headers arrived in time, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self.kind {
            UpstreamErrorKind::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// A pooled client for one upstream.
pub struct UpstreamClient {
    pub config: config::Upstream,
    client: Client<HttpConnector, UpstreamBody>,
    /// `max_requests`: places for requests in flight to this upstream.
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl UpstreamClient {
    pub fn new(config: &config::Upstream) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_idle_per_host);
        if config.scheme == UpstreamScheme::H2c {
            builder.http2_only(true);
        }
        UpstreamClient {
            config: config.clone(),
            client: builder.build(connector),
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_requests)),
        }
    }

    /// The absolute URI for `path_and_query` on this upstream.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        Uri::builder()
            .scheme("http")
            .authority(self.config.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError {
                kind: UpstreamErrorKind::Protocol,
                detail: format!("cannot build upstream URI: {e}"),
            })
    }

    /// Send `req` (its URI already absolute) and wait for response headers until `deadline`
    /// (the upstream's `timeout` after the request started).
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => Err(UpstreamError {
                kind: UpstreamErrorKind::Timeout,
                detail: format!("no response headers within {:?}", self.config.timeout),
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Classify a client error by its predicates and source chain, never by its text.
fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let detail = error_chain(e);
    if e.is_connect() {
        return UpstreamError {
            kind: UpstreamErrorKind::Connect,
            detail,
        };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            let kind = if h.is_parse() || h.is_user() {
                UpstreamErrorKind::Protocol
            } else {
                UpstreamErrorKind::Reset
            };
            return UpstreamError { kind, detail };
        }
        if s.downcast_ref::<std::io::Error>().is_some() {
            return UpstreamError {
                kind: UpstreamErrorKind::Reset,
                detail,
            };
        }
        source = s.source();
    }
    UpstreamError {
        kind: UpstreamErrorKind::Reset,
        detail,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Every upstream of a snapshot, by name.
#[derive(Default)]
pub struct Upstreams {
    by_name: HashMap<Arc<str>, Arc<UpstreamClient>>,
}

impl Upstreams {
    /// Build clients for `upstreams`, reusing the pool of `previous` for any upstream whose
    /// settings did not change (so a reload does not drop warm upstream connections).
    pub fn new(upstreams: &[config::Upstream], previous: Option<&Upstreams>) -> Upstreams {
        let by_name = upstreams
            .iter()
            .map(|u| {
                let reused = previous
                    .and_then(|p| p.by_name.get(&u.name))
                    .filter(|c| same_settings(&c.config, u))
                    .cloned();
                let client = reused.unwrap_or_else(|| Arc::new(UpstreamClient::new(u)));
                (u.name.clone(), client)
            })
            .collect();
        Upstreams { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamClient>> {
        self.by_name.get(name)
    }
}

fn same_settings(a: &config::Upstream, b: &config::Upstream) -> bool {
    a.scheme == b.scheme
        && a.authority == b.authority
        && a.connect_timeout == b.connect_timeout
        && a.timeout == b.timeout
        && a.max_idle_per_host == b.max_idle_per_host
        && a.max_requests == b.max_requests
}
