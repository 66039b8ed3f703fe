//! One request through the pipeline of SPEC section 4: framing, normalization, Host/SNI,
//! identity re-check against the current snapshot, authorization, forwarding. Every exit
//! produces exactly one metrics observation and one audit line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stream::{Hold, RequestBody, ResponseBody};
use crate::audit::{self, RequestAudit};
use crate::config::UpstreamScheme;
use crate::conn::{ConnContext, InflightGuard};
use crate::headers;
use crate::identity::Identity;
use crate::metrics::Reason;
use crate::policy::{self, Decision, Permit, RequestFacts};
use crate::request::host::HostError;
use crate::request::{framing, host, normalize};
use crate::snapshot::Snapshot;
use crate::tls::Rejection;
use crate::upstream::UpstreamClient;

pub use super::stream::ProxyBody;

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
    response: Response<Reply>,
    allowed: bool,
    reason: Reason,
    identity: Option<Identity>,
}

/// A response body as the pipeline produced it.
enum Reply {
    /// certguard's own answer, or one that carries no stream (a 101).
    Local(ProxyBody),
    /// Relayed from the upstream, holding the request's places until it ends.
    Relayed(ProxyBody, Hold),
}

/// hyper service entry point for one request.
pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let inflight = Arc::new(ctx.activity.request_started());
    let method = req.method().clone();
    let snap = ctx.state.current.load();
    let mut facts = Facts::default();
    let mut answer = pipeline(&ctx, &snap, req, &mut facts, &inflight).await;
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
            identity: answer.identity.as_ref().unwrap_or(ctx.handshake_identity()),
            elapsed: started.elapsed(),
        },
    );
    Ok(answer.response.map(|reply| match reply {
        Reply::Local(body) => ResponseBody::local(body, inflight),
        Reply::Relayed(body, hold) => {
            let (body, slot) = ResponseBody::relayed(body, hold);
            ctx.watch(slot);
            body
        }
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
            identity: ctx.handshake_identity(),
            elapsed: std::time::Duration::ZERO,
        },
    );
}

async fn pipeline(
    ctx: &Arc<ConnContext>,
    snap: &Snapshot,
    req: Request<Incoming>,
    facts: &mut Facts,
    inflight: &Arc<InflightGuard>,
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
    let body = RequestBody::new(body, snap.config.forward.clone(), inflight.clone());
    let client_body = body.state().clone();
    if !http_body::Body::is_end_stream(&body) {
        ctx.watch(client_body.clone());
    }
    let upstream_req = Request::from_parts(parts, body.boxed());
    let exchange = Exchange {
        upstream,
        permit,
        client_upgrade,
        client_body: &client_body,
        inflight,
    };
    let answer = forward(ctx, exchange, upstream_req, identity).await;
    if client_body.failed() && answer.reason == Reason::BadRequest {
        // SPEC 6: a 400 is counted and logged with route "none".
        facts.route = None;
        facts.upstream = None;
    }
    answer
}

/// What [`forward`] needs beside the request.
struct Exchange<'a, 'p> {
    upstream: &'a Arc<UpstreamClient>,
    permit: Permit<'p>,
    client_upgrade: Option<OnUpgrade>,
    client_body: &'a super::stream::RequestState,
    inflight: &'a Arc<InflightGuard>,
}

/// A place under `limit`, waiting until `deadline` at most.
async fn place(
    limit: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = limit.clone().try_acquire_owned() {
        return Some(permit);
    }
    tokio::time::timeout_at(deadline, limit.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

async fn forward(
    ctx: &Arc<ConnContext>,
    exchange: Exchange<'_, '_>,
    req: Request<crate::upstream::UpstreamBody>,
    identity: Identity,
) -> Answer {
    let Exchange {
        upstream,
        permit,
        client_upgrade,
        client_body,
        inflight,
    } = exchange;
    let name = &permit.route().upstream;
    let metrics = &ctx.state.metrics;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + upstream.config.timeout;
    // One client connection (HTTP/2 multiplexes up to 128 streams) and all clients together
    // get bounded shares of the upstream: a client that never reads its responses cannot
    // pin an unbounded number of upstream connections.
    let Some(connection) = place(&ctx.inflight_slots, deadline).await else {
        return overflow(ctx, name, "connection", identity);
    };
    let Some(upstream_place) = place(&upstream.slots, deadline).await else {
        return overflow(ctx, name, "upstream", identity);
    };
    let hold = Hold {
        inflight: inflight.clone(),
        connection,
        upstream: upstream_place,
    };
    let result = upstream.send(req, deadline).await;
    metrics.upstream_duration(name, started.elapsed());
    let mut response = match result {
        Ok(r) => r,
        Err(e) if client_body.failed() => {
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
            metrics.upstream_error(name, crate::upstream::UpstreamErrorKind::Protocol);
            tracing::warn!(conn_id = ctx.conn_id, upstream = %name, "upstream switched protocols unasked; refusing");
            return upstream_failure(StatusCode::BAD_GATEWAY, identity);
        };
        spawn_tunnel(ctx.clone(), client, hyper::upgrade::on(&mut response), hold);
        // Keep Connection/Upgrade on the 101: they are the protocol switch itself.
        return Answer {
            response: response.map(|b| Reply::Local(b.map_err(Into::into).boxed())),
            allowed: true,
            reason: Reason::Ok,
            identity: Some(identity),
        };
    }
    headers::strip_hop_by_hop(response.headers_mut());
    Answer {
        response: response.map(|b| Reply::Relayed(b.map_err(Into::into).boxed(), hold)),
        allowed: true,
        reason: Reason::Ok,
        identity: Some(identity),
    }
}

/// A request that found no place under a concurrency limit before its deadline: 503.
fn overflow(ctx: &ConnContext, upstream: &str, limit: &'static str, identity: Identity) -> Answer {
    ctx.state.metrics.upstream_overflow(upstream, limit);
    tracing::warn!(
        conn_id = ctx.conn_id,
        upstream,
        limit,
        "no place for the request under the concurrency limit before the upstream timeout"
    );
    upstream_failure(StatusCode::SERVICE_UNAVAILABLE, identity)
}

/// Relay an upgraded (WebSocket) connection until either side closes or the client's identity
/// is revoked. The tunnel holds `ctx`, and with it the connection's slot and open-count entry.
fn spawn_tunnel(ctx: Arc<ConnContext>, client: OnUpgrade, upstream: OnUpgrade, hold: Hold) {
    tokio::spawn(async move {
        // The tunnel is an upstream connection: it keeps the request's places until it ends.
        let _hold = hold;
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
        response: response.map(Reply::Local),
        allowed: false,
        reason,
        identity,
    }
}

fn upstream_failure(status: StatusCode, identity: Identity) -> Answer {
    Answer {
        response: fixed(status).map(Reply::Local),
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
        StatusCode::SERVICE_UNAVAILABLE => "service unavailable\n",
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
