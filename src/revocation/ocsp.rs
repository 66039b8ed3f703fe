//! Client OCSP (SPEC 9.3), the protocol layer: build an RFC 6960 request for a leaf, ask a
//! responder over HTTP POST, check the response it sends back, and cache answers with one
//! fetch in flight per certificate.
//!
//! Nothing here knows the config, the verifier or the metrics: callers pass the trust source
//! name, the responder URL, the timeout and `cache_max`. The pieces compose as
//!
//! ```text
//! let der = ocsp::request(leaf, issuer)?;
//! let answer = cache.status(&key, async move {
//!     let body = ocsp::ask(&client, url, der, timeout).await?;
//!     ocsp::check_response(&body, &leaf, &issuer, UnixTime::now())
//! }).await;
//! ```
//!
//! What [`check_response`] accepts: a `successful` OCSPResponse carrying a BasicOCSPResponse
//! whose signature verifies either with the issuer's key, or with a certificate included in
//! the response that the issuer signed directly, that has EKU id-kp-OCSPSigning and that is
//! valid now (checked by webpki with the issuer as its only anchor); a SingleResponse whose
//! CertID (SHA-1 or SHA-256) names this leaf; a thisUpdate no more than [`CLOCK_SKEW`] in the
//! future and a nextUpdate, if any, not yet passed. Requests carry no nonce: responders that
//! pre-sign their answers ignore nonces, and one answer serves every handshake until it is
//! due. So a captured answer can be replayed until its nextUpdate (or, without one, until
//! `cache_max` after its thisUpdate: [`Cache`] refuses an older `good` or `unknown`); that is
//! the usual OCSP trade-off. The responder certificate's own
//! revocation status is not checked (RFC 6960 4.2.2.2.1 leaves that to policy).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use der::asn1::{AnyRef, BitStringRef, Int, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use tokio::sync::watch;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    CertId, OcspGeneralizedTime, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    ResponseData, TbsRequest,
};

/// How far in the future a response's thisUpdate may be (the responder's clock may run ahead
/// of ours), in seconds.
pub const CLOCK_SKEW: i64 = 300;

/// The largest response body [`ask`] reads; a bigger one is [`OcspError::TooLarge`].
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Included certificates tried as the signer, in order (responders send one, sometimes with
/// its issuer): a response stuffed with certificates costs at most this many verifications.
const MAX_SIGNER_CANDIDATES: usize = 4;

const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-kp-OCSPSigning; a `static` so webpki can borrow its encoding for `'static`.
static ID_KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");

/// A certificate's revocation status as the responder gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked (RFC 6960: the responder knows of no revocation).
    Good,
    /// Revoked at this time (Unix seconds).
    Revoked { at: i64 },
    /// The responder does not know this certificate.
    Unknown,
}

/// A checked answer for one certificate. Times are Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: CertStatus,
    /// When the responder last knew the status to be correct.
    pub this_update: i64,
    /// When newer information will be available; `None`: at any time.
    pub next_update: Option<i64>,
}

/// Which certificate of the pair could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leaf,
    Issuer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leaf => "leaf",
            Role::Issuer => "issuer",
        })
    }
}

/// A responseStatus other than `successful` (RFC 6960 4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MalformedRequest,
    InternalError,
    TryLater,
    SigRequired,
    Unauthorized,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::MalformedRequest => "malformedRequest",
            Refusal::InternalError => "internalError",
            Refusal::TryLater => "tryLater",
            Refusal::SigRequired => "sigRequired",
            Refusal::Unauthorized => "unauthorized",
        })
    }
}

/// Why no valid answer was had. Every variant is the `error` result of SPEC 9.3; the text is
/// for logs. Cloneable so that every caller sharing one fetch gets the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    #[error("the {0} certificate cannot be parsed")]
    Certificate(Role),
    #[error("the leaf's issuer name is not the issuer certificate's subject")]
    IssuerMismatch,
    #[error("cannot encode the OCSP request: {0}")]
    Encode(der::Error),
    #[error("malformed OCSP response: {0}")]
    Malformed(der::Error),
    #[error("the responder refused: {0}")]
    Refused(Refusal),
    #[error("a successful OCSP response without responseBytes")]
    NoBody,
    #[error("OCSP response type {0} is not id-pkix-ocsp-basic")]
    NotBasic(ObjectIdentifier),
    #[error("the response has no answer for this certificate")]
    NoMatchingResponse,
    #[error("the response is signed with an unsupported algorithm")]
    UnsupportedSignatureAlgorithm,
    #[error(
        "the response signature verifies neither with the issuer's key nor with an included certificate"
    )]
    BadSignature,
    #[error("the response is signed by a certificate the issuer did not authorize for OCSP: {0}")]
    UnauthorizedSigner(webpki::Error),
    #[error("the response's thisUpdate ({this_update}) is in the future")]
    NotYetValid { this_update: i64 },
    #[error("the response's nextUpdate ({next_update}) has passed")]
    Expired { next_update: i64 },
    #[error(
        "the response has no nextUpdate and its thisUpdate ({this_update}) is older than cache_max"
    )]
    Stale { this_update: i64 },
    #[error("the responder URL is not an absolute http:// URL")]
    BadUrl,
    #[error("cannot connect to the responder: {}", chain(.0.as_ref()))]
    Unreachable(Arc<hyper_util::client::legacy::Error>),
    #[error("no response from the responder within {0:?}")]
    Timeout(Duration),
    #[error("the responder answered HTTP {0}")]
    HttpStatus(u16),
    #[error("the response body exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("the HTTP exchange with the responder failed: {}", chain(.0.as_ref()))]
    Transport(Arc<dyn std::error::Error + Send + Sync>),
    #[error("the fetch ended without an answer")]
    Abandoned,
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The hash a CertID is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashAlg {
    /// What responders, `openssl ocsp` included, expect by default.
    Sha1,
    Sha256,
}

impl HashAlg {
    fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlg::Sha1 => ID_SHA1,
            HashAlg::Sha256 => ID_SHA256,
        }
    }

    fn from_oid(oid: &ObjectIdentifier) -> Option<HashAlg> {
        [HashAlg::Sha1, HashAlg::Sha256]
            .into_iter()
            .find(|h| h.oid() == *oid)
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlg::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &aws_lc_rs::digest::SHA256,
        };
        aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// What a CertID is computed from: the issuer's subject DN and public key bits (exact DER, as
/// the responder hashes them), and the leaf's serial number.
struct Subject {
    issuer_name: Vec<u8>,
    issuer_key: Vec<u8>,
    serial: SerialNumber,
}

impl Subject {
    fn new(leaf: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> Result<Subject, OcspError> {
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| OcspError::Certificate(Role::Leaf))?;
        let (_, issuer) = x509_parser::parse_x509_certificate(issuer.as_ref())
            .map_err(|_| OcspError::Certificate(Role::Issuer))?;
        if leaf.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(OcspError::IssuerMismatch);
        }
        let serial = Int::new(leaf.raw_serial())
            .and_then(|i| i.to_der())
            .and_then(|der| SerialNumber::from_der(&der))
            .map_err(|_| OcspError::Certificate(Role::Leaf))?;
        Ok(Subject {
            issuer_name: issuer.subject().as_raw().to_vec(),
            issuer_key: issuer.public_key().subject_public_key.data.to_vec(),
            serial,
        })
    }

    fn cert_id(&self, alg: HashAlg) -> Result<CertId, OcspError> {
        Ok(CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: alg.oid(),
                parameters: Some(Null.into()),
            },
            issuer_name_hash: OctetString::new(alg.digest(&self.issuer_name))
                .map_err(OcspError::Encode)?,
            issuer_key_hash: OctetString::new(alg.digest(&self.issuer_key))
                .map_err(OcspError::Encode)?,
            serial_number: self.serial.clone(),
        })
    }

    /// Whether `id` names this certificate (any hash algorithm we know; parameters of the
    /// hash AlgorithmIdentifier, NULL or absent, do not matter).
    fn matches(&self, id: &CertId) -> bool {
        let Some(alg) = HashAlg::from_oid(&id.hash_algorithm.oid) else {
            return false;
        };
        id.serial_number == self.serial
            && id.issuer_name_hash.as_bytes() == alg.digest(&self.issuer_name).as_slice()
            && id.issuer_key_hash.as_bytes() == alg.digest(&self.issuer_key).as_slice()
    }
}

/// The first OCSP responder URL in `leaf`'s Authority Information Access extension, if any
/// (whatever its scheme: [`ask`] accepts only `http://`). `None` also for a certificate that
/// cannot be parsed.
pub fn responder_url(leaf: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let url = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                aia.iter()
                    .find_map(|desc| match (&desc.access_method, &desc.access_location) {
                        (method, GeneralName::URI(uri))
                            if *method
                                == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP =>
                        {
                            Some(uri.to_string())
                        }
                        _ => None,
                    })
            }
            _ => None,
        });
    url
}

/// A DER OCSPRequest (RFC 6960 4.1) asking for `leaf`'s status: one CertID made with SHA-1
/// from `issuer` (the certificate that signed `leaf`), no nonce, unsigned.
pub fn request(
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
) -> Result<Vec<u8>, OcspError> {
    request_with(leaf, issuer, HashAlg::Sha1)
}

fn request_with(
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
    alg: HashAlg,
) -> Result<Vec<u8>, OcspError> {
    let req_cert = Subject::new(leaf, issuer)?.cert_id(alg)?;
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(OcspError::Encode)
}

/// BasicOCSPResponse with its signed part kept as received: the signature covers those exact
/// bytes, so they are verified as they came, never re-encoded.
#[derive(Sequence)]
struct RawBasic<'a> {
    tbs_response_data: AnyRef<'a>,
    signature_algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    certs: Option<Vec<AnyRef<'a>>>,
}

/// The signature algorithms responses may use: the rustls aws-lc-rs provider's (ECDSA P-256,
/// P-384 and P-521, Ed25519, RSA PKCS#1 and PSS with SHA-256/384/512).
fn algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    static ALGORITHMS: OnceLock<&'static [&'static dyn SignatureVerificationAlgorithm]> =
        OnceLock::new();
    ALGORITHMS.get_or_init(|| {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
    })
}

/// Check a DER OCSPResponse about `leaf` (issued by `issuer`) at time `now`, and return the
/// leaf's status. See the module documentation for everything that is checked.
pub fn check_response(
    der: &[u8],
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<Answer, OcspError> {
    let subject = Subject::new(leaf, issuer)?;
    let response = OcspResponse::from_der(der).map_err(OcspError::Malformed)?;
    let refusal = match response.response_status {
        OcspResponseStatus::Successful => None,
        OcspResponseStatus::MalformedRequest => Some(Refusal::MalformedRequest),
        OcspResponseStatus::InternalError => Some(Refusal::InternalError),
        OcspResponseStatus::TryLater => Some(Refusal::TryLater),
        OcspResponseStatus::SigRequired => Some(Refusal::SigRequired),
        OcspResponseStatus::Unauthorized => Some(Refusal::Unauthorized),
    };
    if let Some(refusal) = refusal {
        return Err(OcspError::Refused(refusal));
    }
    let bytes = response.response_bytes.ok_or(OcspError::NoBody)?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(OcspError::NotBasic(bytes.response_type));
    }
    let basic = RawBasic::from_der(bytes.response.as_bytes()).map_err(OcspError::Malformed)?;
    let tbs = basic
        .tbs_response_data
        .to_der()
        .map_err(OcspError::Malformed)?;
    let data = ResponseData::from_der(&tbs).map_err(OcspError::Malformed)?;
    verify_signer(&basic, &tbs, issuer, now)?;

    let single = data
        .responses
        .iter()
        .find(|r| subject.matches(&r.cert_id))
        .ok_or(OcspError::NoMatchingResponse)?;
    let status = match &single.cert_status {
        x509_ocsp::CertStatus::Good(_) => CertStatus::Good,
        x509_ocsp::CertStatus::Revoked(info) => CertStatus::Revoked {
            at: unix(&info.revocation_time),
        },
        x509_ocsp::CertStatus::Unknown(_) => CertStatus::Unknown,
    };
    let answer = Answer {
        status,
        this_update: unix(&single.this_update),
        next_update: single.next_update.as_ref().map(unix),
    };
    let now = secs(now);
    if answer.this_update > now.saturating_add(CLOCK_SKEW) {
        return Err(OcspError::NotYetValid {
            this_update: answer.this_update,
        });
    }
    match answer.next_update {
        Some(next_update) if next_update <= now => Err(OcspError::Expired { next_update }),
        _ => Ok(answer),
    }
}

/// Verify the response signature with the issuer's key, or with an included certificate the
/// issuer authorized (signed directly, EKU id-kp-OCSPSigning, valid at `now`).
fn verify_signer(
    basic: &RawBasic<'_>,
    tbs: &[u8],
    issuer: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<(), OcspError> {
    if basic.signature_algorithm.tag() != Tag::Sequence {
        return Err(OcspError::UnsupportedSignatureAlgorithm);
    }
    let algorithm_id = basic.signature_algorithm.value();
    // Several algorithms share a signature AlgorithmIdentifier (ECDSA-SHA256 over P-256 or
    // P-384); each checks that the key is of its kind, so trying them all is sound.
    let candidates: Vec<&dyn SignatureVerificationAlgorithm> = algorithms()
        .iter()
        .copied()
        .filter(|a| a.signature_alg_id().as_ref() == algorithm_id)
        .collect();
    if candidates.is_empty() {
        return Err(OcspError::UnsupportedSignatureAlgorithm);
    }
    let signature = basic.signature.as_bytes().ok_or(OcspError::BadSignature)?;
    let signed_by = |cert: &webpki::EndEntityCert<'_>| {
        candidates
            .iter()
            .any(|alg| cert.verify_signature(*alg, tbs, signature).is_ok())
    };

    let issuer_cert = webpki::EndEntityCert::try_from(issuer)
        .map_err(|_| OcspError::Certificate(Role::Issuer))?;
    if signed_by(&issuer_cert) {
        return Ok(());
    }
    for any in basic.certs.iter().flatten().take(MAX_SIGNER_CANDIDATES) {
        let Ok(der) = any.to_der() else { continue };
        let der = CertificateDer::from(der);
        let Ok(responder) = webpki::EndEntityCert::try_from(&der) else {
            continue;
        };
        if !signed_by(&responder) {
            continue;
        }
        let anchor = webpki::anchor_from_trusted_cert(issuer)
            .map_err(|_| OcspError::Certificate(Role::Issuer))?;
        return responder
            .verify_for_usage(
                algorithms(),
                &[anchor],
                &[],
                now,
                webpki::KeyUsage::required(ID_KP_OCSP_SIGNING.as_bytes()),
                None,
                None,
            )
            .map(|_| ())
            .map_err(OcspError::UnauthorizedSigner);
    }
    Err(OcspError::BadSignature)
}

fn unix(t: &OcspGeneralizedTime) -> i64 {
    i64::try_from(t.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

fn secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

/// The HTTP client [`ask`] uses. OCSP is plain `http://` by design (RFC 6960 A.1: responses
/// are signed, and fetching them over TLS could need OCSP itself), so the connector refuses
/// any other scheme. Keep one per process: it pools connections to responders.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`] (connection pool, no TLS).
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.enforce_http(true);
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// POST `request` (a DER OCSPRequest) to the responder at `url` (`http://` only) and return
/// the response body. The whole exchange, connect to last byte, takes at most `timeout`; a
/// status other than 200 or a body over [`MAX_RESPONSE_BYTES`] is an error.
pub async fn ask(
    client: &HttpClient,
    url: &str,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, OcspError> {
    let uri: http::Uri = url.parse().map_err(|_| OcspError::BadUrl)?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
        return Err(OcspError::BadUrl);
    }
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .header(http::header::ACCEPT, "application/ocsp-response")
        .body(Full::new(Bytes::from(request)))
        .map_err(|_| OcspError::BadUrl)?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                OcspError::Unreachable(Arc::new(e))
            } else {
                OcspError::Transport(Arc::new(e))
            }
        })?;
        if resp.status() != http::StatusCode::OK {
            return Err(OcspError::HttpStatus(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    OcspError::TooLarge
                } else {
                    OcspError::Transport(Arc::from(e))
                }
            })?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| OcspError::Timeout(timeout))?
}

/// What a cached answer is filed under: the trust source that asked, and the leaf's SHA-256
/// fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    trust: Arc<str>,
    leaf: [u8; 32],
}

impl Key {
    /// The key for `leaf` as checked by trust source `trust`.
    pub fn new(trust: Arc<str>, leaf: &CertificateDer<'_>) -> Key {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Key {
            trust,
            leaf: fingerprint,
        }
    }

    /// The trust source's name.
    pub fn trust(&self) -> &str {
        &self.trust
    }

    /// The leaf's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.leaf
    }
}

type Shared = Option<Result<Answer, OcspError>>;

/// OCSP answers per certificate, with at most one fetch in flight per [`Key`].
///
/// - An answer is kept until `min(nextUpdate, fetched + cache_max)`, without a nextUpdate
///   until `min(thisUpdate, fetched) + cache_max`, then it is gone (a stale answer is never
///   returned). A `good` or `unknown` without nextUpdate whose thisUpdate is already older
///   than `cache_max` is refused ([`OcspError::Stale`]).
/// - [`Cache::status`] returns a kept answer without fetching; otherwise it starts the fetch,
///   or joins the one in flight, so concurrent callers for one key cause one request. The
///   fetch runs as its own task: a caller that stops waiting (its handshake deadline passed)
///   does not cancel it, and the answer is kept for the next caller.
/// - Errors are not answers: a failed fetch never replaces or removes a kept answer. A failure
///   is remembered for `error_ttl` (zero: not at all), during which [`Cache::status`] returns
///   it at once instead of asking again, so that a responder that is down costs each
///   certificate one request per `error_ttl`, not one per handshake. [`Cache::refresh`]
///   ignores it.
/// - An answer older (by thisUpdate) than the kept one does not replace it.
/// - At most `capacity` keys are held, plus keys with a fetch in flight (never evicted). A new
///   key that finds the cache full first evicts every key with nothing valid left, then, if
///   still full, the least recently used key.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

struct Inner {
    capacity: usize,
    cache_max: i64,
    error_ttl: i64,
    clock: Clock,
    slots: Mutex<HashMap<Key, Slot>>,
    /// Logical time for least-recently-used eviction.
    tick: AtomicU64,
    next_flight: AtomicU64,
    changes: AtomicU64,
}

#[derive(Default)]
struct Slot {
    answer: Option<Stored>,
    /// The last fetch's error and until when it is returned without asking again.
    failure: Option<(OcspError, i64)>,
    flight: Option<Flight>,
    /// When the last fetch finished (success or not).
    asked_at: i64,
    last_used: u64,
}

#[derive(Clone, Copy)]
struct Stored {
    answer: Answer,
    expires: i64,
}

struct Flight {
    id: u64,
    rx: watch::Receiver<Shared>,
}

impl Slot {
    fn valid(&self, now: i64) -> Option<Answer> {
        self.answer
            .filter(|s| s.expires > now)
            .map(|stored| stored.answer)
    }

    fn failure(&self, now: i64) -> Option<&OcspError> {
        self.failure
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(e, _)| e)
    }

    /// Nothing worth keeping: no fetch in flight, no valid answer, no failure to remember.
    fn spent(&self, now: i64) -> bool {
        self.flight.is_none() && self.valid(now).is_none() && self.failure(now).is_none()
    }
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Cache {
    /// A cache of at most `capacity` keys (plus those with a fetch in flight) that keeps an
    /// answer at most `cache_max` and remembers a failed fetch for `error_ttl`.
    pub fn new(capacity: usize, cache_max: Duration, error_ttl: Duration) -> Cache {
        Cache::with_clock(
            capacity,
            cache_max,
            error_ttl,
            Arc::new(|| secs(UnixTime::now())),
        )
    }

    fn with_clock(
        capacity: usize,
        cache_max: Duration,
        error_ttl: Duration,
        clock: Clock,
    ) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                cache_max: duration_secs(cache_max),
                error_ttl: duration_secs(error_ttl),
                clock,
                slots: Mutex::new(HashMap::new()),
                tick: AtomicU64::new(0),
                next_flight: AtomicU64::new(0),
                changes: AtomicU64::new(0),
            }),
        }
    }

    /// The kept answer for `key`, if it is still valid at `now`; never waits or fetches (for
    /// the handshake's fast path and the per-request re-check).
    pub fn get(&self, key: &Key, now: UnixTime) -> Option<Answer> {
        let tick = self.inner.tick();
        let mut slots = self.inner.lock();
        let slot = slots.get_mut(key)?;
        slot.last_used = tick;
        slot.valid(secs(now))
    }

    /// `key`'s status: the kept answer if valid, else the remembered failure if recent, else
    /// the outcome of `fetch` (started now, or the one already in flight for `key`). `fetch`
    /// should bound its own duration ([`ask`] takes a timeout); it is dropped unused when an
    /// answer is kept. Must be called within a Tokio runtime (the fetch is spawned).
    pub async fn status<F>(&self, key: &Key, fetch: F) -> Result<Answer, OcspError>
    where
        F: Future<Output = Result<Answer, OcspError>> + Send + 'static,
    {
        self.run(key, fetch, false).await
    }

    /// Ask again even though an answer is kept (for certificates with open connections): joins
    /// a fetch in flight or starts one. A success replaces the kept answer; a failure leaves
    /// it in place until it expires.
    pub async fn refresh<F>(&self, key: &Key, fetch: F) -> Result<Answer, OcspError>
    where
        F: Future<Output = Result<Answer, OcspError>> + Send + 'static,
    {
        self.run(key, fetch, true).await
    }

    /// Keys whose last fetch finished at least `refresh` before `now` and that have none in
    /// flight: the candidates for [`Cache::refresh`] (the caller keeps those with open
    /// connections).
    pub fn keys_due(&self, now: UnixTime, refresh: Duration) -> Vec<Key> {
        let due = secs(now).saturating_sub(duration_secs(refresh));
        self.inner
            .lock()
            .iter()
            .filter(|(_, slot)| slot.flight.is_none() && slot.asked_at <= due)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// A counter that moves whenever a kept status changes (no answer counts as `good`): a
    /// revocation learned by a refresh or by a handshake moves it, and so does a kept answer
    /// that ran out when the fetch to renew it failed (its status is unknown now), so
    /// connections need look up their certificate again only when it moved.
    pub fn changes(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn run<F>(&self, key: &Key, fetch: F, force: bool) -> Result<Answer, OcspError>
    where
        F: Future<Output = Result<Answer, OcspError>> + Send + 'static,
    {
        let mut rx = {
            let tick = self.inner.tick();
            let mut slots = self.inner.lock();
            let now = (self.inner.clock)();
            if !slots.contains_key(key) {
                self.inner.make_room(&mut slots, now);
            }
            let slot = slots.entry(key.clone()).or_default();
            slot.last_used = tick;
            if !force {
                if let Some(answer) = slot.valid(now) {
                    return Ok(answer);
                }
                if let Some(e) = slot.failure(now) {
                    return Err(e.clone());
                }
            }
            match &slot.flight {
                Some(flight) => flight.rx.clone(),
                None => self.start(slot, key, fetch),
            }
        };
        let shared = rx.wait_for(Option::is_some).await;
        match shared.as_deref() {
            Ok(Some(result)) => result.clone(),
            _ => Err(OcspError::Abandoned),
        }
    }

    fn start<F>(&self, slot: &mut Slot, key: &Key, fetch: F) -> watch::Receiver<Shared>
    where
        F: Future<Output = Result<Answer, OcspError>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
        slot.flight = Some(Flight { id, rx: rx.clone() });
        let guard = FlightGuard {
            inner: self.inner.clone(),
            key: key.clone(),
            id,
        };
        tokio::spawn(async move {
            let result = fetch.await;
            let published = guard.inner.finish(&guard.key, guard.id, result);
            let _ = tx.send(Some(published));
        });
        rx
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // The map stays consistent across a panic elsewhere: every update is a single store.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// Store the outcome of fetch `id` for `key` and return what its callers get.
    fn finish(
        &self,
        key: &Key,
        id: u64,
        result: Result<Answer, OcspError>,
    ) -> Result<Answer, OcspError> {
        let mut slots = self.lock();
        let now = (self.clock)();
        let Some(slot) = slots.get_mut(key) else {
            return result;
        };
        if slot.flight.as_ref().is_some_and(|f| f.id == id) {
            slot.flight = None;
        }
        slot.asked_at = now;
        // An answer without nextUpdate is good for `cache_max` after its thisUpdate, not after
        // it arrived: an old signed `good` replayed by someone on the path (requests carry no
        // nonce) must not be taken as fresh. A `revoked` is final whatever its age.
        let result = result.and_then(|answer| {
            let stale = answer.next_update.is_none()
                && !matches!(answer.status, CertStatus::Revoked { .. })
                && answer.this_update < now.saturating_sub(self.cache_max);
            if stale {
                Err(OcspError::Stale {
                    this_update: answer.this_update,
                })
            } else {
                Ok(answer)
            }
        });
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                if self.error_ttl > 0 {
                    slot.failure = Some((e.clone(), now.saturating_add(self.error_ttl)));
                }
                // A kept answer ran out and could not be renewed: the status is no longer
                // known, which `require` refuses, so open connections must look again.
                if slot.answer.take_if(|s| s.expires <= now).is_some() {
                    self.changes.fetch_add(1, Ordering::AcqRel);
                }
                return Err(e);
            }
        };
        slot.failure = None;
        if let Some(kept) = slot.valid(now) {
            if kept.this_update > answer.this_update {
                return Ok(kept);
            }
        }
        let before = slot.valid(now).map_or(CertStatus::Good, |a| a.status);
        // Without a nextUpdate, `cache_max` counts from thisUpdate (when it was signed).
        let expires = answer
            .next_update
            .unwrap_or_else(|| answer.this_update.saturating_add(self.cache_max))
            .min(now.saturating_add(self.cache_max));
        slot.answer = (expires > now).then_some(Stored { answer, expires });
        if before != answer.status {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        Ok(answer)
    }

    /// Called before adding a key: if full, drop every spent key, then the least recently
    /// used ones without a fetch in flight.
    fn make_room(&self, slots: &mut HashMap<Key, Slot>, now: i64) {
        if slots.len() < self.capacity {
            return;
        }
        slots.retain(|_, slot| !slot.spent(now));
        while slots.len() >= self.capacity {
            let lru = slots
                .iter()
                .filter(|(_, slot)| slot.flight.is_none())
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(key, _)| key.clone());
            match lru {
                Some(key) => slots.remove(&key),
                None => return,
            };
        }
    }
}

/// Clears a fetch's in-flight mark if its task ends without finishing (panic, runtime
/// shutdown), so that the next caller starts a new fetch instead of waiting on a dead one.
struct FlightGuard {
    inner: Arc<Inner>,
    key: Key,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut slots = self.inner.lock();
        if let Some(slot) = slots.get_mut(&self.key) {
            if slot.flight.as_ref().is_some_and(|f| f.id == self.id) {
                slot.flight = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, AtomicUsize};

    use der::asn1::{BitString, GeneralizedTime};
    use rcgen::ExtendedKeyUsagePurpose;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use x509_ocsp::{BasicOcspResponse, ResponderId, ResponseBytes, RevokedInfo, SingleResponse};

    use super::*;
    use crate::devpki::{LeafSpec, TestCa, TestCert};

    const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    const ECDSA_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");

    struct Pki {
        ca: TestCa,
        leaf: TestCert,
        other: TestCert,
        /// Issued by `ca` with EKU OCSPSigning: may sign for it.
        delegated: TestCert,
        /// Issued by `ca` with EKU clientAuth only.
        no_eku: TestCert,
        /// Issued by `ca` with EKU OCSPSigning, expired.
        expired_delegate: TestCert,
        /// Issued by another CA with EKU OCSPSigning.
        foreign_delegate: TestCert,
        /// A self-signed certificate with EKU OCSPSigning.
        self_signed: TestCert,
    }

    fn responder_spec(cn: &str) -> LeafSpec {
        let mut spec = LeafSpec::client(cn);
        spec.eku = vec![ExtendedKeyUsagePurpose::OcspSigning];
        spec
    }

    fn pki() -> Pki {
        let root = TestCa::root("ocsp test root").unwrap();
        let ca = root.intermediate("ocsp test issuer").unwrap();
        let leaf = ca.issue(&LeafSpec::client("alice")).unwrap();
        let other = ca.issue(&LeafSpec::client("bob")).unwrap();
        let delegated = ca.issue(&responder_spec("responder")).unwrap();
        let no_eku = ca.issue(&LeafSpec::client("not a responder")).unwrap();
        let mut expired = responder_spec("expired responder");
        let now = time::OffsetDateTime::now_utc();
        expired.not_before = now - time::Duration::days(10);
        expired.not_after = now - time::Duration::days(1);
        let expired_delegate = ca.issue(&expired).unwrap();
        let stranger = TestCa::root("stranger").unwrap();
        let foreign_delegate = stranger.issue(&responder_spec("responder")).unwrap();
        let self_signed = TestCert::self_signed(&responder_spec("responder")).unwrap();
        Pki {
            ca,
            leaf,
            other,
            delegated,
            no_eku,
            expired_delegate,
            foreign_delegate,
            self_signed,
        }
    }

    fn now() -> i64 {
        secs(UnixTime::now())
    }

    fn gt(secs: i64) -> OcspGeneralizedTime {
        let d = Duration::from_secs(u64::try_from(secs).unwrap());
        OcspGeneralizedTime(GeneralizedTime::from_unix_duration(d).unwrap())
    }

    fn cert_id(leaf: &TestCert, ca: &TestCa, alg: HashAlg) -> CertId {
        Subject::new(&leaf.cert, &ca.cert)
            .unwrap()
            .cert_id(alg)
            .unwrap()
    }

    fn single(id: CertId, status: x509_ocsp::CertStatus, next: Option<i64>) -> SingleResponse {
        SingleResponse {
            cert_id: id,
            cert_status: status,
            this_update: gt(now() - 60),
            next_update: next.map(gt),
            single_extensions: None,
        }
    }

    fn good(p: &Pki) -> SingleResponse {
        single(
            cert_id(&p.leaf, &p.ca, HashAlg::Sha1),
            x509_ocsp::CertStatus::good(),
            Some(now() + 3600),
        )
    }

    fn data(responses: Vec<SingleResponse>) -> ResponseData {
        ResponseData {
            version: Default::default(),
            responder_id: ResponderId::ByKey(OctetString::new(vec![7; 20]).unwrap()),
            produced_at: gt(now()),
            responses,
            response_extensions: None,
        }
    }

    /// A BasicOCSPResponse carrying `sent`, with a signature over `signed` (the same, unless
    /// a test tampers) by the P-256 key in `key_pem`, claiming `alg`.
    fn signed_as(
        signed: &ResponseData,
        sent: ResponseData,
        key_pem: &str,
        alg: ObjectIdentifier,
        certs: &[&CertificateDer<'_>],
    ) -> Vec<u8> {
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            key.secret_pkcs8_der(),
        )
        .unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = key.sign(&rng, &signed.to_der().unwrap()).unwrap();
        let certs = (!certs.is_empty()).then(|| {
            certs
                .iter()
                .map(|c| x509_cert::Certificate::from_der(c.as_ref()).unwrap())
                .collect()
        });
        let basic = BasicOcspResponse {
            tbs_response_data: sent,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: alg,
                parameters: None,
            },
            signature: BitString::from_bytes(signature.as_ref()).unwrap(),
            certs,
        };
        OcspResponse::successful(basic).unwrap().to_der().unwrap()
    }

    fn signed(
        responses: Vec<SingleResponse>,
        key_pem: &str,
        certs: &[&CertificateDer<'_>],
    ) -> Vec<u8> {
        let d = data(responses);
        signed_as(&d.clone(), d, key_pem, ECDSA_SHA256, certs)
    }

    fn check(p: &Pki, der: &[u8]) -> Result<Answer, OcspError> {
        check_response(der, &p.leaf.cert, &p.ca.cert, UnixTime::now())
    }

    #[test]
    fn request_is_one_sha1_cert_id_for_the_leaf() {
        let p = pki();
        let der = request(&p.leaf.cert, &p.ca.cert).unwrap();
        let req = OcspRequest::from_der(&der).unwrap();
        assert_eq!(req.to_der().unwrap(), der, "DER round trip");
        assert!(req.optional_signature.is_none());
        assert!(req.tbs_request.request_extensions.is_none(), "no nonce");
        let [one] = &req.tbs_request.request_list[..] else {
            panic!("expected one request");
        };
        let id = &one.req_cert;
        assert_eq!(id.hash_algorithm.oid, ID_SHA1);
        let (_, issuer) = x509_parser::parse_x509_certificate(p.ca.cert.as_ref()).unwrap();
        let sha1 = |d: &[u8]| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, d)
                .as_ref()
                .to_vec()
        };
        assert_eq!(
            id.issuer_name_hash.as_bytes(),
            sha1(issuer.subject().as_raw())
        );
        assert_eq!(
            id.issuer_key_hash.as_bytes(),
            sha1(&issuer.public_key().subject_public_key.data)
        );
        assert_eq!(id.serial_number.as_bytes(), p.leaf.serial.as_slice());

        let der = request_with(&p.leaf.cert, &p.ca.cert, HashAlg::Sha256).unwrap();
        let req = OcspRequest::from_der(&der).unwrap();
        let id = &req.tbs_request.request_list[0].req_cert;
        assert_eq!(id.hash_algorithm.oid, ID_SHA256);
        assert_eq!(id.issuer_name_hash.as_bytes().len(), 32);
    }

    #[test]
    fn request_needs_the_leafs_issuer() {
        let p = pki();
        let stranger = TestCa::root("stranger").unwrap();
        assert!(matches!(
            request(&p.leaf.cert, &stranger.cert),
            Err(OcspError::IssuerMismatch)
        ));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(matches!(
            request(&garbage, &p.ca.cert),
            Err(OcspError::Certificate(Role::Leaf))
        ));
        assert!(matches!(
            request(&p.leaf.cert, &garbage),
            Err(OcspError::Certificate(Role::Issuer))
        ));
    }

    #[test]
    fn statuses_signed_by_the_issuer() {
        let p = pki();
        let key = p.ca.key_pem();
        let answer = check(&p, &signed(vec![good(&p)], &key, &[])).unwrap();
        assert_eq!(answer.status, CertStatus::Good);
        assert!(answer.this_update <= now() && answer.this_update > now() - 120);
        assert!(answer.next_update.unwrap() > now());

        let revoked_at = now() - 3600;
        let revoked = single(
            cert_id(&p.leaf, &p.ca, HashAlg::Sha1),
            x509_ocsp::CertStatus::revoked(RevokedInfo {
                revocation_time: gt(revoked_at),
                revocation_reason: None,
            }),
            None,
        );
        let answer = check(&p, &signed(vec![revoked], &key, &[])).unwrap();
        assert_eq!(answer.status, CertStatus::Revoked { at: revoked_at });
        assert_eq!(answer.next_update, None);

        let unknown = single(
            cert_id(&p.leaf, &p.ca, HashAlg::Sha1),
            x509_ocsp::CertStatus::unknown(),
            None,
        );
        let answer = check(&p, &signed(vec![unknown], &key, &[])).unwrap();
        assert_eq!(answer.status, CertStatus::Unknown);
    }

    #[test]
    fn finds_its_answer_among_several_and_by_sha256() {
        let p = pki();
        let bob = single(
            cert_id(&p.other, &p.ca, HashAlg::Sha1),
            x509_ocsp::CertStatus::unknown(),
            None,
        );
        let alice = single(
            cert_id(&p.leaf, &p.ca, HashAlg::Sha256),
            x509_ocsp::CertStatus::good(),
            None,
        );
        let der = signed(vec![bob, alice], &p.ca.key_pem(), &[]);
        assert_eq!(check(&p, &der).unwrap().status, CertStatus::Good);
    }

    #[test]
    fn an_answer_for_another_cert_id_is_no_answer() {
        let p = pki();
        let key = p.ca.key_pem();
        let bob = single(
            cert_id(&p.other, &p.ca, HashAlg::Sha1),
            x509_ocsp::CertStatus::good(),
            None,
        );
        assert!(matches!(
            check(&p, &signed(vec![bob], &key, &[])),
            Err(OcspError::NoMatchingResponse)
        ));
        // The leaf's serial, but another issuer key.
        let mut id = cert_id(&p.leaf, &p.ca, HashAlg::Sha1);
        id.issuer_key_hash = OctetString::new(vec![0; 20]).unwrap();
        let forged = single(id, x509_ocsp::CertStatus::good(), None);
        assert!(matches!(
            check(&p, &signed(vec![forged], &key, &[])),
            Err(OcspError::NoMatchingResponse)
        ));
        // A hash algorithm we do not know.
        let mut id = cert_id(&p.leaf, &p.ca, HashAlg::Sha1);
        id.hash_algorithm.oid = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
        let odd = single(id, x509_ocsp::CertStatus::good(), None);
        assert!(matches!(
            check(&p, &signed(vec![odd], &key, &[])),
            Err(OcspError::NoMatchingResponse)
        ));
    }

    #[test]
    fn signatures_by_anyone_but_the_issuer_or_its_responder_are_refused() {
        let p = pki();
        // An unrelated key, no certificate.
        let der = signed(vec![good(&p)], &p.other.key_pem, &[]);
        assert!(matches!(check(&p, &der), Err(OcspError::BadSignature)));
        // The issuer's key over other content.
        let d = data(vec![good(&p)]);
        let mut other = d.clone();
        other.produced_at = gt(now() - 1);
        let der = signed_as(&other, d, &p.ca.key_pem(), ECDSA_SHA256, &[]);
        assert!(matches!(check(&p, &der), Err(OcspError::BadSignature)));
        // A delegated responder's key without its certificate in the response.
        let der = signed(vec![good(&p)], &p.delegated.key_pem, &[]);
        assert!(matches!(check(&p, &der), Err(OcspError::BadSignature)));
        // An unrelated key, with a certificate that is not the signer's.
        let der = signed(vec![good(&p)], &p.other.key_pem, &[&p.delegated.cert]);
        assert!(matches!(check(&p, &der), Err(OcspError::BadSignature)));
        // A signature algorithm we do not accept.
        let d = data(vec![good(&p)]);
        let der = signed_as(&d.clone(), d, &p.ca.key_pem(), ECDSA_SHA1, &[]);
        assert!(matches!(
            check(&p, &der),
            Err(OcspError::UnsupportedSignatureAlgorithm)
        ));
    }

    #[test]
    fn delegated_responders_need_the_issuer_the_eku_and_validity() {
        let p = pki();
        let by = |signer: &TestCert| {
            check(
                &p,
                &signed(
                    vec![good(&p)],
                    &signer.key_pem,
                    &[&p.other.cert, &signer.cert],
                ),
            )
        };
        assert_eq!(by(&p.delegated).unwrap().status, CertStatus::Good);
        for (what, signer) in [
            ("no OCSPSigning EKU", &p.no_eku),
            ("expired", &p.expired_delegate),
            ("issued by another CA", &p.foreign_delegate),
            ("self-signed", &p.self_signed),
        ] {
            assert!(
                matches!(by(signer), Err(OcspError::UnauthorizedSigner(_))),
                "{what}: {:?}",
                by(signer)
            );
        }
    }

    #[test]
    fn freshness() {
        let p = pki();
        let key = p.ca.key_pem();
        let at = |this: i64, next: Option<i64>| {
            let mut s = good(&p);
            s.this_update = gt(this);
            s.next_update = next.map(gt);
            check(&p, &signed(vec![s], &key, &[]))
        };
        assert!(at(now() + 60, None).is_ok(), "within the skew");
        assert!(matches!(
            at(now() + CLOCK_SKEW + 120, None),
            Err(OcspError::NotYetValid { .. })
        ));
        assert!(matches!(
            at(now() - 7200, Some(now() - 10)),
            Err(OcspError::Expired { .. })
        ));
        assert_eq!(
            at(now() - 7200, Some(now() + 10)).unwrap().next_update,
            Some(now() + 10)
        );
    }

    #[test]
    fn refusals_and_other_response_types() {
        let p = pki();
        for (response, refusal) in [
            (OcspResponse::try_later(), Refusal::TryLater),
            (OcspResponse::unauthorized(), Refusal::Unauthorized),
            (OcspResponse::internal_error(), Refusal::InternalError),
            (OcspResponse::malformed_request(), Refusal::MalformedRequest),
            (OcspResponse::sig_required(), Refusal::SigRequired),
        ] {
            let err = check(&p, &response.to_der().unwrap()).unwrap_err();
            assert!(
                matches!(err, OcspError::Refused(r) if r == refusal),
                "{err}"
            );
        }
        let no_body = OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: None,
        };
        assert!(matches!(
            check(&p, &no_body.to_der().unwrap()),
            Err(OcspError::NoBody)
        ));
        let other_type = OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.99"),
                response: OctetString::new(vec![0x05, 0x00]).unwrap(),
            }),
        };
        assert!(matches!(
            check(&p, &other_type.to_der().unwrap()),
            Err(OcspError::NotBasic(_))
        ));
    }

    #[test]
    fn garbage_truncation_and_bit_flips_are_errors_not_panics() {
        let p = pki();
        for garbage in [
            &b""[..],
            b"\x30",
            b"\x30\x80\x00\x00",
            b"hello world",
            &[0xff; 64],
        ] {
            assert!(matches!(check(&p, garbage), Err(OcspError::Malformed(_))));
        }
        let der = signed(vec![good(&p)], &p.delegated.key_pem, &[&p.delegated.cert]);
        assert!(check(&p, &der).is_ok());
        for len in 0..der.len() {
            assert!(check(&p, &der[..len]).is_err(), "truncated to {len}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(check(&p, &trailing).is_err(), "trailing data");
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut flipped = der.clone();
                flipped[i] ^= 1 << bit;
                assert!(check(&p, &flipped).is_err(), "byte {i} bit {bit} flipped");
            }
        }
    }

    // ---- the cache ----

    fn answer(status: CertStatus, this_update: i64, next_update: Option<i64>) -> Answer {
        Answer {
            status,
            this_update,
            next_update,
        }
    }

    struct Clocked {
        cache: Cache,
        now: Arc<AtomicI64>,
    }

    impl Clocked {
        fn new(capacity: usize, cache_max: u64, error_ttl: u64) -> Clocked {
            let now = Arc::new(AtomicI64::new(1_000_000));
            let clock = now.clone();
            Clocked {
                cache: Cache::with_clock(
                    capacity,
                    Duration::from_secs(cache_max),
                    Duration::from_secs(error_ttl),
                    Arc::new(move || clock.load(Ordering::SeqCst)),
                ),
                now,
            }
        }

        fn now(&self) -> i64 {
            self.now.load(Ordering::SeqCst)
        }

        fn advance(&self, secs: i64) {
            self.now.fetch_add(secs, Ordering::SeqCst);
        }

        fn unix(&self) -> UnixTime {
            UnixTime::since_unix_epoch(Duration::from_secs(self.now() as u64))
        }
    }

    fn key(n: u8) -> Key {
        Key::new(Arc::from("internal"), &CertificateDer::from(vec![n]))
    }

    /// A fetch that counts how often it ran and returns `result`.
    fn counted(
        runs: &Arc<AtomicUsize>,
        result: Result<Answer, OcspError>,
    ) -> impl Future<Output = Result<Answer, OcspError>> + Send + 'static {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            result
        }
    }

    #[tokio::test]
    async fn kept_until_next_update_or_cache_max() {
        let c = Clocked::new(10, 600, 0);
        let runs = Arc::new(AtomicUsize::new(0));
        let t = c.now();
        let a = answer(CertStatus::Good, t - 10, Some(t + 100));
        assert_eq!(c.cache.get(&key(1), c.unix()), None);
        assert_eq!(
            c.cache
                .status(&key(1), counted(&runs, Ok(a)))
                .await
                .unwrap(),
            a
        );
        assert_eq!(
            c.cache
                .status(&key(1), counted(&runs, Ok(a)))
                .await
                .unwrap(),
            a
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the second call was served from the cache"
        );
        assert_eq!(c.cache.get(&key(1), c.unix()), Some(a));
        c.advance(99);
        assert_eq!(c.cache.get(&key(1), c.unix()), Some(a));
        c.advance(1);
        assert_eq!(c.cache.get(&key(1), c.unix()), None, "at nextUpdate");
        c.cache
            .status(&key(1), counted(&runs, Ok(a)))
            .await
            .unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "fetched again after nextUpdate"
        );

        // No nextUpdate: cache_max bounds it.
        let b = answer(CertStatus::Good, c.now(), None);
        c.cache
            .status(&key(2), counted(&runs, Ok(b)))
            .await
            .unwrap();
        c.advance(599);
        assert_eq!(c.cache.get(&key(2), c.unix()), Some(b));
        c.advance(1);
        assert_eq!(c.cache.get(&key(2), c.unix()), None, "at cache_max");

        // No nextUpdate and signed more than cache_max ago: a replayed old `good` is no answer,
        // while an old `revoked` still counts.
        let old_good = answer(CertStatus::Good, c.now() - 601, None);
        let err = c
            .cache
            .status(&key(3), counted(&runs, Ok(old_good)))
            .await
            .unwrap_err();
        assert!(matches!(err, OcspError::Stale { .. }), "{err}");
        assert_eq!(c.cache.get(&key(3), c.unix()), None);
        let just_in_time = answer(CertStatus::Good, c.now() - 600, None);
        assert!(c
            .cache
            .status(&key(4), counted(&runs, Ok(just_in_time)))
            .await
            .is_ok());
        let old_revoked = answer(CertStatus::Revoked { at: 5 }, c.now() - 6000, None);
        assert_eq!(
            c.cache
                .status(&key(5), counted(&runs, Ok(old_revoked)))
                .await
                .unwrap(),
            old_revoked
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let c = Clocked::new(10, 600, 0);
        let a = answer(CertStatus::Revoked { at: 5 }, c.now(), None);
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fetch = || {
            let started = started.clone();
            let gate = gate.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.map_err(|_| OcspError::Abandoned)?;
                Ok(a)
            }
        };
        let callers = futures_util::future::join_all((0..16).map(|_| {
            let cache = c.cache.clone();
            let fetch = fetch();
            async move { cache.status(&key(1), fetch).await }
        }));
        let all = tokio::spawn(callers);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while started.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fetch never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate.add_permits(100);
        let results = all.await.unwrap();
        assert_eq!(results.len(), 16);
        assert!(results.iter().all(|r| r.as_ref().ok() == Some(&a)));
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(c.cache.changes(), 1, "a revocation was learned");
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_cancel_the_fetch() {
        let c = Clocked::new(10, 600, 0);
        let a = answer(CertStatus::Good, c.now(), None);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let waited = tokio::time::timeout(
            Duration::from_millis(20),
            c.cache.status(&key(1), async move {
                let _permit = g.acquire().await.map_err(|_| OcspError::Abandoned)?;
                Ok(a)
            }),
        )
        .await;
        assert!(waited.is_err(), "the caller timed out");
        gate.add_permits(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.cache.get(&key(1), c.unix()).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the answer never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn errors_are_remembered_for_error_ttl_only() {
        let runs = Arc::new(AtomicUsize::new(0));
        let c = Clocked::new(10, 600, 0);
        for _ in 0..2 {
            let r = c
                .cache
                .status(
                    &key(1),
                    counted(&runs, Err(OcspError::Timeout(Duration::from_secs(1)))),
                )
                .await;
            assert!(matches!(r, Err(OcspError::Timeout(_))));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "error_ttl 0: not remembered"
        );

        let runs = Arc::new(AtomicUsize::new(0));
        let c = Clocked::new(10, 600, 5);
        let err = || Err(OcspError::HttpStatus(503));
        assert!(c
            .cache
            .status(&key(1), counted(&runs, err()))
            .await
            .is_err());
        assert!(matches!(
            c.cache.status(&key(1), counted(&runs, err())).await,
            Err(OcspError::HttpStatus(503))
        ));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "remembered");
        c.advance(5);
        let a = answer(CertStatus::Good, c.now(), None);
        assert_eq!(
            c.cache
                .status(&key(1), counted(&runs, Ok(a)))
                .await
                .unwrap(),
            a
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "asked again after error_ttl"
        );
        assert!(c
            .cache
            .refresh(&key(1), counted(&runs, err()))
            .await
            .is_err());
        assert_eq!(
            c.cache.get(&key(1), c.unix()),
            Some(a),
            "a failure keeps the answer"
        );
        assert_eq!(
            c.cache
                .status(&key(1), counted(&runs, err()))
                .await
                .unwrap(),
            a
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_answer_that_ran_out_and_cannot_be_renewed_moves_changes() {
        let runs = Arc::new(AtomicUsize::new(0));
        let c = Clocked::new(10, 600, 0);
        let good = answer(CertStatus::Good, c.now(), Some(c.now() + 100));
        c.cache
            .status(&key(1), counted(&runs, Ok(good)))
            .await
            .unwrap();
        // Renewal fails while the answer is still good: nothing changed.
        c.advance(50);
        let down = || Err(OcspError::HttpStatus(503));
        assert!(c
            .cache
            .refresh(&key(1), counted(&runs, down()))
            .await
            .is_err());
        assert_eq!(c.cache.changes(), 0);
        assert_eq!(c.cache.get(&key(1), c.unix()), Some(good));
        // It ran out, and renewal fails again: the status is unknown now.
        c.advance(50);
        assert!(c
            .cache
            .refresh(&key(1), counted(&runs, down()))
            .await
            .is_err());
        assert_eq!(c.cache.changes(), 1, "a lapsed good is a change");
        assert!(c
            .cache
            .refresh(&key(1), counted(&runs, down()))
            .await
            .is_err());
        assert_eq!(c.cache.changes(), 1, "counted once");
    }

    #[tokio::test]
    async fn refresh_replaces_and_changes_moves_on_a_new_status() {
        let runs = Arc::new(AtomicUsize::new(0));
        let c = Clocked::new(10, 600, 0);
        let good = answer(CertStatus::Good, c.now(), None);
        c.cache
            .status(&key(1), counted(&runs, Ok(good)))
            .await
            .unwrap();
        assert_eq!(c.cache.changes(), 0, "good after nothing is no change");
        c.advance(10);
        let revoked = answer(CertStatus::Revoked { at: c.now() - 1 }, c.now(), None);
        assert_eq!(
            c.cache
                .refresh(&key(1), counted(&runs, Ok(revoked)))
                .await
                .unwrap(),
            revoked
        );
        assert_eq!(c.cache.get(&key(1), c.unix()), Some(revoked));
        assert_eq!(c.cache.changes(), 1);
        // An older answer (a replay) does not undo it.
        assert_eq!(
            c.cache
                .refresh(&key(1), counted(&runs, Ok(good)))
                .await
                .unwrap(),
            revoked
        );
        assert_eq!(c.cache.get(&key(1), c.unix()), Some(revoked));
        assert_eq!(c.cache.changes(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn keys_due_for_refresh() {
        let runs = Arc::new(AtomicUsize::new(0));
        let c = Clocked::new(10, 600, 0);
        let a = answer(CertStatus::Good, c.now(), None);
        c.cache
            .status(&key(1), counted(&runs, Ok(a)))
            .await
            .unwrap();
        c.advance(30);
        c.cache
            .status(&key(2), counted(&runs, Err(OcspError::Abandoned)))
            .await
            .unwrap_err();
        assert_eq!(c.cache.keys_due(c.unix(), Duration::from_secs(60)), vec![]);
        c.advance(30);
        assert_eq!(
            c.cache.keys_due(c.unix(), Duration::from_secs(60)),
            vec![key(1)]
        );
        c.advance(30);
        let mut due = c.cache.keys_due(c.unix(), Duration::from_secs(60));
        due.sort_by_key(|k| *k.fingerprint());
        let mut want = vec![key(1), key(2)];
        want.sort_by_key(|k| *k.fingerprint());
        assert_eq!(due, want);
    }

    #[tokio::test]
    async fn bounded_expired_first_then_least_recently_used() {
        let runs = Arc::new(AtomicUsize::new(0));
        let c = Clocked::new(3, 600, 0);
        let t = c.now();
        let short = answer(CertStatus::Good, t, Some(t + 10));
        let long = answer(CertStatus::Good, t, None);
        c.cache
            .status(&key(1), counted(&runs, Ok(long)))
            .await
            .unwrap();
        c.cache
            .status(&key(2), counted(&runs, Ok(short)))
            .await
            .unwrap();
        c.cache
            .status(&key(3), counted(&runs, Ok(long)))
            .await
            .unwrap();
        c.advance(10);
        // key 2 has expired: it goes, though key 1 is older.
        c.cache
            .status(&key(4), counted(&runs, Ok(long)))
            .await
            .unwrap();
        assert_eq!(c.cache.len(), 3);
        assert!(c.cache.get(&key(2), c.unix()).is_none());
        // Use key 1: key 3 is now the least recently used.
        assert!(c.cache.get(&key(1), c.unix()).is_some());
        c.cache
            .status(&key(5), counted(&runs, Ok(long)))
            .await
            .unwrap();
        assert_eq!(c.cache.len(), 3);
        for (k, kept) in [(1, true), (3, false), (4, true), (5, true)] {
            assert_eq!(c.cache.get(&key(k), c.unix()).is_some(), kept, "key {k}");
        }
    }

    #[tokio::test]
    async fn a_fetch_that_dies_does_not_block_the_next() {
        let c = Clocked::new(10, 600, 0);
        let r = c
            .cache
            .status(&key(1), async {
                if true {
                    panic!("fetch task dies");
                }
                Err(OcspError::Abandoned)
            })
            .await;
        assert!(matches!(r, Err(OcspError::Abandoned)));
        let runs = Arc::new(AtomicUsize::new(0));
        let a = answer(CertStatus::Good, c.now(), None);
        assert_eq!(
            c.cache
                .status(&key(1), counted(&runs, Ok(a)))
                .await
                .unwrap(),
            a
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
