//! CA trust sources: `WebPkiClientVerifier` with CRLs, revocation settings and `max_lifetime`.
//!
//! Revocation: rustls only builds webpki `RevocationOptions` when at least one CRL is
//! configured, so a CA source with no CRLs performs no revocation check at all and
//! `unknown_status: deny` has no effect on it (valid clients are admitted). With CRLs, a
//! certificate whose issuer has no matching CRL is `unknown_revocation_status` unless
//! `unknown_status: allow`.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{Outcome, Rejection, TlsError};
use crate::config::{newest_crls, CaTrust, CrlFile, RevocationDepth};
use crate::identity::Admission;

/// The webpki client verifier for these anchors, CRLs and revocation settings.
///
/// webpki checks a certificate against the first CRL that covers its issuer, so `crls` must
/// hold only the newest CRL of each issuer and scope ([`newest_crls`]).
fn webpki_verifier(
    roots: &Arc<RootCertStore>,
    crls: &[CrlFile],
    revocation: &crate::config::Revocation,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    // Chain and CRL signatures verify through the memo (`memo.rs`): each distinct one costs a
    // public-key operation once, not on every handshake.
    let mut memo_provider = (**provider).clone();
    memo_provider.signature_verification_algorithms =
        super::memo::memoized(memo_provider.signature_verification_algorithms);
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), Arc::new(memo_provider))
            .with_crls(crls.iter().map(|c| c.der.clone()));
    if revocation.depth == RevocationDepth::EndEntity {
        builder = builder.only_check_end_entity_revocation();
    }
    if revocation.allow_unknown_status {
        builder = builder.allow_unknown_revocation_status();
    }
    if !revocation.allow_expired_crl {
        builder = builder.enforce_revocation_expiration();
    }
    builder.build()
}

/// How many issuers to follow when deciding whether a presented chain reaches an anchor.
const MAX_CHAIN_WALK: usize = 8;

/// One CA trust source, built once per snapshot.
#[derive(Debug)]
pub struct CaSource {
    name: Arc<str>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Raw DER subjects of the anchors, for attributing failures to this source.
    anchor_subjects: Vec<Vec<u8>>,
    hints: Vec<DistinguishedName>,
    max_lifetime: Option<Duration>,
    /// `intermediates` (SPEC 9.1): offered to path building after the presented ones, never
    /// anchors.
    intermediates: Vec<CertificateDer<'static>>,
    /// The anchors as webpki sees them, and the provider's signature algorithms: to tell
    /// whether a rejected chain was really signed up to one of them (see [`Self::attribute`]).
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    algorithms: &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm],
    /// The same, through the signature memo (`memo.rs`), as the verifier uses them: to build
    /// a client's path before any distribution point of it is fetched.
    memo_algorithms: &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm],
    /// What it takes to build the verifier again with more CRLs.
    roots: Arc<RootCertStore>,
    anchor_certs: Vec<CertificateDer<'static>>,
    /// The newest CRL of each issuer and scope, files and fetched ones ([`newest_crls`]).
    crls: Vec<CrlFile>,
    revocation: crate::config::Revocation,
    provider: Arc<CryptoProvider>,
    /// Distribution points and OCSP, when fetching during handshakes is possible.
    online: Option<Online>,
}

/// What a CA source needs to ask the network during a handshake: the CRL distribution points
/// its certificates name (SPEC 9.2) and OCSP (SPEC 9.3).
#[derive(Clone)]
pub struct Online {
    /// Only URLs under these prefixes are ever fetched.
    pub allow: Vec<String>,
    /// Where fetched CRLs go (and come from, once fetched).
    pub revocation: Arc<crate::revocation::Revocation>,
    /// The longest a handshake waits for a first fetch (`handshake_timeout`).
    pub wait: Duration,
    /// The distribution points whose CRLs this snapshot already verifies with.
    pub known: Vec<String>,
    /// `ocsp`, when its mode is not `off`.
    pub ocsp: Option<crate::config::Ocsp>,
}

impl std::fmt::Debug for Online {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Online")
            .field("allow", &self.allow)
            .field("known", &self.known)
            .finish()
    }
}

/// Whose failure a rejected chain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attribution {
    /// Signed up to one of this source's anchors: the verifier's reason stands.
    Ours,
    /// Names lead to one of this source's anchors, signatures do not verify.
    Forged,
    /// Nothing to do with this source.
    NotOurs,
}

/// An EKU policy that accepts any EKU: used only to ask "does a signed path to an anchor
/// exist?" after the real verifier has already refused the certificate.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

impl CaSource {
    /// Build the webpki verifier for `ca` (anchors, CRLs, revocation settings), with the CRLs
    /// `fetched` from its URLs beside the ones its files hold: of several CRLs of one issuer
    /// and scope, only the newest is used, whichever came from where.
    pub fn new(
        name: Arc<str>,
        ca: &CaTrust,
        fetched: impl IntoIterator<Item = CrlFile>,
        online: Option<Online>,
        provider: Arc<CryptoProvider>,
    ) -> Result<CaSource, TlsError> {
        let err = |reason: String| TlsError::Trust {
            name: name.to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        let mut anchor_subjects = Vec::with_capacity(ca.anchors.len());
        let mut anchors = Vec::with_capacity(ca.anchors.len());
        for (i, anchor) in ca.anchors.iter().enumerate() {
            roots
                .add(anchor.clone())
                .map_err(|e| err(format!("CA certificate #{}: {e}", i + 1)))?;
            anchors.push(
                webpki::anchor_from_trusted_cert(anchor)
                    .map_err(|e| err(format!("CA certificate #{}: {e}", i + 1)))?
                    .to_owned(),
            );
            let (_, x509) = x509_parser::parse_x509_certificate(anchor.as_ref())
                .map_err(|e| err(format!("CA certificate #{}: {e}", i + 1)))?;
            anchor_subjects.push(x509.subject().as_raw().to_vec());
        }
        let hints = roots.subjects();
        let algorithms = provider.signature_verification_algorithms.all;
        let memo_algorithms = super::memo::memoized(provider.signature_verification_algorithms).all;

        let roots = Arc::new(roots);
        let crls = newest_crls(ca.crls.iter().cloned().chain(fetched));
        let verifier = webpki_verifier(&roots, &crls, &ca.revocation, &provider)
            .map_err(|e| err(e.to_string()))?;
        Ok(CaSource {
            name,
            verifier,
            anchor_subjects,
            hints,
            max_lifetime: ca.max_lifetime,
            intermediates: ca.intermediates.clone(),
            anchors,
            algorithms,
            memo_algorithms,
            roots,
            anchor_certs: ca.anchors.clone(),
            crls,
            revocation: ca.revocation,
            provider,
            online,
        })
    }

    /// The CRLs of distribution points that the client's VERIFIED path names, that this
    /// snapshot does not have yet, and that can be had now: from the store (fetched since the
    /// snapshot was built), or fetched while this handshake waits (at most `wait`).
    ///
    /// Nothing a client presents is trusted before its path is: the path to one of this
    /// source's anchors is built and checked first (signatures, dates, EKU; revocation left
    /// to the verification that follows), and only the distribution points of the
    /// certificates on it count. A certificate that does not chain to an anchor never makes
    /// certguard request anything nor takes one of the source's distribution point slots.
    /// URLs outside `allow` are never fetched. A fetched CRL must be signed by an anchor, a
    /// configured intermediate or an intermediate of the verified path.
    fn new_distribution_point_crls(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Vec<CrlFile> {
        let Some(dp) = self.online.as_ref().filter(|o| !o.allow.is_empty()) else {
            return Vec::new();
        };
        let wanted = |cert: &CertificateDer<'_>, urls: &mut Vec<String>| {
            for url in crate::revocation::distribution_points(cert) {
                let allowed = dp
                    .allow
                    .iter()
                    .any(|prefix| url.starts_with(prefix.as_str()));
                if allowed && !dp.known.contains(&url) && !urls.contains(&url) {
                    urls.push(url);
                }
            }
        };
        // Most handshakes name nothing new: no path building for them.
        let mut named = Vec::new();
        for cert in std::iter::once(end_entity).chain(intermediates) {
            wanted(cert, &mut named);
        }
        if named.is_empty() {
            return Vec::new();
        }
        let Ok(leaf) = webpki::EndEntityCert::try_from(end_entity) else {
            return Vec::new();
        };
        let (urls, path_issuers) = match leaf.verify_for_usage(
            self.memo_algorithms,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        ) {
            Ok(path) => {
                let mut urls = Vec::new();
                wanted(end_entity, &mut urls);
                let mut issuers = Vec::new();
                for cert in path.intermediate_certificates() {
                    let der = cert.der();
                    wanted(&der, &mut urls);
                    issuers.push(der.into_owned());
                }
                (urls, issuers)
            }
            Err(e) => {
                tracing::debug!(trust = %self.name, error = ?e, "no verified path: the distribution points the client names are ignored");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for url in urls {
            if !dp.revocation.discover(&self.name, &url) {
                tracing::warn!(trust = %self.name, %url, "more than 64 distribution points: not fetched");
                continue;
            }
            // The CRL may be signed by an intermediate that only clients send: one of the
            // verified path, never any other certificate the client sent.
            let mut issuers: Vec<CertificateDer<'static>> =
                self.anchors_and_intermediates().collect();
            issuers.extend(path_issuers.iter().cloned());
            if let Some(fetched) = dp
                .revocation
                .fetch_distribution_point(&self.name, &url, issuers, dp.wait)
            {
                out.push(fetched.crl.clone());
            }
        }
        out
    }

    /// SPEC 9.3: the leaf's OCSP status, from the cache or the responder (a handshake waits at
    /// most `ocsp.timeout`). `revoked` refuses; `unknown` or no valid answer refuses under
    /// `require` and admits under `prefer` (the failure is counted).
    fn check_ocsp(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Rejection> {
        let Some((online, settings)) = self
            .online
            .as_ref()
            .and_then(|o| o.ocsp.as_ref().map(|s| (o, s)))
        else {
            return Ok(());
        };
        let refuse = |outcome, detail: String| Rejection {
            trust: Some(self.name.clone()),
            outcome,
            detail,
            deny_reason: None,
        };
        let unavailable = |detail: String| {
            if settings.require {
                Err(refuse(
                    Outcome::UnknownRevocationStatus,
                    format!("OCSP (require): {detail}"),
                ))
            } else {
                tracing::debug!(trust = %self.name, %detail, "OCSP (prefer): admitted without an answer");
                Ok(())
            }
        };
        let Some(issuer) = self.issuer_of(end_entity, intermediates) else {
            return unavailable("the leaf's issuer is not in the verified chain".to_owned());
        };
        let Some(url) = settings
            .responder
            .clone()
            .or_else(|| crate::revocation::ocsp::responder_url(end_entity))
        else {
            return unavailable(
                "no responder: the leaf names none and ocsp.responder is not set".to_owned(),
            );
        };
        let status = online
            .revocation
            .ocsp
            .status(&self.name, settings, end_entity, &issuer, url);
        use crate::revocation::ocsp::CertStatus;
        match status {
            Ok(answer) => match answer.status {
                CertStatus::Good => Ok(()),
                CertStatus::Revoked { at } => Err(refuse(
                    Outcome::Revoked,
                    format!("OCSP: revoked at {}", crate::certs::rfc3339_unix(at)),
                )),
                CertStatus::Unknown => {
                    unavailable("the responder does not know the certificate".to_owned())
                }
            },
            Err(e) => unavailable(format!("no valid answer: {e}")),
        }
    }

    /// The certificate that signed `leaf`: among the presented and configured intermediates
    /// and the anchors, one named as the leaf's issuer whose key verifies the leaf.
    fn issuer_of(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<CertificateDer<'static>> {
        let (_, leaf) = x509_parser::parse_x509_certificate(end_entity.as_ref()).ok()?;
        intermediates
            .iter()
            .map(|c| c.clone().into_owned())
            .chain(self.intermediates.iter().cloned())
            .chain(self.anchor_certs.iter().cloned())
            .find(|candidate| {
                x509_parser::parse_x509_certificate(candidate.as_ref()).is_ok_and(|(_, c)| {
                    c.subject().as_raw() == leaf.issuer().as_raw()
                        && leaf.verify_signature(Some(c.public_key())).is_ok()
                })
            })
    }

    fn anchors_and_intermediates(&self) -> impl Iterator<Item = CertificateDer<'static>> + '_ {
        self.anchor_certs.iter().chain(&self.intermediates).cloned()
    }

    /// The source's name from the config.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Subjects of this source's anchors, for the CertificateRequest.
    pub fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    /// Verify a presented chain against this source.
    ///
    /// A rejection carries `trust = Some(name)` only when the presented certificates lead to
    /// one of this source's anchors (the chain was built, then failed); otherwise `None`, and
    /// the outcome is `unknown_issuer` (or `invalid_cert` for an unparsable certificate).
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        // Chain completion: the configured intermediates follow the presented ones (borrowed,
        // not copied), so a client that sends only its leaf still gets a path.
        let completed: Vec<CertificateDer<'_>>;
        let intermediates = if self.intermediates.is_empty() {
            intermediates
        } else {
            completed = intermediates
                .iter()
                .chain(&self.intermediates)
                .map(|c| CertificateDer::from(c.as_ref()))
                .collect();
            &completed
        };
        // Distribution points of the verified path met for the first time: this handshake
        // verifies with their CRLs already (a verifier built for it alone); the next snapshot
        // has them for everyone.
        let fresh = self.new_distribution_point_crls(end_entity, intermediates, now);
        let with_fresh;
        let verifier = if fresh.is_empty() {
            &self.verifier
        } else {
            let crls = newest_crls(self.crls.iter().cloned().chain(fresh));
            match webpki_verifier(&self.roots, &crls, &self.revocation, &self.provider) {
                Ok(v) => {
                    with_fresh = v;
                    &with_fresh
                }
                Err(e) => {
                    tracing::warn!(trust = %self.name, error = %e, "a fetched distribution point CRL is not usable");
                    &self.verifier
                }
            }
        };
        match verifier.verify_client_cert(end_entity, intermediates, now) {
            Ok(_) => {
                let admission = self.check_lifetime(end_entity)?;
                self.check_ocsp(end_entity, intermediates)?;
                Ok(admission)
            }
            Err(e) => {
                let outcome = Outcome::from_rustls_error(&e);
                let detail = format!("{e}");
                if outcome == Outcome::InvalidCert
                    && matches!(
                        e,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
                    )
                {
                    return Err(Rejection {
                        trust: None,
                        outcome,
                        detail,
                        deny_reason: None,
                    });
                }
                let attribution = match outcome {
                    Outcome::UnknownIssuer => Attribution::NotOurs,
                    _ => self.attribute(end_entity, intermediates),
                };
                let (trust, outcome, detail) = match attribution {
                    Attribution::Ours => (Some(self.name.clone()), outcome, detail),
                    Attribution::Forged => (
                        Some(self.name.clone()),
                        Outcome::BadSignature,
                        format!(
                            "the chain names an anchor of {} but its signatures do not verify ({detail})",
                            self.name
                        ),
                    ),
                    Attribution::NotOurs => (
                        None,
                        Outcome::UnknownIssuer,
                        format!("no chain to an anchor of {}: {detail}", self.name),
                    ),
                };
                Err(Rejection {
                    trust,
                    outcome,
                    detail,
                    deny_reason: None,
                })
            }
        }
    }

    fn check_lifetime(&self, end_entity: &CertificateDer<'_>) -> Result<Admission, Rejection> {
        if let Some(max) = self.max_lifetime {
            let (_, x509) =
                x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|e| {
                    Rejection {
                        trust: Some(self.name.clone()),
                        outcome: Outcome::InvalidCert,
                        detail: format!("leaf cannot be parsed: {e}"),
                        deny_reason: None,
                    }
                })?;
            let v = x509.validity();
            let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
            let max_secs = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            if lifetime > max_secs {
                return Err(Rejection {
                    trust: Some(self.name.clone()),
                    outcome: Outcome::LifetimeExceeded,
                    detail: format!(
                        "certificate lifetime {lifetime}s exceeds max_lifetime {max_secs}s"
                    ),
                    deny_reason: None,
                });
            }
        }
        Ok(Admission {
            trust: self.name.clone(),
            pinned: None,
        })
    }

    /// Whether a failure the verifier reported (other than an unknown issuer) belongs to this
    /// source: the presented chain is signed up to one of its anchors (SPEC 3: "if a CA
    /// source built a chain to one of its anchors").
    ///
    /// webpki checks the leaf's dates and EKU before it looks for an issuer, so the verifier's
    /// error alone cannot tell an expired certificate of this CA from an expired one of an
    /// unrelated CA that happens to use the same issuer name. The path is therefore built
    /// again with webpki, signatures checked, at a time inside the leaf's validity, with any
    /// EKU accepted and no revocation. When even that cannot decide (an intermediate expired
    /// at that time as well), the issuer names decide. A chain whose names lead to an anchor
    /// but whose signatures fail is [`Attribution::Forged`].
    fn attribute(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Attribution {
        let by_names = |forged: bool| match self.reaches_anchor(end_entity, intermediates) {
            true if forged => Attribution::Forged,
            true => Attribution::Ours,
            false => Attribution::NotOurs,
        };
        let Ok(leaf) = webpki::EndEntityCert::try_from(end_entity) else {
            return Attribution::NotOurs;
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
            return Attribution::NotOurs;
        };
        let (from, to) = (
            parsed.validity().not_before.timestamp(),
            parsed.validity().not_after.timestamp(),
        );
        let inside = from.saturating_add(to.saturating_sub(from) / 2);
        let at =
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(inside).unwrap_or(0)));
        match leaf.verify_for_usage(
            self.algorithms,
            &self.anchors,
            intermediates,
            at,
            AnyUsage,
            None,
            None,
        ) {
            Ok(_) => Attribution::Ours,
            Err(webpki::Error::UnknownIssuer) => Attribution::NotOurs,
            Err(
                webpki::Error::InvalidSignatureForPublicKey
                | webpki::Error::SignatureAlgorithmMismatch
                | webpki::Error::UnsupportedSignatureAlgorithmContext(_)
                | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_),
            ) => by_names(true),
            Err(_) => by_names(false),
        }
    }

    /// Whether the issuer names of the presented certificates lead to one of our anchors.
    ///
    /// Used only to attribute a failure webpki reported for reasons other than an unknown
    /// issuer (webpki checks the leaf's dates and EKU before it looks for an issuer, so an
    /// expired certificate from an unrelated CA must not count as this source's failure).
    /// Never used to admit anything.
    fn reaches_anchor(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> bool {
        let Ok((_, leaf)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
            return false;
        };
        let parsed: Vec<_> = intermediates
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, c)| c)
            .collect();
        let mut issuer = leaf.issuer().as_raw();
        for _ in 0..MAX_CHAIN_WALK {
            if self.anchor_subjects.iter().any(|s| s.as_slice() == issuer) {
                return true;
            }
            let next = parsed.iter().find(|c| {
                c.subject().as_raw() == issuer && c.issuer().as_raw() != c.subject().as_raw()
            });
            match next {
                Some(c) => issuer = c.issuer().as_raw(),
                None => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::tls::testing::*;

    #[test]
    fn ca_without_crls_admits_valid_client() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        ca_admits(
            &v,
            &p.inter.issue(&LeafSpec::client("alice")).unwrap(),
            "internal",
        );
        assert_eq!(v.root_hint_subjects().len(), 1);
    }

    #[test]
    fn ca_with_crls_admits_valid_client() {
        let p = pki();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        let crls = vec![
            p.root.crl(&[], a, b).unwrap(),
            p.inter.crl(&[], a, b).unwrap(),
        ];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls)]).unwrap();
        ca_admits(
            &v,
            &p.inter.issue(&LeafSpec::client("alice")).unwrap(),
            "internal",
        );
    }

    #[test]
    fn unknown_issuer() {
        let p = pki();
        let other = TestCa::root("other root").unwrap();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let c = other.issue(&LeafSpec::client("mallory")).unwrap();
        assert_eq!(rejected(&v, &c), (None, Outcome::UnknownIssuer));
        // A self-signed certificate with no pinned source is unknown_issuer too.
        let rogue = TestCert::self_signed(&LeafSpec::client("rogue")).unwrap();
        assert_eq!(rejected(&v, &rogue), (None, Outcome::UnknownIssuer));
        // An expired certificate from an unrelated CA is not this source's failure.
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let c = other.issue(&spec).unwrap();
        assert_eq!(rejected(&v, &c), (None, Outcome::UnknownIssuer));
    }

    #[test]
    fn bad_signature() {
        // Same subject DN as the trusted root, different key: the issuer name matches an
        // anchor but the signature does not verify.
        let p = pki();
        let impostor = TestCa::root("test root").unwrap();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let c = impostor.issue(&LeafSpec::client("mallory")).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::BadSignature)
        );
    }

    #[test]
    fn expired() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let c = p.inter.issue(&spec).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::Expired)
        );
    }

    #[test]
    fn not_yet_valid() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let mut spec = LeafSpec::client("future");
        spec.not_before = OffsetDateTime::now_utc() + Duration::days(1);
        spec.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let c = p.inter.issue(&spec).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::NotYetValid)
        );
    }

    #[test]
    fn revoked() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("revoked")).unwrap();
        let ok = p.inter.issue(&LeafSpec::client("ok")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        let crls = vec![
            p.root.crl(&[], a, b).unwrap(),
            p.inter.crl(&[&c.serial], a, b).unwrap(),
        ];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls)]).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::Revoked)
        );
        ca_admits(&v, &ok, "internal");
    }

    /// A source whose `intermediates` holds `p.inter`, with `crls`.
    fn with_intermediates(
        p: &Pki,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> TrustVerifier {
        let mut source = ca_source("internal", &p.root, crls);
        if let TrustKind::Ca(ca) = &mut source.kind {
            ca.intermediates = vec![p.inter.cert.clone()];
        }
        TrustVerifier::new(&[source]).unwrap()
    }

    #[test]
    fn configured_intermediates_complete_leaf_only_chains() {
        let p = pki();
        let alice = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let leaf_only = |v: &TrustVerifier| v.verify(&alice.chain[0], &[], now());
        // Without them, a client that sends only its leaf has no path to the root.
        let plain = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        assert_eq!(
            leaf_only(&plain).unwrap_err().outcome,
            Outcome::UnknownIssuer
        );
        let v = with_intermediates(&p, vec![]);
        assert_eq!(&*leaf_only(&v).unwrap().trust, "internal");
        // The full chain still works, and the intermediate is no anchor: a source that trusts
        // another root does not admit through it.
        ca_admits(&v, &alice, "internal");
        let other = TestCa::root("other").unwrap();
        let mut foreign = ca_source("foreign", &other, vec![]);
        if let TrustKind::Ca(ca) = &mut foreign.kind {
            ca.intermediates = vec![p.inter.cert.clone()];
        }
        let foreign = TrustVerifier::new(&[foreign]).unwrap();
        assert_eq!(
            foreign
                .verify(&alice.chain[0], &[], now())
                .unwrap_err()
                .outcome,
            Outcome::UnknownIssuer
        );
    }

    #[test]
    fn chains_completed_by_configured_intermediates_are_checked_against_crls() {
        let p = pki();
        let alice = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        let inter_serial = {
            let (_, x) = x509_parser::parse_x509_certificate(p.inter.cert.as_ref()).unwrap();
            x.raw_serial().to_vec()
        };
        // The root revokes the intermediate itself (depth: chain).
        let crls = vec![
            p.root.crl(&[&inter_serial], a, b).unwrap(),
            p.inter.crl(&[], a, b).unwrap(),
        ];
        let v = with_intermediates(&p, crls);
        assert_eq!(
            v.verify(&alice.chain[0], &[], now()).unwrap_err().outcome,
            Outcome::Revoked
        );
    }

    /// webpki uses the first CRL that covers an issuer: of two CRLs of the intermediate, the
    /// newer must be the one used, whether it came first or last, from a file or fetched.
    #[test]
    fn the_newest_crl_of_an_issuer_is_the_one_used() {
        let p = pki();
        let x = p.inter.issue(&LeafSpec::client("x")).unwrap();
        let y = p.inter.issue(&LeafSpec::client("y")).unwrap();
        let now = OffsetDateTime::now_utc();
        let until = now + Duration::days(30);
        let root = p.root.crl(&[], now - Duration::days(1), until).unwrap();
        // Made in this order, so their CRL numbers grow in this order (devpki).
        let older = p
            .inter
            .crl(&[&y.serial], now - Duration::hours(2), until)
            .unwrap();
        let newer = p
            .inter
            .crl(&[&x.serial], now - Duration::hours(1), until)
            .unwrap();
        // A higher CRL number decides, even with an earlier thisUpdate.
        let numbered_later = p
            .inter
            .crl(&[&y.serial], now - Duration::hours(3), until)
            .unwrap();

        let files =
            |crls: Vec<_>| TrustVerifier::new(&[ca_source("internal", &p.root, crls)]).unwrap();
        for crls in [
            vec![older.clone(), newer.clone(), root.clone()],
            vec![newer.clone(), root.clone(), older.clone()],
        ] {
            let v = files(crls);
            assert_eq!(
                rejected(&v, &x),
                (Some("internal".into()), Outcome::Revoked)
            );
            ca_admits(&v, &y, "internal");
        }
        for crls in [
            vec![newer.clone(), numbered_later.clone(), root.clone()],
            vec![numbered_later.clone(), newer.clone(), root.clone()],
        ] {
            let v = files(crls);
            assert_eq!(
                rejected(&v, &y),
                (Some("internal".into()), Outcome::Revoked)
            );
            ca_admits(&v, &x, "internal");
        }

        // A file CRL beside a fetched one (`crl_urls`), in both roles.
        let url = "http://pki.internal/inter.crl";
        for (file, fetched, revoked, admitted) in
            [(&older, &newer, &x, &y), (&newer, &older, &x, &y)]
        {
            let mut source = ca_source("internal", &p.root, vec![file.clone(), root.clone()]);
            if let TrustKind::Ca(ca) = &mut source.kind {
                ca.crl_urls = vec![crate::config::CrlUrl {
                    url: url.to_owned(),
                    refresh: StdDuration::from_secs(60),
                }];
            }
            let revocation = Arc::new(crate::revocation::Revocation::default());
            revocation.crls.put(
                "internal",
                crate::revocation::crl::Fetched {
                    url: url.to_owned(),
                    crl: crl_file(fetched.clone()),
                    etag: None,
                    last_modified: None,
                    checked_at: 0,
                    signer: p.inter.cert.clone(),
                },
            );
            let v = TrustVerifier::offline(&[source], &revocation).unwrap();
            assert_eq!(
                rejected(&v, revoked),
                (Some("internal".into()), Outcome::Revoked)
            );
            ca_admits(&v, admitted, "internal");
        }
    }

    #[test]
    fn unknown_revocation_status_and_allow() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        // Only the root's CRL: the leaf's issuer (the intermediate) has none.
        let crls = vec![p.root.crl(&[], a, b).unwrap()];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls.clone())]).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::UnknownRevocationStatus)
        );

        let mut rev = default_revocation();
        rev.allow_unknown_status = true;
        let v =
            TrustVerifier::new(&[ca_source_with("internal", &p.root, crls, rev, None)]).unwrap();
        ca_admits(&v, &c, "internal");
    }

    #[test]
    fn end_entity_depth_skips_intermediate_status() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = (
            OffsetDateTime::now_utc() - Duration::days(1),
            OffsetDateTime::now_utc() + Duration::days(30),
        );
        // Only the intermediate's CRL: with depth chain the intermediate's own status is unknown.
        let crls = vec![p.inter.crl(&[], a, b).unwrap()];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls.clone())]).unwrap();
        assert_eq!(rejected(&v, &c).1, Outcome::UnknownRevocationStatus);
        let mut rev = default_revocation();
        rev.depth = RevocationDepth::EndEntity;
        let v =
            TrustVerifier::new(&[ca_source_with("internal", &p.root, crls, rev, None)]).unwrap();
        ca_admits(&v, &c, "internal");
    }

    #[test]
    fn crl_expired_and_allow() {
        let p = pki();
        let c = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let (a, b) = past();
        let crls = vec![
            p.root.crl(&[], a, b).unwrap(),
            p.inter.crl(&[], a, b).unwrap(),
        ];
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, crls.clone())]).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::CrlExpired)
        );

        let mut rev = default_revocation();
        rev.allow_expired_crl = true;
        let v =
            TrustVerifier::new(&[ca_source_with("internal", &p.root, crls, rev, None)]).unwrap();
        ca_admits(&v, &c, "internal");
    }

    #[test]
    fn invalid_usage_server_auth_only() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let mut spec = LeafSpec::client("server-only");
        spec.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let c = p.inter.issue(&spec).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("internal".into()), Outcome::InvalidUsage)
        );
        // No EKU at all is acceptable for client auth.
        spec.eku = vec![];
        ca_admits(&v, &p.inter.issue(&spec).unwrap(), "internal");
    }

    #[test]
    fn lifetime_exceeded() {
        let p = pki();
        let max = Some(StdDuration::from_secs(90 * 86400));
        let v = TrustVerifier::new(&[ca_source_with(
            "internal",
            &p.root,
            vec![],
            default_revocation(),
            max,
        )])
        .unwrap();
        let long = p.inter.issue(&LeafSpec::client("long")).unwrap(); // 366 days
        assert_eq!(
            rejected(&v, &long),
            (Some("internal".into()), Outcome::LifetimeExceeded)
        );
        let mut spec = LeafSpec::client("short");
        spec.not_after = spec.not_before + Duration::days(30);
        ca_admits(&v, &p.inter.issue(&spec).unwrap(), "internal");
    }

    #[test]
    fn invalid_cert_garbage_der() {
        let p = pki();
        let pin = TestCert::self_signed(&LeafSpec::client("ci")).unwrap();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            pinned_source(
                "lab",
                vec![entry("ci", cert_pin(&pin), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03]);
        let r = v.verify(&garbage, &[], now()).unwrap_err();
        assert_eq!((r.trust, r.outcome), (None, Outcome::InvalidCert));
    }
}
