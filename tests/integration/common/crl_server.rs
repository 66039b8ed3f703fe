//! A real HTTP server publishing CRLs for the tests, as a CA's distribution point does: each
//! path serves its current body with an `ETag` and a `Last-Modified`, answers 304 to a
//! matching conditional GET, and every request it receives is logged (path and validators),
//! so that a test can prove a fetch happened, was conditional, or never happened at all.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub path: String,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    /// The status it answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    /// path -> (body, version number for ETag / Last-Modified)
    files: HashMap<String, (Bytes, u32)>,
    hits: Vec<Hit>,
}

pub struct CrlServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CrlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CrlServer {
    /// Serve on 127.0.0.1, on `port` (0: any).
    pub async fn start_on(port: u16) -> CrlServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        CrlServer { addr, state, task }
    }

    pub async fn start() -> CrlServer {
        CrlServer::start_on(0).await
    }

    /// `http://127.0.0.1:port/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Publish `body` at `/path` (a new version: new ETag and Last-Modified).
    pub fn publish(&self, path: &str, body: impl Into<Bytes>) {
        let mut s = self.state.lock().unwrap();
        let key = format!("/{}", path.trim_start_matches('/'));
        let version = s.files.get(&key).map_or(1, |(_, v)| v + 1);
        s.files.insert(key, (body.into(), version));
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Requests for `/path` so far.
    pub fn hits_for(&self, path: &str) -> Vec<Hit> {
        let key = format!("/{}", path.trim_start_matches('/'));
        self.hits().into_iter().filter(|h| h.path == key).collect()
    }
}

fn etag(version: u32) -> String {
    format!("\"v{version}\"")
}

fn last_modified(version: u32) -> String {
    // A distinct, valid HTTP date per version.
    format!(
        "Mon, 01 Jan 2024 00:{:02}:{:02} GMT",
        version / 60 % 60,
        version % 60
    )
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut s = state.lock().unwrap();
    let path = req.uri().path().to_owned();
    let (status, response) = match s.files.get(&path) {
        None => (
            404,
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
        Some((_, v)) if header("if-none-match").as_deref() == Some(etag(*v).as_str()) => (
            304,
            Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("etag", etag(*v))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
        Some((body, v)) => (
            200,
            Response::builder()
                .header("content-type", "application/pkix-crl")
                .header("etag", etag(*v))
                .header("last-modified", last_modified(*v))
                .body(Full::new(body.clone()))
                .unwrap(),
        ),
    };
    s.hits.push(Hit {
        path,
        if_none_match: header("if-none-match"),
        if_modified_since: header("if-modified-since"),
        status,
    });
    Ok(response)
}
