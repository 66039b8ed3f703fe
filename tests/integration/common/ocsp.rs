//! A real OCSP responder for the tests: an HTTP server on 127.0.0.1:0 that answers each POST by
//! running `openssl ocsp` once on the request (`-reqin`/`-respout`) against an index file in
//! the `openssl ca` format. (`openssl ocsp -port` would listen on every interface in OpenSSL
//! 3.0, so it is not used.) The index can be changed at run time; the server counts requests
//! and can hold its answers back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use certguard::devpki::{TestCa, TestCert};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Who signs the responses: a certificate and its key, PEM.
pub struct Signer<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

impl<'a> Signer<'a> {
    /// The issuing CA itself.
    pub fn ca(ca: &'a TestCa, key_pem: &'a str) -> Signer<'a> {
        Signer {
            cert_pem: &ca.cert_pem,
            key_pem,
        }
    }

    /// A responder certificate (whatever its issuer and EKU).
    pub fn cert(cert: &'a TestCert) -> Signer<'a> {
        Signer {
            cert_pem: &cert.cert_pem,
            key_pem: &cert.key_pem,
        }
    }
}

pub struct Responder {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    dir: tempfile::TempDir,
    /// Extra `openssl ocsp` arguments (e.g. `-ndays 1`, `-resp_no_certs`).
    args: Vec<String>,
    /// Serial (upper-case hex) -> revocation time, `None` for valid.
    index: Mutex<BTreeMap<String, Option<OffsetDateTime>>>,
    requests: AtomicUsize,
    /// Answers wait while this is true.
    held: watch::Sender<bool>,
    next_file: AtomicUsize,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Start a responder for certificates issued by `issuer`, signing with `signer`, with
    /// `args` added to every `openssl ocsp` run. The index starts empty: every serial is
    /// `unknown` until [`Responder::good`] or [`Responder::revoke`].
    pub async fn start(issuer: &TestCa, signer: Signer<'_>, args: &[&str]) -> Responder {
        openssl_available();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("issuer.pem"), &issuer.cert_pem).unwrap();
        std::fs::write(dir.path().join("signer.pem"), signer.cert_pem).unwrap();
        std::fs::write(dir.path().join("signer.key"), signer.key_pem).unwrap();
        let state = Arc::new(State {
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            index: Mutex::new(BTreeMap::new()),
            requests: AtomicUsize::new(0),
            held: watch::channel(false).0,
            next_file: AtomicUsize::new(0),
        });
        state.write_index();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Responder { addr, state, task }
    }

    /// The URL to POST requests to.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Mark `cert` valid in the index.
    pub fn good(&self, cert: &TestCert) {
        self.set(cert, None);
    }

    /// Mark `cert` revoked (a minute ago) in the index; the next answer says so.
    pub fn revoke(&self, cert: &TestCert) {
        self.set(
            cert,
            Some(OffsetDateTime::now_utc() - time::Duration::minutes(1)),
        );
    }

    fn set(&self, cert: &TestCert, revoked: Option<OffsetDateTime>) {
        self.state
            .index
            .lock()
            .unwrap()
            .insert(serial_hex(&cert.serial), revoked);
        self.state.write_index();
    }

    /// POST requests received so far (counted on arrival, before any answer).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Hold answers back until [`Responder::release`]: requests are still received and counted.
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    /// Answer held and future requests.
    pub fn release(&self) {
        self.state.held.send_replace(false);
    }

    /// Wait (up to 10 s) until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.requests() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the responder got {} requests, expected {n}",
                self.requests()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Answer one DER request directly with `openssl ocsp`, bypassing HTTP (not counted).
    pub fn respond(&self, req: &[u8]) -> Vec<u8> {
        self.state.respond(req).unwrap()
    }
}

impl State {
    /// Rewrite index.txt (atomically: an `openssl` run may be reading it).
    fn write_index(&self) {
        let expiry = stamp(OffsetDateTime::now_utc() + time::Duration::days(365));
        let mut text = String::new();
        for (serial, revoked) in self.index.lock().unwrap().iter() {
            // The DN column must be unique per line (`unique_subject` defaults to yes).
            match revoked {
                None => text.push_str(&format!("V\t{expiry}\t\t{serial}\tunknown\t/CN={serial}\n")),
                Some(at) => text.push_str(&format!(
                    "R\t{expiry}\t{}\t{serial}\tunknown\t/CN={serial}\n",
                    stamp(*at)
                )),
            }
        }
        let tmp = self.dir.path().join("index.txt.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("index.txt")).unwrap();
    }

    fn respond(&self, req: &[u8]) -> Result<Vec<u8>, String> {
        let n = self.next_file.fetch_add(1, Ordering::SeqCst);
        let dir = self.dir.path();
        let reqin = dir.join(format!("req-{n}.der"));
        let respout = dir.join(format!("resp-{n}.der"));
        std::fs::write(&reqin, req).map_err(|e| e.to_string())?;
        let out = Command::new("openssl")
            .arg("ocsp")
            .arg("-index")
            .arg(dir.join("index.txt"))
            .arg("-CA")
            .arg(dir.join("issuer.pem"))
            .arg("-rsigner")
            .arg(dir.join("signer.pem"))
            .arg("-rkey")
            .arg(dir.join("signer.key"))
            .arg("-reqin")
            .arg(&reqin)
            .arg("-respout")
            .arg(&respout)
            .args(&self.args)
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl ocsp failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::read(&respout).map_err(|e| e.to_string())
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/ocsp-response")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, Vec::new());
    }
    if req.uri().path() != "/" {
        return reply(StatusCode::NOT_FOUND, Vec::new());
    }
    let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
        return reply(StatusCode::BAD_REQUEST, Vec::new());
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut held = state.held.subscribe();
    let _ = held.wait_for(|h| !*h).await;
    let body = body.to_bytes();
    let worker = state.clone();
    match tokio::task::spawn_blocking(move || worker.respond(&body)).await {
        Ok(Ok(resp)) => reply(StatusCode::OK, resp),
        Ok(Err(e)) => {
            eprintln!("test OCSP responder: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
        }
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, Vec::new()),
    }
}

/// A URL on 127.0.0.1 where nothing listens (connection refused).
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

/// A serial number as `openssl ca` writes it in an index: upper-case hex of its bytes.
pub fn serial_hex(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02X}")).collect()
}

/// An index date: YYMMDDHHMMSSZ.
fn stamp(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year repr:last_two][month][day][hour][minute][second]Z"
    );
    t.format(&f).unwrap()
}

/// `openssl` must be on PATH (.ci/run installs it): fail loudly rather than skip.
pub fn openssl_available() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the OCSP tests need the openssl command (apt-get install openssl)"
    );
}

/// Run `openssl` with `args` in `dir` and return its stdout (panics on failure).
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Write `contents` to `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
