//! Test clients: hyper over tokio-rustls with a client certificate, HTTP/1.1 or HTTP/2,
//! one connection per `Conn` so tests can reuse it (keep-alive) or open fresh ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// A client TLS config trusting `ca` that presents `chain` but signs the handshake with
/// `key`, which need not belong to the chain's leaf: a client holding a certificate without
/// its private key. (`with_client_auth_cert` would refuse the mismatched pair.)
pub fn mismatched_key_config(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(FixedClientCert(certified)));
    Arc::new(config)
}

/// Always presents the same certificate and key.
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How long a client waits for the server's verdict before the test fails. Generous: the
/// machine running the tests may be loaded, and a verdict, not a timeout, ends every wait.
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(10);

/// Open a TLS connection; `Err` carries the handshake error.
///
/// `Ok` does not mean the server admitted the client: in TLS 1.3 the client's handshake is
/// complete before the server has judged its certificate, and a rejection arrives as an alert
/// on the client's first read. Use [`admitted`] or [`request_once`] to learn the verdict.
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The HTTP/2 client connection preface followed by an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the server admits the client `config` presents, learnt without sending a request
/// (so nothing reaches routes, the upstream or the request metrics).
///
/// The probe negotiates HTTP/2 (whatever ALPN `config` asks for), sends the client
/// connection preface and waits for the server's first frame: an admitted client gets the
/// server's SETTINGS; a rejected one gets the TLS alert, a reset or EOF, during the handshake
/// (TLS 1.2) or on its first read (TLS 1.3). Panics when neither arrives within
/// [`VERDICT_TIMEOUT`], so a slow machine cannot turn a rejection into "admitted".
pub async fn admitted(
    addr: SocketAddr,
    config: &rustls::ClientConfig,
    sni: &str,
) -> Result<(), std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let probe = async {
        let mut tls = connect_tls(addr, Arc::new(config), sni).await?;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the admission probe needs a listener that offers h2"
        );
        tls.write_all(H2_PREFACE).await?;
        tls.flush().await?;
        // A frame header: 3 bytes length, 1 byte type (4 = SETTINGS), flags, stream id.
        let mut header = [0u8; 9];
        tls.read_exact(&mut header).await?;
        assert_eq!(
            header[3], 0x4,
            "an admitted client's first frame is the server's SETTINGS"
        );
        Ok(())
    };
    tokio::time::timeout(VERDICT_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| panic!("no verdict from the server within {VERDICT_TIMEOUT:?}"))
}

/// Send `req` on a fresh connection and return the response status, or the error that
/// ended the handshake or the connection (a TLS 1.3 rejection surfaces here, as the request
/// fails). Panics when neither arrives within [`VERDICT_TIMEOUT`].
pub async fn request_once(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    req: Request<ReqBody>,
) -> Result<u16, String> {
    let attempt = async {
        let mut conn = Conn::open(addr, config, sni)
            .await
            .map_err(|e| e.to_string())?;
        let resp = conn.send(req).await.map_err(|e| e.to_string())?;
        Ok(read(resp).await.0)
    };
    tokio::time::timeout(VERDICT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| panic!("no response or error within {VERDICT_TIMEOUT:?}"))
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
    ///
    /// For clients expected to be admitted: with TLS 1.3 a rejection only surfaces on the
    /// first request (see [`connect_tls`]).
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

    /// A handle for concurrent requests on this HTTP/2 connection.
    pub fn h2(&self) -> hyper::client::conn::http2::SendRequest<ReqBody> {
        match &self.sender {
            Sender::H2(s) => s.clone(),
            Sender::H1(_) => panic!("not an HTTP/2 connection"),
        }
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
