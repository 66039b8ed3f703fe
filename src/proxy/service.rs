//! One request through the pipeline of SPEC section 4: framing, normalization, Host/SNI,
//! identity re-check against the current snapshot, authorization, then the relay upstream.
//! Each step either passes the request on or ends it with a [`Refusal`]; every request,
//! whoever answered it, produces exactly one metrics observation and one audit line.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::refusal::{Limit, Refusal};
use super::stream::{Hold, Places, RequestBody, ResponseBody};
use crate::audit::{self, RequestAudit};
use crate::config::UpstreamScheme;
use crate::conn::{ConnContext, InflightGuard};
use crate::headers;
use crate::identity::Identity;
use crate::metrics::Reason;
use crate::policy::{self, Decision, Permit, Policy, RequestFacts};
use crate::request::framing::{self, FramingError};
use crate::request::host;
use crate::request::normalize::{self, Target};
use crate::snapshot::Snapshot;
use crate::upstream::{ProxyBody, UpstreamError, UpstreamErrorKind};

/// What the metrics, the inventory and the audit line know about one request, filled in as
/// the pipeline learns it.
#[derive(Default)]
struct Facts {
    host: Option<String>,
    /// The raw path until normalization succeeds, the normalized path after.
    path: Option<String>,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    /// The identity as the current snapshot sees it, once re-checked.
    identity: Option<Identity>,
    /// The reason of the deny entry that refused the request.
    deny_reason: Option<Arc<str>>,
    /// The route's `shadow_allow` verdict (true = allowed), when it has one (SPEC 9.6).
    shadow: Option<bool>,
    /// `allow` refused the request and the route does not enforce: it is forwarded anyway.
    not_enforced: bool,
    /// `host` and `path` are wanted (only the access log line reads them).
    logged: bool,
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
    let access_log = snap.config.logging.access_log;
    let mut facts = Facts {
        logged: access_log,
        ..Facts::default()
    };
    let (mut response, permitted, reason) =
        match pipeline(&ctx, &snap, req, &mut facts, &inflight).await {
            Ok(response) if facts.not_enforced => (response, true, Reason::NotEnforced),
            Ok(response) => (response, true, Reason::Ok),
            Err(refusal) => {
                if !refusal.has_route() {
                    facts.route = None;
                    facts.upstream = None;
                }
                if let Refusal::Revoked(r) = &refusal {
                    facts.deny_reason = r.deny_reason.clone();
                }
                log_refusal(&ctx, &refusal);
                let response = refusal.response().map(Reply::Local);
                (response, refusal.permitted(), refusal.reason())
            }
        };
    if !ctx.http2
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
        && ctx.activity.stream_lost()
    {
        // Fail closed: a connection whose byte stream certguard could not follow gets no
        // further request, since its framing could not be judged.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    record(
        &ctx,
        access_log,
        &RequestEnd {
            method: method.as_str(),
            facts: &facts,
            permitted,
            reason,
            status: response.status().as_u16(),
            elapsed: started.elapsed(),
        },
    );
    Ok(response.map(|reply| match reply {
        Reply::Local(body) => ResponseBody::local(body, inflight),
        Reply::Relayed(body, hold) => {
            let (body, slot) = ResponseBody::relayed(body, hold);
            ctx.watch(slot);
            body
        }
    }))
}

fn log_refusal(ctx: &ConnContext, refusal: &Refusal) {
    let conn_id = ctx.conn_id;
    // The detail is formatted inside each macro: only when that level is enabled.
    match refusal {
        Refusal::Upstream(_) | Refusal::Overflow(_) => {
            tracing::warn!(conn_id, detail = %refusal.detail(), "request not relayed")
        }
        Refusal::Revoked(_) => {
            tracing::info!(conn_id, detail = %refusal.detail(), "request refused")
        }
        _ => tracing::debug!(conn_id, detail = %refusal.detail(), "request refused"),
    }
}

/// How one request ended.
struct RequestEnd<'a> {
    method: &'a str,
    facts: &'a Facts,
    /// Policy permitted it (the `decision` label).
    permitted: bool,
    reason: Reason,
    status: u16,
    elapsed: std::time::Duration,
}

/// Count and log one request: exactly once per request, whoever answered it.
fn record(ctx: &ConnContext, access_log: bool, o: &RequestEnd<'_>) {
    let state = &ctx.state;
    let f = o.facts;
    let id = f.identity.as_ref().unwrap_or(ctx.handshake_identity());
    state.metrics.request(
        f.route.as_deref(),
        o.permitted,
        o.reason,
        o.status,
        o.elapsed,
    );
    state.inventory.request(id, o.permitted);
    let shadow = f.route.as_deref().zip(f.shadow);
    if let Some((route, shadow)) = shadow {
        state.metrics.shadow_decision(route, o.permitted, shadow);
    }
    if access_log {
        audit::request_line(&RequestAudit {
            conn_id: ctx.conn_id,
            peer: ctx.peer,
            sni: ctx.sni.as_deref(),
            trust: Some(&id.trust),
            pinned: id.pinned.as_deref(),
            subject: Some(&id.cert.subject),
            spiffe_id: id.cert.spiffe_id.as_deref(),
            fingerprint: Some(&id.cert.fingerprint),
            method: o.method,
            host: f.host.as_deref(),
            path: f.path.as_deref().unwrap_or(""),
            route: f.route.as_deref(),
            upstream: f.upstream.as_deref(),
            decision: if o.permitted { "allowed" } else { "denied" },
            reason: o.reason,
            shadow: shadow.map(|(_, allowed)| if allowed { "allowed" } else { "denied" }),
            status: o.status,
            duration_ms: o.elapsed.as_secs_f64() * 1000.0,
            deny_reason: f.deny_reason.as_deref(),
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
        &RequestEnd {
            method: "-",
            facts: &Facts::default(),
            permitted: false,
            reason: Reason::BadRequest,
            status,
            elapsed: std::time::Duration::ZERO,
        },
    );
}

/// SPEC 4 steps 1 and 2 for a request head: the HTTP/1 framing headers, then the method and
/// the target, normalized into the one form policy sees and the upstream gets.
pub fn check_target(parts: &Parts, http2: bool) -> Result<Target, Refusal> {
    // Only HTTP/1 has Content-Length/Transfer-Encoding ambiguity.
    if !http2 {
        framing::check(&parts.headers).map_err(Refusal::Framing)?;
    }
    // HTTP/2 requests always carry scheme and authority in the URI; the request target proper
    // is the :path, which is what gets normalized.
    let target_uri = if http2 || parts.version == Version::HTTP_2 {
        match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None if parts.method == Method::CONNECT => parts.uri.clone(),
            None => Uri::from_static("/"),
        }
    } else {
        parts.uri.clone()
    };
    let target = normalize::normalize(&parts.method, &target_uri).map_err(Refusal::Target)?;
    normalize::check_method_override(&parts.method, &parts.headers, parts.uri.query())
        .map_err(Refusal::Target)?;
    Ok(target)
}

/// SPEC 4 step 2: the host policy matches (lower-case, no port), bound to the SNI.
pub fn check_host(
    parts: &Parts,
    sni: Option<&str>,
    require_sni_match: bool,
) -> Result<Option<String>, Refusal> {
    host::request_host(parts, sni, require_sni_match).map_err(Refusal::Host)
}

/// SPEC 4 step 4: the permit for `identity`, or the refusal.
pub fn authorize<'p>(
    policy: &'p Policy,
    identity: &Identity,
    method: &Method,
    host: Option<&str>,
    target: &Target,
) -> Result<Permit<'p>, Refusal> {
    let request = RequestFacts {
        method,
        host,
        path: &target.path,
    };
    match policy::authorize(policy, identity, &request) {
        Decision::Allowed(permit) => Ok(permit),
        Decision::NotAllowed { route, shadow } => Err(Refusal::NotAllowed {
            route: route.name.clone(),
            shadow,
        }),
        Decision::NoRoute => Err(Refusal::NoRoute),
    }
}

async fn pipeline(
    ctx: &Arc<ConnContext>,
    snap: &Snapshot,
    req: Request<Incoming>,
    facts: &mut Facts,
    inflight: &Arc<InflightGuard>,
) -> Result<Response<Reply>, Refusal> {
    let (mut parts, body) = req.into_parts();
    if facts.logged {
        facts.path = Some(parts.uri.path().to_owned());
    }
    // hyper drops Content-Length when Transfer-Encoding is present, so that conflict is
    // caught on the raw head by the connection's stream tracker.
    if !ctx.http2 && ctx.activity.take_framing_conflict() {
        return Err(Refusal::Framing(FramingError::LengthAndChunked));
    }
    let target = check_target(&parts, ctx.http2)?;
    if facts.logged {
        facts.path = Some(target.path.clone());
    }
    if !headers::inbound_xfcc_ok(&parts.headers, &snap.config.forward) {
        return Err(Refusal::MalformedXfcc);
    }
    let listen = &snap.config.listen;
    let host = check_host(&parts, ctx.sni.as_deref(), listen.require_sni_match)?;
    if facts.logged {
        facts.host = host.clone();
    }
    let identity = ctx.current_identity(snap).map_err(Refusal::Revoked)?;
    facts.identity = Some(identity.clone());
    let permit = authorize(
        &snap.config.policy,
        &identity,
        &parts.method,
        host.as_deref(),
        &target,
    )
    .inspect_err(|refusal| {
        if let Refusal::NotAllowed { route, shadow } = refusal {
            facts.route = Some(route.clone());
            facts.shadow = *shadow;
        }
    })?;
    facts.shadow = permit.shadow();
    facts.not_enforced = permit.grant() == policy::Grant::NotEnforced;
    let route = permit.route();
    facts.route = Some(route.name.clone());
    facts.upstream = Some(route.upstream.clone());

    let Some(upstream) = snap.upstreams.get(&route.upstream) else {
        // Config validation makes this unreachable; answer rather than panic.
        return Err(Refusal::Upstream(UpstreamError {
            kind: UpstreamErrorKind::Protocol,
            detail: format!("no upstream named {}", route.upstream),
        }));
    };

    // Host as the client sent it, for X-Forwarded-Host.
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
    // SPEC 4 step 5: the host policy judged, in its normalized spelling, with the client's port.
    let upstream_host = host.as_deref().and_then(|judged| {
        match client_host
            .as_ref()
            .and_then(|h| Some((h, h.to_str().ok()?)))
        {
            Some((value, raw)) => match host::upstream_host(judged, raw) {
                // The client's own value, already in the judged spelling: no copy.
                Cow::Borrowed(_) => Some(value.clone()),
                Cow::Owned(h) => HeaderValue::try_from(h).ok(),
            },
            None => HeaderValue::try_from(judged).ok(),
        }
    });
    match upstream_host {
        Some(h) => {
            parts.headers.insert(HOST, h);
        }
        None => {
            parts.headers.remove(HOST);
        }
    }
    parts.uri = upstream
        .uri(&target.path_and_query())
        .map_err(Refusal::Upstream)?;
    parts.version = match upstream.config.scheme {
        UpstreamScheme::Http | UpstreamScheme::Https => Version::HTTP_11,
        UpstreamScheme::H2c => Version::HTTP_2,
    };
    if upstream.config.scheme == UpstreamScheme::H2c {
        parts.headers.remove(HOST);
    }
    // A `_method` field in a form body: judged while the body streams (the head was judged
    // by `check_method_override`).
    let form = crate::request::form::form_kinds(&parts.method, &parts.headers);
    crate::request::form::check_encoding(&form, &parts.headers).map_err(Refusal::Target)?;
    let body = RequestBody::new(body, snap.config.forward.clone(), inflight.clone());
    let client_body = body.state().clone();
    let empty = http_body::Body::is_end_stream(&body);
    if !empty {
        ctx.watch(client_body.clone());
    }
    let body = if form.is_empty() || empty {
        body.boxed()
    } else {
        let scan = crate::request::form::MethodFieldScan::new(form, parts.method.clone());
        super::form::FormGuard::new(body, scan, client_body.clone()).boxed()
    };
    let per_identity = listen
        .max_inflight_per_identity
        .map(|cap| (identity.cert.fingerprint.as_str(), cap));
    let exchange = Exchange {
        upstream,
        per_identity,
        permit,
        client_upgrade,
        client_body: &client_body,
        inflight,
    };
    relay(ctx, exchange, Request::from_parts(parts, body)).await
}

/// What [`relay`] needs beside the request.
struct Exchange<'a, 'p> {
    upstream: &'a Arc<crate::upstream::UpstreamClient>,
    /// The identity's fingerprint and `listen.max_inflight_per_identity`, when set.
    per_identity: Option<(&'a str, usize)>,
    permit: Permit<'p>,
    client_upgrade: Option<OnUpgrade>,
    client_body: &'a Arc<super::stream::RequestState>,
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

/// Send the request upstream under the concurrency limits and relay the response.
async fn relay(
    ctx: &Arc<ConnContext>,
    exchange: Exchange<'_, '_>,
    req: Request<crate::upstream::UpstreamBody>,
) -> Result<Response<Reply>, Refusal> {
    let Exchange {
        upstream,
        per_identity,
        permit,
        client_upgrade,
        client_body,
        inflight,
    } = exchange;
    let name = &permit.route().upstream;
    let metrics = &ctx.state.metrics;
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started) + upstream.config.timeout;
    // One client connection (HTTP/2 multiplexes up to 128 streams) and all clients together
    // get bounded shares of the upstream: a client that never reads its responses cannot
    // pin an unbounded number of upstream connections.
    let overflow = |limit: Limit| {
        metrics.upstream_overflow(name, limit.as_str());
        Refusal::Overflow(limit)
    };
    // The identity's own share first: one that is over it waits without taking a place of
    // its connection or of the upstream from anyone else.
    let identity = match per_identity {
        Some((fingerprint, cap)) => Some(
            ctx.state
                .identity_places
                .acquire(fingerprint, cap, deadline)
                .await
                .ok_or_else(|| overflow(Limit::Identity))?,
        ),
        None => None,
    };
    let connection = place(&ctx.inflight_slots, deadline)
        .await
        .ok_or_else(|| overflow(Limit::Connection))?;
    let upstream_place = place(&upstream.slots, deadline)
        .await
        .ok_or_else(|| overflow(Limit::Upstream))?;
    let places = Arc::new(Places {
        connection,
        upstream: upstream_place,
        identity,
    });
    // An upload that outlasts its response keeps the places until it ends.
    client_body.keep(&places);
    let hold = Hold {
        inflight: inflight.clone(),
        places,
    };
    let result = upstream.send(req, deadline).await;
    metrics.upstream_duration(name, started.elapsed());
    let mut response = match result {
        Ok(r) => r,
        // The exchange failed because the client's own body was malformed (e.g. invalid
        // chunking), not because of the upstream.
        // The rest of the body is unread: BadBody also closes the connection.
        Err(_) if client_body.method_in_form() => {
            return Err(Refusal::BadBody(
                crate::request::form::MethodInForm.to_string(),
            ))
        }
        Err(e) if client_body.failed() => return Err(Refusal::BadBody(e.to_string())),
        Err(e) => {
            metrics.upstream_error(name, e.kind);
            return Err(Refusal::Upstream(e));
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(response.headers_mut());
        // An upstream that fails after the response head (a reset, a truncated body) is
        // counted like one that fails before it, unless the client's own body broke the
        // exchange.
        let (metrics, name, client_body) = (metrics.clone(), name.clone(), client_body.clone());
        let count = move |e: hyper::Error| -> crate::upstream::BoxError {
            if !client_body.failed() {
                metrics.upstream_error(&name, crate::upstream::body_error_kind(&e));
            }
            e.into()
        };
        return Ok(response.map(|b| Reply::Relayed(b.map_err(count).boxed(), hold)));
    }
    let Some(client) = client_upgrade.filter(|_| headers::is_websocket_switch(response.headers()))
    else {
        // A 101 to a request that was not a WebSocket upgrade, or to another protocol:
        // relaying it would open a tunnel no policy sees.
        metrics.upstream_error(name, UpstreamErrorKind::Protocol);
        return Err(Refusal::Upstream(UpstreamError {
            kind: UpstreamErrorKind::Protocol,
            detail: "upstream switched protocols unasked".to_owned(),
        }));
    };
    super::tunnel::spawn(ctx.clone(), client, hyper::upgrade::on(&mut response), hold);
    // Keep Connection/Upgrade on the 101: they are the protocol switch itself.
    Ok(response.map(|b| Reply::Local(b.map_err(Into::into).boxed())))
}

#[cfg(test)]
mod tests {
    //! The pipeline's decisions before the relay, as a table: one request head in, a route
    //! or a refusal (status and reason) out.
    use super::*;
    use crate::devpki::{LeafSpec, TestCa};
    use crate::identity::{Admission, CertInfo};

    const ROUTES: &str = "routes:
  - name: orders-write
    host: orders.internal
    path_prefix: /orders
    methods: [POST, DELETE]
    upstream: app
    allow: [{ cn: alice }]
  - name: reports
    path: /reports
    methods: [GET]
    upstream: app
    allow: [{ cn: alice }]
  - name: admin
    path_prefix: /admin
    upstream: app
    allow: [{ cn: root }]
upstreams:
  app: { url: 'http://127.0.0.1:9' }
";

    fn setup() -> (tempfile::TempDir, crate::config::Config, Identity) {
        let dir = tempfile::tempdir().unwrap();
        crate::devpki::write(&dir.path().join("pki"), false).unwrap();
        let yaml = format!(
            "listen: {{ cert: pki/server.crt, key: pki/server.key }}\n\
             trust:\n  internal: {{ ca: pki/ca.crt }}\n{ROUTES}"
        );
        let config = crate::config::Config::from_yaml(&yaml, &dir.path().join("c.yaml")).unwrap();
        let alice = TestCa::root("r")
            .unwrap()
            .issue(&LeafSpec::client("alice"))
            .unwrap();
        let identity = Identity::new(
            Admission {
                trust: "internal".into(),
                pinned: None,
            },
            Arc::new(CertInfo::from_chain(&alice.chain).unwrap()),
        );
        (dir, config, identity)
    }

    /// A route name, or (status, reason).
    fn decide(
        policy: &Policy,
        identity: &Identity,
        req: http::Request<()>,
        http2: bool,
        sni: Option<&str>,
    ) -> Result<String, (u16, &'static str)> {
        let (parts, ()) = req.into_parts();
        let refused = |r: Refusal| (r.status().as_u16(), r.reason().as_str());
        let target = check_target(&parts, http2).map_err(refused)?;
        let host = check_host(&parts, sni, true).map_err(refused)?;
        authorize(policy, identity, &parts.method, host.as_deref(), &target)
            .map(|p| p.route().name.to_string())
            .map_err(refused)
    }

    #[test]
    fn refusals_before_the_relay() {
        let (_dir, config, alice) = setup();
        let h1 = |method: &str, uri: &str, host: Option<&str>| {
            let mut b = http::Request::builder().method(method).uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap()
        };
        let sni = Some("orders.internal");
        type Row<'a> = (
            http::Request<()>,
            bool,
            Option<&'a str>,
            Result<&'a str, (u16, &'a str)>,
        );
        let rows: Vec<Row> = vec![
            (
                h1("POST", "/orders/1", Some("orders.internal")),
                false,
                sni,
                Ok("orders-write"),
            ),
            (
                h1("DELETE", "/orders/1", Some("orders.internal")),
                false,
                sni,
                Ok("orders-write"),
            ),
            (
                h1("delete", "/orders/1", Some("orders.internal")),
                false,
                sni,
                Err((400, "bad_request")),
            ),
            (
                h1("CONNECT", "/orders/1", Some("orders.internal")),
                false,
                sni,
                Err((400, "bad_request")),
            ),
            (
                h1("GET", "/orders/1", Some("orders.internal")),
                false,
                sni,
                Err((404, "no_route")),
            ),
            (
                h1("HEAD", "/reports", Some("orders.internal")),
                false,
                sni,
                Ok("reports"),
            ),
            (
                h1("GET", "/admin/x", Some("orders.internal")),
                false,
                sni,
                Err((403, "not_allowed")),
            ),
            (
                h1("GET", "/reports/../admin", Some("orders.internal")),
                false,
                sni,
                Err((403, "not_allowed")),
            ),
            (
                h1("GET", "/a%2Fb", Some("orders.internal")),
                false,
                sni,
                Err((400, "bad_request")),
            ),
            (
                h1("GET", "/reports", None),
                false,
                sni,
                Err((400, "bad_request")),
            ),
            (
                h1("GET", "/reports", Some("other.internal")),
                false,
                sni,
                Err((421, "sni_mismatch")),
            ),
            (
                h1("GET", "/reports", Some("other.internal")),
                false,
                None,
                Ok("reports"),
            ),
            (
                http::Request::builder()
                    .method("POST")
                    .uri("/orders/1")
                    .header("host", "orders.internal")
                    .header("transfer-encoding", "gzip, chunked")
                    .body(())
                    .unwrap(),
                false,
                sni,
                Err((400, "bad_request")),
            ),
            (
                http::Request::builder()
                    .method("POST")
                    .uri("https://orders.internal/orders/1")
                    .version(Version::HTTP_2)
                    .body(())
                    .unwrap(),
                true,
                sni,
                Ok("orders-write"),
            ),
            (
                http::Request::builder()
                    .method("post")
                    .uri("https://orders.internal/orders/1")
                    .version(Version::HTTP_2)
                    .body(())
                    .unwrap(),
                true,
                sni,
                Err((400, "bad_request")),
            ),
        ];
        for (req, http2, sni, want) in rows {
            let what = format!("{} {} (h2 {http2})", req.method(), req.uri());
            let got = decide(&config.policy, &alice, req, http2, sni);
            assert_eq!(got, want.map(str::to_owned), "{what}");
        }
    }
}
