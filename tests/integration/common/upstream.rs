//! A real upstream HTTP server for the tests (HTTP/1.1 and h2c on one port, or the same behind
//! TLS with [`Upstream::start_tls`]), recording what it receives. Paths: `/slow?ms=N` waits, `/upload` hashes the body (and records its trailers),
//! `/early` answers at once and reads the body afterwards, `/trailers` sends trailers,
//! `/events?n=N&ms=M` streams N events M ms apart, `/big?mb=N` streams N MiB, `/ws` is a
//! WebSocket echo, anything else echoes method, path and headers as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

/// What a TLS upstream saw of one completed handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The SNI host name the client sent (none for an IP address).
    pub sni: Option<String>,
    /// The certificates the client presented, leaf first (empty: none).
    pub client_chain: Vec<CertificateDer<'static>>,
    /// The ALPN protocol agreed on.
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
}

/// What the upstream counts beside the requests it saw.
#[derive(Default)]
struct Stats {
    /// TCP connections open now.
    open: AtomicUsize,
    /// `/slow` requests being answered now, and the most at once.
    slow_now: AtomicUsize,
    slow_max: AtomicUsize,
    /// Trailers of `/upload` bodies, in order.
    trailers: Mutex<Vec<HeaderMap>>,
    /// Bytes of `/early` bodies read after the response was sent.
    early_bytes: AtomicUsize,
    /// TLS only: completed handshakes, and the errors of failed ones.
    handshakes: Mutex<Vec<Handshake>>,
    failed_handshakes: Mutex<Vec<String>>,
}

/// Decrements `open` when a connection ends.
struct OpenConn(Arc<Stats>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::serve(None).await
    }

    /// The same upstream behind TLS (tokio-rustls with `config`, which decides whether a client
    /// certificate is required); it records every handshake.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let recorder = seen.clone();
        let counters = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let recorder = recorder.clone();
                let counters = counters.clone();
                let tls = tls.clone();
                counters.open.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let _open = OpenConn(counters.clone());
                    let svc = {
                        let counters = counters.clone();
                        service_fn(move |req| handle(recorder.clone(), counters.clone(), req))
                    };
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let Some(acceptor) = tls else {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                            .await;
                        return;
                    };
                    match acceptor.accept(tcp).into_fallible().await {
                        Ok(stream) => {
                            let conn = stream.get_ref().1;
                            counters.handshakes.lock().unwrap().push(Handshake {
                                sni: conn.server_name().map(str::to_owned),
                                client_chain: conn
                                    .peer_certificates()
                                    .map(|c| c.to_vec())
                                    .unwrap_or_default(),
                                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                                version: conn.protocol_version(),
                            });
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Err((e, mut tcp)) => {
                            counters
                                .failed_handshakes
                                .lock()
                                .unwrap()
                                .push(e.to_string());
                            // Close as servers do after an alert: stop sending, then read
                            // what the client still sends (its request, after a TLS 1.3
                            // handshake) so the kernel does not answer it with a reset.
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let _ = tcp.shutdown().await;
                            let mut sink = [0u8; 4096];
                            let drain = async {
                                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                            };
                            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            stats,
            task,
        }
    }

    /// TCP connections to the upstream open now.
    pub fn open_connections(&self) -> usize {
        self.stats.open.load(Ordering::Acquire)
    }

    /// The most `/slow` requests the upstream was answering at once.
    pub fn max_concurrent_slow(&self) -> usize {
        self.stats.slow_max.load(Ordering::Acquire)
    }

    /// Trailers of every `/upload` body received, in order.
    pub fn trailers(&self) -> Vec<HeaderMap> {
        self.stats.trailers.lock().unwrap().clone()
    }

    /// Bytes of `/early` request bodies read after their response was sent.
    pub fn early_bytes(&self) -> usize {
        self.stats.early_bytes.load(Ordering::Acquire)
    }

    /// TLS: every completed handshake so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.stats.handshakes.lock().unwrap().clone()
    }

    /// TLS: the errors of the handshakes that failed so far.
    pub fn failed_handshakes(&self) -> Vec<String> {
        self.stats.failed_handshakes.lock().unwrap().clone()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received no request")
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    stats: Arc<Stats>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let p = req.uri().path().to_owned();
    if p == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let now = stats.slow_now.fetch_add(1, Ordering::AcqRel) + 1;
        stats.slow_max.fetch_max(now, Ordering::AcqRel);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        stats.slow_now.fetch_sub(1, Ordering::AcqRel);
        return Ok(Response::new(full("slow done")));
    }
    if p == "/early" {
        // Answer before reading the body (as an upstream refusing an upload early would),
        // then keep reading it.
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    stats.early_bytes.fetch_add(data.len(), Ordering::AcqRel);
                }
            }
        });
        return Ok(Response::new(full("early")));
    }
    if p == "/events" {
        let param = |name: &str| -> Option<u64> {
            req.uri().query()?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.parse().ok())?
            })
        };
        let n = param("n").unwrap_or(10);
        let ms = param("ms").unwrap_or(100);
        let events = futures_util::stream::unfold(0u64, move |i| async move {
            if i >= n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let event = Frame::data(Bytes::from(format!("data: {i}\n\n")));
            Some((Ok::<_, Infallible>(event), i + 1))
        });
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(events)))
            .unwrap());
    }
    if p == "/upload" {
        let mut body = req.into_body();
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Ok(Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(full("body error"))
                    .unwrap());
            };
            if let Some(data) = frame.data_ref() {
                n += data.len();
                ctx.update(data);
            }
            if let Some(trailers) = frame.trailers_ref() {
                stats.trailers.lock().unwrap().push(trailers.clone());
            }
        }
        let hash = hex(ctx.finish().as_ref());
        return Ok(Response::new(full(format!("{n} {hash}"))));
    }
    if p == "/big" {
        // `mb` MiB streamed in 64 KiB chunks, for clients that stop reading.
        let mb: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("mb="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let chunk = Bytes::from(vec![b'x'; 65536]);
        let frames = (0..mb * 16).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(
            futures_util::stream::iter(frames),
        ))));
    }
    if p == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        // HTTP/1.1 sends only declared trailer fields.
        return Ok(Response::builder()
            .header("trailer", "grpc-status")
            .body(body)
            .unwrap());
    }
    if p == "/switch" {
        // A careless upstream that switches protocols whenever asked (or not asked).
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(full(""))
            .unwrap());
    }
    if p == "/ws" {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full("not websocket"))
                .unwrap());
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .unwrap());
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    let doc =
        serde_json::json!({ "method": req.method().as_str(), "path": path, "headers": headers });
    Ok(Response::new(full(doc.to_string())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
