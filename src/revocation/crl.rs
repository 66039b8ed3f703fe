//! CRLs over HTTP (SPEC 9.2), the mechanics: one conditional GET under a timeout and a size
//! cap, the checks a fetched CRL must pass before it is used (it parses, it is signed by one
//! of the source's CA certificates, it is not older than the one in use), the store of the
//! CRLs in use, and the on-disk cache that lets a restart serve before the first fetch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer;

use crate::config::pki::parse_crls;
use crate::config::CrlFile;

/// The longest one fetch may take (SPEC 9.2).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest CRL accepted (SPEC 9.2).
pub const MAX_CRL_BYTES: usize = 64 * 1024 * 1024;

/// Why a fetch produced no CRL to use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS or protocol failure, or a timeout.
    #[error("fetch failed: {0}")]
    Http(String),
    /// Any answer but 200 or 304.
    #[error("HTTP status {0}")]
    Status(u16),
    /// More than [`MAX_CRL_BYTES`].
    #[error("larger than {MAX_CRL_BYTES} bytes")]
    TooLarge,
    /// The body is not one usable CRL.
    #[error("not a usable CRL: {0}")]
    Invalid(String),
    /// Not signed by any of the source's CA certificates.
    #[error("signature does not verify against the source's CA certificates: {0}")]
    Signature(String),
    /// Older than the CRL in use (by CRL number, else thisUpdate).
    #[error("older than the CRL in use")]
    Older,
}

impl FetchError {
    /// The `result` label of `certguard_crl_fetches_total`: the server could not be used
    /// (`failed`), or what it sent was not taken (`rejected`).
    pub fn result(&self) -> &'static str {
        match self {
            FetchError::Http(_) | FetchError::Status(_) | FetchError::TooLarge => "failed",
            FetchError::Invalid(_) | FetchError::Signature(_) | FetchError::Older => "rejected",
        }
    }
}

/// A CRL fetched from a URL and in use.
#[derive(Debug)]
pub struct Fetched {
    pub url: String,
    /// The CRL; its `path` is the URL (its last segment is the `file` label).
    pub crl: CrlFile,
    /// Validators for the next conditional GET.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// When it was last fetched or confirmed unchanged (Unix seconds).
    pub checked_at: i64,
    /// The CA certificate its signature verified with (the next version must verify too).
    pub signer: CertificateDer<'static>,
}

/// What one GET brought.
pub enum Got {
    /// 304: the CRL in use is still current.
    NotModified,
    /// 200 with a body.
    Body {
        body: Bytes,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// The HTTP(S) client for CRLs: `http://`, and `https://` verified against the system roots.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for [`get`].
pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let tls = match builder.with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            // No system roots (a minimal image): https:// CRL URLs will fail, http:// works.
            tracing::warn!(error = %e, "no system root certificates: https:// CRL URLs cannot be verified");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(empty_roots_config())
        }
    };
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

fn empty_roots_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// GET `url`, conditional on the validators of `previous`, within [`FETCH_TIMEOUT`] and
/// [`MAX_CRL_BYTES`].
pub async fn get(
    client: &HttpClient,
    url: &str,
    previous: Option<&Fetched>,
) -> Result<Got, FetchError> {
    let attempt = async {
        let mut req = Request::get(url);
        if let Some(p) = previous {
            if let Some(etag) = &p.etag {
                req = req.header(IF_NONE_MATCH, etag.as_str());
            }
            if let Some(lm) = &p.last_modified {
                req = req.header(IF_MODIFIED_SINCE, lm.as_str());
            }
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| FetchError::Http(error_chain(&e)))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => return Ok(Got::NotModified),
            StatusCode::OK => {}
            other => return Err(FetchError::Status(other.as_u16())),
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > MAX_CRL_BYTES {
                    return Err(FetchError::TooLarge);
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(Got::Body {
            body: Bytes::from(buf),
            etag,
            last_modified,
        })
    };
    tokio::time::timeout(FETCH_TIMEOUT, attempt)
        .await
        .map_err(|_| FetchError::Http(format!("no complete answer within {FETCH_TIMEOUT:?}")))?
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Check a fetched body before it is used: exactly one CRL that the verifier can use, signed
/// by one of `issuers` (the source's anchors and intermediates), and not older than
/// `current`.
pub fn check(
    url: &str,
    body: &[u8],
    issuers: &[CertificateDer<'_>],
    current: Option<&CrlFile>,
) -> Result<(CrlFile, CertificateDer<'static>), FetchError> {
    let mut crls = parse_crls(Path::new(url), body).map_err(FetchError::Invalid)?;
    if crls.len() != 1 {
        return Err(FetchError::Invalid(format!(
            "{} CRLs in one answer, expected one",
            crls.len()
        )));
    }
    let crl = crls.remove(0);
    let signer = verify_signature(&crl, issuers)?;
    if let Some(current) = current {
        if current.is_newer_than(&crl) {
            return Err(FetchError::Older);
        }
    }
    Ok((crl, signer))
}

/// The CRL's signature, by a certificate among `issuers` whose subject is the CRL's issuer.
fn verify_signature(
    crl: &CrlFile,
    issuers: &[CertificateDer<'_>],
) -> Result<CertificateDer<'static>, FetchError> {
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl.der.as_ref())
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
    let mut tried = false;
    for issuer in issuers {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(issuer.as_ref()) else {
            continue;
        };
        if cert.subject().as_raw() != crl.issuer_raw.as_slice() {
            continue;
        }
        tried = true;
        if parsed.verify_signature(cert.public_key()).is_ok() {
            return Ok(issuer.clone().into_owned());
        }
    }
    Err(FetchError::Signature(if tried {
        format!("no certificate named {} verifies it", crl.issuer)
    } else {
        format!("the source has no CA certificate named {}", crl.issuer)
    }))
}

/// The file base name a URL's CRL is labelled with: the last segment of its path.
pub fn label(url: &str) -> String {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let path = path.split_once('/').map_or("", |(_, p)| p);
    path.rsplit('/').next().unwrap_or("").to_owned()
}

/// The CRLs fetched from URLs, per (trust source, URL). Shared by every snapshot: a reload
/// keeps them.
#[derive(Debug, Default)]
pub struct Store {
    map: Mutex<HashMap<(String, String), Arc<Fetched>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// The CRL in use for `url` of `source`.
    pub fn get(&self, source: &str, url: &str) -> Option<Arc<Fetched>> {
        lock(&self.map)
            .get(&(source.to_owned(), url.to_owned()))
            .cloned()
    }

    /// Put `fetched` in use for `source`.
    pub fn put(&self, source: &str, fetched: Fetched) {
        lock(&self.map).insert((source.to_owned(), fetched.url.clone()), Arc::new(fetched));
    }

    /// Every CRL in use for `source`, among `urls`.
    pub fn for_urls<'a>(
        &self,
        source: &str,
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Arc<Fetched>> {
        let map = lock(&self.map);
        urls.into_iter()
            .filter_map(|u| map.get(&(source.to_owned(), u.to_owned())).cloned())
            .collect()
    }
}

/// Where the cached CRL of `url` lives under `dir`: named by the SHA-256 of the URL.
pub fn cache_path(dir: &Path, url: &str) -> PathBuf {
    dir.join(format!(
        "{}.crl",
        crate::certs::hex_lower(&crate::certs::sha256(url.as_bytes()))
    ))
}

/// The cached CRL of `url` (as it was fetched), if any.
pub fn read_cache(dir: &Path, url: &str) -> Option<Vec<u8>> {
    crate::config::read_file(&cache_path(dir, url)).ok()
}

/// Keep `body` as the cached CRL of `url`: written to a temporary file and renamed, so a
/// crash never leaves half a CRL behind.
pub fn write_cache(dir: &Path, url: &str, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = cache_path(dir, url);
    let tmp = path.with_extension("crl.tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::TestCa;
    use time::{Duration as TimeDuration, OffsetDateTime};

    fn crl(ca: &TestCa, age_minutes: i64) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        ca.crl(
            &[],
            now - TimeDuration::minutes(age_minutes),
            now + TimeDuration::days(1),
        )
        .unwrap()
        .as_ref()
        .to_vec()
    }

    #[test]
    fn a_fetched_crl_must_be_signed_by_the_source_and_not_older() {
        let root = TestCa::root("root").unwrap();
        let inter = root.intermediate("inter").unwrap();
        let other = TestCa::root("inter").unwrap(); // same name, another key
        let issuers = [root.cert.clone(), inter.cert.clone()];
        let url = "http://pki.internal/inter.crl";
        let (old, signer) = check(url, &crl(&inter, 10), &issuers, None).unwrap();
        assert_eq!(signer, inter.cert);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (new, _) = check(url, &crl(&inter, 5), &issuers, Some(&old)).unwrap();
        assert!(new.is_newer_than(&old));
        assert!(matches!(
            check(url, old.der.as_ref(), &issuers, Some(&new)),
            Err(FetchError::Older)
        ));
        // The same CRL again is not older.
        assert!(check(url, new.der.as_ref(), &issuers, Some(&new)).is_ok());
        let forged = check(url, &crl(&other, 1), &issuers, None).unwrap_err();
        assert!(matches!(forged, FetchError::Signature(_)), "{forged}");
        assert_eq!(forged.result(), "rejected");
        let stranger = TestCa::root("stranger").unwrap();
        assert!(matches!(
            check(url, &crl(&stranger, 1), &issuers, None),
            Err(FetchError::Signature(_))
        ));
        for garbage in [
            &b""[..],
            b"not a crl",
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        ] {
            let e = check(url, garbage, &issuers, None).unwrap_err();
            assert!(matches!(e, FetchError::Invalid(_)), "{e}");
        }
        // Two CRLs in one answer.
        let two = format!(
            "{}{}",
            inter
                .crl_pem(
                    &[],
                    OffsetDateTime::now_utc(),
                    OffsetDateTime::now_utc() + TimeDuration::days(1)
                )
                .unwrap(),
            root.crl_pem(
                &[],
                OffsetDateTime::now_utc(),
                OffsetDateTime::now_utc() + TimeDuration::days(1)
            )
            .unwrap()
        );
        assert!(matches!(
            check(url, two.as_bytes(), &issuers, None),
            Err(FetchError::Invalid(_))
        ));
    }

    #[test]
    fn labels_are_the_last_path_segment() {
        assert_eq!(
            label("http://pki.internal/a/intermediate.crl"),
            "intermediate.crl"
        );
        assert_eq!(label("https://pki.internal/x.crl?v=2"), "x.crl");
        assert_eq!(label("http://pki.internal"), "");
        assert_eq!(label("http://pki.internal/"), "");
    }

    #[test]
    fn the_cache_round_trips_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let url = "http://pki.internal/inter.crl";
        assert!(read_cache(dir.path(), url).is_none());
        write_cache(&dir.path().join("sub"), url, b"bytes").unwrap();
        assert_eq!(read_cache(&dir.path().join("sub"), url).unwrap(), b"bytes");
        assert!(read_cache(&dir.path().join("sub"), "http://other/").is_none());
    }
}
