//! One request through the pipeline of SPEC section 4: framing, normalization, Host/SNI,
//! identity re-check against the current snapshot, authorization, forwarding. Every exit
//! produces exactly one metrics observation and one audit line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls_pki_types::UnixTime;

use super::forward::UpstreamClient;
use super::host::HostError;
use super::{framing, headers, host, normalize, Reason};
use crate::audit::{self, RequestAudit};
use crate::config::UpstreamScheme;
use crate::identity::Identity;
use crate::policy::{self, Decision, Permit, RequestFacts};
use crate::server::{Activity, InflightGuard, Lease, ProxyState};
use crate::snapshot::Snapshot;
use crate::tls::Rejection;

/// Response body sent to clients.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// (snapshot generation, deadlines passed): while it is unchanged, so is the verdict.
type RecheckKey = (u64, usize);

/// What one connection knows about itself, shared by its requests.
pub struct ConnContext {
    state: Arc<ProxyState>,
    conn_id: u64,
    peer: SocketAddr,
    sni: Option<String>,
    http2: bool,
    /// The identity established at the handshake, under `generation`.
    identity: Identity,
    generation: u64,
    /// How many of the snapshot's time deadlines had passed at the handshake.
    passed: usize,
    /// The identity re-verified against a later snapshot (or after a deadline passed), cached
    /// per (generation, passed deadlines).
    rechecked: Mutex<Option<(RecheckKey, Result<Identity, Rejection>)>>,
    activity: Arc<Activity>,
    /// The connection's slot and open-count entry, held until the last holder of this context
    /// (the connection, or an upgraded tunnel that outlives it) is gone.
    _lease: Lease,
    /// The headers certguard adds for this client (XFCC element, X-Forwarded-For), built once
    /// per config generation: they depend only on the certificate, the peer and `forward`.
    client_headers: Mutex<Option<(u64, Arc<headers::ClientHeaders>)>>,
}

impl ConnContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: Arc<ProxyState>,
        conn_id: u64,
        peer: SocketAddr,
        sni: Option<String>,
        http2: bool,
        identity: Identity,
        snapshot: &Snapshot,
        activity: Arc<Activity>,
        lease: Lease,
    ) -> ConnContext {
        let now = i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX);
        ConnContext {
            state,
            conn_id,
            peer,
            sni,
            http2,
            identity,
            generation: snapshot.generation,
            passed: snapshot.passed_deadlines(now),
            rechecked: Mutex::new(None),
            activity,
            _lease: lease,
            client_headers: Mutex::new(None),
        }
    }

    /// This client's [`headers::ClientHeaders`] under `snap`'s `forward` settings.
    fn client_headers(&self, snap: &Snapshot) -> Arc<headers::ClientHeaders> {
        let mut cached = self
            .client_headers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((generation, h)) if *generation == snap.generation => h.clone(),
            _ => {
                let h = Arc::new(headers::ClientHeaders::new(
                    &snap.config.forward,
                    &self.identity.cert,
                    self.peer.ip(),
                ));
                *cached = Some((snap.generation, h.clone()));
                h
            }
        }
    }

    /// SPEC 5.3: the connection's identity as the current snapshot sees it. Re-verifies the
    /// chain only when the generation changed since the handshake, or once the leaf expired.
    fn current_identity(&self, snap: &Snapshot) -> Result<Identity, Rejection> {
        let now = UnixTime::now();
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let expired = now_secs > self.identity.cert.not_after;
        let key = (snap.generation, snap.passed_deadlines(now_secs));
        if key == (self.generation, self.passed) && !expired {
            return Ok(self.identity.clone());
        }
        if !expired {
            if let Ok(guard) = self.rechecked.lock() {
                if let Some((cached, result)) = guard.as_ref() {
                    if *cached == key {
                        return result.clone();
                    }
                }
            }
        }
        let chain = &self.identity.cert.chain;
        let result = match chain.split_first() {
            Some((leaf, intermediates)) => snap
                .verifier()
                .verify(leaf, intermediates, now)
                .map(|admission| Identity::new(admission, self.identity.cert.clone())),
            None => Err(Rejection {
                trust: None,
                outcome: crate::tls::Outcome::NoClientCert,
                detail: "connection has no certificate".into(),
            }),
        };
        if let Ok(mut guard) = self.rechecked.lock() {
            *guard = Some((key, result.clone()));
        }
        result
    }
}

/// What the audit line and the metrics need to know about one request.
#[derive(Default)]
struct Facts {
    host: Option<String>,
    path: Option<String>,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
}

/// The outcome of the pipeline before it is recorded.
struct Answer {
    response: Response<ProxyBody>,
    allowed: bool,
    reason: Reason,
    identity: Option<Identity>,
}

/// hyper service entry point for one request.
pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let guard = ctx.activity.request_started();
    let method = req.method().clone();
    let snap = ctx.state.current.load();
    let mut facts = Facts::default();
    let mut answer = pipeline(&ctx, &snap, req, &mut facts).await;
    if !ctx.http2
        && answer.response.status() != StatusCode::SWITCHING_PROTOCOLS
        && ctx.activity.stream_lost()
    {
        // Fail closed: a connection whose byte stream certguard could not follow gets no
        // further request, since its framing could not be judged.
        answer
            .response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    record(
        &ctx,
        snap.config.logging.access_log,
        &Record {
            method: method.as_str(),
            facts: &facts,
            allowed: answer.allowed,
            reason: answer.reason,
            status: answer.response.status().as_u16(),
            identity: answer.identity.as_ref().unwrap_or(&ctx.identity),
            elapsed: started.elapsed(),
        },
    );
    Ok(answer.response.map(|body| {
        GuardedBody {
            inner: body,
            _guard: guard,
        }
        .boxed()
    }))
}

/// One request decision, as metrics, the inventory and the audit log see it.
struct Record<'a> {
    method: &'a str,
    facts: &'a Facts,
    allowed: bool,
    reason: Reason,
    status: u16,
    identity: &'a Identity,
    elapsed: std::time::Duration,
}

/// Count and log one request decision: exactly once per request, whoever answered it.
fn record(ctx: &ConnContext, access_log: bool, r: &Record<'_>) {
    let state = &ctx.state;
    let f = r.facts;
    state
        .metrics
        .request(f.route.as_deref(), r.allowed, r.reason, r.status, r.elapsed);
    state.inventory.request(r.identity, r.allowed);
    if access_log {
        let id = r.identity;
        audit::request_line(&RequestAudit {
            conn_id: ctx.conn_id,
            peer: ctx.peer,
            sni: ctx.sni.as_deref(),
            trust: Some(&id.trust),
            pinned: id.pinned.as_deref(),
            subject: Some(&id.cert.subject),
            spiffe_id: id.cert.spiffe_id.as_deref(),
            fingerprint: Some(&id.cert.fingerprint),
            method: r.method,
            host: f.host.as_deref(),
            path: f.path.as_deref().unwrap_or(""),
            route: f.route.as_deref(),
            upstream: f.upstream.as_deref(),
            decision: if r.allowed { "allowed" } else { "denied" },
            reason: r.reason,
            status: r.status,
            duration_ms: r.elapsed.as_secs_f64() * 1000.0,
        });
    }
}

/// Count a request that hyper refused before it reached [`handle`] (an oversized head gets
/// 431, an unparsable one 400), given the error its connection ended with.
pub fn record_refused(ctx: &ConnContext, error: Option<&hyper::Error>) {
    let Some(e) = error else { return };
    let status = if e.is_parse_too_large() {
        431
    } else if e.is_parse() {
        400
    } else {
        return;
    };
    let access_log = ctx.state.current.load().config.logging.access_log;
    record(
        ctx,
        access_log,
        &Record {
            method: "-",
            facts: &Facts::default(),
            allowed: false,
            reason: Reason::BadRequest,
            status,
            identity: &ctx.identity,
            elapsed: std::time::Duration::ZERO,
        },
    );
}

async fn pipeline(
    ctx: &Arc<ConnContext>,
    snap: &Snapshot,
    req: Request<Incoming>,
    facts: &mut Facts,
) -> Answer {
    let (mut parts, body) = req.into_parts();
    // The raw path until normalization succeeds (logged for refused targets).
    facts.path = Some(parts.uri.path().to_owned());

    // Framing: only HTTP/1 has Content-Length/Transfer-Encoding ambiguity. hyper drops
    // Content-Length when Transfer-Encoding is present, so that case is caught on the raw head.
    if !ctx.http2 {
        let conflict = if ctx.activity.take_framing_conflict() {
            Err(framing::FramingError::LengthAndChunked)
        } else {
            framing::check(&parts.headers)
        };
        if let Err(e) = conflict {
            tracing::debug!(conn_id = ctx.conn_id, error = %e, "ambiguous framing");
            let mut response = fixed(StatusCode::BAD_REQUEST);
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return deny(response, Reason::BadRequest, None);
        }
    }

    // HTTP/2 requests always carry scheme and authority in the URI; the request target proper
    // is the :path, which is what gets normalized.
    let target_uri = if ctx.http2 || parts.version == Version::HTTP_2 {
        match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None if parts.method == Method::CONNECT => parts.uri.clone(),
            None => Uri::from_static("/"),
        }
    } else {
        parts.uri.clone()
    };
    let target = match normalize::normalize(&parts.method, &target_uri) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(conn_id = ctx.conn_id, error = %e, "bad request target");
            return deny(fixed(StatusCode::BAD_REQUEST), Reason::BadRequest, None);
        }
    };
    facts.path = Some(target.path.clone());

    let listen = &snap.config.listen;
    let host = match host::request_host(&parts, ctx.sni.as_deref(), listen.require_sni_match) {
        Ok(h) => h,
        Err(HostError::SniMismatch) => {
            return deny(
                fixed(StatusCode::MISDIRECTED_REQUEST),
                Reason::SniMismatch,
                None,
            );
        }
        Err(HostError::Bad(why)) => {
            tracing::debug!(conn_id = ctx.conn_id, why, "bad host");
            return deny(fixed(StatusCode::BAD_REQUEST), Reason::BadRequest, None);
        }
    };
    facts.host = host.clone();

    let identity = match ctx.current_identity(snap) {
        Ok(id) => id,
        Err(rejection) => {
            tracing::info!(
                conn_id = ctx.conn_id,
                outcome = %rejection.outcome,
                detail = %rejection.detail,
                "identity no longer valid under the current snapshot"
            );
            return deny(fixed(StatusCode::FORBIDDEN), Reason::Revoked, None);
        }
    };

    let request = RequestFacts {
        method: &parts.method,
        host: host.as_deref(),
        path: &target.path,
    };
    let permit = match policy::authorize(&snap.config.policy, &identity, &request) {
        Decision::NoRoute => {
            return deny(
                fixed(StatusCode::NOT_FOUND),
                Reason::NoRoute,
                Some(identity),
            )
        }
        Decision::NotAllowed { route } => {
            facts.route = Some(route.name.clone());
            return deny(
                fixed(StatusCode::FORBIDDEN),
                Reason::NotAllowed,
                Some(identity),
            );
        }
        Decision::Allowed(permit) => permit,
    };
    let route = permit.route();
    facts.route = Some(route.name.clone());
    facts.upstream = Some(route.upstream.clone());

    let Some(upstream) = snap.upstreams.get(&route.upstream) else {
        // Config validation makes this unreachable; answer rather than panic.
        return upstream_failure(StatusCode::BAD_GATEWAY, identity);
    };

    // Host as the client sent it, for X-Forwarded-Host and for the upstream's Host header.
    let client_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrade = if ctx.http2 {
        None
    } else {
        headers::websocket_upgrade(&parts.method, &parts.headers)
    };
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<OnUpgrade>());

    headers::strip_hop_by_hop(&mut parts.headers);
    headers::apply_forward_with(
        &mut parts.headers,
        &snap.config.forward,
        &ctx.client_headers(snap),
        client_host.as_ref(),
    );
    if let Some(value) = &upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, value.clone());
    }
    if let Some(h) = &client_host {
        parts.headers.insert(HOST, h.clone());
    }
    parts.uri = match upstream.uri(&target.path_and_query()) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(conn_id = ctx.conn_id, error = %e, "cannot build upstream request");
            return upstream_failure(StatusCode::BAD_GATEWAY, identity);
        }
    };
    parts.version = match upstream.config.scheme {
        UpstreamScheme::Http => Version::HTTP_11,
        UpstreamScheme::H2c => Version::HTTP_2,
    };
    if upstream.config.scheme == UpstreamScheme::H2c {
        parts.headers.remove(HOST);
    }
    let client_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = ClientBody {
        inner: body,
        failed: client_failed.clone(),
    };
    let upstream_req = Request::from_parts(parts, body.boxed());
    forward(
        ctx,
        upstream,
        permit,
        upstream_req,
        client_upgrade,
        identity,
        &client_failed,
    )
    .await
}

async fn forward(
    ctx: &Arc<ConnContext>,
    upstream: &UpstreamClient,
    permit: Permit<'_>,
    req: Request<super::forward::UpstreamBody>,
    client_upgrade: Option<OnUpgrade>,
    identity: Identity,
    client_failed: &std::sync::atomic::AtomicBool,
) -> Answer {
    let name = &permit.route().upstream;
    let metrics = &ctx.state.metrics;
    let started = Instant::now();
    let result = upstream.send(req).await;
    metrics.upstream_duration(name, started.elapsed());
    let mut response = match result {
        Ok(r) => r,
        Err(e) if client_failed.load(std::sync::atomic::Ordering::Acquire) => {
            // The exchange failed because the client's own body was malformed (e.g. invalid
            // chunking), not because of the upstream.
            tracing::debug!(conn_id = ctx.conn_id, error = %e, "client request body failed");
            let mut response = fixed(StatusCode::BAD_REQUEST);
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return deny(response, Reason::BadRequest, Some(identity));
        }
        Err(e) => {
            metrics.upstream_error(name, e.kind);
            tracing::warn!(conn_id = ctx.conn_id, upstream = %name, error = %e, "upstream request failed");
            return upstream_failure(e.status(), identity);
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) =
            client_upgrade.filter(|_| headers::is_websocket_switch(response.headers()))
        else {
            // A 101 to a request that was not a WebSocket upgrade, or to another protocol:
            // relaying it would open a tunnel no policy sees.
            metrics.upstream_error(name, super::UpstreamErrorKind::Protocol);
            tracing::warn!(conn_id = ctx.conn_id, upstream = %name, "upstream switched protocols unasked; refusing");
            return upstream_failure(StatusCode::BAD_GATEWAY, identity);
        };
        spawn_tunnel(ctx.clone(), client, hyper::upgrade::on(&mut response));
        // Keep Connection/Upgrade on the 101: they are the protocol switch itself.
    } else {
        headers::strip_hop_by_hop(response.headers_mut());
    }
    Answer {
        response: response.map(|b| b.boxed()),
        allowed: true,
        reason: Reason::Ok,
        identity: Some(identity),
    }
}

/// Relay an upgraded (WebSocket) connection until either side closes or the client's identity
/// is revoked. The tunnel holds `ctx`, and with it the connection's slot and open-count entry.
fn spawn_tunnel(ctx: Arc<ConnContext>, client: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let conn_id = ctx.conn_id;
        match (client.await, upstream.await) {
            (Ok(c), Ok(u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                        if let Err(e) = r {
                            tracing::debug!(conn_id, error = %e, "upgraded tunnel ended");
                        }
                    }
                    rejection = revoked(&ctx) => {
                        tracing::info!(
                            conn_id,
                            outcome = %rejection.outcome,
                            detail = %rejection.detail,
                            "identity no longer valid under the current snapshot: closing tunnel"
                        );
                    }
                }
            }
            (c, u) => tracing::debug!(
                conn_id,
                client_ok = c.is_ok(),
                upstream_ok = u.is_ok(),
                "upgrade failed"
            ),
        }
    });
}

/// How often an upgraded tunnel re-checks its connection's identity. A tunnel carries no
/// further requests, so SPEC 5.3 ("revocation reaches open connections") is enforced on it
/// by this timer instead; the check is a generation compare unless something changed.
const TUNNEL_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves once the connection's identity no longer verifies under the current snapshot
/// (revoked by a new CRL, pin removed, certificate expired).
async fn revoked(ctx: &ConnContext) -> Rejection {
    let mut tick = tokio::time::interval(TUNNEL_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = ctx.state.current.load();
        if let Err(rejection) = ctx.current_identity(&snap) {
            return rejection;
        }
    }
}

fn deny(response: Response<ProxyBody>, reason: Reason, identity: Option<Identity>) -> Answer {
    Answer {
        response,
        allowed: false,
        reason,
        identity,
    }
}

fn upstream_failure(status: StatusCode, identity: Identity) -> Answer {
    Answer {
        response: fixed(status),
        allowed: true,
        reason: Reason::UpstreamError,
        identity: Some(identity),
    }
}

/// A proxy-generated response: fixed short body, details only in logs (SPEC 4 step 7).
pub fn fixed(status: StatusCode) -> Response<ProxyBody> {
    let body: &'static str = match status {
        StatusCode::BAD_REQUEST => "bad request\n",
        StatusCode::FORBIDDEN => "forbidden\n",
        StatusCode::NOT_FOUND => "no route\n",
        StatusCode::MISDIRECTED_REQUEST => "misdirected request\n",
        StatusCode::BAD_GATEWAY => "bad gateway\n",
        StatusCode::GATEWAY_TIMEOUT => "gateway timeout\n",
        _ => "error\n",
    };
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The client's request body on its way upstream; notes when reading it failed, so that the
/// failure is charged to the client (400) rather than to the upstream (502).
struct ClientBody {
    inner: Incoming,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &res {
            self.failed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        res
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps the request counted as in flight until it is finished.
struct GuardedBody {
    inner: ProxyBody,
    _guard: InflightGuard,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
