//! Test clients: hyper over tokio-rustls with a client certificate, HTTP/1.1 or HTTP/2,
//! one connection per `Conn` so tests can reuse it (keep-alive) or open fresh ones.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

pub fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A client TLS config trusting `ca` and presenting `cert`/`key` (or no certificate).
pub fn tls_config(
    ca: &CertificateDer<'static>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Open a TLS connection; `Err` carries the handshake error as text (for assertions).
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        // An HTTP/2 server speaks first (SETTINGS); a rejection surfaces on the first request.
        return Ok(tls);
    }
    // In TLS 1.3 the server's verdict on the client certificate arrives after the client's
    // handshake finished: read once (with a short timeout) so that a rejection surfaces here.
    use tokio::io::AsyncReadExt;
    let mut probe = [0u8; 1];
    match tokio::time::timeout(std::time::Duration::from_millis(300), tls.read(&mut probe)).await {
        Err(_) => Ok(tls),
        Ok(Ok(0)) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed by server",
        )),
        Ok(Ok(_)) => panic!("server sent application data before any request"),
        Ok(Err(e)) => Err(e),
    }
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// One client connection to the proxy.
pub struct Conn {
    sender: Sender,
    pub http2: bool,
}

impl Conn {
    /// Connect and speak HTTP/2 if the server selected it over ALPN, else HTTP/1.1.
    pub async fn open(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Result<Conn, std::io::Error> {
        let tls = connect_tls(addr, config, sni).await?;
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let sender = if http2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn.with_upgrades());
            Sender::H1(s)
        };
        Ok(Conn { sender, http2 })
    }

    pub async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// GET `path` with Host `host`; returns status and body text.
    pub async fn get(&mut self, host: &str, path: &str) -> (u16, String) {
        let req = if self.http2 {
            Request::get(format!("https://{host}{path}"))
                .body(empty())
                .unwrap()
        } else {
            Request::get(path)
                .header("host", host)
                .body(empty())
                .unwrap()
        };
        let resp = self.send(req).await.expect("request failed");
        read(resp).await
    }
}

pub async fn read(resp: Response<Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
