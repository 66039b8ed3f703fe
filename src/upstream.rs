//! Upstream side: one connection pool per upstream (`http://` = HTTP/1.1 in certguard's own
//! pool, see [`pool`]; `h2c://` = HTTP/2 prior knowledge and `https://` = HTTP/1.1 over TLS
//! with the upstream's certificate verified, both in hyper-util's pooled client), with connect,
//! handshake and response-header timeouts and error classification.

mod pool;

pub use pool::PooledBody;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{self, UpstreamRoots, UpstreamScheme, UpstreamTls};
use crate::tls::TlsError;

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
    /// The TLS handshake with an `https://` upstream failed or did not finish within
    /// `connect_timeout`, or the upstream refused it with an alert right after (a TLS 1.3
    /// server rejects a client certificate only after the client's side is done).
    Tls,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Tls => "tls",
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
    transport: Transport,
    /// `max_requests`: places for requests in flight to this upstream.
    pub slots: Arc<tokio::sync::Semaphore>,
}

enum Transport {
    /// `http://`: certguard's own pool of HTTP/1.1 connections.
    Plain(Arc<pool::Pool>),
    /// `https://` and `h2c://`: hyper-util's pooled client.
    Client(Box<Client<Connector, UpstreamBody>>),
}

impl UpstreamClient {
    /// Build the client; fails only for `https://` when its TLS client cannot be built (no
    /// system root certificates, or a client certificate rustls refuses).
    pub fn new(config: &config::Upstream) -> Result<UpstreamClient, TlsError> {
        // An authority always makes a valid Host value and URI; hyper-util's client is the
        // fallback should one ever not.
        let plain = (config.scheme == UpstreamScheme::Http).then(|| {
            pool::Pool::new(
                &config.authority,
                config.connect_timeout,
                config.max_idle_per_host,
            )
        });
        let transport = match plain {
            Some(Ok(pool)) => Transport::Plain(Arc::new(pool)),
            _ => Transport::Client(Box::new(Self::client(config)?)),
        };
        Ok(UpstreamClient {
            config: config.clone(),
            transport,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_requests)),
        })
    }

    fn client(config: &config::Upstream) -> Result<Client<Connector, UpstreamBody>, TlsError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(config.connect_timeout));
        tcp.set_nodelay(true);
        // The scheme is certguard's own choice (see `uri`); TLS is the connector's business.
        tcp.enforce_http(false);
        let tls = match &config.tls {
            Some(settings) => {
                let client_config =
                    client_config(settings).map_err(|reason| TlsError::Upstream {
                        name: config.name.to_string(),
                        reason,
                    })?;
                Some(TlsConnect {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(client_config)),
                    server_name: settings.server_name.clone(),
                    timeout: config.connect_timeout,
                })
            }
            None => None,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_idle_per_host);
        if config.scheme == UpstreamScheme::H2c {
            builder.http2_only(true);
        }
        Ok(builder.build(Connector { tcp, tls }))
    }

    /// The URI for `path_and_query` on this upstream: origin-form for certguard's own pool
    /// (what it sends), absolute for hyper-util's client (which picks its pool by it).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let builder = match (&self.transport, self.config.scheme) {
            (Transport::Plain(_), _) => Uri::builder(),
            (Transport::Client(_), UpstreamScheme::Https) => Uri::builder()
                .scheme("https")
                .authority(self.config.authority.clone()),
            (Transport::Client(_), UpstreamScheme::Http | UpstreamScheme::H2c) => Uri::builder()
                .scheme("http")
                .authority(self.config.authority.clone()),
        };
        builder
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError {
                kind: UpstreamErrorKind::Protocol,
                detail: format!("cannot build upstream URI: {e}"),
            })
    }

    /// Send `req` (its URI from [`UpstreamClient::uri`]) and wait for response headers until `deadline`
    /// (the upstream's `timeout` after the request started).
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let result = match &self.transport {
            Transport::Plain(pool) => tokio::time::timeout_at(deadline, pool.send(req))
                .await
                .map(|r| r.map_err(|e| classify_pooled(&e))),
            Transport::Client(client) => tokio::time::timeout_at(deadline, client.request(req))
                .await
                .map(|r| {
                    r.map(|resp| resp.map(PooledBody::unpooled))
                        .map_err(|e| classify(&e))
                }),
        };
        result.unwrap_or_else(|_| {
            Err(UpstreamError {
                kind: UpstreamErrorKind::Timeout,
                detail: format!("no response headers within {:?}", self.config.timeout),
            })
        })
    }
}

/// The rustls client config of an `https://` upstream: its roots, its client certificate, and
/// ALPN `http/1.1` (the only protocol certguard speaks over TLS to an upstream).
pub fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, String> {
    use hyper_rustls::ConfigBuilderExt as _;
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.roots {
        UpstreamRoots::System => builder.with_native_roots().map_err(|e| {
            format!("no usable system root certificates ({e}); name a CA bundle in `ca`")
        })?,
        UpstreamRoots::Bundle { path, certs } => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| format!("client certificate {}: {e}", c.cert_path.display()))?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Connects to an upstream: TCP (under `connect_timeout`), then for `https://` the TLS
/// handshake with the URL's host as SNI (under `connect_timeout` again).
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Option<TlsConnect>,
}

#[derive(Clone)]
struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    timeout: Duration,
}

/// The TLS handshake with an upstream did not succeed (TCP had connected).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("TLS handshake with the upstream failed")]
    Failed(#[source] std::io::Error),
    #[error("TLS handshake with the upstream not complete within {0:?}")]
    Timeout(Duration),
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<MaybeHttpsStream<TokioIo<TcpStream>>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let tcp = self.tcp.call(dst);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?;
            let Some(tls) = tls else {
                return Ok(MaybeHttpsStream::Http(tcp));
            };
            let handshake = tls.connector.connect(tls.server_name, TokioIo::new(tcp));
            match tokio::time::timeout(tls.timeout, handshake).await {
                Ok(Ok(stream)) => Ok(MaybeHttpsStream::Https(TokioIo::new(stream))),
                Ok(Err(e)) => Err(HandshakeError::Failed(e).into()),
                Err(_) => Err(HandshakeError::Timeout(tls.timeout).into()),
            }
        })
    }
}

/// Classify a client error by its types, predicates and source chain, never by its text.
/// The kind of a hyper error of an upstream exchange, before or after the response head: a
/// malformed message (bad chunking) is `protocol`, one that did not arrive in time `timeout`,
/// anything else (a reset, a connection closed before the message's end) `reset`.
pub fn body_error_kind(e: &hyper::Error) -> UpstreamErrorKind {
    if e.is_parse() || e.is_user() {
        UpstreamErrorKind::Protocol
    } else if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else {
        UpstreamErrorKind::Reset
    }
}

/// [`classify`] for certguard's own pool.
fn classify_pooled(e: &pool::PoolError) -> UpstreamError {
    let detail = error_chain(e);
    let kind = match e {
        pool::PoolError::Connect(_) => UpstreamErrorKind::Connect,
        pool::PoolError::Exchange(h) => body_error_kind(h),
    };
    UpstreamError { kind, detail }
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let detail = error_chain(e);
    // A TLS failure first: it is also a connect error (a failed handshake) or an I/O error
    // under a hyper error (an alert on the first read after a TLS 1.3 handshake).
    if sources(e).any(|s| s.is::<HandshakeError>() || s.is::<rustls::Error>()) {
        return UpstreamError {
            kind: UpstreamErrorKind::Tls,
            detail,
        };
    }
    if e.is_connect() {
        return UpstreamError {
            kind: UpstreamErrorKind::Connect,
            detail,
        };
    }
    for s in sources(e) {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            let kind = body_error_kind(h);
            return UpstreamError { kind, detail };
        }
        if s.is::<std::io::Error>() {
            return UpstreamError {
                kind: UpstreamErrorKind::Reset,
                detail,
            };
        }
    }
    UpstreamError {
        kind: UpstreamErrorKind::Reset,
        detail,
    }
}

/// `e` and its sources. An `io::Error` that wraps another error is followed into that error:
/// its own `source()` skips the wrapped error (where rustls puts its `rustls::Error`).
fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |s| {
        match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        }
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    for s in sources(e) {
        let text = s.to_string();
        // An io::Error wrapping an error displays as that error: say it once.
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Every upstream of a snapshot, by name.
#[derive(Default)]
pub struct Upstreams {
    by_name: crate::keyhash::ConfigMap<Arc<str>, Arc<UpstreamClient>>,
}

impl Upstreams {
    /// Build clients for `upstreams`, reusing the pool of `previous` for any upstream whose
    /// settings did not change (so a reload does not drop warm upstream connections). Fails
    /// when an `https://` upstream's TLS client cannot be built.
    pub fn new(
        upstreams: &[config::Upstream],
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, TlsError> {
        let mut by_name = crate::keyhash::ConfigMap::default();
        for u in upstreams {
            let reused = previous
                .and_then(|p| p.by_name.get(&u.name))
                .filter(|c| same_settings(&c.config, u))
                .cloned();
            let client = match reused {
                Some(c) => c,
                None => Arc::new(UpstreamClient::new(u)?),
            };
            by_name.insert(u.name.clone(), client);
        }
        Ok(Upstreams { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamClient>> {
        self.by_name.get(name)
    }
}

/// Can a client built for `a` serve `b`? For `https://` the loaded CA bundle, client
/// certificate and key are compared, not the files' names: a rotated file gets a new client
/// (whose fresh TLS config also starts without the old sessions).
fn same_settings(a: &config::Upstream, b: &config::Upstream) -> bool {
    a.scheme == b.scheme
        && a.authority == b.authority
        && a.connect_timeout == b.connect_timeout
        && a.timeout == b.timeout
        && a.max_idle_per_host == b.max_idle_per_host
        && a.max_requests == b.max_requests
        && a.tls == b.tls
}

#[cfg(test)]
mod tests {
    use super::*;

    /// certguard's own pool gets the origin-form target it sends (no absolute URI built and
    /// cut per request); hyper-util's client gets the absolute URI it picks its pool by.
    #[test]
    fn request_targets_by_transport() {
        let dir = tempfile::tempdir().unwrap();
        crate::devpki::write(&dir.path().join("pki"), false).unwrap();
        let yaml = "listen: { cert: pki/server.crt, key: pki/server.key }
trust:
  internal: { ca: pki/ca.crt }
routes:
  - { name: a, path_prefix: /, upstream: plain, allow: [{ cn: alice }] }
upstreams:
  plain: { url: 'http://127.0.0.1:9' }
  grpc: { url: 'h2c://127.0.0.1:9' }
";
        let config = config::Config::from_yaml(yaml, &dir.path().join("c.yaml")).unwrap();
        let upstreams = Upstreams::new(&config.upstreams, None).unwrap();
        let uri = |name: &str| upstreams.get(name).unwrap().uri("/a/b?c=d").unwrap();
        assert_eq!(uri("plain"), "/a/b?c=d");
        assert_eq!(uri("grpc"), "http://127.0.0.1:9/a/b?c=d");
    }

    #[test]
    fn sources_follow_io_errors_into_the_error_they_wrap() {
        // As tokio-rustls reports an alert, and hyper-rustls-style wrappers box it again.
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let outer = std::io::Error::other(inner);
        // std's own `source()` skips the wrapped error entirely.
        assert!(std::error::Error::source(&outer).is_none());
        let found: Vec<_> = sources(&outer).collect();
        assert_eq!(found.len(), 3, "outer io, inner io, the rustls error");
        assert!(found[2].is::<rustls::Error>());
        assert_eq!(
            error_chain(&outer),
            "received fatal alert: CertificateRequired"
        );

        let failed = HandshakeError::Failed(outer);
        assert!(sources(&failed).any(|s| s.is::<rustls::Error>()));
        assert_eq!(
            error_chain(&failed),
            "TLS handshake with the upstream failed: received fatal alert: CertificateRequired"
        );
    }

    #[test]
    fn kind_labels_and_statuses() {
        for (kind, label, status) in [
            (UpstreamErrorKind::Connect, "connect", 502),
            (UpstreamErrorKind::Timeout, "timeout", 504),
            (UpstreamErrorKind::Reset, "reset", 502),
            (UpstreamErrorKind::Protocol, "protocol", 502),
            (UpstreamErrorKind::Tls, "tls", 502),
        ] {
            assert_eq!(kind.as_str(), label);
            let e = UpstreamError {
                kind,
                detail: String::new(),
            };
            assert_eq!(e.status().as_u16(), status, "{label}");
        }
    }
}
