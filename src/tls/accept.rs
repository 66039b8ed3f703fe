//! The server side of one handshake: under its deadline, it yields an established
//! connection with the admission the verifier recorded (a resumed session is verified again)
//! and the identity, or a failure classified into one SPEC 6 outcome.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::Acceptor;
use rustls_pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::{Outcome, Rejection, ServerTls};
use crate::identity::{Admission, Identity};

/// A handshake that succeeded: the TLS stream, the client's identity, the SNI it sent
/// (lower-case, without a trailing dot) and whether it negotiated HTTP/2.
pub struct Established<IO> {
    pub stream: tokio_rustls::server::TlsStream<IO>,
    pub sni: Option<String>,
    pub identity: Identity,
    pub http2: bool,
}

/// A handshake that failed, classified (SPEC 3 and 6): `rejection.trust` is the source that
/// decided it (`None` is the `none` label).
pub struct Failed {
    pub sni: Option<String>,
    pub rejection: Rejection,
}

impl Failed {
    /// A handshake ended to give its `max_connections` slot to a new connection (counted as a
    /// `timeout`: it had not finished in the time it was given).
    pub fn evicted() -> Self {
        let detail = "handshake ended at max_connections to make room for a new connection";
        Failed::new(None, None, Outcome::Timeout, detail.to_owned())
    }

    fn new(sni: Option<String>, trust: Option<Arc<str>>, outcome: Outcome, detail: String) -> Self {
        Failed {
            sni,
            rejection: Rejection {
                trust,
                outcome,
                detail,
                deny_reason: None,
            },
        }
    }
}

/// Run the server side of a handshake on `io` with `tls`, all of it within `timeout`.
pub async fn accept<IO>(
    tls: &ServerTls,
    timeout: Duration,
    io: IO,
) -> Result<Established<IO>, Failed>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = |sni: Option<String>| {
        let detail = format!("handshake not complete within {timeout:?}");
        Failed::new(sni, None, Outcome::Timeout, detail)
    };
    let start =
        match tokio::time::timeout_at(deadline, LazyConfigAcceptor::new(Acceptor::default(), io))
            .await
        {
            Err(_) => return Err(timed_out(None)),
            Ok(Err(e)) => {
                let (trust, outcome) = classify_failure(None, rustls_error(&e));
                return Err(Failed::new(None, trust, outcome, e.to_string()));
            }
            Ok(Ok(start)) => start,
        };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    let (config, record) = tls.for_connection();
    let stream = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Err(_) => return Err(timed_out(sni)),
        Ok(Err(e)) => {
            let recorded = record.get();
            let (trust, outcome) = classify_failure(recorded.clone(), rustls_error(&e));
            let detail = match recorded {
                Some(Err(rejection)) => rejection.detail,
                _ => e.to_string(),
            };
            return Err(Failed::new(sni, trust, outcome, detail));
        }
        Ok(Ok(stream)) => stream,
    };
    let conn = stream.get_ref().1;
    let http2 = conn.alpn_protocol() == Some(b"h2");
    let chain: Vec<_> = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let Some((leaf, intermediates)) = chain.split_first() else {
        let detail = "no client certificate".to_owned();
        return Err(Failed::new(sni, None, Outcome::NoClientCert, detail));
    };
    // The verifier recorded which source admitted the client. A resumed session (only when
    // session_resumption is on) skipped the verifier, so verify again against this snapshot.
    let admission = match record.get() {
        Some(Ok(a)) => a,
        _ => match tls.verifier().verify(leaf, intermediates, UnixTime::now()) {
            Ok(a) => a,
            Err(rejection) => return Err(Failed { sni, rejection }),
        },
    };
    let cert = match tls.certs().get_or_parse(&chain) {
        Ok(cert) => cert,
        Err(e) => return Err(Failed::new(sni, None, Outcome::InvalidCert, e.to_string())),
    };
    Ok(Established {
        stream,
        sni,
        identity: Identity::new(admission, cert),
        http2,
    })
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Map a failed handshake to its outcome: the verifier's own record when it rejected the
/// certificate, otherwise the rustls error (no certificate, protocol errors).
pub fn classify_failure(
    record: Option<Result<Admission, Rejection>>,
    err: Option<&rustls::Error>,
) -> (Option<Arc<str>>, Outcome) {
    match (record, err) {
        (Some(Err(r)), _) => (r.trust, r.outcome),
        (Some(Ok(a)), Some(e)) => (Some(a.trust), Outcome::from_rustls_error(e)),
        (None, Some(e)) => (None, Outcome::from_rustls_error(e)),
        (Some(Ok(a)), None) => (Some(a.trust), Outcome::ProtocolError),
        (None, None) => (None, Outcome::ProtocolError),
    }
}

#[cfg(test)]
mod tests {
    //! The handshake outcomes that only this module produces (`timeout`, and `protocol_error`
    //! before a ClientHello), in memory over a duplex pipe, with tokio's clock paused.
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn server_tls(dir: &std::path::Path) -> ServerTls {
        crate::devpki::write(&dir.join("pki"), false).expect("dev PKI");
        let yaml = "listen:\n  cert: pki/server.crt\n  key: pki/server.key\n\
                    trust:\n  internal:\n    ca: pki/ca.crt\n";
        let config = crate::config::Config::from_yaml(yaml, &dir.join("certguard.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let verifier =
            crate::tls::TrustVerifier::new(&config.trust).unwrap_or_else(|e| panic!("{e}"));
        ServerTls::new(&config.listen, Arc::new(verifier)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first flight of a TLS client offering SNI `localhost`.
    fn client_hello() -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    async fn outcome(tls: &ServerTls, first_bytes: &[u8]) -> Failed {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(first_bytes).await.expect("write");
        // `client` stays open and silent: the server must give up on its own.
        match accept(tls, Duration::from_secs(3), server).await {
            Ok(_) => panic!("the handshake cannot succeed"),
            Err(f) => f,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = server_tls(dir.path());
        let started = tokio::time::Instant::now();
        let f = outcome(&tls, b"").await;
        assert_eq!(
            (f.rejection.outcome, f.rejection.trust, f.sni),
            (Outcome::Timeout, None, None)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stalling_after_its_hello_times_out_with_its_sni() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = server_tls(dir.path());
        let f = outcome(&tls, &client_hello()).await;
        assert_eq!(f.rejection.outcome, Outcome::Timeout);
        assert_eq!(f.sni.as_deref(), Some("localhost"));
        assert_eq!(f.rejection.outcome.as_str(), "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn plain_http_on_the_tls_port_is_a_protocol_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = server_tls(dir.path());
        let f = outcome(&tls, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert_eq!(
            (f.rejection.outcome, f.rejection.trust),
            (Outcome::ProtocolError, None)
        );
        assert_eq!(f.rejection.outcome.as_str(), "protocol_error");
    }

    #[test]
    fn classify_failure_without_record() {
        assert_eq!(
            classify_failure(None, Some(&rustls::Error::NoCertificatesPresented)),
            (None, Outcome::NoClientCert)
        );
        assert_eq!(
            classify_failure(None, Some(&rustls::Error::DecryptError)),
            (None, Outcome::ProtocolError)
        );
        assert_eq!(classify_failure(None, None), (None, Outcome::ProtocolError));
        assert_eq!(
            classify_failure(
                None,
                Some(&rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked
                ))
            ),
            (None, Outcome::Revoked)
        );
        let rej = Rejection {
            trust: Some("internal".into()),
            outcome: Outcome::LifetimeExceeded,
            detail: String::new(),
            deny_reason: None,
        };
        let err =
            rustls::Error::InvalidCertificate(Outcome::LifetimeExceeded.to_certificate_error());
        assert_eq!(
            classify_failure(Some(Err(rej)), Some(&err)),
            (Some("internal".into()), Outcome::LifetimeExceeded)
        );
    }
}
